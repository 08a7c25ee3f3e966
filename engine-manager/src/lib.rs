//! `engine-manager`: the supervisor daemon.
//!
//! # Layout
//! - [`run`] wires everything together and runs until the shutdown token fires.
//! - [`config`]: flags and defaults. [`lease`]: one manager per database. Every SQL
//!   statement is in the `engine-store` crate.
//! - [`intake`]: the [`intake::CommandIntake`] (claims command rows, routes them).
//! - [`supervisor`]: one [`supervisor::StrategySupervisor`] task per strategy (owns
//!   its executor process, applies its commands in order, restarts crashes).
//! - [`process`]: spawning, adopting, signalling and watching executor processes.
//! - [`link`]: the control socket executors connect to (readiness and acks).
//! - [`executor_user`]: `--executor-user`, executors run as another user.
//! - [`limits`]: resource limits: one cgroup (v2 or v1) per executor, else rlimits.
//! - [`publisher`]: the one task that talks to Redis for sending.
//! - [`health`]: the health sampler (also stale detection and [`log_rotation`]).
//!   [`recorder`]: metrics into `strategy_metrics`. [`orders`]: the paper orders
//!   executors report, into `strategy_orders` in batches.
//! - [`executions`]: the plan of interval executions (due times, the concurrency
//!   limit, skips, time limits, statistics), pure and not wired in yet.
//! - [`runs`]: backtests, screeners and alert scans: the queue, one task and one
//!   process per run, cancel, timeout, adoption, the one retry.
//! - [`schedules`]: schedules of runs: one timer over every schedule, a run per due
//!   time (exactly once, by the database's unique key), `overlap` and `catch_up`.
//! - [`secrets`]: the secrets a config refers to (`{"secret": "NAME"}`), from
//!   `--secrets-file` or `ENGINE_SECRET_<NAME>`, resolved only for an executor.
//! - [`command_metrics`]: the command counters of `/metrics`, kept in memory.
//! - [`http`]: the HTTP API, Prometheus `/metrics` and the web dashboard.
//! - [`tasks`]: every background task is owned; one that panics or ends early stops
//!   the manager with a non-zero exit (systemd restarts it; executors are adopted).
//!
//! Architecture invariant: executors never touch the database; the manager is its
//! only client, and correctness never depends on a pub/sub message.

pub mod command_metrics;
pub mod config;
pub mod executions;
pub mod executor_user;
pub mod health;
pub mod http;
pub mod intake;
pub mod lease;
pub mod limits;
pub mod link;
pub mod log_rotation;
pub mod orders;
pub mod process;
pub mod publisher;
pub mod recorder;
pub mod redis_users;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod supervisor;
pub mod tasks;

use crate::config::{ManagerConfig, RestartPolicy};
use crate::lease::{LeaseError, ManagerLease};
use crate::link::{ControlServer, LinkRoutes};
use crate::process::ExecutorProcess;
use crate::publisher::Publisher;
use crate::supervisor::{Initial, LiveEntry, StrategySupervisor, SupervisorHandle};
use crate::tasks::{ManagerTasks, TaskFailure, Tasks};
use engine_protocol::{Channels, Status};
use engine_store::manager::{self as db, DbError};
use engine_store::{CommandWord, DesiredState};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::LogFormat;

/// What every task of the manager shares.
pub struct Shared {
    pub config: ManagerConfig,
    pub pool: PgPool,
    /// Claims only: `synchronous_commit = off` (see [`db::connect_claimer`]).
    pub claim_pool: PgPool,
    /// `synchronous_commit = off`, for a `running` record whose command's outcome
    /// (a synchronous commit) is written right after it ([`db::connect_unsynced`]).
    pub unsynced_pool: PgPool,
    pub publisher: Publisher,
    pub channels: Channels,
    pub executor_path: PathBuf,
    pub node: String,
    /// Which strategies this manager serves: all, or (`--cluster`) its node's.
    pub scope: db::Scope,
    pub boot_id: String,
    pub policy: RestartPolicy,
    pub live: Mutex<HashMap<Uuid, LiveEntry>>,
    /// The latest health of each strategy and of this node (for the APIs).
    pub health_cache: Arc<health::LiveCache>,
    /// The latest metrics each executor reported (for health, staleness and APIs).
    pub last_metrics: Mutex<HashMap<Uuid, recorder::LastMetrics>>,
    /// Finished commands, for `/metrics` (seeded at start-up, counted by the intake).
    pub command_metrics: command_metrics::CommandMetrics,
    pub link_routes: LinkRoutes,
    pub cancel: CancellationToken,
    /// Where every task that is not one of `run`'s own is spawned (see [`tasks`]).
    pub tracker: Tasks,
    /// The runs' queue: where the intake hands `cancel` commands.
    pub runs: runs::RunsHandle,
    /// The interval executions' task: what the supervisors tell it.
    pub executions: executions::task::ExecutionsHandle,
    /// The last executions of each interval strategy, as that task published them.
    pub recent_executions: executions::recent::RecentExecutions,
    /// The HTTP tokens (checked at start-up, before the database).
    pub http_access: Arc<http::HttpAccess>,
    /// How resource limits are enforced here (chosen at start-up).
    pub limiter: Arc<limits::Limiter>,
    /// The executors' Redis users: the URL each new executor gets, and its release.
    pub redis_users: redis_users::ExecutorUsersHandle,
    /// Where config references to secrets are resolved from (checked at start-up).
    pub secrets: secrets::Secrets,
    /// The user executors run as (`--executor-user`), checked at start-up.
    pub executor_user: Option<engine_protocol::executor_env::RunAs>,
    /// In a cluster: this node's lease, which fences what it does for its strategies.
    pub fence: lease::Fence,
    /// Where the supervisors hand the paper orders their executors report.
    pub orders: orders::OrdersHandle,
}

impl Shared {
    /// Forget a deleted strategy: out of the live map (`/health`, `/metrics`, the
    /// health sampler), its latest metrics, and its `strategy:state:{id}` hash. The
    /// hash is deleted under the live lock, the lock the health sampler holds while it
    /// writes health into a hash, so no late sample writes it again.
    pub fn forget_strategy(&self, id: Uuid) {
        let mut live = self.live.lock().expect("live lock");
        live.remove(&id);
        self.publisher.forget_state(self.channels.state_key(id));
        drop(live);
        self.last_metrics
            .lock()
            .expect("last_metrics lock")
            .remove(&id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("invalid Redis URL {url}")]
    RedisUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "the state directory {} is in use: a live engine-manager answers on its control socket {}; \
         give each node of a cluster its own --state-dir",
        path.parent().unwrap_or(path).display(), path.display()
    )]
    StateDirInUse { path: PathBuf },
    #[error("cannot listen on the control socket {path}")]
    ControlSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read strategies from the database")]
    Load(#[source] sqlx::Error),
    #[error(transparent)]
    Task(#[from] TaskFailure),
    #[error(transparent)]
    HttpAccess(#[from] http::AccessError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error(transparent)]
    Roles(#[from] engine_store::roles::RolesError),
    #[error("cannot check the database role's rights")]
    CheckRights(#[source] sqlx::Error),
    #[error(transparent)]
    ExecutorUser(#[from] executor_user::ExecutorUserError),
    #[error(transparent)]
    InsecureRedis(#[from] engine_protocol::redis_tls::InsecureRedisUrl),
    #[error("the Redis URL {url} ends in #insecure, but this build cannot skip the check of the server's certificate (its Redis client is built without tls-rustls-insecure, as release builds are); drop #insecure and give Redis a certificate that a public root (webpki-roots) trusts")]
    InsecureRedisUnsupported { url: String },
    #[error(
        "the database role '{role}' lacks what the manager needs: {}; run `engine-manager --setup-roles` as a superuser once, then start the manager as engine_manager (or a login role granted it)",
        missing.join(", ")
    )]
    MissingRights { role: String, missing: Vec<String> },
}

impl ManagerError {
    /// 3 when another manager serves the database (or, in a cluster, holds this
    /// node's name), 2 for a set-up that must not start (a bad tokens file, open
    /// beyond loopback, a secrets file others may read, unverified TLS, an
    /// `--executor-user` that cannot work), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ManagerError::Lease(held) if held.is_held() => 3,
            ManagerError::StateDirInUse { .. } => 3,
            ManagerError::HttpAccess(_)
            | ManagerError::MissingRights { .. }
            | ManagerError::Secrets(_)
            | ManagerError::ExecutorUser(_)
            | ManagerError::InsecureRedis(_)
            | ManagerError::InsecureRedisUnsupported { .. }
            | ManagerError::Database(DbError::UnverifiedTls { .. } | DbError::BadSslMode { .. }) => {
                2
            }
            _ => 1,
        }
    }
}

/// The error and its causes on one line: `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Run the manager until `shutdown` fires, or until one of its tasks fails (see
/// [`tasks`]): then it stops the same graceful way and returns
/// [`ManagerError::Task`], so that the binary exits non-zero.
pub async fn run(config: ManagerConfig, shutdown: CancellationToken) -> Result<(), ManagerError> {
    if config.setup_roles {
        return setup_roles(&config).await;
    }
    // Before anything else: a server that must not start says so at once.
    let (http_access, secrets) = refusals(&config).await?;
    let pool = db::connect(&config.database_url, 10).await?;
    check_rights_and_migrate(&pool).await?;
    if config.migrate_only {
        tracing::info!("migrations applied");
        return Ok(());
    }
    check_state_dir_free(&config).await?;
    let node = config.node_name();
    let executor_user = prepare_executor_user(&config).await?;
    let boot_id = engine_protocol::procfs::boot_id();
    let (lease, is_boot) = acquire_lease(&config, &node, &boot_id).await?;
    record_run_slots(&pool, &config).await;
    let limiter = detect_limits(&pool, config.limits_mechanism).await;
    let redis_client = open_redis(&config.redis_url)?;

    let mut background = ManagerTasks::default();
    let (publisher, redis_users) =
        start_redis_tasks(&config, &redis_client, &pool, &mut background);
    let (claim_pool, unsynced_pool) = unsynced_pools(&config.database_url)?;
    let (runs_handle, runs_inbox) = runs::channel();
    let (executions_handle, executions_inbox) = executions::task::channel();
    let shared = Arc::new(Shared {
        channels: Channels::new(config.redis_prefix.clone()),
        policy: config.restart_policy(),
        executor_path: config.executor_path(),
        scope: config.scope(),
        config,
        pool,
        claim_pool,
        unsynced_pool,
        publisher,
        node,
        boot_id,
        live: Mutex::new(HashMap::new()),
        health_cache: Arc::default(),
        last_metrics: Mutex::new(HashMap::new()),
        command_metrics: Default::default(),
        link_routes: Arc::new(Mutex::new(HashMap::new())),
        cancel: CancellationToken::new(),
        tracker: background.tracker.clone(),
        runs: runs_handle,
        executions: executions_handle,
        recent_executions: executions::recent::RecentExecutions::default(),
        http_access,
        limiter,
        redis_users,
        secrets,
        executor_user,
        fence: lease.fence(),
        orders: orders::OrdersHandle::new(),
    });
    log_start(&shared, is_boot);

    let (socket, server) = bind_control_socket(&shared)?;
    background.spawn("control socket", server.run(shared.cancel.clone()));
    background.spawn("http", http::run(shared.clone(), redis_client.clone()));

    // Before the supervisors: they report `running` to it from their first step.
    shared.recent_executions.load(&shared.pool).await;
    let executions = executions::task::Executions::new(shared.clone(), executions_inbox);
    background.spawn("interval executions", executions.run());
    let (rows, recovered, superseded) = load_until_ready(&shared, &shutdown).await?;
    let (supervisors, applied) =
        start_supervisors(&shared, is_boot, rows, &recovered, superseded).await;
    recorder::seed_last_metrics(&shared).await;
    let recorder = recorder::start(shared.clone(), redis_client);
    let health = health::HealthSampler::new(shared.clone(), recorder);
    background.spawn("health sampler", health.run());
    let interval = lease.beat_interval(shared.config.health_interval);
    background.spawn("manager lease", lease.keep(interval, shared.cancel.clone()));
    let run_queue = runs::RunQueue::new(shared.clone(), runs_inbox);
    background.spawn("run queue", run_queue.run());
    let schedule_timer = schedules::ScheduleTimer::new(shared.clone());
    background.spawn("schedule timer", schedule_timer.run());
    let intake = intake::CommandIntake::new(shared.clone(), supervisors);
    background.spawn("command intake", intake.run(recovered, applied));

    let failure = background.watch(&shutdown).await;
    stop(&shared, background, failure, &socket).await
}

/// `--max-concurrent-runs`, said in the lease row for the HTTP API and enginectl
/// (the queue's capacity).
async fn record_run_slots(pool: &PgPool, config: &ManagerConfig) {
    let slots = i32::try_from(config.max_concurrent_runs).unwrap_or(i32::MAX);
    if let Err(err) = engine_store::runs_api::record_max_concurrent(pool, slots).await {
        tracing::warn!(error = %err, "cannot record --max-concurrent-runs in the lease row");
    }
}

/// Take the lease: as the one manager of the database, or (`--cluster`) as node
/// `node` of a cluster. Also says whether the host booted since the previous manager
/// (in a cluster: the previous life of this node) ran.
async fn acquire_lease(
    config: &ManagerConfig,
    node: &str,
    boot_id: &str,
) -> Result<(ManagerLease, bool), ManagerError> {
    let mode = if config.cluster {
        lease::LeaseMode::Cluster {
            node: node.to_string(),
            capacity: config.capacity,
            lease_time: config.lease_time,
        }
    } else {
        lease::LeaseMode::Single
    };
    let options = db::connect_options(&config.database_url)?;
    let host = engine_protocol::node_name();
    let lease = ManagerLease::acquire(&options, &host, std::process::id(), boot_id, mode).await?;
    let is_boot = lease.previous_boot_id.as_deref() != Some(boot_id);
    Ok((lease, is_boot))
}

/// A cluster node refuses a state directory another live manager uses (nodes on one
/// host, one `--state-dir` given twice): it would take that manager's executors for
/// strays of its own. Without `--cluster` the database lease alone decides, as
/// always.
async fn check_state_dir_free(config: &ManagerConfig) -> Result<(), ManagerError> {
    let path = config.control_socket_path();
    if config.cluster && tokio::net::UnixStream::connect(&path).await.is_ok() {
        return Err(ManagerError::StateDirInUse { path });
    }
    Ok(())
}

/// What must stop the start-up at once, before the database: unverified TLS, the
/// HTTP tokens and addresses, and the secrets file (exit code 2).
async fn refusals(
    config: &ManagerConfig,
) -> Result<(Arc<http::HttpAccess>, secrets::Secrets), ManagerError> {
    let http_access = preflight(config).await?;
    let secrets = secrets::Secrets::open(config.secrets_file.clone()).await?;
    Ok((http_access, secrets))
}

/// The control socket every executor connects to, bound: its path and server.
/// With `--executor-user`, the socket is given to that user's group.
fn bind_control_socket(
    shared: &Shared,
) -> Result<(std::path::PathBuf, ControlServer), ManagerError> {
    let socket = shared.config.control_socket_path();
    let failed = |source| ManagerError::ControlSocket {
        path: socket.clone(),
        source,
    };
    let server = ControlServer::bind(&socket, shared.link_routes.clone()).map_err(failed)?;
    if let Some(user) = &shared.executor_user {
        executor_user::share_socket(&socket, user).map_err(failed)?;
    }
    Ok((socket, server))
}

/// TLS as the flags allow it: unverified PostgreSQL modes to a remote host and a
/// `rediss://…#insecure` URL only with `--tls-insecure`, which is said loudly; a
/// `#insecure` URL is refused where the Redis client cannot skip the check at all.
async fn check_tls(config: &ManagerConfig) -> Result<(), ManagerError> {
    engine_store::tls::allow_unverified(config.tls_insecure);
    engine_protocol::redis_tls::check_redis_url(&config.redis_url, config.tls_insecure)?;
    if !config.tls_insecure {
        return Ok(());
    }
    tracing::warn!(
        "--tls-insecure is set: TLS connections to PostgreSQL and Redis may skip the check of the server's certificate, so anyone on the network path could pose as the server and read or change what is sent; use sslmode=verify-full and certificates the client trusts, and drop --tls-insecure (ENGINE_TLS_INSECURE)"
    );
    if engine_protocol::redis_tls::skips_verification(&config.redis_url)
        && !redis_client_skips_verification().await
    {
        return Err(ManagerError::InsecureRedisUnsupported {
            url: engine_protocol::redact::redact_url(&config.redis_url),
        });
    }
    Ok(())
}

/// Whether this build's Redis client can skip certificate checks (its feature
/// `tls-rustls-insecure`, on in test builds only). Asked of the client itself: it
/// builds its TLS settings before it opens a socket, and refuses an `#insecure` URL
/// there with `InvalidClientConfig` when it cannot; otherwise the connection to a
/// closed local port fails with an I/O error.
async fn redis_client_skips_verification() -> bool {
    let Ok(client) = redis::Client::open("rediss://127.0.0.1:1/#insecure") else {
        return false;
    };
    let attempt = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await;
    !matches!(attempt, Ok(Err(err)) if err.kind() == redis::ErrorKind::InvalidClientConfig)
}

/// `--executor-user`: the user looked up, this process's right to become it checked,
/// and the files it needs made reachable ([`executor_user::prepare`]).
async fn prepare_executor_user(
    config: &ManagerConfig,
) -> Result<Option<engine_protocol::executor_env::RunAs>, ManagerError> {
    let Some(name) = config.executor_user.clone() else {
        return Ok(None);
    };
    let (executor, state, logs, runs) = (
        config.executor_path(),
        config.state_dir.clone(),
        config.logs_dir(),
        config.runs_dir(),
    );
    let tokens_file = config.http_tokens_file.clone();
    let (user, exposed) = tasks::blocking(move || {
        let user = executor_user::prepare(&name, &executor, &state, &logs, &runs)?;
        let exposed = tokens_file.filter(|path| executor_user::can_read(&user, path));
        Ok::<_, executor_user::ExecutorUserError>((user, exposed))
    })
    .await?;
    if let Some(path) = exposed {
        tracing::warn!(path = %path.display(), user = %user.name, "the HTTP tokens file is readable by --executor-user; make it the manager's alone (chmod 600)");
    }
    tracing::info!(user = %user.name, uid = user.uid, gid = user.gid, "executors run as another user");
    Ok(Some(user))
}

/// `--setup-roles`: the migrations, the three roles and their grants
/// ([`engine_store::roles`]), then exit.
async fn setup_roles(config: &ManagerConfig) -> Result<(), ManagerError> {
    check_tls(config).await?;
    engine_store::roles::setup_roles(&config.database_url).await?;
    tracing::info!(
        "migrations applied; roles engine_viewer, engine_operator and engine_manager set up"
    );
    Ok(())
}

/// What must hold before the manager touches the database: TLS as the flags allow
/// ([`check_tls`]) and the HTTP tokens ([`http::HttpAccess::from_config`]).
async fn preflight(config: &ManagerConfig) -> Result<Arc<http::HttpAccess>, ManagerError> {
    check_tls(config).await?;
    Ok(Arc::new(http::HttpAccess::from_config(config)?))
}

/// The start-up check: the connected role can do what the manager does (read and
/// write its tables, draw from their sequences, apply the migrations), else the
/// manager exits saying what is missing; then the migrations are applied. A
/// superuser and the schema's owner pass.
async fn check_rights_and_migrate(pool: &sqlx::PgPool) -> Result<(), ManagerError> {
    use engine_store::roles;
    let missing = roles::missing_privileges(pool)
        .await
        .map_err(ManagerError::CheckRights)?;
    if missing.is_empty() {
        roles::migrate_as_manager(pool).await?;
        return Ok(());
    }
    let role = roles::current_role(pool)
        .await
        .map_err(ManagerError::CheckRights)?;
    Err(ManagerError::MissingRights { role, missing })
}

/// The tasks stopped last, so that every final state is sent and the supervisors'
/// final releases reach Redis: the publisher, and the one that makes the executors'
/// Redis users ([`redis_users`]).
fn start_redis_tasks(
    config: &ManagerConfig,
    redis_client: &redis::Client,
    pool: &PgPool,
    background: &mut ManagerTasks,
) -> (Publisher, redis_users::ExecutorUsersHandle) {
    let (publisher, publishing) = publisher::start(
        redis_client.clone(),
        &config.redis_url,
        background.last_cancel(),
    );
    background.spawn_last("publisher", publishing);
    let (users, handle) = redis_users::ExecutorUsers::new(redis_users::UsersConfig {
        client: redis_client.clone(),
        shared_url: config.redis_url.clone(),
        prefix: config.redis_prefix.clone(),
        state_dir: config.state_dir.clone(),
        choice: config.redis_acl,
        pool: pool.clone(),
    });
    background.spawn_last("executor redis users", users.run(background.last_cancel()));
    (publisher, handle)
}

/// Choose how resource limits are enforced here, and say so: in the log and in the
/// lease row (for `enginectl doctor`).
async fn detect_limits(pool: &PgPool, choice: limits::MechanismChoice) -> Arc<limits::Limiter> {
    let limiter = Arc::new(tasks::blocking(move || limits::Limiter::detect(choice)).await);
    let mechanism = limiter.describe();
    tracing::info!(%mechanism, "resource limits");
    let sweeper = limiter.clone();
    let removed =
        tasks::blocking(move || sweeper.remove_empty_groups(limits::EMPTY_GROUP_MIN_AGE)).await;
    if !removed.is_empty() {
        tracing::info!(
            groups = ?removed,
            "removed {} empty limits group(s) of executors that exited while no manager watched them",
            removed.len()
        );
    }
    if let Err(err) = engine_store::lease::record_limits_mechanism(pool, &mechanism).await {
        tracing::warn!(error = %err, "cannot record the limits mechanism in the lease row");
    }
    limiter
}

/// The pools whose commits do not wait for the WAL flush: the claims', and the
/// supervisors' for a `running` record a command's outcome follows.
fn unsynced_pools(url: &str) -> Result<(PgPool, PgPool), ManagerError> {
    Ok((db::connect_claimer(url)?, db::connect_unsynced(url, 1)?))
}

/// Stop every task (after `shutdown`, or the first task's `failure`), remove the
/// control socket and close the pools.
async fn stop(
    shared: &Shared,
    background: ManagerTasks,
    failure: Option<TaskFailure>,
    socket: &std::path::Path,
) -> Result<(), ManagerError> {
    tracing::info!(
        stop_strategies = shared.config.stop_strategies_on_exit,
        "engine-manager shutting down"
    );
    shared.cancel.cancel();
    let late = background.stop().await;
    let _ = tokio::fs::remove_file(socket).await;
    shared.claim_pool.close().await;
    shared.unsynced_pool.close().await;
    shared.pool.close().await;
    match failure.or(late) {
        None => {
            tracing::info!("engine-manager stopped");
            Ok(())
        }
        Some(failure) => Err(ManagerError::Task(failure)),
    }
}

fn open_redis(url: &str) -> Result<redis::Client, ManagerError> {
    redis::Client::open(url).map_err(|source| ManagerError::RedisUrl {
        url: engine_protocol::redact::redact_url(url),
        source,
    })
}

fn log_start(shared: &Shared, is_boot: bool) {
    tracing::info!(
        node = %shared.node,
        executor = %shared.executor_path.display(),
        redis = %engine_protocol::redact::redact_url(&shared.config.redis_url),
        host_boot = is_boot,
        "engine-manager starting"
    );
    if !shared.executor_path.is_file() {
        tracing::warn!(path = %shared.executor_path.display(), "executor binary not found; starts will fail until it exists (set --executor-path)");
    }
}

/// The strategies, the commands the previous manager left `processing`, and which of
/// those each strategy is provably through (`(command, strategy)`). PostgreSQL may go
/// away right now too: wait for it rather than exit (until `shutdown`).
async fn load_until_ready(
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(Vec<db::StrategyRow>, Vec<db::CommandRow>, Vec<(Uuid, Uuid)>), ManagerError> {
    let pool = &shared.pool;
    loop {
        let loaded = async {
            let recovered = db::load_processing(pool, &shared.scope).await?;
            let superseded = if recovered.is_empty() {
                Vec::new()
            } else {
                db::superseded_recovered(pool).await?
            };
            shared.command_metrics.seed(pool).await?;
            Ok::<_, sqlx::Error>((
                db::load_strategies(pool, &shared.scope).await?,
                recovered,
                superseded,
            ))
        };
        match loaded.await {
            Ok(loaded) => return Ok(loaded),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read strategies yet; retrying every second");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(ManagerError::Load(err)),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// One supervisor per strategy row, each adopting its executor if one runs, and a
/// SIGKILL for executors of strategies the database does not know. Returns the
/// supervisors and, per recovered command, the strategies already through it.
async fn start_supervisors(
    shared: &Arc<Shared>,
    is_boot: bool,
    rows: Vec<db::StrategyRow>,
    recovered: &[db::CommandRow],
    superseded: Vec<(Uuid, Uuid)>,
) -> (
    HashMap<Uuid, SupervisorHandle>,
    HashMap<Uuid, HashSet<Uuid>>,
) {
    // Where the supervisors hand the orders their executors report, from their start.
    orders::OrdersWriter::start(shared);
    // The process table is the truth about what runs, whatever the rows say.
    let socket = shared.config.control_socket_path();
    let mut found = tasks::blocking(move || process::scan_executors(&socket)).await;
    let mut applied: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for (command_id, strategy_id) in superseded {
        applied.entry(command_id).or_default().insert(strategy_id);
    }
    let mut initials = Vec::with_capacity(rows.len());
    for row in rows {
        let running = found.remove(&row.id).unwrap_or_default();
        let desired = recovered_desired(row.desired_state, row.id, recovered, &applied);
        let initial = initial_action(shared, &row, is_boot, running, desired).await;
        initials.push((row, initial));
    }
    // Before any supervisor asks for a user: the users of executors not adopted go.
    let adopted = initials
        .iter()
        .filter(|(_, initial)| matches!(initial, Initial::Adopt(..)))
        .map(|(row, _)| row.id)
        .collect();
    shared.redis_users.adopted(adopted);
    let mut supervisors = HashMap::new();
    for (row, initial) in initials {
        let id = row.id;
        supervisors.insert(id, StrategySupervisor::spawn(shared.clone(), row, initial));
    }
    for (id, strays) in found {
        for (pid, ticks) in strays {
            kill_stray(
                pid,
                ticks,
                &id.to_string(),
                "an executor of a strategy this manager does not serve (not in the database, or owned by another node)",
            );
        }
    }
    (supervisors, applied)
}

/// SIGKILL an executor that must not run (checked to be the same process first).
fn kill_stray(pid: u32, ticks: u64, name: &str, why: &str) {
    if !engine_protocol::procfs::is_same_process(pid, ticks) {
        return;
    }
    tracing::warn!(pid, strategy = name, "killing {why}");
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// The desired state of one strategy once the commands the previous manager left
/// `processing` are applied again (the intake does that next). The start-up acts on
/// it, not on the row: the previous manager may have died after a command's effect
/// and before writing its `desired_state` (a pause that paused the executor), and
/// acting on the row would undo the effect and then redo it. Commands the strategy
/// has provably been through already (`applied`: command → strategies) do not count.
fn recovered_desired(
    mut desired: DesiredState,
    strategy_id: Uuid,
    recovered: &[db::CommandRow],
    applied: &HashMap<Uuid, HashSet<Uuid>>,
) -> DesiredState {
    for row in recovered {
        if row.strategy_id.is_some_and(|id| id != strategy_id)
            || applied
                .get(&row.id)
                .is_some_and(|s| s.contains(&strategy_id))
        {
            continue;
        }
        let word = row.command.trim().to_ascii_lowercase().parse().ok();
        desired = match (word, desired) {
            (Some(CommandWord::Stop), _) => DesiredState::Stopped,
            // start on a paused strategy is a no-op
            (Some(CommandWord::Start), DesiredState::Paused) => DesiredState::Paused,
            (Some(CommandWord::Start | CommandWord::Restart), _) => DesiredState::Running,
            // pause and resume only act on a running or paused strategy
            (Some(CommandWord::Pause), DesiredState::Running) => DesiredState::Paused,
            (Some(CommandWord::Resume), DesiredState::Paused) => DesiredState::Running,
            (_, unchanged) => unchanged,
        };
    }
    desired
}

/// What a start-up without a live executor acts on: the row's `desired_state`, which
/// the recovered commands (`implied`: what they would leave) may keep stopped or
/// make paused, but never start. They are applied again next, in order, each to the
/// state it would have found: a global pause given while the strategy was stopped
/// must find it stopped, though a restart after it implies `running`.
fn boot_desired(row: DesiredState, implied: DesiredState) -> DesiredState {
    match (row, implied) {
        (DesiredState::Stopped, _) | (_, DesiredState::Stopped) => DesiredState::Stopped,
        (_, DesiredState::Paused) => DesiredState::Paused,
        (row, DesiredState::Running) => row,
    }
}

/// The start-up rule (CONTRACT.md): what to do with one strategy when the manager
/// starts. A live executor of ours is adopted; after a host reboot only `auto_start`
/// strategies not stopped by an operator come back; after a manager restart every
/// strategy whose desired state is running or paused does.
pub(crate) async fn initial_action(
    shared: &Shared,
    row: &db::StrategyRow,
    is_boot: bool,
    mut running: Vec<(u32, u64)>,
    desired: DesiredState,
) -> Initial {
    let row_desired = row.desired_state;
    let status: Status = row.status;
    let auto = row.auto_start && !row.operator_stopped;
    let log_path = shared
        .config
        .logs_dir()
        .join(engine_protocol::state_dir::log_file_name(&row.name, row.id));
    // The executor the row names, if it still runs; else one found in the process
    // table (the manager died before recording its pid). Never more than one.
    let recorded = match (row.pid, row.pid_start_ticks, row.pid_boot_id.as_deref()) {
        (Some(pid), Some(ticks), Some(boot)) if boot == shared.boot_id && pid > 0 => {
            Some((pid as u32, ticks as u64))
        }
        _ => None,
    };
    if let Some(recorded) = recorded {
        if !running.contains(&recorded)
            && engine_protocol::procfs::is_same_process(recorded.0, recorded.1)
        {
            running.insert(0, recorded);
        }
        if let Some(i) = running.iter().position(|r| *r == recorded) {
            running.swap(0, i);
        }
    }
    let mut live = None;
    for (pid, ticks) in running {
        if live.is_none() {
            let group = shared.limiter.existing(&row.id.to_string());
            let limits = limits::stored(&row.limits);
            live = ExecutorProcess::adopt(pid, ticks, log_path.clone(), group, limits);
            if live.is_some() {
                continue;
            }
        }
        kill_stray(
            pid,
            ticks,
            &row.name,
            "a second executor for the same strategy",
        );
    }
    let desired = match live {
        Some(_) => desired,
        None => boot_desired(row_desired, desired),
    };
    let target = if is_boot {
        if auto {
            if desired == DesiredState::Paused {
                DesiredState::Paused
            } else {
                DesiredState::Running
            }
        } else {
            DesiredState::Stopped
        }
    } else {
        match desired {
            DesiredState::Running | DesiredState::Paused => desired,
            DesiredState::Stopped if auto && status != Status::Error => DesiredState::Running,
            DesiredState::Stopped => DesiredState::Stopped,
        }
    };
    if target != row_desired {
        let fence = shared.fence.is_cluster().then_some(row.lease_epoch);
        if let Err(err) =
            db::write_desired(&shared.pool, row.id, target, row.operator_stopped, fence).await
        {
            tracing::error!(strategy = %row.name, error = %err, "could not record desired_state");
        }
    }
    match live {
        Some(proc) => Initial::Adopt(Box::new(proc), target),
        None if target == DesiredState::Stopped => Initial::Idle,
        None if status == Status::Error && !is_boot => Initial::Idle,
        None => Initial::Start(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_commands_never_start_a_strategy_without_an_executor() {
        use DesiredState::{Paused, Running, Stopped};
        let cases = [
            // (row, implied by the recovered commands) → acted on at start-up
            ((Stopped, Running), Stopped),
            ((Stopped, Paused), Stopped),
            ((Running, Stopped), Stopped),
            ((Paused, Stopped), Stopped),
            ((Running, Paused), Paused),
            ((Paused, Running), Paused),
            ((Running, Running), Running),
            ((Paused, Paused), Paused),
            ((Stopped, Stopped), Stopped),
        ];
        for ((row, implied), acted) in cases {
            assert_eq!(
                boot_desired(row, implied),
                acted,
                "row {row:?}, implied {implied:?}"
            );
        }
    }

    fn row(strategy_id: Option<Uuid>, command: &str) -> db::CommandRow {
        db::CommandRow {
            id: Uuid::new_v4(),
            strategy_id,
            command: command.to_string(),
            parameters: serde_json::json!({}),
            created_at: chrono::Utc::now(),
            seq: 0,
            part: false,
        }
    }

    #[test]
    fn recovered_commands_decide_the_desired_state_at_start_up() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let none = HashMap::new();
        let at = |desired, rows: &[db::CommandRow], applied| {
            recovered_desired(desired, a, rows, applied)
        };
        assert_eq!(at(DesiredState::Running, &[], &none), DesiredState::Running);
        assert_eq!(
            at(DesiredState::Running, &[row(Some(a), "stop")], &none),
            DesiredState::Stopped
        );
        assert_eq!(
            at(DesiredState::Running, &[row(Some(b), "stop")], &none),
            DesiredState::Running
        );
        assert_eq!(
            at(DesiredState::Running, &[row(Some(a), "pause")], &none),
            DesiredState::Paused
        );
        // pause does not start a stopped strategy; start does not resume a paused one
        assert_eq!(
            at(DesiredState::Stopped, &[row(Some(a), "pause")], &none),
            DesiredState::Stopped
        );
        assert_eq!(
            at(DesiredState::Paused, &[row(Some(a), "start")], &none),
            DesiredState::Paused
        );
        assert_eq!(
            at(DesiredState::Paused, &[row(Some(a), "restart")], &none),
            DesiredState::Running
        );
        assert_eq!(
            at(DesiredState::Paused, &[row(Some(a), "update")], &none),
            DesiredState::Paused
        );
        // in order, globals included
        let rows = [
            row(Some(a), "stop"),
            row(None, "stop"),
            row(Some(a), "start"),
        ];
        assert_eq!(
            at(DesiredState::Paused, &rows, &none),
            DesiredState::Running
        );
        let rows = [row(Some(a), "start"), row(None, "pause")];
        assert_eq!(
            at(DesiredState::Stopped, &rows, &none),
            DesiredState::Paused
        );
        // a global stop this strategy has been through already (a later start since)
        let global = row(None, "stop");
        let applied = HashMap::from([(global.id, HashSet::from([a]))]);
        assert_eq!(
            at(
                DesiredState::Running,
                std::slice::from_ref(&global),
                &applied
            ),
            DesiredState::Running
        );
        assert_eq!(
            recovered_desired(DesiredState::Running, b, &[global], &applied),
            DesiredState::Stopped
        );
    }
}
