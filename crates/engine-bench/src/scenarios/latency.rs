//! Latency: command claim, start, stop and crash detection, one sample at a time on
//! a quiet engine (the origin of a command is its row's `created_at`), with each
//! path broken down by the manager's own `strategy_events` timestamps; and the
//! executors' resident memory.

use super::{mb, ms, BenchContext, EVENT_DEADLINE, WARMUP};
use crate::engine::{BenchEngine, EngineOptions, StatusEvent, StrategySpec};
use crate::probe::{self, ProcId};
use crate::report::{num, summarize, Figure, Goal, Progress, Results};
use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use engine_store::bench as db;
use engine_store::{CommandStatus, CommandWord, Status};
use rustix::process::Signal;
use serde_json::json;
use sqlx::Connection;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Command latencies and crash detection, one sample at a time.
pub async fn latency(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    let samples = ctx.args.samples;
    let n = samples + WARMUP;
    eprintln!(
        "\n== latency: {samples} samples per figure (+{WARMUP} warm-up), heartbeat strategies, {n} executors at most =="
    );
    let options = EngineOptions {
        label: "latency".into(),
        health_interval: None,
        metrics_interval: None,
        // Only shortens the wait for the restart between two SIGKILL samples.
        restart_delay: Some(Duration::from_millis(200)),
        max_concurrent_executions: None,
        strategies: (0..n)
            .map(|i| StrategySpec::heartbeat(format!("lat-{i:04}")))
            .collect(),
        data: Vec::new(),
    };
    let mut engine = BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
    let outcome = latency_on(&mut engine, results).await;
    let shutdown = engine.shutdown().await;
    outcome?;
    shutdown
}

async fn latency_on(engine: &mut BenchEngine, results: &mut Results) -> anyhow::Result<()> {
    let ids = engine.strategies.clone();
    let busy = MachineBusy::start();
    let starts = start_samples(engine, &ids).await?;
    let claims = claim_samples(engine, &ids).await?;
    let (rss, pss) = executor_memory(engine).await?;
    let kills = sigkill_samples(engine, &ids).await?;
    let stops = stop_samples(engine, &ids).await?;
    let limited = limited_start_samples(engine, &ids).await?;
    let triggers = trigger_samples(engine, ids[0], ids.len()).await?;
    let busy = busy.finish();

    report_claim(results, &claims, &starts, &busy);
    report_start(results, &starts);
    report_limited_start(results, &starts, &limited);
    report_trigger(results, &triggers);
    report_stop(results, &stops);
    report_sigkill_and_memory(results, &kills, &rss, &pss);
    results
        .extra
        .insert("latency_machine_busy".into(), json!(busy));
    Ok(())
}

/// start: INSERT → running (manager's and executor's message) → row executed, and
/// where the time went, from the manager's own `strategy_events` timestamps.
async fn start_samples(engine: &mut BenchEngine, ids: &[Uuid]) -> anyhow::Result<StartSeries> {
    let mut s = StartSeries::default();
    let mut progress = Progress::new("start", ids.len());
    for (i, id) in ids.iter().enumerate() {
        engine.status_feed.drain();
        let cmd = engine
            .insert_command_timed(Some(*id), CommandWord::Start, json!({}))
            .await?;
        let seen = wait_running(engine, *id).await?;
        let end = engine.wait_command(cmd.id, EVENT_DEADLINE).await?;
        if end.status != CommandStatus::Executed {
            bail!("start of {id} ended {}: {:?}", end.status, end.error);
        }
        let executed = end.executed_at.context("executed without executed_at")?;
        if i >= WARMUP {
            let created = cmd.created_at;
            s.insert_commit.push(ms(cmd.committed_at, created));
            s.to_running.push(ms(seen.manager, created));
            let first = seen.executor.map_or(seen.manager, |e| e.min(seen.manager));
            s.to_first_running.push(ms(first, created));
            s.to_executed.push(ms(executed, created));
            let events = engine.events_of_command(cmd.id).await;
            let at = |status: Status| events.iter().find(|(s, _)| *s == status).map(|(_, at)| *at);
            if let (Some(starting), Some(running)) = (at(Status::Starting), at(Status::Running)) {
                s.to_starting.push(ms(starting, created));
                s.starting_to_running.push(ms(running, starting));
                s.running_to_message.push(ms(seen.manager, running));
                s.message_to_executed.push(ms(executed, seen.manager));
            }
        }
        progress.set(i + 1);
    }
    progress.finish();

    Ok(s)
}

/// The limits every strategy gets for the starts with limits: each a file write in
/// its group (or an rlimit), none binding for a heartbeat.
const BENCH_LIMITS: &str =
    r#"{"memory_mb": 256, "cpu_percent": 100, "pids": 256, "open_files": 1024}"#;

/// start with limits set (CONTRACT §6: a group made, written and joined before the
/// executor reads its stdin), on the same strategies, stopped again after.
async fn limited_start_samples(
    engine: &mut BenchEngine,
    ids: &[Uuid],
) -> anyhow::Result<StartSeries> {
    let limits: serde_json::Value = serde_json::from_str(BENCH_LIMITS)?;
    db::set_limits(&engine.pool, ids, &limits).await?;
    let limited = start_samples(engine, ids).await?;
    stop_samples(engine, ids).await?;
    Ok(limited)
}

/// claim: a no-op command (start of a running strategy), polled in a tight loop on
/// a connection of its own until it leaves 'pending'.
async fn claim_samples(engine: &mut BenchEngine, ids: &[Uuid]) -> anyhow::Result<ClaimSeries> {
    let mut poller = sqlx::PgConnection::connect(engine.db_url()).await?;
    let mut c = ClaimSeries::default();
    let mut progress = Progress::new("claim", ids.len());
    for (i, id) in ids.iter().enumerate() {
        let cmd = engine
            .insert_command_timed(Some(*id), CommandWord::Start, json!({}))
            .await?;
        let until = Utc::now() + chrono::Duration::seconds(30);
        let mut last_poll = cmd.committed_at;
        let claimed_at = loop {
            let status = db::command_status(&mut poller, cmd.id).await?;
            let now = Utc::now();
            if status != CommandStatus::Pending {
                if i >= WARMUP {
                    c.poll_gaps.push(ms(now, last_poll));
                }
                break now;
            }
            if now > until {
                bail!(
                    "command {} stayed pending for 30 s: {}",
                    cmd.id,
                    engine.manager_log_tail(5)
                );
            }
            last_poll = now;
        };
        let end = engine.wait_command(cmd.id, EVENT_DEADLINE).await?;
        if i >= WARMUP {
            c.to_claim.push(ms(claimed_at, cmd.committed_at));
            c.to_claim_from_created.push(ms(claimed_at, cmd.created_at));
            if let Some(at) = end.executed_at {
                c.noop_executed.push(ms(at, cmd.created_at));
            }
        }
        progress.set(i + 1);
    }
    progress.finish();
    let _ = poller.close().await;

    Ok(c)
}

/// Executors' memory (RSS, PSS in MB), every one that runs now.
async fn executor_memory(engine: &BenchEngine) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let pids = engine.running_pids().await?;
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for pid in pids.values() {
        if let Some(kib) = procfs::rss_kib(*pid) {
            rss.push(mb(kib));
        }
        if let Some(kib) = procfs::pss_kib(*pid) {
            pss.push(mb(kib));
        }
    }

    Ok((rss, pss))
}

/// SIGKILL → backoff, each strategy killed once; the next sample waits until the
/// killed one runs again, so that every sample starts on a quiet engine.
async fn sigkill_samples(engine: &mut BenchEngine, ids: &[Uuid]) -> anyhow::Result<KillSeries> {
    let mut k = KillSeries::default();
    let mut progress = Progress::new("sigkill", ids.len());
    for (i, id) in ids.iter().enumerate() {
        let pid = engine.running_pid(*id).await?;
        let Some(victim) = ProcId::of(pid) else {
            bail!("the executor of {id} (pid {pid}) is gone before it was killed");
        };
        engine.status_feed.drain();
        let killed_at = Utc::now();
        probe::signal(victim.pid, Signal::KILL);
        let backoff = wait_status(engine, *id, "backoff", true).await?;
        wait_status(engine, *id, "running", true).await?;
        if i >= WARMUP {
            k.to_backoff.push(ms(backoff, killed_at));
            if let Some(recorded) = engine.last_event(*id, Status::Backoff).await {
                k.kill_to_recorded.push(ms(recorded, killed_at));
                k.recorded_to_message.push(ms(backoff, recorded));
            }
        }
        progress.set(i + 1);
    }
    progress.finish();

    Ok(k)
}

/// stop: INSERT → the process has exited (watched in /proc every ms) and the row is
/// executed.
async fn stop_samples(engine: &mut BenchEngine, ids: &[Uuid]) -> anyhow::Result<StopSeries> {
    let mut t = StopSeries::default();
    let mut progress = Progress::new("stop", ids.len());
    for (i, id) in ids.iter().enumerate() {
        let pid = engine.running_pid(*id).await?;
        let victim = ProcId::of(pid).with_context(|| format!("the executor of {id} is gone"))?;
        let (cmd, created) = engine
            .insert_command(Some(*id), CommandWord::Stop, json!({}))
            .await?;
        let until = Instant::now() + EVENT_DEADLINE;
        let mut exited_at = None;
        let mut end = None;
        while exited_at.is_none() || end.is_none() {
            if exited_at.is_none() && !victim.alive() {
                exited_at = Some(Utc::now());
            }
            if end.is_none() {
                end = engine.command_end(cmd).await?;
                if end.is_some() && exited_at.is_none() && victim.alive() {
                    t.executed_before_exit += 1;
                }
            }
            if Instant::now() > until {
                bail!(
                    "stop of {id} did not finish in 30 s: {}",
                    engine.manager_log_tail(5)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let end = end.expect("loop ends with the row");
        if end.status != CommandStatus::Executed {
            bail!("stop of {id} ended {}: {:?}", end.status, end.error);
        }
        let exited = exited_at.expect("loop ends with the exit");
        let executed = end.executed_at.context("executed without executed_at")?;
        if i >= WARMUP {
            t.to_stopped.push(ms(exited.max(executed), created));
            t.exit_to_executed.push(ms(executed, exited));
            let events = engine.events_of_command(cmd).await;
            if let Some((_, stopping)) = events.iter().find(|(s, _)| *s == Status::Stopping) {
                t.to_stopping.push(ms(*stopping, created));
                t.stopping_to_exit.push(ms(exited, *stopping));
            }
        }
        progress.set(i + 1);
    }
    progress.finish();
    Ok(t)
}

/// trigger (CONTRACT §5): `samples` `trigger` commands, one at a time, to a running
/// heartbeat made an interval strategy with an interval too long to come due
/// (a year), so that every execution is a manual one; a no-op step. INSERT → row
/// `executed` (the execution ended well, carried over the control link).
async fn trigger_samples(
    engine: &mut BenchEngine,
    id: Uuid,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    // A year (the longest allowed): its first due time, somewhere within its
    // interval, practically never falls among the samples.
    db::set_execution_interval(&engine.pool, id, 31_536_000)
        .await
        .context("make the strategy an interval strategy")?;
    let start = engine
        .insert_command_timed(Some(id), CommandWord::Start, json!({}))
        .await?;
    wait_running(engine, id).await?;
    let end = engine.wait_command(start.id, EVENT_DEADLINE).await?;
    if end.status != CommandStatus::Executed {
        bail!("start of {id} ended {}: {:?}", end.status, end.error);
    }
    let mut samples_ms = Vec::with_capacity(samples);
    let mut progress = Progress::new("trigger", samples);
    for i in 0..samples {
        let cmd = engine
            .insert_command_timed(Some(id), CommandWord::Trigger, json!({}))
            .await?;
        let end = engine.wait_command(cmd.id, EVENT_DEADLINE).await?;
        if end.status != CommandStatus::Executed {
            bail!("trigger of {id} ended {}: {:?}", end.status, end.error);
        }
        let executed = end.executed_at.context("executed without executed_at")?;
        if i >= WARMUP {
            samples_ms.push(ms(executed, cmd.created_at));
        }
        progress.set(i + 1);
    }
    progress.finish();
    stop_samples(engine, &[id]).await?;
    Ok(samples_ms)
}

fn report_trigger(results: &mut Results, samples: &[f64]) {
    results.push(
        Figure::series(
            "trigger_executed_ms",
            "`trigger` INSERT → execution ended, row `executed` (no-op step)",
            "ms",
            samples,
            Some(Goal::P50AtMost(5.0)),
        )
        .with_note("a heartbeat with execution_interval_s 31536000 (no due execution meanwhile); created_at → executed_at of the command row, polled every 2 ms".to_string()),
    );
}

fn report_claim(results: &mut Results, c: &ClaimSeries, s: &StartSeries, busy: &str) {
    let gap = summarize(&c.poll_gaps).map(|s| s.p50).unwrap_or(0.0);
    results.push(
        Figure::series(
            "claim_ms",
            "command INSERT → row claimed (leaves 'pending')",
            "ms",
            &c.to_claim,
            Some(Goal::P50AtMost(2.0)),
        )
        .with_note(format!(
            "from the INSERT's return (its commit) to the first poll that saw the row claimed: an upper bound (a tight loop of SELECTs on a connection of its own; median gap between the last two polls {gap:.2} ms); the command is a no-op start of a running strategy; the machine was {busy} busy during the latency part"
        )),
    );
    results.push(sub(
        "claim_from_created_ms",
        "same, from the row's created_at (adds the INSERT's own commit)",
        &c.to_claim_from_created,
    ));
    results.push(sub(
        "insert_commit_ms",
        "the operator's INSERT itself (created_at → it returned: WAL flush)",
        &s.insert_commit,
    ));
    results.push(Figure::series(
        "noop_executed_ms",
        "no-op command INSERT → row executed",
        "ms",
        &c.noop_executed,
        None,
    ));
}

fn report_start(results: &mut Results, s: &StartSeries) {
    results.push(
        Figure::series(
            "start_running_ms",
            "`start` INSERT → `running` on strategy:status (manager's)",
            "ms",
            &s.to_running,
            Some(Goal::P50P99AtMost(20.0, 60.0)),
        )
        .with_note(
            "from the row's created_at to the manager's message, which it publishes after recording `running` in the row; the subscription was open before the INSERT",
        ),
    );
    results.push(sub(
        "start_to_starting_ms",
        "INSERT → `starting` recorded (claim, desired_state, reload, spawn)",
        &s.to_starting,
    ));
    results.push(sub(
        "starting_to_running_ms",
        "`starting` → `running` recorded (executor start-up, control link)",
        &s.starting_to_running,
    ));
    results.push(sub(
        "running_to_message_ms",
        "`running` recorded → manager's message received (commit, publish)",
        &s.running_to_message,
    ));
    results.push(
        Figure::series(
            "start_first_running_ms",
            "`start` INSERT → first `running` on strategy:status (either publisher)",
            "ms",
            &s.to_first_running,
            None,
        )
        .with_note("usually the executor's own message, a little before the manager's"),
    );
    results.push(Figure::series(
        "start_executed_ms",
        "`start` INSERT → row `executed`",
        "ms",
        &s.to_executed,
        Some(Goal::P50AtMost(25.0)),
    ));
    results.push(sub(
        "message_to_executed_ms",
        "manager's `running` message → row executed_at",
        &s.message_to_executed,
    ));
}

/// The cost of limits: start → running with limits against without, in one run.
fn report_limited_start(results: &mut Results, plain: &StartSeries, limited: &StartSeries) {
    results.push(
        Figure::series(
            "start_running_limited_ms",
            "`start` INSERT → `running` on strategy:status, with limits set",
            "ms",
            &limited.to_running,
            None,
        )
        .with_note(format!(
            "the same strategies as start_running_ms, after it, with limits {BENCH_LIMITS}; the mechanism is the manager's (`enginectl doctor`)"
        )),
    );
    let p50 = |s: &StartSeries| summarize(&s.to_running).map(|sum| sum.p50);
    let ratio = p50(limited)
        .zip(p50(plain))
        .filter(|(_, plain)| *plain > 0.0)
        .map(|(limited, plain)| limited / plain);
    results.push(Figure::single(
        "start_limits_ratio",
        "start → running p50, with limits / without",
        "×",
        ratio,
        None,
    ));
}

fn report_stop(results: &mut Results, t: &StopSeries) {
    let executed_before_exit = t.executed_before_exit;
    let mut stop_note = "the later of: the process left the process table (checked every 1 ms), the row's executed_at".to_string();
    if executed_before_exit > 0 {
        stop_note.push_str(&format!(
            "; CONTRACT BREACH: {executed_before_exit} rows were executed while the process was still alive"
        ));
    }
    results.push(
        Figure::series(
            "stop_gone_ms",
            "`stop` INSERT → process gone and row `executed`",
            "ms",
            &t.to_stopped,
            Some(Goal::P50AtMost(30.0)),
        )
        .with_note(stop_note),
    );
    results.push(sub(
        "stop_to_stopping_ms",
        "INSERT → `stopping` recorded (claim, desired_state)",
        &t.to_stopping,
    ));
    results.push(sub(
        "stopping_to_exit_ms",
        "`stopping` → process exited (shutdown frame, strategy's on_shutdown, exit)",
        &t.stopping_to_exit,
    ));
    results.push(sub(
        "exit_to_executed_ms",
        "process exited → row executed_at",
        &t.exit_to_executed,
    ));
}

fn report_sigkill_and_memory(results: &mut Results, k: &KillSeries, rss: &[f64], pss: &[f64]) {
    results.push(
        Figure::series(
            "sigkill_backoff_ms",
            "executor SIGKILLed → `backoff` on strategy:status",
            "ms",
            &k.to_backoff,
            Some(Goal::P99AtMost(50.0)),
        )
        .with_note("from just before kill(2) to the manager's `backoff` message"),
    );
    results.push(sub(
        "kill_to_recorded_ms",
        "kill → `backoff` recorded (exit noticed, log tail read)",
        &k.kill_to_recorded,
    ));
    results.push(sub(
        "backoff_recorded_to_message_ms",
        "`backoff` recorded → message received (commit, publish)",
        &k.recorded_to_message,
    ));
    let pss_median = summarize(pss).map(|s| s.p50);
    results.push(
        Figure::series(
            "executor_rss_mb",
            "executor resident memory (heartbeat)",
            "MB",
            rss,
            Some(Goal::MaxAtMost(8.0)),
        )
        .with_note(format!(
            "VmRSS of every running executor; proportional share (PSS: shared library and binary pages split among the executors) median {} MB",
            pss_median.map(num).unwrap_or_else(|| "?".into())
        )),
    );
}

/// The series of the claim samples.
#[derive(Default)]
struct ClaimSeries {
    to_claim: Vec<f64>,
    to_claim_from_created: Vec<f64>,
    poll_gaps: Vec<f64>,
    noop_executed: Vec<f64>,
}

/// The series of the SIGKILL samples.
#[derive(Default)]
struct KillSeries {
    to_backoff: Vec<f64>,
    kill_to_recorded: Vec<f64>,
    recorded_to_message: Vec<f64>,
}

/// The series of the stop samples.
#[derive(Default)]
struct StopSeries {
    to_stopped: Vec<f64>,
    to_stopping: Vec<f64>,
    stopping_to_exit: Vec<f64>,
    exit_to_executed: Vec<f64>,
    executed_before_exit: usize,
}

/// A breakdown row under a figure: no goal of its own.
fn sub(key: &str, label: &str, values: &[f64]) -> Figure {
    Figure::series(key, &format!("  ↳ {label}"), "ms", values, None)
}

/// The series of the start samples.
#[derive(Default)]
struct StartSeries {
    insert_commit: Vec<f64>,
    to_running: Vec<f64>,
    to_first_running: Vec<f64>,
    to_executed: Vec<f64>,
    to_starting: Vec<f64>,
    starting_to_running: Vec<f64>,
    running_to_message: Vec<f64>,
    message_to_executed: Vec<f64>,
}

/// How busy the whole machine was (both cores, everything on it) over a part.
struct MachineBusy {
    from: Option<u64>,
    at: std::time::Instant,
}

impl MachineBusy {
    fn start() -> MachineBusy {
        MachineBusy {
            from: procfs::machine_busy_ns(),
            at: std::time::Instant::now(),
        }
    }

    /// E.g. `73 %`, or `?`.
    fn finish(self) -> String {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        match (self.from, procfs::machine_busy_ns()) {
            (Some(a), Some(b)) => format!(
                "{:.0} %",
                b.saturating_sub(a) as f64 / (self.at.elapsed().as_nanos() as f64 * cores) * 100.0
            ),
            _ => "?".to_string(),
        }
    }
}

/// When the manager's (and, if it comes within a second of it, the executor's)
/// `running` message for `id` arrived.
struct RunningSeen {
    manager: DateTime<Utc>,
    executor: Option<DateTime<Utc>>,
}

async fn wait_running(engine: &mut BenchEngine, id: Uuid) -> anyhow::Result<RunningSeen> {
    let until = Instant::now() + EVENT_DEADLINE;
    let mut manager = None;
    let mut executor = None;
    let mut grace_until = until;
    loop {
        if manager.is_some() && executor.is_some() {
            break;
        }
        let Some(msg) = engine.status_feed.next_until(grace_until).await else {
            if manager.is_some() {
                break;
            }
            bail!(
                "no `running` for strategy {id} within 30 s: {}",
                engine.manager_log_tail(5)
            );
        };
        let Some(event) = StatusEvent::parse(&msg) else {
            continue;
        };
        if event.strategy_id != id {
            continue;
        }
        match event.status.as_str() {
            "running" if event.is_from_manager() => {
                manager.get_or_insert(event.at);
                grace_until = Instant::now() + Duration::from_secs(1);
            }
            "running" => {
                executor.get_or_insert(event.at);
            }
            "error" | "backoff" => {
                bail!(
                    "strategy {id} went to {} while starting: {}",
                    event.status,
                    engine.manager_log_tail(5)
                )
            }
            _ => {}
        }
    }
    Ok(RunningSeen {
        manager: manager.expect("loop ends with the manager's message"),
        executor,
    })
}

/// When a `status` message for `id` (from the manager, if `manager_only`) arrived.
async fn wait_status(
    engine: &mut BenchEngine,
    id: Uuid,
    status: &str,
    manager_only: bool,
) -> anyhow::Result<DateTime<Utc>> {
    let until = Instant::now() + EVENT_DEADLINE;
    loop {
        let Some(msg) = engine.status_feed.next_until(until).await else {
            bail!(
                "no `{status}` for strategy {id} within 30 s: {}",
                engine.manager_log_tail(5)
            );
        };
        let Some(event) = StatusEvent::parse(&msg) else {
            continue;
        };
        if event.strategy_id == id
            && event.status == status
            && (!manager_only || event.is_from_manager())
        {
            return Ok(event.at);
        }
    }
}
