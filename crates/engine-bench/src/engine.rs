//! One engine under test: a fresh database, the real `engine-manager` binary as a
//! subprocess (which spawns the real executors), a private Redis prefix and state
//! directory, subscriptions opened before anything happens, and the clean-up of all
//! of it — also when the bench fails or is interrupted ([`CleanupRegistry`]).

use crate::probe::{self, ProcId};
use crate::BenchArgs;
use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use engine_protocol::Channels;
use engine_store::bench as db;
use engine_store::commands::insert_command_row;
use engine_store::{manager, CommandStatus, CommandWord, Status};
use futures_util::StreamExt;
use rustix::process::Signal;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub manager: PathBuf,
    pub executor: PathBuf,
}

impl Binaries {
    /// `--manager-path` or the `engine-manager` beside this binary; `--executor-path`
    /// or the `strategy-executor` beside the manager.
    pub fn locate(args: &BenchArgs) -> anyhow::Result<Binaries> {
        let manager = match &args.manager_path {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("cannot find this binary's path")?
                .with_file_name("engine-manager"),
        };
        let executor = match &args.executor_path {
            Some(path) => path.clone(),
            None => manager.with_file_name("strategy-executor"),
        };
        for (what, path) in [
            ("engine-manager", &manager),
            ("strategy-executor", &executor),
        ] {
            if !path.is_file() {
                bail!(
                    "{what} not found at {}; build it (cargo build --release --workspace --bins) or pass --{}-path",
                    path.display(),
                    if what == "engine-manager" { "manager" } else { "executor" }
                );
            }
        }
        Ok(Binaries { manager, executor })
    }
}

/// A strategy to create before the manager starts.
#[derive(Debug, Clone)]
pub struct StrategySpec {
    pub name: String,
    pub strategy_type: String,
    pub config: Value,
}

impl StrategySpec {
    pub fn heartbeat(name: String) -> StrategySpec {
        StrategySpec {
            name,
            strategy_type: "heartbeat".to_string(),
            config: serde_json::json!({"interval_ms": 1000}),
        }
    }
}

/// How one engine is set up. Intervals left `None` keep the manager's defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub label: String,
    pub health_interval: Option<Duration>,
    pub metrics_interval: Option<Duration>,
    pub restart_delay: Option<Duration>,
    /// `--max-concurrent-executions` (interval executions); `None`: the default, 5.
    pub max_concurrent_executions: Option<u32>,
    pub strategies: Vec<StrategySpec>,
    /// `enginectl` argument lists run before the manager starts (market data).
    pub data: Vec<Vec<String>>,
}

/// What tearing an engine down needs, kept apart so that it also works after an
/// error or Ctrl-C dropped the [`BenchEngine`].
#[derive(Debug, Clone)]
struct CleanupItem {
    manager: Option<ProcId>,
    control_socket: PathBuf,
    admin_url: String,
    db_name: String,
    redis_url: String,
    prefix: String,
    state_dir: PathBuf,
    keep_logs: bool,
}

/// Every engine not yet torn down (and a record of every engine created).
#[derive(Clone, Default)]
pub struct CleanupRegistry {
    items: Arc<Mutex<HashMap<u64, CleanupItem>>>,
    created: Arc<Mutex<Vec<Value>>>,
    next: Arc<AtomicU64>,
}

impl CleanupRegistry {
    fn register(&self, item: CleanupItem) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.created
            .lock()
            .expect("cleanup lock")
            .push(serde_json::json!({
                "database": item.db_name,
                "redis_prefix": item.prefix,
                "state_dir": item.state_dir.display().to_string(),
            }));
        self.items.lock().expect("cleanup lock").insert(id, item);
        id
    }

    /// The database, Redis prefix and state directory of every engine created.
    pub fn created(&self) -> Vec<Value> {
        self.created.lock().expect("cleanup lock").clone()
    }

    fn set_manager(&self, id: u64, manager: ProcId) {
        if let Some(item) = self.items.lock().expect("cleanup lock").get_mut(&id) {
            item.manager = Some(manager);
        }
    }

    fn take(&self, id: u64) -> Option<CleanupItem> {
        self.items.lock().expect("cleanup lock").remove(&id)
    }

    /// Tear down whatever is still registered.
    pub async fn clean_all(&self) {
        let items: Vec<CleanupItem> = {
            let mut map = self.items.lock().expect("cleanup lock");
            map.drain().map(|(_, item)| item).collect()
        };
        for item in items {
            clean(&item).await;
        }
    }
}

/// Kill the manager and every executor of this engine (found by its control socket
/// in their argv), drop the database, delete the Redis keys, remove the state dir.
async fn clean(item: &CleanupItem) {
    if let Some(manager) = item.manager {
        if manager.alive() {
            probe::signal(manager.pid, Signal::KILL);
        }
    }
    let socket = item.control_socket.clone();
    let leftovers = tokio::task::spawn_blocking(move || procfs::pids_with_arg(&socket))
        .await
        .unwrap_or_default();
    let leftovers: Vec<ProcId> = leftovers.into_iter().filter_map(ProcId::of).collect();
    for p in &leftovers {
        probe::signal(p.pid, Signal::KILL);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while leftovers.iter().any(ProcId::alive) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(err) = drop_database(&item.admin_url, &item.db_name).await {
        eprintln!(
            "engine-bench: could not drop database {}: {err:#}",
            item.db_name
        );
    }
    if let Err(err) = delete_keys(&item.redis_url, &item.prefix).await {
        eprintln!(
            "engine-bench: could not delete Redis keys {}*: {err:#}",
            item.prefix
        );
    }
    if item.keep_logs {
        eprintln!(
            "engine-bench: logs kept in {}",
            item.state_dir.join("manager.log").display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&item.state_dir);
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let options = manager::connect_options(admin_url)?;
    manager::drop_database(&options, name).await?;
    Ok(())
}

async fn delete_keys(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A Redis message as the bench received it, stamped on arrival.
#[derive(Debug, Clone)]
pub struct Received {
    pub payload: Vec<u8>,
    pub at: DateTime<Utc>,
}

impl Received {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// A subscription (a channel, or a pattern when it holds `*`), read by its own task
/// that stamps each message the moment it arrives.
pub struct Feed {
    rx: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Feed {
    pub async fn subscribe(client: &redis::Client, channel: &str) -> anyhow::Result<Feed> {
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .context("cannot open a Redis subscription")?;
        if channel.contains('*') {
            pubsub.psubscribe(channel).await?;
        } else {
            pubsub.subscribe(channel).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let received = Received {
                    at: Utc::now(),
                    payload: msg.get_payload_bytes().to_vec(),
                };
                if tx.send(received).is_err() {
                    break;
                }
            }
        });
        Ok(Feed { rx, task })
    }

    /// The next message, or `None` at `until`.
    pub async fn next_until(&mut self, until: Instant) -> Option<Received> {
        tokio::time::timeout_at(until, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Forget everything received so far.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A message of `strategy:status:{id}`.
#[derive(Debug, Clone)]
pub struct StatusEvent {
    pub strategy_id: Uuid,
    pub status: String,
    /// `manager` or `executor` (the additive `source` field).
    pub source: Option<String>,
    pub at: DateTime<Utc>,
}

impl StatusEvent {
    pub fn parse(msg: &Received) -> Option<StatusEvent> {
        let value = msg.json()?;
        Some(StatusEvent {
            strategy_id: value.get("strategy_id")?.as_str()?.parse().ok()?,
            status: value.get("status")?.as_str()?.to_string(),
            source: value
                .get("source")
                .and_then(Value::as_str)
                .map(str::to_string),
            at: msg.at,
        })
    }

    pub fn is_from_manager(&self) -> bool {
        self.source.as_deref() != Some("executor")
    }
}

/// A command row just inserted.
#[derive(Debug, Clone, Copy)]
pub struct Inserted {
    pub id: Uuid,
    /// `now()` of the INSERT's transaction: when it began.
    pub created_at: DateTime<Utc>,
    /// When the INSERT returned to the bench, i.e. after its commit.
    pub committed_at: DateTime<Utc>,
}

/// How a command row ended.
#[derive(Debug, Clone)]
pub struct CommandEnd {
    pub status: CommandStatus,
    pub error: Option<String>,
    pub executed_at: Option<DateTime<Utc>>,
}

/// One engine under test.
pub struct BenchEngine {
    pub label: String,
    pub pool: PgPool,
    pub channels: Channels,
    pub redis: redis::Client,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    /// The strategies created at set-up, in the order given.
    pub strategies: Vec<Uuid>,
    /// `strategy:status:*`, subscribed before the manager started.
    pub status_feed: Feed,
    pub manager: ProcId,
    db_url: String,
    child: Child,
    registry: CleanupRegistry,
    cleanup_id: u64,
}

impl BenchEngine {
    /// Create the database, apply the migrations (`engine-manager --migrate-only`),
    /// create the strategies, subscribe, start the manager and wait until it takes
    /// commands.
    pub async fn start(
        args: &BenchArgs,
        binaries: &Binaries,
        registry: &CleanupRegistry,
        options: EngineOptions,
    ) -> anyhow::Result<BenchEngine> {
        let key = Uuid::new_v4().simple().to_string();
        let db_name = format!("bench_{key}");
        let prefix = format!("bench{}:", &key[..12]);
        let state_dir = std::env::temp_dir().join(format!("engine-bench-{}", &key[..12]));
        let control_socket = state_dir.join("control.sock");
        let cleanup_id = registry.register(CleanupItem {
            manager: None,
            control_socket: control_socket.clone(),
            admin_url: args.database_url.clone(),
            db_name: db_name.clone(),
            redis_url: args.redis_url.clone(),
            prefix: prefix.clone(),
            state_dir: state_dir.clone(),
            keep_logs: args.keep_logs,
        });
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;

        let db_url = create_database(&args.database_url, &db_name).await?;
        migrate(binaries, &db_url, &state_dir).await?;
        for words in &options.data {
            enginectl(binaries, &db_url, words).await?;
        }

        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .context("cannot connect to the bench database")?;
        let strategies = create_strategies(&pool, &options.strategies).await?;

        let redis = redis::Client::open(args.redis_url.as_str()).context("invalid Redis URL")?;
        let channels = Channels::new(prefix.clone());
        let status_feed = Feed::subscribe(&redis, &channels.status_pattern()).await?;

        let child = spawn_manager(args, binaries, &db_url, &prefix, &state_dir, &options)?;
        let pid = child.id().context("the manager exited at once")?;
        let manager = ProcId::of(pid).unwrap_or(ProcId {
            pid,
            start_ticks: 0,
        });
        registry.set_manager(cleanup_id, manager);

        let mut engine = BenchEngine {
            label: options.label,
            pool,
            channels,
            redis,
            state_dir,
            control_socket,
            strategies,
            status_feed,
            manager,
            db_url,
            child,
            registry: registry.clone(),
            cleanup_id,
        };
        engine.wait_ready().await?;
        Ok(engine)
    }

    /// Up when the manager holds its lease, and takes commands when a harmless
    /// global `resume` (nothing is paused) comes back `executed`.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "engine-manager exited during start-up ({status}): {}",
                    self.manager_log_tail(10)
                );
            }
            let holder = engine_store::lease::holder_pid(&self.pool)
                .await
                .unwrap_or(None);
            if holder == Some(self.manager.pid as i32) {
                break;
            }
            if Instant::now() >= until {
                bail!(
                    "engine-manager did not take its lease within 60 s: {}",
                    self.manager_log_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (id, _) = self
            .insert_command(None, CommandWord::Resume, serde_json::json!({}))
            .await?;
        let end = self.wait_command(id, Duration::from_secs(30)).await?;
        if end.status != CommandStatus::Executed {
            bail!(
                "the readiness probe (a global resume) ended {}: {:?}",
                end.status,
                end.error
            );
        }
        Ok(())
    }

    /// Insert one command in its own autocommit statement; its `created_at` is then
    /// the moment this INSERT began.
    pub async fn insert_command(
        &self,
        strategy_id: Option<Uuid>,
        command: CommandWord,
        parameters: Value,
    ) -> anyhow::Result<(Uuid, DateTime<Utc>)> {
        let inserted = self
            .insert_command_timed(strategy_id, command, parameters)
            .await?;
        Ok((inserted.id, inserted.created_at))
    }

    /// [`Self::insert_command`], also noting when the INSERT returned (committed).
    pub async fn insert_command_timed(
        &self,
        strategy_id: Option<Uuid>,
        command: CommandWord,
        parameters: Value,
    ) -> anyhow::Result<Inserted> {
        let inserted = insert_command_row(&self.pool, strategy_id, command, &parameters, None)
            .await
            .with_context(|| format!("cannot insert a {command} command"))?;
        Ok(Inserted {
            id: inserted.id,
            created_at: inserted.created_at,
            committed_at: Utc::now(),
        })
    }

    /// The transitions the manager recorded in `strategy_events` for one command
    /// (status and `clock_timestamp()` of the write), oldest first; empty where the
    /// table does not exist.
    pub async fn events_of_command(&self, command_id: Uuid) -> Vec<(Status, DateTime<Utc>)> {
        db::events_of_command(&self.pool, command_id)
            .await
            .unwrap_or_default()
    }

    /// When the manager last recorded `status` for `strategy_id` in `strategy_events`.
    pub async fn last_event(&self, strategy_id: Uuid, status: Status) -> Option<DateTime<Utc>> {
        db::last_event(&self.pool, strategy_id, status)
            .await
            .ok()
            .flatten()
    }

    /// The row of command `id` once it is `executed` or `failed` (polled every 2 ms).
    pub async fn wait_command(&self, id: Uuid, deadline: Duration) -> anyhow::Result<CommandEnd> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(end) = self.command_end(id).await? {
                return Ok(end);
            }
            if Instant::now() >= until {
                bail!(
                    "command {id} did not finish within {deadline:?}: {}",
                    self.manager_log_tail(5)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The row of command `id` if it is finished.
    pub async fn command_end(&self, id: Uuid) -> anyhow::Result<Option<CommandEnd>> {
        let row = db::command_outcome(&self.pool, id).await?;
        Ok(row.status.is_finished().then_some(CommandEnd {
            status: row.status,
            error: row.error,
            executed_at: row.executed_at,
        }))
    }

    /// The pids of the strategies whose row says `running`.
    pub async fn running_pids(&self) -> anyhow::Result<HashMap<Uuid, u32>> {
        let rows = db::pids_with_status(&self.pool, Status::Running).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, pid)| Some((id, u32::try_from(pid?).ok()?)))
            .collect())
    }

    /// The pid of `id` once its row says `running` (polled every 2 ms, at most 30 s):
    /// the row may trail the `running` message by a commit.
    pub async fn running_pid(&self, id: Uuid) -> anyhow::Result<u32> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let row = db::status_and_pid(&self.pool, id).await?;
            if let Some((Status::Running, Some(pid))) = row {
                return Ok(pid as u32);
            }
            if Instant::now() >= until {
                bail!(
                    "strategy {id} is not running after 30 s (row: {row:?}): {}",
                    self.manager_log_tail(5)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The executors of this engine in the process table (by their control socket).
    pub async fn executor_processes(&self) -> Vec<ProcId> {
        let socket = self.control_socket.clone();
        tokio::task::spawn_blocking(move || procfs::pids_with_arg(&socket))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(ProcId::of)
            .collect()
    }

    /// The last `lines` lines of the manager's log, on one line.
    pub fn manager_log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.state_dir.join("manager.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = all[all.len().saturating_sub(lines)..].join(" | ");
        if tail.is_empty() {
            "(the manager's log is empty)".to_string()
        } else {
            format!("{} manager's log: {tail}", self.label)
        }
    }

    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// Stop every strategy (a global `stop`), stop the manager (SIGTERM), then remove
    /// everything this engine created.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let result = self.stop_everything().await;
        self.status_feed.task.abort();
        self.pool.close().await;
        if let Some(item) = self.registry.take(self.cleanup_id) {
            clean(&item).await;
        }
        result
    }

    async fn stop_everything(&mut self) -> anyhow::Result<()> {
        let live = db::count_not_stopped(&self.pool).await.unwrap_or(0);
        let mut result = Ok(());
        if live > 0 {
            let deadline = Duration::from_secs(60) + Duration::from_millis(100) * live as u32;
            let stop = async {
                let (id, _) = self
                    .insert_command(None, CommandWord::Stop, serde_json::json!({"timeout_s": 5}))
                    .await?;
                self.wait_command(id, deadline).await
            };
            if let Err(err) = stop.await {
                result = Err(err.context("the global stop at the end did not finish"));
            }
        }
        probe::signal(self.manager.pid, Signal::TERM);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                result = result.and(Err(anyhow::anyhow!(
                    "engine-manager exited with {status} on SIGTERM: {}",
                    self.manager_log_tail(5)
                )));
            }
            _ => {
                let _ = self.child.start_kill();
                result = result.and(Err(anyhow::anyhow!(
                    "engine-manager did not exit within 30 s of SIGTERM; killed"
                )));
            }
        }
        result
    }
}

/// One node of a cluster under test (`--cluster --node`), with its own state
/// directory and registered for clean-up like an engine; the database is shared.
pub struct ClusterNode {
    pub name: String,
    pub state_dir: PathBuf,
    pub manager: ProcId,
    pub child: Child,
}

impl ClusterNode {
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("manager.log")).unwrap_or_default()
    }
}

/// A fresh database for a cluster under test, migrated; its URL.
pub async fn cluster_database(
    args: &BenchArgs,
    binaries: &Binaries,
    db_name: &str,
    state_dir: &Path,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let db_url = create_database(&args.database_url, db_name).await?;
    migrate(binaries, &db_url, state_dir).await?;
    Ok(db_url)
}

/// Create `specs` with `desired_state = running` (cluster nodes claim and start
/// them); their ids.
pub async fn create_running_strategies(
    pool: &PgPool,
    specs: &[StrategySpec],
) -> anyhow::Result<Vec<Uuid>> {
    let ids = create_strategies(pool, specs).await?;
    sqlx::query("UPDATE strategy_configs SET desired_state = 'running' WHERE id = ANY($1)")
        .bind(&ids)
        .execute(pool)
        .await?;
    Ok(ids)
}

/// Start cluster node `name` on `db_url` with lease time `lease`, its state under
/// `root`, registered with `registry`.
#[allow(clippy::too_many_arguments)]
pub fn start_cluster_node(
    args: &BenchArgs,
    binaries: &Binaries,
    registry: &CleanupRegistry,
    db_url: &str,
    db_name: &str,
    prefix: &str,
    root: &Path,
    name: &str,
    lease: Duration,
) -> anyhow::Result<ClusterNode> {
    let state_dir = root.join(name);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let id = registry.register(CleanupItem {
        manager: None,
        control_socket: state_dir.join("control.sock"),
        admin_url: args.database_url.clone(),
        db_name: db_name.to_string(),
        redis_url: args.redis_url.clone(),
        prefix: prefix.to_string(),
        state_dir: state_dir.clone(),
        keep_logs: args.keep_logs,
    });
    let options = EngineOptions {
        label: name.to_string(),
        health_interval: Some(Duration::from_secs(1)),
        metrics_interval: None,
        restart_delay: None,
        max_concurrent_executions: None,
        strategies: Vec::new(),
        data: Vec::new(),
    };
    let mut command = manager_command(args, binaries, db_url, prefix, &state_dir, &options)?;
    command
        .env("ENGINE_CLUSTER", "true")
        .env("ENGINE_NODE", name)
        .env("ENGINE_LEASE_TIME", format!("{}ms", lease.as_millis()));
    let child = command
        .spawn()
        .with_context(|| format!("cannot run {}", binaries.manager.display()))?;
    let pid = child.id().context("the node exited at once")?;
    let manager = ProcId::of(pid).unwrap_or(ProcId {
        pid,
        start_ticks: 0,
    });
    registry.set_manager(id, manager);
    Ok(ClusterNode {
        name: name.to_string(),
        state_dir,
        manager,
        child,
    })
}

/// `admin_url` with its database replaced by `name`.
fn database_url_for(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin_url).context("invalid --database-url")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Insert the strategies in one statement; their ids in the order given.
async fn create_strategies(pool: &PgPool, specs: &[StrategySpec]) -> anyhow::Result<Vec<Uuid>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(&str, &str, Value)> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.strategy_type.as_str(), s.config.clone()))
        .collect();
    let rows = db::insert_strategies(pool, &rows)
        .await
        .context("cannot create the strategies")?;
    let by_name: HashMap<String, Uuid> = rows.into_iter().map(|(id, n)| (n, id)).collect();
    specs
        .iter()
        .map(|s| {
            by_name
                .get(&s.name)
                .copied()
                .with_context(|| format!("strategy {} was not created", s.name))
        })
        .collect()
}

/// Create the bench's own database through the admin URL; its URL.
async fn create_database(admin_url: &str, db_name: &str) -> anyhow::Result<String> {
    let admin = manager::connect_options(admin_url)?;
    manager::create_database(&admin, db_name)
        .await
        .context("is PostgreSQL running? (bash ops/ensure-services.sh)")?;
    database_url_for(admin_url, db_name)
}

/// Apply the migrations the way an operator does: `engine-manager --migrate-only`.
async fn migrate(binaries: &Binaries, db_url: &str, state_dir: &Path) -> anyhow::Result<()> {
    let migrate = tokio::process::Command::new(&binaries.manager)
        .arg("--migrate-only")
        .env("DATABASE_URL", db_url)
        .env("ENGINE_STATE_DIR", state_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output();
    let migrate = tokio::time::timeout(Duration::from_secs(60), migrate)
        .await
        .context("engine-manager --migrate-only took over 60 s")?
        .context("cannot run engine-manager --migrate-only")?;
    if !migrate.status.success() {
        bail!(
            "engine-manager --migrate-only failed ({}): {}",
            migrate.status,
            String::from_utf8_lossy(&migrate.stderr).trim()
        );
    }
    Ok(())
}

/// Run the `enginectl` beside the manager with `words` on the bench's database (its
/// progress goes to the bench's stderr).
async fn enginectl(binaries: &Binaries, db_url: &str, words: &[String]) -> anyhow::Result<()> {
    let path = binaries.manager.with_file_name("enginectl");
    eprintln!("engine-bench: enginectl {}", words.join(" "));
    let status = tokio::process::Command::new(&path)
        .args(words)
        .env("DATABASE_URL", db_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {}", path.display()))?;
    if !status.success() {
        bail!("enginectl {} failed ({status})", words.join(" "));
    }
    Ok(())
}

/// Start the `engine-manager` binary on the bench's database and Redis prefix, in its
/// own process group, its output in `{state_dir}/manager.log`.
fn spawn_manager(
    args: &BenchArgs,
    binaries: &Binaries,
    db_url: &str,
    prefix: &str,
    state_dir: &Path,
    options: &EngineOptions,
) -> anyhow::Result<Child> {
    manager_command(args, binaries, db_url, prefix, state_dir, options)?
        .spawn()
        .with_context(|| format!("cannot run {}", binaries.manager.display()))
}

/// The manager's command for an engine of `options` (not started yet).
fn manager_command(
    args: &BenchArgs,
    binaries: &Binaries,
    db_url: &str,
    prefix: &str,
    state_dir: &Path,
    options: &EngineOptions,
) -> anyhow::Result<tokio::process::Command> {
    let log_path = state_dir.join("manager.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let mut command = tokio::process::Command::new(&binaries.manager);
    command
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", &args.redis_url)
        .env("ENGINE_REDIS_PREFIX", prefix)
        .env("ENGINE_STATE_DIR", state_dir)
        .env("ENGINE_EXECUTOR_PATH", &binaries.executor)
        // The HTTP API (where the manager has one) on a free port, so that
        // several engines never fight over the default one.
        .env("ENGINE_HTTP_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("ENGINE_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(true);
    let intervals = [
        ("ENGINE_HEALTH_INTERVAL", options.health_interval),
        ("ENGINE_METRICS_INTERVAL", options.metrics_interval),
        ("ENGINE_RESTART_DELAY", options.restart_delay),
    ];
    for (var, value) in intervals {
        if let Some(value) = value {
            command.env(var, format!("{}ms", value.as_millis()));
        }
    }
    if let Some(cap) = options.max_concurrent_executions {
        command.env("ENGINE_MAX_CONCURRENT_EXECUTIONS", cap.to_string());
    }
    Ok(command)
}
