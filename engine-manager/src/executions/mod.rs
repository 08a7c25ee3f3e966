//! Interval executions (CONTRACT §5): the decisions of when a strategy with an
//! `execution_interval_s` is executed, kept apart from the doing.
//!
//! - [`plan`]: [`plan::ExecutionPlan`], one timer structure over every interval
//!   strategy — which executions are due at `now`, which may start under the
//!   concurrency limit, which are skipped, timed out or must be killed, and the
//!   statistics the manager keeps — with no I/O and no tasks.
//!
//! Not wired yet: no supervisor, database column or flag drives it so far.

pub mod plan;
