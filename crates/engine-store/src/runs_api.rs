//! What the HTTP API and `enginectl` read and insert about runs (CONTRACT.md §4):
//! a run inserted `queued` (the schema's refusals in words), a run with its
//! progress, its items, runs filtered by strategy and state, the queue in queue order
//! with each run's `position_in_queue`, the manager's `max_concurrent_runs`, the
//! estimated start of a queued run ([`estimate_start`]), and the `cancel` command
//! row. The manager's own statements about runs live elsewhere; nothing here changes
//! a run once it is inserted.

use crate::commands::{insert_command_row, InsertedCommand};
use crate::vocab::CommandWord;
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::json_kind;
use engine_protocol::runs::{RunMode, RunPriority, RunState};
use serde_json::Value;
use sqlx::PgPool;
use std::borrow::Cow;
use std::collections::HashMap;
use uuid::Uuid;

/// The manager's default `--max-concurrent-runs`, assumed while no manager has said.
pub const DEFAULT_MAX_CONCURRENT_RUNS: i32 = 2;

/// The largest `timeout_s` the schema accepts (a day).
pub const MAX_TIMEOUT_S: i64 = 86_400;

/// How many recent completed runs of a mode make its average run time.
const AVERAGE_OVER: i64 = 20;

/// A run as the operator asks for it, checked: the words are in their vocabularies,
/// the parameters an object, the timeout in range.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub strategy_id: Uuid,
    pub mode: RunMode,
    pub parameters: Value,
    pub priority: RunPriority,
    pub timeout_s: Option<i32>,
    /// The person or token the tool acts for (`None`: the session's
    /// `engine.on_behalf_of` setting, if any).
    pub on_behalf_of: Option<String>,
}

/// What is wrong with a run's request, before it reaches the database: each says
/// what would be right.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRunRequest {
    #[error("unknown mode '{0}'; a run's mode is one of backtest, screener, alert")]
    Mode(String),
    #[error("unknown priority '{0}'; allowed: high, normal, low (default normal)")]
    Priority(String),
    #[error("timeout_s must be a whole number of seconds with 0 < timeout_s <= 86400, got {0}")]
    Timeout(String),
    #[error(
        "parameters must be a JSON object, e.g. {{\"symbols\": [\"AAPL\"], \"fee_bps\": 5}}, got {0}"
    )]
    Parameters(&'static str),
}

/// Check a mode word (`live` is not a run mode).
pub fn parse_mode(word: &str) -> Result<RunMode, BadRunRequest> {
    match word.trim().parse::<RunMode>() {
        Ok(mode) if mode != RunMode::Live => Ok(mode),
        _ => Err(BadRunRequest::Mode(word.to_string())),
    }
}

/// Check a priority word (`None`: the default, `normal`).
pub fn parse_priority(word: Option<&str>) -> Result<RunPriority, BadRunRequest> {
    match word {
        None => Ok(RunPriority::Normal),
        Some(word) => word
            .trim()
            .parse()
            .map_err(|_| BadRunRequest::Priority(word.to_string())),
    }
}

/// Check a timeout given as JSON (`null` or absent: none).
pub fn parse_timeout(value: Option<&Value>) -> Result<Option<i32>, BadRunRequest> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match value.as_i64() {
        Some(t) if t > 0 && t <= MAX_TIMEOUT_S => Ok(Some(t as i32)),
        _ => Err(BadRunRequest::Timeout(value.to_string())),
    }
}

/// Check the parameters (`null` or absent: `{}`).
pub fn parse_parameters(value: Option<&Value>) -> Result<Value, BadRunRequest> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(other) => Err(BadRunRequest::Parameters(json_kind(other))),
    }
}

/// The run's row once inserted.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InsertedRun {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// Insert a run (`queued`). See [`run_refusal`] for the schema's refusals in words.
pub async fn insert_run(pool: &PgPool, run: &NewRun) -> Result<InsertedRun, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters, priority, timeout_s, on_behalf_of) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
    )
    .bind(run.strategy_id)
    .bind(run.mode)
    .bind(&run.parameters)
    .bind(run.priority)
    .bind(run.timeout_s)
    .bind(&run.on_behalf_of)
    .fetch_one(pool)
    .await
}

/// What the schema refused about a run, in the operator's words; `None` for any
/// other error.
pub fn run_refusal(err: &sqlx::Error) -> Option<Cow<'static, str>> {
    if let Some(words) = crate::limits::size_refusal(err) {
        return Some(Cow::Owned(words));
    }
    let db = err.as_database_error()?;
    let words = match db.constraint()? {
        "run_mode_vocabulary" => "a run's mode is one of backtest, screener, alert",
        "run_priority_vocabulary" => "a run's priority is one of high, normal, low",
        "run_timeout_range" => "timeout_s must be above 0 and at most 86400 seconds, or NULL",
        "run_parameters_is_a_json_object" => "parameters must be a JSON object",
        "run_inserted_queued" => "a run is inserted queued; the manager moves it on",
        "strategy_runs_strategy_id_fkey" => {
            "no such strategy (it was deleted); `enginectl list` shows the strategies"
        }
        _ => return None,
    };
    Some(Cow::Borrowed(words))
}

/// A run's row with its strategy's name and type.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub strategy_id: Uuid,
    pub strategy: String,
    pub strategy_type: String,
    pub mode: RunMode,
    pub parameters: Value,
    pub priority: RunPriority,
    pub timeout_s: Option<i32>,
    pub state: RunState,
    pub progress_percent: f64,
    pub completed_items: Option<i64>,
    pub total_items: Option<i64>,
    pub items_per_second: Option<f64>,
    pub eta_s: Option<f64>,
    pub stage: Option<String>,
    pub current_item: Option<String>,
    pub message: Option<String>,
    pub config: Option<Value>,
    /// Read by [`run`] only; lists leave it out (`None`).
    pub result: Option<Value>,
    pub error: Option<String>,
    pub pid: Option<i32>,
    pub node: Option<String>,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The login role that inserted it (stamped by the database, CONTRACT.md §8).
    pub issued_by: String,
    /// The person or token the inserting tool acted for.
    pub on_behalf_of: Option<String>,
    /// Where it stands in the queue (1 = next), while it is `queued`.
    pub position_in_queue: Option<i64>,
}

/// The queue order as a sort key: high, normal, low; then age.
const QUEUE_RANK: &str = "(CASE r.priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END)";

fn run_select(result: &str) -> String {
    format!(
        "SELECT r.id, r.strategy_id, c.name AS strategy, c.strategy_type, r.mode, r.parameters, \
                r.priority, r.timeout_s, r.state, r.progress_percent, r.completed_items, \
                r.total_items, r.items_per_second, r.eta_s, r.stage, r.current_item, r.message, \
                r.config, {result} AS result, r.error, r.pid, r.node, r.attempt, r.created_at, \
                r.started_at, r.finished_at, r.updated_at, r.issued_by, r.on_behalf_of, \
                CASE WHEN r.state = 'queued' THEN ( \
                    SELECT count(*) FROM strategy_runs q WHERE q.state = 'queued' AND \
                      ((CASE q.priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END), q.created_at, q.seq) \
                      <= ({QUEUE_RANK}, r.created_at, r.seq)) END AS position_in_queue \
         FROM strategy_runs r JOIN strategy_configs c ON c.id = r.strategy_id"
    )
}

/// One run, with its result.
pub async fn run(pool: &PgPool, id: Uuid) -> Result<Option<RunRecord>, sqlx::Error> {
    sqlx::query_as(&format!("{} WHERE r.id = $1", run_select("r.result")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Which runs [`runs`] lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub strategy_id: Option<Uuid>,
    /// Empty: every state.
    pub states: Vec<RunState>,
    pub limit: i64,
}

/// Runs, newest first, without their results.
pub async fn runs(pool: &PgPool, filter: &RunFilter) -> Result<Vec<RunRecord>, sqlx::Error> {
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    sqlx::query_as(&format!(
        "{} WHERE ($1::uuid IS NULL OR r.strategy_id = $1) \
           AND (cardinality($2::text[]) = 0 OR r.state = ANY($2)) \
         ORDER BY r.created_at DESC, r.seq DESC LIMIT $3",
        run_select("NULL::jsonb")
    ))
    .bind(filter.strategy_id)
    .bind(&states)
    .bind(filter.limit.max(0))
    .fetch_all(pool)
    .await
}

/// The queued runs in queue order (high, normal, low; oldest first), and the active
/// ones (`starting`, `running`), oldest first.
pub async fn queue(pool: &PgPool) -> Result<(Vec<RunRecord>, Vec<RunRecord>), sqlx::Error> {
    let queued = sqlx::query_as(&format!(
        "{} WHERE r.state = 'queued' ORDER BY {QUEUE_RANK}, r.created_at, r.seq",
        run_select("NULL::jsonb")
    ))
    .fetch_all(pool)
    .await?;
    let active = sqlx::query_as(&format!(
        "{} WHERE r.state IN ('starting', 'running') ORDER BY r.created_at, r.seq",
        run_select("NULL::jsonb")
    ))
    .fetch_all(pool)
    .await?;
    Ok((queued, active))
}

/// One `strategy_run_items` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct RunItem {
    pub item: String,
    pub position: Option<i32>,
    pub processed_at: DateTime<Utc>,
    pub passed: Option<bool>,
    pub score: Option<f64>,
    pub detail: Option<Value>,
}

/// A run's items in processing order (position, then name), at most `limit`.
pub async fn run_items(
    pool: &PgPool,
    run_id: Uuid,
    limit: i64,
) -> Result<Vec<RunItem>, sqlx::Error> {
    sqlx::query_as(
        "SELECT item, position, processed_at, passed, score, detail FROM strategy_run_items \
         WHERE run_id = $1 ORDER BY position NULLS LAST, item LIMIT $2",
    )
    .bind(run_id)
    .bind(limit.max(0))
    .fetch_all(pool)
    .await
}

/// How many runs the manager runs at once: what it wrote in its lease row
/// (`--max-concurrent-runs`), else [`DEFAULT_MAX_CONCURRENT_RUNS`]. The flag is
/// `true` when the manager said it.
pub async fn max_concurrent(pool: &PgPool) -> Result<(i32, bool), sqlx::Error> {
    let said: Option<Option<i32>> =
        sqlx::query_scalar("SELECT max_concurrent_runs FROM engine_manager_lease WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    Ok(match said.flatten() {
        Some(n) => (n, true),
        None => (DEFAULT_MAX_CONCURRENT_RUNS, false),
    })
}

/// The manager records its `--max-concurrent-runs` in its lease row (after writing
/// the lease), so that the API and `enginectl` can read it.
pub async fn record_max_concurrent<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    max_concurrent_runs: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE engine_manager_lease SET max_concurrent_runs = $1 WHERE id = 1")
        .bind(max_concurrent_runs)
        .execute(executor)
        .await
        .map(drop)
}

/// The average run time (start to finish, seconds) of each mode over its last
/// completed runs.
pub async fn mode_averages(pool: &PgPool) -> Result<HashMap<RunMode, f64>, sqlx::Error> {
    let rows: Vec<(RunMode, Option<f64>)> = sqlx::query_as(
        "SELECT mode, avg(secs) FROM ( \
           SELECT mode, extract(epoch FROM finished_at - started_at)::float8 AS secs, \
                  row_number() OVER (PARTITION BY mode ORDER BY finished_at DESC) AS n \
           FROM strategy_runs WHERE state = 'completed' AND started_at IS NOT NULL \
             AND finished_at IS NOT NULL) recent \
         WHERE n <= $1 GROUP BY mode",
    )
    .bind(AVERAGE_OVER)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(mode, avg)| avg.map(|a| (mode, a.max(0.0))))
        .collect())
}

/// Insert a `cancel` command for the run `run_id` of `strategy_id`, or (without
/// `run_id`) for every queued and running run of the strategy.
pub async fn insert_cancel(
    pool: &PgPool,
    strategy_id: Uuid,
    run_id: Option<Uuid>,
    on_behalf_of: Option<&str>,
) -> Result<InsertedCommand, sqlx::Error> {
    let parameters = match run_id {
        Some(id) => serde_json::json!({ "run_id": id }),
        None => serde_json::json!({}),
    };
    insert_command_row(
        pool,
        Some(strategy_id),
        CommandWord::Cancel,
        &parameters,
        on_behalf_of,
    )
    .await
}

/// What the estimates of a run's start and end are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEstimate {
    pub now: DateTime<Utc>,
    pub max_concurrent: i32,
    /// Average run time of each mode ([`mode_averages`]).
    pub averages: HashMap<RunMode, f64>,
}

impl QueueEstimate {
    /// Seconds an active run still needs: its own `eta_s` when it reported one, else
    /// its mode's average less the time it has run (at least 0); `None` with neither.
    pub fn remaining_s(&self, run: &RunRecord) -> Option<f64> {
        if let Some(eta) = run.eta_s.filter(|e| e.is_finite() && *e >= 0.0) {
            return Some(eta);
        }
        let average = *self.averages.get(&run.mode)?;
        let ran = run
            .started_at
            .map(|t| (self.now - t).as_seconds_f64())
            .unwrap_or(0.0);
        Some((average - ran).max(0.0))
    }

    /// When the queued run `run` should start: see [`estimate_start`]. `queued` is
    /// the queue in order (it must hold `run`), `active` the runs holding slots.
    pub fn start_of(
        &self,
        run: &RunRecord,
        queued: &[RunRecord],
        active: &[RunRecord],
    ) -> Option<DateTime<Utc>> {
        if run.state != RunState::Queued {
            return run.started_at;
        }
        let busy: Vec<Option<f64>> = active.iter().map(|r| self.remaining_s(r)).collect();
        let ahead: Vec<Option<f64>> = queued
            .iter()
            .take_while(|r| r.id != run.id)
            .map(|r| self.averages.get(&r.mode).copied())
            .collect();
        let wait = estimate_start(self.max_concurrent, &busy, &ahead)?;
        Some(self.now + TimeDelta::milliseconds((wait * 1000.0).round() as i64))
    }

    /// When `run` should end: its `finished_at` once over; while running, now plus
    /// its `eta_s` (else its start plus its mode's average); while queued, its
    /// estimated start plus its mode's average.
    pub fn completion_of(
        &self,
        run: &RunRecord,
        queued: &[RunRecord],
        active: &[RunRecord],
    ) -> Option<DateTime<Utc>> {
        if run.state.is_final() {
            return run.finished_at;
        }
        let seconds = |s: f64| TimeDelta::milliseconds((s * 1000.0).round() as i64);
        if run.state.is_active() {
            return self.remaining_s(run).map(|s| self.now + seconds(s));
        }
        let start = self.start_of(run, queued, active)?;
        let average = self.averages.get(&run.mode)?;
        Some(start + seconds(*average))
    }
}

/// Seconds from now until a queued run starts, with `slots` runs at once: the slots
/// held by the active runs free up after their remaining times (`busy`), the others
/// are free now; each run ahead of it in the queue (`ahead`, in order, each its
/// mode's average run time) takes the slot that frees first and holds it that long;
/// the run starts when a slot frees after them. `None` when a time it depends on is
/// unknown (no completed run of that mode yet, and no ETA reported).
pub fn estimate_start(slots: i32, busy: &[Option<f64>], ahead: &[Option<f64>]) -> Option<f64> {
    let slots = slots.max(1) as usize;
    // Free times of the slots, in seconds from now; the active runs beyond the limit
    // (a limit lowered at a restart) hold theirs as well.
    let mut free: Vec<Option<f64>> = busy.to_vec();
    free.resize(free.len().max(slots), Some(0.0));
    // A slot whose time is unknown frees last; the earliest known one is taken.
    let take_earliest = |free: &mut Vec<Option<f64>>| -> Option<f64> {
        let (i, _) = free
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        free.remove(i)
    };
    // With more active runs than slots, a slot frees only when enough of them end.
    while free.len() > slots {
        take_earliest(&mut free)?;
    }
    for duration in ahead {
        let at = take_earliest(&mut free)?;
        free.push(duration.map(|d| at + d));
    }
    take_earliest(&mut free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_in_words() {
        assert_eq!(parse_mode("screener"), Ok(RunMode::Screener));
        assert!(parse_mode("live")
            .unwrap_err()
            .to_string()
            .contains("backtest, screener, alert"));
        assert!(parse_mode("replay")
            .unwrap_err()
            .to_string()
            .contains("unknown mode 'replay'"));
        assert_eq!(parse_priority(None), Ok(RunPriority::Normal));
        assert_eq!(parse_priority(Some("high")), Ok(RunPriority::High));
        assert!(parse_priority(Some("urgent"))
            .unwrap_err()
            .to_string()
            .contains("high, normal, low"));
        assert_eq!(parse_timeout(None), Ok(None));
        assert_eq!(parse_timeout(Some(&json!(null))), Ok(None));
        assert_eq!(parse_timeout(Some(&json!(60))), Ok(Some(60)));
        for bad in [json!(0), json!(86_401), json!(1.5), json!("60")] {
            let err = parse_timeout(Some(&bad)).unwrap_err().to_string();
            assert!(err.contains("0 < timeout_s <= 86400"), "{err}");
        }
        assert_eq!(parse_parameters(None), Ok(json!({})));
        assert_eq!(
            parse_parameters(Some(&json!({"limit": 5}))),
            Ok(json!({"limit": 5}))
        );
        let err = parse_parameters(Some(&json!([1]))).unwrap_err().to_string();
        assert!(
            err.contains("must be a JSON object") && err.contains("an array"),
            "{err}"
        );
    }

    #[test]
    fn a_free_slot_means_now() {
        assert_eq!(estimate_start(2, &[], &[]), Some(0.0));
        assert_eq!(estimate_start(2, &[Some(30.0)], &[]), Some(0.0));
        // Both slots busy: the first to free.
        assert_eq!(
            estimate_start(2, &[Some(30.0), Some(10.0)], &[]),
            Some(10.0)
        );
    }

    #[test]
    fn runs_ahead_take_the_slots_that_free_first() {
        // Slots free at 10 and 30; two runs of 20 s ahead: 10→30, 30→50; ours at 30.
        assert_eq!(
            estimate_start(2, &[Some(30.0), Some(10.0)], &[Some(20.0), Some(20.0)]),
            Some(30.0)
        );
        // One slot, free now; three runs of 5 s ahead.
        assert_eq!(
            estimate_start(1, &[], &[Some(5.0), Some(5.0), Some(5.0)]),
            Some(15.0)
        );
    }

    #[test]
    fn unknown_times_give_no_estimate_unless_a_slot_is_known_free() {
        assert_eq!(estimate_start(1, &[None], &[]), None);
        // One unknown, one known: the known one is taken.
        assert_eq!(estimate_start(2, &[None, Some(4.0)], &[]), Some(4.0));
        // A run ahead of unknown length holds that slot for ever (as far as we know).
        assert_eq!(estimate_start(1, &[], &[None]), None);
        assert_eq!(estimate_start(2, &[], &[None]), Some(0.0));
    }

    #[test]
    fn more_active_runs_than_slots() {
        // The limit is 1 but two run (lowered at a restart): both must end.
        assert_eq!(estimate_start(1, &[Some(3.0), Some(8.0)], &[]), Some(8.0));
    }

    async fn strategy(pool: &PgPool, name: &str) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type) VALUES ($1, 'sma_crossover') RETURNING id",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    fn new_run(strategy_id: Uuid, mode: RunMode, priority: RunPriority) -> NewRun {
        NewRun {
            strategy_id,
            mode,
            parameters: json!({"symbols": ["AAPL"]}),
            priority,
            timeout_s: Some(60),
            on_behalf_of: None,
        }
    }

    #[tokio::test]
    #[allow(clippy::too_many_lines)] // one story: insert, read, refuse, cancel
    async fn inserts_reads_queue_positions_and_refusals() {
        let db = crate::test_db::TestDb::create().await;
        let pool = &db.pool;
        let a = strategy(pool, "a").await;
        let low = insert_run(pool, &new_run(a, RunMode::Backtest, RunPriority::Low))
            .await
            .unwrap();
        let normal = insert_run(pool, &new_run(a, RunMode::Screener, RunPriority::Normal))
            .await
            .unwrap();
        let high = insert_run(pool, &new_run(a, RunMode::Alert, RunPriority::High))
            .await
            .unwrap();
        let (queued, active) = queue(pool).await.unwrap();
        let order: Vec<Uuid> = queued.iter().map(|r| r.id).collect();
        assert_eq!(order, vec![high.id, normal.id, low.id]);
        assert_eq!(
            queued
                .iter()
                .map(|r| r.position_in_queue)
                .collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(3)]
        );
        assert!(active.is_empty());
        let one = run(pool, low.id).await.unwrap().unwrap();
        assert_eq!(
            (one.strategy.as_str(), one.mode, one.state),
            ("a", RunMode::Backtest, RunState::Queued)
        );
        assert_eq!(one.position_in_queue, Some(3));
        assert_eq!(one.timeout_s, Some(60));
        // A run that leaves the queue has no position; the others move up.
        sqlx::query("UPDATE strategy_runs SET state = 'running', started_at = now() WHERE id = $1")
            .bind(high.id)
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(
            run(pool, high.id).await.unwrap().unwrap().position_in_queue,
            None
        );
        assert_eq!(
            run(pool, low.id).await.unwrap().unwrap().position_in_queue,
            Some(2)
        );
        // Lists: newest first, filtered by strategy and state.
        let all = runs(
            pool,
            &RunFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![high.id, normal.id, low.id]
        );
        let running = RunFilter {
            strategy_id: Some(a),
            states: vec![RunState::Running],
            limit: 10,
        };
        assert_eq!(runs(pool, &running).await.unwrap().len(), 1);
        let other = RunFilter {
            strategy_id: Some(Uuid::new_v4()),
            states: vec![],
            limit: 10,
        };
        assert!(runs(pool, &other).await.unwrap().is_empty());
        // What the schema refuses, in words.
        let mut bad = new_run(a, RunMode::Backtest, RunPriority::Normal);
        bad.timeout_s = Some(0);
        let err = insert_run(pool, &bad).await.unwrap_err();
        assert_eq!(
            run_refusal(&err).as_deref(),
            Some("timeout_s must be above 0 and at most 86400 seconds, or NULL")
        );
        let gone = new_run(Uuid::new_v4(), RunMode::Backtest, RunPriority::Normal);
        let err = insert_run(pool, &gone).await.unwrap_err();
        assert!(run_refusal(&err).unwrap().contains("no such strategy"));
        // The cancel command row.
        let cancel = insert_cancel(pool, a, Some(low.id), None).await.unwrap();
        let (word, params): (String, Value) =
            sqlx::query_as("SELECT command, parameters FROM strategy_commands WHERE id = $1")
                .bind(cancel.id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(
            (word.as_str(), params),
            ("cancel", json!({"run_id": low.id}))
        );
        // max_concurrent: the default until a manager says.
        assert_eq!(
            max_concurrent(pool).await.unwrap(),
            (DEFAULT_MAX_CONCURRENT_RUNS, false)
        );
        sqlx::query(
            "INSERT INTO engine_manager_lease (id, host, pid, boot_id, started_at, heartbeat_at) \
             VALUES (1, 'h', 1, 'b', now(), now())",
        )
        .execute(pool)
        .await
        .unwrap();
        record_max_concurrent(pool, 5).await.unwrap();
        assert_eq!(max_concurrent(pool).await.unwrap(), (5, true));
        // Items in processing order; averages from completed runs.
        sqlx::query(
            "INSERT INTO strategy_run_items (run_id, item, position, score) VALUES ($1, 'MSFT', 1, 2.0), ($1, 'AAPL', 0, 1.0)",
        )
        .bind(high.id)
        .execute(pool)
        .await
        .unwrap();
        let items = run_items(pool, high.id, 10).await.unwrap();
        assert_eq!(
            items.iter().map(|i| i.item.as_str()).collect::<Vec<_>>(),
            vec!["AAPL", "MSFT"]
        );
        sqlx::query(
            "UPDATE strategy_runs SET state = 'completed', finished_at = started_at + interval '4 seconds' WHERE id = $1",
        )
        .bind(high.id)
        .execute(pool)
        .await
        .unwrap();
        let averages = mode_averages(pool).await.unwrap();
        assert!(
            (averages[&RunMode::Alert] - 4.0).abs() < 1e-6,
            "{averages:?}"
        );
        assert!(!averages.contains_key(&RunMode::Backtest));
        db.drop().await;
    }
}
