//! `GET /api/strategies/{name}/orders?limit=50&run_id=`: a strategy's newest paper
//! orders from `strategy_orders` (CONTRACT.md §7): its live executors' by default,
//! one run's with `run_id`. A read like the others: the read token when one is set.

use super::api::find_strategy;
use super::error::ApiError;
use super::AppState;
use axum::extract::{Path, Query, State};
use axum::Json;
use engine_store::orders::{self as store, OrdersOf, MAX_ORDERS_LIMIT};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// Orders returned when `limit` is not given.
const DEFAULT_LIMIT: i64 = 50;

#[derive(Debug, Deserialize)]
pub struct OrdersQuery {
    limit: Option<String>,
    run_id: Option<String>,
}

impl OrdersQuery {
    fn limit(&self) -> Result<i64, ApiError> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_ORDERS_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_ORDERS_LIMIT}, got '{text}'"
                    ))
                }),
        }
    }

    fn of(&self) -> Result<OrdersOf, ApiError> {
        match self.run_id.as_deref() {
            None | Some("") => Ok(OrdersOf::Live),
            Some(text) => text.parse::<Uuid>().map(OrdersOf::Run).map_err(|_| {
                ApiError::bad_request(format!("run_id must be a run's id (a UUID), got '{text}'"))
            }),
        }
    }
}

pub async fn get_orders(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<OrdersQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit()?;
    let of = query.of()?;
    let strategy = find_strategy(&state, &name).await?;
    let pool = &state.shared.pool;
    let orders = store::recent_orders(pool, strategy.id, of, limit)
        .await
        .map_err(|e| ApiError::database("cannot read the strategy's orders", e))?;
    let total = store::count_orders(pool, strategy.id, of)
        .await
        .map_err(|e| ApiError::database("cannot count the strategy's orders", e))?;
    let run_id = match of {
        OrdersOf::Live => None,
        OrdersOf::Run(run) => Some(run),
    };
    Ok(Json(json!({
        "strategy": strategy.name,
        "strategy_id": strategy.id,
        "run_id": run_id,
        "total": total,
        "limit": limit,
        "orders": orders,
    })))
}
