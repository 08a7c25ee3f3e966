//! [`ExecutionPlan`]: when each interval strategy is executed, decided without I/O.
//!
//! The caller (the manager's shell) passes the time in every call (`now`, the
//! manager's wall clock: the due times are the persisted `next_execution_at`), acts
//! on the [`Decision`]s [`ExecutionPlan::poll`] returns, reports each execution's
//! end with [`ExecutionPlan::finished`], and sleeps until
//! [`ExecutionPlan::next_wake`] or the next message. One structure for every
//! strategy: a `BTreeSet` of (next due time, strategy), not a sleep per strategy.
//!
//! # Rules
//! - **Due times.** A strategy added with no statistics is first due one interval
//!   after it is added, then every interval after its previous due time (not after
//!   its previous execution), so the cadence does not drift. The manager's shell
//!   plans a strategy started afresh at [`first_due`] instead: a point within its
//!   first interval fixed by a stable hash of its id (its *phase*), so that a
//!   thousand strategies started at once at the same interval do not all fall due
//!   at the same instant, and — since each next due time is one interval after the
//!   last — stay spread.
//! - **Concurrency.** At most `max_concurrent` executions run at once across all
//!   strategies (CONTRACT: `--max-concurrent-executions`, default
//!   [`DEFAULT_MAX_CONCURRENT_EXECUTIONS`]); a strategy runs one execution at a time.
//!   A due execution waits, in the order executions became due, for a slot and for
//!   its strategy's previous execution to end.
//! - **Skips.** A strategy has at most one waiting execution. When its next due time
//!   comes while the waiting one still serves an earlier due time, that earlier one
//!   is counted in `skipped_executions` and the waiting execution serves the new one
//!   instead, keeping its place in the queue: never run twice, never starved. A poll
//!   that comes late counts every due time it passed but the latest as skipped.
//! - **Manual triggers** ([`ExecutionPlan::trigger`]) wait like due executions. A
//!   trigger joins the strategy's waiting execution if there is one (that one
//!   execution answers the command, and is published as `manual`); otherwise it
//!   waits on its own, and runs after an execution already running. A waiting
//!   execution that answers a command is never dropped: a due time joins it.
//! - **Time limit.** An execution still running `max_execution_s` after it started is
//!   counted failed at once ([`Decision::TimedOut`]; its commands fail), and keeps its
//!   slot until it ends; [`KILL_GRACE`] (5 s) later the plan decides
//!   [`Decision::KillAndRestart`] (once). Its late end frees the slot without being
//!   counted again. An executor that exits during an execution is reported as a
//!   `finished` with an error.
//! - **After a restart** ([`ExecutionPlan::add`] with the statistics the database
//!   kept): every due time from the saved `next_execution_at` (or one interval after
//!   `last_execution_at`) that passed while the manager was down is counted in
//!   `skipped_executions` (the contract has no column for "missed"; they are skipped
//!   in the sense that they never ran and never will), and the strategy is next due
//!   at its first due time from `now` on, on the old cadence — one execution then,
//!   not one per missed time. A saved due time more than an interval ahead (the
//!   interval was shortened, or the clock went back) is brought to one interval from
//!   `now`.
//! - **Statistics** ([`ExecutionStats`]) change only here; an execution counts when it
//!   ends (or times out): `execution_count` = `successful_executions` +
//!   `failed_executions`, `last_execution_at` is its start, `avg_execution_ms` the
//!   mean duration of every counted execution, `last_execution_error` the last
//!   counted execution's error (`None` after a success).
//!   [`ExecutionPlan::take_changed`] hands out those that changed, for batched writes.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// `--max-concurrent-executions` when not given.
pub const DEFAULT_MAX_CONCURRENT_EXECUTIONS: usize = 5;
/// `max_execution_s` when not given: 30 s.
pub const DEFAULT_MAX_EXECUTION: TimeDelta = TimeDelta::seconds(30);
/// How long past `max_execution_s` an execution may run before its executor is
/// killed and restarted by the crash rules.
pub const KILL_GRACE: TimeDelta = TimeDelta::seconds(5);

/// A strategy's `execution_interval_s` and `max_execution_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: TimeDelta,
    max_execution: TimeDelta,
}

impl Schedule {
    /// From the columns, in seconds: both must be at least 1.
    pub fn from_seconds(interval_s: i64, max_execution_s: i64) -> Result<Self, InvalidSchedule> {
        if interval_s < 1 {
            return Err(InvalidSchedule::new("execution_interval_s", interval_s));
        }
        if max_execution_s < 1 {
            return Err(InvalidSchedule::new("max_execution_s", max_execution_s));
        }
        Ok(Schedule {
            interval: TimeDelta::seconds(interval_s),
            max_execution: TimeDelta::seconds(max_execution_s),
        })
    }

    pub fn interval(&self) -> TimeDelta {
        self.interval
    }

    pub fn max_execution(&self) -> TimeDelta {
        self.max_execution
    }
}

/// A schedule column out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{column} {value} is out of range; allowed: a whole number of seconds, at least 1")]
pub struct InvalidSchedule {
    pub column: &'static str,
    pub value: i64,
}

impl InvalidSchedule {
    fn new(column: &'static str, value: i64) -> Self {
        InvalidSchedule { column, value }
    }
}

/// What started an execution: the `trigger` word of `strategy:execution:{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// A strategy's execution statistics: the `strategy_configs` columns of CONTRACT §5.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionStats {
    pub next_execution_at: Option<DateTime<Utc>>,
    pub last_execution_at: Option<DateTime<Utc>>,
    pub execution_count: u64,
    pub successful_executions: u64,
    pub failed_executions: u64,
    pub skipped_executions: u64,
    pub last_execution_duration_ms: Option<u64>,
    pub avg_execution_ms: Option<f64>,
    pub last_execution_error: Option<String>,
}

impl ExecutionStats {
    /// Count one execution that started at `started_at` and ended (or timed out) at
    /// `ended_at`, with its error if it failed.
    fn count(&mut self, started_at: DateTime<Utc>, ended_at: DateTime<Utc>, error: Option<String>) {
        let ms = u64::try_from((ended_at - started_at).num_milliseconds()).unwrap_or(0);
        self.execution_count += 1;
        if error.is_none() {
            self.successful_executions += 1;
        } else {
            self.failed_executions += 1;
        }
        let avg = self.avg_execution_ms.unwrap_or(ms as f64);
        self.avg_execution_ms = Some(avg + (ms as f64 - avg) / self.execution_count as f64);
        self.last_execution_at = Some(started_at);
        self.last_execution_duration_ms = Some(ms);
        self.last_execution_error = error;
    }
}

/// One execution to send to a strategy's executor now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub strategy_id: Uuid,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    /// The due time it serves (`None` for a `trigger` that joined no due time).
    pub due_at: Option<DateTime<Utc>>,
    /// The `trigger` commands this execution answers (empty for `schedule`).
    pub commands: Vec<Uuid>,
}

/// What [`ExecutionPlan::poll`] decided; the caller does it.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Execute the strategy now.
    Start(Start),
    /// `count` due executions that will never run (already in
    /// `skipped_executions`), the latest of them due at `due_at`.
    Skipped {
        strategy_id: Uuid,
        count: u64,
        due_at: DateTime<Utc>,
    },
    /// The running execution passed `max_execution_s`: counted failed with `error`;
    /// fail its `commands` with it. It keeps its slot until it ends.
    TimedOut {
        strategy_id: Uuid,
        commands: Vec<Uuid>,
        error: String,
    },
    /// The execution is [`KILL_GRACE`] past `max_execution_s`: kill the executor (the
    /// crash rules restart it), then report [`ExecutionPlan::finished`].
    KillAndRestart { strategy_id: Uuid },
}

/// How an execution's end was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The `trigger` commands to answer with the outcome (empty once timed out:
    /// those were failed then).
    pub commands: Vec<Uuid>,
    /// False when it had already been counted, as timed out.
    pub counted: bool,
}

/// A trigger for a strategy the plan does not hold (not an interval strategy, or
/// not running).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "strategy {0} has no interval executions planned (not an interval strategy, or not running)"
)]
pub struct NotPlanned(pub Uuid);

/// A due execution waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting {
    /// Its place in the queue.
    seq: u64,
    /// The due time it serves, if it serves one.
    due_at: Option<DateTime<Utc>>,
    commands: Vec<Uuid>,
}

#[derive(Debug, Clone)]
struct Running {
    started_at: DateTime<Utc>,
    commands: Vec<Uuid>,
    timed_out: bool,
    kill_decided: bool,
}

#[derive(Debug, Clone)]
struct Planned {
    schedule: Schedule,
    stats: ExecutionStats,
    next_due: DateTime<Utc>,
    waiting: Option<Waiting>,
    running: Option<Running>,
}

/// The waiting executions in the order they became due.
#[derive(Debug, Default)]
struct Queue {
    order: BTreeMap<u64, Uuid>,
    next_seq: u64,
}

impl Queue {
    /// Queue the strategy's execution last; its place.
    fn push(&mut self, strategy_id: Uuid) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, strategy_id);
        seq
    }
}

/// Every interval strategy's next due time, waiting and running executions and
/// statistics. See the module's rules.
#[derive(Debug)]
pub struct ExecutionPlan {
    max_concurrent: usize,
    planned: HashMap<Uuid, Planned>,
    timers: BTreeSet<(DateTime<Utc>, Uuid)>,
    queue: Queue,
    running: BTreeSet<Uuid>,
    changed: BTreeSet<Uuid>,
}

impl ExecutionPlan {
    /// A plan running at most `max_concurrent` executions at once (at least 1).
    pub fn new(max_concurrent: usize) -> Self {
        ExecutionPlan {
            max_concurrent: max_concurrent.max(1),
            planned: HashMap::new(),
            timers: BTreeSet::new(),
            queue: Queue::default(),
            running: BTreeSet::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Plan the strategy's executions from `now` on, given the statistics kept so far
    /// (`ExecutionStats::default()` for a new one): the restart rule of the module.
    /// The due times missed meanwhile come back as one [`Decision::Skipped`]. A
    /// strategy already planned is replaced (its waiting and running executions are
    /// forgotten: [`ExecutionPlan::remove`] it first to answer their commands).
    pub fn add(
        &mut self,
        strategy_id: Uuid,
        schedule: Schedule,
        mut stats: ExecutionStats,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        self.remove(strategy_id);
        let interval = schedule.interval;
        let saved = stats
            .next_execution_at
            .or_else(|| stats.last_execution_at.map(|last| last + interval));
        let (next_due, missed) = match saved {
            Some(due) if due > now + interval => (now + interval, None),
            Some(due) if due >= now => (due, None),
            Some(due) => {
                let missed = due_times_before(due, now, interval);
                let latest_missed = nth_due(due, interval, missed - 1);
                (
                    nth_due(due, interval, missed),
                    Some((missed, latest_missed)),
                )
            }
            None => (now + interval, None),
        };
        if let Some((count, _)) = missed {
            stats.skipped_executions += count;
        }
        stats.next_execution_at = Some(next_due);
        self.timers.insert((next_due, strategy_id));
        let planned = Planned {
            schedule,
            stats,
            next_due,
            waiting: None,
            running: None,
        };
        self.planned.insert(strategy_id, planned);
        self.changed.insert(strategy_id);
        missed.map(|(count, due_at)| Decision::Skipped {
            strategy_id,
            count,
            due_at,
        })
    }

    /// A new interval or time limit for a planned strategy: the time limit applies to
    /// the running execution too; the next due time comes no later than one new
    /// interval from `now`. False when the strategy is not planned.
    pub fn set_schedule(
        &mut self,
        strategy_id: Uuid,
        schedule: Schedule,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(planned) = self.planned.get_mut(&strategy_id) else {
            return false;
        };
        planned.schedule = schedule;
        let next_due = planned.next_due.min(now + schedule.interval);
        if next_due != planned.next_due {
            self.timers.remove(&(planned.next_due, strategy_id));
            self.timers.insert((next_due, strategy_id));
            planned.next_due = next_due;
            planned.stats.next_execution_at = Some(next_due);
            self.changed.insert(strategy_id);
        }
        true
    }

    /// Stop planning the strategy (stopped, paused, deleted, no interval any more):
    /// its statistics, and the `trigger` commands its waiting and running executions
    /// would have answered (fail them: the strategy is not running). Its slot, if it
    /// had one, is free.
    pub fn remove(&mut self, strategy_id: Uuid) -> Option<(ExecutionStats, Vec<Uuid>)> {
        let planned = self.planned.remove(&strategy_id)?;
        self.timers.remove(&(planned.next_due, strategy_id));
        self.running.remove(&strategy_id);
        self.changed.remove(&strategy_id);
        let mut commands = Vec::new();
        if let Some(waiting) = planned.waiting {
            self.queue.order.remove(&waiting.seq);
            commands.extend(waiting.commands);
        }
        if let Some(running) = planned.running {
            commands.extend(running.commands);
        }
        Some((planned.stats, commands))
    }

    /// A `trigger` command: one execution of the strategy, as soon as a slot and the
    /// strategy are free (see the module's rules). It starts at a later
    /// [`ExecutionPlan::poll`].
    pub fn trigger(&mut self, strategy_id: Uuid, command_id: Uuid) -> Result<(), NotPlanned> {
        let planned = self
            .planned
            .get_mut(&strategy_id)
            .ok_or(NotPlanned(strategy_id))?;
        match &mut planned.waiting {
            Some(waiting) => waiting.commands.push(command_id),
            None => {
                planned.waiting = Some(Waiting {
                    seq: self.queue.push(strategy_id),
                    due_at: None,
                    commands: vec![command_id],
                });
            }
        }
        Ok(())
    }

    /// Everything to do at `now`: time limits first, then the due times, then the
    /// executions that may start.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Vec<Decision> {
        let mut decisions = self.check_time_limits(now);
        while let Some(&(due, strategy_id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            decisions.extend(self.come_due(strategy_id, due, now));
        }
        decisions.extend(self.start_waiting(now).into_iter().map(Decision::Start));
        decisions
    }

    /// The running execution of the strategy ended at `now`: `Ok` or its error (an
    /// executor that exited or was killed during it is an error too). Counted unless
    /// it timed out; its slot is free. `None` when it had no execution running.
    pub fn finished(
        &mut self,
        strategy_id: Uuid,
        now: DateTime<Utc>,
        outcome: Result<(), String>,
    ) -> Option<Finished> {
        let planned = self.planned.get_mut(&strategy_id)?;
        let running = planned.running.take()?;
        self.running.remove(&strategy_id);
        let counted = !running.timed_out;
        if counted {
            planned.stats.count(running.started_at, now, outcome.err());
            self.changed.insert(strategy_id);
        }
        Some(Finished {
            commands: running.commands,
            counted,
        })
    }

    /// When [`ExecutionPlan::poll`] has something to do next: the earliest due time
    /// or time limit (`None` with nothing planned). Waiting executions start when a
    /// slot frees, at the poll after [`ExecutionPlan::finished`].
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let first_due = self.timers.first().map(|&(due, _)| due);
        let limits = self.running.iter().filter_map(|id| {
            let planned = &self.planned[id];
            let running = planned.running.as_ref()?;
            let limit = running.started_at + planned.schedule.max_execution;
            match (running.timed_out, running.kill_decided) {
                (false, _) => Some(limit),
                (true, false) => Some(limit + KILL_GRACE),
                (true, true) => None,
            }
        });
        first_due.into_iter().chain(limits).min()
    }

    /// The strategy's statistics.
    pub fn stats(&self, strategy_id: Uuid) -> Option<&ExecutionStats> {
        self.planned.get(&strategy_id).map(|planned| &planned.stats)
    }

    /// The statistics that changed since the last call, to write.
    pub fn take_changed(&mut self) -> Vec<(Uuid, ExecutionStats)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|id| Some((id, self.planned.get(&id)?.stats.clone())))
            .collect()
    }

    /// How many executions are running.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The strategy's due time `due` has come (`due` ≤ `now`): it waits, in place of
    /// a scheduled one still waiting; the due times a late poll passed are skipped.
    fn come_due(
        &mut self,
        strategy_id: Uuid,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let planned = self.planned.get_mut(&strategy_id)?;
        let interval = planned.schedule.interval;
        let passed = due_times_before(due, now + TimeDelta::milliseconds(1), interval);
        let latest = nth_due(due, interval, passed - 1);
        let mut skipped = passed - 1;
        let mut latest_skipped = (skipped > 0).then(|| latest - interval);
        match &mut planned.waiting {
            Some(waiting) => {
                if let Some(replaced) = waiting.due_at {
                    skipped += 1;
                    latest_skipped = latest_skipped.or(Some(replaced));
                }
                waiting.due_at = Some(latest);
            }
            None => {
                planned.waiting = Some(Waiting {
                    seq: self.queue.push(strategy_id),
                    due_at: Some(latest),
                    commands: Vec::new(),
                });
            }
        }
        planned.next_due = latest + interval;
        planned.stats.next_execution_at = Some(planned.next_due);
        planned.stats.skipped_executions += skipped;
        self.timers.insert((planned.next_due, strategy_id));
        self.changed.insert(strategy_id);
        latest_skipped.map(|due_at| Decision::Skipped {
            strategy_id,
            count: skipped,
            due_at,
        })
    }

    /// Start waiting executions, oldest first, while slots are free; one whose
    /// strategy is still executing keeps its place.
    fn start_waiting(&mut self, now: DateTime<Utc>) -> Vec<Start> {
        let mut started = Vec::new();
        let queued: Vec<(u64, Uuid)> = self
            .queue
            .order
            .iter()
            .map(|(&seq, &id)| (seq, id))
            .collect();
        for (seq, strategy_id) in queued {
            if self.running.len() >= self.max_concurrent {
                break;
            }
            if self.running.contains(&strategy_id) {
                continue;
            }
            let Some(planned) = self.planned.get_mut(&strategy_id) else {
                continue;
            };
            let Some(waiting) = planned.waiting.take() else {
                continue;
            };
            self.queue.order.remove(&seq);
            self.running.insert(strategy_id);
            planned.running = Some(Running {
                started_at: now,
                commands: waiting.commands.clone(),
                timed_out: false,
                kill_decided: false,
            });
            let trigger = if waiting.commands.is_empty() {
                Trigger::Schedule
            } else {
                Trigger::Manual
            };
            started.push(Start {
                strategy_id,
                trigger,
                started_at: now,
                due_at: waiting.due_at,
                commands: waiting.commands,
            });
        }
        started
    }

    /// Count the executions past their time limit as failed; decide the kills.
    fn check_time_limits(&mut self, now: DateTime<Utc>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for &strategy_id in &self.running {
            let Some(planned) = self.planned.get_mut(&strategy_id) else {
                continue;
            };
            let max = planned.schedule.max_execution;
            let Some(running) = planned.running.as_mut() else {
                continue;
            };
            let limit = running.started_at + max;
            if !running.timed_out && now >= limit {
                running.timed_out = true;
                let error = format!(
                    "timed out: still running after max_execution_s ({}s)",
                    max.num_seconds()
                );
                planned
                    .stats
                    .count(running.started_at, now, Some(error.clone()));
                self.changed.insert(strategy_id);
                decisions.push(Decision::TimedOut {
                    strategy_id,
                    commands: std::mem::take(&mut running.commands),
                    error,
                });
            }
            if running.timed_out && !running.kill_decided && now >= limit + KILL_GRACE {
                running.kill_decided = true;
                decisions.push(Decision::KillAndRestart { strategy_id });
            }
        }
        decisions
    }
}

/// When a strategy planned afresh at `now` (started, resumed, restarted, given an
/// interval) is first due: the first instant after `now` on its phase, a point of
/// the interval fixed by [`phase_ms`] of its id — within `(now, now + interval]`.
/// Strategies started together are spread over their interval instead of all
/// falling due at once, and each keeps its phase across restarts.
pub fn first_due(strategy_id: Uuid, interval: TimeDelta, now: DateTime<Utc>) -> DateTime<Utc> {
    let step = interval.num_milliseconds().max(1);
    let phase = i64::try_from(phase_ms(strategy_id) % step.unsigned_abs()).unwrap_or(0);
    let now_ms = now.timestamp_millis();
    // The last instant at or before `now` on the phase, then one interval on.
    let on_phase = now_ms - (now_ms - phase).rem_euclid(step);
    let first = on_phase + step;
    DateTime::from_timestamp_millis(first).unwrap_or(now + interval)
}

/// A stable hash of a strategy's id (FNV-1a over its 16 bytes, then a finaliser
/// that mixes the high bits down): the same on every manager and every version,
/// spread even for ids that differ in one byte (`…0001`, `…0002`).
pub fn phase_ms(strategy_id: Uuid) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in strategy_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The due time `n` intervals after `first`.
fn nth_due(first: DateTime<Utc>, interval: TimeDelta, n: u64) -> DateTime<Utc> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    first + TimeDelta::milliseconds(interval.num_milliseconds().saturating_mul(n))
}

/// How many of the due times `first`, `first + interval`, … lie before `end`
/// (`first` < `end`, `interval` > 0): at least 1.
fn due_times_before(first: DateTime<Utc>, end: DateTime<Utc>, interval: TimeDelta) -> u64 {
    let span = (end - first).num_milliseconds().max(1);
    let step = interval.num_milliseconds().max(1);
    u64::try_from((span + step - 1) / step).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests;
