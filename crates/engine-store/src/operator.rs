//! What `enginectl` reads and writes: strategies, their latest metrics and history,
//! commands and their progress, and what `doctor` checks (server version, applied
//! migrations). (The manager's lease is read through [`crate::lease::lease`].)

use crate::commands::{insert_command_row, InsertedCommand};
use crate::vocab::{CommandStatus, CommandWord, DesiredState, Status};
use anyhow::anyhow;
use chrono::{DateTime, Utc};
use engine_protocol::redact::redact_url;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How long a connection attempt may take before the tool gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a small pool on `url`. Unlike the manager, never creates the database.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    connect_as(url, None).await
}

/// [`connect`], its sessions saying whom the tool acts for (`engine.on_behalf_of`):
/// the `on_behalf_of` of the commands and runs it inserts and of the strategy edits
/// `engine_audit` records.
pub async fn connect_as(url: &str, on_behalf_of: Option<&str>) -> anyhow::Result<PgPool> {
    let shown = redact_url(url);
    // The manager's own rule for `sslmode` (remote certificates verified).
    let options = crate::manager::connect_options(url)?;
    let database = options.get_database().unwrap_or("postgres").to_string();
    // Set on each new connection as a bound value (a startup option would not take
    // a name with spaces or quotes).
    let on_behalf_of = on_behalf_of.map(str::to_string);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(move |conn, _| {
            let name = on_behalf_of.clone();
            Box::pin(async move {
                if let Some(name) = name {
                    sqlx::query("SELECT set_config('engine.on_behalf_of', $1, false)")
                        .bind(name)
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|err| connect_error(err, &shown, &database))
}

fn connect_error(err: sqlx::Error, shown: &str, database: &str) -> anyhow::Error {
    if sql_state(&err).as_deref() == Some("3D000") {
        return anyhow!(
            "database '{database}' does not exist at {shown}; start engine-manager once (it creates \
             the database) or run `engine-manager --migrate-only`"
        );
    }
    anyhow::Error::new(err).context(format!(
        "cannot connect to PostgreSQL at {shown} (is it running? check --database-url / DATABASE_URL)"
    ))
}

/// The SQLSTATE of a database error.
pub fn sql_state(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// What the database refused to store (a CHECK, UNIQUE or foreign key constraint, a
/// size cap, or a character PostgreSQL cannot hold), in the operator's words; `None`
/// for any other error (the database unreachable, a bug).
pub fn schema_refusal(err: &sqlx::Error) -> Option<Cow<'static, str>> {
    if let Some(words) = crate::limits::size_refusal(err) {
        return Some(Cow::Owned(words));
    }
    let db = err.as_database_error()?;
    // These checks refuse the row in words of their own (migrations
    // `interval_executions` and `resource_limits`): the value given and what is
    // allowed, the key at fault for the limits.
    if matches!(
        db.constraint(),
        Some("execution_interval_range" | "max_execution_range" | "limits_valid")
    ) {
        return Some(Cow::Owned(db.message().to_string()));
    }
    match db.code().as_deref() {
        // untranslatable_character: "unsupported Unicode escape sequence" in jsonb.
        Some("22P05") => {
            return Some("JSON must not contain \\u0000: PostgreSQL cannot store it".into())
        }
        // character_not_in_repertoire: a NUL byte in a text value.
        Some("22021") => return Some("text must not contain a NUL character".into()),
        _ => {}
    }
    let words = match db.constraint()? {
        "strategy_configs_name_check" => "the name must not be blank",
        "strategy_configs_name_key" => {
            "a strategy with that name already exists; pick another name"
        }
        "config_is_a_json_object" => {
            "the config must be a JSON object, e.g. {\"token\": \"BTC-USD\", \"fast_period\": 5}"
        }
        "restart_policy_is_a_json_object" => {
            "restart_policy must be a JSON object (e.g. {\"max_crashes\": 3}) or NULL"
        }
        "strategy_commands_strategy_id_fkey" => {
            "no such strategy (it was deleted); `enginectl list` shows the strategies"
        }
        "desired_state_vocabulary" | "status_vocabulary" | "command_status_vocabulary" => {
            "status and desired_state are written by the manager only; send a command instead"
        }
        _ => return None,
    };
    Some(Cow::Borrowed(words))
}

/// A query error, with a hint when the engine's tables are missing, and in words
/// when the schema refused the row.
pub fn query_error(err: sqlx::Error, what: &str) -> anyhow::Error {
    if let Some(words) = schema_refusal(&err) {
        return anyhow!("cannot {what}: {words}");
    }
    if sql_state(&err).as_deref() == Some("42P01") {
        return anyhow!(
            "cannot {what}: the database has no engine tables yet; start engine-manager once or run \
             `engine-manager --migrate-only`"
        );
    }
    anyhow::Error::new(err).context(format!("cannot {what}"))
}

/// One row of `strategy_configs`, as the tool shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrategyRecord {
    pub id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub config: Value,
    pub auto_start: bool,
    pub desired_state: DesiredState,
    pub status: Status,
    pub pid: Option<i32>,
    pub last_error: Option<String>,
    pub restart_count: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Interval executions: the interval, the time limit and the statistics.
    #[sqlx(flatten)]
    pub executions: crate::executions::ExecutionColumns,
    /// Its resource limits (`{}`: none).
    pub limits: Value,
    /// The cluster node that owns it (`None`: none, or no cluster).
    pub node: Option<String>,
}

impl StrategyRecord {
    /// Running or paused: an executor is up with its strategy initialised.
    pub fn is_live(&self) -> bool {
        self.status.is_live()
    }
}

const COLUMNS: &str = "id, name, strategy_type, config, auto_start, desired_state, status, pid, \
                       last_error, restart_count, started_at, created_at, execution_interval_s, \
                       max_execution_s, next_execution_at, last_execution_at, execution_count, \
                       successful_executions, failed_executions, skipped_executions, \
                       last_execution_duration_ms, avg_execution_ms, last_execution_error, limits, node";

pub async fn strategies(pool: &PgPool) -> anyhow::Result<Vec<StrategyRecord>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM strategy_configs ORDER BY name"
    ))
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_configs"))
}

pub async fn strategy(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<StrategyRecord>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM strategy_configs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_configs"))
}

/// The strategies called `names`, in that order; an unknown name is an error that
/// lists the known ones (and the closest, if one is close).
pub async fn resolve(pool: &PgPool, names: &[String]) -> anyhow::Result<Vec<StrategyRecord>> {
    let all = strategies(pool).await?;
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| &s.name == name)
                .cloned()
                .ok_or_else(|| unknown_name(name, &all))
        })
        .collect()
}

pub async fn resolve_one(pool: &PgPool, name: &str) -> anyhow::Result<StrategyRecord> {
    let mut found = resolve(pool, &[name.to_string()]).await?;
    Ok(found.remove(0))
}

/// "no strategy named 'x'; known: a, b" (plus "did you mean" for a near miss).
pub fn unknown_name(name: &str, all: &[StrategyRecord]) -> anyhow::Error {
    if all.is_empty() {
        return anyhow!(
            "no strategy named '{name}'; there are no strategies yet (add one with `enginectl add`)"
        );
    }
    const SHOWN: usize = 20;
    let mut known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    known.sort_unstable();
    let mut list = known
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if known.len() > SHOWN {
        list.push_str(&format!(", … ({} in all; `enginectl list`)", known.len()));
    }
    let closest = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match closest {
        Some((_, near)) => {
            anyhow!("no strategy named '{name}' (did you mean '{near}'?); known: {list}")
        }
        None => anyhow!("no strategy named '{name}'; known: {list}"),
    }
}

/// Levenshtein distance (for "did you mean").
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Insert a command row; returns its id.
pub async fn insert_command(
    pool: &PgPool,
    strategy_id: Option<Uuid>,
    command: CommandWord,
    parameters: &Value,
) -> anyhow::Result<Uuid> {
    insert_command_row(pool, strategy_id, command, parameters, None)
        .await
        .map(|InsertedCommand { id, .. }| id)
        .map_err(|e| query_error(e, "insert into strategy_commands"))
}

/// A command row's progress.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CommandProgress {
    pub id: Uuid,
    pub status: CommandStatus,
    pub error: Option<String>,
}

impl CommandProgress {
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

pub async fn command_progress(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<CommandProgress>> {
    sqlx::query_as("SELECT id, status, error FROM strategy_commands WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(|e| query_error(e, "read strategy_commands"))
}

/// The newest row a strategy reported (`source = 'strategy'`).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestStrategyMetrics {
    pub at: DateTime<Utc>,
    pub pnl: Option<f64>,
    /// PnL since the broker's state was last reset (absent from older executors).
    pub pnl_total: Option<f64>,
    pub last_tick_age_ms: Option<f64>,
    /// When the last tick arrived (`metrics.last_tick_at`), where the executor says.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// How often the executor reports (`metrics.metrics_interval_ms`).
    pub report_every: Option<std::time::Duration>,
}

/// The newest health sample of a strategy (`source = 'health'`).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestHealth {
    pub at: DateTime<Utc>,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    pub stale: Option<bool>,
    pub last_tick_age_ms: Option<f64>,
    pub last_tick_at: Option<DateTime<Utc>>,
}

/// One strategy's newest metrics and health rows, as `latest_metrics` reads them.
type LatestRow = (
    Uuid,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
    Option<bool>,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The newest metrics and health rows of every strategy (one index probe each).
pub async fn latest_metrics(
    pool: &PgPool,
) -> anyhow::Result<(
    HashMap<Uuid, LatestStrategyMetrics>,
    HashMap<Uuid, LatestHealth>,
)> {
    // `last_tick_at` is parsed here, not cast in SQL: a malformed one from some
    // executor must not fail the whole read.
    let rows: Vec<LatestRow> = sqlx::query_as(
        "SELECT c.id, s.\"timestamp\", s.pnl::float8, (s.metrics->>'pnl_total')::float8, \
                (s.metrics->>'last_tick_age_ms')::float8, \
                h.\"timestamp\", h.cpu_percent, h.memory_mb, (h.metrics->>'stale')::boolean, \
                (h.metrics->>'last_tick_age_ms')::float8, \
                s.metrics->>'last_tick_at', h.metrics->>'last_tick_at', \
                s.metrics->>'metrics_interval_ms' \
         FROM strategy_configs c \
         LEFT JOIN LATERAL (SELECT \"timestamp\", pnl, metrics FROM strategy_metrics m \
             WHERE m.strategy_id = c.id AND m.source = 'strategy' \
             ORDER BY \"timestamp\" DESC LIMIT 1) s ON true \
         LEFT JOIN LATERAL (SELECT \"timestamp\", cpu_percent, memory_mb, metrics FROM strategy_metrics m \
             WHERE m.strategy_id = c.id AND m.source = 'health' \
             ORDER BY \"timestamp\" DESC LIMIT 1) h ON true",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_metrics"))?;
    Ok(split_latest(rows))
}

/// The rows of `latest_metrics` as the newest metrics and health per strategy.
fn split_latest(
    rows: Vec<LatestRow>,
) -> (
    HashMap<Uuid, LatestStrategyMetrics>,
    HashMap<Uuid, LatestHealth>,
) {
    let mut strategy = HashMap::new();
    let mut health = HashMap::new();
    let tick_at = |t: Option<String>| t.as_deref().and_then(engine_protocol::parse_timestamp);
    for (
        id,
        s_at,
        pnl,
        pnl_total,
        tick,
        h_at,
        cpu,
        mem,
        stale,
        h_tick,
        s_tick_at,
        h_tick_at,
        every,
    ) in rows
    {
        if let Some(at) = s_at {
            strategy.insert(
                id,
                LatestStrategyMetrics {
                    at,
                    pnl,
                    pnl_total,
                    last_tick_age_ms: tick,
                    last_tick_at: tick_at(s_tick_at),
                    report_every: every
                        .and_then(|ms| ms.trim().parse::<u64>().ok())
                        .filter(|ms| *ms > 0)
                        .map(std::time::Duration::from_millis),
                },
            );
        }
        if let Some(at) = h_at {
            health.insert(
                id,
                LatestHealth {
                    at,
                    cpu_percent: cpu,
                    memory_mb: mem,
                    stale,
                    last_tick_age_ms: h_tick,
                    last_tick_at: tick_at(h_tick_at),
                },
            );
        }
    }
    (strategy, health)
}

/// The interval columns an operator sets (`None`: the column's default, or left as
/// it is by [`set_interval`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalSettings {
    /// `Some(None)`: make it a continuous strategy (`NULL`).
    pub execution_interval_s: Option<Option<i32>>,
    pub max_execution_s: Option<i32>,
}

/// Insert a strategy; a taken name or a refused row gets an error that says so.
pub async fn insert_strategy(
    pool: &PgPool,
    name: &str,
    strategy_type: &str,
    config: &Value,
    auto_start: bool,
    interval: IntervalSettings,
) -> anyhow::Result<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO strategy_configs (name, strategy_type, config, auto_start, execution_interval_s, max_execution_s) \
         VALUES ($1, $2, $3, $4, $5, coalesce($6, 30)) RETURNING id",
    )
    .bind(name)
    .bind(strategy_type)
    .bind(config)
    .bind(auto_start)
    .bind(interval.execution_interval_s.flatten())
    .bind(interval.max_execution_s)
    .fetch_one(pool)
    .await
    .map_err(|err| match (sql_state(&err).as_deref(), schema_refusal(&err)) {
        (Some("23505"), _) => anyhow!("a strategy named '{name}' already exists; pick another name"),
        (_, Some(words)) => anyhow!("strategy '{name}' was not added: {words}"),
        _ => query_error(err, "insert into strategy_configs"),
    })
}

/// Change a strategy's interval columns (those given); the manager picks the change
/// up within seconds. False when there is no such strategy.
pub async fn set_interval(
    pool: &PgPool,
    id: Uuid,
    interval: IntervalSettings,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE strategy_configs SET \
             execution_interval_s = CASE WHEN $2 THEN $3 ELSE execution_interval_s END, \
             max_execution_s = coalesce($4, max_execution_s), updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(interval.execution_interval_s.is_some())
    .bind(interval.execution_interval_s.flatten())
    .bind(interval.max_execution_s)
    .execute(pool)
    .await
    .map_err(|err| query_error(err, "change the strategy's interval"))?;
    Ok(done.rows_affected() == 1)
}

/// The server's version (`SHOW server_version`).
pub async fn server_version<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SHOW server_version")
        .fetch_one(executor)
        .await
}

/// A row of sqlx's `_sqlx_migrations` table.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AppliedMigration {
    pub version: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// The migrations applied to the database, by version (an error with SQLSTATE
/// 42P01 when none ever was: the table does not exist).
pub async fn applied_migrations(pool: &PgPool) -> Result<Vec<AppliedMigration>, sqlx::Error> {
    sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
}

/// Delete a strategy (its commands, metrics and events go with it).
pub async fn delete_strategy(pool: &PgPool, id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(|err| match &err {
            // The delete guard's own message says what to do.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55006") => {
                anyhow!("{}", db.message())
            }
            _ => query_error(err, "delete from strategy_configs"),
        })?;
    Ok(done.rows_affected() > 0)
}

/// A command row of one strategy's history (or a global one that touched it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRecord {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub executed_at: Option<DateTime<Utc>>,
    /// As the operator wrote it (the column has no CHECK constraint; see [`crate::vocab`]).
    pub command: String,
    pub parameters: Value,
    pub status: CommandStatus,
    pub error: Option<String>,
    pub global: bool,
    /// The login role that inserted it, and whom its tool acted for.
    pub issued_by: String,
    pub on_behalf_of: Option<String>,
}

/// A row of `strategy_events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub old_status: Option<Status>,
    pub new_status: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub command_id: Option<Uuid>,
    pub pid: Option<i32>,
    pub node: String,
}

/// The newest `limit` commands for `strategy` and the newest `limit` events.
///
/// A global command (strategy_id NULL) is in a strategy's history only where it
/// concerned that strategy: where `strategy_events` record a transition it caused
/// for it (a global stop or pause that stopped or paused it). One that did not
/// apply to it (it was stopped), or that failed as a whole (a word a global command
/// may not have), is not: it is no part of that strategy's story.
pub async fn history(
    pool: &PgPool,
    strategy: &StrategyRecord,
    limit: i64,
) -> anyhow::Result<(Vec<CommandRecord>, Vec<EventRecord>)> {
    let commands = sqlx::query_as(&format!(
        "SELECT k.id, k.created_at, k.executed_at, k.command, k.parameters, k.status, k.error, \
                k.strategy_id IS NULL AS global, k.issued_by, k.on_behalf_of \
         FROM strategy_commands k \
         WHERE {} \
         ORDER BY k.created_at DESC, k.seq DESC LIMIT $2",
        crate::api::COMMANDS_OF_STRATEGY
    ))
    .bind(strategy.id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_commands"))?;
    let events = sqlx::query_as(
        "SELECT at, old_status, new_status, reason, error, command_id, pid, node \
         FROM strategy_events WHERE strategy_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(strategy.id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_events"))?;
    Ok((commands, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> StrategyRecord {
        StrategyRecord {
            id: Uuid::new_v4(),
            name: name.to_string(),
            strategy_type: "heartbeat".into(),
            config: serde_json::json!({}),
            auto_start: false,
            desired_state: DesiredState::Stopped,
            status: Status::Stopped,
            pid: None,
            last_error: None,
            restart_count: 0,
            started_at: None,
            created_at: Utc::now(),
            executions: Default::default(),
            limits: serde_json::json!({}),
            node: None,
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let all = vec![record("demo-sma-eth"), record("demo-sma-btc")];
        let err = unknown_name("nope", &all).to_string();
        assert_eq!(
            err,
            "no strategy named 'nope'; known: demo-sma-btc, demo-sma-eth"
        );
        let err = unknown_name("demo-sma-bt", &all).to_string();
        assert!(err.contains("did you mean 'demo-sma-btc'?"), "{err}");
        let err = unknown_name("x", &[]).to_string();
        assert!(err.contains("no strategies yet"), "{err}");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
