//! Runs over HTTP (CONTRACT.md §4), each a row insert or a read like the command
//! API: `POST /api/runs` inserts a `strategy_runs` row (202 with its place in the
//! queue and an estimated start), `GET /api/runs/{id}` reads it (with its estimated
//! completion and whether it can be cancelled), `GET /api/runs/{id}/items` its items,
//! `GET /api/runs?strategy=&state=` lists runs, `GET /api/queue` the queue, `POST
//! /api/runs/{id}/cancel` inserts a `cancel` command row, and `GET
//! /api/runs/{id}/events` streams the run's `strategy:run:{id}` channel as
//! server-sent events, the first one being the run's present state from its row.
//! `GET /api/schedules?strategy=` lists the schedules of runs with their statistics.

use super::api::find_strategy;
use super::error::ApiError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use engine_protocol::runs::RunState;
use engine_protocol::secrets::mask;
use engine_store::runs_api::{self as db, BadRunRequest, NewRun, QueueEstimate, RunRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The keys of `POST /api/runs`.
const RUN_KEYS: [&str; 5] = ["strategy", "mode", "parameters", "priority", "timeout_s"];

/// Most runs a list answers with.
const MAX_LIST: i64 = 500;

/// Most items `GET /api/runs/{id}/items` answers with.
const MAX_ITEMS: i64 = 10_000;

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

impl From<BadRunRequest> for ApiError {
    fn from(bad: BadRunRequest) -> ApiError {
        unprocessable(bad.to_string())
    }
}

fn db_error(what: &str, err: sqlx::Error) -> ApiError {
    match db::run_refusal(&err) {
        Some(words) => unprocessable(format!("{what}: {words}")),
        None => ApiError::database(what, err),
    }
}

/// What the estimates need: the queue, the active runs, the slots, the averages.
pub(super) struct QueueView {
    queued: Vec<RunRecord>,
    active: Vec<RunRecord>,
    estimate: QueueEstimate,
    /// Whether the manager said its `--max-concurrent-runs` (else the default).
    reported: bool,
}

pub(super) async fn queue_view(state: &AppState) -> Result<QueueView, ApiError> {
    let pool = &state.shared.pool;
    let (queued, active) = db::queue(pool)
        .await
        .map_err(|e| ApiError::database("cannot read the queue", e))?;
    let (max_concurrent, reported) = db::max_concurrent(pool)
        .await
        .map_err(|e| ApiError::database("cannot read the queue's limit", e))?;
    let averages = db::mode_averages(pool)
        .await
        .map_err(|e| ApiError::database("cannot read recent run times", e))?;
    Ok(QueueView {
        queued,
        active,
        estimate: QueueEstimate {
            now: Utc::now(),
            max_concurrent,
            averages,
        },
        reported,
    })
}

/// A run as the API shows it: the row's progress in the field names of its
/// `strategy:run:{id}` events, plus the estimates.
fn run_json(run: &RunRecord, view: &QueueView) -> Value {
    let estimated_start = view.estimate.start_of(run, &view.queued, &view.active);
    let estimated_completion = view.estimate.completion_of(run, &view.queued, &view.active);
    json!({
        "run_id": run.id,
        "strategy_id": run.strategy_id,
        "strategy": run.strategy,
        "name": run.strategy,
        "strategy_type": run.strategy_type,
        "mode": run.mode,
        "state": run.state,
        "status": run.state,
        "priority": run.priority,
        "timeout_s": run.timeout_s,
        "parameters": mask(&run.parameters),
        "position_in_queue": run.position_in_queue,
        "stage": run.stage,
        "progress_percent": run.progress_percent,
        "completed_items": run.completed_items,
        "total_items": run.total_items,
        "current_item": run.current_item,
        "message": run.message,
        "progress": {
            "percent": run.progress_percent,
            "completed_items": run.completed_items,
            "total_items": run.total_items,
            "current_item": run.current_item,
        },
        "metrics": {"items_per_second": run.items_per_second, "eta_s": run.eta_s},
        "config": run.config.as_ref().map(mask),
        "result": run.result,
        "error": run.error,
        "attempt": run.attempt,
        "pid": run.pid,
        "node": run.node,
        "issued_by": run.issued_by,
        "on_behalf_of": run.on_behalf_of,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "updated_at": run.updated_at,
        "estimated_start_time": estimated_start,
        "estimated_completion": estimated_completion,
        "can_cancel": !run.state.is_final(),
        "finished": run.state.is_final(),
        "url": format!("/api/runs/{}", run.id),
        "sse_endpoint": format!("/api/runs/{}/events", run.id),
    })
}

pub(super) fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("'{id}' is not a run id (a UUID)")))
}

async fn find_run(state: &AppState, id: Uuid) -> Result<RunRecord, ApiError> {
    db::run(&state.shared.pool, id)
        .await
        .map_err(|e| ApiError::database("cannot read the run", e))?
        .ok_or_else(|| {
            ApiError::not_found(format!("no run with id {id}"))
                .with("hint", "GET /api/runs lists the recent runs")
        })
}

/// The body of `POST /api/runs` as a checked run (the strategy found by name or id).
async fn new_run(state: &AppState, body: &Bytes) -> Result<NewRun, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON: {e}")).with(
            "hint",
            "send {\"strategy\": \"<name>\", \"mode\": \"backtest\", \"parameters\": {...}}",
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object, got {}",
            engine_protocol::json_kind(&value)
        )));
    };
    if let Some(key) = fields.keys().find(|k| !RUN_KEYS.contains(&k.as_str())) {
        return Err(
            unprocessable(format!("unknown field '{key}'")).with("allowed", json!(RUN_KEYS))
        );
    }
    let text = |key: &str| -> Result<Option<&str>, ApiError> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(unprocessable(format!(
                "{key} must be a string, got {}",
                engine_protocol::json_kind(other)
            ))),
        }
    };
    let Some(name) = text("strategy")? else {
        return Err(unprocessable(
            "strategy is missing: give the strategy's name (or id), e.g. \"strategy\": \"demo-sma\"",
        ));
    };
    let Some(mode) = text("mode")? else {
        return Err(unprocessable(
            "mode is missing: one of backtest, screener, alert",
        ));
    };
    let mode = db::parse_mode(mode)?;
    let priority = db::parse_priority(text("priority")?)?;
    let timeout_s = db::parse_timeout(fields.get("timeout_s"))?;
    let parameters = db::parse_parameters(fields.get("parameters"))?;
    let strategy = find_strategy(state, name).await?;
    Ok(NewRun {
        strategy_id: strategy.id,
        mode,
        parameters,
        priority,
        timeout_s,
        on_behalf_of: None,
    })
}

/// `POST /api/runs`: insert a queued run; 202 with its id, place in the queue,
/// estimated start and event stream.
pub async fn post_run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut run = new_run(&state, &body).await?;
    run.on_behalf_of = Some(caller.0);
    let inserted = db::insert_run(&state.shared.pool, &run)
        .await
        .map_err(|e| db_error("cannot insert the run", e))?;
    tracing::info!(run_id = %inserted.id, strategy_id = %run.strategy_id, mode = %run.mode, "run received over HTTP");
    let row = find_run(&state, inserted.id).await?;
    let view = queue_view(&state).await?;
    let mut body = run_json(&row, &view);
    // The row may have moved on already (a free slot); the answer says `queued`,
    // what was inserted, and `state` says where it is now.
    body["status"] = json!("queued");
    let url = format!("/api/runs/{}", inserted.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

/// `GET /api/runs/{id}`: the run, its progress, estimates and (when done) result.
pub async fn get_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = find_run(&state, parse_run_id(&id)?).await?;
    let view = queue_view(&state).await?;
    Ok(Json(run_json(&run, &view)))
}

#[derive(Debug, Deserialize)]
pub struct ItemsQuery {
    limit: Option<i64>,
}

/// `GET /api/runs/{id}/items?limit=`: the run's items in processing order.
pub async fn get_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<ItemsQuery>,
) -> Result<Json<Value>, ApiError> {
    let run = find_run(&state, parse_run_id(&id)?).await?;
    let limit = query.limit.unwrap_or(MAX_ITEMS).clamp(0, MAX_ITEMS);
    let items = db::run_items(&state.shared.pool, run.id, limit)
        .await
        .map_err(|e| ApiError::database("cannot read the run's items", e))?;
    Ok(Json(json!({
        "run_id": run.id,
        "state": run.state,
        "total_items": run.total_items,
        "count": items.len(),
        "items": items,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    strategy: Option<String>,
    /// One state or several, comma-separated.
    state: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs?strategy=&state=&limit=`: runs newest first (no results).
pub async fn list_runs(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let strategy_id = match query.strategy.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => Some(find_strategy(&state, name).await?.id),
        None => None,
    };
    let mut states = Vec::new();
    for word in query.state.iter().flat_map(|s| s.split(',')) {
        let word = word.trim();
        if word.is_empty() {
            continue;
        }
        states.push(
            word.parse::<RunState>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let filter = db::RunFilter {
        strategy_id,
        states,
        limit,
    };
    let rows = db::runs(&state.shared.pool, &filter)
        .await
        .map_err(|e| ApiError::database("cannot list runs", e))?;
    let view = queue_view(&state).await?;
    Ok(Json(json!({
        "generated_at": Utc::now(),
        "runs": rows.iter().map(|r| run_json(r, &view)).collect::<Vec<_>>(),
    })))
}

/// `GET /api/queue`: the queued runs in queue order, the active ones, and the limit.
pub async fn get_queue(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let view = queue_view(&state).await?;
    let queue: Vec<Value> = view.queued.iter().map(|r| run_json(r, &view)).collect();
    let running: Vec<Value> = view.active.iter().map(|r| run_json(r, &view)).collect();
    Ok(Json(json!({
        "generated_at": view.estimate.now,
        "queue": queue,
        "total_queued": view.queued.len(),
        "running": running,
        "total_running": view.active.len(),
        "max_concurrent": view.estimate.max_concurrent,
        "max_concurrent_reported": view.reported,
        "average_run_s": view.estimate.averages,
    })))
}

/// `POST /api/runs/{id}/cancel`: insert the `cancel` command for the run; 202 with
/// the command's id (its outcome at `/api/commands/{id}`).
pub async fn post_cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let run = find_run(&state, parse_run_id(&id)?).await?;
    let inserted = db::insert_cancel(
        &state.shared.pool,
        run.strategy_id,
        Some(run.id),
        Some(&caller.0),
    )
    .await
    .map_err(|e| ApiError::database("cannot insert the cancel command", e))?;
    tracing::info!(command_id = %inserted.id, run_id = %run.id, "cancel received over HTTP");
    let url = format!("/api/commands/{}", inserted.id);
    let body = json!({
        "id": inserted.id,
        "command_id": inserted.id,
        "run_id": run.id,
        "strategy_id": run.strategy_id,
        "strategy": run.strategy,
        "command": "cancel",
        "parameters": {"run_id": run.id},
        "status": "pending",
        "run_state": run.state,
        "created_at": inserted.created_at,
        "url": url,
    });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

/// The SSE event of a run's row: named `snapshot`, the run as `GET /api/runs/{id}`
/// shows it, with `event_type` `snapshot`.
pub(super) fn snapshot_event(run: &RunRecord, view: &QueueView) -> Event {
    let mut body = run_json(run, view);
    body["event_type"] = json!("snapshot");
    body["timestamp"] = json!(Utc::now());
    Event::default().event("snapshot").data(body.to_string())
}

#[derive(Debug, Deserialize)]
pub struct SchedulesQuery {
    strategy: Option<String>,
}

/// `GET /api/schedules?strategy=`: schedules of runs (CONTRACT.md §5) with their
/// next run time and statistics, by strategy name.
pub async fn list_schedules(
    State(state): State<Arc<AppState>>,
    Query(query): Query<SchedulesQuery>,
) -> Result<Json<Value>, ApiError> {
    let strategy_id = match query.strategy.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => Some(find_strategy(&state, name).await?.id),
        None => None,
    };
    let rows = engine_store::schedules::list_schedules(&state.shared.pool, strategy_id)
        .await
        .map_err(|e| ApiError::database("cannot list schedules", e))?;
    let schedules: Vec<Value> = rows
        .iter()
        .map(|s| {
            let mut value = serde_json::to_value(s).unwrap_or(Value::Null);
            value["parameters"] = mask(&s.schedule.parameters);
            value
        })
        .collect();
    Ok(Json(json!({
        "generated_at": Utc::now(),
        "schedules": schedules,
    })))
}
