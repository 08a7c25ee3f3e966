//! Everything the manager says to PostgreSQL: connecting (creating the database when
//! it is missing), migrations, claiming commands, recording observed state, metrics
//! and their pruning. (The lease lives in [`crate::lease`].)

use crate::vocab::{CommandStatus, DesiredState, Status};
use chrono::{DateTime, Utc};
use engine_protocol::redact::redact_url;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL {url}")]
    BadUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create database {name}")]
    CreateDatabase {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot drop database {name}")]
    DropDatabase {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("the database URL {url} is refused")]
    UnverifiedTls {
        url: String,
        #[source]
        source: crate::tls::UnverifiedTls,
    },
    #[error("the database URL {url} names sslmode={word}; use one of disable, allow, prefer, require, verify-ca, verify-full")]
    BadSslMode { url: String, word: String },
}

/// Connection options for `url`, its `sslmode` decided by [`crate::tls`]: a remote
/// server's certificate is verified unless the URL says otherwise and the process
/// was started with `--tls-insecure`.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url)
        .map(|o| o.log_statements(tracing::log::LevelFilter::Debug))
        .map_err(|source| DbError::BadUrl {
            url: redact_url(url),
            source,
        })?;
    let (host, explicit) = crate::tls::url_host_and_mode(url);
    let explicit = explicit.transpose().map_err(|word| DbError::BadSslMode {
        url: redact_url(url),
        word,
    })?;
    let mode = crate::tls::decide_ssl_mode(&host, explicit, crate::tls::unverified_allowed())
        .map_err(|source| DbError::UnverifiedTls {
            url: redact_url(url),
            source,
        })?;
    Ok(options.ssl_mode(mode))
}

fn is_missing_database(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

/// Open a pool on `url`, creating the database first if it does not exist.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(url)?;
    let pool_options = || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings a connection when it goes back to the pool (and drops a
            // broken one there); a second ping before every statement only adds a
            // round trip to every command's path.
            .test_before_acquire(false)
    };
    match pool_options().connect_with(options.clone()).await {
        Ok(pool) => Ok(pool),
        Err(err) if is_missing_database(&err) => {
            let name = options.get_database().unwrap_or("postgres").to_string();
            create_database(&options, &name).await?;
            pool_options()
                .connect_with(options)
                .await
                .map_err(|source| DbError::Connect {
                    url: redact_url(url),
                    source,
                })
        }
        Err(source) => Err(DbError::Connect {
            url: redact_url(url),
            source,
        }),
    }
}

/// A one-connection pool for claiming commands, with `synchronous_commit = off`.
///
/// A claim is the first write of a command's path, and waiting for its WAL flush
/// (0.4–12 ms on a shared disk) is most of the claim's latency. Giving it up is
/// safe: WAL is written in order, so the next synchronous commit of anything —
/// the command's own `desired_state` or status write, or its outcome — makes the
/// claim durable too. Only a PostgreSQL crash within those few milliseconds can
/// undo a claim: the row is `pending` again, and the intake, which remembers the
/// commands it dispatched, does not apply it twice.
pub fn connect_claimer(url: &str) -> Result<PgPool, DbError> {
    connect_unsynced(url, 1)
}

/// A pool whose commits do not wait for the WAL flush (`synchronous_commit = off`),
/// for writes that a synchronous commit follows at once (the claim above; the
/// `running` record of a command, whose outcome is written next): that commit
/// makes them durable too, WAL being flushed in order.
pub fn connect_unsynced(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(url)?.options([("synchronous_commit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// `name` as an SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Create database `name` on the server of `options` (through its `postgres`
/// database); one that exists already is fine.
pub async fn create_database(options: &PgConnectOptions, name: &str) -> Result<(), DbError> {
    let admin = options.clone().database("postgres");
    let mut conn =
        PgConnection::connect_with(&admin)
            .await
            .map_err(|source| DbError::CreateDatabase {
                name: name.to_string(),
                source,
            })?;
    let quoted = quote_identifier(name);
    match sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => {
            tracing::info!(database = name, "created database");
            Ok(())
        }
        // Someone else created it in the meantime.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(()),
        Err(source) => Err(DbError::CreateDatabase {
            name: name.to_string(),
            source,
        }),
    }
}

/// Drop database `name` on the server of `options` if it exists, disconnecting its
/// sessions (for throw-away databases: tests and the bench).
pub async fn drop_database(options: &PgConnectOptions, name: &str) -> Result<(), DbError> {
    let failed = |source| DbError::DropDatabase {
        name: name.to_string(),
        source,
    };
    let admin = options.clone().database("postgres");
    let mut conn = PgConnection::connect_with(&admin).await.map_err(failed)?;
    let quoted = quote_identifier(name);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(failed)?;
    let _ = conn.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}

/// Whether the database answers at all (`SELECT 1`).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// One row of `strategy_configs`, as the manager needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrategyRow {
    pub id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub config: Value,
    pub auto_start: bool,
    pub desired_state: DesiredState,
    pub status: Status,
    pub pid: Option<i32>,
    pub restart_count: i32,
    pub pid_start_ticks: Option<i64>,
    pub pid_boot_id: Option<String>,
    pub operator_stopped: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// Per-strategy overrides of the restart policy (see `RestartPolicy::with_overrides`).
    pub restart_policy: Option<Value>,
    /// The broker state the strategy's last executor reported, for the next one.
    pub broker_state: Option<Value>,
    /// `NULL`: a continuous strategy; else an interval strategy (CONTRACT.md §5).
    pub execution_interval_s: Option<i32>,
    /// Its resource limits (CONTRACT §6; `{}`: none), checked by the schema.
    pub limits: Value,
    /// Its owner in a cluster (CONTRACT.md §7; `NULL` without `--cluster`).
    pub node: Option<String>,
    /// The epoch of its owner's lease, one more at each change of owner.
    pub lease_epoch: i64,
}

const STRATEGY_COLUMNS: &str =
    "id, name, strategy_type, config, auto_start, desired_state, status, pid, \
     restart_count, pid_start_ticks, pid_boot_id, operator_stopped, started_at, restart_policy, \
     broker_state, execution_interval_s, limits, node, lease_epoch";

/// Which strategies a manager serves: every one (a manager without `--cluster`), or
/// those its node owns (`strategy_configs.node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Node(String),
}

impl Scope {
    /// The owner to filter on; `None` for every strategy.
    pub fn node(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Node(node) => Some(node),
        }
    }
}

/// The strategies the manager serves (see [`Scope`]).
pub async fn load_strategies(
    pool: &PgPool,
    scope: &Scope,
) -> Result<Vec<StrategyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STRATEGY_COLUMNS} FROM strategy_configs \
         WHERE $1::text IS NULL OR node = $1 ORDER BY name"
    ))
    .bind(scope.node())
    .fetch_all(pool)
    .await
}

/// A cluster node's claim of the strategies nobody owns (or whose node is dead: a
/// `failover` event each, and their active runs come along under the new epoch, to be
/// taken over by the new owner's run queue under the once-retry rule) that need an owner: those
/// that should run (`desired_state` running or paused, or `auto_start` not stopped by
/// an operator) and those with a pending command, a `processing` one (its node
/// died with it: the new owner takes it over, `cluster_ops::adopt_orphaned_commands`)
/// or a queued run. Only the least
/// loaded live node that is not draining claims (strategies owned over capacity,
/// ties by name), and at most its share of what is unowned and `limit`, so that
/// nodes starting together take turns; `FOR UPDATE SKIP LOCKED` and `node IS NULL`
/// make each strategy one node's. Each claim moves `lease_epoch` up by one. Returns
/// the ids claimed.
pub async fn claim_strategies(
    pool: &PgPool,
    node: &str,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH alive AS ( \
             SELECT n.node, n.capacity, n.draining FROM engine_nodes n \
             WHERE n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond'), \
         live AS ( \
             SELECT a.node, a.capacity, \
                 (SELECT count(*) FROM strategy_configs c WHERE c.node = a.node) AS owned \
             FROM alive a WHERE NOT a.draining), \
         best AS ( \
             SELECT node, capacity - owned AS room FROM live WHERE owned < capacity \
             ORDER BY owned::float8 / capacity, node LIMIT 1), \
         wanted AS ( \
             SELECT c.id, c.created_at FROM strategy_configs c \
             WHERE (c.node IS NULL OR c.node NOT IN (SELECT node FROM alive)) \
               AND (c.desired_state IN ('running', 'paused') \
                 OR (c.auto_start AND NOT c.operator_stopped) \
                 OR EXISTS (SELECT 1 FROM strategy_commands k WHERE k.strategy_id = c.id \
                     AND k.status IN ('pending', 'processing')) \
                 OR EXISTS (SELECT 1 FROM strategy_runs r WHERE r.strategy_id = c.id \
                     AND r.state IN ('queued', 'starting', 'running')))), \
         share AS ( \
             SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM best WHERE node = $1) THEN 0 \
                 ELSE LEAST($2, (SELECT room FROM best), \
                     ceil((SELECT count(*) FROM wanted)::float8 / GREATEST((SELECT count(*) FROM live), 1))::int8) \
                 END AS n), \
         next AS ( \
             SELECT c.id, c.node AS was FROM strategy_configs c \
             WHERE c.id IN (SELECT id FROM wanted) \
               AND (c.node IS NULL OR c.node NOT IN (SELECT node FROM alive)) \
             ORDER BY c.created_at, c.id LIMIT (SELECT COALESCE(n, 0) FROM share) \
             FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE strategy_configs c SET node = $1, lease_epoch = c.lease_epoch + 1 \
             FROM next WHERE c.id = next.id \
             RETURNING c.id, c.status, c.pid, c.lease_epoch, next.was), \
         noted AS ( \
             INSERT INTO strategy_events \
                 (event_id, strategy_id, old_status, new_status, reason, error, pid, node) \
             SELECT gen_random_uuid(), id, status, status, 'failover', \
                 format('node %s stopped renewing its lease; node %s took the strategy over (lease epoch %s)', \
                        was, $1::text, lease_epoch), \
                 pid, $1 \
             FROM claimed WHERE was IS NOT NULL), \
         runs_moved AS ( \
             UPDATE strategy_runs r SET node = $1, lease_epoch = claimed.lease_epoch \
             FROM claimed WHERE r.strategy_id = claimed.id AND claimed.was IS NOT NULL \
               AND r.node = claimed.was AND r.state IN ('starting', 'running')) \
         SELECT id FROM claimed",
    )
    .bind(node)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which of `ids` this manager must stop serving: deleted (`false`), or in a cluster
/// (`node` set) owned by another node now, or by none (`true`: lost). The poll's
/// safety net under the deletion notification, and how a node that was cut off
/// learns that its strategies went elsewhere.
pub async fn gone_strategies(
    pool: &PgPool,
    ids: &[Uuid],
    node: Option<&str>,
) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT t.id, c.id IS NOT NULL AS lost FROM unnest($1::uuid[]) AS t(id) \
         LEFT JOIN strategy_configs c ON c.id = t.id \
         WHERE c.id IS NULL OR ($2::text IS NOT NULL AND c.node IS DISTINCT FROM $2)",
    )
    .bind(ids)
    .bind(node)
    .fetch_all(pool)
    .await
}

pub async fn load_strategy(pool: &PgPool, id: Uuid) -> Result<Option<StrategyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STRATEGY_COLUMNS} FROM strategy_configs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The newest `strategy` metrics row of every strategy that has one (the manager's
/// latest metrics at start-up, before its executors report again).
pub async fn latest_strategy_metrics(pool: &PgPool) -> Result<Vec<MetricsRow>, sqlx::Error> {
    type Row = (
        Uuid,
        DateTime<Utc>,
        Option<f64>,
        Option<i32>,
        Option<i32>,
        Option<f64>,
        Value,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.id, m.\"timestamp\", m.pnl::float8, m.positions_count, m.orders_count, \
                m.success_rate, m.metrics \
         FROM strategy_configs c \
         JOIN LATERAL (SELECT \"timestamp\", pnl, positions_count, orders_count, success_rate, metrics \
             FROM strategy_metrics m WHERE m.strategy_id = c.id AND m.source = 'strategy' \
             ORDER BY \"timestamp\" DESC LIMIT 1) m ON true",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(strategy_id, timestamp, pnl, positions, orders, success, metrics)| MetricsRow {
                strategy_id,
                timestamp,
                source: "strategy",
                pnl,
                positions_count: positions,
                orders_count: orders,
                success_rate: success,
                cpu_percent: None,
                memory_mb: None,
                metrics,
            },
        )
        .collect())
}

/// A command row the manager has claimed (now `processing`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    pub id: Uuid,
    pub strategy_id: Option<Uuid>,
    /// The word as the operator wrote it: the column has no CHECK constraint, and a
    /// word outside [`crate::CommandWord`] ends the row `failed` with a message
    /// ([`crate::commands::parse_command`]) rather than failing the claim.
    pub command: String,
    pub parameters: Value,
    pub created_at: DateTime<Utc>,
    pub seq: i64,
    /// A cluster node's part of a global command ([`crate::command_parts`]): the
    /// node finishes its part, and the row is finished with the last part.
    #[sqlx(default)]
    pub part: bool,
}

/// Claim up to `limit` pending commands, oldest first, marking them `processing` in
/// this statement's own transaction (so a crash leaves them visibly `processing`).
/// Claim up to `limit` pending commands in order: every one, or (a cluster node)
/// the global ones and those of the strategies it owns.
pub async fn claim_pending(
    pool: &PgPool,
    limit: i64,
    scope: &Scope,
) -> Result<Vec<CommandRow>, sqlx::Error> {
    if let Scope::Node(node) = scope {
        return crate::command_parts::claim_pending_node(pool, limit, node).await;
    }
    let mut rows: Vec<CommandRow> = sqlx::query_as(
        "WITH next AS ( \
             SELECT id FROM strategy_commands WHERE status = 'pending' \
                 AND ($2::text IS NULL OR strategy_id IS NULL \
                     OR strategy_id IN (SELECT id FROM strategy_configs WHERE node = $2)) \
             ORDER BY created_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE strategy_commands c SET status = 'processing' FROM next WHERE c.id = next.id \
         RETURNING c.id, c.strategy_id, c.command, c.parameters, c.created_at, c.seq",
    )
    .bind(limit)
    .bind(scope.node())
    .fetch_all(pool)
    .await?;
    rows.sort_by_key(|r| (r.created_at, r.seq));
    Ok(rows)
}

/// Commands a previous manager left `processing` (it died in the middle of them).
/// For a cluster node, those of the strategies it owns and the global ones whose
/// part of this node's is `processing` ([`crate::command_parts`]).
pub async fn load_processing(pool: &PgPool, scope: &Scope) -> Result<Vec<CommandRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, strategy_id, command, parameters, created_at, seq, \
             ($1::text IS NOT NULL AND strategy_id IS NULL) AS part \
         FROM strategy_commands \
         WHERE status = 'processing' AND ($1::text IS NULL \
             OR strategy_id IN (SELECT id FROM strategy_configs WHERE node = $1) \
             OR (strategy_id IS NULL AND EXISTS (SELECT 1 FROM strategy_command_parts p \
                 WHERE p.command_id = strategy_commands.id AND p.node = $1 \
                   AND p.status = 'processing'))) \
         ORDER BY created_at, seq",
    )
    .bind(scope.node())
    .fetch_all(pool)
    .await
}

/// The `reason` of the event an applied `update` records.
pub const CONFIG_UPDATED: &str = "config updated";
/// The reason of the event an `update` of `limits` leaves.
pub const LIMITS_UPDATED: &str = "limits updated";
/// The reason of the event saying which limits are not enforced, and why.
pub const LIMITS_UNENFORCED: &str = "limits unenforced";

/// For the commands left `processing`: the strategies on which each has provably
/// been applied already, as `(command id, strategy id)`. A supervisor applies its
/// commands in order, so a strategy whose events show a *later* command (or, for a
/// global command, that command itself) has been through it (`at` is the manager's
/// clock and `created_at` the database's: the window allows for skew between the
/// two hosts; the order itself comes from `created_at, seq`). So has one whose
/// events show the command's own *completing* transition (`stopped` for a stop,
/// `running` for a start, restart or resume, `paused` for a pause, `config updated`
/// for an update): the events of what came after it may have been lost with the
/// previous manager (they wait in memory while the database is away), so its state
/// now can be a later command's. Applying it again there would undo what came
/// after, e.g. a recovered stop stopping a strategy that a later `start` had started.
pub async fn superseded_recovered(
    db: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT c.id, e.strategy_id \
         FROM strategy_commands c \
         JOIN strategy_events e ON e.at >= c.created_at - interval '5 minutes' \
              AND (c.strategy_id IS NULL OR e.strategy_id = c.strategy_id) \
         JOIN strategy_commands later ON later.id = e.command_id \
         WHERE c.status = 'processing' \
           AND ((later.created_at, later.seq) > (c.created_at, c.seq) \
                OR (later.id = c.id AND (c.strategy_id IS NULL OR CASE lower(btrim(c.command)) \
                      WHEN 'stop' THEN e.new_status = 'stopped' \
                      WHEN 'pause' THEN e.new_status = 'paused' \
                      WHEN 'update' THEN e.reason = $1 \
                      ELSE e.new_status = 'running' \
                         AND e.old_status IS DISTINCT FROM 'running' END)))",
    )
    .bind(CONFIG_UPDATED)
    .fetch_all(db)
    .await
}

/// Record a command's outcome: `executed`, or `failed` with `error`. Returns the row
/// as written (`None` when no row has the id, or — a cluster node, `node` — when
/// another node took the row over since this one claimed it:
/// [`crate::cluster_ops::adopt_orphaned_commands`]), for the in-memory command
/// counters.
pub async fn finish_command(
    pool: &PgPool,
    id: Uuid,
    outcome: &Result<(), String>,
    node: Option<&str>,
) -> Result<Option<crate::metrics::FinishedCommand>, sqlx::Error> {
    let (status, error) = match outcome {
        Ok(()) => (CommandStatus::Executed, None),
        Err(e) => (CommandStatus::Failed, Some(e.as_str())),
    };
    sqlx::query_as(
        "UPDATE strategy_commands SET status = $2, error = $3, executed_at = now() WHERE id = $1 \
           AND ($4::text IS NULL OR claimed_by IS NULL OR claimed_by = $4) \
         RETURNING command, status, extract(epoch FROM executed_at - created_at)::float8 AS latency_s",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(error)
    .bind(node)
    .fetch_optional(pool)
    .await
}

/// The observed state of one strategy, as written to its row.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedState {
    pub status: Status,
    pub pid: Option<u32>,
    pub pid_start_ticks: Option<u64>,
    pub pid_boot_id: Option<String>,
    pub last_error: Option<String>,
    pub restart_count: i32,
    pub started_at: Option<DateTime<Utc>>,
}

/// A transition to record in `strategy_events`, with the id and time the manager
/// gave it when it happened (so a write retried after an outage inserts it once,
/// with its own time).
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionEvent {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub old_status: Status,
    pub new_status: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub command_id: Option<Uuid>,
    pub pid: Option<u32>,
}

/// Write the observed state, and the events not written yet, in one statement.
/// Events already in the table (a write that timed out on our side but committed)
/// are skipped by their `event_id`.
pub async fn write_observed(
    pool: &PgPool,
    id: Uuid,
    state: &ObservedState,
    events: &[TransitionEvent],
    node: &str,
    fence: Option<i64>,
) -> Result<(), sqlx::Error> {
    const UPDATE: &str = "UPDATE strategy_configs SET status = $2, pid = $3, pid_start_ticks = $4, \
         pid_boot_id = $5, last_error = $6, restart_count = $7, started_at = $8, updated_at = now() \
         WHERE id = $1 AND ($9::int8 IS NULL OR lease_epoch = $9)";
    let query = if events.is_empty() {
        sqlx::query(UPDATE)
    } else {
        sqlx::query(
            "WITH changed AS (UPDATE strategy_configs SET status = $2, pid = $3, pid_start_ticks = $4, \
                 pid_boot_id = $5, last_error = $6, restart_count = $7, started_at = $8, updated_at = now() \
                 WHERE id = $1 AND ($18::int8 IS NULL OR lease_epoch = $18) RETURNING id) \
             INSERT INTO strategy_events \
                 (event_id, at, strategy_id, old_status, new_status, reason, error, command_id, pid, node) \
             SELECT e.event_id, e.at, changed.id, e.old_status, e.new_status, e.reason, e.error, \
                    e.command_id, e.pid, $17 \
             FROM changed, UNNEST($9::uuid[], $10::timestamptz[], $11::text[], $12::text[], \
                                  $13::text[], $14::text[], $15::uuid[], $16::int4[]) \
                  AS e(event_id, at, old_status, new_status, reason, error, command_id, pid) \
             ON CONFLICT (event_id) DO NOTHING",
        )
    };
    let query = query
        .bind(id)
        .bind(state.status.as_str())
        .bind(state.pid.map(|p| p as i32))
        .bind(state.pid_start_ticks.map(|t| t as i64))
        .bind(state.pid_boot_id.as_deref())
        .bind(state.last_error.as_deref())
        .bind(state.restart_count)
        .bind(state.started_at);
    let query = if events.is_empty() {
        query.bind(fence)
    } else {
        query
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.old_status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| e.new_status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.error.clone()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.command_id).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.pid.map(|p| p as i32))
                    .collect::<Vec<_>>(),
            )
            .bind(node)
            .bind(fence)
    };
    query.execute(pool).await?;
    Ok(())
}

/// Set `desired_state`; `operator_stopped` is true exactly when it was an operator's stop.
/// `fence`: in a cluster, the writer's lease epoch; the write does nothing unless
/// the row still has it (CONTRACT.md §7: a node that lost a strategy cannot change it).
/// Returns the row as it is after the write (`None` if it is gone, or not this
/// writer's under `fence`): a start spawns from it without reading the row again.
pub async fn write_desired(
    pool: &PgPool,
    id: Uuid,
    desired: DesiredState,
    operator_stopped: bool,
    fence: Option<i64>,
) -> Result<Option<StrategyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE strategy_configs SET desired_state = $2, operator_stopped = $3, updated_at = now() \
         WHERE id = $1 AND ($4::int8 IS NULL OR lease_epoch = $4) RETURNING {STRATEGY_COLUMNS}"
    ))
    .bind(id)
    .bind(desired.as_str())
    .bind(operator_stopped)
    .bind(fence)
    .fetch_optional(pool)
    .await
}

/// Keep the broker state an executor reported (latest wins; `updated_at` is left
/// alone: it says when operators last changed the row).
/// `fence`: in a cluster, the writer's lease epoch; the write does nothing unless
/// the row still has it (CONTRACT.md §7: a node that lost a strategy cannot change it).
pub async fn write_broker_state(
    pool: &PgPool,
    id: Uuid,
    state: &Value,
    fence: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE strategy_configs SET broker_state = $2 \
         WHERE id = $1 AND ($3::int8 IS NULL OR lease_epoch = $3)",
    )
    .bind(id)
    .bind(state)
    .bind(fence)
    .execute(pool)
    .await?;
    Ok(())
}

/// `fence`: in a cluster, the writer's lease epoch; the write does nothing unless
/// the row still has it (CONTRACT.md §7: a node that lost a strategy cannot change it).
pub async fn write_config(
    pool: &PgPool,
    id: Uuid,
    config: &Value,
    fence: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE strategy_configs SET config = $2, updated_at = now() \
         WHERE id = $1 AND ($3::int8 IS NULL OR lease_epoch = $3)",
    )
    .bind(id)
    .bind(config)
    .bind(fence)
    .execute(pool)
    .await?;
    Ok(())
}

/// Store a strategy's `limits` (already checked; the schema checks them again).
/// `fence`: in a cluster, the writer's lease epoch; the write does nothing unless
/// the row still has it (CONTRACT.md §7: a node that lost a strategy cannot change it).
pub async fn write_limits(
    pool: &PgPool,
    id: Uuid,
    limits: &Value,
    fence: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE strategy_configs SET limits = $2, updated_at = now() \
         WHERE id = $1 AND ($3::int8 IS NULL OR lease_epoch = $3)",
    )
    .bind(id)
    .bind(limits)
    .bind(fence)
    .execute(pool)
    .await?;
    Ok(())
}

/// A row for `strategy_metrics`; its `metrics` a JSON object (`Value`), or (for
/// [`insert_metrics`]) that object's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow<M = Value> {
    pub strategy_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub source: &'static str,
    pub pnl: Option<f64>,
    pub positions_count: Option<i32>,
    pub orders_count: Option<i32>,
    pub success_rate: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    pub metrics: M,
}

impl<M> MetricsRow<M> {
    /// The same row with `metrics` in another form.
    pub fn with_metrics<N>(self, metrics: N) -> MetricsRow<N> {
        MetricsRow {
            strategy_id: self.strategy_id,
            timestamp: self.timestamp,
            source: self.source,
            pnl: self.pnl,
            positions_count: self.positions_count,
            orders_count: self.orders_count,
            success_rate: self.success_rate,
            cpu_percent: self.cpu_percent,
            memory_mb: self.memory_mb,
            metrics,
        }
    }
}

/// Insert a batch in one statement (rows of strategies that no longer exist are skipped).
/// `metrics` goes as the JSON text it is, cast to `jsonb` by PostgreSQL (which checks
/// it): the recorder keeps rows as text, and parsing them back into values only to
/// serialise them again cost more than anything else it does.
pub async fn insert_metrics(pool: &PgPool, rows: &[MetricsRow<&str>]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut ts = Vec::with_capacity(rows.len());
    let mut sources = Vec::with_capacity(rows.len());
    let mut pnl = Vec::with_capacity(rows.len());
    let mut positions = Vec::with_capacity(rows.len());
    let mut orders = Vec::with_capacity(rows.len());
    let mut success = Vec::with_capacity(rows.len());
    let mut cpu = Vec::with_capacity(rows.len());
    let mut mem = Vec::with_capacity(rows.len());
    let mut metrics = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.strategy_id);
        ts.push(r.timestamp);
        sources.push(r.source.to_string());
        pnl.push(r.pnl);
        positions.push(r.positions_count);
        orders.push(r.orders_count);
        success.push(r.success_rate);
        cpu.push(r.cpu_percent);
        mem.push(r.memory_mb);
        metrics.push(r.metrics);
    }
    let result = sqlx::query(
        "INSERT INTO strategy_metrics (strategy_id, \"timestamp\", source, pnl, positions_count, \
             orders_count, success_rate, cpu_percent, memory_mb, metrics) \
         SELECT u.strategy_id, u.ts, u.source, u.pnl::numeric, u.positions_count, u.orders_count, \
             u.success_rate, u.cpu_percent, u.memory_mb, u.metrics::jsonb \
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::float8[], $5::int4[], \
             $6::int4[], $7::float8[], $8::float8[], $9::float8[], $10::text[]) \
             AS u(strategy_id, ts, source, pnl, positions_count, orders_count, success_rate, \
                  cpu_percent, memory_mb, metrics) \
         WHERE EXISTS (SELECT 1 FROM strategy_configs c WHERE c.id = u.strategy_id)",
    )
    .bind(&ids)
    .bind(&ts)
    .bind(&sources)
    .bind(&pnl)
    .bind(&positions)
    .bind(&orders)
    .bind(&success)
    .bind(&cpu)
    .bind(&mem)
    .bind(&metrics)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Delete metrics and events older than `older_than`; returns the rows deleted.
pub async fn prune_history(pool: &PgPool, older_than: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let metrics = sqlx::query("DELETE FROM strategy_metrics WHERE \"timestamp\" < $1")
        .bind(older_than)
        .execute(pool)
        .await?;
    let events = sqlx::query("DELETE FROM strategy_events WHERE at < $1")
        .bind(older_than)
        .execute(pool)
        .await?;
    Ok(metrics.rows_affected() + events.rows_affected())
}
