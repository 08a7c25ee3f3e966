//! A real manager (in-process, via `engine_manager::run`) on a test's own private
//! PostgreSQL and Redis ([`super::private_services`]), so the test may take either
//! away; plus what outage and fault tests need to observe the engine from outside:
//! the executors in the process table (`/proc`), command rows, and a log capture that
//! counts the manager's log lines.
//!
//! Declare it beside the servers module in a test crate:
//!
//! ```ignore
//! #[path = "common/private_services.rs"]
//! mod private_services;
//! #[path = "common/private_engine.rs"]
//! mod private_engine;
//! ```
#![allow(dead_code)]

#[path = "operator.rs"]
mod operator;
#[allow(unused_imports)] // re-exported for the test crates, each uses some
pub use operator::{
    process_alive, try_wait_for, wait_for, CommandState, Operator, StrategyState, DEADLINE,
};

use crate::private_services::PrivateServices;
use clap::Parser;
use engine_manager::config::ManagerConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The workspace's binaries (`strategy-executor`, `engine-manager`) sit one level
/// above the test binary (`target/debug/deps/…`).
pub fn workspace_binary(name: &str) -> PathBuf {
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

// ------------------------------------------------------------------ process table

/// One executor process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorSeen {
    pub pid: u32,
    /// Its start time (clock ticks since boot): with the pid, its identity.
    pub start_ticks: u64,
    pub strategy_id: Uuid,
}

/// The live (not zombie) `strategy-executor` processes whose command line names
/// `control_socket`, i.e. the executors of one engine.
pub fn executors_in_proc(control_socket: &Path) -> Vec<ExecutorSeen> {
    let socket = control_socket.to_string_lossy();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_executor = args
            .first()
            .map(|a| a.ends_with(b"strategy-executor"))
            .unwrap_or(false);
        if !is_executor {
            continue;
        }
        let value_of = |flag: &[u8]| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|v| String::from_utf8_lossy(v).to_string())
        };
        if value_of(b"--control-socket").as_deref() != Some(&*socket) {
            continue;
        }
        let Some(strategy_id) = value_of(b"--strategy-id").and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A zombie has exited; it only waits for its parent to reap it.
        let Some(start_ticks) = engine_manager::process::start_ticks(pid) else {
            continue;
        };
        found.push(ExecutorSeen {
            pid,
            start_ticks,
            strategy_id,
        });
    }
    found
}

/// The executors of one engine that are alive together at one instant, by strategy.
///
/// A scan of `/proc` is not atomic: an executor read early may exit, and its
/// successor start, before the scan reaches the successor. So every executor of a
/// strategy with more than one is checked again after the scan (same pid, same start
/// time): those still alive then were all alive at the moment the re-check began.
pub fn executors_alive_together(control_socket: &Path) -> HashMap<Uuid, Vec<u32>> {
    let seen = executors_in_proc(control_socket);
    let mut map: HashMap<Uuid, Vec<&ExecutorSeen>> = HashMap::new();
    for e in &seen {
        map.entry(e.strategy_id).or_default().push(e);
    }
    map.into_iter()
        .map(|(id, group)| {
            let mut pids: Vec<u32> = if group.len() > 1 {
                group
                    .iter()
                    .filter(|e| engine_manager::process::is_same_process(e.pid, e.start_ticks))
                    .map(|e| e.pid)
                    .collect()
            } else {
                group.iter().map(|e| e.pid).collect()
            };
            pids.sort_unstable();
            (id, pids)
        })
        .collect()
}

/// [`executors_in_proc`] grouped by strategy.
pub fn executors_by_strategy(control_socket: &Path) -> HashMap<Uuid, Vec<u32>> {
    let mut map: HashMap<Uuid, Vec<u32>> = HashMap::new();
    for e in executors_in_proc(control_socket) {
        map.entry(e.strategy_id).or_default().push(e.pid);
    }
    for pids in map.values_mut() {
        pids.sort_unstable();
    }
    map
}

/// SIGKILL every executor of the engine whose control socket is `control_socket`.
pub fn kill_all_executors(control_socket: &Path) {
    for e in executors_in_proc(control_socket) {
        sigkill(e.pid);
    }
}

pub fn sigkill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

// ------------------------------------------------------------------ log capture

/// Every log line of this test process's managers (in-process ones log through the
/// global subscriber that [`LogCapture::install`] sets up once per test binary).
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
}

pub struct CaptureWriter {
    capture: LogCapture,
    buf: Vec<u8>,
}

impl std::io::Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        if std::env::var_os("TEST_LOG").is_some() {
            eprint!("{text}");
        }
        let mut lines = self.capture.lines.lock().expect("log lock");
        lines.extend(text.lines().map(str::to_string));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter {
            capture: self.clone(),
            buf: Vec::new(),
        }
    }
}

impl LogCapture {
    /// The process-wide capture (installed as the global subscriber on first use, at
    /// `info`, like the binary's default).
    pub fn install() -> LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                    .with_ansi(false)
                    .with_writer(capture.clone())
                    .try_init();
                capture
            })
            .clone()
    }

    /// How many lines were captured so far (a mark for [`Self::lines_since`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().expect("log lock").len()
    }

    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        self.lines.lock().expect("log lock")[mark..].to_vec()
    }
}

// ------------------------------------------------------------------ the engine

/// One test's engine: a manager running in-process on private services.
pub struct PrivateEngine {
    pub services: PrivateServices,
    pub op: Operator,
    pub db_url: String,
    pub redis: redis::Client,
    pub channels: engine_protocol::Channels,
    pub state_dir: PathBuf,
    pub config: ManagerConfig,
    manager: Option<(
        CancellationToken,
        JoinHandle<Result<(), engine_manager::ManagerError>>,
    )>,
}

impl PrivateEngine {
    /// Private services, a migrated database and a manager config with short
    /// intervals; the manager is not started yet.
    pub async fn new() -> PrivateEngine {
        let services = PrivateServices::start().await;
        let db_url = services.pg.url("strategy_engine");
        let pool = engine_store::manager::connect(&db_url, 2)
            .await
            .expect("create the engine database");
        engine_store::manager::migrate(&pool)
            .await
            .expect("migrate");
        pool.close().await;
        let op = Operator::connect(&db_url).await;
        let state_dir =
            std::env::temp_dir().join(format!("engine-outage-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let mut config = ManagerConfig::parse_from(["engine-manager"]);
        config.database_url = db_url.clone();
        config.redis_url = services.redis.url();
        config.redis_prefix = String::new();
        config.executor_path = Some(workspace_binary("strategy-executor"));
        config.state_dir = state_dir.clone();
        config.health_interval = Duration::from_millis(300);
        config.metrics_interval = Duration::from_millis(300);
        config.poll_interval = Duration::from_millis(500);
        config.start_timeout = Duration::from_secs(10);
        config.ack_timeout = Duration::from_secs(5);
        config.restart_delay = Duration::from_millis(100);
        config.restart_max_delay = Duration::from_secs(1);
        config.stop_strategies_on_exit = false;
        // No HTTP: the default port is the operators' (and every test's) to share.
        config.http_addr = engine_manager::config::HttpAddr(None);
        PrivateEngine {
            redis: redis::Client::open(services.redis.url()).expect("redis url"),
            services,
            op,
            db_url,
            channels: engine_protocol::Channels::new(""),
            state_dir,
            config,
            manager: None,
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.config.control_socket_path()
    }

    pub async fn start_manager(&mut self) {
        assert!(self.manager.is_none(), "manager already running");
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine_manager::run(self.config.clone(), token.clone()));
        self.manager = Some((token, handle));
        let pool = self.op.pool.clone();
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

    /// Stop the manager (strategies keep running).
    pub async fn stop_manager(&mut self) {
        if let Some((token, handle)) = self.manager.take() {
            token.cancel();
            let result = tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("manager stops within 60s")
                .expect("manager task did not panic");
            result.expect("manager run returned Ok");
        }
    }

    /// Start `n` heartbeat strategies named `{prefix}-{i}` and wait until each runs.
    pub async fn start_heartbeats(&self, prefix: &str, n: usize, config: Value) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = self
                .op
                .add_strategy(&format!("{prefix}-{i}"), "heartbeat", config.clone())
                .await;
            self.op
                .run_ok(Some(id), "start", serde_json::json!({}))
                .await;
            ids.push(id);
        }
        ids
    }

    /// The executor pid the row names, checked against the process table.
    pub async fn live_pid(&self, id: Uuid) -> u32 {
        let row = self.op.state(id).await;
        let pid = row.pid.expect("a running strategy has a pid") as u32;
        assert!(process_alive(pid), "executor {pid} of {} is dead", row.name);
        pid
    }

    pub async fn redis_conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.redis.get_multiplexed_async_connection().await.ok()
    }

    /// Stop the manager and every executor of this engine.
    pub async fn finish(mut self) {
        self.stop_manager().await;
        kill_all_executors(&self.control_socket());
        self.op.pool.close().await;
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.manager {
            token.cancel();
        }
        kill_all_executors(&self.control_socket());
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

// ------------------------------------------------------------------ the binary

/// The environment that gives the `engine-manager` binary the settings of `config`
/// (every variable it reads; see `engine_manager::config`).
pub fn manager_env(config: &ManagerConfig) -> Vec<(String, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut env = vec![
        ("DATABASE_URL", config.database_url.clone()),
        ("REDIS_URL", config.redis_url.clone()),
        ("ENGINE_REDIS_PREFIX", config.redis_prefix.clone()),
        ("ENGINE_STATE_DIR", config.state_dir.display().to_string()),
        ("ENGINE_HEALTH_INTERVAL", ms(config.health_interval)),
        ("ENGINE_METRICS_INTERVAL", ms(config.metrics_interval)),
        ("ENGINE_POLL_INTERVAL", ms(config.poll_interval)),
        ("ENGINE_START_TIMEOUT", ms(config.start_timeout)),
        ("ENGINE_ACK_TIMEOUT", ms(config.ack_timeout)),
        ("ENGINE_RESTART_DELAY", ms(config.restart_delay)),
        ("ENGINE_RESTART_MAX_DELAY", ms(config.restart_max_delay)),
        ("ENGINE_RESTART_JITTER", config.restart_jitter.to_string()),
        (
            "ENGINE_RESTART_MAX_CRASHES",
            config.restart_max_crashes.to_string(),
        ),
        ("ENGINE_LOG_FORMAT", "pretty".to_string()),
        ("ENGINE_HTTP_ADDR", "off".to_string()),
        ("NO_COLOR", "1".to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    if let Some(path) = &config.executor_path {
        env.push(("ENGINE_EXECUTOR_PATH", path.display().to_string()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Start the real `engine-manager` binary with exactly `env` (plus `PATH`), its
/// output appended to `log`. It is SIGKILLed if the handle is dropped.
pub fn spawn_manager_binary(env: &[(String, String)], log: &Path) -> tokio::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("manager log");
    let err = out.try_clone().expect("manager log");
    tokio::process::Command::new(workspace_binary("engine-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(out))
        .stderr(std::process::Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn engine-manager")
}

/// Wait until the manager with OS pid `pid` holds the lease (it serves the database).
pub async fn wait_lease(op: &Operator, pid: u32, deadline: Duration) {
    wait_for(
        &format!("manager {pid} to take its lease"),
        deadline,
        || async {
            let holder: Option<i32> =
                sqlx::query_scalar("SELECT pid FROM engine_manager_lease WHERE id = 1")
                    .fetch_optional(&op.pool)
                    .await
                    .ok()
                    .flatten();
            (holder == Some(pid as i32)).then_some(())
        },
    )
    .await
}
