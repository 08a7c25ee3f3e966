//! What the dashboard's kill switch inserts: a global command row (`strategy_id`
//! NULL), carried out by the manager like one an operator inserts with SQL.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Insert a global `command` (`stop`, `pause` or `resume`, checked by the caller);
/// its id and creation time.
pub async fn insert_global_command(
    pool: &PgPool,
    command: &str,
    parameters: &Value,
) -> Result<(Uuid, DateTime<Utc>), sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO strategy_commands (strategy_id, command, parameters) VALUES (NULL, $1, $2) \
         RETURNING id, created_at",
    )
    .bind(command)
    .bind(parameters)
    .fetch_one(pool)
    .await
}
