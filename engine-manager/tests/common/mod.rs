//! Test harness: a real manager (in-process, via `engine_manager::run`) against a
//! fresh PostgreSQL database and a private Redis namespace, driving real
//! `strategy-executor` processes. Waits are bounded conditions, never bare sleeps.
#![allow(dead_code)]

use clap::Parser;
use engine_manager::config::ManagerConfig;
use engine_protocol::Channels;
use engine_store::manager as db;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const DEADLINE: Duration = Duration::from_secs(20);

mod operator;
#[allow(unused_imports)] // re-exported for the test crates, each uses some
pub use operator::{process_alive, wait_for, CommandState, Operator, StrategyState};

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// The workspace's `strategy-executor` (built by `cargo build --workspace`).
pub fn executor_path() -> PathBuf {
    workspace_bin("strategy-executor")
}

/// A binary of the workspace (`strategy-executor`, `enginectl`, `engine-manager`),
/// found beside the test binary's directory (`target/debug/deps/…` → `target/debug`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --all-targets` before the tests",
        path.display()
    );
    path
}

/// One test's engine: its database, its Redis prefix, its state directory, and the
/// manager running on them.
pub struct TestEngine {
    pub pool: PgPool,
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub channels: Channels,
    pub redis: redis::Client,
    pub state_dir: PathBuf,
    pub config: ManagerConfig,
    manager: Option<(
        CancellationToken,
        JoinHandle<Result<(), engine_manager::ManagerError>>,
    )>,
}

impl TestEngine {
    /// A fresh database (migrated) and namespace; the manager is not started yet.
    pub async fn new() -> TestEngine {
        let db_name = format!("engine_test_{}", Uuid::new_v4().simple());
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let db_url = format!("{base}/{db_name}");
        let pool = db::connect(&db_url, 5).await.expect("create test database");
        db::migrate(&pool).await.expect("migrate test database");
        let prefix = format!("t{}:", Uuid::new_v4().simple());
        let state_dir =
            std::env::temp_dir().join(format!("engine-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&state_dir).unwrap();
        let mut config = ManagerConfig::parse_from(["engine-manager"]);
        config.database_url = db_url.clone();
        config.redis_url = redis_url();
        config.redis_prefix = prefix.clone();
        config.executor_path = Some(executor_path());
        config.state_dir = state_dir.clone();
        config.health_interval = Duration::from_millis(300);
        config.metrics_interval = Duration::from_millis(300);
        config.poll_interval = Duration::from_millis(500);
        config.start_timeout = Duration::from_secs(10);
        config.ack_timeout = Duration::from_secs(5);
        config.restart_delay = Duration::from_millis(100);
        config.restart_max_delay = Duration::from_secs(1);
        config.stop_strategies_on_exit = false;
        // Every test's manager serves HTTP on a free loopback port (see `http_base`).
        config.http_addr = engine_manager::config::HttpAddr(Some(([127, 0, 0, 1], 0).into()));
        TestEngine {
            pool,
            db_name,
            db_url,
            channels: Channels::new(prefix.clone()),
            prefix,
            redis: redis::Client::open(redis_url()).unwrap(),
            state_dir,
            config,
            manager: None,
        }
    }

    /// A fresh engine with its manager running.
    pub async fn started() -> TestEngine {
        let mut engine = TestEngine::new().await;
        engine.start_manager().await;
        engine
    }

    pub async fn start_manager(&mut self) {
        assert!(self.manager.is_none(), "manager already running");
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine_manager::run(self.config.clone(), token.clone()));
        self.manager = Some((token, handle));
        // Up when it holds the lease.
        let pool = self.pool.clone();
        let pid = std::process::id() as i32;
        wait_for("the manager to take its lease", DEADLINE, || {
            let pool = pool.clone();
            async move {
                let row: Option<(i32, chrono::DateTime<chrono::Utc>)> =
                    sqlx::query_as("SELECT pid, started_at FROM engine_manager_lease WHERE id = 1")
                        .fetch_optional(&pool)
                        .await
                        .ok()?;
                row.filter(|(p, t)| {
                    *p == pid && *t > chrono::Utc::now() - chrono::Duration::seconds(30)
                })
                .map(|_| ())
            }
        })
        .await;
    }

    /// Stop the manager (strategies keep running unless the config says otherwise).
    pub async fn stop_manager(&mut self) {
        if let Some((token, handle)) = self.manager.take() {
            token.cancel();
            let result = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("manager stops within 30s")
                .expect("manager task did not panic");
            result.expect("manager run returned Ok");
        }
    }

    pub async fn add_strategy(
        &self,
        name: &str,
        strategy_type: &str,
        config: Value,
        auto_start: bool,
    ) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type, config, auto_start) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(strategy_type)
        .bind(config)
        .bind(auto_start)
        .fetch_one(&self.pool)
        .await
        .expect("insert strategy")
    }

    pub async fn add_heartbeat(&self, name: &str) -> Uuid {
        self.add_strategy(name, "heartbeat", json!({"interval_ms": 50}), false)
            .await
    }

    /// The operator's side of this engine's database.
    pub fn op(&self) -> Operator {
        Operator {
            pool: self.pool.clone(),
        }
    }

    pub async fn command(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> Uuid {
        self.op().command(strategy_id, command, parameters).await
    }

    /// Wait until the command ends; returns its final row.
    pub async fn outcome(&self, id: Uuid) -> CommandState {
        self.op().outcome(id, DEADLINE).await
    }

    /// Insert a command and require that it ends `executed`.
    pub async fn run_ok(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> Uuid {
        let id = self.command(strategy_id, command, parameters).await;
        let out = self.outcome(id).await;
        assert_eq!(out.status, "executed", "{command} failed: {:?}", out.error);
        assert_eq!(out.error, None);
        id
    }

    /// Insert a command and require that it ends `failed`; returns the error text.
    pub async fn run_failed(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> String {
        let id = self.command(strategy_id, command, parameters).await;
        let out = self.outcome(id).await;
        assert_eq!(out.status, "failed", "{command} should have failed");
        out.error.expect("a failed command has an error")
    }

    pub async fn state(&self, id: Uuid) -> StrategyState {
        self.op().state(id).await
    }

    pub async fn wait_status(&self, id: Uuid, status: &str) -> StrategyState {
        self.op().wait_status_within(id, status, DEADLINE).await
    }

    pub async fn subscribe(&self, channel: &str) -> Subscription {
        let mut pubsub = self.redis.get_async_pubsub().await.expect("redis pubsub");
        if channel.contains('*') {
            pubsub.psubscribe(channel).await.unwrap();
        } else {
            pubsub.subscribe(channel).await.unwrap();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let payload: Value =
                    serde_json::from_slice(msg.get_payload_bytes()).unwrap_or(Value::Null);
                if tx
                    .send((msg.get_channel_name().to_string(), payload))
                    .is_err()
                {
                    break;
                }
            }
        });
        Subscription { rx, task }
    }

    /// The manager's HTTP base URL (`http://127.0.0.1:{port}`), from the address it
    /// wrote to `{state_dir}/http.addr` once it was listening.
    pub async fn http_base(&self) -> String {
        let path = self.state_dir.join(engine_manager::http::ADDR_FILE);
        let addr = wait_for("the manager to write http.addr", DEADLINE, || {
            let path = path.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                text.trim().parse::<std::net::SocketAddr>().ok()
            }
        })
        .await;
        format!("http://{addr}")
    }

    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        self.redis.get_multiplexed_async_connection().await.unwrap()
    }

    /// Stop the manager and every executor of this test; drop the database.
    pub async fn finish(mut self) {
        self.stop_manager().await;
        kill_executors(&self.state_dir);
        self.pool.close().await;
        drop_database(&self.db_name).await;
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        // A test that panicked leaves executors behind: their argv names our state dir.
        if let Some((token, _)) = &self.manager {
            token.cancel();
        }
        kill_executors(&self.state_dir);
    }
}

pub fn kill_executors(state_dir: &std::path::Path) {
    let _ = std::process::Command::new("pkill")
        .arg("-KILL")
        .arg("-f")
        .arg(state_dir.join("control.sock"))
        .status();
}

async fn drop_database(name: &str) {
    if let Ok(pool) = db::connect(&admin_url(), 1).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

pub struct Subscription {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The first message (after any already received) for which `pred` holds.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some((channel, msg))) if pred(&channel, &msg) => return msg,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("subscription closed while waiting for {what}"),
                Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
