//! One test's engine: its database, its Redis namespace, its state directory, and a
//! manager running in-process (`engine_manager::run`) on them. The database and Redis
//! are the machine's shared servers ([`TestEngine::new`]: a fresh database and a
//! unique key prefix) or the test's own private servers, which it may stop and start
//! again ([`TestEngine::on_private_services`]). Everything is removed when the
//! engine is finished or dropped: executors, state directory, Redis keys, database.

use super::operator::{wait_for, CommandState, Operator, StrategyState, DEADLINE};
use super::private_services::PrivateServices;
use super::processes::kill_all_executors;
use super::{admin_url, executor_path, process_alive, redis_url};
use clap::Parser;
use engine_manager::config::{HttpAddr, ManagerConfig};
use engine_protocol::Channels;
use engine_store::manager as db;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a manager may take to stop once cancelled (it waits out its own tasks,
/// some of which may be retrying a database that is away).
pub const MANAGER_STOP_DEADLINE: Duration = Duration::from_secs(60);

type ManagerTask = (
    CancellationToken,
    JoinHandle<Result<(), engine_manager::ManagerError>>,
);

/// One test's engine; see the module documentation.
pub struct TestEngine {
    pub pool: PgPool,
    pub db_name: String,
    pub db_url: String,
    /// The Redis key prefix: unique per test on the shared Redis, empty on a private
    /// one (the server is the test's own).
    pub prefix: String,
    pub channels: Channels,
    pub redis: redis::Client,
    pub state_dir: PathBuf,
    pub config: ManagerConfig,
    services: Option<PrivateServices>,
    manager: Option<ManagerTask>,
}

impl TestEngine {
    /// A fresh database (migrated) and Redis prefix on the machine's shared servers;
    /// the manager is not started yet. It serves HTTP on a free loopback port.
    pub async fn new() -> TestEngine {
        TestEngine::build(None).await
    }

    /// A fresh engine on the shared servers with its manager running.
    pub async fn started() -> TestEngine {
        let mut engine = TestEngine::new().await;
        engine.start_manager().await;
        engine
    }

    /// An engine on its own private PostgreSQL and Redis ([`Self::services`]), which
    /// the test may stop and start again; the manager is not started yet. No HTTP.
    pub async fn on_private_services() -> TestEngine {
        TestEngine::build(Some(PrivateServices::start().await)).await
    }

    async fn build(services: Option<PrivateServices>) -> TestEngine {
        let db_name = format!("engine_test_{}", Uuid::new_v4().simple());
        let (db_url, redis_url, prefix) = match &services {
            None => {
                let admin = admin_url();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                let prefix = format!("t{}:", Uuid::new_v4().simple());
                (format!("{base}/{db_name}"), redis_url(), prefix)
            }
            Some(services) => (
                services.pg.url(&db_name),
                services.redis.url(),
                String::new(),
            ),
        };
        let pool = open_database(&db_url, services.is_some()).await;
        let state_dir =
            std::env::temp_dir().join(format!("engine-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let mut config = test_config(&db_url, &redis_url, &prefix, &state_dir);
        if services.is_some() {
            // Outage tests count the manager's log lines: nothing but the core runs.
            config.http_addr = HttpAddr(None);
        }
        TestEngine {
            pool,
            db_name,
            db_url,
            channels: Channels::new(prefix.clone()),
            prefix,
            redis: redis::Client::open(redis_url).expect("redis url"),
            state_dir,
            config,
            services,
            manager: None,
        }
    }

    /// The private servers of an engine made by [`Self::on_private_services`].
    pub fn services(&mut self) -> &mut PrivateServices {
        self.services
            .as_mut()
            .expect("an engine on private services (TestEngine::on_private_services)")
    }

    /// `enginectl args…` aimed at this engine (its database, Redis namespace, state
    /// directory and executor), stdin closed, killed if dropped.
    pub fn enginectl(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(super::workspace_bin("enginectl"));
        command
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", &self.config.redis_url)
            .env("ENGINE_REDIS_PREFIX", &self.prefix)
            .env("ENGINE_STATE_DIR", &self.state_dir)
            .env("ENGINE_EXECUTOR_PATH", super::executor_path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    pub fn control_socket(&self) -> PathBuf {
        self.config.control_socket_path()
    }

    /// Start the manager in-process; returns once it holds the lease.
    pub async fn start_manager(&mut self) {
        assert!(self.manager.is_none(), "manager already running");
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine_manager::run(self.config.clone(), token.clone()));
        self.manager = Some((token, handle));
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

    /// Whether the in-process manager is still running (has not returned or panicked).
    pub fn manager_running(&self) -> bool {
        self.manager
            .as_ref()
            .is_some_and(|(_, handle)| !handle.is_finished())
    }

    /// Stop the manager (strategies keep running unless the config says otherwise).
    pub async fn stop_manager(&mut self) {
        if let Some((token, handle)) = self.manager.take() {
            token.cancel();
            let result = tokio::time::timeout(MANAGER_STOP_DEADLINE, handle)
                .await
                .unwrap_or_else(|_| panic!("manager stops within {MANAGER_STOP_DEADLINE:?}"))
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
        self.op()
            .insert_strategy(name, strategy_type, config, auto_start)
            .await
    }

    pub async fn add_heartbeat(&self, name: &str) -> Uuid {
        self.add_strategy(name, "heartbeat", json!({"interval_ms": 50}), false)
            .await
    }

    /// Start `n` heartbeat strategies named `{prefix}-{i}` and wait until each runs.
    pub async fn start_heartbeats(&self, prefix: &str, n: usize, config: Value) -> Vec<Uuid> {
        let op = self.op();
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = op
                .add_strategy(&format!("{prefix}-{i}"), "heartbeat", config.clone())
                .await;
            op.run_ok(Some(id), "start", json!({})).await;
            ids.push(id);
        }
        ids
    }

    /// One security, `AAA`, with ten daily bars from 2024-01-01: enough for a run.
    pub async fn seed_one_security(&self) {
        sqlx::raw_sql(
            "INSERT INTO securities (symbol) VALUES ('AAA'); \
             INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
             SELECT 'AAA', '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                    10, 11, 9, 10, 100 FROM generate_series(0, 9) i",
        )
        .execute(&self.pool)
        .await
        .unwrap();
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

    /// Insert a command and require that it ends `executed`, without an error.
    pub async fn run_ok(
        &self,
        strategy_id: Option<Uuid>,
        command: &str,
        parameters: Value,
    ) -> Uuid {
        let (id, out) = self.op().run(strategy_id, command, parameters).await;
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
        let (_, out) = self.op().run(strategy_id, command, parameters).await;
        assert_eq!(out.status, "failed", "{command} should have failed");
        out.error.expect("a failed command has an error")
    }

    pub async fn state(&self, id: Uuid) -> StrategyState {
        self.op().state(id).await
    }

    pub async fn wait_status(&self, id: Uuid, status: &str) -> StrategyState {
        self.op().wait_status_within(id, status, DEADLINE).await
    }

    /// The executor pid the row names, checked against the process table.
    pub async fn live_pid(&self, id: Uuid) -> u32 {
        let row = self.state(id).await;
        let pid = row.pid.expect("a running strategy has a pid") as u32;
        assert!(process_alive(pid), "executor {pid} of {} is dead", row.name);
        pid
    }

    /// Wait until the strategy is `running` under a pid other than `old` (a new
    /// executor after a restart, a crash or a manager restart); that pid.
    pub async fn wait_running_with_new_pid(&self, id: Uuid, old: Option<u32>) -> u32 {
        let pool = self.pool.clone();
        wait_for("the strategy running under a new pid", DEADLINE, || {
            let pool = pool.clone();
            async move {
                let (status, pid): (String, Option<i32>) =
                    sqlx::query_as("SELECT status, pid FROM strategy_configs WHERE id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                let pid = pid? as u32;
                (status == "running" && Some(pid) != old).then_some(pid)
            }
        })
        .await
    }

    /// SIGKILL every executor of this engine (by its control socket).
    pub fn kill_executors(&self) {
        kill_all_executors(&self.control_socket());
    }

    pub async fn subscribe(&self, channel: &str) -> Subscription {
        Subscription::start(&self.redis, channel).await
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
        self.try_redis_conn().await.expect("redis connection")
    }

    /// A Redis connection, or `None` while the server is away.
    pub async fn try_redis_conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.redis.get_multiplexed_async_connection().await.ok()
    }

    /// Stop the manager and every executor of this test; drop the database (a
    /// private server goes with its directory).
    pub async fn finish(mut self) {
        self.stop_manager().await;
        self.kill_executors();
        self.pool.close().await;
        if self.services.is_none() {
            drop_database(&self.db_name).await;
        }
    }

    /// Delete this test's keys and Redis users from the shared Redis (a private one
    /// goes whole).
    fn remove_redis_keys(&self) {
        if self.services.is_some() || self.prefix.is_empty() {
            return;
        }
        let Ok(mut con) = self
            .redis
            .get_connection_with_timeout(Duration::from_secs(2))
        else {
            return;
        };
        let keys: Vec<String> =
            match redis::Commands::scan_match(&mut con, format!("{}*", self.prefix)) {
                Ok(iter) => iter.filter_map(Result::ok).collect(),
                Err(_) => return,
            };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::Commands::del(&mut con, chunk);
        }
        // The executors' Redis users (and any the test made) carry the prefix too.
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query(&mut con)
            .unwrap_or_default();
        let ours: Vec<&String> = users
            .iter()
            .filter(|u| u.starts_with(&self.prefix))
            .collect();
        if !ours.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("ACL").arg("DELUSER").arg(&ours).query(&mut con);
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        // A test that panicked leaves executors behind: their argv names our socket.
        if let Some((token, _)) = &self.manager {
            token.cancel();
        }
        self.kill_executors();
        self.remove_redis_keys();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A manager config for tests: short intervals and timeouts, HTTP on a free
/// loopback port, strategies left running when the manager stops.
fn test_config(db_url: &str, redis_url: &str, prefix: &str, state_dir: &Path) -> ManagerConfig {
    let mut config = ManagerConfig::parse_from(["engine-manager"]);
    config.database_url = db_url.to_string();
    config.redis_url = redis_url.to_string();
    config.redis_prefix = prefix.to_string();
    config.executor_path = Some(executor_path());
    config.state_dir = state_dir.to_path_buf();
    config.health_interval = Duration::from_millis(300);
    config.metrics_interval = Duration::from_millis(300);
    config.poll_interval = Duration::from_millis(500);
    config.start_timeout = Duration::from_secs(10);
    config.ack_timeout = Duration::from_secs(5);
    config.restart_delay = Duration::from_millis(100);
    config.restart_max_delay = Duration::from_secs(1);
    config.stop_strategies_on_exit = false;
    // Every test's manager serves HTTP on a free loopback port (see `http_base`).
    config.http_addr = HttpAddr(Some(([127, 0, 0, 1], 0).into()));
    config
}

/// Create and migrate the test's database; the pool the test reads it with. On a
/// private server, a small pool that gives up quickly while the server is away.
async fn open_database(db_url: &str, private: bool) -> PgPool {
    let pool = db::connect(db_url, 5)
        .await
        .expect("create the test database");
    db::migrate(&pool).await.expect("migrate the test database");
    if !private {
        return pool;
    }
    pool.close().await;
    Operator::connect(db_url).await.pool
}

async fn drop_database(name: &str) {
    if let Ok(pool) = db::connect(&admin_url(), 1).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// Messages of a Redis subscription, gathered by a task (aborted on drop).
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Subscribe to `channel` (a pattern when it contains `*`).
    pub async fn start(redis: &redis::Client, channel: &str) -> Subscription {
        let mut pubsub = redis.get_async_pubsub().await.expect("redis pubsub");
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

impl Subscription {
    /// The next `n` messages (after any already received) for which `pred` holds.
    pub async fn expect_n(
        &mut self,
        n: usize,
        what: &str,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Vec<Value> {
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            taken.push(self.expect(what, &pred).await);
        }
        taken
    }

    /// Every message received so far and not yet taken, as (channel, payload).
    pub fn drain(&mut self) -> Vec<(String, Value)> {
        let mut taken = Vec::new();
        while let Ok(message) = self.rx.try_recv() {
            taken.push(message);
        }
        taken
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
