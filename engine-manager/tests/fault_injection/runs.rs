//! Runs (CONTRACT.md §4) in the fault suite: a small data set and two
//! `sma_crossover` strategies seeded at set-up; runs inserted during the rounds
//! (backtest, screener, alert; mixed priorities; some with a short `timeout_s`;
//! and backtests of a strategy stuck in its set-up, [`SLOW`], which must end
//! `timed_out`) and `cancel` commands for some; run processes SIGKILLed among the faults; and at every
//! checkpoint, the runs against the contract and the process table.

use super::common::{sigkill, try_wait_for, Operator};
use super::Issued;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// `--max-concurrent-runs` of the suite's manager.
pub const MAX_RUNS: usize = 2;
/// The data set: these symbols, [`BARS`] daily bars each.
pub const SYMBOLS: [&str; 4] = ["AAA", "BBB", "CCC", "DDD"];
const BARS: i32 = 300;
/// How long a checkpoint waits for every run to be final or legitimately active.
const RUNS_SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// The strategy whose runs cannot finish within their `timeout_s`: a `heartbeat`
/// that blocks 5 s in `on_start`, its backtests given 1 or 2 s.
pub const SLOW: &str = "run-slow";

/// The securities, their bars and the strategies whose runs the suite inserts.
pub async fn seed(op: &Operator) -> Vec<Uuid> {
    sqlx::query(
        "INSERT INTO securities (symbol, name, sector) \
         SELECT s, s || ' Inc', 'Tech' FROM unnest($1::text[]) s",
    )
    .bind(&SYMBOLS[..])
    .execute(&op.pool)
    .await
    .expect("seed securities");
    // A slow rise with waves, so that the averages cross.
    sqlx::query(
        "INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT s, '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                c - 0.5, c + 1, c - 1, c, 1000 + 40 * i \
         FROM unnest($1::text[]) s, generate_series(0, $2 - 1) i, \
              LATERAL (SELECT 100 + 0.2 * i + 8 * sin(i / 4.0 + ascii(s)) AS c) p",
    )
    .bind(&SYMBOLS[..])
    .bind(BARS)
    .execute(&op.pool)
    .await
    .expect("seed market_bars");
    let mut ids = Vec::new();
    for (i, (fast, slow)) in [(3, 10), (5, 20)].into_iter().enumerate() {
        let config =
            json!({"token": "AAA", "fast_period": fast, "slow_period": slow, "order_qty": 1.0});
        ids.push(
            op.add_strategy(&format!("sma-fault-{i}"), "sma_crossover", config)
                .await,
        );
    }
    let config = json!({"token": "AAA", "start_delay_ms": 5000});
    ids.push(op.add_strategy(SLOW, "heartbeat", config).await);
    ids
}

/// What the run driver did.
#[derive(Default)]
pub struct RunFigures {
    pub inserted: BTreeMap<&'static str, u32>,
    pub inserts_refused: u64,
    pub process_kills: u32,
    pub process_kills_skipped: u32,
}

/// A random run: mode, priority, parameters, `timeout_s`.
fn pick_run(rng: &mut StdRng) -> (&'static str, &'static str, Value, Option<i32>) {
    let mode = ["backtest", "screener", "alert"][rng.random_range(0..3)];
    let priority = ["high", "normal", "normal", "low"][rng.random_range(0..4)];
    let mut params = serde_json::Map::new();
    if mode == "backtest" || rng.random_bool(0.5) {
        // A backtest defaults to the config's token; the others to every symbol.
        let n = rng.random_range(1..=SYMBOLS.len());
        let start = rng.random_range(0..=SYMBOLS.len() - n);
        params.insert("symbols".into(), json!(SYMBOLS[start..start + n]));
    }
    if mode == "backtest" {
        params.insert("fee_bps".into(), json!(rng.random_range(0..10)));
    }
    let timeout = rng.random_bool(0.25).then(|| rng.random_range(1..=2));
    (mode, priority, Value::Object(params), timeout)
}

/// Insert runs and cancel some until `stop` fires; cancels join `issued` (they are
/// commands like the others). The last of `strategies` is [`SLOW`]: its runs are
/// backtests of one symbol with a `timeout_s` of 1 or 2.
pub async fn drive_runs(
    op: Operator,
    strategies: Vec<Uuid>,
    issued: Arc<Mutex<Vec<Issued>>>,
    figures: Arc<Mutex<RunFigures>>,
    seed: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mine: Vec<(Uuid, Uuid)> = Vec::new();
    while !stop.is_cancelled() {
        let pick = rng.random_range(0..strategies.len());
        let strategy = strategies[pick];
        let (mut mode, priority, mut params, mut timeout) = pick_run(&mut rng);
        if pick == strategies.len() - 1 {
            mode = "backtest";
            params = json!({"symbols": ["AAA"]});
            timeout = Some(rng.random_range(1..=2));
        }
        let id = Uuid::new_v4();
        let insert = sqlx::query(
            "INSERT INTO strategy_runs (id, strategy_id, mode, parameters, priority, timeout_s) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(strategy)
        .bind(mode)
        .bind(params)
        .bind(priority)
        .bind(timeout)
        .execute(&op.pool);
        match tokio::time::timeout(Duration::from_secs(3), insert).await {
            Ok(Ok(_)) => {
                mine.push((id, strategy));
                *figures.lock().unwrap().inserted.entry(mode).or_default() += 1;
            }
            _ => figures.lock().unwrap().inserts_refused += 1,
        }
        if !mine.is_empty() && rng.random_bool(0.3) {
            // One run (a recent one, often still queued or running), or now and then
            // every run of a strategy.
            let (run, strategy) = mine[mine.len() - 1 - rng.random_range(0..mine.len().min(4))];
            let (strategy, params) = if rng.random_bool(0.15) {
                (strategy, json!({}))
            } else {
                (strategy, json!({"run_id": run}))
            };
            let cancel = op.try_command(Some(strategy), "cancel", &params);
            match tokio::time::timeout(Duration::from_secs(3), cancel).await {
                Ok(Ok(id)) => issued.lock().unwrap().push(Issued {
                    id,
                    strategy: Some(strategy),
                    word: "cancel",
                    must_fail: false,
                }),
                _ => figures.lock().unwrap().inserts_refused += 1,
            }
        }
        let pause = Duration::from_millis(rng.random_range(150..450));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// SIGKILL one run process of this manager (waiting up to a second for one).
pub async fn kill_a_run_process(runs_dir: &Path, rng: &mut StdRng, figures: &Mutex<RunFigures>) {
    let live = try_wait_for(Duration::from_secs(1), || async {
        let pids: Vec<u32> = engine_manager::process::scan_runs(runs_dir)
            .into_values()
            .flatten()
            .map(|(pid, _)| pid)
            .collect();
        (!pids.is_empty()).then_some(pids)
    })
    .await;
    let mut figures = figures.lock().unwrap();
    match live {
        Some(pids) => {
            sigkill(pids[rng.random_range(0..pids.len())]);
            figures.process_kills += 1;
        }
        None => figures.process_kills_skipped += 1,
    }
}

/// The run processes of this manager alive together at one instant, by run: a scan
/// is not atomic, so each process found is checked again after it (same pid, same
/// start time), and those still alive then were alive together.
pub fn run_processes_together(runs_dir: &Path) -> HashMap<Uuid, Vec<u32>> {
    engine_manager::process::scan_runs(runs_dir)
        .into_iter()
        .filter_map(|(id, procs)| {
            let mut pids: Vec<u32> = procs
                .into_iter()
                .filter(|(pid, ticks)| engine_protocol::procfs::is_same_process(*pid, *ticks))
                .map(|(pid, _)| pid)
                .collect();
            pids.sort_unstable();
            (!pids.is_empty()).then_some((id, pids))
        })
        .collect()
}

/// SIGKILL every run process of this manager.
pub fn kill_all_runs(runs_dir: &Path) {
    for (pid, _) in engine_manager::process::scan_runs(runs_dir)
        .into_values()
        .flatten()
    {
        sigkill(pid);
    }
}

/// A run's row as the checkpoint reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    id: Uuid,
    state: String,
    attempt: i32,
    pid: Option<i32>,
    error: Option<String>,
    has_result: bool,
    /// How many symbols it names (`None`: every active one).
    symbols: Option<i32>,
    items: i64,
    /// The row's `message` and `updated_at`, for a violation's report.
    message: Option<String>,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// A run of [`SLOW`].
    slow: bool,
    timeout_s: Option<i32>,
    /// `finished_at` − `started_at`, in seconds.
    ran_s: Option<f64>,
}

async fn run_rows(op: &Operator) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.state, r.attempt, r.pid, r.error, r.result IS NOT NULL AS has_result, \
                jsonb_array_length(r.parameters->'symbols') AS symbols, \
                (SELECT count(*) FROM strategy_run_items i WHERE i.run_id = r.id) AS items, \
                r.message, r.updated_at, \
                EXISTS (SELECT 1 FROM strategy_configs s WHERE s.id = r.strategy_id AND s.name = $1) AS slow, \
                r.timeout_s, EXTRACT(EPOCH FROM r.finished_at - r.started_at)::float8 AS ran_s \
         FROM strategy_runs r ORDER BY r.created_at",
    )
    .bind(SLOW)
    .fetch_all(&op.pool)
    .await
}

const FINAL: [&str; 4] = ["completed", "error", "cancelled", "timed_out"];

/// What is not settled about one run: `None` when it is final, queued while the
/// slots are full, or running with its process (the row's pid, alone) alive.
fn unsettled(row: &RunRow, active: usize, procs: &HashMap<Uuid, Vec<u32>>) -> Option<String> {
    let live = procs.get(&row.id).cloned().unwrap_or_default();
    let ok = match row.state.as_str() {
        s if FINAL.contains(&s) => live.is_empty(),
        "queued" => active >= MAX_RUNS,
        "running" => row.pid.is_some_and(|p| live == vec![p as u32]),
        _ => false,
    };
    (!ok).then(|| {
        format!(
            "run {} is {} (pid {:?}, attempt {}, message {:?}, updated {}) with {active} runs active; the process table has {live:?}",
            row.id, row.state, row.pid, row.attempt, row.message, row.updated_at
        )
    })
}

/// What is wrong with a run that is settled, by the contract's rules.
fn wrong(row: &RunRow) -> Vec<String> {
    let mut wrong = Vec::new();
    if row.attempt > 1 {
        wrong.push(format!("run {} has attempt {}", row.id, row.attempt));
    }
    match row.state.as_str() {
        "completed" if row.slow => wrong.push(format!(
            "run {} of {SLOW} completed, though it is stuck past its timeout_s {:?}",
            row.id, row.timeout_s
        )),
        "completed" => {
            let expected = row.symbols.map_or(SYMBOLS.len() as i64, i64::from);
            if !row.has_result || row.items != expected {
                wrong.push(format!(
                    "run {} is completed with result {} and {} items for {expected} symbols",
                    row.id,
                    if row.has_result { "set" } else { "missing" },
                    row.items
                ));
            }
        }
        "timed_out" => {
            let limit = f64::from(row.timeout_s.unwrap_or_default());
            if row.ran_s.is_none_or(|ran| ran < limit - 0.01) {
                wrong.push(format!(
                    "run {} timed out after {:?} s, before its timeout_s of {limit}",
                    row.id, row.ran_s
                ));
            }
        }
        // Its parameters are right, so an error is a lost process, after its retry.
        "error" if row.attempt != 1 || !is_lost(row) => wrong.push(format!(
            "run {} is error at attempt {}: {:?}",
            row.id, row.attempt, row.error
        )),
        _ => {}
    }
    wrong
}

fn is_lost(row: &RunRow) -> bool {
    row.error
        .as_deref()
        .is_some_and(|e| e.contains("ended without a result"))
}

/// The checkpoint for runs (after the commands drained): every run settles within
/// [`RUNS_SETTLE_DEADLINE`], and the settled ones are right; every `cancel` that
/// ended `executed` cancelled its run. Returns the seconds it took to settle. A
/// violation already in `reported` (seen at an earlier checkpoint) is not repeated.
pub async fn checkpoint(
    round: usize,
    op: &Operator,
    runs_dir: &Path,
    reported: &mut HashSet<String>,
    violations: &mut Vec<String>,
) -> f64 {
    let t0 = tokio::time::Instant::now();
    let check = |rows: &[RunRow], procs: &HashMap<Uuid, Vec<u32>>| {
        let active = rows
            .iter()
            .filter(|r| matches!(r.state.as_str(), "starting" | "running"))
            .count();
        rows.iter()
            .filter_map(|r| unsettled(r, active, procs))
            .collect::<Vec<String>>()
    };
    let settled = try_wait_for(RUNS_SETTLE_DEADLINE, || async {
        let rows = run_rows(op).await.ok()?;
        let procs = run_processes_together(runs_dir);
        check(&rows, &procs).is_empty().then_some(rows)
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let rows = match settled {
        Some(rows) => rows,
        None => {
            let rows = run_rows(op).await.unwrap_or_default();
            let procs = run_processes_together(runs_dir);
            violations.push(format!(
                "round {round}: runs not settled within {RUNS_SETTLE_DEADLINE:?}: {}",
                check(&rows, &procs).join("; ")
            ));
            rows
        }
    };
    let mut found: Vec<String> = rows.iter().flat_map(wrong).collect();
    found.extend(wrong_cancels(op).await);
    for w in found {
        if reported.insert(w.clone()) {
            violations.push(format!("round {round}: {w}"));
        }
    }
    secs
}

/// `cancel` commands that ended `executed` while their run is not `cancelled`, and
/// ones that failed for another reason than the run having ended (or, for a cancel
/// of every run, one of them having ended).
async fn wrong_cancels(op: &Operator) -> Vec<String> {
    let rows: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT c.id, c.status, c.error, r.state FROM strategy_commands c \
         LEFT JOIN strategy_runs r ON r.id = (c.parameters->>'run_id')::uuid \
         WHERE c.command = 'cancel' AND c.status IN ('executed', 'failed')",
    )
    .fetch_all(&op.pool)
    .await
    .unwrap_or_default();
    let mut wrong = Vec::new();
    for (id, status, error, state) in rows {
        let bad = match status.as_str() {
            "executed" => state.as_deref().is_some_and(|s| s != "cancelled"),
            _ => !error.as_deref().is_some_and(|e| e.contains("is already")),
        };
        if bad {
            wrong.push(format!(
                "cancel {id} ended {status} ({error:?}) with its run {state:?}"
            ));
        }
    }
    wrong
}

/// The runs as they ended: per state, and how many were tried again.
pub async fn final_figures(op: &Operator) -> (BTreeMap<String, i64>, i64) {
    let per_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM strategy_runs GROUP BY state")
            .fetch_all(&op.pool)
            .await
            .unwrap_or_default();
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_runs WHERE attempt >= 1")
        .fetch_one(&op.pool)
        .await
        .unwrap_or_default();
    (per_state.into_iter().collect(), retried)
}
