//! The fault-injection suite ("nothing lost, nothing duplicated"): the real
//! `engine-manager` binary (a subprocess, so it can be SIGKILLed) with real executors
//! on a private PostgreSQL and Redis, while operators' commands flow and faults are
//! injected at random:
//!
//! - executors SIGKILLed, and run processes (`--run-id`) SIGKILLed,
//! - the manager SIGKILLed in the middle of commands and started again,
//! - Redis stopped (SIGKILL) and started again empty, PostgreSQL stopped (fast or
//!   immediate shutdown) and started again.
//!
//! The run is a sequence of rounds: a few seconds of commands and faults, then a
//! checkpoint once everything is repaired, where the suite measures the recovery and
//! checks the contract:
//!
//! - every command ended `executed` or `failed` (none left `pending`/`processing`);
//! - every strategy's row matches the process table within 5 s (running/paused: one
//!   executor, the row's pid; stopped/error: none) and its status is what the
//!   operators asked for (`desired_state`, itself what our own commands imply);
//! - no command took effect twice (`strategy_events` per command id);
//! - all along (a `/proc` scan every few ms): never two executors for one strategy;
//! - every other strategy is an interval strategy (every 1 s) with limits (cgroups
//!   where the host has them), `trigger` is in the command mix, and at every
//!   checkpoint each one's execution statistics add up and never go back.
//!
//! Runs (CONTRACT §4, [`runs`]) flow alongside: backtests, screeners and alerts over a
//! small data set, cancels for some; at every checkpoint each run is final or
//! legitimately queued/running, a completed one has its result and items, `attempt`
//! ≤ 1, and all along never two processes of one run nor more run processes than
//! `--max-concurrent-runs`.
//!
//! Size: `FAULT_SCALE` (default 1, the CI size: about 40 s;
//! `FAULT_SCALE=10` is the full run of RELIABILITY.md: hundreds of executor kills,
//! dozens of manager kills). `FAULT_SEED` replays a run. The figures are printed at the
//! end (`--nocapture`); the manager's log is kept when `KEEP_FAULT_LOG` names a file.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;
#[path = "fault_injection/runs.rs"]
mod runs;

use common::{
    executors_alive_together, executors_by_strategy, executors_in_proc, kill_all_executors,
    sigkill, spawn_manager_binary, try_wait_for, workspace_bin, Operator, PgStop, PrivateServices,
    RedisStop,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;
use tokio::time::Instant;
use uuid::Uuid;

/// The contract's bound: a strategy's row matches the process table within 5 s.
const MATCH_BOUND: Duration = Duration::from_secs(5);
/// How long a checkpoint waits for every command to end before calling the rest lost.
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);
/// How long a checkpoint keeps waiting past [`MATCH_BOUND`] to measure a late match.
const LATE_MATCH_DEADLINE: Duration = Duration::from_secs(30);
/// How long a restarted manager may take to hold its lease.
const MANAGER_UP_DEADLINE: Duration = Duration::from_secs(60);
/// How often the process table is scanned for two executors of one strategy.
const PROC_SCAN_EVERY: Duration = Duration::from_millis(5);

/// How big a run is.
#[derive(Debug, Clone)]
struct Scale {
    factor: f64,
    strategies: usize,
    rounds: usize,
    round_len: Duration,
    executor_kills_per_round: usize,
    manager_kills_per_round: usize,
    run_kills_per_round: usize,
    seed: u64,
}

impl Scale {
    fn from_env() -> Scale {
        let factor: f64 = std::env::var("FAULT_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|f: &f64| *f > 0.0)
            .unwrap_or(1.0);
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        Scale {
            factor,
            strategies: if factor >= 5.0 { 8 } else { 4 },
            rounds: ((6.0 * factor).round() as usize).max(3),
            round_len: Duration::from_secs(6),
            executor_kills_per_round: if factor >= 5.0 { 8 } else { 5 },
            manager_kills_per_round: 1,
            run_kills_per_round: if factor >= 5.0 { 5 } else { 3 },
            seed,
        }
    }
}

// ------------------------------------------------------------------ observations

/// What the `/proc` watcher saw.
#[derive(Default)]
struct ProcStats {
    scans: u64,
    /// The most executors seen at once for one strategy.
    max_per_strategy: usize,
    /// Each distinct (strategy, pids) seen with more than one executor, with when.
    doubles: Vec<(f64, Uuid, Vec<u32>)>,
    /// The most run processes seen alive at once.
    max_runs: usize,
    /// Each distinct set of run processes seen over `--max-concurrent-runs`, with when.
    runs_over_limit: Vec<(f64, Vec<u32>)>,
    /// Each distinct (run, pids) seen with more than one process, with when.
    run_doubles: Vec<(f64, Uuid, Vec<u32>)>,
}

fn watch_proc(
    socket: PathBuf,
    runs_dir: PathBuf,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ProcStats>>,
    started: std::time::Instant,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reported: HashSet<(Uuid, Vec<u32>)> = HashSet::new();
        let mut reported_runs: HashSet<(Uuid, Vec<u32>)> = HashSet::new();
        let mut reported_over: HashSet<Vec<u32>> = HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            let seen = executors_alive_together(&socket);
            let runs_seen = runs::run_processes_together(&runs_dir);
            let mut stats = stats.lock().unwrap();
            stats.scans += 1;
            let at = started.elapsed().as_secs_f64();
            for (id, pids) in seen {
                stats.max_per_strategy = stats.max_per_strategy.max(pids.len());
                if pids.len() > 1 && reported.insert((id, pids.clone())) {
                    stats.doubles.push((at, id, pids));
                }
            }
            let mut all: Vec<u32> = runs_seen.values().flatten().copied().collect();
            all.sort_unstable();
            stats.max_runs = stats.max_runs.max(all.len());
            if all.len() > runs::MAX_RUNS && reported_over.insert(all.clone()) {
                stats.runs_over_limit.push((at, all));
            }
            for (id, pids) in runs_seen {
                if pids.len() > 1 && reported_runs.insert((id, pids.clone())) {
                    stats.run_doubles.push((at, id, pids));
                }
            }
            drop(stats);
            std::thread::sleep(PROC_SCAN_EVERY);
        }
    })
}

/// A command the suite inserted.
#[derive(Debug, Clone)]
struct Issued {
    id: Uuid,
    strategy: Option<Uuid>,
    word: &'static str,
    /// An update with a config the strategy rejects: it must end `failed`.
    must_fail: bool,
}

/// The command mix: word, weight. (`trigger` on a continuous strategy, or one not
/// running, ends `failed`; either way it must end.)
const MIX: [(&str, u32); 8] = [
    ("trigger", 6),
    ("start", 24),
    ("stop", 14),
    ("restart", 14),
    ("pause", 16),
    ("resume", 16),
    ("update", 12),
    ("bad-update", 4),
];

fn pick_command(rng: &mut StdRng, options: &SuiteOptions) -> (&'static str, Value, bool) {
    let mix: Vec<(&str, u32)> = MIX
        .into_iter()
        .filter(|(w, _)| options.pause_commands || !matches!(*w, "pause" | "resume"))
        .collect();
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    let mut word = "start";
    for (w, weight) in mix {
        if roll < weight {
            word = w;
            break;
        }
        roll -= weight;
    }
    match word {
        "stop" | "restart" => (word, json!({"timeout_s": 3}), false),
        "update" => (
            word,
            json!({"config": {"interval_ms": rng.random_range(10..=60)}}),
            false,
        ),
        // interval_ms below the heartbeat's minimum of 10: the strategy rejects it.
        "bad-update" => ("update", json!({"config": {"interval_ms": 1}}), true),
        _ => (word, json!({}), false),
    }
}

/// Issue random commands until `stop` fires; returns how many inserts the database
/// refused (it was down).
async fn drive_commands(
    op: Operator,
    ids: Vec<Uuid>,
    issued: Arc<Mutex<Vec<Issued>>>,
    seed: u64,
    options: SuiteOptions,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut refused = 0;
    while !stop.is_cancelled() {
        let (strategy, word, params, must_fail) = if rng.random_bool(0.03) {
            let word = if options.pause_commands {
                ["pause", "resume", "stop"][rng.random_range(0..3)]
            } else {
                "stop"
            };
            (None, word, json!({}), false)
        } else {
            let (word, params, must_fail) = pick_command(&mut rng, &options);
            (
                Some(ids[rng.random_range(0..ids.len())]),
                word,
                params,
                must_fail,
            )
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            op.try_command(strategy, word, &params),
        )
        .await
        {
            Ok(Ok(id)) => issued.lock().unwrap().push(Issued {
                id,
                strategy,
                word,
                must_fail,
            }),
            _ => refused += 1,
        }
        let pause = Duration::from_millis(rng.random_range(60..220));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    refused
}

// ------------------------------------------------------------------ the manager

/// How a manager process ended without being killed by the suite.
#[derive(Debug, Clone)]
struct SelfExit {
    code: Option<i32>,
    /// It had taken its lease (was serving) before it exited.
    was_up: bool,
    log_tail: String,
}

#[derive(Default)]
struct ManagerFigures {
    starts: u32,
    kills: u32,
    self_exits: Vec<SelfExit>,
    /// Seconds from a restarted manager taking its lease until the rows the killed
    /// one left `processing` were finished.
    processing_recovery: Vec<f64>,
    /// The rows of the slowest recovery, for a look at the manager's log.
    slowest_recovery: Vec<Uuid>,
    processing_rows: usize,
    /// Rows left `processing` that a restarted manager did not finish in time.
    processing_stuck: Vec<Uuid>,
}

/// The manager subprocess and its keeper's state.
struct ManagerSlot {
    child: Option<Child>,
    pid: Option<u32>,
    up: bool,
    /// Rows the last killed manager left `processing`, waiting for the next one.
    orphaned_rows: Vec<Uuid>,
    enabled: bool,
}

struct ManagerKeeper {
    slot: tokio::sync::Mutex<ManagerSlot>,
    figures: Mutex<ManagerFigures>,
    /// Measurements of rows left `processing`, still running.
    watches: Mutex<Vec<Watch>>,
    env: Vec<(String, String)>,
    log: PathBuf,
    op: Operator,
}

impl ManagerKeeper {
    fn spawn(&self, slot: &mut ManagerSlot) {
        let child = spawn_manager_binary(&self.env, &self.log);
        slot.pid = child.id();
        slot.child = Some(child);
        slot.up = false;
        self.figures.lock().unwrap().starts += 1;
    }

    /// One tick: notice an exit, notice it is up (holds the lease), or start one.
    async fn tick(&self) {
        let mut slot = self.slot.lock().await;
        if let Some(child) = slot.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let exit = SelfExit {
                    code: status.code(),
                    was_up: slot.up,
                    log_tail: common::private_services::log_tail(&self.log, 4),
                };
                self.figures.lock().unwrap().self_exits.push(exit);
                slot.child = None;
                slot.pid = None;
                slot.up = false;
                return; // started again on the next tick
            }
            if !slot.up {
                let holder: Option<i32> = tokio::time::timeout(
                    Duration::from_secs(2),
                    sqlx::query_scalar("SELECT pid FROM engine_manager_lease WHERE id = 1")
                        .fetch_optional(&self.op.pool),
                )
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
                if holder.is_some() && holder.map(|p| p as u32) == slot.pid {
                    slot.up = true;
                    let rows = std::mem::take(&mut slot.orphaned_rows);
                    if !rows.is_empty() {
                        self.watch_processing(rows);
                    }
                }
            }
            return;
        }
        if slot.enabled {
            self.spawn(&mut slot);
        }
    }

    /// SIGKILL the manager if it is serving; false if there was none to kill.
    async fn kill(&self) -> bool {
        let mut slot = self.slot.lock().await;
        if !slot.up {
            return false;
        }
        let Some(mut child) = slot.child.take() else {
            return false;
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        slot.pid = None;
        slot.up = false;
        self.figures.lock().unwrap().kills += 1;
        // The rows it leaves `processing` (when the database answers).
        let rows: Vec<Uuid> = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query_scalar("SELECT id FROM strategy_commands WHERE status = 'processing'")
                .fetch_all(&self.op.pool),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
        slot.orphaned_rows.extend(rows);
        true
    }

    /// Measure how long the new manager takes to finish the rows left `processing`.
    fn watch_processing(&self, rows: Vec<Uuid>) {
        let op = self.op.clone();
        let up_at = Instant::now();
        let count = rows.len();
        let task = tokio::spawn(async move {
            let done = try_wait_for(Duration::from_secs(60), || {
                let op = op.clone();
                let rows = rows.clone();
                async move {
                    let open: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM strategy_commands WHERE id = ANY($1) \
                         AND status IN ('pending', 'processing')",
                    )
                    .bind(&rows)
                    .fetch_one(&op.pool)
                    .await
                    .ok()?;
                    (open == 0).then_some(())
                }
            })
            .await;
            let secs = up_at.elapsed().as_secs_f64();
            if done.is_none() {
                (secs, rows.clone(), rows)
            } else {
                (secs, Vec::new(), rows)
            }
        });
        self.watches.lock().unwrap().push((task, count));
    }

    async fn collect_watches(&self) {
        let watches: Vec<Watch> = std::mem::take(&mut *self.watches.lock().unwrap());
        for (task, count) in watches {
            if let Ok((secs, stuck, rows)) = task.await {
                let mut f = self.figures.lock().unwrap();
                f.processing_rows += count;
                if stuck.is_empty() {
                    if f.processing_recovery.iter().all(|s| *s < secs) {
                        f.slowest_recovery = rows;
                    }
                    f.processing_recovery.push(secs);
                } else {
                    f.processing_stuck.extend(stuck);
                }
            }
        }
    }

    async fn wait_up(&self) -> bool {
        try_wait_for(MANAGER_UP_DEADLINE, || async {
            let slot = self.slot.lock().await;
            slot.up.then_some(())
        })
        .await
        .is_some()
    }
}

/// A measurement of the rows one killed manager left `processing`: seconds until the
/// next one finished them, the rows it did not finish, all its rows; how many rows.
type Watch = (tokio::task::JoinHandle<(f64, Vec<Uuid>, Vec<Uuid>)>, usize);

// ------------------------------------------------------------------ checkpoints

/// A command row as the database has it (the operators' truth, in order).
#[derive(Debug, Clone, sqlx::FromRow)]
struct CommandRow {
    id: Uuid,
    strategy_id: Option<Uuid>,
    command: String,
    status: String,
}

async fn command_rows(op: &Operator) -> Vec<CommandRow> {
    sqlx::query_as(
        "SELECT id, strategy_id, command, status FROM strategy_commands ORDER BY created_at, seq",
    )
    .fetch_all(&op.pool)
    .await
    .unwrap_or_default()
}

/// What the operators' commands imply for one strategy's `desired_state`, when that
/// is certain (a global pause or resume, which applies only to strategies running or
/// paused at that moment, leaves it open until the next command that settles it; a
/// failed pause or resume leaves it as it was).
fn expected_desired(rows: &[CommandRow], id: Uuid) -> Option<&'static str> {
    let mut expected = Some("stopped");
    for cmd in rows {
        let ok = cmd.status == "executed";
        match cmd.strategy_id {
            // A global stop applies to every strategy not stopped (or in error).
            None if cmd.command == "stop" => expected = Some("stopped"),
            // A global pause or resume depends on the status at that moment.
            None => expected = None,
            Some(s) if s == id => match (cmd.command.as_str(), ok) {
                // start on a paused strategy is a no-op: it stays paused.
                ("start", _) if expected == Some("paused") || expected.is_none() => expected = None,
                ("start" | "restart", _) => expected = Some("running"),
                ("stop", _) => expected = Some("stopped"),
                ("pause", true) => expected = Some("paused"),
                ("resume", true) => expected = Some("running"),
                // A failed pause or resume leaves desired_state as it was.
                ("pause" | "resume", false) => {}
                _ => {}
            },
            Some(_) => {}
        }
    }
    expected
}

/// The last `n` commands for one strategy (and global ones), for a violation report.
fn history(rows: &[CommandRow], id: Uuid, n: usize) -> String {
    let mine: Vec<String> = rows
        .iter()
        .filter(|c| c.strategy_id.is_none_or(|s| s == id))
        .map(|c| {
            let global = if c.strategy_id.is_none() {
                "global "
            } else {
                ""
            };
            format!("{global}{} {} ({})", c.command, c.status, c.id)
        })
        .collect();
    mine[mine.len().saturating_sub(n)..].join(", ")
}

/// One strategy's row against the process table: `None` if they agree and the status
/// is a steady one, else what is wrong.
fn mismatch(row: &common::StrategyState, procs: &HashMap<Uuid, Vec<u32>>) -> Option<String> {
    let live = procs.get(&row.id).cloned().unwrap_or_default();
    let pid = row.pid.map(|p| p as u32);
    let ok = match row.status.as_str() {
        "running" | "paused" => pid.is_some() && live == vec![pid.unwrap()],
        "stopped" | "error" => live.is_empty() && pid.is_none(),
        _ => false, // starting, stopping, backoff: not settled yet
    };
    (!ok).then(|| {
        format!(
            "{} is {} (desired {}) with pid {:?}; the process table has {:?}",
            row.name, row.status, row.desired_state, row.pid, live
        )
    })
}

#[derive(Default)]
struct Figures {
    executor_kills: u32,
    executor_kills_skipped: u32,
    redis_outages: u32,
    redis_down: Duration,
    pg_outages: u32,
    pg_down: Duration,
    inserts_refused: u64,
    /// Per checkpoint: seconds from "every fault repaired" to "every command ended".
    drain: Vec<f64>,
    /// Per checkpoint: seconds from "every command ended" to "rows match the process
    /// table" (the contract's 5 s).
    settle: Vec<f64>,
    violations: Vec<String>,
    /// Manager kills that hit a command in progress, by command word.
    manager_kills_mid: BTreeMap<String, u32>,
    /// Each interval strategy's `execution_count` at the last checkpoint.
    executions_seen: HashMap<Uuid, i64>,
}

/// Interval strategies (CONTRACT §5) through the faults: their statistics add up
/// (`execution_count` = successful + failed) and never go back (a manager killed
/// between batched writes loses at most what it had not written, which no earlier
/// checkpoint saw).
async fn check_executions(round: usize, op: &Operator, figures: &mut Figures) {
    let rows: Vec<(Uuid, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, name, execution_count, successful_executions, failed_executions \
         FROM strategy_configs WHERE execution_interval_s IS NOT NULL",
    )
    .fetch_all(&op.pool)
    .await
    .unwrap_or_default();
    for (id, name, count, ok, failed) in rows {
        if count != ok + failed {
            figures.violations.push(format!(
                "round {round}: {name}: execution_count {count} is not successful {ok} + failed {failed}"
            ));
        }
        let before = figures.executions_seen.insert(id, count).unwrap_or(0);
        if count < before {
            figures.violations.push(format!(
                "round {round}: {name}: execution_count went back from {before} to {count}"
            ));
        }
    }
}

async fn checkpoint(round: usize, op: &Operator, socket: &Path, figures: &mut Figures) {
    check_executions(round, op, figures).await;
    let t0 = Instant::now();
    let drained = try_wait_for(DRAIN_DEADLINE, || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM strategy_commands WHERE status IN ('pending', 'processing')",
        )
        .fetch_one(&op.pool)
        .await
        .ok()?;
        (open == 0).then_some(())
    })
    .await;
    figures.drain.push(t0.elapsed().as_secs_f64());
    if drained.is_none() {
        let open: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, command, status FROM strategy_commands WHERE status IN ('pending', 'processing')",
        )
        .fetch_all(&op.pool)
        .await
        .unwrap_or_default();
        figures.violations.push(format!(
            "round {round}: {} commands still open {DRAIN_DEADLINE:?} after recovery: {open:?}",
            open.len()
        ));
    }

    let t1 = Instant::now();
    // Settled: each row agrees with the process table and its status is what
    // operators asked for (a manager that just adopted its executors may still be
    // bringing one to its desired state: the contract gives it the same bound).
    let unsettled = |r: &common::StrategyState, procs: &HashMap<Uuid, Vec<u32>>| {
        mismatch(r, procs).or_else(|| {
            (r.status != r.desired_state).then(|| {
                format!(
                    "{} is {} but desired_state is {}",
                    r.name, r.status, r.desired_state
                )
            })
        })
    };
    let settle = |deadline| {
        try_wait_for(deadline, || async {
            let rows = op.states().await.ok()?;
            let procs = executors_by_strategy(socket);
            rows.iter()
                .all(|r| unsettled(r, &procs).is_none())
                .then_some(rows)
        })
    };
    let rows = match settle(MATCH_BOUND).await {
        Some(rows) => rows,
        None => {
            let rows = op.states().await.unwrap_or_default();
            let procs = executors_by_strategy(socket);
            let wrong: Vec<String> = rows.iter().filter_map(|r| unsettled(r, &procs)).collect();
            figures.violations.push(format!(
                "round {round}: rows do not match the process table and desired_state within {MATCH_BOUND:?}: {}",
                wrong.join("; ")
            ));
            match settle(LATE_MATCH_DEADLINE).await {
                Some(rows) => rows,
                None => {
                    // Leave them as they are for the next round: the errors are recorded.
                    figures.settle.push(t1.elapsed().as_secs_f64());
                    return;
                }
            }
        }
    };
    figures.settle.push(t1.elapsed().as_secs_f64());

    // Each status is what the operators asked for, and desired_state is what their
    // commands imply.
    let commands = command_rows(op).await;
    for row in &rows {
        if row.status != row.desired_state {
            figures.violations.push(format!(
                "round {round}: {} is {} but desired_state is {} (last_error: {:?}); last commands: {}",
                row.name,
                row.status,
                row.desired_state,
                row.last_error,
                history(&commands, row.id, 6)
            ));
        }
        if let Some(expected) = expected_desired(&commands, row.id) {
            if row.desired_state != expected {
                figures.violations.push(format!(
                    "round {round}: {} has desired_state {} but the operators' commands say {expected}; last commands: {}",
                    row.name,
                    row.desired_state,
                    history(&commands, row.id, 6)
                ));
            }
        }
    }
}

/// Commands whose effect was recorded more than once for one strategy: the same
/// transition (a real one: a no-op re-applied after a manager restart records
/// `stopped → stopped`, which is not a second effect) twice with one command id.
async fn duplicated(op: &Operator, issued: &[Issued]) -> Vec<String> {
    let events: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT command_id, strategy_id, new_status FROM strategy_events \
         WHERE command_id IS NOT NULL AND old_status IS DISTINCT FROM new_status",
    )
    .fetch_all(&op.pool)
    .await
    .expect("read strategy_events");
    let mut count: HashMap<(Uuid, Uuid, String), u32> = HashMap::new();
    for e in events {
        *count.entry(e).or_default() += 1;
    }
    let words: HashMap<Uuid, &str> = issued.iter().map(|c| (c.id, c.word)).collect();
    let mut dups = Vec::new();
    for ((command, strategy, status), n) in count {
        let Some(word) = words.get(&command) else {
            continue;
        };
        let effect = match *word {
            "start" | "restart" | "resume" => "running",
            "pause" => "paused",
            "stop" => "stopped",
            _ => continue,
        };
        if status == effect && n > 1 {
            dups.push(format!(
                "{word} {command} reached {status} {n} times on {strategy}"
            ));
        }
    }
    dups
}

// ------------------------------------------------------------------ the run

enum Fault {
    KillExecutor,
    KillRun,
    KillManager,
    RedisDown,
    RedisUp,
    PgDown(PgStop),
    PgUp,
}

fn plan_round(round: usize, scale: &Scale, rng: &mut StdRng) -> Vec<(Duration, Fault)> {
    let len = scale.round_len.as_millis() as u64;
    let at = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
    let mut plan = Vec::new();
    for _ in 0..scale.executor_kills_per_round {
        plan.push((at(rng, 0, len), Fault::KillExecutor));
    }
    for _ in 0..scale.run_kills_per_round {
        plan.push((at(rng, 0, len), Fault::KillRun));
    }
    let outage = rng.random_range(1000..(len / 2).max(1001));
    let start = rng.random_range(0..len - outage);
    for _ in 0..scale.manager_kills_per_round {
        plan.push((at(rng, 0, len), Fault::KillManager));
    }
    match round % 3 {
        1 => {
            plan.push((Duration::from_millis(start), Fault::RedisDown));
            plan.push((Duration::from_millis(start + outage), Fault::RedisUp));
        }
        2 => {
            let mode = if rng.random_bool(0.5) {
                PgStop::Fast
            } else {
                PgStop::Immediate
            };
            plan.push((Duration::from_millis(start), Fault::PgDown(mode)));
            plan.push((Duration::from_millis(start + outage), Fault::PgUp));
        }
        _ => {}
    }
    plan.sort_by_key(|(t, _)| *t);
    plan
}

/// What a run exercises.
#[derive(Debug, Clone, Copy)]
struct SuiteOptions {
    /// Issue pause and resume (own and global) among the commands.
    pause_commands: bool,
    /// SIGKILL any executor, also one in its start-up (else only those whose row says
    /// running).
    kill_starting_executors: bool,
    /// Kill the manager while a command with one of these words is `processing`
    /// (when one comes within a second; else at once).
    kill_manager_mid: &'static [&'static str],
    /// Fail on every contract violation (else the known bug of late global
    /// broadcasts is only counted).
    strict: bool,
}

/// Every command word and every fault, in any combination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_duplicated_under_every_fault() {
    run_suite(SuiteOptions {
        pause_commands: true,
        kill_starting_executors: true,
        kill_manager_mid: &["start", "stop", "restart", "pause", "resume", "update"],
        strict: true,
    })
    .await;
}

/// The runs of this file take turns: each wants the machine to itself.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_suite(options: SuiteOptions) {
    let _serial = SERIAL.lock().await;
    let scale = Scale::from_env();
    println!("fault suite: {scale:?} {options:?}");
    let started = std::time::Instant::now();
    let mut services = PrivateServices::start().await;
    let db_url = services.pg.url("strategy_engine");
    {
        let pool = engine_store::manager::connect(&db_url, 2)
            .await
            .expect("create database");
        engine_store::manager::migrate(&pool)
            .await
            .expect("migrate");
        pool.close().await;
    }
    let op = Operator::connect(&db_url).await;
    let state_dir = std::env::temp_dir().join(format!("engine-faults-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let socket = state_dir.join("control.sock");
    let runs_dir = engine_protocol::runs::runs_dir(&state_dir);
    let log = state_dir.join("manager.log");
    let _cleanup = Cleanup {
        socket: socket.clone(),
        runs_dir: runs_dir.clone(),
        state_dir: state_dir.clone(),
        log: log.clone(),
    };

    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db_url.clone()),
        ("REDIS_URL", services.redis.url()),
        ("ENGINE_REDIS_PREFIX", String::new()),
        ("ENGINE_STATE_DIR", state_dir.display().to_string()),
        (
            "ENGINE_EXECUTOR_PATH",
            workspace_bin("strategy-executor").display().to_string(),
        ),
        ("ENGINE_HEALTH_INTERVAL", "500ms".into()),
        ("ENGINE_METRICS_INTERVAL", "1s".into()),
        ("ENGINE_POLL_INTERVAL", "300ms".into()),
        ("ENGINE_START_TIMEOUT", "10s".into()),
        ("ENGINE_MAX_CONCURRENT_RUNS", runs::MAX_RUNS.to_string()),
        ("ENGINE_ACK_TIMEOUT", "3s".into()),
        ("ENGINE_RESTART_DELAY", "100ms".into()),
        ("ENGINE_RESTART_MAX_DELAY", "500ms".into()),
        ("ENGINE_RESTART_MAX_CRASHES", "100000".into()),
        ("ENGINE_LOG_FORMAT", "pretty".into()),
        ("ENGINE_HTTP_ADDR", "off".into()),
        ("NO_COLOR", "1".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let keeper = Arc::new(ManagerKeeper {
        slot: tokio::sync::Mutex::new(ManagerSlot {
            child: None,
            pid: None,
            up: false,
            orphaned_rows: Vec::new(),
            enabled: true,
        }),
        figures: Mutex::new(ManagerFigures::default()),
        watches: Mutex::new(Vec::new()),
        env,
        log: log.clone(),
        op: op.clone(),
    });
    let keeper_stop = tokio_util::sync::CancellationToken::new();
    let keeper_task = {
        let keeper = keeper.clone();
        let stop = keeper_stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                keeper.tick().await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
    };
    assert!(
        keeper.wait_up().await,
        "the manager did not start:\n{}",
        common::private_services::log_tail(&log, 30)
    );

    let mut ids = Vec::new();
    for i in 0..scale.strategies {
        let id = op
            .add_strategy(
                &format!("hb-fault-{i}"),
                "heartbeat",
                json!({"interval_ms": 20}),
            )
            .await;
        if i % 2 == 1 {
            // Every other strategy is an interval strategy (every 1 s, a no-op step)
            // with limits that never bind: executions and cgroups through the faults.
            sqlx::query(
                "UPDATE strategy_configs SET execution_interval_s = 1, \
                 limits = '{\"memory_mb\": 256, \"pids\": 256}' WHERE id = $1",
            )
            .bind(id)
            .execute(&op.pool)
            .await
            .expect("make an interval strategy with limits");
        }
        ids.push(id);
        op.run_ok(Some(id), "start", json!({})).await;
    }
    let run_strategies = runs::seed(&op).await;
    let run_figures = Arc::new(Mutex::new(runs::RunFigures::default()));
    let mut runs_settle = Vec::new();
    let mut runs_reported = HashSet::new();

    let proc_stop = Arc::new(AtomicBool::new(false));
    let proc_stats = Arc::new(Mutex::new(ProcStats::default()));
    let watcher = watch_proc(
        socket.clone(),
        runs_dir.clone(),
        proc_stop.clone(),
        proc_stats.clone(),
        started,
    );

    let issued = Arc::new(Mutex::new(Vec::<Issued>::new()));
    let mut rng = StdRng::seed_from_u64(scale.seed);
    let mut figures = Figures::default();
    for round in 0..scale.rounds {
        let stop = tokio_util::sync::CancellationToken::new();
        let driver = tokio::spawn(drive_commands(
            op.clone(),
            ids.clone(),
            issued.clone(),
            rng.random(),
            options,
            stop.clone(),
        ));
        let run_driver = tokio::spawn(runs::drive_runs(
            op.clone(),
            run_strategies.clone(),
            issued.clone(),
            run_figures.clone(),
            rng.random(),
            stop.clone(),
        ));
        let round_start = Instant::now();
        let mut settled_rows = Vec::new();
        let mut redis_down_at = None;
        let mut pg_down_at = None;
        for (offset, fault) in plan_round(round, &scale, &mut rng) {
            tokio::time::sleep_until(round_start + offset).await;
            match fault {
                Fault::KillExecutor => {
                    let mut live = executors_in_proc(&socket);
                    if !options.kill_starting_executors {
                        // Only executors their row shows running (the last rows read,
                        // when the database is down): never one in its start-up.
                        if let Ok(Ok(rows)) =
                            tokio::time::timeout(Duration::from_millis(300), op.states()).await
                        {
                            settled_rows = rows;
                        }
                        live.retain(|e| {
                            settled_rows.iter().any(|r| {
                                r.id == e.strategy_id
                                    && r.status == "running"
                                    && r.pid == Some(e.pid as i32)
                            })
                        });
                    }
                    if live.is_empty() {
                        figures.executor_kills_skipped += 1;
                    } else {
                        sigkill(live[rng.random_range(0..live.len())].pid);
                        figures.executor_kills += 1;
                    }
                }
                Fault::KillRun => {
                    runs::kill_a_run_process(&runs_dir, &mut rng, &run_figures).await;
                }
                Fault::KillManager => {
                    // In the middle of a command: wait (a little) for one to be
                    // `processing`, then kill.
                    let mid = try_wait_for(Duration::from_secs(1), || async {
                        let busy: Option<String> = tokio::time::timeout(
                            Duration::from_millis(200),
                            sqlx::query_scalar(
                                "SELECT command FROM strategy_commands \
                                 WHERE status = 'processing' AND command = ANY($1) LIMIT 1",
                            )
                            .bind(options.kill_manager_mid)
                            .fetch_optional(&op.pool),
                        )
                        .await
                        .ok()?
                        .ok()?;
                        busy
                    })
                    .await;
                    if let Some(word) = mid {
                        *figures.manager_kills_mid.entry(word).or_default() += 1;
                    }
                    if !keeper.kill().await {
                        figures.violations.push(format!(
                            "round {round}: no serving manager to kill (it was not back up)"
                        ));
                    }
                }
                Fault::RedisDown => {
                    services.redis.stop(RedisStop::Kill).await;
                    redis_down_at = Some(Instant::now());
                    figures.redis_outages += 1;
                }
                Fault::RedisUp => {
                    services.redis.start_again().await;
                    figures.redis_down += redis_down_at
                        .take()
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                }
                Fault::PgDown(mode) => {
                    services.pg.stop(mode).await;
                    pg_down_at = Some(Instant::now());
                    figures.pg_outages += 1;
                }
                Fault::PgUp => {
                    services.pg.start_again().await;
                    figures.pg_down += pg_down_at.take().map(|t| t.elapsed()).unwrap_or_default();
                }
            }
        }
        tokio::time::sleep_until(round_start + scale.round_len).await;
        stop.cancel();
        figures.inserts_refused += driver.await.expect("command driver");
        run_driver.await.expect("run driver");
        if !keeper.wait_up().await {
            figures.violations.push(format!(
                "round {round}: the manager did not come back within {MANAGER_UP_DEADLINE:?}"
            ));
        }
        let snapshot = issued.lock().unwrap().clone();
        checkpoint(round, &op, &socket, &mut figures).await;
        runs_settle.push(
            runs::checkpoint(
                round,
                &op,
                &runs_dir,
                &mut runs_reported,
                &mut figures.violations,
            )
            .await,
        );
        println!(
            "round {round}: {} commands so far; drained in {:.2}s, settled in {:.2}s, runs settled in {:.2}s; {} violations",
            snapshot.len(),
            figures.drain.last().unwrap_or(&0.0),
            figures.settle.last().unwrap_or(&0.0),
            runs_settle.last().unwrap_or(&0.0),
            figures.violations.len()
        );
    }

    proc_stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    keeper.collect_watches().await;

    // Every command ended, failed ones only where failing is right, none twice.
    let issued = issued.lock().unwrap().clone();
    let finals: HashMap<Uuid, (String, Option<String>)> =
        sqlx::query_as::<_, (Uuid, String, Option<String>)>(
            "SELECT id, status, error FROM strategy_commands",
        )
        .fetch_all(&op.pool)
        .await
        .expect("read commands")
        .into_iter()
        .map(|(id, s, e)| (id, (s, e)))
        .collect();
    let mut by_word: BTreeMap<&str, [u32; 3]> = BTreeMap::new();
    let mut lost = Vec::new();
    for cmd in &issued {
        let word = if cmd.must_fail {
            "update (rejected config)"
        } else {
            cmd.word
        };
        let word = if cmd.strategy.is_none() {
            global_word(cmd.word)
        } else {
            word
        };
        let entry = by_word.entry(word).or_default();
        entry[0] += 1;
        match finals.get(&cmd.id).map(|(s, _)| s.as_str()) {
            Some("executed") => {
                entry[1] += 1;
                if cmd.must_fail {
                    figures.violations.push(format!(
                        "update {} with a rejected config ended executed",
                        cmd.id
                    ));
                }
            }
            Some("failed") => entry[2] += 1,
            other => lost.push(format!("{} {} is {:?}", cmd.word, cmd.id, other)),
        }
    }
    let dups = duplicated(&op, &issued).await;

    keeper_stop.cancel();
    let _ = keeper_task.await;
    {
        let mut slot = keeper.slot.lock().await;
        slot.enabled = false;
        if let Some(mut child) = slot.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    kill_all_executors(&socket);
    runs::kill_all_runs(&runs_dir);

    let (runs_per_state, runs_retried) = runs::final_figures(&op).await;

    // The figures.
    let proc = proc_stats.lock().unwrap();
    let mf = keeper.figures.lock().unwrap();
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let recovery: Vec<f64> = figures
        .drain
        .iter()
        .zip(&figures.settle)
        .map(|(a, b)| a + b)
        .collect();
    println!(
        "\n=== fault suite figures (FAULT_SCALE={}, seed {}) ===",
        scale.factor, scale.seed
    );
    println!(
        "strategies: {}, rounds: {} x {:?}, wall time {:.0}s",
        scale.strategies,
        scale.rounds,
        scale.round_len,
        started.elapsed().as_secs_f64()
    );
    println!("faults injected:");
    println!(
        "  executor SIGKILL        {:>6}  ({} skipped: none alive)",
        figures.executor_kills, figures.executor_kills_skipped
    );
    println!(
        "  manager SIGKILL         {:>6}  (manager starts: {})",
        mf.kills, mf.starts
    );
    println!(
        "  redis stop/start        {:>6}  ({:.1}s down in all)",
        figures.redis_outages,
        figures.redis_down.as_secs_f64()
    );
    println!(
        "  postgres stop/start     {:>6}  ({:.1}s down in all)",
        figures.pg_outages,
        figures.pg_down.as_secs_f64()
    );
    let rf = run_figures.lock().unwrap();
    println!(
        "  run process SIGKILL     {:>6}  ({} skipped: none alive within 1s)",
        rf.process_kills, rf.process_kills_skipped
    );
    println!(
        "commands issued: {} (+{} inserts refused while the database was down)",
        issued.len(),
        figures.inserts_refused
    );
    for (word, [n, ok, failed]) in &by_word {
        println!("  {word:<26} {n:>5} issued, {ok:>5} executed, {failed:>5} failed");
    }
    println!(
        "runs inserted: {} {:?} (+{} inserts refused while the database was down)",
        rf.inserted.values().sum::<u32>(),
        rf.inserted,
        rf.inserts_refused
    );
    println!("  runs per state at the end: {runs_per_state:?}");
    println!("  runs tried again (attempt 1): {runs_retried}");
    println!(
        "  interval strategies: {}, executions counted at the last checkpoint: {}",
        figures.executions_seen.len(),
        figures.executions_seen.values().sum::<i64>()
    );
    println!(
        "  runs settled at the checkpoints in max {:.2}s",
        max(&runs_settle)
    );
    drop(rf);
    println!("lost (never ended):        {}", lost.len());
    println!("duplicated (effect twice): {}", dups.len());
    println!(
        "two executors for one strategy: {} observations in {} /proc scans (max {} at once)",
        proc.doubles.len(),
        proc.scans,
        proc.max_per_strategy
    );
    println!(
        "two processes of one run: {} observations; more than {} run processes at once: {} observations (max {} at once)",
        proc.run_doubles.len(),
        runs::MAX_RUNS,
        proc.runs_over_limit.len(),
        proc.max_runs
    );
    println!(
        "manager kills in the middle of a command: {:?}",
        figures.manager_kills_mid
    );
    println!("rows left processing by a killed manager: {} (finished by the next one in max {:.2}s; {} stuck)", mf.processing_rows, max(&mf.processing_recovery), mf.processing_stuck.len());
    println!(
        "  the slowest of those recoveries: {:?}",
        mf.slowest_recovery
    );
    println!("max recovery (faults repaired -> commands ended -> rows match): {:.2}s (drain max {:.2}s, settle max {:.2}s)", max(&recovery), max(&figures.drain), max(&figures.settle));
    let refused_starts: Vec<&SelfExit> = mf.self_exits.iter().filter(|e| !e.was_up).collect();
    let crashes: Vec<&SelfExit> = mf.self_exits.iter().filter(|e| e.was_up).collect();
    println!(
        "manager starts that gave up (database down or lease still held): {}",
        refused_starts.len()
    );
    println!(
        "manager crashes (exited by itself while serving): {}",
        crashes.len()
    );
    for e in &crashes {
        println!("  exit {:?}: {}", e.code, e.log_tail);
    }
    for d in &proc.doubles {
        println!(
            "  two executors at {:.1}s: strategy {} pids {:?}",
            d.0, d.1, d.2
        );
    }
    for d in &proc.run_doubles {
        println!(
            "  two processes of run {} at {:.1}s: pids {:?}",
            d.1, d.0, d.2
        );
    }
    for d in &proc.runs_over_limit {
        println!(
            "  run processes over the limit at {:.1}s: pids {:?}",
            d.0, d.1
        );
    }
    for l in &lost {
        println!("  lost: {l}");
    }
    for d in &dups {
        println!("  duplicated: {d}");
    }
    for v in &figures.violations {
        println!("  violation: {v}");
    }
    if let Ok(keep) = std::env::var("KEEP_FAULT_LOG") {
        let _ = std::fs::copy(&log, keep);
    }

    // An executor that exits cleanly without its supervisor asking was shut down by a
    // command meant for another (older) process of its strategy.
    let unrequested = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("exited without being asked (exit code 0)"))
        .count();
    println!(
        "executors shut down without their supervisor asking (a late global stop): {unrequested}"
    );

    let mut failures = Vec::new();
    if unrequested > 0 && options.strict {
        failures.push(format!(
            "{unrequested} executors shut down by a command meant for an older process"
        ));
    }
    if !lost.is_empty() {
        failures.push(format!("{} commands lost", lost.len()));
    }
    if !dups.is_empty() {
        failures.push(format!("{} commands duplicated", dups.len()));
    }
    if !proc.doubles.is_empty() {
        failures.push(format!(
            "{} times two executors for one strategy",
            proc.doubles.len()
        ));
    }
    if !proc.run_doubles.is_empty() {
        failures.push(format!(
            "{} times two processes of one run",
            proc.run_doubles.len()
        ));
    }
    if !proc.runs_over_limit.is_empty() {
        failures.push(format!(
            "{} times more run processes than --max-concurrent-runs",
            proc.runs_over_limit.len()
        ));
    }
    if !crashes.is_empty() {
        failures.push(format!("{} manager crashes", crashes.len()));
    }
    if !mf.processing_stuck.is_empty() {
        failures.push(format!(
            "{} rows left processing",
            mf.processing_stuck.len()
        ));
    }
    if !figures.violations.is_empty() {
        failures.push(format!("{} contract violations", figures.violations.len()));
    }
    drop(proc);
    drop(mf);
    drop(services);
    assert!(failures.is_empty(), "fault suite: {}", failures.join(", "));
}

fn global_word(word: &str) -> &'static str {
    match word {
        "pause" => "global pause",
        "resume" => "global resume",
        _ => "global stop",
    }
}

/// Kills what the run leaves behind, even when it panics.
struct Cleanup {
    socket: PathBuf,
    runs_dir: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_all_executors(&self.socket);
        runs::kill_all_runs(&self.runs_dir);
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join("fault-suite-manager.log");
            let _ = std::fs::copy(&self.log, &kept);
            eprintln!(
                "manager log (all of it in {}), its tail:\n{}",
                kept.display(),
                common::private_services::log_tail(&self.log, 20)
            );
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
