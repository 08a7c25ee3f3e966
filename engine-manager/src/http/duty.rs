//! What a person on duty needs beyond the table: the kill switch (a global `stop`,
//! `pause` or `resume`, inserted as a `strategy_commands` row with no strategy),
//! a config checked by the strategy itself before an `update` is sent, and the
//! tail of a strategy's log.
//!
//! - `POST /api/global/{stop|pause|resume}`: the body (optional) is the parameters;
//!   202 with the command's id, like the per-strategy command API.
//! - `POST /api/strategies/{name}/validate` with `{"config": {...}}` (the merge
//!   patch an `update` would carry): 200 `{"valid": true, "config": ...}` when the
//!   strategy accepts the merged config, 422 with its own words when it does not.
//!   Nothing is inserted and nothing changes.
//! - `GET /api/strategies/{name}/logs?lines=N`: the last lines of the strategy's
//!   log in the state directory (the file `enginectl logs` reads), read on the
//!   blocking pool.

use super::api::find_strategy;
use super::error::ApiError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engine_protocol::control::EXIT_BAD_CONFIG;
use engine_protocol::secrets::mask;
use engine_protocol::state_dir::{last_lines, log_file_name};
use engine_protocol::validate::validate_config_as;
use engine_store::commands::{insert_command_row, parse_command, InsertedCommand};
use engine_store::CommandWord;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The command words a global row may carry (the contract's kill switch).
pub const GLOBAL_COMMANDS: [&str; 3] = ["stop", "pause", "resume"];

/// How long one `--validate` run may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Log lines shown when the request does not say, and the most it may ask for.
const DEFAULT_LOG_LINES: usize = 100;
const MAX_LOG_LINES: usize = 2000;

/// A request body: nothing (an empty object) or a JSON object.
fn body_object(body: &Bytes, hint: &str) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON: {e}")).with("hint", hint)
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object, got {}",
            engine_protocol::json_kind(&value)
        ))
        .with("hint", hint));
    }
    Ok(value)
}

/// `POST /api/global/{command}`: the kill switch. Inserts a global row and answers
/// 202 with its id; the manager applies it to every running or paused strategy.
pub async fn post_global(
    State(state): State<Arc<AppState>>,
    Path(command): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !GLOBAL_COMMANDS.contains(&command.as_str()) {
        return Err(ApiError::bad_request(format!(
            "'{command}' cannot be sent to every strategy: a global command is stop, pause or resume"
        ))
        .with("allowed", json!(GLOBAL_COMMANDS)));
    }
    let parameters = body_object(
        &body,
        "send the command's parameters as a JSON object, e.g. {\"timeout_s\": 30} for stop; or no body",
    )?;
    parse_command(&command, &parameters, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let word: CommandWord = command
        .parse()
        .map_err(|_| ApiError::bad_request(format!("'{command}' is not a command word")))?;
    let InsertedCommand { id, created_at } =
        insert_command_row(&state.shared.pool, None, word, &parameters, Some(&caller.0))
            .await
            .map_err(|e| ApiError::database("cannot insert the command", e))?;
    tracing::warn!(command_id = %id, command = %command, "global command (kill switch) received over HTTP");
    let url = format!("/api/commands/{id}");
    let body = json!({
        "id": id,
        "strategy_id": null,
        "command": command,
        "parameters": parameters,
        "status": "pending",
        "created_at": created_at,
        "url": url,
    });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(body)).into_response())
}

/// `POST /api/strategies/{name}/validate`: would the strategy accept this update?
pub async fn validate(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    const HINT: &str = "send {\"config\": {...}}: the merge patch an update would carry";
    let body = body_object(&body, HINT)?;
    let patch = match body.get("config") {
        Some(patch @ Value::Object(_)) => patch,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "config must be a JSON object (a merge patch for the config), got {}",
                engine_protocol::json_kind(other)
            ))
            .with("hint", HINT))
        }
        None => return Err(ApiError::bad_request("the body has no \"config\"").with("hint", HINT)),
    };
    if let Some(key) = body
        .as_object()
        .and_then(|b| b.keys().find(|k| *k != "config"))
    {
        return Err(ApiError::bad_request(format!("unknown field '{key}'")).with("hint", HINT));
    }
    let strategy = find_strategy(&state, &name).await?;
    let mut merged = strategy.config.clone();
    json_patch::merge(&mut merged, patch);
    if !merged.is_object() {
        return Err(ApiError::bad_request(
            "the merged config is not a JSON object",
        ));
    }
    // Checked as the executor would get it: its secret references resolved.
    let resolved = state.shared.secrets.resolve(&merged).await.map_err(|err| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, crate::error_chain(&err))
            .with("valid", false)
            .with("strategy", strategy.name.clone())
    })?;
    let rejection = ask_executor(&state, &strategy.strategy_type, &resolved.config)
        .await?
        .map(|reason| resolved.scrub.scrub(&reason));
    match rejection {
        None => Ok(Json(json!({
            "valid": true,
            "strategy": strategy.name,
            "config": mask(&merged),
        }))),
        Some(reason) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the strategy rejects this config: {reason}"),
        )
        .with("valid", false)
        .with("reason", reason)
        .with("strategy", strategy.name)),
    }
}

/// Run the executor with `--validate`: `None` when it accepts `config`, its own
/// reason when it rejects it; 503 when it cannot be asked.
async fn ask_executor(
    state: &AppState,
    strategy_type: &str,
    config: &Value,
) -> Result<Option<String>, ApiError> {
    let path = &state.shared.executor_path;
    if !path.is_file() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot check the config: executor binary not found at {}; set --executor-path",
                path.display()
            ),
        ));
    }
    let run_as = state.shared.executor_user.as_ref();
    let verdict = validate_config_as(path, strategy_type, config, VALIDATE_TIMEOUT, run_as)
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the config: {e}{cause}"),
            )
        })?;
    match verdict.code {
        Some(0) => Ok(None),
        Some(EXIT_BAD_CONFIG) => Ok(Some(
            verdict.stderr.trim_start_matches("error: ").to_string(),
        )),
        code => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot check the config: {} --validate ended with {}: {}",
                path.display(),
                code.map_or("a signal".to_string(), |c| format!("exit code {c}")),
                verdict.stderr
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    lines: Option<String>,
}

/// `GET /api/strategies/{name}/logs?lines=100`: the tail of the strategy's log.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    let lines = match query.lines.as_deref() {
        None => DEFAULT_LOG_LINES,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LOG_LINES).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "lines must be a whole number from 1 to {MAX_LOG_LINES}, got '{text}'"
                ))
            })?,
    };
    let strategy = find_strategy(&state, &name).await?;
    let path = state
        .shared
        .config
        .logs_dir()
        .join(log_file_name(&strategy.name, strategy.id));
    let shown = path.display().to_string();
    // File I/O runs on the blocking pool, never on the async workers.
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Vec<u8>, u64)>> {
        match std::fs::File::open(&path) {
            Ok(mut file) => last_lines(&mut file, lines).map(Some),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {shown}: {e}"),
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {shown}: {e}"),
        )
    })?;
    let (text, size, exists) = match read {
        Some((bytes, size)) => (String::from_utf8_lossy(&bytes).into_owned(), size, true),
        None => (String::new(), 0, false),
    };
    Ok(Json(json!({
        "strategy": strategy.name,
        "path": shown,
        "exists": exists,
        "size": size,
        "lines": text.lines().collect::<Vec<_>>(),
    })))
}
