//! [`ApiError`]: every error the HTTP API returns, as a JSON body
//! `{"error": "...", ...}` with the status code that fits, saying what was wrong and
//! what would be right.

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use engine_store::operator::{schema_refusal, sql_state};
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(message.into()));
        ApiError { status, body }
    }

    /// Add a field to the body (`hint`, `allowed`, ...).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.body.insert(key.into(), value.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The database refused what the client sent (400, or 409 for a taken name, in
    /// words), or did not answer: logged with its cause, 503 to the client.
    pub fn database(what: &str, err: sqlx::Error) -> ApiError {
        if let Some(words) = schema_refusal(&err) {
            let status = match sql_state(&err).as_deref() {
                Some("23505") => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            return ApiError::new(status, format!("{what}: {words}"));
        }
        tracing::warn!(error = %err, "HTTP API: {what}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: the database is unavailable ({err})"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, axum::Json(Value::Object(self.body))).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"engine-manager\""),
            );
        }
        response
    }
}

/// Any path no route serves.
pub async fn not_found_route(uri: Uri) -> ApiError {
    let command_words: Vec<&str> = engine_store::CommandWord::ALL
        .into_iter()
        .filter(|w| !w.only_global())
        .map(|w| w.as_str())
        .collect();
    let command_words = command_words.join("|");
    ApiError::not_found(format!("no such endpoint: {}", uri.path())).with(
        "endpoints",
        json!([
            "GET /",
            "GET /health",
            "GET /metrics",
            "GET /api/strategies",
            "GET /api/strategies/{name}",
            format!("POST /api/strategies/{{name}}/{{{}}}", command_words),
            "POST /api/strategies/{name}/validate",
            "GET /api/strategies/{name}/logs?lines=100",
            "POST /api/global/{stop|pause|resume}",
            "GET /api/commands/{id}",
            "GET /api/history?minutes=10",
            "GET /api/events",
            "POST /api/runs",
            "GET /api/runs?strategy=&state=&limit=",
            "GET /api/runs/{id}",
            "GET /api/runs/{id}/items",
            "GET /api/runs/{id}/events",
            "POST /api/runs/{id}/cancel",
            "GET /api/queue"
        ]),
    )
}
