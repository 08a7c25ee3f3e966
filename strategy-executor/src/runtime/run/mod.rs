//! Run mode: `strategy-executor --run-id {id} --runs-dir {dir}`, one finite run
//! (backtest, screener or alert scan) of a strategy's own code, as its own process
//! (CONTRACT §4).
//!
//! The manager writes a [`RunInput`] on stdin and the run's bars to its bars file
//! ([`engine_protocol::runs::bars_file`]); the process streams the bars (never the
//! whole file in memory), runs one instance of the strategy per symbol (its config's
//! `token` set to the symbol, where the config or the type's example config has a
//! `token`), and appends [`RunOutput`] lines to its outbox: `started`, `progress`
//! (the first, then at most one per `progress_interval_ms`, and the last),
//! `stage_completed`, one `item` per symbol as it finishes, each `alert` as it is
//! raised, and last `result` or `error`. It exits 0 after either of those: an
//! `error` line is the run's outcome, not a crash. A panic in strategy code becomes
//! an `error` line naming the symbol. The process opens no database connection.
//!
//! # Layout
//! - `source.rs`: the bars file as a stream, read while the manager still writes it,
//!   with how far the reading is.
//! - `outbox.rs`: the outbox lines and the progress throttle.
//! - `orders.rs`: a backtest's fills, appended to the run's orders file for
//!   `strategy_orders`.
//! - `backtest.rs`: per symbol the SDK's streaming [`strategy_sdk::backtest::Backtest`],
//!   and the equal-weight portfolio the result describes.
//! - `judge.rs`: screener (`Strategy::score`) and alert (`Strategy::signal`) runs.

mod backtest;
mod judge;
mod orders;
mod outbox;
mod source;

use super::errors::{error_chain, one_line};
use engine_protocol::control;
use engine_protocol::runs::bars_file::BarsFileError;
use engine_protocol::runs::{outbox_path, RunInput, RunMode, RunOutput};
use outbox::{Outbox, Reporter};
use serde_json::Value;
use source::BarsSource;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use strategy_sdk::backtest::BacktestError;
use strategy_sdk::{Registry, RegistryError, Strategy};
use uuid::Uuid;

/// Bars between two looks at the clock for a progress line.
const PROGRESS_EVERY_BARS: u32 = 4096;

/// Exit code of a run process whose input or bars file was cut short (its manager
/// died or failed while handing them over): it ends without a result or an error
/// line, and its run is tried again by the manager's rule.
pub const EXIT_CUT_SHORT: u8 = 3;

/// Why a run ended `error` (the text of its `error` line).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read the run's input from stdin")]
    ReadInput(#[source] std::io::Error),
    #[error("the run's input on stdin is not a run input: {0}")]
    BadInput(String),
    #[error(
        "the run's input on stdin ends early ({0}): its manager stopped while handing it over"
    )]
    InputCut(String),
    #[error(
        "the run's input is for run {found}, but this process was started with --run-id {expected}"
    )]
    OtherRun { expected: Uuid, found: Uuid },
    #[error("{0}")]
    Strategy(#[from] RegistryError),
    #[error("{strategy_type} supports {supported}; a {mode} run needs one of: {candidates}")]
    Unsupported {
        strategy_type: String,
        mode: RunMode,
        supported: String,
        candidates: String,
    },
    #[error("a run's mode is backtest, screener or alert, not {0}")]
    LiveMode(RunMode),
    #[error("cannot read the bars file '{path}'")]
    Bars {
        path: String,
        #[source]
        source: BarsFileError,
    },
    #[error("the bars file has bars of {symbol}, which the run does not name")]
    ForeignSymbol { symbol: String },
    #[error("the bars of {symbol} are not together in the bars file (it must be ordered by symbol, then time)")]
    Scattered { symbol: String },
    #[error("{symbol}: the backtest stopped")]
    Backtest {
        symbol: String,
        #[source]
        source: BacktestError,
    },
    #[error("no bars for any of the run's {symbols} symbols between {start} and {end}")]
    NoBars {
        symbols: usize,
        start: String,
        end: String,
    },
    #[error("cannot write the run's outbox")]
    Outbox(#[from] std::io::Error),
}

impl RunError {
    /// What the manager hands over was cut short: the input on stdin, or the bars
    /// file (it ends without its trailer and its writer is gone).
    fn cut_short(&self) -> bool {
        matches!(
            self,
            RunError::InputCut(_)
                | RunError::Bars {
                    source: BarsFileError::Truncated { .. },
                    ..
                }
        )
    }
}

/// What a mode needs of the run: its input, the registry, the outbox, and the
/// symbol being worked on (so that a panic can name it).
pub(super) struct RunScope<'a> {
    input: &'a RunInput,
    registry: &'a Registry,
    reporter: Reporter,
    current: &'a RefCell<String>,
    positions: HashMap<&'a str, usize>,
    /// Whether the type's config takes a `token` (set to each symbol).
    has_token: bool,
    /// A backtest's orders file, when the manager asked for one.
    orders: Option<orders::OrdersFile>,
}

impl<'a> RunScope<'a> {
    /// An instance of the strategy for `symbol`.
    fn instance(&self, symbol: &str) -> Result<Box<dyn Strategy>, RunError> {
        let mut config = self.input.config.clone();
        if self.has_token {
            if let Value::Object(map) = &mut config {
                map.insert("token".into(), Value::String(symbol.to_string()));
            }
        }
        Ok(self.registry.create(&self.input.strategy_type, &config)?)
    }

    /// The position of `symbol` in the run's list.
    fn position(&self, symbol: &str) -> Result<usize, RunError> {
        self.positions
            .get(symbol)
            .copied()
            .ok_or_else(|| RunError::ForeignSymbol {
                symbol: symbol.to_string(),
            })
    }

    /// Note the symbol being worked on.
    fn working_on(&self, symbol: &str) {
        let mut current = self.current.borrow_mut();
        current.clear();
        current.push_str(symbol);
    }

    fn open_bars(&self) -> Result<BarsSource, RunError> {
        let input = self.input;
        BarsSource::open(
            &input.bars_path,
            &input.more_bars_paths,
            input.start,
            input.end,
            input.symbols.len(),
        )
        .map_err(|source| RunError::Bars {
            path: self.input.bars_path.display().to_string(),
            source,
        })
    }

    fn bars_error(&self, source: BarsFileError) -> RunError {
        RunError::Bars {
            path: self.input.bars_path.display().to_string(),
            source,
        }
    }

    /// Open the orders file, if the run has one.
    fn open_orders(&mut self) -> Result<(), RunError> {
        if let Some(path) = &self.input.orders_path {
            self.orders = Some(orders::OrdersFile::open(path)?);
        }
        Ok(())
    }

    /// Append a backtest's fills to the orders file (nothing without one).
    fn write_orders(
        &mut self,
        fills: Vec<strategy_sdk::backtest::TimedFill>,
    ) -> Result<(), RunError> {
        match &mut self.orders {
            Some(file) if !fills.is_empty() => Ok(file.write(fills)?),
            _ => Ok(()),
        }
    }

    fn no_bars(&self) -> RunError {
        RunError::NoBars {
            symbols: self.input.symbols.len(),
            start: self.input.start.to_rfc3339(),
            end: self.input.end.to_rfc3339(),
        }
    }
}

/// The whole of run mode: read the input, run, write the last line, exit.
pub fn run_process(run_id: Uuid, runs_dir: &Path, registry: &Registry) -> ExitCode {
    // Warnings and errors only: a run's fills are not logged one by one.
    super::start::init_tracing("warn");
    let input = read_input(run_id);
    let outbox_at = match &input {
        Ok(input) => input.outbox_path.clone(),
        Err(_) => outbox_path(runs_dir, run_id),
    };
    let mut outbox = match Outbox::open(&outbox_at) {
        Ok(outbox) => outbox,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot open the run's outbox '{}': {err}",
                outbox_at.display()
            );
            return ExitCode::from(control::EXIT_BAD_CONFIG as u8);
        }
    };
    let outcome = match input {
        Ok(input) => run_input(&input, registry, outbox),
        Err(err) if err.cut_short() => Ok(Some(one_line(&error_chain(&err)))),
        Err(err) => {
            let error = one_line(&error_chain(&err));
            outbox.write(&RunOutput::Error { error }).map(|()| None)
        }
    };
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(cut_short)) => {
            // The bars file's writer is gone before its end (the manager died or
            // failed mid-COPY): no outcome, so that the manager's retry rule applies.
            let _ = writeln!(
                std::io::stderr(),
                "error: {cut_short}; exiting without a result"
            );
            ExitCode::from(EXIT_CUT_SHORT)
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the outbox: {err}");
            ExitCode::from(1)
        }
    }
}

fn read_input(run_id: Uuid) -> Result<RunInput, RunError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(RunError::ReadInput)?;
    let input: RunInput = serde_json::from_str(&text).map_err(|e| match e.is_eof() {
        true => RunError::InputCut(e.to_string()),
        false => RunError::BadInput(e.to_string()),
    })?;
    if input.run_id != run_id {
        return Err(RunError::OtherRun {
            expected: run_id,
            found: input.run_id,
        });
    }
    Ok(input)
}

/// Run `input`, and write its last line (`result` or `error`); or, its bars file
/// cut short, write none and say why.
fn run_input(
    input: &RunInput,
    registry: &Registry,
    mut outbox: Outbox,
) -> std::io::Result<Option<String>> {
    outbox.write(&RunOutput::Started {
        pid: std::process::id(),
        total_items: input.symbols.len() as i64,
    })?;
    let interval = Duration::from_millis(input.progress_interval_ms);
    let reporter = Reporter::new(outbox, interval, input.symbols.len() as i64);
    let current = RefCell::new(String::new());
    let mut scope = RunScope {
        input,
        registry,
        reporter,
        current: &current,
        positions: input
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.symbol.as_str(), i))
            .collect(),
        has_token: false,
        orders: None,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| run_mode(&mut scope)));
    let last = match outcome {
        Ok(Ok(result)) => RunOutput::Result { result },
        Ok(Err(err)) if err.cut_short() => return Ok(Some(one_line(&error_chain(&err)))),
        Ok(Err(err)) => RunOutput::Error {
            error: one_line(&error_chain(&err)),
        },
        Err(payload) => {
            let message = engine_protocol::panic_message(payload.as_ref());
            let symbol = current.borrow();
            let error = if symbol.is_empty() {
                format!("the strategy panicked: {message}")
            } else {
                format!("the strategy panicked on {symbol}: {message}")
            };
            RunOutput::Error {
                error: one_line(&error),
            }
        }
    };
    scope.reporter.write(&last).map(|()| None)
}

/// Check the type, its mode and its config, then run the mode.
fn run_mode(scope: &mut RunScope<'_>) -> Result<Value, RunError> {
    let input = scope.input;
    let info = scope.registry.info(&input.strategy_type).ok_or_else(|| {
        RunError::Strategy(RegistryError::UnknownType {
            requested: input.strategy_type.clone(),
            registered: scope.registry.types(),
        })
    })?;
    if !info.supports(input.mode) {
        return Err(unsupported(
            scope.registry,
            &input.strategy_type,
            input.mode,
        ));
    }
    scope.has_token = has_key(&input.config, "token") || has_key(&info.example_config, "token");
    // A config the strategy rejects ends the run before any work.
    let first = input.symbols.first().map_or("", |s| s.symbol.as_str());
    scope.instance(first)?;
    match input.mode {
        RunMode::Backtest => backtest::run(scope),
        RunMode::Screener => judge::screener(scope),
        RunMode::Alert => judge::alert(scope),
        RunMode::Live => Err(RunError::LiveMode(RunMode::Live)),
    }
}

fn has_key(config: &Value, key: &str) -> bool {
    config.as_object().is_some_and(|map| map.contains_key(key))
}

/// "dca supports live only; a backtest run needs one of: …".
fn unsupported(registry: &Registry, strategy_type: &str, mode: RunMode) -> RunError {
    let supported = registry
        .info(strategy_type)
        .map(|info| {
            let modes: Vec<&str> = info.modes.iter().map(|m| m.as_str()).collect();
            match modes.as_slice() {
                [only] => format!("{only} only"),
                _ => modes.join(", "),
            }
        })
        .unwrap_or_default();
    let candidates: Vec<String> = registry
        .infos()
        .filter(|info| info.supports(mode))
        .map(|info| info.strategy_type.clone())
        .collect();
    RunError::Unsupported {
        strategy_type: strategy_type.to_string(),
        mode,
        supported,
        candidates: if candidates.is_empty() {
            "none registered".to_string()
        } else {
            candidates.join(", ")
        },
    }
}
