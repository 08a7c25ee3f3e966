//! Who may talk to the HTTP server. Every request: on a loopback address, the `Host`
//! must be a loopback name or an IP address (a web page whose domain resolves to
//! 127.0.0.1 must not read or drive the API: DNS rebinding). Requests that change
//! state (anything but GET/HEAD): a browser's `Origin`, when sent, must be the
//! server's own (no cross-site posts), and an operate token, when any token is
//! configured, is required (401 without or with a wrong one, 403 for a read token).
//! Reads need a read or operate token when a read token is configured (the
//! dashboard's files and `/health` excepted). The event streams (`/api/events`,
//! `/api/runs/{id}/events`) also take the token as `?access_token=`, since a
//! browser's `EventSource` cannot set a header; it is checked exactly like the
//! header (the same constant-time comparison), and only there. A request body is at most [`MAX_BODY_BYTES`] (413 past it).

use super::access::{NamedToken, Scope};
use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The largest request body the server reads: a config or parameters are at most
/// 64 KiB as stored (`engine_store::limits`), a body carries one with room around it.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// Whom a request acts for, as rows it inserts say in `on_behalf_of`: the name of
/// the configured token it carries, or `http` when it carries none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

pub async fn check(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = presented(request.method(), request.uri(), request.headers());
    if let Err(err) = allowed(
        &state,
        request.method(),
        request.uri().path(),
        request.headers(),
        presented.as_deref(),
    ) {
        return err.into_response();
    }
    let caller = presented
        .as_deref()
        .and_then(|given| state.access.find(given))
        .map_or_else(|| "http".to_string(), |token| token.name.clone());
    request.extensions_mut().insert(Caller(caller));
    match within_body_limit(request).await {
        Ok(request) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// The request with its body read, if it is at most [`MAX_BODY_BYTES`]; else 413
/// naming the cap (at once when `Content-Length` says so, else once the cap is passed).
async fn within_body_limit(request: Request) -> Result<Request, ApiError> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(bytes) = declared.filter(|n| *n > MAX_BODY_BYTES as u64) {
        return Err(body_too_large(format!(
            "the request body is {bytes} bytes; the limit is {MAX_BODY_BYTES}"
        )));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|err| {
            let over = std::error::Error::source(&err)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                body_too_large(format!(
                    "the request body is over the limit of {MAX_BODY_BYTES} bytes"
                ))
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {err}"),
                )
            }
        })?;
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

fn body_too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message).with(
        "hint",
        "a config or parameters object is at most 65536 bytes; keep large data out of it",
    )
}

fn allowed(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    presented: Option<&str>,
) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if state.loopback && !is_local_host(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("host '{host}' is not allowed: this server listens on a loopback address and answers only to localhost or an IP address"),
        ));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        if state.access.reads_guarded() && !open_to_read(path) && *method != Method::OPTIONS {
            presented_token(state, presented, "reads")?;
        }
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host));
        if !own {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from '{origin}' refused: send commands from this server's own dashboard, or without an Origin header (curl, scripts)"),
            ));
        }
    }
    if state.access.commands_guarded() {
        let token = presented_token(state, presented, "commands")?;
        if token.scope == Scope::Read {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token '{}' may only read; commands need an operate token", token.name),
            )
            .with("hint", "use --http-token / ENGINE_HTTP_TOKEN or a token whose --http-tokens-file line has the scope operate"));
        }
    }
    Ok(())
}

/// Routes anyone may read: the dashboard's page, script and style (they hold no
/// data; the page asks for a token) and `/health` (a liveness probe).
fn open_to_read(path: &str) -> bool {
    matches!(path, "/" | "/dashboard.js" | "/dashboard.css" | "/health")
}

/// The configured token the request carries; 401 when it carries none or another.
fn presented_token<'a>(
    state: &'a AppState,
    presented: Option<&str>,
    what: &str,
) -> Result<&'a NamedToken, ApiError> {
    const HINT: &str = "send a token as 'Authorization: Bearer <token>' (an event stream also takes '?access_token=<token>'): --http-token (ENGINE_HTTP_TOKEN), --http-read-token (reads only) or one of --http-tokens-file";
    match presented {
        Some(given) => state.access.find(given).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").with("hint", HINT)
        }),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("this server requires a bearer token for {what}"),
        )
        .with("hint", HINT)),
    }
}

/// The token a request carries: its `Authorization: Bearer …` header, else, on a
/// `GET` of an event stream, its `access_token` query parameter.
fn presented(method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = bearer(headers) {
        return Some(token.to_string());
    }
    if *method != Method::GET || !is_event_stream(uri.path()) {
        return None;
    }
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(key, _)| key == "access_token")
        .map(|(_, value)| value.trim().to_string())
}

/// `/api/events` and `/api/runs/{id}/events`: what a browser reads with `EventSource`.
fn is_event_stream(path: &str) -> bool {
    path == "/api/events"
        || path
            .strip_prefix("/api/runs/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `localhost`, `*.localhost` or an IP address, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "app.localhost:1",
            "10.0.0.5:80",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "", "localhost.evil.com", "[zz]:1"] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }

    #[test]
    fn only_event_streams_take_the_token_in_the_query() {
        let get = |uri: &str, headers: &HeaderMap| {
            presented(&Method::GET, &uri.parse().unwrap(), headers)
        };
        let none = HeaderMap::new();
        assert_eq!(
            get("/api/events?access_token=a%2Bb", &none).as_deref(),
            Some("a+b")
        );
        assert_eq!(
            get("/api/runs/3f1c/events?access_token=t", &none).as_deref(),
            Some("t")
        );
        for elsewhere in [
            "/api/strategies?access_token=t",
            "/api/runs/3f1c/items?access_token=t",
            "/api/runs//events?access_token=t",
            "/metrics?access_token=t",
        ] {
            assert_eq!(get(elsewhere, &none), None, "{elsewhere}");
        }
        let post = presented(
            &Method::POST,
            &"/api/events?access_token=t".parse().unwrap(),
            &none,
        );
        assert_eq!(post, None);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(
            get("/api/events?access_token=q", &headers).as_deref(),
            Some("h")
        );
    }
}
