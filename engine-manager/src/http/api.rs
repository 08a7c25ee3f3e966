//! The JSON API: strategies (their row, live health, latest metrics, last error),
//! the command API (a `POST` inserts a `strategy_commands` row and answers 202 with
//! its id; `GET /api/commands/{id}` tells its outcome), and recent history for the
//! dashboard's sparklines. Values of secret-looking config keys are never shown.

use super::error::ApiError;
use super::events::HealthSample;
use super::guard::Caller;
use super::AppState;
use crate::recorder::LastMetrics;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use engine_protocol::secrets::mask;
use engine_store::api::{self as db, CommandOverview, StrategyOverview};
use engine_store::commands::{insert_command_row, parse_command};
use engine_store::CommandWord;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// How many recent commands and events the detail view shows.
const RECENT: i64 = 20;

/// The latest health sample of a live strategy; `null` for one that is not live (a
/// stopped strategy has no pid, CPU or memory, whatever its last sample said).
fn health_json(state: &AppState, sample: Option<&HealthSample>, live: bool) -> Value {
    let Some(sample) = sample.filter(|_| live) else {
        return Value::Null;
    };
    let now = Utc::now();
    let age = (now - sample.received_at).to_std().unwrap_or_default();
    let stale_after =
        (state.shared.config.health_interval * 3).max(std::time::Duration::from_secs(5));
    let msg = &sample.message;
    json!({
        "cpu_percent": msg.cpu_percent,
        "memory_mb": msg.memory_mb,
        "cpu_limit_percent": msg.cpu_limit_percent,
        "memory_limit_mb": msg.memory_limit_mb,
        "uptime_s": msg.uptime_s,
        "pid": msg.pid,
        "stale": msg.stale,
        "last_tick_age_ms": msg.last_tick_age_ms,
        "last_tick_at": msg.last_tick_at,
        "at": msg.timestamp,
        "fresh": age <= stale_after,
    })
}

/// `pnl_total` of a metrics object (absent from executors older than it).
fn pnl_total(metrics: &Value) -> Option<f64> {
    metrics.get("pnl_total").and_then(Value::as_f64)
}

/// The latest metrics: the manager's own (`live`), else the newest stored row
/// (`database`, e.g. of a strategy not running now).
fn metrics_json(row: &StrategyOverview, memory: Option<&LastMetrics>) -> Value {
    let stored;
    let (m, source) = match (memory, row.metrics_at) {
        (Some(m), _) => (m, "live"),
        (None, Some(at)) => {
            let metrics = engine_store::manager::MetricsRow {
                strategy_id: row.id,
                timestamp: at,
                source: "strategy",
                pnl: row.pnl,
                positions_count: row.positions_count,
                orders_count: row.orders_count,
                success_rate: row.success_rate,
                cpu_percent: None,
                memory_mb: None,
                metrics: row.metrics.clone().unwrap_or(Value::Null),
            };
            stored = LastMetrics::from_row(&metrics, at);
            (&stored, "database")
        }
        (None, None) => return Value::Null,
    };
    json!({
        "pnl": m.pnl,
        "pnl_total": pnl_total(&m.metrics),
        "positions_count": m.positions_count,
        "orders_count": m.orders_count,
        "success_rate": m.success_rate,
        "tick_age_ms": m.tick_age_ms(Utc::now()),
        "last_tick_at": m.last_tick_at,
        "at": m.received_at,
        "source": source,
        "metrics": m.metrics,
    })
}

fn strategy_json(
    state: &AppState,
    row: &StrategyOverview,
    health: Option<&HealthSample>,
    memory: Option<&LastMetrics>,
) -> Value {
    let live = row.status.is_live();
    let uptime_s = row
        .started_at
        .filter(|_| live)
        .map(|t| (Utc::now() - t).num_seconds().max(0));
    json!({
        "id": row.id,
        "name": row.name,
        "strategy_type": row.strategy_type,
        "config": mask(&row.config),
        "auto_start": row.auto_start,
        "desired_state": row.desired_state,
        "status": row.status,
        "pid": row.pid,
        "last_error": row.last_error,
        "restart_count": row.restart_count,
        // Its owner in a cluster; null outside one (or while no node owns it).
        "node": row.node,
        "started_at": row.started_at,
        "uptime_s": uptime_s,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "health": health_json(state, health, live),
        "metrics": metrics_json(row, memory),
        // An interval strategy's interval, time limit and statistics, and its last
        // executions (`recent`, for the dashboard's sparkline); null for a
        // continuous one.
        "executions": executions_json(state, row),
    })
}

/// An interval strategy's `executions`: its columns and `recent`, the last
/// executions this manager published (oldest first); `null` for a continuous one.
fn executions_json(state: &AppState, row: &StrategyOverview) -> Value {
    if row.executions.execution_interval_s.is_none() {
        return Value::Null;
    }
    let mut executions = serde_json::to_value(&row.executions).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut executions {
        let recent = state.shared.recent_executions.of(row.id);
        fields.insert("recent".into(), json!(recent));
    }
    executions
}

/// `GET /api/strategies`: every strategy, by name.
pub async fn list_strategies(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let rows = db::strategies(&state.shared.pool)
        .await
        .map_err(|e| ApiError::database("cannot list strategies", e))?;
    let health = state.live.all_health();
    let metrics = state
        .shared
        .last_metrics
        .lock()
        .expect("last_metrics lock")
        .clone();
    let list: Vec<Value> = rows
        .iter()
        .map(|row| strategy_json(&state, row, health.get(&row.id), metrics.get(&row.id)))
        .collect();
    Ok(Json(json!({
        "generated_at": Utc::now(),
        "node": state.shared.node,
        // Whether this manager is a cluster node (each strategy's `node` is its owner).
        "cluster": state.shared.scope.node().is_some(),
        "strategies": list,
    })))
}

/// Find a strategy by name (or, failing that, by id); 404 with suggestions.
pub(super) async fn find_strategy(
    state: &AppState,
    name: &str,
) -> Result<StrategyOverview, ApiError> {
    let by_name = db::strategy_by_name(&state.shared.pool, name)
        .await
        .map_err(|e| ApiError::database("cannot look up the strategy", e))?;
    if let Some(row) = by_name {
        return Ok(row);
    }
    if let Ok(id) = name.parse::<Uuid>() {
        let by_id = db::strategy_by_id(&state.shared.pool, id)
            .await
            .map_err(|e| ApiError::database("cannot look up the strategy", e))?;
        if let Some(row) = by_id {
            return Ok(row);
        }
    }
    let names = db::strategy_names(&state.shared.pool, 1000)
        .await
        .map_err(|e| ApiError::database("cannot look up the strategy", e))?;
    let wanted = name.to_lowercase();
    let close: Vec<&String> = names
        .iter()
        .filter(|n| {
            let n = n.to_lowercase();
            !wanted.is_empty() && (n.contains(&wanted) || wanted.contains(&n))
        })
        .take(10)
        .collect();
    let mut err = ApiError::not_found(format!("no strategy named '{name}'"));
    err = if !close.is_empty() {
        err.with("did_you_mean", json!(close))
    } else if names.is_empty() {
        err.with(
            "hint",
            "there are no strategies yet: INSERT INTO strategy_configs (name, strategy_type, config) VALUES (...)",
        )
    } else {
        err.with(
            "hint",
            format!(
                "names are case-sensitive; GET /api/strategies lists all {} (first: {})",
                names.len(),
                names
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    Err(err)
}

fn command_json(command: &CommandOverview) -> Value {
    let latency_ms = command
        .executed_at
        .map(|t| (t - command.created_at).num_milliseconds());
    json!({
        "id": command.id,
        "strategy_id": command.strategy_id,
        "strategy": command.strategy,
        "command": command.command,
        "parameters": mask(&command.parameters),
        "status": command.status,
        "error": command.error,
        "created_at": command.created_at,
        "executed_at": command.executed_at,
        "latency_ms": latency_ms,
        "finished": command.status.is_finished(),
        "global": command.strategy_id.is_none(),
        "issued_by": command.issued_by,
        "on_behalf_of": command.on_behalf_of,
    })
}

/// `GET /api/strategies/{name}`: one strategy, with its recent commands and events.
pub async fn get_strategy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = find_strategy(&state, &name).await?;
    let health = state.live.health(row.id);
    let metrics = state
        .shared
        .last_metrics
        .lock()
        .expect("last_metrics lock")
        .get(&row.id)
        .cloned();
    let mut body = strategy_json(&state, &row, health.as_ref(), metrics.as_ref());
    let commands = db::recent_commands(&state.shared.pool, row.id, RECENT)
        .await
        .map_err(|e| ApiError::database("cannot read recent commands", e))?;
    let events = db::recent_events(&state.shared.pool, row.id, RECENT)
        .await
        .map_err(|e| ApiError::database("cannot read recent events", e))?;
    let obj = body.as_object_mut().expect("an object");
    obj.insert(
        "recent_commands".into(),
        Value::Array(commands.iter().map(command_json).collect()),
    );
    obj.insert("recent_events".into(), json!(events));
    Ok(Json(body))
}

/// `POST /api/strategies/{name}/{command}`: the body (optional, a JSON object) is the
/// command's `parameters`. Inserts the row and answers 202 with its id.
pub async fn post_command(
    State(state): State<Arc<AppState>>,
    Path((name, command)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Ok(word) = command.parse::<CommandWord>() else {
        return Err(
            ApiError::bad_request(format!("unknown command '{command}'")).with(
                "allowed",
                // Per strategy: drain and undrain name a node, not a strategy.
                json!(CommandWord::ALL
                    .into_iter()
                    .filter(|w| !w.only_global())
                    .collect::<Vec<_>>()),
            ),
        );
    };
    let parameters: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the body is not valid JSON: {e}")).with(
                "hint",
                "send the command's parameters as a JSON object, e.g. {\"timeout_s\": 30} for stop or {\"config\": {...}} for update; or no body",
            )
        })?
    };
    if let Err(invalid) = parse_command(&command, &parameters, false) {
        return Err(ApiError::bad_request(invalid.to_string()));
    }
    let strategy = find_strategy(&state, &name).await?;
    let inserted = insert_command_row(
        &state.shared.pool,
        Some(strategy.id),
        word,
        &parameters,
        Some(&caller.0),
    )
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
            ApiError::not_found(format!("strategy '{}' was deleted", strategy.name))
        }
        _ => ApiError::database("cannot insert the command", e),
    })?;
    let id = inserted.id;
    tracing::info!(command_id = %id, strategy = %strategy.name, command = %command, "command received over HTTP");
    let url = format!("/api/commands/{id}");
    let body = json!({
        "id": id,
        "strategy_id": strategy.id,
        "strategy": strategy.name,
        "command": command,
        "parameters": mask(&parameters),
        "status": "pending",
        "created_at": inserted.created_at,
        "url": url,
    });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

/// `GET /api/commands/{id}`: a command's status, error and timestamps.
pub async fn get_command(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("'{id}' is not a command id (a UUID)")))?;
    let row = db::command(&state.shared.pool, id)
        .await
        .map_err(|e| ApiError::database("cannot read the command", e))?;
    match row {
        Some(row) => Ok(Json(command_json(&row))),
        None => Err(ApiError::not_found(format!("no command with id {id}"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    minutes: Option<u32>,
}

/// `GET /api/history?minutes=10`: CPU, memory and PnL of every strategy over the
/// last minutes (1 to 120), in 60 buckets, from `strategy_metrics`.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = query.minutes.unwrap_or(10);
    if !(1..=120).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "minutes must be between 1 and 120, got {minutes}"
        )));
    }
    let window_s = f64::from(minutes) * 60.0;
    let bucket_s = (window_s / 60.0).max(2.0);
    let rows = db::history(&state.shared.pool, window_s, bucket_s)
        .await
        .map_err(|e| ApiError::database("cannot read the metrics history", e))?;
    let mut series: BTreeMap<Uuid, [Vec<Value>; 4]> = BTreeMap::new();
    for b in rows {
        let s = series.entry(b.strategy_id).or_default();
        s[0].push(json!(b.bucket.timestamp_millis()));
        s[1].push(json!(b.cpu.map(round2)));
        s[2].push(json!(b.mem.map(round2)));
        s[3].push(json!(b.pnl));
    }
    let strategies: Map<String, Value> = series
        .into_iter()
        .map(|(id, [t, cpu, mem, pnl])| {
            (
                id.to_string(),
                json!({"t": t, "cpu": cpu, "mem": mem, "pnl": pnl}),
            )
        })
        .collect();
    Ok(Json(json!({
        "minutes": minutes,
        "bucket_s": bucket_s,
        "strategies": strategies,
    })))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
