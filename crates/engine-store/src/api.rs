//! What the manager's HTTP API reads: strategies with their newest metrics, a
//! strategy's recent commands and events, one command's outcome, and the bucketed
//! metrics history behind the dashboard's sparklines. (Commands are inserted with
//! [`crate::commands::insert_command_row`].)

use crate::vocab::{CommandStatus, DesiredState, Status};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A strategy's row with its newest `strategy` metrics row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrategyOverview {
    pub id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub config: Value,
    pub auto_start: bool,
    pub desired_state: DesiredState,
    pub status: Status,
    pub pid: Option<i32>,
    pub last_error: Option<String>,
    pub restart_count: i32,
    /// Its owner in a cluster (`None`: none, or no cluster).
    pub node: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub metrics_at: Option<DateTime<Utc>>,
    pub pnl: Option<f64>,
    pub positions_count: Option<i32>,
    pub orders_count: Option<i32>,
    pub success_rate: Option<f64>,
    pub metrics: Option<Value>,
    /// Interval executions: the interval, the time limit and the statistics.
    #[sqlx(flatten)]
    pub executions: crate::executions::ExecutionColumns,
}

/// The newest `strategy` metrics row among a strategy's last 64 rows (health rows
/// interleave): bounded work per strategy however long the history is.
const STRATEGY_SELECT: &str = "SELECT c.id, c.name, c.strategy_type, c.config, c.auto_start, \
       c.desired_state, c.status, c.pid, c.last_error, c.restart_count, c.node, c.started_at, \
       c.created_at, c.updated_at, m.\"timestamp\" AS metrics_at, m.pnl::float8 AS pnl, \
       m.positions_count, m.orders_count, m.success_rate, m.metrics, \
       c.execution_interval_s, c.max_execution_s, c.next_execution_at, c.last_execution_at, \
       c.execution_count, c.successful_executions, c.failed_executions, c.skipped_executions, \
       c.last_execution_duration_ms, c.avg_execution_ms, c.last_execution_error \
     FROM strategy_configs c \
     LEFT JOIN LATERAL ( \
       SELECT * FROM ( \
         SELECT \"timestamp\", source, pnl, positions_count, orders_count, success_rate, metrics \
         FROM strategy_metrics WHERE strategy_id = c.id ORDER BY \"timestamp\" DESC LIMIT 64) recent \
       WHERE source = 'strategy' ORDER BY \"timestamp\" DESC LIMIT 1) m ON true";

/// Every strategy, by name.
pub async fn strategies(pool: &PgPool) -> Result<Vec<StrategyOverview>, sqlx::Error> {
    sqlx::query_as(&format!("{STRATEGY_SELECT} ORDER BY c.name"))
        .fetch_all(pool)
        .await
}

/// The strategy called `name`.
pub async fn strategy_by_name(
    pool: &PgPool,
    name: &str,
) -> Result<Option<StrategyOverview>, sqlx::Error> {
    sqlx::query_as(&format!("{STRATEGY_SELECT} WHERE c.name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// The strategy with id `id`.
pub async fn strategy_by_id(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<StrategyOverview>, sqlx::Error> {
    sqlx::query_as(&format!("{STRATEGY_SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The first `limit` strategy names, sorted (for "did you mean").
pub async fn strategy_names(pool: &PgPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM strategy_configs ORDER BY name LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A command row with its strategy's name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandOverview {
    pub id: Uuid,
    pub strategy_id: Option<Uuid>,
    pub strategy: Option<String>,
    /// As the operator wrote it (the column has no CHECK constraint; see [`crate::vocab`]).
    pub command: String,
    pub parameters: Value,
    pub status: CommandStatus,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub executed_at: Option<DateTime<Utc>>,
    /// The login role that inserted it (stamped by the database, CONTRACT.md §8).
    pub issued_by: String,
    /// The person or token the inserting tool acted for.
    pub on_behalf_of: Option<String>,
}

const COMMAND_SELECT: &str = "SELECT k.id, k.strategy_id, c.name AS strategy, k.command, \
     k.parameters, k.status, k.error, k.created_at, k.executed_at, k.issued_by, k.on_behalf_of \
     FROM strategy_commands k LEFT JOIN strategy_configs c ON c.id = k.strategy_id";

/// The commands of strategy `$1`: its own, and the global ones that concerned it
/// (see [`crate::operator::history`]).
pub(crate) const COMMANDS_OF_STRATEGY: &str = "(k.strategy_id = $1 OR (k.strategy_id IS NULL \
     AND EXISTS (SELECT 1 FROM strategy_events e WHERE e.strategy_id = $1 AND e.command_id = k.id)))";

/// The newest `limit` commands of one strategy: its own, and the global ones that
/// concerned it (`strategy_id` NULL in those).
pub async fn recent_commands(
    pool: &PgPool,
    strategy_id: Uuid,
    limit: i64,
) -> Result<Vec<CommandOverview>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{COMMAND_SELECT} WHERE {COMMANDS_OF_STRATEGY} ORDER BY k.created_at DESC, k.seq DESC LIMIT $2"
    ))
    .bind(strategy_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One command row.
pub async fn command(pool: &PgPool, id: Uuid) -> Result<Option<CommandOverview>, sqlx::Error> {
    sqlx::query_as(&format!("{COMMAND_SELECT} WHERE k.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// One row of `strategy_events`, as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventOverview {
    pub at: DateTime<Utc>,
    pub old_status: Option<Status>,
    pub new_status: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub command_id: Option<Uuid>,
    pub pid: Option<i32>,
}

/// The newest `limit` events of one strategy.
pub async fn recent_events(
    pool: &PgPool,
    strategy_id: Uuid,
    limit: i64,
) -> Result<Vec<EventOverview>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, old_status, new_status, reason, error, command_id, pid FROM strategy_events \
         WHERE strategy_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(strategy_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One strategy's metrics over one time bucket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryBucket {
    pub strategy_id: Uuid,
    pub bucket: DateTime<Utc>,
    /// Mean CPU of the health samples.
    pub cpu: Option<f64>,
    /// Mean resident memory of the health samples.
    pub mem: Option<f64>,
    /// The bucket's last PnL the strategy reported.
    pub pnl: Option<f64>,
}

/// The metrics of the last `window_s` seconds in buckets of `bucket_s` seconds, by
/// strategy and time.
pub async fn history(
    pool: &PgPool,
    window_s: f64,
    bucket_s: f64,
) -> Result<Vec<HistoryBucket>, sqlx::Error> {
    sqlx::query_as(
        "SELECT strategy_id, \
                date_bin(make_interval(secs => $2), \"timestamp\", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, \
                avg(cpu_percent) FILTER (WHERE source = 'health') AS cpu, \
                avg(memory_mb) FILTER (WHERE source = 'health') AS mem, \
                (array_agg(pnl::float8 ORDER BY \"timestamp\" DESC) \
                    FILTER (WHERE source = 'strategy' AND pnl IS NOT NULL))[1] AS pnl \
         FROM strategy_metrics WHERE \"timestamp\" > now() - make_interval(secs => $1) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(window_s)
    .bind(bucket_s)
    .fetch_all(pool)
    .await
}
