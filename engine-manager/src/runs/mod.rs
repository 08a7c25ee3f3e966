//! Runs (CONTRACT.md §4): backtests, screeners and alert scans, each its own
//! process, queued and supervised here.
//!
//! # Layout
//! - this module: the [`RunQueue`] task — adopts the runs a previous manager left
//!   running, claims queued runs (NOTIFY on `strategy_runs`, with the poll as the
//!   safety net) up to `--max-concurrent-runs`, starts one run task per run, frees
//!   the slot and claims the next the moment one ends, carries out `cancel`
//!   ([`RunsHandle::cancel`], from the intake, never through a strategy's
//!   supervisor), and stops the runs of a deleted strategy.
//! - [`run`]: one run's task: prepare, spawn, follow, end (and the one retry).
//! - [`params`]: the parameters' rules, pure. [`prepare`]: the parameters resolved
//!   against the database, and the bars file.
//! - [`outbox`]: reading the lines a run's process appends. [`report`]: what they
//!   become (row, items, events, alerts), throttled.
//!
//! Architecture invariant: a run's process never opens a database connection; the
//! manager writes everything about a run, from what its outbox says.

pub mod outbox;
pub mod params;
pub mod prepare;
pub mod report;
pub mod run;

use crate::process::{self, ExecutorProcess};
use crate::Shared;
use engine_protocol::backoff::Backoff;
use engine_protocol::runs::{self as proto, RunEvent, RunEventMetrics, RunEventType, RunState};
use engine_store::runs::{self as store, RunRow};
use run::{RunTask, Start, StopReason, StopRequest};
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Why a `cancel` command fails; the words go to the command's `error`.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("unknown run {run_id}: no row in strategy_runs has it")]
    UnknownRun { run_id: Uuid },
    #[error("run {run_id} belongs to strategy {owner}, not to this command's strategy; send the cancel with strategy_id {owner}")]
    OtherStrategy { run_id: Uuid, owner: Uuid },
    #[error("run {run_id} is already {state}; only a queued or running run can be cancelled")]
    Finished { run_id: Uuid, state: RunState },
    #[error("run {run_id} is {state} but no run task of this manager holds it; it is adopted at the manager's next start")]
    NotHeld { run_id: Uuid, state: RunState },
    #[error("run {run_id} did not take the cancel (its task was busy with other stops); send the cancel again")]
    Busy { run_id: Uuid },
    #[error("cannot read or write the run")]
    Database(#[from] sqlx::Error),
    #[error("{}", Several(.0))]
    Several(Vec<CancelError>),
}

struct Several<'a>(&'a [CancelError]);

impl std::fmt::Display for Several<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&crate::error_chain(err))?;
        }
        Ok(())
    }
}

/// A `cancel` command for the runs.
#[derive(Debug)]
pub struct CancelRequest {
    pub command_id: Uuid,
    pub strategy_id: Uuid,
    /// One run, or (`None`) every queued and running run of the strategy.
    pub run_id: Option<Uuid>,
    /// Left `processing` by a previous manager: a run already `cancelled` counts as
    /// done.
    pub recovered: bool,
}

type CancelReply = oneshot::Sender<Result<(), CancelError>>;

/// The intake's handle on the runs.
#[derive(Clone)]
pub struct RunsHandle {
    tx: mpsc::Sender<(CancelRequest, CancelReply)>,
}

/// The [`RunQueue`]'s side of [`RunsHandle`].
pub struct RunsInbox(mpsc::Receiver<(CancelRequest, CancelReply)>);

pub fn channel() -> (RunsHandle, RunsInbox) {
    let (tx, rx) = mpsc::channel(256);
    (RunsHandle { tx }, RunsInbox(rx))
}

impl RunsHandle {
    /// Hand a cancel to the runs; the reply comes once every run it names is
    /// `cancelled` and its process has exited (dropped when the manager stops).
    pub async fn cancel(
        &self,
        request: CancelRequest,
    ) -> oneshot::Receiver<Result<(), CancelError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send((request, reply)).await;
        rx
    }
}

/// A run this manager holds (it counts against `--max-concurrent-runs`).
struct ActiveRun {
    strategy_id: Uuid,
    stop: mpsc::Sender<StopRequest>,
}

/// What a cancel waits for.
enum Waiting {
    Done,
    Run(Uuid, oneshot::Receiver<Result<(), CancelError>>),
}

/// The queue of runs; see the module documentation.
pub struct RunQueue {
    shared: Arc<Shared>,
    inbox: RunsInbox,
    active: HashMap<Uuid, ActiveRun>,
    ended_tx: mpsc::UnboundedSender<Uuid>,
    ended_rx: mpsc::UnboundedReceiver<Uuid>,
}

/// How many stops (cancels, a deletion) may wait for one run's task.
const STOPS: usize = 64;

/// The NOTIFY channels the queue listens on.
const RUNS_CHANNEL: &str = "strategy_runs";
const DELETED_CHANNEL: &str = "strategy_configs_deleted";

impl RunQueue {
    pub fn new(shared: Arc<Shared>, inbox: RunsInbox) -> RunQueue {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        RunQueue {
            shared,
            inbox,
            active: HashMap::new(),
            ended_tx,
            ended_rx,
        }
    }

    /// Adopt what runs, then serve the queue until the manager stops.
    pub async fn run(mut self) {
        let shared = self.shared.clone();
        let runs_dir = shared.config.runs_dir();
        if let Err(err) = tokio::fs::create_dir_all(&runs_dir).await {
            tracing::error!(dir = %runs_dir.display(), error = %err, "cannot create the runs directory; runs will fail until it exists");
        }
        if !self.adopt_until_ready().await {
            return shared.cancel.cancelled().await;
        }
        let mut listener = None;
        let mut claim_due = true;
        let mut db_down = false;
        let mut checked = tokio::time::Instant::now();
        loop {
            if listener.is_none() {
                listener = listen(&shared).await;
            }
            if claim_due {
                claim_due = false;
                match self.claim().await {
                    Ok(()) if db_down => {
                        tracing::info!("database is back; claiming runs again");
                        db_down = false;
                    }
                    Ok(()) => {}
                    Err(err) => {
                        if !db_down {
                            tracing::error!(error = %err, "cannot claim runs; retrying every poll interval");
                        }
                        db_down = true;
                        listener = None;
                    }
                }
            }
            if checked.elapsed() >= shared.config.poll_interval {
                checked = tokio::time::Instant::now();
                self.check_deleted().await;
            }
            tokio::select! {
                _ = shared.cancel.cancelled() => break,
                Some((request, reply)) = self.inbox.0.recv() => self.cancel(request, reply).await,
                Some(id) = self.ended_rx.recv() => {
                    self.active.remove(&id);
                    claim_due = true;
                }
                notified = recv(&mut listener) => match notified {
                    Ok((runs, deleted)) => {
                        claim_due |= runs;
                        self.stop_strategies(&deleted);
                    }
                    Err(_) => listener = None,
                },
                _ = tokio::time::sleep(shared.config.poll_interval) => claim_due = true,
            }
        }
    }

    /// Claim queued runs into the free slots and start their tasks.
    async fn claim(&mut self) -> Result<(), sqlx::Error> {
        let free =
            (self.shared.config.max_concurrent_runs as usize).saturating_sub(self.active.len());
        if free == 0 {
            return Ok(());
        }
        let rows = store::claim_queued(
            &self.shared.pool,
            free as i64,
            &self.shared.node,
            &self.shared.scope,
        )
        .await?;
        for row in rows {
            tracing::info!(run_id = %row.id, strategy = %row.name, mode = %row.mode, "run claimed");
            self.launch(row, Start::Fresh);
        }
        Ok(())
    }

    fn launch(&mut self, row: RunRow, start: Start) {
        let (stop, stop_rx) = mpsc::channel(STOPS);
        let id = row.id;
        self.active.insert(
            id,
            ActiveRun {
                strategy_id: row.strategy_id,
                stop,
            },
        );
        let task = RunTask::new(self.shared.clone(), row, stop_rx);
        let ended = self.ended_tx.clone();
        self.shared
            .tracker
            .spawn_named(format!("run {id}"), async move {
                task.run(start).await;
                let _ = ended.send(id);
            });
    }

    /// Take over the runs a previous manager left `starting` or `running`, waiting
    /// for the database if it is away; `false` if the manager stops first.
    async fn adopt_until_ready(&mut self) -> bool {
        loop {
            match store::active_runs(&self.shared.pool, &self.shared.scope).await {
                Ok(rows) => {
                    self.adopt(rows).await;
                    return true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the active runs yet; retrying every second");
                    tokio::select! {
                        _ = self.shared.cancel.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Each active run: its live process adopted (followed from its outbox's start),
    /// or, with none, read from its outbox (then the retry rule); one `starting` that
    /// never wrote an outbox is prepared again. Run processes of no active run are
    /// killed.
    async fn adopt(&mut self, rows: Vec<RunRow>) {
        let runs_dir = self.shared.config.runs_dir();
        let dir = runs_dir.clone();
        let mut found = crate::tasks::blocking(move || process::scan_runs(&dir)).await;
        for row in rows {
            let mut candidates = found.remove(&row.id).unwrap_or_default();
            if let (Some(pid), Some(ticks), Some(boot)) =
                (row.pid, row.pid_start_ticks, row.pid_boot_id.as_deref())
            {
                let recorded = (pid as u32, ticks as u64);
                if boot == self.shared.boot_id && !candidates.contains(&recorded) {
                    candidates.insert(0, recorded);
                }
            }
            let log = proto::run_log_path(&runs_dir, row.id);
            let mut live = None;
            for (pid, ticks) in candidates {
                if live.is_none() {
                    let group = self.shared.limiter.existing(&row.id.to_string());
                    let limits = run::run_limits(&row);
                    live = ExecutorProcess::adopt(pid, ticks, log.clone(), group, limits);
                    if live.is_some() {
                        continue;
                    }
                }
                kill_process(pid, ticks, "a second process of one run");
            }
            let outbox = proto::outbox_path(&runs_dir, row.id);
            let start = match live {
                Some(proc) => Start::Adopt(Box::new(proc)),
                None if row.state == RunState::Starting && !outbox.exists() => Start::Fresh,
                None => Start::Dead,
            };
            tracing::info!(run_id = %row.id, state = %row.state, adopted = matches!(start, Start::Adopt(_)), "taking over a run the previous manager left");
            self.launch(row, start);
        }
        for (_, strays) in found {
            for (pid, ticks) in strays {
                kill_process(pid, ticks, "a run process of no active run");
            }
        }
    }

    /// Stop the runs of deleted strategies (their rows went with them).
    fn stop_strategies(&self, deleted: &[Uuid]) {
        for (id, run) in &self.active {
            if deleted.contains(&run.strategy_id) {
                tracing::info!(run_id = %id, "the run's strategy was deleted; stopping the run");
                let _ = run.stop.try_send(StopRequest {
                    reason: StopReason::Deleted,
                    reply: None,
                });
            }
        }
    }

    /// The safety net under the deletion notification.
    async fn check_deleted(&mut self) {
        self.take_over().await;
        let ids: Vec<Uuid> = self.active.keys().copied().collect();
        if let Ok(gone) = store::deleted_runs(&self.shared.pool, &ids).await {
            for id in gone {
                if let Some(run) = self.active.get(&id) {
                    let _ = run.stop.try_send(StopRequest {
                        reason: StopReason::Deleted,
                        reply: None,
                    });
                }
            }
        }
    }

    /// A cluster node: the active runs a failover gave this node (their strategy's
    /// node died while they ran), taken over like a manager's start-up adopts: no
    /// process of theirs is here, so each is started again once (`attempt` 1), or ends
    /// `error` if it was already its second try.
    async fn take_over(&mut self) {
        if !self.shared.fence.is_cluster() {
            return;
        }
        let Ok(rows) = store::active_runs(&self.shared.pool, &self.shared.scope).await else {
            return;
        };
        let new: Vec<RunRow> = rows
            .into_iter()
            .filter(|r| !self.active.contains_key(&r.id))
            .collect();
        if !new.is_empty() {
            tracing::info!(
                runs = new.len(),
                "taking over the runs of a dead node's strategies"
            );
            self.adopt(new).await;
        }
    }

    async fn cancel(&mut self, mut request: CancelRequest, reply: CancelReply) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let waits = loop {
            let waits = match request.run_id {
                Some(run_id) => self.cancel_one(&request, run_id).await.map(|w| vec![w]),
                None => self.cancel_all(&request).await,
            };
            match waits {
                Ok(waits) => break waits,
                // The database away is waited out, not the command's failure; what
                // the try before did counts (a run it cancelled is done).
                Err(CancelError::Database(err)) => {
                    tracing::warn!(command_id = %request.command_id, error = %err, "cannot read or write the runs to cancel; trying again");
                    request.recovered = true;
                    if !run::pause(&self.shared, &mut backoff).await {
                        return; // the manager stops: the next one carries the command out
                    }
                }
                Err(err) => {
                    let _ = reply.send(Err(err));
                    return;
                }
            }
        };
        let shared = self.shared.clone();
        self.shared.tracker.spawn(async move {
            let mut failures = Vec::new();
            for wait in waits {
                let Waiting::Run(run_id, rx) = wait else {
                    continue;
                };
                let outcome = match rx.await {
                    Ok(outcome) => outcome,
                    // The run's task ended without taking the stop: it finished first,
                    // or the manager stops (then the row says `running`: no reply).
                    Err(_) => match store::run_state(&shared.pool, run_id).await {
                        Ok(Some((_, RunState::Cancelled))) => Ok(()),
                        Ok(Some((_, state))) if state.is_final() => {
                            Err(CancelError::Finished { run_id, state })
                        }
                        Ok(None) => Err(CancelError::UnknownRun { run_id }),
                        Ok(Some(_)) if !shared.cancel.is_cancelled() => {
                            Err(CancelError::Busy { run_id })
                        }
                        _ => return,
                    },
                };
                failures.extend(outcome.err());
            }
            let _ = reply.send(match failures.len() {
                0 => Ok(()),
                1 => Err(failures.remove(0)),
                _ => Err(CancelError::Several(failures)),
            });
        });
    }

    async fn cancel_one(
        &mut self,
        request: &CancelRequest,
        run_id: Uuid,
    ) -> Result<Waiting, CancelError> {
        let Some((owner, state)) = store::run_state(&self.shared.pool, run_id).await? else {
            return Err(CancelError::UnknownRun { run_id });
        };
        if owner != request.strategy_id {
            return Err(CancelError::OtherStrategy { run_id, owner });
        }
        if let Some(run) = self.active.get(&run_id) {
            let (tx, rx) = oneshot::channel();
            let stop = StopRequest {
                reason: StopReason::Cancel {
                    command_id: request.command_id,
                },
                reply: Some(tx),
            };
            // Never waits: a run task busy ending (its final write retried through a
            // database outage) must not hold up the queue. A stop it cannot take is
            // dropped, and the reply then comes from the run's row.
            let _ = run.stop.try_send(stop);
            return Ok(Waiting::Run(run_id, rx));
        }
        match state {
            RunState::Queued => self.cancel_queued(request, run_id).await,
            RunState::Cancelled if request.recovered => Ok(Waiting::Done),
            state if state.is_final() => Err(CancelError::Finished { run_id, state }),
            state => Err(CancelError::NotHeld { run_id, state }),
        }
    }

    async fn cancel_queued(
        &self,
        request: &CancelRequest,
        run_id: Uuid,
    ) -> Result<Waiting, CancelError> {
        let error = format!("cancelled by command {} while queued", request.command_id);
        match store::cancel_queued(&self.shared.pool, run_id, &error).await? {
            Some(row) => {
                publish_final(&self.shared, &row, RunState::Cancelled, &error);
                Ok(Waiting::Done)
            }
            None => match store::run_state(&self.shared.pool, run_id).await? {
                Some((_, state)) => Err(CancelError::Finished { run_id, state }),
                None => Err(CancelError::UnknownRun { run_id }),
            },
        }
    }

    async fn cancel_all(&mut self, request: &CancelRequest) -> Result<Vec<Waiting>, CancelError> {
        let runs = store::unfinished_runs_of(&self.shared.pool, request.strategy_id).await?;
        let mut waits = Vec::with_capacity(runs.len());
        for (run_id, _) in runs {
            match self.cancel_one(request, run_id).await {
                Ok(wait) => waits.push(wait),
                // It ended between the read and the cancel: nothing to do.
                Err(CancelError::Finished { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(waits)
    }
}

/// The final event of a run that never started (cancelled while queued).
fn publish_final(shared: &Shared, row: &store::QueuedRun, state: RunState, message: &str) {
    let event = RunEvent {
        event_type: RunEventType::Cancelled,
        run_id: row.id,
        strategy_id: row.strategy_id,
        name: row.name.clone(),
        timestamp: chrono::Utc::now(),
        mode: row.mode,
        state,
        stage: None,
        progress_percent: 0.0,
        current_item: None,
        total_items: None,
        completed_items: None,
        message: Some(message.to_string()),
        metrics: RunEventMetrics::default(),
    };
    shared
        .publisher
        .publish(shared.channels.run(row.id), &event);
}

/// SIGKILL a run process that must not run (checked to be the same process first).
fn kill_process(pid: u32, ticks: u64, why: &str) {
    if !engine_protocol::procfs::is_same_process(pid, ticks) {
        return;
    }
    tracing::warn!(pid, "killing {why}");
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

async fn listen(shared: &Shared) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(&shared.pool).await.ok()?;
    listener
        .listen_all([RUNS_CHANNEL, DELETED_CHANNEL])
        .await
        .ok()?;
    Some(listener)
}

/// Wait for notifications: whether runs were inserted, and the strategies deleted.
async fn recv(listener: &mut Option<PgListener>) -> Result<(bool, Vec<Uuid>), sqlx::Error> {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    let mut runs = false;
    let mut deleted = Vec::new();
    let mut note = |n: sqlx::postgres::PgNotification| {
        if n.channel() == DELETED_CHANNEL {
            deleted.extend(n.payload().parse::<Uuid>().ok());
        } else {
            runs = true;
        }
    };
    note(l.recv().await?);
    while let Some(n) = l.next_buffered() {
        note(n);
    }
    Ok((runs, deleted))
}
