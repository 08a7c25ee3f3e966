//! The manager's HTTP server: a JSON API over the database (the command API inserts
//! `strategy_commands` rows, so the database stays the single source of truth),
//! `/health`, Prometheus `/metrics`, a server-sent-events relay of the Redis channels,
//! and the live web dashboard at `/`.
//!
//! # Layout
//! - [`run`] / [`HttpServer`]: binds `--http-addr` (loopback by default; a taken
//!   address is retried, never fatal), writes the bound address to
//!   `{state_dir}/http.addr`, serves until the manager's cancel token fires.
//! - `guard`: Host/Origin checks (DNS rebinding, cross-site posts) and the bearer token.
//! - `access`: the tokens and their scopes (`read`, `operate`), the tokens file, and
//!   the refusal to listen beyond loopback without an operate token.
//! - `probes`: `GET /health`, database and Redis reachability.
//! - `api`: `/api/strategies`, the command API, `/api/commands/{id}`, `/api/history`.
//! - `audit`: `GET /api/audit`, who asked for what (`engine_audit`).
//! - `prometheus`: `GET /metrics` in the Prometheus text format.
//! - `events`: the Redis relay (one subscription for every browser) and `/api/events`.
//! - `duty`: the kill switch (`POST /api/global/{command}`), a config checked by the
//!   strategy before an update (`POST /api/strategies/{name}/validate`), and the tail
//!   of a strategy's log (`GET /api/strategies/{name}/logs`).
//! - `orders`: `GET /api/strategies/{name}/orders?limit=&run_id=`, a strategy's
//!   newest paper orders (`strategy_orders`).
//! - `runs` and `run_events`: runs (CONTRACT.md §4): `POST /api/runs` inserts a
//!   `strategy_runs` row, `/api/runs/{id}` (+ `/items`, `/events` as SSE, `/cancel`
//!   inserts a `cancel` command row), `/api/runs?strategy=&state=`, `/api/queue`.
//! - `dashboard`: the page, its script and style, embedded with `include_str!`.
//!
//! Architecture invariant: HTTP never acts on a strategy itself. A command from the
//! API is a row in `strategy_commands`, carried out by the same intake and supervisor
//! as a row an operator inserts with SQL.

mod access;
mod api;
mod audit;
mod dashboard;
mod duty;
mod error;
mod events;
mod guard;
mod orders;
mod probes;
mod prometheus;
mod run_events;
mod runs;

use crate::Shared;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use access::{AccessError, HttpAccess};
pub use events::LiveCache;
pub use guard::MAX_BODY_BYTES;

/// The file, in the state directory, that holds the address the server is bound to.
pub const ADDR_FILE: &str = "http.addr";

/// How long open connections get to finish once the manager stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a failed bind (address in use) is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Serve HTTP on `--http-addr` until the manager's cancel token fires. HTTP is an
/// add-on: when the address is taken, the manager runs on without it (an error in the
/// log) and tries again every few seconds, so a busy port never stops command
/// processing.
pub async fn run(shared: Arc<Shared>, redis: redis::Client) {
    let cancel = shared.cancel.clone();
    let mut failures = 0u32;
    loop {
        match HttpServer::bind(shared.clone(), redis.clone()).await {
            Ok(Some(server)) => {
                if failures > 0 {
                    tracing::info!(addr = %server.local_addr(), "HTTP address free again");
                }
                return server.serve().await;
            }
            // HTTP off: nothing to serve, but the task lives on until shutdown (its
            // early end would be a failure of the manager, see `crate::tasks`).
            Ok(None) => return cancel.cancelled().await,
            Err(err) => {
                let addr = shared.config.http_addr.0.map(|a| a.to_string());
                if failures == 0 {
                    tracing::error!(
                        addr = addr.as_deref().unwrap_or(""),
                        error = %err,
                        "cannot listen for HTTP; running without the HTTP API and dashboard, retrying every {BIND_RETRY:?} (choose another --http-addr, or 'off')"
                    );
                }
                failures += 1;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BIND_RETRY) => {}
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub shared: Arc<Shared>,
    pub redis: redis::Client,
    /// A connection kept for `PING` (dropped when it fails; opened again on demand).
    pub redis_probe: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Latest health per strategy and of the engine (`Shared::health_cache`).
    pub live: Arc<LiveCache>,
    /// The relayed Redis messages, to every `/api/events` client.
    pub events: broadcast::Sender<Arc<events::RelayedEvent>>,
    pub started: Instant,
    /// The tokens, and whether reads and commands need one.
    pub access: Arc<HttpAccess>,
    /// Bound to a loopback address: only loopback `Host` names are accepted.
    pub loopback: bool,
    pub sse_clients: AtomicUsize,
    /// Told when the first browser connects and when the last one leaves: the relay
    /// holds its Redis subscription only while one listens.
    pub clients_changed: tokio::sync::Notify,
    /// Whether the relay holds its subscription now (a new browser's `hello` waits
    /// for it, so that nothing published after `hello` is missed).
    pub relay_subscribed: tokio::sync::watch::Sender<bool>,
}

/// The HTTP server, bound and ready to serve.
pub struct HttpServer {
    listener: TcpListener,
    state: Arc<AppState>,
    addr: SocketAddr,
    addr_file: PathBuf,
}

impl HttpServer {
    /// Bind `--http-addr` (`Ok(None)` when HTTP is off) and record the bound address.
    pub async fn bind(
        shared: Arc<Shared>,
        redis: redis::Client,
    ) -> std::io::Result<Option<HttpServer>> {
        let Some(wanted) = shared.config.http_addr.0 else {
            tracing::info!("HTTP server disabled (--http-addr off)");
            return Ok(None);
        };
        let listener = TcpListener::bind(wanted).await?;
        let addr = listener.local_addr()?;
        let addr_file = shared.config.state_dir.join(ADDR_FILE);
        write_atomically(&addr_file, &format!("{addr}\n"))?;
        let (events, _) = broadcast::channel(events::BROADCAST_CAPACITY);
        let state = Arc::new(AppState {
            access: shared.http_access.clone(),
            loopback: addr.ip().is_loopback(),
            live: shared.health_cache.clone(),
            shared,
            redis,
            redis_probe: tokio::sync::Mutex::new(None),
            clients_changed: tokio::sync::Notify::new(),
            relay_subscribed: tokio::sync::watch::Sender::new(false),
            events,
            started: Instant::now(),
            sse_clients: AtomicUsize::new(0),
        });
        tracing::info!(
            %addr,
            url = %format!("http://{addr}/"),
            token_required = state.access.commands_guarded(),
            read_token_required = state.access.reads_guarded(),
            "HTTP API and dashboard listening"
        );
        Ok(Some(HttpServer {
            listener,
            state,
            addr,
            addr_file,
        }))
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve (and relay Redis to the event stream) until the manager's cancel token fires.
    pub async fn serve(self) {
        let HttpServer {
            listener,
            state,
            addr,
            addr_file,
        } = self;
        let cancel = state.shared.cancel.clone();
        let relay = events::relay(state.clone(), cancel.clone());
        let app = router(state.clone());
        let server =
            axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
        let grace = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let serving = async {
            tokio::select! {
                result = server => {
                    if let Err(err) = result {
                        tracing::error!(%addr, error = %err, "HTTP server failed");
                    }
                }
                _ = grace => tracing::warn!(%addr, "HTTP connections still open {SHUTDOWN_GRACE:?} after shutdown; closing them"),
            }
        };
        tokio::join!(serving, relay);
        if std::fs::read_to_string(&addr_file).is_ok_and(|s| s.trim() == addr.to_string()) {
            let _ = std::fs::remove_file(&addr_file);
        }
        tracing::debug!(%addr, "HTTP server stopped");
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/health", get(probes::health))
        .route("/metrics", get(prometheus::metrics))
        .route("/api/strategies", get(api::list_strategies))
        .route("/api/strategies/{name}", get(api::get_strategy))
        .route("/api/strategies/{name}/{command}", post(api::post_command))
        .route("/api/strategies/{name}/validate", post(duty::validate))
        .route("/api/strategies/{name}/logs", get(duty::logs))
        .route("/api/strategies/{name}/orders", get(orders::get_orders))
        .route("/api/global/{command}", post(duty::post_global))
        .route("/api/commands/{id}", get(api::get_command))
        .route("/api/history", get(api::history))
        .route("/api/audit", get(audit::audit))
        .route("/api/events", get(events::stream))
        .route("/api/runs", get(runs::list_runs).post(runs::post_run))
        .route("/api/runs/{id}", get(runs::get_run))
        .route("/api/runs/{id}/items", get(runs::get_items))
        .route("/api/runs/{id}/events", get(run_events::events))
        .route("/api/runs/{id}/cancel", post(runs::post_cancel))
        .route("/api/queue", get(runs::get_queue))
        .route("/api/schedules", get(runs::list_schedules))
        .fallback(error::not_found_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .with_state(state)
}

/// Write `contents` to `path` through a temporary file, so a reader never sees half.
fn write_atomically(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use crate::config::{HttpAddr, ManagerConfig};
    use clap::Parser;

    #[test]
    fn http_flags_parse() {
        let c = ManagerConfig::parse_from(["engine-manager"]);
        assert_eq!(
            c.http_addr,
            HttpAddr(Some("127.0.0.1:8080".parse().unwrap()))
        );
        assert!(c.http_token.is_none());
        let c = ManagerConfig::parse_from([
            "engine-manager",
            "--http-addr",
            "off",
            "--http-token",
            "s3cret",
        ]);
        assert_eq!(c.http_addr, HttpAddr(None));
        assert_eq!(c.http_token.as_ref().unwrap().0, "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the token leaks in Debug"
        );
        assert_eq!(HttpAddr::parse("").unwrap(), HttpAddr(None));
        assert_eq!(
            HttpAddr::parse("[::1]:0").unwrap(),
            HttpAddr(Some("[::1]:0".parse().unwrap()))
        );
        let err = HttpAddr::parse("localhost:80").unwrap_err();
        assert!(err.contains("127.0.0.1:8080"), "{err}");
        assert!(ManagerConfig::try_parse_from(["engine-manager", "--http-token", ""]).is_err());
    }
}
