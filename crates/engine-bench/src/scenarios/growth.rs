//! Growth: at each scale a fresh engine, all strategies started by one INSERT, then
//! the manager's and executors' memory and CPU over a window, and the global stop.

use super::{mb, ms, BenchContext};
use crate::engine::{BenchEngine, EngineOptions, StatusEvent, StrategySpec};
use crate::probe::ProcId;
use crate::report::{summarize, Figure, Goal, GrowthPoint, Progress, Results};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use engine_store::bench as db;
use engine_store::{CommandStatus, CommandWord};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Memory, CPU and start-all time at each scale, each on a fresh engine.
pub async fn growth(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    for &n in &ctx.args.scales {
        let point = growth_at_scale(ctx, n).await?;
        results.growth.push(point);
    }
    // The headline figures come from the scale nearest to --headline-scale.
    let head = results
        .growth
        .iter()
        .min_by_key(|g| g.strategies.abs_diff(ctx.args.headline_scale))
        .cloned();
    if let Some(head) = head {
        push_headline(results, &head);
    }
    Ok(())
}

/// A number, or `?` when it could not be measured.
fn num_or_unknown(value: Option<f64>) -> String {
    value.map(crate::report::num).unwrap_or_else(|| "?".into())
}

/// One scale: a fresh engine with `n` heartbeats, measured, then shut down.
async fn growth_at_scale(ctx: &BenchContext, n: usize) -> anyhow::Result<GrowthPoint> {
    eprintln!(
        "\n== growth: {n} strategies (health interval 1 s, CPU over {:.0} s) ==",
        ctx.args.cpu_window.as_secs_f64()
    );
    let options = EngineOptions {
        label: format!("growth-{n}"),
        health_interval: Some(Duration::from_secs(1)),
        metrics_interval: None,
        restart_delay: None,
        max_concurrent_executions: None,
        strategies: (0..n)
            .map(|i| StrategySpec::heartbeat(format!("g{n}-{i:04}")))
            .collect(),
        data: Vec::new(),
    };
    let mut engine = BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
    let outcome = growth_on(&mut engine, ctx, n).await;
    let shutdown = engine.shutdown().await;
    let point = outcome?;
    shutdown?;
    eprintln!(
        "  = {n}: all running in {} s, manager {} MB RSS, {} % CPU",
        num_or_unknown(point.start_all_running_s),
        num_or_unknown(point.manager_rss_mb),
        num_or_unknown(point.manager_cpu_percent),
    );
    Ok(point)
}

/// The headline figures (memory, CPU, start-all) of one scale.
fn push_headline(results: &mut Results, head: &GrowthPoint) {
    let n = head.strategies;
    let not_all = if head.running < n {
        format!("; only {} of {n} were running", head.running)
    } else {
        String::new()
    };
    results.push(
        Figure::single(
            "manager_rss_mb",
            &format!("manager resident memory, {n} strategies running"),
            "MB",
            head.manager_rss_mb,
            Some(Goal::AtMost(25.0)),
        )
        .with_note(format!(
            "VmRSS after the CPU window; peak (VmHWM) {} MB{not_all}",
            num_or_unknown(head.manager_hwm_mb)
        )),
    );
    results.push(
        Figure::single("manager_cpu_percent", &format!("manager CPU, {n} strategies running, 1 s health interval"), "% of a core", head.manager_cpu_percent, Some(Goal::AtMost(2.0)))
            .with_note(format!(
                "user + system time over {:.0} s (utime + stime of /proc/<pid>/stat, all threads); the executors together used {} % of a core, the whole machine was {} % busy",
                head.cpu_window_s,
                num_or_unknown(head.executors_cpu_percent),
                num_or_unknown(head.machine_cpu_percent),
            )),
    );
    results.push(
        Figure::single("start_all_s", &format!("{n} `start` commands inserted at once → all `running`"), "s", head.start_all_running_s, Some(Goal::AtMost(10.0)))
            .with_note(format!(
                "one INSERT … SELECT of {n} rows; to the last manager `running` message; all rows executed after {} s{not_all}",
                num_or_unknown(head.start_all_executed_s)
            )),
    );
}

async fn growth_on(
    engine: &mut BenchEngine,
    ctx: &BenchContext,
    n: usize,
) -> anyhow::Result<GrowthPoint> {
    let mut point = GrowthPoint {
        strategies: n,
        cpu_window_s: ctx.args.cpu_window.as_secs_f64(),
        ..GrowthPoint::default()
    };
    let running = start_all(engine, n, &mut point).await?;
    measure_window(engine, ctx, running, &mut point).await;

    // The kill switch: a global stop of everything, timed to its row's executed_at.
    let (cmd, created) = engine
        .insert_command(None, CommandWord::Stop, json!({}))
        .await?;
    let deadline = Duration::from_secs(60) + Duration::from_millis(100) * n as u32;
    let end = engine.wait_command(cmd, deadline).await?;
    if end.status == CommandStatus::Executed {
        point.global_stop_s = end.executed_at.map(|at| ms(at, created) / 1000.0);
    }
    Ok(point)
}

/// All the starts in one statement (one transaction: one created_at), timed to the
/// last `running` message and to the last row executed; how many came up running.
async fn start_all(
    engine: &mut BenchEngine,
    n: usize,
    point: &mut GrowthPoint,
) -> anyhow::Result<usize> {
    engine.status_feed.drain();
    let created = db::command_every_strategy(&engine.pool, CommandWord::Start)
        .await
        .context("cannot insert the start commands")?;
    let created = *created.first().context("no start command inserted")?;
    let until = Instant::now() + Duration::from_secs(60) + Duration::from_millis(200) * n as u32;
    let (running, failed, last_running) = await_running(engine, n, until).await;
    point.running = running;
    point.failed_starts = failed;
    if running == n {
        point.start_all_running_s = last_running.map(|at| ms(at, created) / 1000.0);
    }
    let until = Instant::now() + Duration::from_secs(60) + Duration::from_millis(200) * n as u32;
    loop {
        let (finished, last) = db::finished_commands(&engine.pool, CommandWord::Start).await?;
        if finished as usize >= n {
            point.start_all_executed_s = last.map(|at| ms(at, created) / 1000.0);
            break;
        }
        if Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(running)
}

/// Follow the manager's status messages until each of the `n` strategies is running
/// or failed, or `until`: (running, failed, when the last one came up running).
pub(crate) async fn await_running(
    engine: &mut BenchEngine,
    n: usize,
    until: Instant,
) -> (usize, usize, Option<DateTime<Utc>>) {
    let wanted: HashSet<Uuid> = engine.strategies.iter().copied().collect();
    let mut running = HashSet::new();
    let mut failed = HashSet::new();
    let mut last_running = None;
    let mut progress = Progress::new("running", n);
    while running.len() + failed.len() < n {
        let Some(msg) = engine.status_feed.next_until(until).await else {
            eprintln!(
                "\n  only {} of {n} running after the deadline ({} failed)",
                running.len(),
                failed.len()
            );
            break;
        };
        let Some(event) = StatusEvent::parse(&msg) else {
            continue;
        };
        if !wanted.contains(&event.strategy_id) || !event.is_from_manager() {
            continue;
        }
        match event.status.as_str() {
            "running" if running.insert(event.strategy_id) => {
                last_running = Some(event.at);
                progress.set(running.len());
            }
            "error" | "backoff" => {
                failed.insert(event.strategy_id);
            }
            _ => {}
        }
    }
    progress.finish();
    (running.len(), failed.len(), last_running)
}

/// Let start-up settle and the health sampler take its first samples, then measure
/// CPU over the window, and memory after it.
async fn measure_window(
    engine: &BenchEngine,
    ctx: &BenchContext,
    running: usize,
    point: &mut GrowthPoint,
) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let executors = engine.executor_processes().await;
    let cpu_of = |procs: &[ProcId]| -> u64 {
        procs
            .iter()
            .filter_map(|p| procfs::threads_cpu_ns(p.pid))
            .sum()
    };
    let manager_from = procfs::cpu_ns(engine.manager.pid);
    let executors_from = cpu_of(&executors);
    let machine_from = procfs::machine_busy_ns();
    let window_from = std::time::Instant::now();
    let mut progress = Progress::new("cpu window (s)", ctx.args.cpu_window.as_secs() as usize);
    while window_from.elapsed() < ctx.args.cpu_window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.set(window_from.elapsed().as_secs() as usize);
    }
    progress.finish();
    let wall_ns = window_from.elapsed().as_nanos() as f64;
    let manager_to = procfs::cpu_ns(engine.manager.pid);
    let still: Vec<ProcId> = executors.iter().copied().filter(ProcId::alive).collect();
    let executors_to = cpu_of(&still);
    let machine_to = procfs::machine_busy_ns();
    if let (Some(a), Some(b)) = (manager_from, manager_to) {
        point.manager_cpu_percent = Some(b.saturating_sub(a) as f64 / wall_ns * 100.0);
    }
    if still.len() == executors.len() {
        point.executors_cpu_percent =
            Some(executors_to.saturating_sub(executors_from) as f64 / wall_ns * 100.0);
    }
    if let (Some(a), Some(b)) = (machine_from, machine_to) {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        point.machine_cpu_percent = Some(b.saturating_sub(a) as f64 / (wall_ns * cores) * 100.0);
    }
    record_memory(engine, &still, point);
    if executors.len() != running {
        eprintln!(
            "  note: {} executors in the process table, {} strategies reported running",
            executors.len(),
            running
        );
    }
}

/// The manager's RSS and peak, the executors' RSS (median, max) and total PSS.
fn record_memory(engine: &BenchEngine, executors: &[ProcId], point: &mut GrowthPoint) {
    point.manager_rss_mb = procfs::rss_kib(engine.manager.pid).map(mb);
    point.manager_hwm_mb = procfs::hwm_kib(engine.manager.pid).map(mb);
    point.manager_rss_anon_mb = procfs::status_kib(engine.manager.pid, "RssAnon").map(mb);
    point.manager_rss_file_mb = procfs::status_kib(engine.manager.pid, "RssFile").map(mb);
    let rss: Vec<f64> = executors
        .iter()
        .filter_map(|p| procfs::rss_kib(p.pid))
        .map(mb)
        .collect();
    if let Some(s) = summarize(&rss) {
        point.executor_rss_median_mb = Some(s.p50);
        point.executor_rss_max_mb = Some(s.max);
    }
    let pss: u64 = executors
        .iter()
        .filter_map(|p| procfs::pss_kib(p.pid))
        .sum();
    point.executors_pss_total_mb = Some(mb(pss));
}
