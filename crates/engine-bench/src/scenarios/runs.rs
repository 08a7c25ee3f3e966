//! Runs (issue #11): a backtest of about 1,000,000 one-minute bars and a screener of
//! 500 symbols × 2 years of daily bars, INSERT → `completed`; INSERT → `running`
//! with a free slot; a finished run → the next queued one `starting`; 1,000 small
//! runs queued at once → all finished (runs/s, and the most run processes seen at
//! once, sampled every 5 ms); `cancel` INSERT → `executed` (the run `cancelled`, its
//! process gone) while the run is busy; the first `progress` event after `started`;
//! the run process's peak resident memory.
//!
//! The bars are made with `enginectl data generate` (seeded) before the manager
//! starts; everything else goes through the public interface: `strategy_runs` and
//! `strategy_commands` rows, `strategy:run:*` events (stamped on arrival) and the
//! process table (a run's process carries `--run-id` and `--runs-dir`).

use super::{ms, BenchContext, EVENT_DEADLINE, WARMUP};
use crate::engine::{BenchEngine, EngineOptions, Feed, StrategySpec};
use crate::probe::ProcId;
use crate::report::{Figure, Goal, Progress, Results};
use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use engine_store::bench as db;
use engine_store::commands::insert_command_row;
use engine_store::{CommandStatus, CommandWord};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The one symbol of one-minute bars (two years: about 1,051,200 bars).
const MINUTE_SYMBOL: &str = "MIN1";
/// The manager's default `--max-concurrent-runs`, which the bench keeps.
const MAX_CONCURRENT_RUNS: f64 = 2.0;

/// The runs part.
pub async fn runs(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    let quick = ctx.args.quick;
    eprintln!("\n== runs: a 1M-bar backtest, a 500-symbol screener, the queue, cancel ==");
    let options = EngineOptions {
        label: "runs".into(),
        health_interval: None,
        metrics_interval: None,
        restart_delay: None,
        max_concurrent_executions: None,
        strategies: vec![
            StrategySpec {
                name: "bench-sma".into(),
                strategy_type: "sma_crossover".into(),
                config: json!({"token": MINUTE_SYMBOL}),
            },
            StrategySpec {
                name: "bench-breakout".into(),
                strategy_type: "bullish_breakout".into(),
                config: json!({}),
            },
        ],
        data: data_commands(quick),
    };
    let mut engine = BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
    let outcome = runs_on(&mut engine, ctx, results).await;
    let shutdown = engine.shutdown().await;
    outcome?;
    shutdown
}

/// `enginectl` argument lists that load the bench's bars.
fn data_commands(quick: bool) -> Vec<Vec<String>> {
    // Quick: enough minute bars that a cancel still finds the run busy.
    let (symbols, minute_span) = if quick { ("20", "30d") } else { ("500", "2y") };
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        words(&[
            "data",
            "generate",
            "--symbols",
            symbols,
            "--names",
            "numbered",
            "--span",
            "2y",
            "--interval",
            "1d",
            "--seed",
            "11",
        ]),
        words(&[
            "data",
            "generate",
            "--tickers",
            MINUTE_SYMBOL,
            "--span",
            minute_span,
            "--interval",
            "1m",
            "--seed",
            "12",
        ]),
    ]
}

async fn runs_on(
    engine: &mut BenchEngine,
    ctx: &BenchContext,
    results: &mut Results,
) -> anyhow::Result<()> {
    let quick = ctx.args.quick;
    let (sma, breakout) = (engine.strategies[0], engine.strategies[1]);
    let pattern = format!("{}strategy:run:*", engine.channels.prefix());
    let mut feed = Feed::subscribe(&engine.redis, &pattern).await?;
    let big = if quick { 2 } else { 5 };

    let backtest = json!({"symbols": [MINUTE_SYMBOL], "interval": "1m"});
    let big_runs = series(
        engine,
        &mut feed,
        sma,
        "backtest",
        &backtest,
        big,
        "1M-bar backtest",
    )
    .await?;
    let screens = series(
        engine,
        &mut feed,
        breakout,
        "screener",
        &json!({}),
        big,
        "screener",
    )
    .await?;
    report_big(results, &big_runs, &screens);

    // A small run: one symbol, the last 30 daily bars.
    let start = (Utc::now() - chrono::Duration::days(30))
        .date_naive()
        .to_string();
    let small = json!({"symbols": ["SYM0001"], "interval": "1d", "start": start});
    let n = ctx.args.samples;
    let smalls = series(engine, &mut feed, sma, "backtest", &small, n, "small run").await?;
    drop(feed);
    let flood = queue_flood(engine, sma, &small, if quick { 50 } else { 1000 }).await?;
    let cancels = cancel_samples(engine, sma, &backtest, if quick { 3 } else { 30 }).await?;
    report_small(results, &smalls, &flood, &cancels);
    Ok(())
}

/// What one run did, seen from outside.
#[derive(Debug, Clone)]
struct RunSample {
    created_at: DateTime<Utc>,
    started: DateTime<Utc>,
    first_progress: Option<DateTime<Utc>>,
    finished_at: DateTime<Utc>,
    peak_rss_kib: u64,
}

/// `count` runs one after another (after [`WARMUP`] left out).
async fn series(
    engine: &BenchEngine,
    feed: &mut Feed,
    strategy: Uuid,
    mode: &str,
    parameters: &Value,
    count: usize,
    label: &str,
) -> anyhow::Result<Vec<RunSample>> {
    let mut out = Vec::with_capacity(count);
    let mut progress = Progress::new(label, count + WARMUP);
    for i in 0..count + WARMUP {
        let sample = timed_run(engine, feed, strategy, mode, parameters).await?;
        if i >= WARMUP {
            out.push(sample);
        }
        progress.set(i + 1);
    }
    progress.finish();
    Ok(out)
}

/// One run from INSERT to its final event, its process's memory sampled every 5 ms.
async fn timed_run(
    engine: &BenchEngine,
    feed: &mut Feed,
    strategy: Uuid,
    mode: &str,
    parameters: &Value,
) -> anyhow::Result<RunSample> {
    feed.drain();
    let id = Uuid::new_v4();
    let sampler = PeakRss::start(id);
    let created_at = db::insert_run(&engine.pool, id, strategy, mode, parameters).await?;
    let until = Instant::now() + EVENT_DEADLINE;
    let (mut started, mut first_progress) = (None, None);
    loop {
        let Some(msg) = feed.next_until(until).await else {
            bail!(
                "run {id} did not finish within {EVENT_DEADLINE:?}: {}",
                engine.manager_log_tail(5)
            );
        };
        let Some(event) = msg.json() else { continue };
        if event["run_id"] != json!(id) {
            continue;
        }
        match event["event_type"].as_str().unwrap_or("") {
            "started" => started = started.or(Some(msg.at)),
            "progress" => first_progress = first_progress.or(Some(msg.at)),
            "completed" => break,
            other @ ("error" | "cancelled" | "timed_out") => {
                bail!("run {id} ({mode}) ended {other}: {}", event["message"])
            }
            _ => {}
        }
    }
    let peak_rss_kib = sampler.finish().await;
    let row = db::run_times(&engine.pool, &[id])
        .await?
        .pop()
        .context("the run's row is gone")?;
    Ok(RunSample {
        created_at,
        started: started.context("no started event before completed")?,
        first_progress,
        finished_at: row.finished_at.context("completed without finished_at")?,
        peak_rss_kib,
    })
}

/// The largest `VmHWM` of the process carrying `--run-id {id}`, sampled every 5 ms.
struct PeakRss {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    fn start(id: Uuid) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let arg = PathBuf::from(id.to_string());
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                for pid in procfs::pids_with_arg(&arg) {
                    peak = peak.max(procfs::hwm_kib(pid).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        PeakRss { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

/// What flooding the queue showed.
#[derive(Debug, Default)]
struct Flood {
    runs: usize,
    runs_per_s: Option<f64>,
    max_processes: u64,
    next_starting_ms: Vec<f64>,
    not_completed: usize,
}

/// `count` small runs inserted in one statement; the run processes counted every
/// 5 ms until all are finished.
async fn queue_flood(
    engine: &BenchEngine,
    strategy: Uuid,
    parameters: &Value,
    count: i64,
) -> anyhow::Result<Flood> {
    eprintln!("runs: {count} small runs queued at once");
    let runs_dir = engine.state_dir.join("runs");
    let counter = ProcessCounter::start(runs_dir);
    let inserted = db::insert_runs(&engine.pool, strategy, "backtest", parameters, count).await?;
    let ids: Vec<Uuid> = inserted.iter().map(|(id, _)| *id).collect();
    let until = Instant::now() + Duration::from_secs(60 + count as u64);
    let mut progress = Progress::new("queued runs", ids.len());
    loop {
        let done = db::count_finished_runs(&engine.pool, &ids).await?;
        progress.set(done as usize);
        if done as usize == ids.len() {
            break;
        }
        if Instant::now() >= until {
            bail!(
                "{done} of {count} queued runs finished in time: {}",
                engine.manager_log_tail(5)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish();
    let max_processes = counter.finish().await;
    let rows = db::run_times(&engine.pool, &ids).await?;
    Ok(flood_figures(&rows, inserted[0].1, max_processes))
}

fn flood_figures(rows: &[db::RunTimes], created: DateTime<Utc>, max_processes: u64) -> Flood {
    let mut finished: Vec<DateTime<Utc>> = rows.iter().filter_map(|r| r.finished_at).collect();
    finished.sort_unstable();
    let last = finished.last().copied();
    // A run that waited: its claim came after some other run's end; the gap from
    // the latest such end is "a finished run → the next queued one starting".
    let mut next_starting_ms = Vec::new();
    for row in rows {
        let Some(started) = row.started_at else {
            continue;
        };
        let i = finished.partition_point(|f| *f <= started);
        if i > 0 {
            next_starting_ms.push(ms(started, finished[i - 1]));
        }
    }
    Flood {
        runs: rows.len(),
        runs_per_s: last.map(|l| rows.len() as f64 / (ms(l, created) / 1000.0)),
        max_processes,
        next_starting_ms,
        not_completed: rows.iter().filter(|r| r.state != "completed").count(),
    }
}

/// The most processes carrying `--runs-dir {dir}` seen at once, every 5 ms.
struct ProcessCounter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl ProcessCounter {
    fn start(dir: PathBuf) -> ProcessCounter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let max = Arc::new(AtomicU64::new(0));
        let task = tokio::task::spawn_blocking(move || {
            while !flag.load(Ordering::Relaxed) {
                let n = procfs::pids_with_arg(&dir).len() as u64;
                max.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            max.load(Ordering::Relaxed)
        });
        ProcessCounter { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

/// What cancelling busy runs showed.
#[derive(Debug, Default)]
struct Cancels {
    ms: Vec<f64>,
    /// Runs that finished before their cancel arrived (not counted).
    missed: usize,
}

/// Start the big backtest, wait until its process is up (it then reads its bars
/// while the manager's COPY writes them: busy), cancel it, and time the cancel command from INSERT to `executed`.
async fn cancel_samples(
    engine: &BenchEngine,
    strategy: Uuid,
    parameters: &Value,
    count: usize,
) -> anyhow::Result<Cancels> {
    let mut out = Cancels::default();
    let mut progress = Progress::new("cancel", count);
    for i in 0..count {
        let id = Uuid::new_v4();
        db::insert_run(&engine.pool, id, strategy, "backtest", parameters).await?;
        let Some(process) = wait_busy(engine, id).await? else {
            out.missed += 1;
            continue;
        };
        let cmd = insert_command_row(
            &engine.pool,
            Some(strategy),
            CommandWord::Cancel,
            &json!({"run_id": id}),
            None,
        )
        .await?;
        let end = engine.wait_command(cmd.id, EVENT_DEADLINE).await?;
        if end.status != CommandStatus::Executed {
            out.missed += 1;
            continue;
        }
        if process.alive() {
            bail!(
                "cancel of run {id} executed with its process {} still alive",
                process.pid
            );
        }
        let executed = end.executed_at.context("executed without executed_at")?;
        out.ms.push(ms(executed, cmd.created_at));
        progress.set(i + 1);
    }
    progress.finish();
    Ok(out)
}

/// The process of run `id` once it is up; `None` when the run finished before that
/// was seen.
async fn wait_busy(engine: &BenchEngine, id: Uuid) -> anyhow::Result<Option<ProcId>> {
    let until = Instant::now() + EVENT_DEADLINE;
    let arg = PathBuf::from(id.to_string());
    loop {
        if let Some(pid) = procfs::pids_with_arg(&arg).first() {
            if let Some(process) = ProcId::of(*pid) {
                return Ok(Some(process));
            }
        }
        if db::count_finished_runs(&engine.pool, &[id]).await? == 1 {
            return Ok(None);
        }
        if Instant::now() >= until {
            bail!(
                "run {id} was not busy within {EVENT_DEADLINE:?}: {}",
                engine.manager_log_tail(5)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn report_big(results: &mut Results, backtests: &[RunSample], screens: &[RunSample]) {
    let total = |runs: &[RunSample]| -> Vec<f64> {
        runs.iter()
            .map(|r| ms(r.finished_at, r.created_at))
            .collect()
    };
    results.push(
        Figure::series("run_backtest_1m_bars_ms", "backtest, 1M one-minute bars: INSERT → completed", "ms", &total(backtests), Some(Goal::P50AtMost(1000.0)))
            .with_note("sma_crossover over MIN1 (two years of one-minute bars); created_at → finished_at of the row"),
    );
    results.push(Figure::series(
        "run_screener_500_ms",
        "screener, 500 symbols × 2 y daily: INSERT → completed",
        "ms",
        &total(screens),
        Some(Goal::P50AtMost(500.0)),
    ));
    let first: Vec<f64> = backtests
        .iter()
        .filter_map(|r| Some(ms(r.first_progress?, r.started)))
        .collect();
    results.push(Figure::series(
        "run_first_progress_ms",
        "first progress event after started",
        "ms",
        &first,
        Some(Goal::P50AtMost(200.0)),
    ));
    let peak = backtests.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    results.push(
        Figure::single(
            "run_process_peak_rss_mb",
            "run process peak RSS, 1M-bar backtest",
            "MB",
            Some(peak as f64 / 1024.0),
            Some(Goal::AtMost(64.0)),
        )
        .with_note("VmHWM of the process carrying --run-id, sampled every 5 ms"),
    );
}

fn report_small(results: &mut Results, smalls: &[RunSample], flood: &Flood, cancels: &Cancels) {
    let to_running: Vec<f64> = smalls.iter().map(|r| ms(r.started, r.created_at)).collect();
    results.push(
        Figure::series(
            "run_insert_to_running_ms",
            "run INSERT → started event (free slot)",
            "ms",
            &to_running,
            Some(Goal::P50AtMost(15.0)),
        )
        .with_note("a backtest of 30 daily bars; created_at → arrival of the `started` event"),
    );
    results.push(Figure::series(
        "run_next_starting_ms",
        "finished run → next queued starting",
        "ms",
        &flood.next_starting_ms,
        Some(Goal::P50AtMost(10.0)),
    ));
    results.push(
        Figure::single(
            "runs_per_s",
            &format!("{} small runs queued at once", flood.runs),
            "runs/s",
            flood.runs_per_s,
            Some(Goal::AtLeast(50.0)),
        )
        .with_note(format!("{} did not end completed", flood.not_completed)),
    );
    results.push(Figure::single(
        "runs_max_processes",
        "most run processes at once (5 ms samples)",
        "processes",
        Some(flood.max_processes as f64),
        Some(Goal::AtMost(MAX_CONCURRENT_RUNS)),
    ));
    results.push(
        Figure::series(
            "run_cancel_ms",
            "cancel INSERT → executed (run cancelled, process gone)",
            "ms",
            &cancels.ms,
            Some(Goal::P50P99AtMost(20.0, 100.0)),
        )
        .with_note(format!(
            "{} runs finished before their cancel (not counted)",
            cancels.missed
        )),
    );
}
