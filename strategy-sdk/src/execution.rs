//! Interval execution: what one [`crate::Strategy::on_execute`] step returns — an
//! [`ExecutionReport`] when it ended well, an [`ExecuteError`] when it did not — and
//! why the [`crate::Host`] could not run one ([`ExecutionError`]).
//!
//! A strategy with an `execution_interval_s` is executed once per interval on the
//! manager's clock, and once per `trigger` command; between executions it still gets
//! its ticks (to keep prices) like any live strategy.

use crate::host::Phase;

/// What an execution that ended well did: an optional one-line message for the
/// operator (e.g. why nothing was bought).
///
/// ```
/// use strategy_sdk::ExecutionReport;
///
/// assert_eq!(ExecutionReport::done().message(), None);
/// let skipped = ExecutionReport::with_message("price above its average: nothing bought");
/// assert_eq!(skipped.message(), Some("price above its average: nothing bought"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionReport {
    message: Option<String>,
}

impl ExecutionReport {
    /// Done, nothing to say.
    pub fn done() -> Self {
        ExecutionReport::default()
    }

    /// Done, with a message for the operator.
    pub fn with_message(message: impl Into<String>) -> Self {
        ExecutionReport {
            message: Some(message.into()),
        }
    }

    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

/// Why an execution failed, in words for the operator (the execution counts as
/// failed and a `trigger` command fails with this message).
///
/// ```
/// use strategy_sdk::ExecuteError;
///
/// let err = ExecuteError::new("no price for BTC-USD yet");
/// assert_eq!(err.to_string(), "no price for BTC-USD yet");
/// assert!(ExecuteError::unsupported().to_string().contains("does not support interval execution"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecuteError {
    message: String,
}

impl ExecuteError {
    pub fn new(message: impl Into<String>) -> Self {
        ExecuteError {
            message: message.into(),
        }
    }

    /// What the default [`crate::Strategy::on_execute`] returns.
    pub fn unsupported() -> Self {
        ExecuteError::new(
            "this strategy does not support interval execution (it does not implement on_execute)",
        )
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why [`crate::Host::execute`] returned no report.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecutionError {
    /// Only a running strategy is executed (not before `on_start`, not while
    /// paused, not after `on_shutdown`).
    #[error("the strategy is not running (it is {})", phase_word(*.0))]
    NotRunning(Phase),
    /// The strategy's `on_execute` returned an error.
    #[error(transparent)]
    Failed(#[from] ExecuteError),
    /// The strategy's `on_execute` panicked; the panic's message is kept.
    #[error("the strategy panicked during the execution: {0}")]
    Panicked(String),
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Created => "not started",
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Stopped => "stopped",
    }
}
