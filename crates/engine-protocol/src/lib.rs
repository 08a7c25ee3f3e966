//! The engine's wire formats and the conventions its binaries share: Redis channel
//! names and payloads (the public contract), the private manager ⇄ executor control
//! link, and small rules every binary must apply the same way (URL redaction, log
//! file names, the wording of JSON kinds).
//!
//! # Layout
//! - [`messages`]: Redis channel names ([`Channels`]) and payload structs, the status
//!   words ([`Status`]) and stop modes ([`StopMode`]).
//! - [`control`]: the private control link (a Unix socket, one JSON object per line).
//! - [`inbound`]: the check every message from an executor passes (size, object,
//!   `strategy_id`).
//! - [`runs`]: runs (backtest, screener, alert): their words, Redis payloads, what
//!   the manager hands a run's process and what it writes back, the bars file.
//! - [`limits`]: a strategy's resource limits (`memory_mb`, `cpu_percent`, `pids`,
//!   `open_files`) and the one check of them.
//! - [`redact`]: credentials never reach a log line.
//! - [`secrets`]: secret references in a config (`{"secret": "name"}`), resolved
//!   for an executor only, and the one masking of secret-looking keys wherever a
//!   config is shown.
//! - [`redis_tls`]: a `rediss://…#insecure` URL only with `--tls-insecure`.
//! - [`state_dir`]: the layout of the manager's state directory (log file names,
//!   the tail of a log).
//! - [`backoff`]: the doubling retry delay every reconnect loop uses.
//! - [`procfs`]: every read of `/proc` (start times, CPU time, the process table).
//! - [`executor_env`]: the allow-list environment every executor process starts with.
//! - `schedule` (feature `schedule`): a schedule's timetable (cron in a time zone,
//!   or an interval), checked with the field at fault named, and its due times.
//! - `validate` (feature `validate`): asking the executor binary whether a config is
//!   acceptable (`--validate`), for the manager and `enginectl`.
//!
//! Strategy authors never need this crate: `strategy-sdk` re-exports the one type they
//! touch ([`Tick`]).

pub mod backoff;
pub mod control;
pub mod executor_env;
pub mod inbound;
pub mod limits;
pub mod messages;
pub mod procfs;
pub mod redact;
pub mod redis_tls;
pub mod runs;
#[cfg(feature = "schedule")]
pub mod schedule;
pub mod secrets;
pub mod state_dir;
#[cfg(feature = "validate")]
pub mod validate;

pub use messages::*;

use serde_json::Value;

/// "a string", "an array", … for messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The message of a caught panic's payload (`panic!` with a literal or a formatted
/// string), for the manager's task reports and the SDK host's execution errors.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}
