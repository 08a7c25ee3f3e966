//! What the manager says to PostgreSQL about runs (CONTRACT.md §4): claiming queued
//! runs, their state transitions and throttled progress, per-symbol items, finishing,
//! the reads of adoption and cancel, the `securities` and `market_bars` reads that
//! resolve a run's parameters, and the bars COPY streamed into a run's bars file.

use crate::manager::Scope;
use chrono::{DateTime, Utc};
use engine_protocol::runs::{RunMode, RunPriority, RunState};
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use uuid::Uuid;

/// A run as the manager needs it, with its strategy's name, type and config.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub strategy_id: Uuid,
    pub mode: RunMode,
    pub parameters: Value,
    pub priority: RunPriority,
    pub timeout_s: Option<i32>,
    pub state: RunState,
    pub attempt: i32,
    pub pid: Option<i32>,
    pub pid_start_ticks: Option<i64>,
    pub pid_boot_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub seq: i64,
    /// The strategy's name, type and config (as they are now).
    pub name: String,
    pub strategy_type: String,
    pub strategy_config: Value,
    /// The strategy's resource limits (a run takes its strategy's).
    pub strategy_limits: Value,
    /// The lease epoch it runs under (its strategy's when claimed; one more when a
    /// dead node's run is taken over): every write about the run is conditional on it.
    pub lease_epoch: i64,
}

const RUN_COLUMNS: &str = "r.id, r.strategy_id, r.mode, r.parameters, r.priority, r.timeout_s, \
     r.state, r.attempt, r.pid, r.pid_start_ticks, r.pid_boot_id, r.created_at, r.started_at, \
     r.seq, c.name, c.strategy_type, c.config AS strategy_config, c.limits AS strategy_limits, r.lease_epoch";

/// The queue order: `high` before `normal` before `low`, oldest first.
fn queue_key(row: &RunRow) -> (RunPriority, DateTime<Utc>, i64) {
    (row.priority, row.created_at, row.seq)
}

/// Claim up to `limit` queued runs in queue order (`FOR UPDATE SKIP LOCKED`), moving
/// them to `starting` (stage `loading`) on `node`, with `started_at` now.
///
/// A cluster node (`scope` [`Scope::Node`]) claims only the runs of the strategies
/// it owns, under its strategy's `lease_epoch`.
pub async fn claim_queued(
    pool: &PgPool,
    limit: i64,
    node: &str,
    scope: &Scope,
) -> Result<Vec<RunRow>, sqlx::Error> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let mut rows: Vec<RunRow> = sqlx::query_as(&format!(
        "WITH next AS ( \
             SELECT id FROM strategy_runs WHERE state = 'queued' \
                 AND ($3::text IS NULL OR strategy_id IN (SELECT id FROM strategy_configs WHERE node = $3)) \
             ORDER BY (CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END), created_at, seq \
             LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE strategy_runs r SET state = 'starting', node = $2, lease_epoch = c.lease_epoch, stage = 'loading', \
             message = 'resolving parameters and loading bars', started_at = now(), updated_at = now() \
         FROM next, strategy_configs c WHERE r.id = next.id AND c.id = r.strategy_id \
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(limit)
    .bind(node)
    .bind(scope.node())
    .fetch_all(pool)
    .await?;
    rows.sort_by_key(queue_key);
    Ok(rows)
}

/// The runs that are `starting` or `running` (what a manager adopts at start-up); a
/// cluster node's own only (`strategy_runs.node`).
pub async fn active_runs(pool: &PgPool, scope: &Scope) -> Result<Vec<RunRow>, sqlx::Error> {
    let mut rows: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM strategy_runs r JOIN strategy_configs c ON c.id = r.strategy_id \
         WHERE r.state IN ('starting', 'running') AND ($1::text IS NULL OR r.node = $1)"
    ))
    .bind(scope.node())
    .fetch_all(pool)
    .await?;
    rows.sort_by_key(queue_key);
    Ok(rows)
}

/// A run's process was spawned: `running`, with its pid (and start time and boot, so
/// that a reused pid is never taken for it), the config snapshot it uses and its
/// attempt. `false` when the run is no longer active (deleted, or ended meanwhile).
pub struct Running<'a> {
    pub pid: u32,
    pub pid_start_ticks: u64,
    pub pid_boot_id: &'a str,
    pub config: &'a Value,
    pub total_items: i64,
    pub attempt: i32,
}

pub async fn mark_running(
    pool: &PgPool,
    id: Uuid,
    r: &Running<'_>,
    epoch: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE strategy_runs SET state = 'running', pid = $2, pid_start_ticks = $3, \
             pid_boot_id = $4, config = $5, total_items = $6, completed_items = 0, attempt = $7, \
             message = NULL, updated_at = now() \
         WHERE id = $1 AND state IN ('starting', 'running') AND lease_epoch = $8",
    )
    .bind(id)
    .bind(r.pid as i32)
    .bind(r.pid_start_ticks as i64)
    .bind(r.pid_boot_id)
    .bind(r.config)
    .bind(r.total_items)
    .bind(r.attempt)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A run found `starting` with its process alive after a manager restart (the last
/// manager died between the spawn and its `running` write): `running`, with the
/// process adopted. `false` when the run is gone or no longer `starting`.
pub async fn mark_adopted_running(
    pool: &PgPool,
    id: Uuid,
    pid: u32,
    pid_start_ticks: u64,
    pid_boot_id: &str,
    config: &Value,
    epoch: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE strategy_runs SET state = 'running', pid = $2, pid_start_ticks = $3, \
             pid_boot_id = $4, config = COALESCE(config, $5), updated_at = now() \
         WHERE id = $1 AND state = 'starting' AND lease_epoch = $6",
    )
    .bind(id)
    .bind(pid as i32)
    .bind(pid_start_ticks as i64)
    .bind(pid_boot_id)
    .bind(config)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Where a run is, as its row shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    pub progress_percent: f64,
    pub completed_items: Option<i64>,
    pub total_items: Option<i64>,
    pub items_per_second: Option<f64>,
    pub eta_s: Option<f64>,
    pub stage: Option<String>,
    pub current_item: Option<String>,
    pub message: Option<String>,
}

/// Write a run's progress (the caller throttles). `false` when the run is gone or no
/// longer active.
pub async fn write_progress(
    pool: &PgPool,
    id: Uuid,
    p: &RunProgress,
    epoch: i64,
) -> Result<bool, sqlx::Error> {
    let query = sqlx::query(
        "UPDATE strategy_runs SET progress_percent = $2, completed_items = $3, total_items = $4, \
             items_per_second = $5, eta_s = $6, stage = $7, current_item = $8, message = $9, \
             updated_at = now() \
         WHERE id = $1 AND state IN ('starting', 'running') AND lease_epoch = $10",
    )
    .bind(id);
    let done = bind_progress(query, p).bind(epoch).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Bind the eight progress columns, in [`RunProgress`]'s order.
fn bind_progress<'q>(query: Query<'q>, p: &'q RunProgress) -> Query<'q> {
    query
        .bind(p.progress_percent)
        .bind(p.completed_items)
        .bind(p.total_items)
        .bind(p.items_per_second)
        .bind(p.eta_s)
        .bind(&p.stage)
        .bind(&p.current_item)
        .bind(&p.message)
}

/// One `strategy_run_items` row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunItem {
    pub item: String,
    pub position: i32,
    pub passed: Option<bool>,
    pub score: Option<f64>,
    pub detail: Option<Value>,
}

/// Insert items in one statement; an item already there is left as it is (a run's
/// outbox read twice writes nothing twice).
pub async fn insert_items(
    pool: &PgPool,
    run_id: Uuid,
    items: &[RunItem],
) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = items.iter().map(|i| i.item.as_str()).collect();
    let positions: Vec<i32> = items.iter().map(|i| i.position).collect();
    let passed: Vec<Option<bool>> = items.iter().map(|i| i.passed).collect();
    let scores: Vec<Option<f64>> = items.iter().map(|i| i.score).collect();
    let details: Vec<Option<Value>> = items.iter().map(|i| i.detail.clone()).collect();
    sqlx::query(
        "INSERT INTO strategy_run_items (run_id, item, position, passed, score, detail) \
         SELECT $1, t.item, t.position, t.passed, t.score, t.detail \
         FROM unnest($2::text[], $3::int[], $4::bool[], $5::float8[], $6::jsonb[]) \
             AS t(item, position, passed, score, detail) \
         ON CONFLICT (run_id, item) DO NOTHING",
    )
    .bind(run_id)
    .bind(&names)
    .bind(&positions)
    .bind(&passed)
    .bind(&scores)
    .bind(&details)
    .execute(pool)
    .await?;
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Completed { result: Value },
    Failed { state: RunState, error: String },
}

/// End a run that is still queued or active: its final state, `result` or `error`,
/// `finished_at`, and its last progress. `false` when it had ended already or is gone.
pub async fn finish_run(
    pool: &PgPool,
    id: Uuid,
    end: &RunEnd,
    p: &RunProgress,
    epoch: i64,
) -> Result<bool, sqlx::Error> {
    let (state, result, error) = match end {
        RunEnd::Completed { result } => (RunState::Completed, Some(result), None),
        RunEnd::Failed { state, error } => (*state, None, Some(error.as_str())),
    };
    let query = sqlx::query(
        "UPDATE strategy_runs SET state = $2, result = $3, error = $4, finished_at = now(), \
             updated_at = now(), progress_percent = $5, completed_items = $6, total_items = $7, \
             items_per_second = $8, eta_s = $9, stage = $10, current_item = $11, message = $12 \
         WHERE id = $1 AND state IN ('queued', 'starting', 'running') AND lease_epoch = $13",
    )
    .bind(id)
    .bind(state)
    .bind(result)
    .bind(error);
    let done = bind_progress(query, p).bind(epoch).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// A lost run is tried again: `attempt` set, back to `starting`, its pid cleared.
pub async fn mark_retry(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    why: &str,
    epoch: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE strategy_runs SET attempt = $2, state = 'starting', stage = 'loading', message = $3, \
             pid = NULL, pid_start_ticks = NULL, pid_boot_id = NULL, updated_at = now() \
         WHERE id = $1 AND state IN ('starting', 'running') AND lease_epoch = $4",
    )
    .bind(id)
    .bind(attempt)
    .bind(why)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A run cancelled while queued: who it was (for its final event).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedRun {
    pub id: Uuid,
    pub strategy_id: Uuid,
    pub mode: RunMode,
    pub name: String,
}

/// A queued run cancelled before it started. `None` when it is not queued (any more).
pub async fn cancel_queued(
    pool: &PgPool,
    id: Uuid,
    error: &str,
) -> Result<Option<QueuedRun>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE strategy_runs r SET state = 'cancelled', error = $2, finished_at = now(), updated_at = now() \
         FROM strategy_configs c WHERE r.id = $1 AND r.state = 'queued' AND c.id = r.strategy_id \
         RETURNING r.id, r.strategy_id, r.mode, c.name",
    )
    .bind(id)
    .bind(error)
    .fetch_optional(pool)
    .await
}

/// A run's strategy and state, if the run exists.
pub async fn run_state(pool: &PgPool, id: Uuid) -> Result<Option<(Uuid, RunState)>, sqlx::Error> {
    sqlx::query_as("SELECT strategy_id, state FROM strategy_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The queued, starting and running runs of a strategy, oldest first.
pub async fn unfinished_runs_of(
    pool: &PgPool,
    strategy_id: Uuid,
) -> Result<Vec<(Uuid, RunState)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, state FROM strategy_runs \
         WHERE strategy_id = $1 AND state IN ('queued', 'starting', 'running') \
         ORDER BY created_at, seq",
    )
    .bind(strategy_id)
    .fetch_all(pool)
    .await
}

/// Which of `ids` have no row any more (their strategy was deleted: CASCADE).
pub async fn deleted_runs(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT t.id FROM unnest($1::uuid[]) AS t(id) \
         WHERE NOT EXISTS (SELECT 1 FROM strategy_runs r WHERE r.id = t.id)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// One row of `securities`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Security {
    pub symbol: String,
    pub name: Option<String>,
    pub sector: Option<String>,
}

/// The rows of `securities` among `symbols`, in the database's order of `symbol`
/// (the order of the bars file).
pub async fn securities(pool: &PgPool, symbols: &[String]) -> Result<Vec<Security>, sqlx::Error> {
    sqlx::query_as(
        "SELECT symbol, name, sector FROM securities WHERE symbol = ANY($1) ORDER BY symbol",
    )
    .bind(symbols)
    .fetch_all(pool)
    .await
}

/// Every active security, in the database's order of `symbol`.
pub async fn active_securities(pool: &PgPool) -> Result<Vec<Security>, sqlx::Error> {
    sqlx::query_as("SELECT symbol, name, sector FROM securities WHERE active ORDER BY symbol")
        .fetch_all(pool)
        .await
}

/// The first and last bar time of `symbols` at `interval`, if there is any bar (one
/// index probe at each end per symbol).
pub async fn bars_span(
    pool: &PgPool,
    symbols: &[String],
    interval: &str,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT min(x.first), max(x.last) FROM unnest($1::text[]) AS s(symbol) \
         CROSS JOIN LATERAL (SELECT \
             (SELECT ts FROM market_bars b WHERE b.symbol = s.symbol AND b.interval = $2 ORDER BY ts LIMIT 1) AS first, \
             (SELECT ts FROM market_bars b WHERE b.symbol = s.symbol AND b.interval = $2 ORDER BY ts DESC LIMIT 1) AS last) x",
    )
    .bind(symbols)
    .bind(interval)
    .fetch_one(pool)
    .await?;
    Ok(first.zip(last))
}

/// Whether `symbols` have any bar at `interval` between `start` and `end` (inclusive).
pub async fn bars_exist(
    pool: &PgPool,
    symbols: &[String],
    interval: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM unnest($1::text[]) AS s(symbol) WHERE EXISTS ( \
             SELECT 1 FROM market_bars b WHERE b.symbol = s.symbol AND b.interval = $2 \
             AND b.ts >= $3 AND b.ts <= $4))",
    )
    .bind(symbols)
    .bind(interval)
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await
}

/// The intervals that hold bars of any of `symbols`, with how many of them each
/// (for an error that says which interval would work). A full scan: error path only.
pub async fn intervals_with_bars(
    pool: &PgPool,
    symbols: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT interval, count(DISTINCT symbol) FROM market_bars WHERE symbol = ANY($1) \
         GROUP BY interval ORDER BY interval",
    )
    .bind(symbols)
    .fetch_all(pool)
    .await
}

/// Why the bars could not be written to a run's bars file.
#[derive(Debug, thiserror::Error)]
pub enum CopyBarsError {
    #[error("cannot read the bars from PostgreSQL")]
    Database(#[from] sqlx::Error),
    #[error("cannot write the bars file {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the bars COPY was stopped")]
    Stopped,
    #[error("the bars COPY's task failed: {0}")]
    Task(String),
}

/// `text` as an SQL string literal (`standard_conforming_strings` is on: a quote
/// doubled is the only escape).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Which of a run's bars one COPY carries: `symbols` (in the run's order) from
/// `start` to `end` (inclusive when `end_inclusive`, else up to just before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarsPart {
    pub symbols: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub end_inclusive: bool,
}

/// The bars of `symbols` from `start` to `end` inclusive cut in `parts` parts (at
/// least 1) that, read one after the other, are the rows ordered by symbol, then
/// time: by the symbols (in their order, which must be the COPY's: `ORDER BY
/// symbol`) when there are enough of them, else by time, in equal spans of the
/// times that hold bars (`data`: the first and last bar there is, [`bars_span`]).
pub fn split_bars(
    symbols: &[String],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    data: (DateTime<Utc>, DateTime<Utc>),
    parts: usize,
) -> Vec<BarsPart> {
    let whole = |symbols: &[String], start, end, end_inclusive| BarsPart {
        symbols: symbols.to_vec(),
        start,
        end,
        end_inclusive,
    };
    let parts = parts.max(1);
    if parts == 1 {
        return vec![whole(symbols, start, end, true)];
    }
    if symbols.len() >= parts {
        let size = symbols.len().div_ceil(parts);
        return symbols
            .chunks(size)
            .map(|chunk| whole(chunk, start, end, true))
            .collect();
    }
    let (from, to) = (start.max(data.0), end.min(data.1));
    let span = to - from;
    if span <= chrono::TimeDelta::zero() {
        return vec![whole(symbols, start, end, true)];
    }
    // The first part from `start`, the last to `end`: the cuts alone are in the data.
    let at = |k: usize| match k {
        0 => start,
        k => from + span / parts as i32 * k as i32,
    };
    (0..parts)
        .map(|k| {
            let last = k + 1 == parts;
            whole(symbols, at(k), if last { end } else { at(k + 1) }, last)
        })
        .collect()
}

/// The COPY statement of a run's bars: `symbol, ts, open, high, low, close, volume`
/// of `symbols` at `interval` from `start` to `end` inclusive, ordered by symbol then
/// time, in PostgreSQL's binary format. (COPY takes no parameters: the values are
/// quoted literals.)
pub fn bars_copy_statement(
    symbols: &[String],
    interval: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> String {
    let part = BarsPart {
        symbols: symbols.to_vec(),
        start,
        end,
        end_inclusive: true,
    };
    bars_part_statement(&part, interval)
}

/// The COPY statement of one [`BarsPart`] of a run's bars at `interval`.
pub fn bars_part_statement(part: &BarsPart, interval: &str) -> String {
    let symbols = match part.symbols.as_slice() {
        [one] => format!("symbol = {}", literal(one)),
        many => {
            let list: Vec<String> = many.iter().map(|s| literal(s)).collect();
            format!("symbol IN ({})", list.join(", "))
        }
    };
    let ts = |t: DateTime<Utc>| literal(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let before = if part.end_inclusive { "<=" } else { "<" };
    format!(
        "COPY (SELECT symbol, ts, open, high, low, close, volume FROM market_bars \
         WHERE {symbols} AND interval = {} AND ts >= {}::timestamptz AND ts {before} {}::timestamptz \
         ORDER BY symbol, ts) TO STDOUT (FORMAT binary)",
        literal(interval),
        ts(part.start),
        ts(part.end),
    )
}

/// A run's bars being copied out of PostgreSQL into its bars files by tasks of their
/// own (one per part, each on its own connection, so that PostgreSQL works on a
/// large run with more than one core), so that the run's process can start at once
/// and read the files as they grow (the COPY and the strategy overlap).
///
/// While a part's COPY goes on, its file is held under an exclusive `flock`: a reader
/// at the end of what is written so far knows that more is coming while the lock is
/// held, and that the file is all there is once it is free (see
/// [`engine_protocol::runs::bars_file`]). The lock goes with the file when the COPY
/// ends, well or not, and when the manager dies.
///
/// Dropping the handle stops every part's COPY (a run cancelled while its bars still
/// come).
pub struct BarsCopy {
    tasks:
        futures_util::stream::FuturesUnordered<tokio::task::JoinHandle<Result<u64, CopyBarsError>>>,
    written: u64,
    _stop: Vec<oneshot::Sender<()>>,
}

impl BarsCopy {
    /// The end of every part's COPY: the bytes written in all, or why one failed (the
    /// first failure, as soon as it happens). Cancel-safe: a `select!` may poll it
    /// again after dropping it; once it has returned, it is not awaited again.
    pub async fn finished(&mut self) -> Result<u64, CopyBarsError> {
        while let Some(outcome) = self.tasks.next().await {
            match outcome {
                Ok(Ok(bytes)) => self.written += bytes,
                Ok(Err(err)) => return Err(err),
                Err(err) => return Err(CopyBarsError::Task(err.to_string())),
            }
        }
        Ok(self.written)
    }
}

/// Start streaming the bars of [`bars_copy_statement`] into a new file at `path`:
/// [`start_bars_copies`] in one part.
pub async fn start_bars_copy(
    pool: &PgPool,
    symbols: &[String],
    interval: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    path: &Path,
) -> Result<BarsCopy, CopyBarsError> {
    let part = split_bars(symbols, start, end, (start, end), 1).remove(0);
    start_bars_copies(pool, interval, &[(part, path.to_path_buf())]).await
}

/// Start streaming each [`BarsPart`] at `interval` into a new file at its path (one
/// there is removed first), never holding the bars in memory. Returns once every
/// part's connection is taken and its file made and locked: the run's process may
/// then open them. A database that cannot be reached fails here, before any process
/// starts.
///
/// A COPY's connection goes back to the pool only when the COPY was read to its end.
/// A COPY not read to its end (stopped, or the file failing) leaves its rows and its
/// ReadyForQuery unread on the connection, which sqlx does not count, so the next
/// statement there would read them as its own answer ("expected CopyOutResponse, got
/// ReadyForQuery"): that connection is closed instead.
pub async fn start_bars_copies(
    pool: &PgPool,
    interval: &str,
    parts: &[(BarsPart, PathBuf)],
) -> Result<BarsCopy, CopyBarsError> {
    let mut conns = Vec::with_capacity(parts.len());
    for _ in parts {
        conns.push(pool.acquire().await?);
    }
    let mut copy = BarsCopy {
        tasks: futures_util::stream::FuturesUnordered::new(),
        written: 0,
        _stop: Vec::with_capacity(parts.len()),
    };
    for ((part, path), conn) in parts.iter().zip(conns) {
        let file_err = |source| CopyBarsError::File {
            path: path.display().to_string(),
            source,
        };
        // A new file, not the old one truncated: a stopped COPY's task may still be
        // writing into the old one.
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(file_err(err)),
            _ => {}
        }
        let file = std::fs::File::create_new(path).map_err(file_err)?;
        file.lock().map_err(file_err)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let statement = bars_part_statement(part, interval);
        copy.tasks.push(tokio::spawn(copy_into(
            conn,
            statement,
            file,
            path.clone(),
            stop_rx,
        )));
        copy._stop.push(stop_tx);
    }
    Ok(copy)
}

async fn copy_into(
    mut conn: PoolConnection<Postgres>,
    statement: String,
    file: std::fs::File,
    path: PathBuf,
    mut stop: oneshot::Receiver<()>,
) -> Result<u64, CopyBarsError> {
    let outcome = stream_into(&mut conn, &statement, file, &path, &mut stop).await;
    if outcome.is_err() {
        conn.close_on_drop();
    }
    outcome
}

async fn stream_into(
    conn: &mut PgConnection,
    statement: &str,
    file: std::fs::File,
    path: &Path,
    stop: &mut oneshot::Receiver<()>,
) -> Result<u64, CopyBarsError> {
    let file_err = |source| CopyBarsError::File {
        path: path.display().to_string(),
        source,
    };
    let mut stream = conn.copy_out_raw(statement).await?;
    let file = tokio::fs::File::from_std(file);
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut written = 0u64;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = &mut *stop => return Err(CopyBarsError::Stopped),
            chunk = stream.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        written += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(file_err)?;
    }
    out.flush().await.map_err(file_err)?;
    // Whole: the reader may take the rest as final once the lock is free.
    let file = out.into_inner().into_std().await;
    file.unlock().map_err(file_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_statement_quotes_its_values() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let one = bars_copy_statement(
            &["A'B".to_string()],
            "1d",
            t("2024-01-01T00:00:00Z"),
            t("2024-12-31T23:59:59Z"),
        );
        assert!(one.contains("symbol = 'A''B' AND interval = '1d'"), "{one}");
        assert!(one.contains("ts >= '2024-01-01T00:00:00.000000Z'::timestamptz"));
        assert!(one.ends_with("ORDER BY symbol, ts) TO STDOUT (FORMAT binary)"));
        let many = bars_copy_statement(
            &["A".to_string(), "B".to_string()],
            "1m",
            t("2024-01-01T00:00:00Z"),
            t("2024-01-02T00:00:00Z"),
        );
        assert!(many.contains("symbol IN ('A', 'B')"), "{many}");
    }

    #[test]
    fn bars_are_split_by_symbols_else_by_time_into_parts_read_in_order() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let (start, end) = (t("2024-01-01T00:00:00Z"), t("2024-01-03T00:00:00Z"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let five = names(&["A", "B", "C", "D", "E"]);
        let all = (start, end);
        let one = split_bars(&five, start, end, all, 1);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].symbols.len(), one[0].end_inclusive), (5, true));

        let by_symbol = split_bars(&five, start, end, all, 2);
        let groups: Vec<_> = by_symbol.iter().map(|p| p.symbols.clone()).collect();
        assert_eq!(groups, vec![names(&["A", "B", "C"]), names(&["D", "E"])]);
        assert!(by_symbol
            .iter()
            .all(|p| p.start == start && p.end == end && p.end_inclusive));

        let by_time = split_bars(&names(&["A"]), start, end, all, 2);
        assert_eq!(by_time.len(), 2);
        let mid = t("2024-01-02T00:00:00Z");
        assert_eq!((by_time[0].start, by_time[0].end), (start, mid));
        assert!(
            !by_time[0].end_inclusive,
            "the middle bar would be read twice"
        );
        assert_eq!((by_time[1].start, by_time[1].end), (mid, end));
        assert!(by_time[1].end_inclusive, "the last bar would be lost");
        let first = bars_part_statement(&by_time[0], "1m");
        assert!(
            first.contains("ts < '2024-01-02T00:00:00.000000Z'"),
            "{first}"
        );
        let second = bars_part_statement(&by_time[1], "1m");
        assert!(
            second.contains("ts >= '2024-01-02T00:00:00.000000Z'"),
            "{second}"
        );
        assert!(
            second.contains("ts <= '2024-01-03T00:00:00.000000Z'"),
            "{second}"
        );

        // A span of one instant is not cut.
        assert_eq!(split_bars(&names(&["A"]), start, start, all, 2).len(), 1);
        // The cut is in the middle of the times that hold bars, not of the range
        // asked (two years back by default, for bars of a day).
        let asked = t("2022-01-03T00:00:00Z");
        let in_data = split_bars(&names(&["A"]), asked, end, all, 2);
        assert_eq!((in_data[0].start, in_data[0].end), (asked, mid));
        assert_eq!((in_data[1].start, in_data[1].end), (mid, end));
    }
}
