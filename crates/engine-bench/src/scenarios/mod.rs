//! The three parts of the bench, each on engines of its own:
//! - [`latency()`]: command claim, start, stop and crash-detection latencies, one
//!   sample at a time on a quiet engine, and the executors' resident memory;
//! - [`throughput()`]: metrics persisted per second and ticks per second through
//!   one executor;
//! - [`growth()`]: manager memory and CPU, executors' memory and CPU, and start-all
//!   time at each scale;
//! - [`runs()`]: backtests, screeners, the run queue and cancel (issue #11);
//! - [`cluster()`]: three `--cluster` nodes: renewal statements, self-fencing with
//!   nothing failing, and the failover of a killed node (issue #13; not in the
//!   default parts);
//! - [`lateness()`]: how late 1 000 interval strategies at 1 s start against their
//!   due times, and what the manager spends on them (issue #12).
//!
//! Times are wall-clock (`CLOCK_REALTIME`, shared by PostgreSQL, the executors and
//! the bench on this one machine): a command's origin is its row's `created_at`
//! (`now()` of its own autocommit INSERT), a message's time is when the bench's
//! subscription received it, a row's end is its `executed_at`.

mod cluster;
mod growth;
mod latency;
mod lateness;
mod runs;
mod throughput;

pub use cluster::cluster;
pub use growth::growth;
pub use latency::latency;
pub use lateness::lateness;
pub use runs::runs;
pub use throughput::throughput;

use crate::engine::{Binaries, CleanupRegistry};
use crate::BenchArgs;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What every part needs.
pub struct BenchContext {
    pub args: BenchArgs,
    pub binaries: Binaries,
    pub cleanup: CleanupRegistry,
}

/// Milliseconds from `earlier` to `later`.
pub(crate) fn ms(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Warm-up samples run before each latency series and left out of it.
pub(crate) const WARMUP: usize = 3;
/// The longest any single expected event may take before the bench gives up.
pub(crate) const EVENT_DEADLINE: Duration = Duration::from_secs(30);
