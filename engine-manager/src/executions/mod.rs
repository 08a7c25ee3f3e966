//! Interval executions (CONTRACT §5): the decisions of when a strategy with an
//! `execution_interval_s` is executed, kept apart from the doing.
//!
//! - [`plan`]: [`plan::ExecutionPlan`], one timer structure over every interval
//!   strategy — which executions are due at `now`, which may start under the
//!   concurrency limit, which are skipped, timed out or must be killed, and the
//!   statistics the manager keeps — with no I/O and no tasks.
//! - [`task`]: [`task::Executions`], the one task that drives the plan: fed by the
//!   supervisors (`running` reached and left, `trigger` commands, execution ends),
//!   it asks them to execute or kill, answers triggers, publishes
//!   `strategy:execution:{id}` and writes the statistics in batches.
//! - [`recent`]: [`recent::RecentExecutions`], the last executions of each strategy
//!   as published, for the HTTP API and the dashboard's sparkline.

pub mod plan;
pub mod recent;
pub mod task;
