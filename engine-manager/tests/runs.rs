//! Runs (CONTRACT.md §4) through a real manager, PostgreSQL, Redis and processes:
//! states, items, events and alerts; parameter errors; cancel while queued and
//! while running; timeout; the queue's limit and priority; a run's process lost
//! (retried once, then `error`); a manager SIGKILLed with runs queued and running;
//! a deleted strategy; and each mode end to end with the real `strategy-executor`.
//!
//! The manager's side is tested with a stand-in run process (`fake_run.py`, written
//! by [`fake_executor`]): it reads the `RunInput`, counts the bars of each symbol in
//! the bars file (so the file the manager wrote is checked), and writes outbox lines
//! at a pace its config sets (`fake`: `item_ms`, `die` = `once`/`always`, `error`).

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{
    manager_env, process_alive, sigkill, spawn_manager_binary, wait_for, wait_lease, TestEngine,
    DEADLINE,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

// ------------------------------------------------------------------ the harness

/// The stand-in run process (see the module documentation).
const FAKE_RUN: &str = r#"#!/usr/bin/python3
import fcntl, json, os, struct, sys, time
args = sys.argv[1:]
run_id = args[args.index('--run-id') + 1]
runs_dir = args[args.index('--runs-dir') + 1]
inp = json.load(sys.stdin)
fake = inp['config'].get('fake', {})
with open(os.path.join(runs_dir, run_id + '.starts'), 'a') as f:
    f.write('%d\n' % os.getpid())
with open(os.path.join(runs_dir, run_id + '.starts')) as f:
    starts = len(f.read().split())
counts = {}
for path in [inp['bars_path']] + inp.get('more_bars_paths', []):
    with open(path, 'rb') as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # the manager's COPY holds it until the file is whole
        data = f.read()
    assert data[:11] == b'PGCOPY\n\xff\r\n\x00', 'not a binary COPY file'
    pos = 15
    ext, = struct.unpack('>i', data[pos:pos + 4]); pos += 4 + ext
    while True:
        n, = struct.unpack('>h', data[pos:pos + 2]); pos += 2
        if n == -1:
            break
        ln, = struct.unpack('>i', data[pos:pos + 4]); pos += 4
        sym = data[pos:pos + ln].decode(); pos += ln
        for _ in range(n - 1):
            ln, = struct.unpack('>i', data[pos:pos + 4]); pos += 4 + ln
        counts[sym] = counts.get(sym, 0) + 1
out = open(inp['outbox_path'], 'a')
def emit(**kw):
    out.write(json.dumps(kw) + '\n'); out.flush()
symbols = [s['symbol'] for s in inp['symbols']]
emit(type='started', pid=os.getpid(), total_items=len(symbols))
if fake.get('die') == 'always' or (fake.get('die') == 'once' and starts == 1):
    print('fake: dying without a result', flush=True)
    os._exit(3)
if 'error' in fake:
    emit(type='error', error=fake['error'])
    sys.exit(0)
for i, s in enumerate(symbols):
    emit(type='progress', stage='evaluating', progress_percent=100.0 * i / len(symbols),
         completed_items=i, total_items=len(symbols), current_item=s)
    time.sleep(fake.get('item_ms', 0) / 1000.0)
    if inp['mode'] == 'alert':
        emit(type='alert', symbol=s, alert_type='signal', message=s + ' fired', priority='high',
             timestamp='2024-01-01T00:00:00Z')
    emit(type='item', item=s, position=i, passed=True, score=float(counts.get(s, 0)),
         detail={'bars': counts.get(s, 0)})
emit(type='stage_completed', stage='evaluating')
emit(type='result', result={'counts': counts, 'symbols': symbols, 'interval_s': inp['interval_s'],
     'start': inp['start'], 'end': inp['end'], 'limit': inp['limit'], 'fee_bps': inp['fee_bps'],
     'initial_capital': inp['initial_capital'], 'threshold': inp['threshold']})
"#;

/// Write the stand-in run process into `dir`; its path. (The system's Python, not
/// `env python3`: a pyenv shim is a shell script that forks with the same command
/// line, which would look like more than one process per run.)
fn fake_executor(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake_run.py");
    std::fs::write(&path, FAKE_RUN).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A test engine whose runs use `executor` (the fake, or the real one), with at most
/// `slots` runs at once. The manager is not started yet.
async fn engine_with(slots: u32, fake: bool) -> TestEngine {
    let mut engine = TestEngine::new().await;
    if fake {
        engine.config.executor_path = Some(fake_executor(&engine.state_dir));
    }
    engine.config.max_concurrent_runs = slots;
    engine
}

fn runs_dir(engine: &TestEngine) -> PathBuf {
    engine.config.runs_dir()
}

/// SIGKILL every run process of this engine (a test's own leftovers).
fn kill_runs(engine: &TestEngine) {
    for (_, procs) in engine_manager::process::scan_runs(&runs_dir(engine)) {
        for (pid, _) in procs {
            sigkill(pid);
        }
    }
}

/// The live run processes of this engine, by run.
fn run_processes(engine: &TestEngine) -> Vec<(Uuid, u32)> {
    let mut found = Vec::new();
    for (id, procs) in engine_manager::process::scan_runs(&runs_dir(engine)) {
        found.extend(procs.into_iter().map(|(pid, _)| (id, pid)));
    }
    found
}

/// `symbols` in `securities` with `days` daily bars each from 2024-01-01 (a slow
/// rise with waves, so that averages cross), and one inactive symbol of minute bars
/// (`MIN1`, 300 bars).
async fn seed_bars(pool: &PgPool, symbols: &[&str], days: i32) {
    sqlx::query(
        "INSERT INTO securities (symbol, name, sector) \
         SELECT s, s || ' Inc', 'Tech' FROM unnest($1::text[]) s",
    )
    .bind(symbols)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT s, '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                c - 0.5, c + 1, c - 1, c, 1000 + 500 * (i % 5) + 40 * i \
         FROM unnest($1::text[]) s, generate_series(0, $2 - 1) i, \
              LATERAL (SELECT 100 + 0.2 * i + 8 * sin(i / 4.0 + ascii(s)) AS c) p",
    )
    .bind(symbols)
    .bind(days)
    .execute(pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "INSERT INTO securities (symbol, active) VALUES ('MIN1', false); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT 'MIN1', '1m', '2024-03-01T00:00:00Z'::timestamptz + make_interval(mins => i), \
                50, 51, 49, 50 + (i % 11) - 5, 10 FROM generate_series(0, 299) i",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn add_strategy(engine: &TestEngine, name: &str, strategy_type: &str, config: Value) -> Uuid {
    engine
        .add_strategy(name, strategy_type, config, false)
        .await
}

/// Insert a run (with its id chosen here, so a test can subscribe first).
async fn insert_run(
    pool: &PgPool,
    id: Uuid,
    strategy: Uuid,
    mode: &str,
    parameters: Value,
    timeout_s: Option<i32>,
) -> Uuid {
    sqlx::query(
        "INSERT INTO strategy_runs (id, strategy_id, mode, parameters, timeout_s) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(strategy)
    .bind(mode)
    .bind(parameters)
    .bind(timeout_s)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn new_run(pool: &PgPool, strategy: Uuid, mode: &str, parameters: Value) -> Uuid {
    insert_run(pool, Uuid::new_v4(), strategy, mode, parameters, None).await
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RunRow {
    state: String,
    error: Option<String>,
    attempt: i32,
    pid: Option<i32>,
    result: Option<Value>,
    config: Option<Value>,
    progress_percent: f64,
    completed_items: Option<i64>,
    total_items: Option<i64>,
    stage: Option<String>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn run_row(pool: &PgPool, id: Uuid) -> RunRow {
    try_run_row(pool, id).await.expect("run row")
}

/// The run's row; `None` while the database is away.
async fn try_run_row(pool: &PgPool, id: Uuid) -> Option<RunRow> {
    sqlx::query_as(
        "SELECT state, error, attempt, pid, result, config, progress_percent, completed_items, \
                total_items, stage, started_at, finished_at FROM strategy_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .ok()
}

/// Wait until the run's row satisfies `pred`.
async fn wait_run(pool: &PgPool, id: Uuid, what: &str, pred: impl Fn(&RunRow) -> bool) -> RunRow {
    wait_for(&format!("run {id} {what}"), DEADLINE, || async {
        let row = run_row(pool, id).await;
        pred(&row).then_some(row)
    })
    .await
}

async fn wait_state(pool: &PgPool, id: Uuid, state: &str) -> RunRow {
    wait_run(pool, id, &format!("to be {state}"), |r| r.state == state).await
}

/// The run's items: (item, position, score, detail).
async fn items(pool: &PgPool, id: Uuid) -> Vec<(String, Option<i32>, Option<f64>, Option<Value>)> {
    sqlx::query_as(
        "SELECT item, position, score, detail FROM strategy_run_items WHERE run_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Insert a cancel command; its final (status, error).
async fn cancel(
    engine: &TestEngine,
    strategy: Uuid,
    run: Option<Uuid>,
) -> (String, Option<String>) {
    let params = match run {
        Some(id) => json!({"run_id": id.to_string()}),
        None => json!({}),
    };
    let id = engine.command(Some(strategy), "cancel", params).await;
    let out = engine.outcome(id).await;
    (out.status, out.error)
}

/// A started engine (two slots, the fake) with symbol `AAA` and a strategy whose
/// runs take 30 s per symbol.
async fn started_with_a_slow_strategy() -> (TestEngine, Uuid) {
    let mut engine = engine_with(2, true).await;
    seed_bars(&engine.pool, &["AAA"], 10).await;
    let slow = add_strategy(
        &engine,
        "slow",
        "sma_crossover",
        json!({"fake": {"item_ms": 30000}}),
    )
    .await;
    engine.start_manager().await;
    (engine, slow)
}

/// The most of `times` (seconds) within any one second.
fn most_in_a_second(times: &[f64]) -> usize {
    times
        .iter()
        .map(|t| times.iter().filter(|u| **u >= *t && **u < *t + 1.0).count())
        .max()
        .unwrap_or(0)
}

async fn finish(engine: TestEngine) {
    kill_runs(&engine);
    engine.finish().await;
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_through_its_states_with_items_events_and_alerts() {
    let mut engine = engine_with(2, true).await;
    seed_bars(&engine.pool, &["AAA", "BBB", "CCC"], 40).await;
    let strategy = add_strategy(
        &engine,
        "scan",
        "sma_crossover",
        json!({"token": "AAA", "fast": 5, "fake": {"item_ms": 30}}),
    )
    .await;
    engine.start_manager().await;
    let id = Uuid::new_v4();
    let mut events = engine.subscribe(&engine.channels.run(id)).await;
    let mut alerts = engine.subscribe(&engine.channels.alerts()).await;
    insert_run(
        &engine.pool,
        id,
        strategy,
        "alert",
        json!({"threshold": 60, "config": {"fast": 3}}),
        None,
    )
    .await;

    let first = events.expect("the first run event", |_, _| true).await;
    assert_eq!(first["event_type"], "started", "{first}");
    assert_eq!(first["state"], "running");
    assert_eq!(first["run_id"], id.to_string());
    assert_eq!(first["strategy_id"], strategy.to_string());
    assert_eq!(first["name"], "scan");
    assert_eq!(first["mode"], "alert");
    assert_eq!(first["total_items"], 3);
    let row = run_row(&engine.pool, id).await;
    assert!(
        matches!(row.state.as_str(), "running" | "completed"),
        "the row is running by the first event: {row:?}"
    );

    for symbol in ["AAA", "BBB", "CCC"] {
        let alert = alerts
            .expect(&format!("the alert of {symbol}"), |_, m| {
                m["symbol"] == symbol
            })
            .await;
        assert_eq!(alert["run_id"], id.to_string());
        assert_eq!(alert["strategy_id"], strategy.to_string());
        assert_eq!(alert["name"], "scan");
        assert_eq!(alert["type"], "signal");
        assert_eq!(alert["message"], format!("{symbol} fired"));
        assert_eq!(alert["priority"], "high");
    }
    events
        .expect("a ticker_completed event", |_, m| {
            m["event_type"] == "ticker_completed"
        })
        .await;
    events
        .expect("a stage_completed event", |_, m| {
            m["event_type"] == "stage_completed"
        })
        .await;
    let last = events
        .expect("the final event", |_, m| m["event_type"] == "completed")
        .await;
    assert_eq!(last["state"], "completed");
    assert_eq!(last["progress_percent"], 100.0);

    let row = wait_state(&engine.pool, id, "completed").await;
    assert_eq!(row.error, None);
    assert_eq!(row.attempt, 0);
    assert_eq!(row.progress_percent, 100.0);
    assert_eq!(row.stage.as_deref(), Some("evaluating"));
    assert_eq!((row.completed_items, row.total_items), (Some(3), Some(3)));
    assert!(row.started_at.is_some() && row.finished_at.is_some());
    // The config snapshot: the strategy's, with parameters.config merged in.
    assert_eq!(
        row.config.unwrap(),
        json!({"token": "AAA", "fast": 3, "fake": {"item_ms": 30}})
    );
    let result = row.result.unwrap();
    // Alert runs default to every active symbol (MIN1 is inactive), over the last
    // two years of the bars there are: all 40 daily bars of each.
    assert_eq!(result["symbols"], json!(["AAA", "BBB", "CCC"]));
    assert_eq!(result["counts"], json!({"AAA": 40, "BBB": 40, "CCC": 40}));
    assert_eq!(result["interval_s"], 86_400);
    assert_eq!(result["threshold"], 60.0);
    let items = items(&engine.pool, id).await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].0, "BBB");
    assert_eq!(items[1].1, Some(1));
    assert_eq!(items[1].3, Some(json!({"bars": 40})));
    // The bars and the outbox are removed; the log stays.
    let dir = runs_dir(&engine);
    assert!(!dir.join(format!("{id}.bars")).exists());
    assert!(!dir.join(format!("{id}.out")).exists());
    assert!(dir.join(format!("{id}.log")).exists());
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_resolved_and_bad_ones_end_the_run_before_any_work() {
    let mut engine = engine_with(2, true).await;
    seed_bars(&engine.pool, &["AAA", "BBB"], 30).await;
    let strategy = add_strategy(&engine, "bt", "sma_crossover", json!({"token": "BBB"})).await;
    engine.start_manager().await;
    let pool = engine.pool.clone();

    // A backtest defaults to the config's token; dates are inclusive days.
    let id = new_run(
        &pool,
        strategy,
        "backtest",
        json!({"start": "2024-01-05", "end": "2024-01-14", "fee_bps": 5, "initial_capital": 500}),
    )
    .await;
    let result = wait_state(&pool, id, "completed").await.result.unwrap();
    assert_eq!(result["symbols"], json!(["BBB"]));
    assert_eq!(result["counts"], json!({"BBB": 10}));
    assert_eq!(
        (
            result["fee_bps"].as_f64(),
            result["initial_capital"].as_f64()
        ),
        (Some(5.0), Some(500.0))
    );
    // An inactive symbol may be named; minute bars at 1m.
    let id = new_run(
        &pool,
        strategy,
        "backtest",
        json!({"symbols": ["MIN1"], "interval": "1m"}),
    )
    .await;
    let result = wait_state(&pool, id, "completed").await.result.unwrap();
    assert_eq!(result["counts"], json!({"MIN1": 300}));
    assert_eq!(result["interval_s"], 60);
    // A screener's limit defaults to 100.
    let id = new_run(
        &pool,
        strategy,
        "screener",
        json!({"symbols": ["AAA", "BBB"]}),
    )
    .await;
    assert_eq!(
        wait_state(&pool, id, "completed").await.result.unwrap()["limit"],
        100
    );

    let cases = [
        ("backtest", json!({"limit": 5}), "unknown parameter 'limit' for a backtest run; allowed: symbols, start, end, interval, initial_capital, fee_bps, config"),
        ("screener", json!({"symbols": "AAA"}), "parameters.symbols must be an array of symbols"),
        ("backtest", json!({"fee_bps": "5"}), "parameters.fee_bps must be a number of basis points from 0 to 10000, got \"5\""),
        ("backtest", json!({"symbols": ["AAA", "NOPE"]}), "unknown symbol NOPE: not in securities"),
        ("backtest", json!({"start": "2024-02-01", "end": "2024-01-01"}), "the date range is empty: start 2024-02-01 00:00:00 UTC is after end 2024-01-01 23:59:59.999999 UTC"),
        ("backtest", json!({"start": "2023-01-01", "end": "2023-06-30"}), "no 1d bars of BBB between 2023-01-01 00:00:00 UTC and 2023-06-30 23:59:59.999999 UTC; the bars there are run from 2024-01-01"),
        ("screener", json!({"interval": "1h"}), "no 1h bars for AAA and BBB; the intervals with bars of them are: 1d (2 symbols)"),
        ("alert", json!({"interval": "daily"}), "parameters.interval 'daily' is not a bar size"),
        ("alert", json!({"threshold": [1]}), "parameters.threshold must be a number, got [1]"),
        ("screener", json!({"limit": 0}), "parameters.limit must be a whole number of at least 1, got 0"),
        ("backtest", json!({"config": "fast=3"}), "parameters.config must be an object"),
        ("backtest", json!({"start": "last week"}), "parameters.start must be a date (2024-01-31) or an RFC 3339 time"),
    ];
    for (mode, params, want) in cases {
        let id = new_run(&pool, strategy, mode, params.clone()).await;
        let row = wait_run(&pool, id, "to end", |r| {
            r.state != "queued" && r.state != "starting"
        })
        .await;
        assert_eq!(row.state, "error", "{mode} {params}: {row:?}");
        let error = row.error.unwrap();
        assert!(error.contains(want), "{mode} {params}: {error}");
        assert_eq!(row.pid, None, "no process was started for {params}");
        assert!(items(&pool, id).await.is_empty());
    }
    // Bad values refused by the schema at INSERT.
    for (columns, values) in [
        ("mode", "'replay'"),
        ("mode, priority", "'backtest', 'urgent'"),
        ("mode, timeout_s", "'backtest', 0"),
        ("mode, state", "'backtest', 'running'"),
    ] {
        let sql =
            format!("INSERT INTO strategy_runs (strategy_id, {columns}) VALUES ($1, {values})");
        let refused = sqlx::query(&sql).bind(strategy).execute(&pool).await;
        assert!(refused.is_err(), "({columns}) = ({values}) was accepted");
    }
    // The manager serves the next run.
    let id = new_run(&pool, strategy, "alert", json!({"symbols": ["AAA"]})).await;
    wait_state(&pool, id, "completed").await;
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_queued_and_while_running_and_after_the_end() {
    let mut engine = engine_with(1, true).await;
    seed_bars(&engine.pool, &["AAA", "BBB", "CCC"], 10).await;
    let slow = add_strategy(
        &engine,
        "slow",
        "sma_crossover",
        json!({"fake": {"item_ms": 20000}}),
    )
    .await;
    engine.start_manager().await;
    let pool = engine.pool.clone();
    let running = new_run(&pool, slow, "screener", json!({})).await;
    let queued = new_run(&pool, slow, "screener", json!({})).await;
    let row = wait_state(&pool, running, "running").await;
    let pid = row.pid.unwrap() as u32;
    assert_eq!(run_row(&pool, queued).await.state, "queued", "one slot");

    // While queued.
    let mut events = engine.subscribe(&engine.channels.run(queued)).await;
    assert_eq!(
        cancel(&engine, slow, Some(queued)).await,
        ("executed".to_string(), None)
    );
    let row = run_row(&pool, queued).await;
    assert_eq!(row.state, "cancelled");
    assert!(row.error.unwrap().contains("cancelled by command"));
    let event = events
        .expect("the cancelled event", |_, m| m["event_type"] == "cancelled")
        .await;
    assert_eq!(event["state"], "cancelled");
    // While running: executed once the run is cancelled and its process is gone.
    assert_eq!(
        cancel(&engine, slow, Some(running)).await,
        ("executed".to_string(), None)
    );
    assert!(
        !process_alive(pid),
        "the run's process is gone when the cancel is executed"
    );
    assert_eq!(run_row(&pool, running).await.state, "cancelled");
    assert!(run_processes(&engine).is_empty());
    // After the end, an unknown run, and another strategy's run.
    let (status, error) = cancel(&engine, slow, Some(running)).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains(&format!(
        "run {running} is already cancelled; only a queued or running run can be cancelled"
    )));
    let unknown = Uuid::new_v4();
    let (status, error) = cancel(&engine, slow, Some(unknown)).await;
    assert_eq!(
        (status.as_str(), error.unwrap()),
        (
            "failed",
            format!("unknown run {unknown}: no row in strategy_runs has it")
        )
    );
    let other = add_strategy(
        &engine,
        "other",
        "sma_crossover",
        json!({"fake": {"item_ms": 20000}}),
    )
    .await;
    let (status, error) = cancel(&engine, other, Some(running)).await;
    assert_eq!(status, "failed");
    assert!(error
        .unwrap()
        .contains(&format!("belongs to strategy {slow}")));

    // Without run_id: every queued and running run of the strategy, no other's.
    let a = new_run(&pool, slow, "screener", json!({})).await;
    let b = new_run(&pool, slow, "screener", json!({})).await;
    let c = new_run(&pool, other, "screener", json!({})).await;
    wait_state(&pool, a, "running").await;
    assert_eq!(
        cancel(&engine, slow, None).await,
        ("executed".to_string(), None)
    );
    assert_eq!(run_row(&pool, a).await.state, "cancelled");
    assert_eq!(run_row(&pool, b).await.state, "cancelled");
    wait_state(&pool, c, "running").await;
    // A cancel does not wait behind the strategy's other commands (its start here).
    let started = engine.command(Some(other), "start", json!({})).await;
    assert_eq!(
        cancel(&engine, other, Some(c)).await,
        ("executed".to_string(), None)
    );
    engine.outcome(started).await;
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_ends_timed_out() {
    let (engine, slow) = started_with_a_slow_strategy().await;
    let id = Uuid::new_v4();
    let mut events = engine.subscribe(&engine.channels.run(id)).await;
    insert_run(
        &engine.pool,
        id,
        slow,
        "backtest",
        json!({"symbols": ["AAA"]}),
        Some(1),
    )
    .await;
    let pid = wait_state(&engine.pool, id, "running").await.pid.unwrap() as u32;
    let row = wait_state(&engine.pool, id, "timed_out").await;
    assert!(row
        .error
        .unwrap()
        .contains("the run took longer than its timeout_s of 1 s"));
    let elapsed = row.finished_at.unwrap() - row.started_at.unwrap();
    assert!(elapsed < chrono::TimeDelta::seconds(5), "{elapsed}");
    assert!(!process_alive(pid));
    events
        .expect("the timed_out event", |_, m| m["event_type"] == "timed_out")
        .await;
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_its_strategys_limits_in_a_group_removed_after_it() {
    if !common::cgroups::cgroup_v1_here() {
        return;
    }
    let mut engine = engine_with(2, true).await;
    engine.config.limits_mechanism = engine_manager::limits::MechanismChoice::CgroupV1;
    seed_bars(&engine.pool, &["AAA"], 10).await;
    let slow = add_strategy(
        &engine,
        "limited",
        "sma_crossover",
        json!({"fake": {"item_ms": 30000}}),
    )
    .await;
    sqlx::query(
        "UPDATE strategy_configs SET limits = '{\"memory_mb\": 128, \"pids\": 64}' WHERE id = $1",
    )
    .bind(slow)
    .execute(&engine.pool)
    .await
    .unwrap();
    engine.start_manager().await;
    let id = new_run(&engine.pool, slow, "backtest", json!({"symbols": ["AAA"]})).await;
    let pid = wait_state(&engine.pool, id, "running").await.pid.unwrap() as u32;
    let (memory, pids) = (
        common::cgroups::v1_group("memory", id),
        common::cgroups::v1_group("pids", id),
    );
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(read(&memory, "memory.limit_in_bytes").trim(), "134217728");
    assert_eq!(read(&pids, "pids.max").trim(), "64");
    assert!(
        read(&memory, "cgroup.procs")
            .lines()
            .any(|p| p == pid.to_string()),
        "run process {pid} not in its group"
    );
    cancel(&engine, slow, Some(id)).await;
    wait_for(
        "the run's group removed after its exit",
        DEADLINE,
        || async { (!memory.exists()).then_some(()) },
    )
    .await;
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_keeps_its_limit_and_its_priorities() {
    let mut engine = engine_with(2, true).await;
    seed_bars(&engine.pool, &["AAA", "BBB"], 10).await;
    let strategy = add_strategy(
        &engine,
        "q",
        "sma_crossover",
        json!({"fake": {"item_ms": 150}}),
    )
    .await;
    let pool = engine.pool.clone();
    // Queued before the manager starts, in one statement: low first, high last.
    let ids: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO strategy_runs (strategy_id, mode, priority, created_at) \
         SELECT $1, 'screener', p, now() + make_interval(secs => i / 100.0) \
         FROM unnest(ARRAY['low', 'low', 'normal', 'normal', 'high', 'high', 'low']) WITH ORDINALITY AS t(p, i) \
         RETURNING id, priority",
    )
    .bind(strategy)
    .fetch_all(&pool)
    .await
    .unwrap();
    engine.start_manager().await;
    let sampling = async {
        let mut most = (0i64, 0usize);
        loop {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM strategy_runs WHERE state IN ('starting', 'running')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            let procs = run_processes(&engine).len();
            most = (most.0.max(active), most.1.max(procs));
            let unfinished: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_runs WHERE state IN ('queued', 'starting', 'running')")
                .fetch_one(&pool)
                .await
                .unwrap();
            if unfinished == 0 {
                return most;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (rows, processes) = tokio::time::timeout(DEADLINE, sampling)
        .await
        .expect("every run ends");
    assert!(rows <= 2, "{rows} runs were starting or running at once");
    assert!(processes <= 2, "{processes} run processes at once");
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT priority FROM strategy_runs WHERE state = 'completed' ORDER BY started_at, seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        order,
        ["high", "high", "normal", "normal", "low", "low", "low"],
        "{ids:?}"
    );
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_process_is_retried_once_then_the_run_ends_error() {
    let (engine, slow) = started_with_a_slow_strategy().await;
    let once = add_strategy(
        &engine,
        "once",
        "sma_crossover",
        json!({"fake": {"die": "once"}}),
    )
    .await;
    let pool = engine.pool.clone();

    // A process that dies by itself without a result: the second attempt completes.
    let id = new_run(&pool, once, "screener", json!({"symbols": ["AAA"]})).await;
    let row = wait_state(&pool, id, "completed").await;
    assert_eq!(row.attempt, 1);
    assert_eq!(items(&pool, id).await.len(), 1);

    // SIGKILLed twice: retried once, then `error` saying why.
    let id = new_run(&pool, slow, "backtest", json!({"symbols": ["AAA"]})).await;
    let first = wait_state(&pool, id, "running").await.pid.unwrap();
    sigkill(first as u32);
    let second = wait_run(&pool, id, "to run again", |r| {
        r.state == "running" && r.attempt == 1 && r.pid.is_some_and(|p| p != first)
    })
    .await;
    sigkill(second.pid.unwrap() as u32);
    let row = wait_state(&pool, id, "error").await;
    assert_eq!(row.attempt, 1);
    let error = row.error.unwrap();
    assert!(
        error.contains(
            "ended without a result (killed by signal 9 (SIGKILL)) on its second attempt"
        ),
        "{error}"
    );
    assert!(run_processes(&engine).is_empty());
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_strategy_takes_its_runs_and_their_processes_with_it() {
    let (engine, slow) = started_with_a_slow_strategy().await;
    let id = new_run(&engine.pool, slow, "screener", json!({})).await;
    let pid = wait_state(&engine.pool, id, "running").await.pid.unwrap() as u32;
    sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(slow)
        .execute(&engine.pool)
        .await
        .unwrap();
    wait_for(
        "the deleted strategy's run process to be killed",
        DEADLINE,
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    // The slot is free again.
    let other = add_strategy(&engine, "next", "sma_crossover", json!({})).await;
    let next = new_run(&engine.pool, other, "screener", json!({})).await;
    wait_state(&engine.pool, next, "completed").await;
    finish(engine).await;
}

/// One run slot, four symbols of 10 daily bars, and a strategy whose (fake) run
/// takes 700 ms a symbol: long enough to kill its manager midway.
async fn slowish_engine() -> (TestEngine, Uuid) {
    let engine = engine_with(1, true).await;
    seed_bars(&engine.pool, &["AAA", "BBB", "CCC", "DDD"], 10).await;
    let strategy = add_strategy(
        &engine,
        "slowish",
        "sma_crossover",
        json!({"fake": {"item_ms": 700}}),
    )
    .await;
    (engine, strategy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_sigkilled_with_runs_queued_and_running_adopts_them() {
    let (engine, strategy) = slowish_engine().await;
    let pool = engine.pool.clone();
    let mut env = manager_env(&engine.config);
    env.push(("ENGINE_MAX_CONCURRENT_RUNS".to_string(), "1".to_string()));
    let log = engine.state_dir.join("manager.log");
    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let running = new_run(&pool, strategy, "screener", json!({})).await;
    let queued = new_run(&pool, strategy, "screener", json!({})).await;
    let pid = wait_state(&pool, running, "running").await.pid.unwrap() as u32;
    wait_for("the first item", DEADLINE, || async {
        (!items(&pool, running).await.is_empty()).then_some(())
    })
    .await;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    assert!(process_alive(pid), "a run outlives its manager");

    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let row = wait_state(&pool, running, "completed").await;
    assert_eq!(row.attempt, 0, "adopted, not run again");
    assert_eq!(
        row.result.unwrap()["counts"],
        json!({"AAA": 10, "BBB": 10, "CCC": 10, "DDD": 10})
    );
    assert_eq!(items(&pool, running).await.len(), 4);
    let row = wait_state(&pool, queued, "completed").await;
    assert_eq!(row.attempt, 0);
    for id in [running, queued] {
        let starts =
            std::fs::read_to_string(runs_dir(&engine).join(format!("{id}.starts"))).unwrap();
        assert_eq!(starts.lines().count(), 1, "run {id} started once: {starts}");
    }

    // SIGKILLed again, and the run's process too while no manager watches: the next
    // manager reads what it wrote and starts it once more.
    let again = new_run(&pool, strategy, "screener", json!({})).await;
    let pid = wait_state(&pool, again, "running").await.pid.unwrap() as u32;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    sigkill(pid);
    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let row = wait_state(&pool, again, "completed").await;
    assert_eq!(row.attempt, 1);

    // And a run that finishes while no manager watches: its result line completes it.
    let quick = add_strategy(
        &engine,
        "quick",
        "sma_crossover",
        json!({"fake": {"item_ms": 200}}),
    )
    .await;
    let finished = new_run(&pool, quick, "screener", json!({})).await;
    let pid = wait_state(&pool, finished, "running").await.pid.unwrap() as u32;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    wait_for("the run's process to end by itself", DEADLINE, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    let manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let row = wait_state(&pool, finished, "completed").await;
    assert_eq!(row.attempt, 0, "read from its outbox, not run again");
    assert_eq!(items(&pool, finished).await.len(), 4);
    drop(manager);
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_the_row_at_most_4_times_and_redis_at_most_10_times_a_second() {
    let mut engine = engine_with(1, true).await;
    let symbols: Vec<String> = (0..60).map(|i| format!("S{i:02}")).collect();
    let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
    seed_bars(&engine.pool, &symbols, 5).await;
    let busy = add_strategy(
        &engine,
        "busy",
        "sma_crossover",
        json!({"fake": {"item_ms": 25}}),
    )
    .await;
    // Every write of a run's row, counted by the database itself.
    sqlx::raw_sql(
        "CREATE TABLE run_writes (at timestamptz NOT NULL DEFAULT clock_timestamp()); \
         CREATE FUNCTION count_run_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN INSERT INTO run_writes DEFAULT VALUES; RETURN NEW; END $$; \
         CREATE TRIGGER count_run_write AFTER UPDATE ON strategy_runs \
           FOR EACH ROW EXECUTE FUNCTION count_run_write();",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    engine.start_manager().await;
    let id = Uuid::new_v4();
    let mut events = engine.subscribe(&engine.channels.run(id)).await;
    insert_run(&engine.pool, id, busy, "screener", json!({}), None).await;
    let mut progress = Vec::new();
    loop {
        let event = events.expect("an event", |_, _| true).await;
        match event["event_type"].as_str() {
            Some("progress") => progress.push(tokio::time::Instant::now()),
            Some("completed") => break,
            _ => {}
        }
    }
    let row = wait_state(&engine.pool, id, "completed").await;
    let span = (row.finished_at.unwrap() - row.started_at.unwrap()).as_seconds_f64();
    assert!(span > 1.4, "60 symbols at 25 ms take 1.5 s: {span}");
    assert_eq!(items(&engine.pool, id).await.len(), 60);
    // The fake writes a progress line per symbol (40 a second).
    // Seconds since the run's start, from both clocks.
    let start = progress
        .first()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now);
    let events: Vec<f64> = progress
        .iter()
        .map(|t| (*t - start).as_secs_f64())
        .collect();
    assert!(events.len() >= 5, "progress events: {}", events.len());
    let most = most_in_a_second(&events);
    assert!(most <= 11, "{most} progress events in a second");
    let writes: Vec<f64> =
        sqlx::query_scalar("SELECT extract(epoch FROM at)::float8 FROM run_writes ORDER BY at")
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    let most = most_in_a_second(&writes);
    // claim, running, at most 4 progress writes, and the final write.
    assert!(
        most <= 7,
        "{most} writes of the row in a second: {writes:?}"
    );
    finish(engine).await;
}

// ------------------------------------------------------- with the real executor

/// The keys a backtest's `performance_metrics` has (CONTRACT.md §4), each present
/// (a number or null).
const METRICS: [&str; 11] = [
    "average_return",
    "hit_rate",
    "sharpe_ratio",
    "sortino_ratio",
    "calmar_ratio",
    "total_return",
    "cagr",
    "max_drawdown",
    "profit_factor",
    "expectancy",
    "exposure",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_end_to_end_with_the_real_executor() {
    let mut engine = engine_with(2, false).await;
    seed_bars(&engine.pool, &["AAA", "BBB", "CCC"], 300).await;
    let sma = add_strategy(
        &engine,
        "sma",
        "sma_crossover",
        json!({"token": "AAA", "fast_period": 3, "slow_period": 10, "order_qty": 1.0, "allow_short": false}),
    )
    .await;
    let breakout = add_strategy(
        &engine,
        "breakout",
        "bullish_breakout",
        json!({"token": "AAA", "min_score": 0}),
    )
    .await;
    engine.start_manager().await;
    let pool = engine.pool.clone();

    // Backtest over two symbols, with fees.
    let id = new_run(
        &pool,
        sma,
        "backtest",
        json!({"symbols": ["AAA", "BBB"], "fee_bps": 1}),
    )
    .await;
    let row = wait_state(&pool, id, "completed").await;
    let result = row.result.unwrap();
    let summary = &result["summary"];
    assert_eq!(summary["symbols_processed"], 2, "{result}");
    assert_eq!(summary["bars"], 600, "{summary}");
    for key in [
        "total_instances",
        "positive_signals",
        "trades",
        "date_range",
    ] {
        assert!(
            summary.get(key).is_some(),
            "summary.{key} missing: {summary}"
        );
    }
    for key in METRICS {
        assert!(
            result["performance_metrics"].get(key).is_some(),
            "performance_metrics.{key} missing: {result}"
        );
    }
    assert!(
        result["per_symbol"].get("AAA").is_some() || result["per_symbol"].is_array(),
        "{result}"
    );
    let curve = result["equity_curve"].as_array().expect("equity_curve");
    assert!(!curve.is_empty() && curve.len() <= 500);
    let backtested = items(&pool, id).await;
    assert_eq!(
        backtested.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
        ["AAA", "BBB"]
    );
    assert_eq!(row.config.unwrap()["fast_period"], 3);
    // The same run again gives the same result; by default over the config's token.
    let again = new_run(
        &pool,
        sma,
        "backtest",
        json!({"symbols": ["AAA", "BBB"], "fee_bps": 1}),
    )
    .await;
    let same = wait_state(&pool, again, "completed").await.result.unwrap();
    assert_eq!(same["performance_metrics"], result["performance_metrics"]);
    let token = new_run(
        &pool,
        sma,
        "backtest",
        json!({"config": {"fast_period": 4}}),
    )
    .await;
    let result = wait_state(&pool, token, "completed").await.result.unwrap();
    assert_eq!(result["summary"]["symbols_processed"], 1, "{result}");

    // Screener over every active symbol (MIN1 is not), the best two kept. (A
    // bullish_breakout score exists only for a bar that breaks out: sma_crossover
    // scores every symbol.)
    for (strategy, every_scored) in [(sma, true), (breakout, false)] {
        let id = new_run(&pool, strategy, "screener", json!({"limit": 2})).await;
        let result = wait_state(&pool, id, "completed").await.result.unwrap();
        assert_eq!(result["universe_size"], 3, "{result}");
        let ranked = result["ranked_results"].as_array().unwrap();
        assert!(ranked.len() <= 2, "{result}");
        let scores = result["scores"].as_object().unwrap();
        let scored = items(&pool, id).await;
        assert_eq!(scored.len(), 3);
        if every_scored {
            assert_eq!(scores.len(), 3, "{result}");
            assert!(scored.iter().all(|i| i.2.is_some()), "{scored:?}");
        }
        for item in &scored {
            assert_eq!(
                item.2,
                scores.get(&item.0).and_then(Value::as_f64),
                "{item:?} {result}"
            );
        }
    }

    // Alert scan: every alert in the result was published on strategy:alerts.
    let id = Uuid::new_v4();
    let mut alerts = engine.subscribe(&engine.channels.alerts()).await;
    insert_run(&pool, id, sma, "alert", json!({}), None).await;
    let result = wait_state(&pool, id, "completed").await.result.unwrap();
    assert_eq!(result["symbols_monitored"], 3, "{result}");
    assert!(
        result["signals"].is_object() && result["alerts"].is_array(),
        "{result}"
    );
    for alert in result["alerts"].as_array().unwrap() {
        let symbol = alert["symbol"].clone();
        let published = alerts
            .expect("the alert on strategy:alerts", |_, m| {
                m["run_id"] == id.to_string() && m["symbol"] == symbol
            })
            .await;
        assert_eq!(published["type"], alert["type"]);
    }
    assert_eq!(items(&pool, id).await.len(), 3);
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_run_process_refuses_ends_the_run_error_and_the_next_run_goes_on() {
    let mut engine = engine_with(1, false).await;
    seed_bars(&engine.pool, &["AAA"], 60).await;
    let sma = add_strategy(
        &engine,
        "sma",
        "sma_crossover",
        json!({"token": "AAA", "fast_period": 3, "slow_period": 10, "order_qty": 1.0}),
    )
    .await;
    let heartbeat = add_strategy(
        &engine,
        "hb",
        "heartbeat",
        json!({"token": "AAA", "panic_after_ticks": 20}),
    )
    .await;
    let unknown_token =
        add_strategy(&engine, "btc", "sma_crossover", json!({"token": "BTC-USD"})).await;
    engine.start_manager().await;
    let pool = engine.pool.clone();
    let cases = [
        (heartbeat, "screener", json!({}), "heartbeat supports"),
        (
            sma,
            "backtest",
            json!({"config": {"fast_period": "x"}}),
            "fast_period",
        ),
        (
            heartbeat,
            "backtest",
            json!({}),
            "the strategy panicked on AAA",
        ),
        (
            unknown_token,
            "backtest",
            json!({}),
            "the strategy's config token 'BTC-USD' is not in securities",
        ),
    ];
    for (strategy, mode, params, want) in cases {
        let id = new_run(&pool, strategy, mode, params.clone()).await;
        let row = wait_run(&pool, id, "to end", |r| {
            !matches!(r.state.as_str(), "queued" | "starting" | "running")
        })
        .await;
        assert_eq!(row.state, "error", "{mode} {params}: {row:?}");
        let error = row.error.unwrap();
        assert!(error.contains(want), "{mode} {params}: {error}");
        let next = new_run(&pool, sma, "backtest", json!({})).await;
        wait_state(&pool, next, "completed").await;
    }
    finish(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_during_a_run_is_caught_up_and_the_result_written_once() {
    let mut engine = TestEngine::on_private_services().await;
    engine.config.executor_path = Some(fake_executor(&engine.state_dir));
    seed_bars(&engine.pool, &["AAA", "BBB", "CCC", "DDD"], 10).await;
    let strategy = add_strategy(
        &engine,
        "steady",
        "sma_crossover",
        json!({"fake": {"item_ms": 800}}),
    )
    .await;
    engine.start_manager().await;
    let id = Uuid::new_v4();
    let mut events = engine.subscribe(&engine.channels.run(id)).await;
    insert_run(&engine.pool, id, strategy, "screener", json!({}), None).await;
    wait_for("the first item", DEADLINE, || async {
        (!items(&engine.pool, id).await.is_empty()).then_some(())
    })
    .await;
    engine.services().pg.stop(common::PgStop::Fast).await;
    // The run goes on and ends while the database is away; its events still flow.
    events
        .expect("the run's last item published during the outage", |_, m| {
            m["event_type"] == "ticker_completed" && m["current_item"] == "DDD"
        })
        .await;
    engine.services().pg.start_again().await;
    let pool = engine.pool.clone();
    let row = wait_for(
        "the run to be completed",
        Duration::from_secs(90),
        || async {
            try_run_row(&pool, id)
                .await
                .filter(|r| r.state == "completed")
        },
    )
    .await;
    assert_eq!(row.attempt, 0, "the outage made no retry");
    assert_eq!((row.completed_items, row.total_items), (Some(4), Some(4)));
    assert_eq!(items(&pool, id).await.len(), 4);
    events
        .expect("the completed event", |_, m| m["event_type"] == "completed")
        .await;
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM strategy_runs WHERE state = 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(completed, 1);
    finish(engine).await;
}

/// The run's process starts while the COPY of its bars still goes on; a COPY cut by
/// the database then (its backend terminated) stops the process, and the run is
/// prepared anew, without counting a try, and completes with every bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bars_copy_cut_by_the_database_prepares_the_run_anew() {
    let mut engine = engine_with(1, true).await;
    // The bars in two parts, two COPYs at once (`--run-copy-parts 2`).
    engine.config.run_copy_parts = 2;
    let pool = engine.pool.clone();
    // 800,000 minute bars: copied in two parts of 400,000 at once, each long enough
    // to be caught while it streams.
    sqlx::raw_sql(
        "INSERT INTO securities (symbol) VALUES ('BIG'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT 'BIG', '1m', '2024-01-01T00:00:00Z'::timestamptz + make_interval(mins => i), \
                50, 51, 49, 50, 10 FROM generate_series(0, 799999) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let strategy = add_strategy(&engine, "big", "sma_crossover", json!({"token": "BIG"})).await;
    engine.start_manager().await;
    // The COPY's backend is terminated while it streams, which the process (started
    // at once) reads. On a loaded machine a COPY may end before it is seen: then the
    // run completes uncut, and another is tried (at most 5).
    let mut cut_run = None;
    for _ in 0..5 {
        let id = Uuid::new_v4();
        let mut events = engine.subscribe(&engine.channels.run(id)).await;
        let params = json!({"symbols": ["BIG"], "interval": "1m"});
        insert_run(&pool, id, strategy, "backtest", params, None).await;
        let cut = wait_for("the run's COPY, or its end", DEADLINE, || {
            let pool = pool.clone();
            async move {
                let cut: Option<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND query LIKE 'COPY (SELECT symbol%' AND state = 'active'",
                )
                .fetch_optional(&pool)
                .await
                .expect("look for the COPY");
                if cut == Some(true) {
                    return Some(true);
                }
                let state: String =
                    sqlx::query_scalar("SELECT state FROM strategy_runs WHERE id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .expect("the run's state");
                (!["queued", "starting", "running"].contains(&state.as_str())).then_some(false)
            }
        })
        .await;
        if cut {
            // Started before or after the cut, then prepared anew and started again.
            for n in ["the run started", "the run started again"] {
                events.expect(n, |_, m| m["event_type"] == "started").await;
            }
            cut_run = Some(id);
            break;
        }
    }
    let id = cut_run.expect("no COPY was caught while it streamed, in 5 runs");
    let row = wait_state(&pool, id, "completed").await;
    assert_eq!(
        row.attempt, 0,
        "a COPY cut by the database counts as no try"
    );
    let result = row.result.unwrap();
    assert_eq!(result["counts"]["BIG"], 800_000, "{result}");
    assert!(run_processes(&engine).is_empty());
    finish(engine).await;
}

/// A manager killed between a run's spawn and its `running` write leaves the row
/// `starting` with no pid while the process goes on: the next manager adopts the
/// process and the row says `running` with its pid (it used to stay `starting` until
/// the end), and the run completes once, from that process.
#[tokio::test]
async fn a_run_adopted_while_starting_is_marked_running() {
    let (engine, strategy) = slowish_engine().await;
    let pool = engine.pool.clone();
    let env = manager_env(&engine.config);
    let log = engine.state_dir.join("manager.log");
    let mut manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let id = new_run(&pool, strategy, "screener", json!({})).await;
    let pid = wait_state(&pool, id, "running").await.pid.unwrap();
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    // The row as that manager would have left it had it died before `running`.
    sqlx::query(
        "UPDATE strategy_runs SET state = 'starting', pid = NULL, pid_start_ticks = NULL, \
             pid_boot_id = NULL, config = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    assert!(process_alive(pid as u32), "a run outlives its manager");

    let manager = spawn_manager_binary(&env, &log);
    wait_lease(&engine.op(), manager.id().unwrap(), DEADLINE).await;
    let row = wait_state(&pool, id, "running").await;
    assert_eq!(row.pid, Some(pid), "the adopted process is the run's");
    let config: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT config FROM strategy_runs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(config.unwrap()["fake"]["item_ms"], 700);
    let row = wait_state(&pool, id, "completed").await;
    assert_eq!(row.attempt, 0, "adopted, not run again");
    let starts = std::fs::read_to_string(runs_dir(&engine).join(format!("{id}.starts"))).unwrap();
    assert_eq!(starts.lines().count(), 1, "started once: {starts}");
    drop(manager);
    finish(engine).await;
}

/// Regression (found by the fault suite, RELIABILITY.md): a COPY of a run's bars
/// dropped before its end (the run cancelled or timed out while it was prepared) gave
/// its connection back to the pool with the rest of the COPY unread, and the next
/// statement there read that as its own answer: a later run ended `error` with
/// "expected CopyOutResponse, got ReadyForQuery", cancels read a finished run as
/// still `starting`. Now a COPY stopped before its end closes its connection.
#[tokio::test]
async fn a_bars_copy_dropped_midway_leaves_no_connection_out_of_step() {
    let engine = TestEngine::new().await;
    // Enough minute bars that the COPY is cut well before its end.
    sqlx::raw_sql(
        "INSERT INTO securities (symbol) VALUES ('BIG'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT 'BIG', '1m', '2024-01-01T00:00:00Z'::timestamptz + make_interval(mins => i), \
                50, 51, 49, 50, 10 FROM generate_series(0, 199999) i",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    // One connection, as the manager's pool uses them (no ping before a statement).
    let pool = engine_store::manager::connect(&engine.db_url, 1)
        .await
        .expect("connect");
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let symbols = ["BIG".to_string()];
    let cut = engine.state_dir.join("cut.bars");
    let copy = engine_store::runs::start_bars_copy(
        &pool,
        &symbols,
        "1m",
        at("2024-01-01T00:00:00Z"),
        at("2025-01-01T00:00:00Z"),
        &cut,
    )
    .await
    .expect("start the COPY");
    // Some of it written, then dropped (stopped) while the rest is still to come.
    wait_for("the COPY's first bytes", DEADLINE, || {
        let len = std::fs::metadata(&cut).map_or(0, |m| m.len());
        std::future::ready((len > 0).then_some(()))
    })
    .await;
    drop(copy);
    let path = engine.state_dir.join("next.bars");
    // The next COPY (the next run's bars) and every statement after it get their own
    // answers.
    let small = engine_store::runs::start_bars_copy(
        &pool,
        &symbols,
        "1m",
        at("2024-01-01T00:00:00Z"),
        at("2024-01-01T00:09:00Z"),
        &path,
    )
    .await
    .expect("start the next COPY")
    .finished()
    .await
    .expect("the COPY after a cut one fails: its connection is out of step");
    assert!(small > 0, "the second COPY wrote nothing");
    for expected in [1i64, 2, 3] {
        let answer: i64 = sqlx::query_scalar("SELECT $1::bigint")
            .bind(expected)
            .fetch_one(&pool)
            .await
            .expect("a statement after a cut COPY fails: its connection is out of step");
        assert_eq!(answer, expected, "a statement read another's answer");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM market_bars")
        .fetch_one(&pool)
        .await
        .expect("count the bars");
    assert_eq!(count, 200_000);
    engine.finish().await;
}
