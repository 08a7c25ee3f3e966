//! The cluster's node operations in the intake (CONTRACT.md §7): the global `drain`
//! and `undrain` (checked by whichever node claims them; the flag they set reaches
//! the named node through `engine_nodes` and a NOTIFY), `move` (carried out by the
//! strategy's supervisor in the order of its commands; the row ends `executed` once
//! the strategy runs on the target), a draining node's hand-over of its strategies
//! (all in parallel, as many as the other nodes have room for), and a node's start
//! of the strategies moved to it.

use super::{CommandIntake, IntakeError};
use crate::supervisor::error::render;
use crate::supervisor::{Outcome, SupervisorCommand, SupervisorHandle};
use crate::Shared;
use engine_protocol::backoff::Backoff;
use engine_store::cluster_ops::{
    self as store, HandOverProgress, MoveRow, NodeLoad, OwnedStrategy,
};
use engine_store::commands::{parse_command, CommandKind};
use engine_store::manager::{self as db, CommandRow};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How often a waiting hand-over looks at the database.
const PROGRESS_POLL: Duration = Duration::from_millis(100);

/// How long a handed-over strategy may take to run on its new node, beyond the
/// start timeout (claims wake on a NOTIFY, else on the poll).
const SETTLE_MARGIN: Duration = Duration::from_secs(15);

/// Beyond the start timeout and [`SETTLE_MARGIN`]: what a drain or move may take
/// to stop the executor (its 10 s grace) before it counts as stalled.
const STOP_ALLOWANCE: Duration = Duration::from_secs(15);

/// How long a drain or move may go without progress (a hand-over, or the strategy
/// running on its target) before any node ends it `failed`: longer than its own node
/// ever takes to end it.
fn stall_limit(shared: &Shared) -> Duration {
    shared.config.start_timeout + SETTLE_MARGIN + STOP_ALLOWANCE
}

/// Why a drain, undrain or move row ends `failed` (its words go to `error`).
#[derive(Debug, thiserror::Error)]
pub enum ClusterOpError {
    #[error(
        "{word} is for a cluster: this manager runs without --cluster and serves every strategy itself, so there is no other node; start the managers with --cluster and distinct --node names"
    )]
    NotInCluster { word: &'static str },
    #[error(
        "unknown node '{node}'; the cluster's nodes are {known} (`enginectl nodes` lists them)"
    )]
    UnknownNode { node: String, known: String },
    #[error(
        "node '{node}' is not alive (its last heartbeat was {age_s:.1}s ago, its lease time is {lease_s:.1}s); {advice}"
    )]
    DeadNode {
        node: String,
        age_s: f64,
        lease_s: f64,
        advice: &'static str,
    },
    #[error("cannot read or write the cluster's nodes (engine_nodes)")]
    Store(#[source] sqlx::Error),
    #[error(
        "the manager that took this drain stopped before it marked node '{node}' draining, and the node is not draining now (an undrain may have come since); send the drain again if it is still wanted"
    )]
    DrainNotStarted { node: String },
    #[error("undrained (command {undrain}) before its drain finished; the strategies handed over so far stay where they went")]
    Undrained { undrain: Uuid },
    #[error(
        "node '{node}' stopped renewing its lease before its drain finished; its strategies fail over to the other nodes by themselves (it stays draining: `enginectl undrain {node}` once it is back)"
    )]
    DrainerDied { node: String },
    #[error(
        "node '{node}' made no progress with its drain in {secs}s (it handed no strategy over): it may run an older version that does not know drain, or be stuck; it stays draining: restart it on this version and send the drain again, or `enginectl undrain {node}`"
    )]
    DrainStalled { node: String, secs: u64 },
    #[error(
        "node '{node}', which owned the strategy, stopped renewing its lease before it handed the strategy over to '{target}'; the strategy fails over to another node by itself: send the move again once it runs there (`enginectl list` shows its node)"
    )]
    MoverDied { node: String, target: String },
    #[error(
        "node '{node}', which owns the strategy, did not hand it over to '{target}' in {secs}s: it may run an older version that does not know move, or be stuck; check it (`enginectl nodes`) and send the move again"
    )]
    MoveStalled {
        node: String,
        target: String,
        secs: u64,
    },
    #[error("{0}")]
    DrainIncomplete(Box<DrainReport>),
    #[error("moved to node '{target}', but {problem}")]
    MoveNotRunning {
        target: String,
        problem: MoveProblem,
    },
}

/// What a drain could not do.
#[derive(Debug)]
pub struct DrainReport {
    node: String,
    /// Strategies kept here for want of room, and how the other nodes stood.
    no_room: Vec<String>,
    nodes: Vec<NodeLoad>,
    /// Hand-overs that failed: name and why.
    failed: Vec<(String, String)>,
    /// Released, but not running elsewhere by the deadline: name and where it is.
    unsettled: Vec<(String, String)>,
    waited: Duration,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved_not = self.no_room.len() + self.failed.len() + self.unsettled.len();
        write!(
            f,
            "{moved_not} strateg{} did not move",
            if moved_not == 1 { "y" } else { "ies" }
        )?;
        if !self.no_room.is_empty() {
            let others: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.node != self.node)
                .map(NodeLoad::describe)
                .collect();
            let others = if others.is_empty() {
                "there is no other node".to_string()
            } else {
                format!("nodes: {}", others.join(", "))
            };
            write!(
                f,
                "; no other live node has room for {} ({others}): they keep running on {}, which stays draining and hands them over once a node has room (add capacity or nodes, or `enginectl undrain {}`)",
                self.no_room.join(", "),
                self.node,
                self.node
            )?;
        }
        for (name, why) in &self.failed {
            write!(f, "; {name} was not handed over: {why}")?;
        }
        if !self.unsettled.is_empty() {
            let list: Vec<String> = self
                .unsettled
                .iter()
                .map(|(name, where_)| format!("{name} ({where_})"))
                .collect();
            write!(
                f,
                "; released but not running on another node after {}s: {}",
                self.waited.as_secs(),
                list.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Why a moved strategy is not running on its target.
#[derive(Debug)]
pub enum MoveProblem {
    StartedElsewhere {
        node: String,
    },
    FailedThere {
        error: String,
    },
    NotRunning {
        secs: u64,
        now: String,
    },
    /// The node that handed it over died (or restarted) before it saw the strategy
    /// run on the target.
    MoverDiedAfter {
        node: String,
        secs: u64,
        now: String,
    },
}

impl fmt::Display for MoveProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveProblem::StartedElsewhere { node } => write!(
                f,
                "node '{node}' runs it now (the target stopped beating and another node took it over)"
            ),
            MoveProblem::FailedThere { error } => write!(f, "it failed to start there: {error}"),
            MoveProblem::NotRunning { secs, now } => {
                write!(f, "it was not running there after {secs}s ({now})")
            }
            MoveProblem::MoverDiedAfter { node, secs, now } => write!(
                f,
                "node '{node}', which handed it over, died or restarted before it saw it run there, and it was not running there {secs}s after the hand-over ({now}); check the target (`enginectl nodes`, `enginectl list`)"
            ),
        }
    }
}

/// A drain pass of this node in progress: set when it is over.
type DrainPass = Arc<AtomicBool>;

/// The intake's state for the cluster's operations.
pub(super) struct NodeOps {
    /// This node's drain pass in progress.
    drain_pass: Option<DrainPass>,
    /// When [`CommandIntake::cluster_poll`] last looked.
    checked: tokio::time::Instant,
    /// A NOTIFY of [`store::NODE_OPS_CHANNEL`] came: look before the poll is due.
    pub(super) woken: bool,
}

impl Default for NodeOps {
    fn default() -> Self {
        NodeOps {
            drain_pass: None,
            checked: tokio::time::Instant::now(),
            woken: true,
        }
    }
}

/// `status stopped, owner node-b`: where a handed-over strategy stands.
fn where_now(p: &HandOverProgress) -> String {
    format!(
        "status {}, owner {}",
        p.status,
        p.node.as_deref().unwrap_or("none")
    )
}

impl CommandIntake {
    /// Carry out `drain`, `undrain` and `move` rows; `false` for every other row.
    pub(super) async fn dispatch_cluster_op(
        &mut self,
        row: &CommandRow,
        kind: &CommandKind,
        recovered: Option<chrono::DateTime<chrono::Utc>>,
    ) -> bool {
        match (kind, row.strategy_id) {
            (CommandKind::Drain { node } | CommandKind::Undrain { node }, None) => {
                let drain = matches!(kind, CommandKind::Drain { .. });
                self.node_command(row.id, node, drain, recovered.is_some())
                    .await;
                true
            }
            (CommandKind::Move { node }, Some(strategy_id)) => {
                self.dispatch_move(row.id, strategy_id, node, recovered)
                    .await;
                true
            }
            _ => false,
        }
    }

    /// `drain` / `undrain` of `node`, on whichever node claimed the row: checked here;
    /// a drain sets the flag and its row stays `processing` until the named node has
    /// handed its strategies over; an undrain clears it and is done.
    async fn node_command(&mut self, id: Uuid, node: &str, drain: bool, recovered: bool) {
        let word = if drain { "drain" } else { "undrain" };
        if self.shared.scope.node().is_none() {
            return self.finish_cluster(id, Err(ClusterOpError::NotInCluster { word }));
        }
        let loads = match store::node_loads(&self.shared.pool).await {
            Ok(loads) => loads,
            Err(err) => return self.finish_cluster(id, Err(ClusterOpError::Store(err))),
        };
        let Some(load) = loads.iter().find(|n| n.node == node) else {
            let known: Vec<&str> = loads.iter().map(|n| n.node.as_str()).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return self.finish_cluster(
                id,
                Err(ClusterOpError::UnknownNode {
                    node: node.to_string(),
                    known,
                }),
            );
        };
        if !load.alive {
            let advice = if drain {
                "a dead node's strategies fail over to the other nodes by themselves; drain a live node"
            } else {
                "undrain it once it is back (a node keeps its draining flag through restarts)"
            };
            return self.finish_cluster(
                id,
                Err(ClusterOpError::DeadNode {
                    node: node.to_string(),
                    age_s: load.heartbeat_age_s,
                    lease_s: load.lease_s,
                    advice,
                }),
            );
        }
        if drain {
            // A recovered drain (a node restarted meanwhile) does not set the flag
            // again: an undrain may have cleared it since.
            if recovered && !load.draining {
                let node = node.to_string();
                return self.finish_cluster(id, Err(ClusterOpError::DrainNotStarted { node }));
            }
            if !recovered {
                if let Err(err) = store::set_draining(&self.shared.pool, node, true).await {
                    return self.finish_cluster(id, Err(ClusterOpError::Store(err)));
                }
            }
            tracing::info!(command_id = %id, node, "drain: the node is draining; its row ends when it has handed its strategies over");
            return;
        }
        if let Err(err) = store::set_draining(&self.shared.pool, node, false).await {
            return self.finish_cluster(id, Err(ClusterOpError::Store(err)));
        }
        tracing::info!(command_id = %id, node, "undrain: the node takes new strategies again");
        // Drains of that node not finished yet end here: it is not draining now.
        if let Ok(drains) = store::processing_drains(&self.shared.pool).await {
            for row in drains {
                if drain_node(&row.parameters).as_deref() == Some(node) {
                    let undrained = ClusterOpError::Undrained { undrain: id };
                    finish_cluster_row(self.shared.clone(), row.id, Err(render(&undrained)));
                }
            }
        }
        self.finish_cluster(id, Ok(()));
    }

    /// `move`: the supervisor checks the target, stops the executor and hands the
    /// strategy over, in the order of the strategy's commands; the row is executed
    /// once it runs on the target (or at once for one that should not run).
    async fn dispatch_move(
        &mut self,
        id: Uuid,
        strategy_id: Uuid,
        node: &str,
        recovered_from: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        if self.shared.scope.node().is_none() {
            return self.finish_cluster(id, Err(ClusterOpError::NotInCluster { word: "move" }));
        }
        if self.requeue_if_elsewhere(strategy_id, id).await {
            return;
        }
        let Some(handle) = self.supervisor(strategy_id).await else {
            self.finish(id, Err(IntakeError::UnknownStrategy { strategy_id }));
            return;
        };
        let (reply, rx) = oneshot::channel();
        let cmd = SupervisorCommand {
            command_id: id,
            kind: CommandKind::Move {
                node: node.to_string(),
            },
            global: false,
            recovered_from,
            superseded: false,
            reply,
        };
        if handle.tx.send(Box::new(cmd)).await.is_err() {
            return self.supervisor_gone(id);
        }
        let shared = self.shared.clone();
        let dispatched = self.dispatched.clone();
        let target = node.to_string();
        self.shared.tracker.spawn(async move {
            let result = match rx.await {
                Ok(Outcome::Done) => wait_moved(&shared, strategy_id, id, &target).await,
                Ok(Outcome::NotApplicable) => Ok(()),
                Ok(Outcome::Failed(e)) => Err(IntakeError::Failed(e)),
                Ok(Outcome::Elsewhere) => return requeue(&shared, &dispatched, id).await,
                Err(_) => return, // shutting down; the next manager finishes it
            };
            // Unless the sweep of stuck moves (another node's) ended it meanwhile.
            finish_cluster_row(shared, id, result.map_err(|e| render(&e)));
        });
    }

    /// Cluster only: a command for a strategy this node has no live supervisor for,
    /// and that another node owns now, goes back to `pending` for that node. `true`
    /// when it did.
    pub(super) async fn requeue_if_elsewhere(&mut self, strategy_id: Uuid, id: Uuid) -> bool {
        let Some(me) = self.shared.scope.node() else {
            return false;
        };
        if self
            .supervisors
            .get(&strategy_id)
            .is_some_and(|h| !h.tx.is_closed())
        {
            return false;
        }
        match db::load_strategy(&self.shared.pool, strategy_id).await {
            Ok(Some(row)) if row.node.as_deref() != Some(me) => {
                tracing::info!(command_id = %id, strategy_id = %strategy_id, owner = row.node.as_deref().unwrap_or("none"), "the strategy is not this node's now; the command goes back for its owner");
                self.requeue_unless_shutting_down(id);
                true
            }
            _ => false,
        }
    }

    /// A command's supervisor is gone before it took the command: the manager is
    /// stopping (the row stays `processing` for the next one), or in a cluster the
    /// strategy went to another node (the command goes back for that node).
    pub(super) fn supervisor_gone(&self, id: Uuid) {
        if self.shared.scope.node().is_some() {
            self.requeue_unless_shutting_down(id);
        }
    }

    /// Put a command back to `pending` (unless the manager is stopping: then it stays
    /// `processing` for the next one).
    pub(super) fn requeue_unless_shutting_down(&self, id: Uuid) {
        if self.shared.cancel.is_cancelled() {
            return;
        }
        let shared = self.shared.clone();
        let dispatched = self.dispatched.clone();
        self.shared
            .tracker
            .spawn(async move { requeue(&shared, &dispatched, id).await });
    }

    /// Cluster only: a supervisor for a strategy this node owns and has none for
    /// (moved to it, or whose command came before the poll saw it), started as a
    /// claim's is: a strategy that should run is started.
    pub(super) async fn supervise_owned(&mut self, row: db::StrategyRow) -> SupervisorHandle {
        let id = row.id;
        tracing::info!(strategy = %row.name, strategy_id = %id, lease_epoch = row.lease_epoch, "this node owns the strategy now (moved here)");
        if let Some(old) = self.supervisors.remove(&id) {
            old.lose();
        }
        let desired = row.desired_state;
        let initial = crate::initial_action(&self.shared, &row, false, Vec::new(), desired).await;
        let handle =
            crate::supervisor::StrategySupervisor::spawn(self.shared.clone(), row, initial);
        self.supervisors.insert(id, handle.clone());
        handle
    }

    /// The cluster's part of the poll (also on a NOTIFY of [`store::NODE_OPS_CHANNEL`]):
    /// start the strategies moved here, hand this node's over while it drains, and
    /// end the drains of nodes that died.
    pub(super) async fn cluster_poll(&mut self) {
        let Some(me) = self.shared.scope.node().map(str::to_string) else {
            return;
        };
        let due = self.node_ops.checked.elapsed() >= self.shared.config.poll_interval;
        if !(due || self.node_ops.woken) {
            return;
        }
        self.node_ops.checked = tokio::time::Instant::now();
        self.node_ops.woken = false;
        self.adopt_moved_in(&me).await;
        self.sweep_stuck_moves().await;
        self.drain_poll(&me).await;
    }

    /// Any node ends the `move` rows that cannot end by themselves: the node that
    /// handed the strategy over died before the end (ended as the strategy stands,
    /// or `failed` once the stall limit passed), the owner died before the hand-over,
    /// or the owner made no progress within [`stall_limit`] (an older version).
    async fn sweep_stuck_moves(&self) {
        let Ok(rows) = store::processing_moves(&self.shared.pool).await else {
            return;
        };
        for row in rows {
            if let Some(result) = judge_stuck_move(&self.shared, &row).await {
                if let Err(e) = &result {
                    tracing::warn!(command_id = %row.id, error = %render(e), "a move that could not end by itself ends");
                }
                finish_cluster_row(self.shared.clone(), row.id, result.map_err(|e| render(&e)));
            }
        }
    }

    async fn adopt_moved_in(&mut self, me: &str) {
        let known: Vec<Uuid> = self
            .supervisors
            .iter()
            .filter(|(_, h)| !h.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        let ids = match store::moved_in(&self.shared.pool, me, &known).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::debug!(error = %err, "cannot look for strategies moved here");
                return;
            }
        };
        for id in ids {
            match db::load_strategy(&self.shared.pool, id).await {
                Ok(Some(row)) if row.node.as_deref() == Some(me) => {
                    self.supervise_owned(row).await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, strategy_id = %id, "cannot load a strategy moved here")
                }
            }
        }
    }

    /// While this node drains: one pass at a time hands over every strategy it owns
    /// that the other nodes have room for, in parallel, and ends the drain rows
    /// naming it. Any node ends the drain rows of a node that died.
    async fn drain_poll(&mut self, me: &str) {
        if self
            .node_ops
            .drain_pass
            .as_ref()
            .is_some_and(|done| !done.load(Ordering::Acquire))
        {
            return;
        }
        let pool = &self.shared.pool;
        let Ok(drains) = store::processing_drains(pool).await else {
            return;
        };
        let mut mine = Vec::new();
        for row in drains {
            let Some(node) = drain_node(&row.parameters) else {
                continue; // the claimer fails it
            };
            if node == me {
                mine.push(row.id);
            } else if !row.alive {
                let died = ClusterOpError::DrainerDied { node };
                finish_cluster_row(self.shared.clone(), row.id, Err(render(&died)));
            } else if row.stalled_s >= stall_limit(&self.shared).as_secs_f64() {
                let secs = row.stalled_s as u64;
                let stalled = ClusterOpError::DrainStalled { node, secs };
                tracing::warn!(command_id = %row.id, error = %render(&stalled), "a drain that made no progress ends");
                finish_cluster_row(self.shared.clone(), row.id, Err(render(&stalled)));
            }
        }
        if store::is_draining(pool, me).await.ok().flatten() != Some(true) {
            return;
        }
        let (owned, room) = match store::drain_plan(pool, me).await {
            Ok(plan) => plan,
            Err(err) => {
                tracing::warn!(error = %err, "drain: cannot read this node's strategies");
                return;
            }
        };
        let (chosen, no_room) = choose_for_room(owned, room);
        if chosen.is_empty() && mine.is_empty() {
            return;
        }
        let nodes = if no_room.is_empty() {
            Vec::new()
        } else {
            store::node_loads(pool).await.unwrap_or_default()
        };
        let pass_id = mine.first().copied().unwrap_or_else(Uuid::new_v4);
        tracing::info!(
            handing_over = chosen.len(),
            kept_for_want_of_room = no_room.len(),
            "drain: handing this node's strategies over"
        );
        let waits = self.send_hand_overs(me, pass_id, chosen).await;
        let done: DrainPass = Arc::new(AtomicBool::new(false));
        self.node_ops.drain_pass = Some(done.clone());
        let shared = self.shared.clone();
        let report = DrainReport {
            node: me.to_string(),
            no_room,
            nodes,
            failed: Vec::new(),
            unsettled: Vec::new(),
            waited: Duration::ZERO,
        };
        self.shared.tracker.spawn(async move {
            if let Some(result) = drain_pass(&shared, pass_id, waits, report).await {
                let words = result.map_err(|e| render(&e));
                for id in mine {
                    finish_cluster_row(shared.clone(), id, words.clone());
                }
            }
            done.store(true, Ordering::Release);
        });
    }

    /// Hand each of `chosen` to its supervisor as a drain (in parallel: each
    /// supervisor stops and releases its own); the replies to wait for.
    async fn send_hand_overs(
        &mut self,
        me: &str,
        pass_id: Uuid,
        chosen: Vec<OwnedStrategy>,
    ) -> Vec<(Uuid, String, oneshot::Receiver<Outcome>)> {
        let mut waits = Vec::with_capacity(chosen.len());
        for strategy in chosen {
            let Some(handle) = self.supervisor(strategy.id).await else {
                continue; // deleted meanwhile
            };
            let (reply, rx) = oneshot::channel();
            let cmd = SupervisorCommand {
                command_id: pass_id,
                kind: CommandKind::Drain {
                    node: me.to_string(),
                },
                global: true,
                recovered_from: None,
                superseded: false,
                reply,
            };
            if handle.tx.send(Box::new(cmd)).await.is_ok() {
                waits.push((strategy.id, strategy.name, rx));
            }
        }
        waits
    }

    fn finish_cluster(&self, id: Uuid, result: Result<(), ClusterOpError>) {
        if let Err(e) = &result {
            tracing::warn!(command_id = %id, error = %render(e), "command refused");
        }
        finish_cluster_row(self.shared.clone(), id, result.map_err(|e| render(&e)));
    }
}

/// A drain pass: the supervisors' hand-overs, then the wait until each strategy
/// released runs on another node. `None` when the manager stops meanwhile.
async fn drain_pass(
    shared: &Shared,
    pass_id: Uuid,
    waits: Vec<(Uuid, String, oneshot::Receiver<Outcome>)>,
    mut report: DrainReport,
) -> Option<Result<(), ClusterOpError>> {
    let mut released = Vec::new();
    for (id, name, rx) in waits {
        match rx.await {
            Ok(Outcome::Done) => released.push(id),
            Ok(Outcome::Failed(e)) => report.failed.push((name, render(&e))),
            Ok(Outcome::NotApplicable | Outcome::Elsewhere) => {} // deleted, or not ours
            Err(_) => return None,
        }
    }
    let limit = shared.config.start_timeout + SETTLE_MARGIN;
    let started = tokio::time::Instant::now();
    let mut unsettled = Vec::new();
    while !released.is_empty() {
        let progress = store::hand_over_progress(
            &shared.pool,
            &released,
            pass_id,
            store::DRAIN_REASON,
            &shared.node,
        )
        .await;
        if let Ok(progress) = progress {
            unsettled = progress.into_iter().filter(|p| !p.settled()).collect();
            if unsettled.is_empty() {
                break;
            }
        }
        if started.elapsed() >= limit {
            break;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return None,
            _ = tokio::time::sleep(PROGRESS_POLL) => {}
        }
    }
    report.waited = started.elapsed();
    report.unsettled = unsettled
        .iter()
        .map(|p| (p.name.clone(), where_now(p)))
        .collect();
    if report.no_room.is_empty() && report.failed.is_empty() && report.unsettled.is_empty() {
        tracing::info!(
            moved = released.len(),
            "drain: every strategy of this node was handed over"
        );
        Some(Ok(()))
    } else {
        Some(Err(ClusterOpError::DrainIncomplete(Box::new(report))))
    }
}

/// After a move's release: wait until the strategy runs on `target` (or settles
/// otherwise).
async fn wait_moved(
    shared: &Shared,
    strategy_id: Uuid,
    command_id: Uuid,
    target: &str,
) -> Result<(), IntakeError> {
    let limit = shared.config.start_timeout + SETTLE_MARGIN;
    let started = tokio::time::Instant::now();
    let not_running = |problem| {
        Err(ClusterOpError::MoveNotRunning {
            target: target.to_string(),
            problem,
        }
        .into())
    };
    loop {
        let progress = store::hand_over_progress(
            &shared.pool,
            &[strategy_id],
            command_id,
            store::MOVE_REASON,
            &shared.node,
        )
        .await;
        let mut now = String::from("the database did not answer");
        match progress.as_deref() {
            Ok([]) => return Ok(()), // deleted meanwhile
            Ok([p, ..]) => {
                if let Some(end) = judge_move(p, target) {
                    return end.map_err(IntakeError::from);
                }
                now = where_now(p);
            }
            Err(_) => {}
        }
        if started.elapsed() >= limit {
            let secs = started.elapsed().as_secs();
            return not_running(MoveProblem::NotRunning { secs, now });
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(PROGRESS_POLL) => {}
        }
    }
}

/// How a handed-over move ends, as the strategy stands (`None`: not yet).
fn judge_move(p: &HandOverProgress, target: &str) -> Option<Result<(), ClusterOpError>> {
    let problem = match &p.started_on {
        Some(node) if node == target => return Some(Ok(())),
        Some(node) => MoveProblem::StartedElsewhere { node: node.clone() },
        None if p.failed_elsewhere && p.status == "error" => MoveProblem::FailedThere {
            error: p
                .last_error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        },
        None if p.settled() => return Some(Ok(())),
        None => return None,
    };
    Some(Err(ClusterOpError::MoveNotRunning {
        target: target.to_string(),
        problem,
    }))
}

/// How a `move` row that its own node cannot end ends (`None`: not stuck, or not
/// yet). See [`CommandIntake::sweep_stuck_moves`].
async fn judge_stuck_move(shared: &Shared, row: &MoveRow) -> Option<Result<(), ClusterOpError>> {
    let target = row.target.clone()?;
    let secs = row.stalled_s as u64;
    let stalled = row.stalled_s >= stall_limit(shared).as_secs_f64();
    match (&row.released_by, &row.owner) {
        // Handed over by a node that died since (or restarted, and forgot it): end
        // it as the strategy stands.
        (Some(from), _) if !row.released_by_alive || stalled => {
            let progress = store::hand_over_progress(
                &shared.pool,
                &[row.strategy_id],
                row.id,
                store::MOVE_REASON,
                from,
            )
            .await
            .ok()?;
            let Some(p) = progress.first() else {
                return Some(Ok(())); // deleted meanwhile
            };
            judge_move(p, &target).or_else(|| {
                stalled.then(|| {
                    Err(ClusterOpError::MoveNotRunning {
                        target: target.clone(),
                        problem: MoveProblem::MoverDiedAfter {
                            node: from.clone(),
                            secs,
                            now: where_now(p),
                        },
                    })
                })
            })
        }
        // Its node waits for the strategy to run there, within its own limit.
        (Some(_), _) => None,
        (None, Some(owner)) if !row.owner_alive => Some(Err(ClusterOpError::MoverDied {
            node: owner.clone(),
            target,
        })),
        // Its owner died before the hand-over and a failover took it: to the target
        // (done, by other means), or elsewhere (once the new owner has had the time
        // to carry out a move it claimed since).
        (None, Some(owner)) if row.taken_from.is_some() && row.owner_alive => {
            let from = row.taken_from.clone().unwrap_or_default();
            if *owner == target {
                tracing::info!(command_id = %row.id, "move: node {from} died before the hand-over, and a failover took the strategy to {target} anyway");
                Some(Ok(()))
            } else {
                stalled.then_some(Err(ClusterOpError::MoverDied { node: from, target }))
            }
        }
        (None, owner) => stalled.then(|| {
            Err(ClusterOpError::MoveStalled {
                node: owner.clone().unwrap_or_else(|| "none".into()),
                target,
                secs,
            })
        }),
    }
}

/// Every strategy that needs no owner, and those that do while `room` lasts (by
/// name); the names of those kept for want of room.
fn choose_for_room(owned: Vec<OwnedStrategy>, room: i64) -> (Vec<OwnedStrategy>, Vec<String>) {
    let mut room = room.max(0);
    let mut chosen = Vec::new();
    let mut no_room = Vec::new();
    for strategy in owned {
        if !strategy.wanted {
            chosen.push(strategy);
        } else if room > 0 {
            room -= 1;
            chosen.push(strategy);
        } else {
            no_room.push(strategy.name);
        }
    }
    (chosen, no_room)
}

/// The node a drain row names, if its parameters are valid.
fn drain_node(parameters: &serde_json::Value) -> Option<String> {
    match parse_command("drain", parameters, true) {
        Ok(CommandKind::Drain { node }) => Some(node),
        _ => None,
    }
}

/// Put a command back to `pending` for the strategy's new owner, and let this node
/// take it again should the strategy come back (see `Dispatched`).
pub(super) async fn requeue(shared: &Shared, dispatched: &Mutex<super::Dispatched>, id: Uuid) {
    dispatched.lock().expect("dispatched lock").forget(id);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match store::requeue_command(&shared.pool, id, &shared.node).await {
            Ok(true) => {
                tracing::info!(command_id = %id, "the strategy is another node's now: the command went back to pending for it");
                return;
            }
            Ok(false) => {
                tracing::info!(command_id = %id, "the strategy is another node's now, which has taken the command over (or finished it) already");
                return;
            }
            Err(err) => {
                tracing::warn!(command_id = %id, error = %err, "could not put the command back to pending; retrying");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Record a cluster operation's outcome on its row, unless another node has (drain
/// rows may be ended by their node, an undrain, or the sweep of a dead node's).
fn finish_cluster_row(shared: Arc<Shared>, id: Uuid, words: Result<(), String>) {
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match store::finish_if_processing(&shared.pool, id, &words).await {
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
    });
}
