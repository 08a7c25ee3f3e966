//! Runs (CONTRACT.md §4): backtests, screeners and alert scans done with a
//! strategy's code, as their own processes.
//!
//! The words a run's row stores ([`RunMode`], [`RunState`], [`RunPriority`]), the
//! Redis payloads of `strategy:run:{run_id}` ([`RunEvent`]) and `strategy:alerts`
//! ([`AlertEvent`]), and the private exchange between the manager and a run's
//! process:
//!
//! - The manager resolves and checks the run's parameters against the database,
//!   writes the bars the run needs to `{runs_dir}/{run_id}.bars` (PostgreSQL's binary
//!   COPY format, see [`bars_file`]; a large run's bars in parts, the later ones in
//!   `{run_id}.bars.1`, … [`bars_part_path`], written at once by COPYs of their
//!   own), and spawns
//!   `strategy-executor --run-id {run_id} --runs-dir {runs_dir}` with a [`RunInput`]
//!   on stdin. Its output goes to `{runs_dir}/{run_id}.log`.
//! - The process appends what it does to `{runs_dir}/{run_id}.out`, one
//!   [`RunOutput`] JSON object per line: progress, each item as it finishes, each
//!   alert as it is raised, and last the result or the error. The manager follows
//!   that file (and reads it to the end once the process exits), so a run needs no
//!   live connection to the manager: it goes on through a manager restart, and the
//!   next manager reads everything the run wrote, from the start (items are keyed by
//!   run and item, so reading twice writes nothing twice).
//! - The manager stops a run (cancel, timeout) by killing its process.

pub mod bars_file;

use crate::messages::Channels;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use uuid::Uuid;

impl Channels {
    /// `strategy:run:{run_id}`: every change of a run ([`RunEvent`]).
    pub fn run(&self, run_id: Uuid) -> String {
        format!("{}strategy:run:{run_id}", self.prefix())
    }
    /// `strategy:alerts`: each alert an alert run raises ([`AlertEvent`]).
    pub fn alerts(&self) -> String {
        format!("{}strategy:alerts", self.prefix())
    }
}

/// A way of running a strategy. Every strategy runs `live`; a strategy type declares
/// the others it supports when it is registered. `strategy_runs.mode` holds one of
/// the three run modes (never `live`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "lowercase"))]
pub enum RunMode {
    /// Trading on live ticks (the strategy's executor).
    Live,
    /// Replaying bars through `on_tick` with the paper broker.
    Backtest,
    /// Ranking symbols by `Strategy::score`.
    Screener,
    /// Raising `Strategy::signal`s.
    Alert,
}

impl RunMode {
    /// Every mode, in the order `--list` shows them.
    pub const ALL: [RunMode; 4] = [
        RunMode::Live,
        RunMode::Backtest,
        RunMode::Screener,
        RunMode::Alert,
    ];

    /// The modes a run (a `strategy_runs` row) may have.
    pub const RUNS: [RunMode; 3] = [RunMode::Backtest, RunMode::Screener, RunMode::Alert];

    /// The word used in `strategy_runs.mode` and `--list`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Live => "live",
            RunMode::Backtest => "backtest",
            RunMode::Screener => "screener",
            RunMode::Alert => "alert",
        }
    }
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a run mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run mode '{0}'; allowed: live, backtest, screener, alert")]
pub struct UnknownRunMode(pub String);

impl FromStr for RunMode {
    type Err = UnknownRunMode;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        RunMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == word)
            .ok_or_else(|| UnknownRunMode(word.to_string()))
    }
}

/// Where a run is in its life (`strategy_runs.state`): `queued` → `starting` →
/// `running` → one of the four final states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
pub enum RunState {
    Queued,
    Starting,
    Running,
    Completed,
    Error,
    Cancelled,
    TimedOut,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Queued,
        RunState::Starting,
        RunState::Running,
        RunState::Completed,
        RunState::Error,
        RunState::Cancelled,
        RunState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Error => "error",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
        }
    }

    /// `completed`, `error`, `cancelled` or `timed_out`: the run is over.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RunState::Queued | RunState::Starting | RunState::Running
        )
    }

    /// `starting` or `running`: the run holds one of the manager's slots.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Starting | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a run state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state '{0}'; allowed: queued, starting, running, completed, error, cancelled, timed_out")]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == word)
            .ok_or_else(|| UnknownRunState(word.to_string()))
    }
}

/// A run's place in the queue (`strategy_runs.priority`): `high` before `normal`
/// before `low`, oldest first within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "lowercase"))]
pub enum RunPriority {
    High,
    Normal,
    Low,
}

impl RunPriority {
    pub const ALL: [RunPriority; 3] = [RunPriority::High, RunPriority::Normal, RunPriority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            RunPriority::High => "high",
            RunPriority::Normal => "normal",
            RunPriority::Low => "low",
        }
    }
}

impl fmt::Display for RunPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a run priority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority '{0}'; allowed: high, normal, low")]
pub struct UnknownRunPriority(pub String);

impl FromStr for RunPriority {
    type Err = UnknownRunPriority;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        RunPriority::ALL
            .into_iter()
            .find(|p| p.as_str() == word)
            .ok_or_else(|| UnknownRunPriority(word.to_string()))
    }
}

/// The `event_type` of a [`RunEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEventType {
    Started,
    Progress,
    TickerCompleted,
    StageCompleted,
    Completed,
    Error,
    Cancelled,
    TimedOut,
}

/// Throughput figures of a [`RunEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RunEventMetrics {
    pub items_per_second: Option<f64>,
    pub eta_s: Option<f64>,
}

/// A message on `strategy:run:{run_id}`: every change of a run, in the seed design's
/// shape. `progress` events come at most 10 a second per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub event_type: RunEventType,
    pub run_id: Uuid,
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub mode: RunMode,
    pub state: RunState,
    pub stage: Option<String>,
    pub progress_percent: f64,
    pub current_item: Option<String>,
    pub total_items: Option<i64>,
    pub completed_items: Option<i64>,
    pub message: Option<String>,
    pub metrics: RunEventMetrics,
}

/// A message on `strategy:alerts`: one alert, as it is raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub run_id: Uuid,
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub symbol: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// `high`, `normal` or `low`.
    pub priority: String,
}

/// One symbol of a run, with what `securities` says of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSymbol {
    pub symbol: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub sector: Option<String>,
}

/// What the manager writes on a run process's stdin: everything the run needs,
/// resolved and checked (symbols exist, the date range holds bars, the parameters
/// have the right types). The bars themselves are in [`RunInput::bars_path`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    pub run_id: Uuid,
    pub strategy_id: Uuid,
    /// The strategy's name (for messages and logs).
    pub name: String,
    pub strategy_type: String,
    pub mode: RunMode,
    /// The config the run uses: the strategy's, with `parameters.config` merged in
    /// (before the per-symbol `token`, which the process sets for each instance).
    pub config: Value,
    /// The symbols, in the order they are processed (and numbered: an item's
    /// `position` is its index here).
    pub symbols: Vec<RunSymbol>,
    /// The bar size as stored in `market_bars.interval` (`1m`, `1h`, `1d`, ...).
    pub interval: String,
    /// The bar size in seconds (annualises returns).
    pub interval_s: u64,
    /// Backtest: the equity before the first bar.
    pub initial_capital: f64,
    /// Backtest: fee in basis points of each fill's value.
    pub fee_bps: f64,
    /// Screener: how many ranked results to keep.
    pub limit: Option<u64>,
    /// Alert: the `threshold` parameter, if given.
    pub threshold: Option<f64>,
    /// The first and last bar time asked for (inclusive), as resolved.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The bars: PostgreSQL binary COPY of `symbol, ts, open, high, low, close,
    /// volume` ordered by symbol then time ([`bars_file`]).
    pub bars_path: PathBuf,
    /// More bars files, read after `bars_path` in this order, each in the same format
    /// and written at the same time as the first (a large run's COPY is split in
    /// parts, so that PostgreSQL works on them with more than one core): together
    /// they are the rows ordered by symbol, then time. Empty for one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_bars_paths: Vec<PathBuf>,
    /// Where the process appends its [`RunOutput`] lines.
    pub outbox_path: PathBuf,
    /// The least time between two `progress` lines; 0 writes none but the first and
    /// the last (how the bench measures what reporting costs).
    pub progress_interval_ms: u64,
    /// `strategy_runs.lease_epoch`: what the run's client order ids carry.
    #[serde(default)]
    pub lease_epoch: i64,
    /// Where a backtest appends its fills, for `strategy_orders` ([`orders_path`]);
    /// `None`: its orders are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders_path: Option<PathBuf>,
}

/// The default least time between two `progress` lines of a run's process.
pub const DEFAULT_PROGRESS_INTERVAL_MS: u64 = 50;

/// One line of a run's outbox (`{run_id}.out`), appended by its process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunOutput {
    /// The process started and is about to load its bars.
    Started { pid: u32, total_items: i64 },
    /// Where the run is. `progress_percent` counts within an item too (a backtest
    /// of one symbol moves by bars), so it may move while `completed_items` stays.
    Progress {
        stage: String,
        progress_percent: f64,
        completed_items: i64,
        total_items: i64,
        #[serde(default)]
        current_item: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        items_per_second: Option<f64>,
        #[serde(default)]
        eta_s: Option<f64>,
    },
    /// A stage ended (`loading`, `evaluating`, `ranking`, ...).
    StageCompleted { stage: String },
    /// One item (a symbol) finished: a `strategy_run_items` row.
    Item {
        item: String,
        position: i64,
        #[serde(default)]
        passed: Option<bool>,
        #[serde(default)]
        score: Option<f64>,
        #[serde(default)]
        detail: Option<Value>,
    },
    /// An alert, the moment it is raised (alert runs).
    Alert {
        symbol: String,
        #[serde(rename = "alert_type")]
        kind: String,
        message: String,
        priority: String,
        timestamp: DateTime<Utc>,
    },
    /// The run completed with this `result` (the last line).
    Result { result: Value },
    /// The run could not do its work (the last line): a plain-words reason.
    Error { error: String },
}

/// The directory of a manager's runs, inside its state directory.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// `{runs_dir}/{run_id}.bars`
pub fn bars_path(runs_dir: &Path, run_id: Uuid) -> PathBuf {
    runs_dir.join(format!("{run_id}.bars"))
}

/// The most parts a run's bars are split in (the first is [`bars_path`]).
pub const MAX_BARS_PARTS: usize = 2;

/// `{runs_dir}/{run_id}.bars.{part}`: the part after the first `part` parts of a
/// run's bars (`part` ≥ 1; part 0 is [`bars_path`]).
pub fn bars_part_path(runs_dir: &Path, run_id: Uuid, part: usize) -> PathBuf {
    runs_dir.join(format!("{run_id}.bars.{part}"))
}

/// `{runs_dir}/{run_id}.out`
pub fn outbox_path(runs_dir: &Path, run_id: Uuid) -> PathBuf {
    runs_dir.join(format!("{run_id}.out"))
}

/// `{runs_dir}/{run_id}.orders`: a backtest's fills, one CSV line each
/// ([`order_csv_line`]), for the manager to copy into `strategy_orders` at the end.
pub fn orders_path(runs_dir: &Path, run_id: Uuid) -> PathBuf {
    runs_dir.join(format!("{run_id}.orders"))
}

/// The most orders one run records in `strategy_orders` (its first ones); past it
/// the fills are counted, not written. A row costs PostgreSQL about 12 µs of CPU
/// (two foreign keys checked and three indexes kept per row): the 63,864 fills of
/// the 1M-bar benchmark backtest would cost it most of a second, this cap about
/// 0.13 s (BENCHMARKS.md, "Runs' orders").
pub const MAX_RUN_ORDERS: u64 = 10_000;

/// The columns of an orders file's lines, in order (what the manager's COPY names).
pub const ORDER_CSV_COLUMNS: &str = "client_order_id, token, side, quantity, price, fee, at";

/// One line of a run's orders file: `client_order_id,token,side,quantity,price,fee,at`
/// (CSV, the id and token quoted; `at` in RFC 3339).
#[derive(Debug, Clone, Copy)]
pub struct OrderLine<'a> {
    pub client_order_id: &'a str,
    pub token: &'a str,
    /// `buy` or `sell`.
    pub side: &'a str,
    pub quantity: f64,
    pub price: f64,
    pub fee: f64,
    pub at: DateTime<Utc>,
}

impl OrderLine<'_> {
    /// Append the line (with its `\n`) to `out`.
    pub fn write_csv(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let quoted = |s: &str| s.replace('"', "\"\"");
        let _ = writeln!(
            out,
            "\"{}\",\"{}\",{},{},{},{},{}",
            quoted(self.client_order_id),
            quoted(self.token),
            self.side,
            self.quantity,
            self.price,
            self.fee,
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}

/// `{runs_dir}/{run_id}.log`
pub fn run_log_path(runs_dir: &Path, run_id: Uuid) -> PathBuf {
    runs_dir.join(format!("{run_id}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_round_trip() {
        for mode in RunMode::ALL {
            assert_eq!(mode.as_str().parse::<RunMode>(), Ok(mode));
            assert_eq!(serde_json::to_value(mode).unwrap(), json!(mode.as_str()));
        }
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        }
        for p in RunPriority::ALL {
            assert_eq!(p.as_str().parse::<RunPriority>(), Ok(p));
        }
        assert_eq!(
            "replay".parse::<RunMode>().unwrap_err().to_string(),
            "unknown run mode 'replay'; allowed: live, backtest, screener, alert"
        );
        assert!(RunState::TimedOut.is_final() && !RunState::Running.is_final());
        assert!(RunState::Starting.is_active() && !RunState::Queued.is_active());
    }

    #[test]
    fn outbox_lines_are_tagged() {
        let line = RunOutput::Item {
            item: "AAPL".into(),
            position: 3,
            passed: Some(true),
            score: Some(81.5),
            detail: None,
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["type"], "item");
        assert_eq!(serde_json::from_value::<RunOutput>(v).unwrap(), line);
    }

    #[test]
    fn channels() {
        let c = Channels::new("t1:");
        let id = Uuid::nil();
        assert_eq!(c.run(id), format!("t1:strategy:run:{id}"));
        assert_eq!(c.alerts(), "t1:strategy:alerts");
    }
}
