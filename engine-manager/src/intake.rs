//! The [`CommandIntake`]: claims command rows (woken by NOTIFY, with a poll as the
//! safety net), checks them, hands each to its strategy's supervisor in `created_at`
//! order, and records each outcome on the row. `cluster_ops`: drain, undrain and
//! move, and a node's start of the strategies moved to it. `adopt`: a cluster node's
//! take-over of the commands a dead node had claimed for the strategies it owns now.

mod adopt;
mod cluster_ops;

use crate::supervisor::error::render;
use crate::supervisor::{
    CommandError, Initial, Outcome, StrategySupervisor, SupervisorCommand, SupervisorHandle,
};
use crate::Shared;
use engine_protocol::backoff::Backoff;
use engine_protocol::{ExecutorCommand, ExecutorCommandKind};
use engine_store::command_parts as parts;
use engine_store::commands::{parse_command, CommandKind, InvalidCommand};
use engine_store::manager::{self as db, CommandRow};
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

const CLAIM_BATCH: i64 = 256;

/// Why a command row ends `failed`; its words go to the row's `error` column.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The command word or its parameters are not valid (the store's words).
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    #[error("unknown strategy id {strategy_id}: no row in strategy_configs has it")]
    UnknownStrategy { strategy_id: Uuid },
    #[error(transparent)]
    Failed(#[from] CommandError),
    /// A `cancel` that did not take effect on the runs it named.
    #[error(transparent)]
    Cancel(#[from] crate::runs::CancelError),
    /// A drain, undrain or move that did not happen (or not all of it).
    #[error(transparent)]
    Cluster(#[from] cluster_ops::ClusterOpError),
    /// A global command that did not take effect on some strategies.
    #[error("did not take effect on {} strateg{}: {}", failures.len(), if failures.len() == 1 { "y" } else { "ies" }, GlobalFailures(failures))]
    Global {
        failures: Vec<(String, CommandError)>,
    },
}

/// `name: error; name: error`.
struct GlobalFailures<'a>(&'a [(String, CommandError)]);

impl std::fmt::Display for GlobalFailures<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, err)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{name}: {}", render(err))?;
        }
        Ok(())
    }
}

/// A global command on its way to the supervisors.
struct Global {
    id: Uuid,
    kind: CommandKind,
    recovered_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Recovered: the strategies that have been through it already.
    superseded: HashSet<Uuid>,
    /// A cluster node's part of it: the node (which finishes its part, not the row).
    part: Option<String>,
}

/// A command the previous manager left `processing` (or, in a cluster, that a node
/// which died had claimed for a strategy this node owns now: see `adopt`).
struct Recovery<'a> {
    /// Its `created_at`.
    from: chrono::DateTime<chrono::Utc>,
    /// The strategies that have been through it already.
    superseded: &'a HashSet<Uuid>,
}

/// How many dispatched command ids the intake remembers (see [`Dispatched`]).
const REMEMBERED: usize = 8192;

pub struct CommandIntake {
    shared: Arc<Shared>,
    supervisors: HashMap<Uuid, SupervisorHandle>,
    /// Shared with the tasks that put commands back for another node.
    dispatched: Arc<Mutex<Dispatched>>,
    /// Cluster only: drains and moves (see `cluster_ops`).
    node_ops: cluster_ops::NodeOps,
}

/// The commands this manager has dispatched, most recent [`REMEMBERED`].
///
/// Claims commit with `synchronous_commit = off` ([`db::connect_claimer`]): if
/// PostgreSQL crashes before anything flushes the claim, the row is `pending` again
/// when it comes back, and the next claim would hand the same command out a second
/// time. Its first dispatch still records the outcome; it must not run twice.
#[derive(Default)]
struct Dispatched {
    ids: HashSet<Uuid>,
    order: std::collections::VecDeque<Uuid>,
}

impl Dispatched {
    /// Whether `id` is new (and remember it).
    fn first_time(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// Forget `id`: it went back to `pending` for another node, and this node may
    /// take it again should the strategy come back.
    fn forget(&mut self, id: Uuid) {
        if self.ids.remove(&id) {
            self.order.retain(|o| *o != id);
        }
    }
}

impl CommandIntake {
    pub fn new(shared: Arc<Shared>, supervisors: HashMap<Uuid, SupervisorHandle>) -> Self {
        CommandIntake {
            shared,
            supervisors,
            dispatched: Default::default(),
            node_ops: Default::default(),
        }
    }

    /// Finish the rows a previous manager left `processing`, then serve new ones
    /// until cancelled.
    /// `superseded`: for each recovered command, the strategies that have been
    /// through it already ([`db::superseded_recovered`]).
    pub async fn run(
        mut self,
        recovered: Vec<CommandRow>,
        superseded: HashMap<Uuid, HashSet<Uuid>>,
    ) {
        self.recover(
            recovered,
            &superseded,
            "the previous manager left processing",
        )
        .await;
        let cancel = self.shared.cancel.clone();
        let mut listener = None;
        let mut db_down = false;
        let mut deletions_checked = tokio::time::Instant::now();
        loop {
            if listener.is_none() {
                listener = listen(&self.shared).await;
            }
            let due = deletions_checked.elapsed() >= self.shared.config.poll_interval;
            if due {
                deletions_checked = tokio::time::Instant::now();
            }
            if !db_down {
                self.before_claim(due).await;
            }
            match db::claim_pending(&self.shared.claim_pool, CLAIM_BATCH, &self.shared.scope).await
            {
                Ok(rows) => {
                    if db_down {
                        tracing::info!("database is back; taking commands again");
                        db_down = false;
                    }
                    // A cluster node stops its claim at a global command: its own
                    // commands after it come with the next claim, at once.
                    let cluster = self.shared.scope.node().is_some();
                    let more = rows.len() as i64 == CLAIM_BATCH
                        || (cluster && rows.iter().any(|r| r.strategy_id.is_none()));
                    for row in rows {
                        if !self.first_dispatch(row.id) {
                            tracing::warn!(command_id = %row.id, command = %row.command, "a command came back as pending (a database crash undid its claim); it was already taken, and is not applied twice");
                            continue;
                        }
                        self.dispatch(row, None).await;
                    }
                    if due {
                        // After the claim: a command that woke the intake does not
                        // wait for these checks.
                        self.check_deleted().await;
                        self.fail_dead_parts().await;
                    }
                    if more {
                        continue;
                    }
                }
                Err(err) => {
                    if !db_down {
                        tracing::error!(error = %err, "cannot claim commands; retrying every poll interval");
                        db_down = true;
                    }
                    listener = None;
                }
            }
            let poll = tokio::time::sleep(self.shared.config.poll_interval);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = poll => {}
                notified = recv(&mut listener) => match notified {
                    Ok(notified) => {
                        self.drop_supervisors(&notified.deleted);
                        self.node_ops.woken |= notified.node_ops;
                    }
                    Err(_) => listener = None,
                },
            }
        }
    }

    /// What comes before each claim of commands, in a cluster: drains and moves,
    /// then the claim of strategies that need an owner, and (`due`: every poll
    /// interval, or after such a claim) the commands of dead nodes. The check for
    /// deleted and lost strategies and the parts of dead nodes come after the claim.
    async fn before_claim(&mut self, due: bool) {
        self.cluster_poll().await;
        let claimed = self.claim_strategies().await;
        if due || claimed {
            // Before this node claims their pending commands: those come after.
            self.adopt_orphaned().await;
        }
    }

    /// Finish commands left `processing` by a manager that is gone, in order, as
    /// the start-up does: each once (`superseded`: for each, the strategies that
    /// have been through it already, [`db::superseded_recovered`]).
    async fn recover(
        &mut self,
        rows: Vec<CommandRow>,
        superseded: &HashMap<Uuid, HashSet<Uuid>>,
        left_by: &str,
    ) {
        let none = HashSet::new();
        for row in rows {
            if !self.first_dispatch(row.id) {
                continue; // this manager has it in hand already
            }
            tracing::info!(command_id = %row.id, command = %row.command, "finishing a command {left_by}");
            let recovery = Recovery {
                from: row.created_at,
                superseded: superseded.get(&row.id).unwrap_or(&none),
            };
            self.dispatch(row, Some(recovery)).await;
        }
    }

    /// Whether command `id` has not been dispatched by this manager yet (see
    /// [`Dispatched`]); it counts as dispatched from now on.
    fn first_dispatch(&self, id: Uuid) -> bool {
        self.dispatched
            .lock()
            .expect("dispatched lock")
            .first_time(id)
    }

    async fn dispatch(&mut self, row: CommandRow, recovery: Option<Recovery<'_>>) {
        let recovered_from = recovery.as_ref().map(|r| r.from);
        let superseded = |strategy_id: &Uuid| {
            recovery
                .as_ref()
                .is_some_and(|r| r.superseded.contains(strategy_id))
        };
        let kind = match parse_command(&row.command, &row.parameters, row.strategy_id.is_none()) {
            Ok(kind) => kind,
            Err(invalid) => {
                self.finish(row.id, Err(IntakeError::Invalid(invalid)));
                return;
            }
        };
        if self.dispatch_cluster_op(&row, &kind, recovered_from).await {
            return;
        }
        if let (CommandKind::Cancel { run_id }, Some(strategy_id)) = (&kind, row.strategy_id) {
            // Straight to the runs: a cancel never waits behind the strategy's other
            // commands in its supervisor's queue.
            let request = crate::runs::CancelRequest {
                command_id: row.id,
                strategy_id,
                run_id: *run_id,
                recovered: recovered_from.is_some(),
            };
            let rx = self.shared.runs.cancel(request).await;
            let shared = self.shared.clone();
            let id = row.id;
            self.shared.tracker.spawn(async move {
                if let Ok(outcome) = rx.await {
                    finish_with_retry(&shared, id, outcome.map_err(IntakeError::Cancel)).await;
                }
            });
            return;
        }
        match row.strategy_id {
            Some(strategy_id) => {
                if self.requeue_if_elsewhere(strategy_id, row.id).await {
                    return;
                }
                let Some(handle) = self.supervisor(strategy_id).await else {
                    self.finish(row.id, Err(IntakeError::UnknownStrategy { strategy_id }));
                    return;
                };
                let (reply, rx) = oneshot::channel();
                let cmd = SupervisorCommand {
                    command_id: row.id,
                    kind,
                    global: false,
                    recovered_from,
                    superseded: superseded(&strategy_id),
                    reply,
                };
                if handle.tx.send(Box::new(cmd)).await.is_err() {
                    // Shutting down: the row stays `processing` for the next manager
                    // (in a cluster, it goes back for the strategy's new node).
                    return self.supervisor_gone(row.id);
                }
                self.finish_when_answered(row.id, rx);
            }
            None => {
                let superseded: HashSet<Uuid> = self
                    .supervisors
                    .keys()
                    .filter(|id| superseded(id))
                    .copied()
                    .collect();
                // A cluster node carries out its part: its own strategies.
                let part = row.part.then(|| self.shared.node.clone());
                let global = Global {
                    id: row.id,
                    kind,
                    recovered_from,
                    superseded,
                    part,
                };
                self.dispatch_global(global).await
            }
        }
    }

    /// Record the outcome a supervisor replies for command `id` (one that reached it
    /// after the strategy went to another node goes back to `pending` for that node).
    fn finish_when_answered(&self, id: Uuid, rx: oneshot::Receiver<Outcome>) {
        let shared = self.shared.clone();
        let dispatched = self.dispatched.clone();
        self.shared.tracker.spawn(async move {
            if let Ok(outcome) = rx.await {
                let result = match outcome {
                    Outcome::Failed(e) => Err(IntakeError::Failed(e)),
                    Outcome::Done | Outcome::NotApplicable => Ok(()),
                    Outcome::Elsewhere => {
                        return cluster_ops::requeue(&shared, &dispatched, id).await
                    }
                };
                finish_with_retry(&shared, id, result).await;
            }
        });
    }

    /// A global command takes its place in every supervisor's queue; the row (in a
    /// cluster: this node's part of it) is `executed` when it took effect on every
    /// strategy it applied to.
    async fn dispatch_global(&mut self, global: Global) {
        let Global {
            id,
            kind,
            recovered_from,
            superseded,
            part,
        } = global;
        let mut waits = Vec::with_capacity(self.supervisors.len());
        for (strategy_id, handle) in &self.supervisors {
            let (reply, rx) = oneshot::channel();
            let cmd = SupervisorCommand {
                command_id: id,
                kind: kind.clone(),
                global: true,
                recovered_from,
                superseded: superseded.contains(strategy_id),
                reply,
            };
            if handle.tx.send(Box::new(cmd)).await.is_ok() {
                waits.push((*strategy_id, rx));
            }
        }
        let shared = self.shared.clone();
        self.shared.tracker.spawn(async move {
            let mut failures = Vec::new();
            for (strategy_id, rx) in waits {
                match rx.await {
                    Ok(Outcome::Failed(e)) => {
                        let name = shared
                            .live
                            .lock()
                            .expect("live lock")
                            .get(&strategy_id)
                            .map(|e| e.name.clone())
                            .unwrap_or_else(|| strategy_id.to_string());
                        failures.push((name, e));
                    }
                    Ok(_) => {}
                    Err(_) => return, // shutting down; the next manager finishes it
                }
            }
            let result = if failures.is_empty() {
                Ok(())
            } else {
                Err(IntakeError::Global { failures })
            };
            // Announce it for dashboards, now that the supervised executors took it
            // over their control links, in order (no executor acts on the channel).
            let (command, mode) = match &kind {
                CommandKind::Stop { mode, .. } => (ExecutorCommandKind::Shutdown, Some(*mode)),
                CommandKind::Pause => (ExecutorCommandKind::Pause, None),
                _ => (ExecutorCommandKind::Resume, None),
            };
            shared.publisher.publish(
                shared.channels.global_commands(),
                &ExecutorCommand {
                    strategy_id: None,
                    name: "global".to_string(),
                    timestamp: chrono::Utc::now(),
                    command,
                    command_id: id,
                    config: None,
                    mode,
                    reason: mode.map(|_| "stop".to_string()),
                    source: Some("manager".to_string()),
                },
            );
            match part {
                Some(node) => finish_part_with_retry(&shared, id, &node, result).await,
                None => finish_with_retry(&shared, id, result).await,
            }
        });
    }

    /// A cluster node: finish the parts of global commands whose nodes stopped
    /// renewing their lease before finishing them, so that no row stays
    /// `processing` ([`parts::fail_dead_parts`]). Any node may: each part is
    /// finished once.
    async fn fail_dead_parts(&self) {
        if self.shared.scope.node().is_none() {
            return;
        }
        let sweep = parts::fail_dead_parts(&self.shared.pool);
        match tokio::time::timeout(Duration::from_secs(1), sweep).await {
            Ok(Ok(finished)) => {
                for row in &finished {
                    tracing::warn!(command = %row.command, status = %row.status, "a global command finished for a node that stopped renewing its lease");
                    self.shared.command_metrics.record(Some(row));
                }
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot finish dead nodes' parts of global commands")
            }
            Err(_) => tracing::debug!("finishing dead nodes' parts of global commands timed out"),
        }
    }

    /// A cluster node: claim the strategies nobody owns that need an owner, when this
    /// node is the least loaded ([`db::claim_strategies`]), and start a supervisor for
    /// each, which acts as a manager's start-up does (a strategy that should run is
    /// started). Commands for them are claimed next. `true` when it claimed any.
    async fn claim_strategies(&mut self) -> bool {
        let Some(node) = self.shared.scope.node() else {
            return false;
        };
        let claimed = match db::claim_strategies(&self.shared.pool, node, CLAIM_BATCH).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim strategies for this node");
                return false;
            }
        };
        if claimed.is_empty() {
            return false;
        }
        // The other nodes claim their share now, not at their next poll (a dead
        // node's strategies come up sooner, spread over the live nodes).
        let wake = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(engine_store::cluster_ops::NODE_OPS_CHANNEL)
            .bind(node)
            .execute(&self.shared.pool);
        if let Err(err) = wake.await {
            tracing::debug!(error = %err, "cannot wake the other nodes after a claim");
        }
        for id in claimed {
            let row = match db::load_strategy(&self.shared.pool, id).await {
                Ok(Some(row)) => row,
                Ok(None) => continue, // deleted meanwhile
                Err(err) => {
                    // Owned now: its commands come to this node, which starts its
                    // supervisor on the first one.
                    tracing::error!(error = %err, strategy_id = %id, "cannot load a strategy this node claimed");
                    continue;
                }
            };
            tracing::info!(strategy = %row.name, strategy_id = %id, node, lease_epoch = row.lease_epoch, "this node owns the strategy now");
            // A supervisor of an earlier tenure (lost, then taken back): its
            // epoch is stale, so it goes.
            if let Some(old) = self.supervisors.remove(&id) {
                old.lose();
            }
            let desired = row.desired_state;
            let initial =
                crate::initial_action(&self.shared, &row, false, Vec::new(), desired).await;
            let handle = StrategySupervisor::spawn(self.shared.clone(), row, initial);
            self.supervisors.insert(id, handle);
        }
        true
    }

    /// The supervisor of `id`, started on first use for a strategy added after boot.
    async fn supervisor(&mut self, id: Uuid) -> Option<SupervisorHandle> {
        if let Some(handle) = self.supervisors.get(&id) {
            if !handle.tx.is_closed() {
                return Some(handle.clone());
            }
        }
        let row = match db::load_strategy(&self.shared.pool, id).await {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(err) => {
                tracing::error!(error = %err, "cannot load strategy {id}");
                return None;
            }
        };
        if self.shared.scope.node().is_some() {
            // A cluster node serves only what it owns; one it has no supervisor for
            // was moved here (see `cluster_ops`).
            return Some(self.supervise_owned(row).await);
        }
        let handle = StrategySupervisor::spawn(self.shared.clone(), row, Initial::Idle);
        self.supervisors.insert(id, handle.clone());
        Some(handle)
    }

    /// The safety net under the deletion notification: the supervised strategies
    /// whose rows are gone.
    async fn check_deleted(&mut self) {
        let ids: Vec<Uuid> = self.supervisors.keys().copied().collect();
        // Bounded: a slow database must not hold up the claims.
        let check = db::gone_strategies(&self.shared.pool, &ids, self.shared.scope.node());
        match tokio::time::timeout(Duration::from_secs(1), check).await {
            Ok(Ok(gone)) => {
                let (lost, deleted): (Vec<_>, Vec<_>) =
                    gone.into_iter().partition(|(_, lost)| *lost);
                self.drop_supervisors(&deleted.into_iter().map(|(id, _)| id).collect::<Vec<_>>());
                for (id, _) in lost {
                    if let Some(handle) = self.supervisors.remove(&id) {
                        tracing::warn!(strategy_id = %id, "the strategy is another node's now; dropping its supervisor here");
                        handle.lose();
                    }
                }
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "cannot check for deleted strategies"),
            Err(_) => tracing::debug!("the check for deleted strategies timed out"),
        }
    }

    /// Stop the supervisors of deleted strategies (each stops an executor that still
    /// runs, and forgets the strategy: see [`SupervisorHandle::remove`]).
    fn drop_supervisors(&mut self, deleted: &[Uuid]) {
        for id in deleted {
            if let Some(handle) = self.supervisors.remove(id) {
                tracing::info!(strategy_id = %id, "the strategy's row was deleted; dropping its supervisor");
                handle.remove();
            }
        }
    }

    fn finish(&self, id: Uuid, result: Result<(), IntakeError>) {
        if let Err(e) = &result {
            tracing::warn!(command_id = %id, error = %render(e), "command refused");
        }
        let shared = self.shared.clone();
        self.shared
            .tracker
            .spawn(async move { finish_with_retry(&shared, id, result).await });
    }
}

/// Record the outcome, retrying while the database is away (until shutdown, after
/// which the row stays `processing` and the next manager finishes it). The error's
/// words (with its causes) go to the `error` column.
async fn finish_with_retry(shared: &Shared, id: Uuid, result: Result<(), IntakeError>) {
    let result = result.map_err(|e| render(&e));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match db::finish_command(&shared.pool, id, &result, shared.scope.node()).await {
            Ok(written) => return shared.command_metrics.record(written.as_ref()),
            Err(err) => {
                tracing::warn!(command_id = %id, error = %err, "could not record the command's outcome; retrying");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Record this node's part of a global command (see [`finish_with_retry`]); the row
/// is finished with the last part ([`parts::finish_part`]).
async fn finish_part_with_retry(
    shared: &Shared,
    id: Uuid,
    node: &str,
    result: Result<(), IntakeError>,
) {
    let result = result.map_err(|e| render(&e));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match parts::finish_part(&shared.pool, id, node, &result).await {
            Ok(written) => return shared.command_metrics.record(written.as_ref()),
            Err(err) => {
                tracing::warn!(command_id = %id, error = %err, "could not record this node's part of a global command; retrying");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// The channel of `strategy_configs_deleted` notifications (the payload is the id).
const DELETED_CHANNEL: &str = "strategy_configs_deleted";

async fn listen(shared: &Shared) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(&shared.pool).await.ok()?;
    listener
        .listen_all([
            "strategy_commands",
            DELETED_CHANNEL,
            engine_store::cluster_ops::NODE_OPS_CHANNEL,
        ])
        .await
        .ok()?;
    Some(listener)
}

/// What the notifications said.
#[derive(Default)]
struct Notified {
    /// The strategies deleted meanwhile.
    deleted: Vec<Uuid>,
    /// A drain, undrain or hand-over happened (cluster only).
    node_ops: bool,
}

/// Wait for notifications.
async fn recv(listener: &mut Option<PgListener>) -> Result<Notified, sqlx::Error> {
    match listener {
        Some(l) => {
            let mut notified = Notified::default();
            let mut note = |n: sqlx::postgres::PgNotification| {
                if n.channel() == DELETED_CHANNEL {
                    notified.deleted.extend(n.payload().parse::<Uuid>().ok());
                } else if n.channel() == engine_store::cluster_ops::NODE_OPS_CHANNEL {
                    notified.node_ops = true;
                }
            };
            note(l.recv().await?);
            // Several inserts may have notified: one claim serves them all.
            while let Some(n) = l.next_buffered() {
                note(n);
            }
            Ok(notified)
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_dispatched_once_and_old_ids_are_forgotten() {
        let mut seen = Dispatched::default();
        let first = Uuid::new_v4();
        assert!(seen.first_time(first));
        assert!(!seen.first_time(first), "the same command twice");
        for _ in 0..REMEMBERED {
            assert!(seen.first_time(Uuid::new_v4()));
        }
        assert_eq!(seen.ids.len(), REMEMBERED);
        assert_eq!(seen.order.len(), REMEMBERED);
        assert!(seen.first_time(first), "the oldest id was forgotten");
    }
}
