//! What the manager's Prometheus `/metrics` reads from PostgreSQL, and the retention
//! of `strategy_commands`.
//!
//! The command counters live in the manager's memory: [`command_totals`] seeds them
//! once at start-up, and [`FinishedCommand`] (returned by
//! [`crate::manager::finish_command`]) adds each outcome as it is written. What
//! changes without the manager (rows an operator inserts, strategies added) is read
//! at scrape time.

use crate::vocab::Status;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A command row as its outcome was written: what the in-memory counters add.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FinishedCommand {
    /// The command word as the operator wrote it.
    pub command: String,
    /// `executed` or `failed`.
    pub status: String,
    /// `executed_at - created_at`, in seconds.
    pub latency_s: Option<f64>,
}

/// Finished command rows of one (command word, outcome, latency bucket).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CommandTotal {
    /// The command word as the operator wrote it.
    pub command: String,
    /// `executed` or `failed`.
    pub status: String,
    /// How many of `bounds` are <= the latency (`width_bucket`): 0 below the first
    /// bound, `bounds.len()` above the last; `None` without an `executed_at`.
    pub bucket: Option<i32>,
    pub count: i64,
    /// Sum of the latencies, in seconds.
    pub sum: Option<f64>,
}

/// Every finished command row (`executed` or `failed`) grouped by command word,
/// outcome and latency bucket (`executed_at - created_at` against `bounds`, seconds).
pub async fn command_totals(
    pool: &PgPool,
    bounds: &[f64],
) -> Result<Vec<CommandTotal>, sqlx::Error> {
    sqlx::query_as(
        "SELECT command, status, width_bucket(latency, $1::float8[]) AS bucket, \
                count(*) AS count, sum(latency) AS sum \
         FROM (SELECT command, status, \
                      extract(epoch FROM executed_at - created_at)::float8 AS latency \
               FROM strategy_commands WHERE status IN ('executed', 'failed')) k \
         GROUP BY 1, 2, 3",
    )
    .bind(bounds)
    .fetch_all(pool)
    .await
}

/// Command rows not finished yet: (`pending`, `processing`).
pub async fn unfinished_commands(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), \
                count(*) FILTER (WHERE status = 'processing') \
         FROM strategy_commands WHERE status IN ('pending', 'processing')",
    )
    .fetch_one(pool)
    .await
}

/// One strategy as `/metrics` labels it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StrategySeries {
    pub id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub status: Status,
    pub restart_count: i32,
}

/// Every strategy, by name.
pub async fn strategy_series(pool: &PgPool) -> Result<Vec<StrategySeries>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, strategy_type, status, restart_count FROM strategy_configs ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// Delete command rows that finished (`executed` or `failed`) before `older_than`
/// (by `executed_at`, or `created_at` for a row finished by hand without one); rows
/// still `pending` or `processing` stay whatever their age. Returns the rows deleted.
pub async fn prune_commands(pool: &PgPool, older_than: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM strategy_commands \
         WHERE status IN ('executed', 'failed') \
           AND coalesce(executed_at, created_at) < $1",
    )
    .bind(older_than)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
