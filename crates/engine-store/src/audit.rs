//! `engine_audit` (CONTRACT.md §8): the append-only record of who asked for what —
//! every command, run and strategy edit and deletion — written by triggers (migration
//! `audit`), read here for `enginectl audit` and `GET /api/audit`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// One row of `engine_audit`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The login role of the session (`session_user`).
    pub who: String,
    /// The engine role it acted through (or `superuser`).
    pub role: Option<String>,
    pub on_behalf_of: Option<String>,
    /// `strategy`, `command` or `run`.
    pub object: String,
    pub object_id: Option<Uuid>,
    /// `insert`, `update` or `delete`.
    pub action: String,
    pub strategy_id: Option<Uuid>,
    /// The strategy's name when the row was written.
    pub strategy_name: Option<String>,
    pub what: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which audit rows [`audit`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// A strategy's name: the rows written under that name, and those of the
    /// strategy called so now (renamed since).
    pub strategy: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Audit rows, newest first.
pub async fn audit(pool: &PgPool, filter: &AuditFilter) -> Result<Vec<AuditRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, who, role, on_behalf_of, object, object_id, action, strategy_id, \
                strategy_name, what, before, after \
         FROM engine_audit a \
         WHERE ($1::text IS NULL OR a.strategy_name = $1 \
                OR a.strategy_id = (SELECT c.id FROM strategy_configs c WHERE c.name = $1)) \
           AND ($2::timestamptz IS NULL OR a.at >= $2) \
         ORDER BY a.at DESC, a.id DESC LIMIT $3",
    )
    .bind(&filter.strategy)
    .bind(filter.since)
    .bind(filter.limit.max(0))
    .fetch_all(pool)
    .await
}
