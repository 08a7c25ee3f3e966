//! [`Executions`]: the one task that drives the [`ExecutionPlan`] — fed by the
//! supervisors (a strategy reached `running`, left it, a `trigger` command, an
//! execution's end), it sends execute requests to the strategies' supervisors (which
//! own the control links), answers `trigger` commands, publishes every execution on
//! `strategy:execution:{id}` and writes the statistics in batches (at most
//! [`WRITE_EVERY`] behind, through `engine-store`), with the executions published
//! since the last batch (the last [`RECENT_KEPT`] of each strategy are kept in the
//! database for the next manager's `executions.recent`).
//!
//! Edits of `execution_interval_s` / `max_execution_s` of a running strategy are
//! picked up every [`REFRESH_EVERY`]: a strategy given an interval is planned, one
//! whose interval was cleared is no longer executed.
//!
//! The task never waits for the database itself: the rows of strategies that reached
//! `running` (and, every [`REFRESH_EVERY`], of every running one) are read by a
//! spawned query, one at a time, whose rows come back to the loop; a slow database
//! delays a new strategy's plan, never the executions of the others. A `trigger` for
//! a strategy whose row is not read yet waits for it.

use super::plan::{first_due, Decision, ExecutionPlan, ExecutionStats, Schedule, Start, Trigger};
use super::recent::{RecentExecution, RECENT_KEPT};
use crate::supervisor::{CommandError, Outcome};
use crate::Shared;
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::{ExecutionMessage, Status};
use engine_store::executions::{self as store, ExecutionStatsRow, IntervalRow, RecentExecutionRow};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// One write: the changed statistics, and the executions published since the last.
#[derive(Default)]
struct StatsBatch {
    stats: Vec<(Uuid, ExecutionStatsRow)>,
    recent: Vec<(Uuid, RecentExecutionRow)>,
}

/// How often changed statistics are written (one statement for all of them).
pub const WRITE_EVERY: Duration = Duration::from_millis(500);
/// How often the interval columns of the running strategies are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long one read of interval rows may take before it is given up (the next
/// refresh reads them again).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A read of interval rows under way: the ids asked for, and the rows (`None`: the
/// read failed or timed out) when they come.
struct Reading {
    ids: Vec<Uuid>,
    rows: oneshot::Receiver<Option<Vec<IntervalRow>>>,
}

/// What a supervisor asks of its executor for the executions task.
#[derive(Debug)]
pub enum ExecRequest {
    /// Send an execute frame; the end comes back as [`Message::Ended`].
    Execute { execution_id: Uuid },
    /// The execution hangs past `max_execution_s` and the grace: SIGKILL the executor
    /// (the crash rules restart it); `reason` goes to `last_error`.
    Kill { reason: String },
}

/// What the supervisors tell the executions task.
#[derive(Debug)]
pub enum Message {
    /// The strategy is `running` (again, or adopted); `requests` reaches its supervisor.
    Running {
        strategy_id: Uuid,
        name: String,
        requests: mpsc::Sender<ExecRequest>,
    },
    /// The strategy left `running` (now `status`), or its supervisor ended.
    NotRunning { strategy_id: Uuid, status: Status },
    /// A `trigger` command the supervisor found the strategy `running` for.
    Trigger {
        strategy_id: Uuid,
        command_id: Uuid,
        reply: oneshot::Sender<Outcome>,
    },
    /// An execution ended: the executor's answer, or why there was none.
    Ended {
        strategy_id: Uuid,
        execution_id: Uuid,
        outcome: Result<(), String>,
        /// When the executor began it, by its clock (`None` without its answer).
        executor_started_at: Option<DateTime<Utc>>,
    },
}

/// The supervisors' end of the executions task: never blocks (unbounded: one message
/// per transition, trigger and execution).
#[derive(Debug, Clone)]
pub struct ExecutionsHandle {
    tx: mpsc::UnboundedSender<Message>,
}

impl ExecutionsHandle {
    pub fn send(&self, message: Message) {
        if let Err(mpsc::error::SendError(message)) = self.tx.send(message) {
            // Shutting down: a trigger's reply is dropped and its row stays
            // `processing` for the next manager, like any command's.
            tracing::debug!(?message, "executions task gone; message dropped");
        }
    }
}

/// The task's side of [`ExecutionsHandle`].
pub struct ExecutionsInbox(mpsc::UnboundedReceiver<Message>);

pub fn channel() -> (ExecutionsHandle, ExecutionsInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ExecutionsHandle { tx }, ExecutionsInbox(rx))
}

/// A running strategy the task knows of.
struct Known {
    name: String,
    requests: mpsc::Sender<ExecRequest>,
    /// Its schedule, when it is an interval strategy (planned).
    schedule: Option<Schedule>,
}

/// An execution sent to an executor.
struct InFlight {
    execution_id: Uuid,
    trigger: Trigger,
    started_at: DateTime<Utc>,
    due_at: Option<DateTime<Utc>>,
}

/// One `strategy:execution:{id}` message's varying fields.
struct Published {
    trigger: Trigger,
    started_at: DateTime<Utc>,
    due_at: Option<DateTime<Utc>>,
    executor_started_at: Option<DateTime<Utc>>,
    duration_ms: u64,
    outcome: &'static str,
    error: Option<String>,
}

pub struct Executions {
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<Message>,
    plan: ExecutionPlan,
    known: HashMap<Uuid, Known>,
    in_flight: HashMap<Uuid, InFlight>,
    /// `trigger` commands waiting for their execution's end.
    replies: HashMap<Uuid, oneshot::Sender<Outcome>>,
    /// Strategies planned at least once by this manager: only their first plan takes
    /// the saved `next_execution_at` (the restart rule); later ones start afresh.
    planned_before: HashSet<Uuid>,
    /// The statistics of strategies no longer planned (paused, stopped), for their
    /// next plan: the row may not have them yet.
    parked: HashMap<Uuid, ExecutionStats>,
    /// Known strategies whose row is to be read (again).
    unread: HashSet<Uuid>,
    /// Known strategies whose row was never read yet: their triggers wait.
    first_read: HashSet<Uuid>,
    /// Triggers waiting for their strategy's first row.
    deferred: Vec<(Uuid, Uuid, oneshot::Sender<Outcome>)>,
    /// The read under way.
    reading: Option<Reading>,
    /// Statistics to write, newest per strategy.
    unwritten: HashMap<Uuid, ExecutionStatsRow>,
    /// Executions published and not written yet, oldest first (the last
    /// [`RECENT_KEPT`] of each strategy: no more are kept anyway).
    recent_unwritten: HashMap<Uuid, VecDeque<RecentExecutionRow>>,
    /// The write under way: its rows come back if it failed.
    writing: Option<oneshot::Receiver<Result<(), StatsBatch>>>,
}

impl Executions {
    pub fn new(shared: Arc<Shared>, inbox: ExecutionsInbox) -> Self {
        let max = shared.config.max_concurrent_executions as usize;
        Executions {
            shared,
            inbox: inbox.0,
            plan: ExecutionPlan::new(max),
            known: HashMap::new(),
            in_flight: HashMap::new(),
            replies: HashMap::new(),
            planned_before: HashSet::new(),
            parked: HashMap::new(),
            unread: HashSet::new(),
            first_read: HashSet::new(),
            deferred: Vec::new(),
            reading: None,
            unwritten: HashMap::new(),
            recent_unwritten: HashMap::new(),
            writing: None,
        }
    }

    pub async fn run(mut self) {
        let cancel = self.shared.cancel.clone();
        let mut write = tokio::time::interval(WRITE_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        refresh.tick().await;
        loop {
            let wake = self.plan.next_wake();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                message = self.inbox.recv() => match message {
                    Some(message) => self.on_message(message),
                    None => break,
                },
                rows = rows_read(&mut self.reading) => self.on_rows(rows),
                _ = sleep_until(wake) => {}
                _ = write.tick() => self.write(),
                _ = refresh.tick() => self.refresh(),
            }
            self.poll();
            self.start_read();
        }
        self.final_write().await;
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Running {
                strategy_id,
                name,
                requests,
            } => self.running(strategy_id, name, requests),
            Message::NotRunning {
                strategy_id,
                status,
            } => {
                self.known.remove(&strategy_id);
                self.unread.remove(&strategy_id);
                self.first_read.remove(&strategy_id);
                let why = format!("the strategy is {status} now; the execution did not end");
                self.unplan(strategy_id, &why);
                self.release_deferred();
            }
            Message::Trigger {
                strategy_id,
                command_id,
                reply,
            } => self.trigger(strategy_id, command_id, reply),
            Message::Ended {
                strategy_id,
                execution_id,
                outcome,
                executor_started_at,
            } => self.ended(strategy_id, execution_id, outcome, executor_started_at),
        }
    }

    /// A strategy reached `running`: planned, once its row is read, if it has an
    /// interval.
    fn running(&mut self, id: Uuid, name: String, requests: mpsc::Sender<ExecRequest>) {
        if let Some(known) = self.known.get_mut(&id) {
            // Already known (a re-recorded `running`): keep its plan.
            known.requests = requests;
            known.name = name;
            return;
        }
        self.known.insert(
            id,
            Known {
                name,
                requests,
                schedule: None,
            },
        );
        self.unread.insert(id);
        self.first_read.insert(id);
    }

    /// Start reading the rows of the strategies waiting for it, unless a read is
    /// under way.
    fn start_read(&mut self) {
        if self.reading.is_some() || self.unread.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = self.unread.drain().collect();
        let pool = self.shared.pool.clone();
        let (done, rows) = oneshot::channel();
        let asked = ids.clone();
        self.shared.tracker.spawn(async move {
            let read = store::interval_rows(&pool, &asked);
            let rows = match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(rows)) => Some(rows),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, strategies = asked.len(), "cannot read execution intervals; retrying within {}s", REFRESH_EVERY.as_secs());
                    None
                }
                Err(_) => {
                    tracing::warn!(strategies = asked.len(), "reading execution intervals timed out; retrying within {}s", REFRESH_EVERY.as_secs());
                    None
                }
            };
            let _ = done.send(rows);
        });
        self.reading = Some(Reading { ids, rows });
    }

    /// The rows of a read (`None`: it failed; the next refresh asks again).
    fn on_rows(&mut self, rows: Option<Vec<IntervalRow>>) {
        let Some(reading) = self.reading.take() else {
            return;
        };
        let Some(rows) = rows else {
            return;
        };
        for row in rows {
            self.apply_row(row);
        }
        for id in &reading.ids {
            self.first_read.remove(id);
        }
        self.release_deferred();
    }

    /// Take the triggers whose strategy's first row is read now (or which left
    /// `running` meanwhile).
    fn release_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        for (id, command_id, reply) in deferred {
            self.trigger(id, command_id, reply);
        }
    }

    /// Plan, re-plan or unplan a known strategy as its row says.
    fn apply_row(&mut self, row: IntervalRow) {
        let Some(known) = self.known.get_mut(&row.id) else {
            return;
        };
        let columns = &row.columns;
        let schedule = columns.execution_interval_s.and_then(|interval| {
            Schedule::from_seconds(interval.into(), columns.max_execution_s.into())
                .map_err(|err| tracing::warn!(strategy_id = %row.id, "{err}"))
                .ok()
        });
        let now = Utc::now();
        match (known.schedule, schedule) {
            (None, None) => {}
            (Some(old), Some(new)) if old == new => {}
            (Some(_), Some(new)) => {
                known.schedule = Some(new);
                self.plan.set_schedule(row.id, new, now);
            }
            (Some(_), None) => {
                known.schedule = None;
                self.unplan(
                    row.id,
                    "execution_interval_s was cleared; the strategy is continuous now",
                );
            }
            (None, Some(new)) => {
                known.schedule = Some(new);
                let mut stats = self
                    .parked
                    .remove(&row.id)
                    .unwrap_or_else(|| stats_from_row(&columns.stats));
                if !self.planned_before.insert(row.id) || stats.next_execution_at.is_none() {
                    // Started, resumed or restarted (not a manager restart): the
                    // first execution within one interval from now, on the
                    // strategy's phase (spread), nothing counted missed.
                    stats.next_execution_at = Some(first_due(row.id, new.interval(), now));
                }
                if let Some(Decision::Skipped {
                    strategy_id,
                    count,
                    due_at,
                }) = self.plan.add(row.id, new, stats, now)
                {
                    let error = format!(
                        "{count} due execution{} missed while the manager was down (counted skipped; one execution follows, not {count})",
                        plural(count)
                    );
                    self.publish_skipped(strategy_id, due_at, error);
                }
            }
        }
    }

    /// Stop executing the strategy: its pending `trigger`s fail with `why`, its
    /// statistics are written with no next execution.
    fn unplan(&mut self, id: Uuid, why: &str) {
        self.in_flight.remove(&id);
        let Some((mut stats, commands)) = self.plan.remove(id) else {
            return;
        };
        for command_id in commands {
            self.reply(command_id, Err(why.to_string()));
        }
        stats.next_execution_at = None;
        self.unwritten.insert(id, stats_to_row(&stats));
        self.parked.insert(id, stats);
    }

    fn trigger(&mut self, id: Uuid, command_id: Uuid, reply: oneshot::Sender<Outcome>) {
        if self.first_read.contains(&id) {
            self.deferred.push((id, command_id, reply));
            return;
        }
        match self.plan.trigger(id, command_id) {
            Ok(()) => {
                self.replies.insert(command_id, reply);
            }
            Err(_) => {
                let err = if self.known.contains_key(&id) {
                    CommandError::NotInterval
                } else {
                    CommandError::CannotTrigger {
                        status: Status::Stopped,
                    }
                };
                let _ = reply.send(Outcome::Failed(err));
            }
        }
    }

    fn ended(
        &mut self,
        id: Uuid,
        execution_id: Uuid,
        outcome: Result<(), String>,
        executor_started_at: Option<DateTime<Utc>>,
    ) {
        match self.in_flight.get(&id) {
            Some(flight) if flight.execution_id == execution_id => {}
            // A late answer of an execution already given up on (its executor was
            // restarted, or the strategy left `running`).
            _ => return,
        }
        let flight = self.in_flight.remove(&id).expect("checked above");
        let now = Utc::now();
        let Some(finished) = self.plan.finished(id, now, outcome.clone()) else {
            return;
        };
        for &command_id in &finished.commands {
            self.reply(command_id, outcome.clone());
        }
        if finished.counted {
            let duration_ms = self
                .plan
                .stats(id)
                .and_then(|s| s.last_execution_duration_ms)
                .unwrap_or(0);
            let (outcome, error) = match outcome {
                Ok(()) => ("ok", None),
                Err(err) => ("error", Some(err)),
            };
            self.publish(
                id,
                Published {
                    trigger: flight.trigger,
                    started_at: flight.started_at,
                    due_at: flight.due_at,
                    executor_started_at,
                    duration_ms,
                    outcome,
                    error,
                },
            );
        }
    }

    /// Do what the plan decided at this moment; queue the changed statistics.
    fn poll(&mut self) {
        let now = Utc::now();
        for decision in self.plan.poll(now) {
            match decision {
                Decision::Start(start) => self.start(start),
                Decision::Skipped {
                    strategy_id,
                    count,
                    due_at,
                } => {
                    let error = format!(
                        "{count} due execution{} skipped: still waiting for one of the {} execution slots (--max-concurrent-executions) when the next was due",
                        plural(count),
                        self.shared.config.max_concurrent_executions
                    );
                    self.publish_skipped(strategy_id, due_at, error);
                }
                Decision::TimedOut {
                    strategy_id,
                    commands,
                    error,
                } => {
                    for command_id in commands {
                        self.reply(command_id, Err(error.clone()));
                    }
                    let timed_out = self.in_flight.get(&strategy_id).map(|flight| Published {
                        trigger: flight.trigger,
                        started_at: flight.started_at,
                        due_at: flight.due_at,
                        executor_started_at: None,
                        duration_ms: (now - flight.started_at).num_milliseconds().max(0) as u64,
                        outcome: "timeout",
                        error: Some(error),
                    });
                    if let Some(published) = timed_out {
                        self.publish(strategy_id, published);
                    }
                }
                Decision::KillAndRestart { strategy_id } => self.kill(strategy_id),
            }
        }
        for (id, stats) in self.plan.take_changed() {
            self.unwritten.insert(id, stats_to_row(&stats));
        }
    }

    fn start(&mut self, start: Start) {
        let execution_id = Uuid::new_v4();
        let sent = self.known.get(&start.strategy_id).map(|known| {
            known
                .requests
                .try_send(ExecRequest::Execute { execution_id })
        });
        self.in_flight.insert(
            start.strategy_id,
            InFlight {
                execution_id,
                trigger: start.trigger,
                started_at: start.started_at,
                due_at: start.due_at,
            },
        );
        if !matches!(sent, Some(Ok(()))) {
            let error = "the strategy's supervisor did not take the execution".to_string();
            self.ended(start.strategy_id, execution_id, Err(error), None);
        }
    }

    fn kill(&mut self, id: Uuid) {
        let Some(known) = self.known.get(&id) else {
            return;
        };
        let limit = known
            .schedule
            .map_or(0, |schedule| schedule.max_execution().num_seconds());
        let grace = super::plan::KILL_GRACE.num_seconds();
        let reason = format!(
            "killed by the manager: an execution did not return within max_execution_s ({limit}s) and {grace}s more"
        );
        tracing::warn!(strategy_id = %id, "{reason}");
        if known
            .requests
            .try_send(ExecRequest::Kill { reason })
            .is_err()
        {
            tracing::error!(strategy_id = %id, "could not ask the supervisor to kill a hung executor");
        }
    }

    fn reply(&mut self, command_id: Uuid, outcome: Result<(), String>) {
        let Some(reply) = self.replies.remove(&command_id) else {
            return;
        };
        let outcome = match outcome {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Failed(CommandError::Execution { error }),
        };
        let _ = reply.send(outcome);
    }

    fn publish_skipped(&mut self, id: Uuid, due_at: DateTime<Utc>, error: String) {
        let published = Published {
            trigger: Trigger::Schedule,
            started_at: due_at,
            due_at: Some(due_at),
            executor_started_at: None,
            duration_ms: 0,
            outcome: "skipped",
            error: Some(error),
        };
        self.publish(id, published);
    }

    fn publish(&mut self, id: Uuid, published: Published) {
        let Some(known) = self.known.get(&id) else {
            return;
        };
        let recent = RecentExecution {
            started_at: published.started_at,
            duration_ms: published.duration_ms,
            outcome: published.outcome,
        };
        let slot = self.shared.recent_executions.record(id, recent.clone());
        let row = recent.to_row(slot);
        let unwritten = self.recent_unwritten.entry(id).or_default();
        if unwritten.len() == RECENT_KEPT {
            unwritten.pop_front();
        }
        unwritten.push_back(row);
        let message = ExecutionMessage {
            strategy_id: id,
            name: known.name.clone(),
            timestamp: Utc::now(),
            trigger: published.trigger.as_str().to_string(),
            started_at: published.started_at,
            duration_ms: published.duration_ms,
            outcome: published.outcome.to_string(),
            error: published.error,
            due_at: published.due_at,
            executor_started_at: published.executor_started_at,
        };
        self.shared
            .publisher
            .publish(self.shared.channels.execution(id), &message);
    }

    /// The interval columns of every running strategy, to be read again.
    fn refresh(&mut self) {
        self.unread.extend(self.known.keys().copied());
    }

    /// Start writing what changed, unless a write is still under way (a failed one's
    /// rows come back, older than anything newer).
    fn write(&mut self) {
        if let Some(writing) = &mut self.writing {
            match writing.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Err(failed)) => self.take_back(failed),
                Ok(Ok(())) | Err(oneshot::error::TryRecvError::Closed) => {}
            }
            self.writing = None;
        }
        if self.unwritten.is_empty() && self.recent_unwritten.is_empty() {
            return;
        }
        let batch = self.take_batch();
        let pool = self.shared.pool.clone();
        let (done, writing) = oneshot::channel();
        self.writing = Some(writing);
        self.shared.tracker.spawn(async move {
            let write = store::write_execution_stats(&pool, &batch.stats, &batch.recent);
            let result = match write.await {
                Ok(()) => Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, rows = batch.stats.len(), "cannot write execution statistics; retrying");
                    Err(batch)
                }
            };
            let _ = done.send(result);
        });
    }

    /// What is to be written now.
    fn take_batch(&mut self) -> StatsBatch {
        let recent = self
            .recent_unwritten
            .drain()
            .flat_map(|(id, rows)| rows.into_iter().map(move |row| (id, row)))
            .collect();
        StatsBatch {
            stats: self.unwritten.drain().collect(),
            recent,
        }
    }

    /// Rows of a failed write: its statistics unless newer ones replaced them
    /// meanwhile, its executions before those published since (the last
    /// [`RECENT_KEPT`] of each strategy).
    fn take_back(&mut self, failed: StatsBatch) {
        for (id, row) in failed.stats {
            self.unwritten.entry(id).or_insert(row);
        }
        let mut older: HashMap<Uuid, VecDeque<RecentExecutionRow>> = HashMap::new();
        for (id, row) in failed.recent {
            older.entry(id).or_default().push_back(row);
        }
        for (id, mut rows) in older {
            let newer = self.recent_unwritten.remove(&id).unwrap_or_default();
            rows.extend(newer);
            while rows.len() > RECENT_KEPT {
                rows.pop_front();
            }
            self.recent_unwritten.insert(id, rows);
        }
    }

    /// At shutdown: what is left, once.
    async fn final_write(&mut self) {
        if let Some(writing) = self.writing.take() {
            if let Ok(Err(failed)) = writing.await {
                self.take_back(failed);
            }
        }
        for (id, stats) in self.plan.take_changed() {
            self.unwritten.insert(id, stats_to_row(&stats));
        }
        let batch = self.take_batch();
        let write = store::write_execution_stats(&self.shared.pool, &batch.stats, &batch.recent);
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "execution statistics not written at shutdown")
            }
            Err(_) => tracing::warn!("writing execution statistics at shutdown timed out"),
        }
    }
}

/// The rows of the read under way, when they come (never, without one).
async fn rows_read(reading: &mut Option<Reading>) -> Option<Vec<IntervalRow>> {
    match reading {
        Some(reading) => (&mut reading.rows).await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<DateTime<Utc>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let wait = (at - Utc::now()).max(TimeDelta::zero());
    tokio::time::sleep(wait.to_std().unwrap_or_default()).await;
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn stats_from_row(row: &ExecutionStatsRow) -> ExecutionStats {
    ExecutionStats {
        next_execution_at: row.next_execution_at,
        last_execution_at: row.last_execution_at,
        execution_count: count(row.execution_count),
        successful_executions: count(row.successful_executions),
        failed_executions: count(row.failed_executions),
        skipped_executions: count(row.skipped_executions),
        last_execution_duration_ms: row.last_execution_duration_ms.map(count),
        avg_execution_ms: row.avg_execution_ms,
        last_execution_error: row.last_execution_error.clone(),
    }
}

fn stats_to_row(stats: &ExecutionStats) -> ExecutionStatsRow {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ExecutionStatsRow {
        next_execution_at: stats.next_execution_at,
        last_execution_at: stats.last_execution_at,
        execution_count: n(stats.execution_count),
        successful_executions: n(stats.successful_executions),
        failed_executions: n(stats.failed_executions),
        skipped_executions: n(stats.skipped_executions),
        last_execution_duration_ms: stats.last_execution_duration_ms.map(n),
        avg_execution_ms: stats.avg_execution_ms,
        last_execution_error: stats.last_execution_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_the_round_trip_through_the_row() {
        let stats = ExecutionStats {
            next_execution_at: Some(Utc::now()),
            last_execution_at: Some(Utc::now()),
            execution_count: 5,
            successful_executions: 4,
            failed_executions: 1,
            skipped_executions: 2,
            last_execution_duration_ms: Some(7),
            avg_execution_ms: Some(6.5),
            last_execution_error: Some("boom".into()),
        };
        assert_eq!(stats_from_row(&stats_to_row(&stats)), stats);
    }
}
