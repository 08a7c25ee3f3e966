//! Lateness (issue #12): `--lateness-strategies` (1 000) interval strategies with a
//! no-op step (`heartbeat`, its own timer at an hour) at `execution_interval_s = 1`
//! on one manager, one engine per `--lateness-caps` value of
//! `--max-concurrent-executions`. After they all run and settle, every
//! `strategy:execution:*` message whose `due_at` falls in a window of whole seconds
//! is taken: the manager's start (`started_at`) and the executor's
//! (`executor_started_at`) minus `due_at`, the executions counted against the due
//! times in the window, the skipped ones; and the manager's CPU (utime + stime of
//! `/proc/<pid>/stat`) and resident memory over the window. A cap of 0 is the
//! baseline: the same strategies left continuous (no executions), for what the
//! manager spends on them anyway (health, metrics).

use super::growth::await_running;
use super::{mb, ms, BenchContext};
use crate::engine::{BenchEngine, EngineOptions, Feed, StrategySpec};
use crate::probe::ProcId;
use crate::report::{num, summarize, Figure, Goal, Progress, Results};
use crate::Runaway;
use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::{procfs, ExecutionMessage};
use engine_store::bench as db;
use engine_store::CommandWord;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// How long after the last `running` the executions are left to settle.
const SETTLE: Duration = Duration::from_secs(3);
/// How long after the window messages for its due times are still awaited.
const STRAGGLERS: Duration = Duration::from_secs(3);

/// What one engine measured.
#[derive(Debug, Default)]
struct LatenessPoint {
    cap: u32,
    strategies: usize,
    running: usize,
    window_s: u64,
    /// `started_at - due_at` (the manager sent it), ms.
    sent_ms: Vec<f64>,
    /// `executor_started_at - due_at` (the strategy's step began), ms.
    began_ms: Vec<f64>,
    expected: u64,
    executed: u64,
    failed: u64,
    skipped: u64,
    db_executed: i64,
    db_skipped: i64,
    manager_cpu_percent: Option<f64>,
    executors_cpu_percent: Option<f64>,
    machine_cpu_percent: Option<f64>,
    manager_rss_mb: Option<f64>,
    manager_hwm_mb: Option<f64>,
    executors_rss_mb: Option<f64>,
    executors_pss_mb: Option<f64>,
    runaway: Option<&'static str>,
    /// `oom` events during the window (the hog killed by its group).
    oom_kills: i64,
}

pub async fn lateness(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    let mut points = Vec::new();
    for &cap in &ctx.args.lateness_caps {
        let point = lateness_with_cap(ctx, cap).await?;
        report(results, &point);
        points.push(point);
    }
    let json: Vec<serde_json::Value> = points.iter().map(point_json).collect();
    results.extra.insert("lateness".into(), json.into());
    Ok(())
}

async fn lateness_with_cap(ctx: &BenchContext, cap: u32) -> anyhow::Result<LatenessPoint> {
    let n = ctx.args.lateness_strategies;
    let window_s = ctx.args.lateness_window.as_secs().max(1);
    eprintln!(
        "\n== lateness: {n} interval strategies every 1 s, --max-concurrent-executions {cap}, window {window_s} s =="
    );
    let runaway = runaway_spec(ctx.args.lateness_runaway);
    let mut strategies: Vec<StrategySpec> = (0..n)
        .map(|i| StrategySpec {
            name: format!("late-{i:04}"),
            strategy_type: "heartbeat".into(),
            // Its own timer at an hour: the step is all it does.
            config: json!({"interval_ms": 3_600_000}),
        })
        .collect();
    strategies.extend(runaway.as_ref().map(|(spec, _)| spec.clone()));
    let options = EngineOptions {
        label: format!("lateness-cap{cap}"),
        health_interval: None,
        metrics_interval: None,
        restart_delay: None,
        max_concurrent_executions: (cap > 0).then_some(cap),
        strategies,
        data: Vec::new(),
    };
    let mut engine = BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
    let outcome = async {
        if let Some((_, limits)) = &runaway {
            // The runaway is created last; it stays a continuous strategy.
            let id = *engine.strategies.last().context("the runaway strategy")?;
            db::set_limits(&engine.pool, &[id], limits).await?;
        }
        let mut point = measure(&mut engine, cap, window_s, runaway.is_some()).await?;
        point.runaway = runaway.as_ref().map(|(spec, _)| runaway_name(&spec.name));
        Ok::<_, anyhow::Error>(point)
    }
    .await;
    let shutdown = engine.shutdown().await;
    let point = outcome?;
    shutdown?;
    eprintln!(
        "  = cap {cap}: start − due p50 {} ms (executor {} ms), {} of {} executed, {} skipped, manager {} % CPU, {} MB",
        summarize(&point.sent_ms).map_or("?".into(), |s| num(s.p50)),
        summarize(&point.began_ms).map_or("?".into(), |s| num(s.p50)),
        point.executed,
        point.expected,
        point.skipped,
        point.manager_cpu_percent.map_or("?".into(), num),
        point.manager_rss_mb.map_or("?".into(), num),
    );
    Ok(point)
}

/// The runaway strategy (its spec and limits), if one was asked for.
fn runaway_spec(runaway: Runaway) -> Option<(StrategySpec, serde_json::Value)> {
    let (config, limits) = match runaway {
        Runaway::None => return None,
        Runaway::Spinner => (
            json!({"interval_ms": 100, "spin_ms_per_beat": 100}),
            json!({"cpu_percent": 50}),
        ),
        Runaway::Hog => (
            json!({"interval_ms": 50, "hog_mb_per_beat": 8}),
            json!({"memory_mb": 64}),
        ),
    };
    let name = match runaway {
        Runaway::Spinner => "runaway-spinner",
        _ => "runaway-hog",
    };
    let spec = StrategySpec {
        name: name.into(),
        strategy_type: "heartbeat".into(),
        config,
    };
    Some((spec, limits))
}

fn runaway_name(name: &str) -> &'static str {
    if name.ends_with("spinner") {
        "spinner (cpu_percent 50)"
    } else {
        "hog (memory_mb 64)"
    }
}

async fn measure(
    engine: &mut BenchEngine,
    cap: u32,
    window_s: u64,
    with_runaway: bool,
) -> anyhow::Result<LatenessPoint> {
    let all = engine.strategies.len();
    let n = all - usize::from(with_runaway);
    let interval_ids = engine.strategies[..n].to_vec();
    if cap > 0 {
        db::set_execution_interval_of(&engine.pool, &interval_ids, 1)
            .await
            .context("cannot make the strategies interval strategies")?;
    }
    let mut feed = Feed::subscribe(&engine.redis, &engine.channels.execution_pattern()).await?;
    engine.status_feed.drain();
    db::command_every_strategy(&engine.pool, CommandWord::Start)
        .await
        .context("cannot insert the start commands")?;
    let until = Instant::now() + Duration::from_secs(60) + Duration::from_millis(200) * n as u32;
    let (running, failed, _) = await_running(engine, all, until).await;
    let running = running.min(n);
    if failed > 0 {
        eprintln!("  note: {failed} strategies failed to start");
    }
    tokio::time::sleep(SETTLE).await;

    // The window: whole seconds, from the next second on.
    let now = Utc::now();
    let w0 = DateTime::from_timestamp(now.timestamp() + 1, 0).context("clock")?;
    let w1 = w0 + TimeDelta::seconds(i64::try_from(window_s)?);
    let wait = (w0 - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let marks = Marks::take(engine).await?;
    let ooms_from = db::count_events(&engine.pool, "oom").await?;
    let mut point = LatenessPoint {
        cap,
        strategies: n,
        running,
        window_s,
        expected: if cap > 0 {
            running as u64 * window_s
        } else {
            0
        },
        ..LatenessPoint::default()
    };
    let window_end = Instant::now() + Duration::from_secs(window_s);
    let mut progress = Progress::new("window (s)", window_s as usize);
    while let Some(msg) = feed.next_until(window_end).await {
        take(&mut point, &msg.payload, w0, w1);
        progress.set(marks.clock.elapsed().as_secs() as usize);
    }
    progress.finish();
    marks.measure(engine, &mut point).await?;
    point.oom_kills = db::count_events(&engine.pool, "oom").await? - ooms_from;
    // The messages of due times in the window that were still on their way.
    let stragglers = Instant::now() + STRAGGLERS;
    while let Some(msg) = feed.next_until(stragglers).await {
        take(&mut point, &msg.payload, w0, w1);
    }
    Ok(point)
}

/// The counters read when the window opens.
struct Marks {
    executors: Vec<ProcId>,
    totals: db::ExecutionTotals,
    manager_ns: Option<u64>,
    executors_ns: u64,
    machine_ns: Option<u64>,
    clock: std::time::Instant,
}

impl Marks {
    async fn take(engine: &BenchEngine) -> anyhow::Result<Marks> {
        let executors = engine.executor_processes().await;
        Ok(Marks {
            totals: db::execution_totals(&engine.pool).await?,
            manager_ns: procfs::cpu_ns(engine.manager.pid),
            executors_ns: executors_cpu_ns(&executors),
            machine_ns: procfs::machine_busy_ns(),
            clock: std::time::Instant::now(),
            executors,
        })
    }

    /// CPU shares over the window, memory and statistics now, into `point`.
    async fn measure(&self, engine: &BenchEngine, point: &mut LatenessPoint) -> anyhow::Result<()> {
        let wall_ns = self.clock.elapsed().as_nanos() as f64;
        let percent = |from: u64, to: u64| to.saturating_sub(from) as f64 / wall_ns * 100.0;
        if let (Some(a), Some(b)) = (self.manager_ns, procfs::cpu_ns(engine.manager.pid)) {
            point.manager_cpu_percent = Some(percent(a, b));
        }
        let still: Vec<ProcId> = self
            .executors
            .iter()
            .copied()
            .filter(ProcId::alive)
            .collect();
        if still.len() == self.executors.len() {
            point.executors_cpu_percent =
                Some(percent(self.executors_ns, executors_cpu_ns(&still)));
        }
        if let (Some(a), Some(b)) = (self.machine_ns, procfs::machine_busy_ns()) {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
            point.machine_cpu_percent = Some(percent(a, b) / cores);
        }
        point.manager_rss_mb = procfs::rss_kib(engine.manager.pid).map(mb);
        point.manager_hwm_mb = procfs::hwm_kib(engine.manager.pid).map(mb);
        let rss: u64 = still.iter().filter_map(|p| procfs::rss_kib(p.pid)).sum();
        let pss: u64 = still.iter().filter_map(|p| procfs::pss_kib(p.pid)).sum();
        point.executors_rss_mb = Some(mb(rss));
        point.executors_pss_mb = Some(mb(pss));
        let totals = db::execution_totals(&engine.pool).await?;
        point.db_executed = totals.execution_count - self.totals.execution_count;
        point.db_skipped = totals.skipped_executions - self.totals.skipped_executions;
        Ok(())
    }
}

fn executors_cpu_ns(procs: &[ProcId]) -> u64 {
    procs
        .iter()
        .filter_map(|p| procfs::threads_cpu_ns(p.pid))
        .sum()
}

/// Count one `strategy:execution:*` message whose due time lies in `[w0, w1)`.
fn take(point: &mut LatenessPoint, payload: &[u8], w0: DateTime<Utc>, w1: DateTime<Utc>) {
    let Ok(msg) = serde_json::from_slice::<ExecutionMessage>(payload) else {
        return;
    };
    let Some(due) = msg.due_at else {
        return;
    };
    if due < w0 || due >= w1 {
        return;
    }
    match msg.outcome.as_str() {
        "skipped" => {
            // "{count} due execution(s) skipped: …"
            let count = msg
                .error
                .as_deref()
                .and_then(|e| e.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1);
            point.skipped += count;
        }
        outcome => {
            point.executed += 1;
            if outcome != "ok" {
                point.failed += 1;
            }
            point.sent_ms.push(ms(msg.started_at, due));
            if let Some(began) = msg.executor_started_at {
                point.began_ms.push(ms(began, due));
            }
        }
    }
}

/// The baseline engine: the manager's CPU without executions.
fn report_baseline(results: &mut Results, p: &LatenessPoint) {
    let n = p.strategies;
    results.push(
        Figure::single(
            "lateness_manager_cpu_percent_baseline",
            &format!("manager CPU, the same {n} strategies continuous (baseline)"),
            "% of a core",
            p.manager_cpu_percent,
            None,
        )
        .with_note(format!(
            "no executions: health and metrics only; manager RSS {} MB, executors RSS {} MB / PSS {} MB in all",
            p.manager_rss_mb.map_or("?".into(), num),
            p.executors_rss_mb.map_or("?".into(), num),
            p.executors_pss_mb.map_or("?".into(), num),
        )),
    );
}

fn report(results: &mut Results, p: &LatenessPoint) {
    let cap = p.cap;
    let n = p.strategies;
    if cap == 0 {
        report_baseline(results, p);
        return;
    }
    let beside = p
        .runaway
        .map_or(String::new(), |r| format!(", beside a runaway {r}"));
    let key_tail = if p.runaway.is_some() { "_runaway" } else { "" };
    let max = |values: &[f64]| summarize(values).map_or("?".into(), |s| num(s.max));
    let not_all = if p.running < n {
        format!("; only {} of {n} were running", p.running)
    } else {
        String::new()
    };
    results.push(
        Figure::series(
            &format!("lateness_sent_ms_cap{cap}{key_tail}"),
            &format!("interval execution sent − due, {n} at 1 s, cap {cap}{beside}"),
            "ms",
            &p.sent_ms,
            Some(Goal::P50P99AtMost(1.0, 5.0)),
        )
        .with_note(format!(
            "`started_at − due_at` of every execution due in {} s; max {} ms{not_all}",
            p.window_s,
            max(&p.sent_ms)
        )),
    );
    results.push(
        Figure::series(
            &format!("lateness_began_ms_cap{cap}{key_tail}"),
            &format!("interval execution began (executor) − due, {n} at 1 s, cap {cap}{beside}"),
            "ms",
            &p.began_ms,
            Some(Goal::P50P99AtMost(1.0, 5.0)),
        )
        .with_note(format!(
            "`executor_started_at − due_at` (the executor's clock, the same host); max {} ms",
            max(&p.began_ms)
        )),
    );
    let counted = (p.expected > 0).then(|| p.executed as f64 / p.expected as f64 * 100.0);
    results.push(
        Figure::single(
            &format!("lateness_executed_percent_cap{cap}{key_tail}"),
            &format!("due executions that ran, {n} at 1 s, cap {cap}{beside}"),
            "%",
            counted,
            Some(Goal::AtLeast(99.9)),
        )
        .with_note(format!(
            "{} executed ({} failed) and {} skipped of {} due in the window (messages); the statistics columns moved by {} executions and {} skips meanwhile (written up to 1 s behind); {} OOM kills meanwhile",
            p.executed, p.failed, p.skipped, p.expected, p.db_executed, p.db_skipped, p.oom_kills
        )),
    );
    results.push(
        Figure::single(
            &format!("lateness_manager_cpu_percent_cap{cap}{key_tail}"),
            &format!("manager CPU, {n} interval strategies at 1 s, cap {cap}{beside}"),
            "% of a core",
            p.manager_cpu_percent,
            Some(Goal::AtMost(5.0)),
        )
        .with_note(format!(
            "utime + stime over the window; the executors together {} % of a core, the machine {} % busy; manager RSS {} MB (peak {} MB), executors RSS {} MB / PSS {} MB in all",
            p.executors_cpu_percent.map_or("?".into(), num),
            p.machine_cpu_percent.map_or("?".into(), num),
            p.manager_rss_mb.map_or("?".into(), num),
            p.manager_hwm_mb.map_or("?".into(), num),
            p.executors_rss_mb.map_or("?".into(), num),
            p.executors_pss_mb.map_or("?".into(), num),
        )),
    );
}

fn point_json(p: &LatenessPoint) -> serde_json::Value {
    let summary = |values: &[f64]| {
        summarize(values)
            .map(|s| json!({"n": s.n, "p50": s.p50, "p99": s.p99, "max": s.max, "mean": s.mean}))
    };
    json!({
        "max_concurrent_executions": p.cap,
        "strategies": p.strategies,
        "running": p.running,
        "window_s": p.window_s,
        "sent_minus_due_ms": summary(&p.sent_ms),
        "began_minus_due_ms": summary(&p.began_ms),
        "expected": p.expected,
        "executed": p.executed,
        "failed": p.failed,
        "skipped": p.skipped,
        "db_executed": p.db_executed,
        "db_skipped": p.db_skipped,
        "manager_cpu_percent": p.manager_cpu_percent,
        "executors_cpu_percent": p.executors_cpu_percent,
        "machine_cpu_percent": p.machine_cpu_percent,
        "manager_rss_mb": p.manager_rss_mb,
        "manager_hwm_mb": p.manager_hwm_mb,
        "executors_rss_mb": p.executors_rss_mb,
        "executors_pss_mb": p.executors_pss_mb,
        "runaway": p.runaway,
        "oom_kills": p.oom_kills,
    })
}
