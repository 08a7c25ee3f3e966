//! `GET /health` and the reachability probes behind it (also used by `/metrics`):
//! the database answers `SELECT 1`, Redis answers `PING`, each within a short timeout.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a dependency may take to answer before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    fn done(started: Instant, result: Result<(), String>) -> Probe {
        let latency_ms = (started.elapsed().as_secs_f64() * 1e5).round() / 100.0;
        match result {
            Ok(()) => Probe {
                ok: true,
                latency_ms,
                error: None,
            },
            Err(error) => Probe {
                ok: false,
                latency_ms,
                error: Some(error),
            },
        }
    }
}

pub async fn database(state: &AppState) -> Probe {
    let started = Instant::now();
    let result = match tokio::time::timeout(
        PROBE_TIMEOUT,
        engine_store::manager::ping(&state.shared.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(crate::error_chain(&err)),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Probe::done(started, result)
}

pub async fn redis(state: &AppState) -> Probe {
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, ping(state))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
    Probe::done(started, result)
}

async fn ping(state: &AppState) -> Result<(), String> {
    let mut slot = state.redis_probe.lock().await;
    let mut conn = match slot.take() {
        Some(conn) => conn,
        None => state
            .redis
            .get_multiplexed_async_connection_with_config(&crate::publisher::connection_config())
            .await
            .map_err(|e| crate::error_chain(&e))?,
    };
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    if pong != "PONG" {
        return Err(format!("unexpected answer to PING: {pong}"));
    }
    *slot = Some(conn);
    Ok(())
}

/// `GET /health`: 200 when the manager, the database and Redis are all fine, else 503.
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let (db, redis) = tokio::join!(database(&state), redis(&state));
    let shared = &state.shared;
    let manager_ok = !shared.cancel.is_cancelled();
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (running, supervised) = {
        let live = shared.live.lock().expect("live lock");
        for entry in live.values() {
            *by_status.entry(entry.status.as_str()).or_default() += 1;
        }
        (
            live.values()
                .filter(|e| e.status == engine_protocol::Status::Running)
                .count(),
            live.len(),
        )
    };
    let healthy = manager_ok && db.ok && redis.ok;
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let engine = state.live.engine();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "manager": {
            "status": if manager_ok { "running" } else { "stopping" },
            "node": shared.node,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": state.started.elapsed().as_secs(),
            "cpu_percent": engine.as_ref().map(|e| e.cpu_percent),
            "memory_mb": engine.as_ref().map(|e| e.memory_mb),
            "redis_prefix": shared.channels.prefix(),
        },
        "database": db,
        "redis": redis,
        "strategies": {
            "running": running,
            "supervised": supervised,
            "by_status": by_status,
        },
    });
    (code, Json(body))
}
