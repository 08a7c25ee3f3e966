//! The supervisor's failures, typed: each variant carries its context and, where
//! there is one, its cause as `#[source]`. They become words only at the edge (the
//! `error` column, `strategy_events`, logs) through [`render`].

use crate::process::{ExitInfo, SpawnError};
use engine_protocol::validate::ValidateError;
use engine_protocol::Status;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Why a start did not reach `running`.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A secret reference the manager cannot resolve: nothing was spawned.
    #[error("the executor was not started")]
    Secrets(#[source] crate::secrets::SecretsError),
    #[error("the executor exited during start-up ({exit}){}", Tail(tail))]
    Exited { exit: ExitInfo, tail: String },
    #[error(
        "the executor did not finish initialising within {secs}s (start timeout) and was killed"
    )]
    TimedOut { secs: f64 },
    #[error("the manager is shutting down")]
    ShuttingDown,
    /// Cluster only: another node owns the strategy now (or this one under a newer
    /// epoch); nothing was spawned.
    #[error("this node no longer owns the strategy: {owner} does now (lease epoch {epoch})")]
    NotOwner { owner: String, epoch: i64 },
}

impl StartError {
    /// A failure that restarting cannot fix: bad config, unknown type, halted, our own
    /// kill of a start-up that hung, a spawn that did not happen.
    pub fn is_permanent(&self) -> bool {
        match self {
            StartError::Exited { exit, .. } => matches!(
                exit,
                ExitInfo::Code(c) if *c == engine_protocol::control::EXIT_BAD_CONFIG
                    || *c == engine_protocol::control::EXIT_HALTED
            ),
            _ => true,
        }
    }
}

/// Why a stop did not end in `stopped`.
#[derive(Debug, Error)]
pub enum StopError {
    #[error("the executor (pid {pid}) survived SIGKILL; it may be stuck in the kernel")]
    SurvivedKill { pid: u32 },
}

/// Why a pause, resume or config update was not acknowledged.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("the executor exited before acknowledging ({exit})")]
    ExitedBeforeAck { exit: ExitInfo },
    /// The executor's own words (or none).
    #[error("{}", reason.as_deref().unwrap_or("rejected without a reason"))]
    Rejected { reason: Option<String> },
    #[error("the executor {} within {secs}s", if *linked { "did not answer" } else { "is not connected to the manager's control socket and did not answer" })]
    NoAnswer { secs: f64, linked: bool },
}

/// Why a config update was not applied.
#[derive(Debug, Error)]
pub enum UpdateError {
    #[error("the merged config is not a JSON object")]
    NotAnObject,
    /// A secret reference of the new config cannot be resolved: nothing was sent.
    #[error("the new config was not stored")]
    Secrets(#[source] crate::secrets::SecretsError),
    #[error("config is {bytes} bytes; the limit is {limit} (the new config was not stored)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the strategy rejected the new config, which was not stored")]
    ExecutorRefused(#[source] RequestError),
    #[error("the strategy rejected the new config, which was not stored: {reason}")]
    ValidatorRefused { reason: String },
    #[error("cannot check the config: executor binary not found at {}; set --executor-path", path.display())]
    ExecutorMissing { path: PathBuf },
    #[error(transparent)]
    Validate(#[from] ValidateFailure),
    #[error("the config was accepted but could not be stored")]
    Store(#[source] sqlx::Error),
    #[error(transparent)]
    BadLimits(engine_protocol::limits::LimitError),
    #[error("the new limits could not be applied to the running executor and were not stored")]
    LimitsNotApplied {
        #[source]
        source: std::io::Error,
    },
}

/// Why `--validate` could not give a verdict (the manager's words for
/// [`ValidateError`]).
#[derive(Debug, Error)]
pub enum ValidateFailure {
    #[error("cannot run {} --validate", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config validation timed out after {}s", timeout.as_secs())]
    TimedOut { timeout: std::time::Duration },
    #[error("config validation failed to run")]
    Wait(#[source] std::io::Error),
}

impl From<ValidateError> for ValidateFailure {
    fn from(err: ValidateError) -> Self {
        match err {
            ValidateError::Spawn { path, source } => ValidateFailure::Spawn { path, source },
            ValidateError::TimedOut { timeout, .. } => ValidateFailure::TimedOut { timeout },
            ValidateError::Wait { source, .. } => ValidateFailure::Wait(source),
        }
    }
}

/// Why a command did not take effect on one strategy.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("cannot pause: the strategy is {status}, not running; start it first")]
    CannotPause { status: Status },
    #[error("cannot resume: the strategy is {status}, not running; start it instead")]
    CannotResume { status: Status },
    #[error(transparent)]
    Start(#[from] StartError),
    /// Killed or crashed in its start-up: restarted with backoff.
    #[error("{failure}; an automatic restart is scheduled")]
    StartRetrying { failure: StartError },
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// `trigger` on a strategy that is not running.
    #[error("cannot trigger: {}", trigger_refusal(*status))]
    CannotTrigger { status: Status },
    /// `trigger` on a running strategy with no `execution_interval_s`.
    #[error(
        "cannot trigger: the strategy has no execution_interval_s (it is a continuous strategy); give it one, e.g. `enginectl edit NAME --interval 60`, to execute it"
    )]
    NotInterval,
    /// The triggered execution failed, timed out, or never ended.
    #[error("the execution failed: {error}")]
    Execution { error: String },
    /// A `move`, or a drain's hand-over, that did not happen (cluster only).
    #[error(transparent)]
    HandOver(#[from] HandOverError),
}

/// What the check of a move's target found (cluster only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetCheck {
    /// Alive, not draining, below its capacity.
    Fits,
    /// The node that owns the strategy already: nothing to move.
    SameNode,
}

/// Why a strategy was not handed to another node (cluster only). The strategy stays
/// where it is (started again there when the hand-over had stopped it).
#[derive(Debug, Error)]
pub enum HandOverError {
    #[error(
        "unknown node '{node}'; the cluster's nodes are {known} (`enginectl nodes` lists them)"
    )]
    UnknownNode { node: String, known: String },
    #[error(
        "node '{node}' is not alive (its last heartbeat was {age_s:.1}s ago, its lease time is {lease_s:.1}s); move the strategy to a live node"
    )]
    DeadNode {
        node: String,
        age_s: f64,
        lease_s: f64,
    },
    #[error(
        "node '{node}' is draining and takes no strategies; pick another node, or undrain it first (`enginectl undrain {node}`)"
    )]
    Draining { node: String },
    #[error(
        "node '{node}' is full: it owns {owned} strategies and its capacity (--capacity) is {capacity}; pick another node"
    )]
    Full {
        node: String,
        owned: i64,
        capacity: i32,
    },
    #[error(
        "node '{node}' could not take the strategy at the moment of the hand-over (it filled up, began draining or stopped beating meanwhile); the strategy stays on this node"
    )]
    TargetRefused { node: String },
    #[error("this node no longer owns the strategy ({owner} does, lease epoch {epoch}); nothing was handed over")]
    Lost { owner: String, epoch: i64 },
    #[error(
        "the strategy's stop could not be recorded (the database does not answer), so it was not handed over; it stays on this node"
    )]
    DatabaseAway,
    #[error("the hand-over could not be written; the strategy stays on this node")]
    Store(#[source] sqlx::Error),
}

/// Why a strategy in `status` cannot be triggered, and what would help.
fn trigger_refusal(status: Status) -> String {
    match status {
        Status::Paused => {
            "the strategy is paused, and a paused strategy is not executed; resume it first"
                .to_string()
        }
        other => format!("the strategy is {other}, not running; start it first"),
    }
}

/// An error and its causes on one line, `: `-separated (what `{:#}` prints for anyhow).
pub fn render(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `what (exit)` or `what (exit): tail`.
pub fn describe_exit(what: &str, exit: ExitInfo, tail: &str) -> String {
    format!("{what} ({exit}){}", Tail(tail))
}

/// `: tail`, or nothing when there is no tail.
struct Tail<'a>(&'a str);

impl fmt::Display for Tail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, ": {}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_render_as_before() {
        let e = CommandError::Update(UpdateError::ExecutorRefused(RequestError::Rejected {
            reason: Some("bad threshold".into()),
        }));
        assert_eq!(
            render(&e),
            "the strategy rejected the new config, which was not stored: bad threshold"
        );
        let e = CommandError::StartRetrying {
            failure: StartError::Exited {
                exit: ExitInfo::Signal(9),
                tail: String::new(),
            },
        };
        assert_eq!(
            render(&e),
            format!(
                "the executor exited during start-up ({}); an automatic restart is scheduled",
                ExitInfo::Signal(9)
            )
        );
        let e = RequestError::NoAnswer {
            secs: 2.0,
            linked: false,
        };
        assert_eq!(
            render(&e),
            "the executor is not connected to the manager's control socket and did not answer within 2s"
        );
        let e = UpdateError::Validate(ValidateFailure::TimedOut {
            timeout: std::time::Duration::from_secs(10),
        });
        assert_eq!(render(&e), "config validation timed out after 10s");
        let e = CommandError::CannotTrigger {
            status: Status::Paused,
        };
        assert!(render(&e).contains("paused strategy is not executed; resume it first"));
        let e = CommandError::CannotTrigger {
            status: Status::Stopped,
        };
        assert_eq!(
            render(&e),
            "cannot trigger: the strategy is stopped, not running; start it first"
        );
    }
}
