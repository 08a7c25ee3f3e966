//! What a transition writes (the row, `strategy_events`, the status channel, the
//! state hash), and the [`Journal`] that keeps those writes through a database
//! outage: `desired_state` before any status that follows from it, events in order
//! (at most [`MAX_PENDING_EVENTS`]), and a command's outcome held until what it asked
//! for is durable.

use super::machine::Transition;
use super::{bounded, Outcome, StrategySupervisor, DB_WRITE_TIMEOUT};
use chrono::Utc;
use engine_protocol::{Status, StatusMessage};
use engine_store::manager as db;
use engine_store::DesiredState;
use std::collections::VecDeque;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How many unwritten transitions a supervisor keeps through an outage (a crash
/// loop makes four a restart); past it the oldest go, and the loss is logged.
pub const MAX_PENDING_EVENTS: usize = 512;

/// A write of the row started by [`StrategySupervisor::record_behind`], and the
/// status message that goes out once it lands.
pub struct InFlight {
    /// How many of the journal's pending events it writes (the oldest).
    events: usize,
    result: oneshot::Receiver<Result<(), sqlx::Error>>,
    msg: StatusMessage,
}

impl InFlight {
    /// The write's outcome (cancel-safe: a `select!` may drop this and call again).
    pub async fn outcome(&mut self) -> Result<Result<(), sqlx::Error>, oneshot::error::RecvError> {
        (&mut self.result).await
    }
}

/// Writes not done yet, and what waits for them.
#[derive(Default)]
pub struct Journal {
    /// Transitions not in `strategy_events` yet, oldest first.
    pending_events: VecDeque<db::TransitionEvent>,
    events_dropped: u64,
    /// The observed state could not be written.
    observed_unwritten: bool,
    /// `desired_state` could not be written.
    desired_unwritten: bool,
    /// Outcomes of commands applied while `desired_state` could not be written: a
    /// command is `executed` only once what it asked for is durable, so they wait
    /// for that write (if the manager dies first, the rows stay `processing` and the
    /// next manager applies them again).
    held_replies: Vec<(oneshot::Sender<Outcome>, Outcome)>,
}

impl Journal {
    /// Queue an event for the next write, keeping at most [`MAX_PENDING_EVENTS`].
    pub fn push_event(&mut self, event: db::TransitionEvent) {
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            self.pending_events.pop_front();
            self.events_dropped += 1;
        }
        self.pending_events.push_back(event);
    }

    /// Send `outcome`, or hold it while `desired_state` is not durable.
    pub fn reply(&mut self, reply: oneshot::Sender<Outcome>, outcome: Outcome) {
        if self.desired_unwritten {
            tracing::info!("the outcome waits until desired_state is recorded");
            self.held_replies.push((reply, outcome));
        } else {
            let _ = reply.send(outcome);
        }
    }

    /// A write of the row failed and has not succeeded since: the database is away
    /// (or not answering), and the once-a-second retry is what tries it again.
    pub fn database_away(&self) -> bool {
        self.observed_unwritten || self.desired_unwritten
    }

    /// `desired_state` is durable: release the held outcomes.
    fn desired_written(&mut self) {
        self.desired_unwritten = false;
        for (reply, outcome) in self.held_replies.drain(..) {
            let _ = reply.send(outcome);
        }
    }

    /// The `desired_state` write failed; whether this is news (worth a log line).
    fn desired_failed(&mut self) -> bool {
        !std::mem::replace(&mut self.desired_unwritten, true)
    }

    /// The observed state and the first `events` pending events are written.
    fn observed_written(&mut self, events: usize) {
        if self.observed_unwritten {
            tracing::info!(
                events = self.pending_events.len(),
                "recorded state again after a database outage"
            );
        }
        if self.events_dropped > 0 {
            tracing::warn!(
                dropped = self.events_dropped,
                kept = MAX_PENDING_EVENTS,
                "strategy_events lost the oldest transitions of the outage"
            );
            self.events_dropped = 0;
        }
        self.pending_events
            .drain(..events.min(self.pending_events.len()));
        self.observed_unwritten = false;
    }

    /// The observed-state write failed; whether this is news.
    fn observed_failed(&mut self) -> bool {
        !std::mem::replace(&mut self.observed_unwritten, true)
    }
}

impl StrategySupervisor {
    /// Set `desired_state` (and `operator_stopped`) in the row; kept and retried every
    /// second if the database does not take it.
    pub(super) async fn write_desired(&mut self, desired: DesiredState, operator_stopped: bool) {
        self.settle().await;
        let write = db::write_desired(
            &self.shared.pool,
            self.id,
            desired,
            operator_stopped,
            self.fence_epoch(),
        );
        match tokio::time::timeout(DB_WRITE_TIMEOUT, write).await {
            Ok(Ok(row)) => {
                self.journal.desired_written();
                // A start that follows at once spawns from it (one round trip
                // fewer); any effect that waits in between drops it.
                self.fresh = row.map(Box::new);
            }
            Ok(Err(err)) => {
                if self.journal.desired_failed() {
                    tracing::warn!(error = %err, "could not record desired_state; retrying every second");
                }
            }
            Err(_) => {
                if self.journal.desired_failed() {
                    tracing::warn!("could not record desired_state (the database did not answer within 1s); retrying every second");
                }
            }
        }
    }

    /// The once-a-second retry of writes that did not land.
    pub(super) async fn retry_writes(&mut self) {
        if self.journal.desired_unwritten {
            let (desired, stopped) = (self.machine.desired(), self.machine.operator_stopped());
            self.write_desired(desired, stopped).await;
        }
        if self.journal.observed_unwritten {
            self.record().await;
        }
        // Not while the row's own writes fail: one timeout a second is enough.
        if !self.journal.database_away() {
            self.write_broker_state().await;
        }
    }

    /// Record a transition everywhere: the row, the status channel, the state hash.
    /// The executions task follows `running`: an interval strategy is executed only
    /// then (not paused, stopping, in backoff or stopped).
    fn tell_executions(&self, from: Status, to: Status) {
        use crate::executions::task::Message;
        if to == Status::Running {
            self.shared.executions.send(Message::Running {
                strategy_id: self.id,
                name: self.name.clone(),
                requests: self.exec_tx.clone(),
            });
        } else if from == Status::Running {
            self.shared.executions.send(Message::NotRunning {
                strategy_id: self.id,
                status: to,
            });
        }
    }

    pub(super) async fn transition(&mut self, t: Transition) {
        self.settle().await;
        let status = t.to;
        self.observed.status = status;
        if !matches!(
            status,
            Status::Running | Status::Paused | Status::Starting | Status::Stopping
        ) && status != Status::Backoff
        {
            self.observed.started_at = None;
        }
        if t.error.is_some() {
            self.observed.last_error = t.error.clone();
        }
        if t.from != status {
            tracing::info!(from = %t.from, to = %status, reason = t.reason, "status");
        }
        if t.from != status || t.reason.is_some() {
            self.journal.push_event(db::TransitionEvent {
                event_id: Uuid::new_v4(),
                at: Utc::now(),
                old_status: t.from,
                new_status: status,
                reason: t.reason.clone(),
                error: t.error.clone(),
                command_id: t.command_id,
                pid: self.observed.pid,
            });
        }
        let behind = status == Status::Starting && !self.journal.desired_unwritten;
        if !behind {
            // A command's `running`: its outcome, a synchronous commit, is written
            // right after (and the pid it names is durable since `starting`).
            let unsynced = status == Status::Running && self.replying.is_some();
            self.record_to(unsynced).await;
        }
        self.tell_executions(t.from, status);
        let msg = StatusMessage {
            strategy_id: self.id,
            name: self.name.clone(),
            timestamp: Utc::now(),
            status,
            pid: self.observed.pid,
            node: self.shared.node.clone(),
            error: t.error,
            reason: t.reason,
            command_id: t.command_id,
            source: Some("manager".to_string()),
            lease_epoch: self.fence_epoch(),
        };
        if behind {
            // `starting` is written while the executor starts up, off the path to
            // `running` (which waits for it); it is announced once it is written.
            self.record_behind(msg).await;
        } else {
            self.announce(&msg);
        }
    }

    /// The status channel, the state hash and the live table, after the row.
    fn announce(&self, msg: &StatusMessage) {
        self.publish_state(msg);
        self.shared
            .publisher
            .publish(self.shared.channels.status(self.id), msg);
        self.publish_live();
    }

    /// Start writing the observed state and pending events without waiting for it;
    /// [`Self::settle`] waits, and every other write settles first, so writes land
    /// in order.
    async fn record_behind(&mut self, msg: StatusMessage) {
        self.settle().await;
        let (done, result) = oneshot::channel();
        let events: Vec<db::TransitionEvent> =
            self.journal.pending_events.iter().cloned().collect();
        let (pool, id, observed) = (self.shared.pool.clone(), self.id, self.observed.clone());
        let (node, fence) = (self.shared.node.clone(), self.fence_epoch());
        self.shared.tracker.spawn(async move {
            let write = db::write_observed(&pool, id, &observed, &events, &node, fence);
            let _ = done.send(bounded(write).await);
        });
        self.in_flight = Some(Box::new(InFlight {
            events: self.journal.pending_events.len(),
            result,
            msg,
        }));
    }

    /// Wait for the write [`Self::record_behind`] started, if one is in flight, and
    /// take in its outcome.
    pub(super) async fn settle(&mut self) {
        if let Some(mut in_flight) = self.in_flight.take() {
            let written = in_flight.outcome().await;
            self.landed(in_flight, written);
        }
    }

    /// The outcome of the write behind: as [`Self::record`] would take it, then the
    /// announcement.
    pub(super) fn landed(
        &mut self,
        in_flight: Box<InFlight>,
        written: Result<Result<(), sqlx::Error>, oneshot::error::RecvError>,
    ) {
        match written {
            Ok(result) => self.observed_outcome(in_flight.events, result),
            Err(_) => {
                self.journal.observed_failed();
            }
        }
        self.announce(&in_flight.msg);
    }

    /// Take in the outcome of a write of the observed state that carried the first
    /// `events` pending events.
    fn observed_outcome(&mut self, events: usize, result: Result<(), sqlx::Error>) {
        match result {
            Ok(()) => self.journal.observed_written(events),
            Err(err) => {
                if self.journal.observed_failed() {
                    tracing::warn!(error = %err, "could not record the strategy's state; retrying every second");
                }
            }
        }
    }

    /// `strategy:state:{id}`.
    fn publish_state(&self, msg: &StatusMessage) {
        let observed = &self.observed;
        self.shared.publisher.set_state(
            self.shared.channels.state_key(self.id),
            vec![
                ("strategy_id", self.id.to_string()),
                ("name", self.name.clone()),
                ("status", msg.status.to_string()),
                (
                    "pid",
                    observed.pid.map(|p| p.to_string()).unwrap_or_default(),
                ),
                ("node", self.shared.node.clone()),
                ("restart_count", observed.restart_count.to_string()),
                (
                    "last_error",
                    observed.last_error.clone().unwrap_or_default(),
                ),
                ("updated_at", msg.timestamp.to_rfc3339()),
                (
                    "status_message",
                    serde_json::to_string(msg).unwrap_or_default(),
                ),
            ],
        );
    }

    /// An event that is not a transition (the status stays), e.g. a config change.
    pub(super) async fn record_event(&mut self, reason: &str, command_id: Option<Uuid>) {
        self.record_note(reason, None, command_id).await;
    }

    /// A `strategy_events` row with no status change, `reason` and an `error` in
    /// words (e.g. limits that are not enforced).
    pub(super) async fn record_note(
        &mut self,
        reason: &str,
        error: Option<String>,
        command_id: Option<Uuid>,
    ) {
        self.settle().await;
        let status = self.machine.status();
        self.journal.push_event(db::TransitionEvent {
            event_id: Uuid::new_v4(),
            at: Utc::now(),
            old_status: status,
            new_status: status,
            reason: Some(reason.to_string()),
            error,
            command_id,
            pid: self.observed.pid,
        });
        self.record().await;
    }

    /// Write the observed state and the events not written yet (kept, in order,
    /// until a write succeeds: an outage loses no history).
    async fn record(&mut self) {
        self.record_to(false).await;
    }

    /// [`Self::record`]; `unsynced`: through [`crate::Shared::unsynced_pool`], for a
    /// write that a synchronous commit follows at once.
    async fn record_to(&mut self, unsynced: bool) {
        self.settle().await;
        // desired_state goes to the row before any status that follows from it: a
        // row saying `stopped` with a stale `desired_state = running` would make the
        // next manager start the strategy again (and apply its stop twice).
        if self.journal.desired_unwritten {
            let (desired, stopped) = (self.machine.desired(), self.machine.operator_stopped());
            self.write_desired(desired, stopped).await;
            if self.journal.desired_unwritten {
                self.journal.observed_unwritten = true;
                return;
            }
        }
        let fence = self.fence_epoch();
        let events = self.journal.pending_events.make_contiguous();
        let events_len = events.len();
        let pool = if unsynced {
            &self.shared.unsynced_pool
        } else {
            &self.shared.pool
        };
        let write = db::write_observed(
            pool,
            self.id,
            &self.observed,
            events,
            &self.shared.node,
            fence,
        );
        let result = bounded(write).await;
        self.observed_outcome(events_len, result);
    }

    pub(super) fn publish_live(&self) {
        self.shared.live.lock().expect("live lock").insert(
            self.id,
            super::LiveEntry {
                name: self.name.clone(),
                status: self.machine.status(),
                pid: self.observed.pid,
                started_at: self.observed.started_at,
                restart_count: self.observed.restart_count,
                limits: crate::limits::stored(&self.limits),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> db::TransitionEvent {
        db::TransitionEvent {
            event_id: Uuid::from_u128(n as u128),
            at: Utc::now(),
            old_status: Status::Running,
            new_status: Status::Backoff,
            reason: None,
            error: None,
            command_id: None,
            pid: None,
        }
    }

    #[test]
    fn an_outage_keeps_the_newest_events_and_counts_the_dropped_ones() {
        let mut journal = Journal::default();
        for n in 0..MAX_PENDING_EVENTS + 3 {
            journal.push_event(event(n));
        }
        assert_eq!(journal.pending_events.len(), MAX_PENDING_EVENTS);
        assert_eq!(journal.events_dropped, 3);
        assert_eq!(
            journal.pending_events.front().map(|e| e.event_id),
            Some(Uuid::from_u128(3))
        );
        journal.observed_written(MAX_PENDING_EVENTS);
        assert!(journal.pending_events.is_empty());
        assert_eq!(journal.events_dropped, 0);
    }

    #[test]
    fn a_write_takes_off_only_the_events_it_carried() {
        // A write behind carries the two events pending when it started; one more
        // came before it landed: that one stays for the next write.
        let mut journal = Journal::default();
        journal.push_event(event(0));
        journal.push_event(event(1));
        let carried = journal.pending_events.len();
        journal.push_event(event(2));
        journal.observed_written(carried);
        assert_eq!(
            journal
                .pending_events
                .iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>(),
            vec![Uuid::from_u128(2)]
        );
    }

    #[test]
    fn an_outcome_waits_until_desired_state_is_recorded() {
        let mut journal = Journal::default();
        assert!(journal.desired_failed(), "the first failure is news");
        assert!(!journal.desired_failed(), "the second is not");
        let (tx, mut rx) = oneshot::channel();
        journal.reply(tx, Outcome::Done);
        assert!(
            rx.try_recv().is_err(),
            "held while desired_state is not durable"
        );
        journal.desired_written();
        assert!(matches!(rx.try_recv(), Ok(Outcome::Done)));
    }

    #[test]
    fn an_outcome_is_sent_at_once_when_desired_state_is_durable() {
        let mut journal = Journal::default();
        let (tx, mut rx) = oneshot::channel();
        journal.reply(tx, Outcome::NotApplicable);
        assert!(matches!(rx.try_recv(), Ok(Outcome::NotApplicable)));
    }
}
