//! What `engine-bench` reads and writes in an engine's database besides inserting
//! commands ([`crate::commands::insert_command_row`]): strategies created in bulk,
//! command outcomes and recorded transitions polled for their times, and counts of
//! metrics rows. (Its throw-away databases are made with
//! [`crate::manager::create_database`] and [`crate::manager::drop_database`].)

use crate::vocab::{CommandStatus, CommandWord, Status};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// Insert strategies `(name, strategy_type, config)` in one statement; returns
/// `(id, name)` of each, in no particular order.
pub async fn insert_strategies(
    pool: &PgPool,
    specs: &[(&str, &str, Value)],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let names: Vec<&str> = specs.iter().map(|s| s.0).collect();
    let types: Vec<&str> = specs.iter().map(|s| s.1).collect();
    let configs: Vec<Value> = specs.iter().map(|s| s.2.clone()).collect();
    sqlx::query_as(
        "INSERT INTO strategy_configs (name, strategy_type, config) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) RETURNING id, name",
    )
    .bind(&names)
    .bind(&types)
    .bind(&configs)
    .fetch_all(pool)
    .await
}

/// Set `limits` on every strategy of `ids` (the bench's starts with limits).
pub async fn set_limits(pool: &PgPool, ids: &[Uuid], limits: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE strategy_configs SET limits = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(limits)
        .execute(pool)
        .await
        .map(drop)
}

/// Make strategy `id` an interval strategy executed every `interval_s` seconds
/// (CONTRACT §5).
pub async fn set_execution_interval(
    pool: &PgPool,
    id: Uuid,
    interval_s: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE strategy_configs SET execution_interval_s = $2 WHERE id = $1")
        .bind(id)
        .bind(interval_s)
        .execute(pool)
        .await
        .map(drop)
}

/// Make the strategies `ids` interval strategies executed every `interval_s` seconds.
pub async fn set_execution_interval_of(
    pool: &PgPool,
    ids: &[Uuid],
    interval_s: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE strategy_configs SET execution_interval_s = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(interval_s)
        .execute(pool)
        .await
        .map(drop)
}

/// The interval execution statistics summed over every strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, sqlx::FromRow)]
pub struct ExecutionTotals {
    pub execution_count: i64,
    pub failed_executions: i64,
    pub skipped_executions: i64,
}

pub async fn execution_totals(pool: &PgPool) -> Result<ExecutionTotals, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(sum(execution_count), 0)::bigint AS execution_count,                 coalesce(sum(failed_executions), 0)::bigint AS failed_executions,                 coalesce(sum(skipped_executions), 0)::bigint AS skipped_executions          FROM strategy_configs",
    )
    .fetch_one(pool)
    .await
}

/// How many `strategy_events` rows have `reason` (e.g. `oom`).
pub async fn count_events(pool: &PgPool, reason: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM strategy_events WHERE reason = $1")
        .bind(reason)
        .fetch_one(pool)
        .await
}

/// Insert `command` (no parameters) for every strategy in one statement (so one
/// transaction, one `created_at`); returns the rows' `created_at`.
pub async fn command_every_strategy(
    pool: &PgPool,
    command: CommandWord,
) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO strategy_commands (strategy_id, command) \
         SELECT id, $1 FROM strategy_configs RETURNING created_at",
    )
    .bind(command.as_str())
    .fetch_all(pool)
    .await
}

/// How many `command` rows are finished, and the last `executed_at` among them.
pub async fn finished_commands(
    pool: &PgPool,
    command: CommandWord,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('executed', 'failed')), max(executed_at) \
         FROM strategy_commands WHERE command = $1",
    )
    .bind(command.as_str())
    .fetch_one(pool)
    .await
}

/// A command row's status, error and `executed_at`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CommandOutcome {
    pub status: CommandStatus,
    pub error: Option<String>,
    pub executed_at: Option<DateTime<Utc>>,
}

/// The outcome columns of command `id`.
pub async fn command_outcome(pool: &PgPool, id: Uuid) -> Result<CommandOutcome, sqlx::Error> {
    sqlx::query_as("SELECT status, error, executed_at FROM strategy_commands WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// The status of command `id` (on any executor: the bench polls it on a connection
/// of its own).
pub async fn command_status<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<CommandStatus, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM strategy_commands WHERE id = $1")
        .bind(id)
        .fetch_one(executor)
        .await
}

/// The transitions recorded for one command (status and time of the write), oldest
/// first.
pub async fn events_of_command(
    pool: &PgPool,
    command_id: Uuid,
) -> Result<Vec<(Status, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT new_status, at FROM strategy_events WHERE command_id = $1 ORDER BY at, id",
    )
    .bind(command_id)
    .fetch_all(pool)
    .await
}

/// When `status` was last recorded for `strategy_id`.
pub async fn last_event(
    pool: &PgPool,
    strategy_id: Uuid,
    status: Status,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(at) FROM strategy_events WHERE strategy_id = $1 AND new_status = $2",
    )
    .bind(strategy_id)
    .bind(status.as_str())
    .fetch_one(pool)
    .await
}

/// `(id, pid)` of every strategy whose row says `status`.
pub async fn pids_with_status(
    pool: &PgPool,
    status: Status,
) -> Result<Vec<(Uuid, Option<i32>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, pid FROM strategy_configs WHERE status = $1")
        .bind(status.as_str())
        .fetch_all(pool)
        .await
}

/// The status and pid in the row of strategy `id`.
pub async fn status_and_pid(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(Status, Option<i32>)>, sqlx::Error> {
    sqlx::query_as("SELECT status, pid FROM strategy_configs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// How many strategies are neither `stopped` nor `error` (their executor may be up).
pub async fn count_not_stopped(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM strategy_configs WHERE status NOT IN ('stopped', 'error')",
    )
    .fetch_one(pool)
    .await
}

/// How many `strategy_metrics` rows the strategies `ids` have.
pub async fn count_metrics(pool: &PgPool, ids: &[Uuid]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM strategy_metrics WHERE strategy_id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
}

/// In how many INSERT statements (distinct inserting transactions) those rows came.
pub async fn count_metric_inserts(pool: &PgPool, ids: &[Uuid]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM strategy_metrics WHERE strategy_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await
}

/// Insert `count` runs of one strategy in one statement (one transaction, one
/// `created_at`); returns `(id, created_at)` of each.
pub async fn insert_runs(
    pool: &PgPool,
    strategy_id: Uuid,
    mode: &str,
    parameters: &Value,
    count: i64,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters) \
         SELECT $1, $2, $3 FROM generate_series(1, $4) RETURNING id, created_at",
    )
    .bind(strategy_id)
    .bind(mode)
    .bind(parameters)
    .bind(count)
    .fetch_all(pool)
    .await
}

/// A run's state and times, as the manager wrote them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunTimes {
    pub id: Uuid,
    pub state: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the manager claimed it (`starting`).
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The state and times of the runs `ids`.
pub async fn run_times(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<RunTimes>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, state, error, created_at, started_at, finished_at \
         FROM strategy_runs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// How many of the runs `ids` are finished (any final state).
pub async fn count_finished_runs(pool: &PgPool, ids: &[Uuid]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM strategy_runs WHERE id = ANY($1) \
         AND state IN ('completed', 'error', 'cancelled', 'timed_out')",
    )
    .bind(ids)
    .fetch_one(pool)
    .await
}

/// Insert one run with a chosen id; returns its `created_at`.
pub async fn insert_run(
    pool: &PgPool,
    id: Uuid,
    strategy_id: Uuid,
    mode: &str,
    parameters: &Value,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO strategy_runs (id, strategy_id, mode, parameters) VALUES ($1, $2, $3, $4) \
         RETURNING created_at",
    )
    .bind(id)
    .bind(strategy_id)
    .bind(mode)
    .bind(parameters)
    .fetch_one(pool)
    .await
}
