//! The engine's public Redis contract: channel names and the JSON payloads on them.
//!
//! Every name here is fixed by CONTRACT.md; the optional prefix exists so that tests
//! (and several engines sharing one Redis) can keep their traffic apart. The default
//! prefix is empty, which gives exactly the contract's names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Largest executor message the manager accepts (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The names of every channel and key, with an optional namespace prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channels {
    prefix: String,
}

impl Channels {
    pub fn new(prefix: impl Into<String>) -> Self {
        Channels {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn status(&self, id: Uuid) -> String {
        format!("{}strategy:status:{id}", self.prefix)
    }
    pub fn status_pattern(&self) -> String {
        format!("{}strategy:status:*", self.prefix)
    }
    pub fn health(&self) -> String {
        format!("{}strategy:health", self.prefix)
    }
    pub fn metrics(&self, id: Uuid) -> String {
        format!("{}strategy:metrics:{id}", self.prefix)
    }
    pub fn metrics_pattern(&self) -> String {
        format!("{}strategy:metrics:*", self.prefix)
    }
    pub fn commands(&self, id: Uuid) -> String {
        format!("{}strategy:commands:{id}", self.prefix)
    }
    pub fn global_commands(&self) -> String {
        format!("{}strategy:global:commands", self.prefix)
    }
    pub fn engine_health(&self) -> String {
        format!("{}engine:health", self.prefix)
    }
    pub fn live_data(&self, token: &str) -> String {
        format!("{}live_data:{token}", self.prefix)
    }
    /// `strategy:execution:{strategy_id}`: every interval execution ([`ExecutionMessage`]).
    pub fn execution(&self, id: Uuid) -> String {
        format!("{}strategy:execution:{id}", self.prefix)
    }
    pub fn execution_pattern(&self) -> String {
        format!("{}strategy:execution:*", self.prefix)
    }
    pub fn state_key(&self, id: Uuid) -> String {
        format!("{}strategy:state:{id}", self.prefix)
    }
    /// The strategy id a `strategy:metrics:{id}` channel names, if it is one.
    pub fn strategy_id_of_metrics_channel(&self, channel: &str) -> Option<Uuid> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix("strategy:metrics:")?
            .parse()
            .ok()
    }
}

/// A Redis glob pattern that matches `literal` exactly (`*`, `?`, `[`, `]` and `\\`
/// escaped): a prefix in a subscription pattern or an ACL channel rule.
pub fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The observed state of a strategy (the `status` vocabulary of the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
pub enum Status {
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    Backoff,
    Error,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Stopped,
        Status::Starting,
        Status::Running,
        Status::Paused,
        Status::Stopping,
        Status::Backoff,
        Status::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopping => "stopping",
            Status::Backoff => "backoff",
            Status::Error => "error",
        }
    }
    /// Running or paused: a live executor whose strategy is initialised.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
    /// Starting, running, paused or stopping: an executor process is up (it may not
    /// have initialised its strategy yet, or be on its way out).
    pub fn is_up(self) -> bool {
        matches!(
            self,
            Status::Starting | Status::Running | Status::Paused | Status::Stopping
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status '{s}'; expected one of stopped, starting, running, paused, stopping, backoff, error"
                )
            })
    }
}

/// What a `stop` does with open positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Keep open positions as they are (the default).
    #[default]
    Leave,
    /// Close every open position through the broker before exiting.
    Flatten,
}

/// `strategy:status:{strategy_id}`: a state transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub status: Status,
    pub pid: Option<u32>,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// Who published it: `manager` or `executor` (an additive field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// In a cluster (CONTRACT.md §7): the strategy's lease epoch, as the manager
    /// that owns it knows it, or as the executor's lease says. Absent without
    /// `--cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<i64>,
}

/// `strategy:execution:{strategy_id}`: one interval execution's end (CONTRACT.md §5),
/// or due executions skipped. The contract's fields, and two additive ones (absent
/// when they do not apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionMessage {
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// When it started (for `skipped`: the latest due time skipped).
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `ok`, `error`, `timeout` or `skipped`.
    pub outcome: String,
    pub error: Option<String>,
    /// Additive: the due time a scheduled execution served (for `skipped`: the
    /// latest due time skipped, as `started_at`). Absent for a `manual` execution
    /// that served no due time (a `trigger` that joined a waiting due execution
    /// carries that due time). `started_at - due_at` is how late the start was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// Additive: when the executor began the strategy's `on_execute`, by its own
    /// clock (`started_at` is when the manager sent the execution). Absent for
    /// `skipped` and `timeout`, and from an executor that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_started_at: Option<DateTime<Utc>>,
}

/// `strategy:health`: one message per running strategy every health interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMessage {
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub pid: Option<u32>,
    pub status: Status,
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub uptime_s: u64,
    pub restart_count: i32,
    pub node: String,
    /// True when the strategy takes market data but no tick has arrived for the
    /// manager's `--stale-after` (an additive field; see the README).
    #[serde(default)]
    pub stale: bool,
    /// Milliseconds since the strategy's last market tick, as of this message; absent
    /// before its first tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_age_ms: Option<f64>,
    /// When the last market tick arrived (the executor's `last_tick_at`); absent
    /// before its first tick. A reader computes the age from it when it shows it
    /// (additive; see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_at: Option<DateTime<Utc>>,
    /// The strategy's `memory_mb` limit, when it has one (CONTRACT §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// The strategy's `cpu_percent` limit (100 = one core), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<u64>,
}

/// `engine:health`: the manager's own health every health interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineHealthMessage {
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub node: String,
    pub pid: u32,
    pub strategies_running: usize,
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub uptime_s: u64,
}

/// The numbers every strategy reports, plus whatever else it adds.
///
/// `pnl` is what this executor run made (realised plus the change in unrealised
/// since it started); `pnl_total` (additive) is realised PnL since the broker's state
/// was last reset, carried over every restart, plus the unrealised PnL of the open
/// positions now. `positions_count`, `orders_count` and `success_rate` are the
/// broker's, carried over too.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StrategyMetrics {
    pub pnl: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pnl_total: Option<f64>,
    pub positions_count: i64,
    pub orders_count: i64,
    pub success_rate: f64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `last_tick_at` of a metrics object (as on `strategy:metrics:{id}` and in
/// `strategy_metrics.metrics`): when the executor received its last market tick,
/// RFC 3339. `None` before the first tick, or from an executor that does not say.
pub fn last_tick_at(metrics: &Value) -> Option<DateTime<Utc>> {
    metrics.get("last_tick_at").and_then(parse_time)
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    parse_timestamp(value.as_str()?)
}

/// An RFC 3339 time, in UTC (`None` if it is not one).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `metrics_interval_ms` of a metrics object: how often its executor reports.
pub fn metrics_interval(metrics: &Value) -> Option<std::time::Duration> {
    metrics
        .get("metrics_interval_ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
}

/// The age of the last tick at `now`, in milliseconds, the way every reader shows it.
///
/// Ticks that arrived after the executor's last report (sent at `reported_at`) are
/// unknown to a reader. While reports come on time (within two of its intervals,
/// `report_every`), the age is what it was at the report (`reported_at -
/// last_tick_at`): on a 10 Hz feed that is tenths of a second, where counting the
/// time since the report too would make it swing up to a whole metrics interval.
/// Once a report is overdue (or the interval is unknown) the feed may have stopped
/// with the executor, so the age grows with the clock: `now - last_tick_at`. Never
/// negative (the executor's and the reader's clocks may differ slightly).
pub fn tick_age_ms(
    last_tick_at: DateTime<Utc>,
    reported_at: DateTime<Utc>,
    report_every: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> f64 {
    let on_time = report_every.is_some_and(|every| {
        let every = chrono::Duration::from_std(every * 2).unwrap_or(chrono::Duration::MAX);
        now - reported_at <= every
    });
    let until = if on_time { reported_at } else { now };
    (until - last_tick_at).num_milliseconds().max(0) as f64
}

/// `subscribed_tokens` of a metrics object: whether the strategy listens to market
/// data at all (`None` from an executor that does not say).
pub fn takes_market_data(metrics: &Value) -> Option<bool> {
    metrics
        .get("subscribed_tokens")
        .and_then(Value::as_array)
        .map(|tokens| !tokens.is_empty())
}

/// `strategy:metrics:{strategy_id}`: published by the executor every metrics interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsMessage {
    pub strategy_id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub metrics: StrategyMetrics,
}

/// The words of `strategy:commands:{id}` and `strategy:global:commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorCommandKind {
    Shutdown,
    UpdateConfig,
    Pause,
    Resume,
}

/// A command from the manager to an executor: sent on the control link (the only
/// way an executor takes commands) and announced on Redis for dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorCommand {
    /// The target; absent on `strategy:global:commands`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy_id: Option<Uuid>,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub command: ExecutorCommandKind,
    pub command_id: Uuid,
    /// The whole new config, for `update_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// For `shutdown`: what to do with open positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StopMode>,
    /// For `shutdown`: why (`stop`, `restart`, `host_shutdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who sent it: `manager` on the manager's own `strategy:global:commands`
    /// announcement, which it publishes after its supervisors applied the command;
    /// and on a `strategy:commands:{id}` announcement of an `update_config` whose
    /// `config` is the stored one (secret references unresolved, secret-looking
    /// values masked) rather than what the executor gets. No executor acts on either:
    /// each gets its commands over its control link, in order. Absent elsewhere.
    /// Additive to the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `live_data:{token}`: one market tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub token: String,
    pub price: f64,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<f64>,
}

/// Why a strategy is being shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    /// An operator's `stop`.
    Stop,
    /// An operator's `restart`: it will be started again at once.
    Restart,
    /// The host or the executor process is going down (SIGTERM, SIGINT).
    HostShutdown,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::Stop => "stop",
            ShutdownReason::Restart => "restart",
            ShutdownReason::HostShutdown => "host_shutdown",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stop" => Some(ShutdownReason::Stop),
            "restart" => Some(ShutdownReason::Restart),
            "host_shutdown" => Some(ShutdownReason::HostShutdown),
            _ => None,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host name reported as `node`.
pub fn node_name() -> String {
    crate::procfs::hostname()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_globs() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("t1:"), "t1:");
    }

    #[test]
    fn channel_names_match_the_contract() {
        let c = Channels::default();
        let id = Uuid::nil();
        assert_eq!(c.status(id), format!("strategy:status:{id}"));
        assert_eq!(c.health(), "strategy:health");
        assert_eq!(c.metrics(id), format!("strategy:metrics:{id}"));
        assert_eq!(c.commands(id), format!("strategy:commands:{id}"));
        assert_eq!(c.global_commands(), "strategy:global:commands");
        assert_eq!(c.engine_health(), "engine:health");
        assert_eq!(c.live_data("BTC"), "live_data:BTC");
        assert_eq!(c.state_key(id), format!("strategy:state:{id}"));
        let p = Channels::new("t1:");
        assert_eq!(p.health(), "t1:strategy:health");
        assert_eq!(p.strategy_id_of_metrics_channel(&p.metrics(id)), Some(id));
        assert_eq!(c.strategy_id_of_metrics_channel(&p.metrics(id)), None);
    }

    #[test]
    fn status_words_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), Value::from(s.as_str()));
        }
        assert!("runing".parse::<Status>().unwrap_err().contains("running"));
    }

    #[test]
    fn command_payload_uses_contract_field_names() {
        let cmd = ExecutorCommand {
            strategy_id: Some(Uuid::nil()),
            name: "a".into(),
            timestamp: Utc::now(),
            command: ExecutorCommandKind::UpdateConfig,
            command_id: Uuid::nil(),
            config: Some(serde_json::json!({"x": 1})),
            mode: None,
            reason: None,
            source: None,
        };
        let v = serde_json::to_value(&cmd).unwrap();
        assert_eq!(v["command"], "update_config");
        assert_eq!(v["config"]["x"], 1);
        assert!(v.get("command_id").is_some());
    }

    #[test]
    fn a_tick_age_is_known_at_the_report_and_grows_once_reports_are_overdue() {
        let now = Utc::now();
        let ms = chrono::Duration::milliseconds;
        let every = Some(std::time::Duration::from_secs(5));
        // Reported 4 s ago, its tick 50 ms before that: 50 ms, not 4.05 s.
        assert_eq!(
            tick_age_ms(now - ms(4050), now - ms(4000), every, now),
            50.0
        );
        // No report for more than two intervals: counted to now.
        assert_eq!(
            tick_age_ms(now - ms(11_050), now - ms(11_000), every, now),
            11_050.0
        );
        // An interval nobody knows: counted to now.
        assert_eq!(
            tick_age_ms(now - ms(1050), now - ms(1000), None, now),
            1050.0
        );
        // A tick "in the future" (clocks apart) is 0 ms old.
        assert_eq!(tick_age_ms(now + ms(5), now, every, now), 0.0);
        let metrics =
            serde_json::json!({"metrics_interval_ms": 300, "last_tick_at": "2026-01-01T00:00:00Z"});
        assert_eq!(
            metrics_interval(&metrics),
            Some(std::time::Duration::from_millis(300))
        );
        assert!(last_tick_at(&metrics).is_some());
        assert_eq!(
            takes_market_data(&serde_json::json!({"subscribed_tokens": []})),
            Some(false)
        );
    }
}
