//! `GET /api/audit?strategy=&since=&limit=`: `engine_audit`, newest first — who
//! (the login role, the engine role, whom a tool acted for), when and what; the
//! values of secret-looking config keys are hidden as everywhere in the API.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use engine_protocol::secrets::mask;
use engine_store::audit::{self as db, AuditFilter};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The most rows one answer holds.
const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    strategy: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let since = query
        .since
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "since '{text}' is not an RFC 3339 time ({e}), e.g. 2026-12-01T09:00:00Z"
                    ))
                })
        })
        .transpose()?;
    let filter = AuditFilter {
        strategy: query.strategy,
        since,
        limit,
    };
    let rows = db::audit(&state.shared.pool, &filter)
        .await
        .map_err(|e| ApiError::database("cannot read engine_audit", e))?;
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|mut row| {
            row.before = row.before.as_ref().map(mask);
            row.after = row.after.as_ref().map(mask);
            json!(row)
        })
        .collect();
    Ok(Json(json!({ "entries": entries })))
}
