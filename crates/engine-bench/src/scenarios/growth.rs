//! Growth: at each scale a fresh engine, all strategies started by one INSERT, then
//! the manager's and executors' memory and CPU over a window, and the global stop.

use super::{mb, ms, BenchContext};
use crate::engine::{BenchEngine, EngineOptions, StatusEvent, StrategySpec};
use crate::probe::{self, ProcId};
use crate::report::{summarize, Figure, Goal, GrowthPoint, Progress, Results};
use anyhow::Context as _;
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
        eprintln!(
            "\n== growth: {n} strategies (health interval 1 s, CPU over {:.0} s) ==",
            ctx.args.cpu_window.as_secs_f64()
        );
        let options = EngineOptions {
            label: format!("growth-{n}"),
            health_interval: Some(Duration::from_secs(1)),
            metrics_interval: None,
            restart_delay: None,
            strategies: (0..n)
                .map(|i| StrategySpec::heartbeat(format!("g{n}-{i:04}")))
                .collect(),
        };
        let mut engine =
            BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
        let outcome = growth_on(&mut engine, ctx, n).await;
        let shutdown = engine.shutdown().await;
        let point = outcome?;
        shutdown?;
        eprintln!(
            "  = {n}: all running in {} s, manager {} MB RSS, {} % CPU",
            point
                .start_all_running_s
                .map(crate::report::num)
                .unwrap_or_else(|| "?".into()),
            point
                .manager_rss_mb
                .map(crate::report::num)
                .unwrap_or_else(|| "?".into()),
            point
                .manager_cpu_percent
                .map(crate::report::num)
                .unwrap_or_else(|| "?".into()),
        );
        results.growth.push(point);
    }
    // The headline figures come from the scale nearest to --headline-scale.
    let Some(head) = results
        .growth
        .iter()
        .min_by_key(|g| g.strategies.abs_diff(ctx.args.headline_scale))
        .cloned()
    else {
        return Ok(());
    };
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
            head.manager_hwm_mb
                .map(crate::report::num)
                .unwrap_or_else(|| "?".into())
        )),
    );
    results.push(
        Figure::single("manager_cpu_percent", &format!("manager CPU, {n} strategies running, 1 s health interval"), "% of a core", head.manager_cpu_percent, Some(Goal::AtMost(2.0)))
            .with_note(format!(
                "user + system time over {:.0} s (utime + stime of /proc/<pid>/stat, all threads); the executors together used {} % of a core, the whole machine was {} % busy",
                head.cpu_window_s,
                head.executors_cpu_percent.map(crate::report::num).unwrap_or_else(|| "?".into()),
                head.machine_cpu_percent.map(crate::report::num).unwrap_or_else(|| "?".into()),
            )),
    );
    results.push(
        Figure::single("start_all_s", &format!("{n} `start` commands inserted at once → all `running`"), "s", head.start_all_running_s, Some(Goal::AtMost(10.0)))
            .with_note(format!(
                "one INSERT … SELECT of {n} rows; to the last manager `running` message; all rows executed after {} s{not_all}",
                head.start_all_executed_s.map(crate::report::num).unwrap_or_else(|| "?".into())
            )),
    );
    Ok(())
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
    let wanted: HashSet<Uuid> = engine.strategies.iter().copied().collect();

    // All the starts in one statement (one transaction: one created_at).
    engine.status_feed.drain();
    let created = db::command_every_strategy(&engine.pool, CommandWord::Start)
        .await
        .context("cannot insert the start commands")?;
    let created = *created.first().context("no start command inserted")?;
    let mut running = HashSet::new();
    let mut failed = HashSet::new();
    let mut last_running = None;
    let until = Instant::now() + Duration::from_secs(60) + Duration::from_millis(200) * n as u32;
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
    point.running = running.len();
    point.failed_starts = failed.len();
    if running.len() == n {
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

    // Let start-up settle and the health sampler take its first samples, then
    // measure CPU over the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let executors = engine.executor_processes().await;
    let cpu_of = |procs: &[ProcId]| -> u64 {
        procs
            .iter()
            .filter_map(|p| probe::threads_cpu_ns(p.pid))
            .sum()
    };
    let manager_from = probe::cpu_ns(engine.manager.pid);
    let executors_from = cpu_of(&executors);
    let machine_from = probe::machine_busy_ns();
    let window_from = std::time::Instant::now();
    let mut progress = Progress::new("cpu window (s)", ctx.args.cpu_window.as_secs() as usize);
    while window_from.elapsed() < ctx.args.cpu_window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.set(window_from.elapsed().as_secs() as usize);
    }
    progress.finish();
    let wall_ns = window_from.elapsed().as_nanos() as f64;
    let manager_to = probe::cpu_ns(engine.manager.pid);
    let still: Vec<ProcId> = executors.iter().copied().filter(ProcId::alive).collect();
    let executors_to = cpu_of(&still);
    let machine_to = probe::machine_busy_ns();
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
    point.manager_rss_mb = probe::rss_kib(engine.manager.pid).map(mb);
    point.manager_hwm_mb = probe::hwm_kib(engine.manager.pid).map(mb);
    let rss: Vec<f64> = still
        .iter()
        .filter_map(|p| probe::rss_kib(p.pid))
        .map(mb)
        .collect();
    if let Some(s) = summarize(&rss) {
        point.executor_rss_median_mb = Some(s.p50);
        point.executor_rss_max_mb = Some(s.max);
    }
    let pss: u64 = still.iter().filter_map(|p| probe::pss_kib(p.pid)).sum();
    point.executors_pss_total_mb = Some(mb(pss));
    if executors.len() != running.len() {
        eprintln!(
            "  note: {} executors in the process table, {} strategies reported running",
            executors.len(),
            running.len()
        );
    }

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
