//! One run's task, from its claim (or adoption) to its final state: prepare (check
//! the parameters, begin the COPY of its bars file), spawn its process at once (it
//! reads the file as the COPY writes it), follow its outbox and the COPY, and end it
//! — completed or error as the process said, cancelled or timed out by a kill, tried
//! once more when its process was lost without a final line, and prepared anew
//! (not counted as a try) when the COPY failed for the database.

use super::prepare::{prepare, PrepareError, Prepared};
use super::report::{Reporter, RunIdentity, Said};
use super::CancelError;
use crate::process::{Confine, ExecutorProcess, ExitInfo, RunSpawnSpec};
use crate::tasks::sleep_until;
use crate::Shared;
use engine_protocol::backoff::Backoff;
use engine_protocol::runs::{self as proto, RunEventType, RunState};
use engine_store::runs::{self as store, BarsCopy, CopyBarsError, RunEnd, RunRow};
use rustix::process::Signal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

/// How often the outbox is read while the process runs.
const OUTBOX_POLL: Duration = Duration::from_millis(25);
/// How long a process that ended without a result waits for the COPY's end, to
/// tell a COPY's failure from a lost process.
const COPY_END_WAIT: Duration = Duration::from_secs(2);

/// How a run's task begins.
pub enum Start {
    /// Claimed now (or found `starting` with no process): prepare, then spawn.
    Fresh,
    /// Its process still runs (found after a manager restart): follow its outbox
    /// from the start.
    Adopt(Box<ExecutorProcess>),
    /// Its process is gone (it ended while no manager watched): read what it wrote,
    /// then the retry rule.
    Dead,
}

/// Why a run is stopped from outside.
#[derive(Debug, Clone, Copy)]
pub enum StopReason {
    Cancel {
        command_id: Uuid,
    },
    /// Its strategy (and so its row) was deleted.
    Deleted,
}

/// A stop for a run's task; the reply (for a cancel) once the run is `cancelled`
/// and its process has exited.
pub struct StopRequest {
    pub reason: StopReason,
    pub reply: Option<oneshot::Sender<Result<(), CancelError>>>,
}

/// How following a run ended.
enum Followed {
    Exited(ExitInfo),
    Stopped(StopRequest),
    TimedOut,
    /// The manager is stopping: the run goes on, and the next manager adopts it.
    Detached,
    /// The COPY of its bars failed (the process, reading a file cut short, ends).
    BarsFailed(CopyBarsError),
}

pub struct RunTask {
    shared: Arc<Shared>,
    row: RunRow,
    runs_dir: PathBuf,
    stop_rx: mpsc::Receiver<StopRequest>,
    reporter: Reporter,
    deadline: Option<Instant>,
}

impl RunTask {
    pub fn new(shared: Arc<Shared>, row: RunRow, stop_rx: mpsc::Receiver<StopRequest>) -> RunTask {
        let runs_dir = shared.config.runs_dir();
        let deadline = row.timeout_s.map(|t| {
            let started = row.started_at.unwrap_or_else(chrono::Utc::now);
            let left = (started + chrono::TimeDelta::seconds(t.into()) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        RunTask {
            reporter: Reporter::new(RunIdentity::of(&row)),
            shared,
            row,
            runs_dir,
            stop_rx,
            deadline,
        }
    }

    /// Carry the run to its end (or until the manager stops).
    pub async fn run(mut self, mut start: Start) {
        loop {
            let (proc, copy) = match start {
                Start::Fresh => match self.prepare_and_spawn().await {
                    Some((proc, copy)) => (Some(proc), Some(copy)),
                    None => return,
                },
                Start::Adopt(proc) => {
                    if self.row.state == RunState::Starting {
                        self.adopted_while_starting(&proc).await;
                    }
                    (Some(*proc), None)
                }
                Start::Dead => (None, None),
            };
            let (followed, proc) = self.follow(proc, copy).await;
            if !self.conclude(followed, proc).await {
                return;
            }
            start = Start::Fresh;
        }
    }

    /// Prepare and spawn; `None` once the run has ended (or the manager stops).
    async fn prepare_and_spawn(&mut self) -> Option<(ExecutorProcess, BarsCopy)> {
        let Prepared {
            input,
            stored_config,
            copy,
        } = self.prepared().await?;
        let _ = tokio::fs::remove_file(&input.outbox_path).await;
        if let Some(orders) = &input.orders_path {
            // A retry starts the run over, and its orders with it (the same ids).
            let _ = tokio::fs::remove_file(orders).await;
        }
        if let Some(user) = &self.shared.executor_user {
            // Its process runs as that user: the bars file to read, the outbox to write.
            if let Err(err) = hand_over_files(&input, user).await {
                self.fail(format!(
                    "cannot give the run's files to --executor-user {}: {err}",
                    user.name
                ))
                .await;
                return None;
            }
        }
        let log_path = proto::run_log_path(&self.runs_dir, self.row.id);
        let spec = RunSpawnSpec {
            executor_path: &self.shared.executor_path,
            run_id: self.row.id,
            runs_dir: &self.runs_dir,
            log_path: &log_path,
            input: &input,
            confine: Confine {
                limiter: &self.shared.limiter,
                id: self.row.id,
                limits: self.limits(),
            },
            run_as: self.shared.executor_user.as_ref(),
        };
        let proc = match ExecutorProcess::spawn_run(&spec).await {
            Ok(proc) => proc,
            Err(err) => {
                self.fail(crate::error_chain(&err)).await;
                return None;
            }
        };
        if let Some(note) = &proc.unenforced {
            tracing::warn!(run_id = %self.row.id, "{note}");
        }
        let running = store::Running {
            pid: proc.pid,
            pid_start_ticks: proc.start_ticks,
            pid_boot_id: &self.shared.boot_id,
            config: &stored_config,
            total_items: input.symbols.len() as i64,
            attempt: self.row.attempt,
        };
        self.reporter.progress.total_items = Some(running.total_items);
        self.reporter.progress.completed_items = Some(0);
        self.reporter.progress.message = None;
        match with_retry(&self.shared, "mark the run running", || {
            store::mark_running(
                &self.shared.pool,
                self.row.id,
                &running,
                self.row.lease_epoch,
            )
        })
        .await
        {
            Some(true) => {
                self.reporter
                    .publish(&self.shared, RunEventType::Started, RunState::Running);
                Some((proc, copy))
            }
            Some(false) => {
                // Its row is gone (the strategy was deleted) or ended meanwhile.
                self.kill(proc).await;
                self.remove_files().await;
                crate::orders::record_run(&self.shared, self.row.id, &self.runs_dir);
                None
            }
            // The manager stops; the next one adopts the process.
            None => Some((proc, copy)),
        }
    }

    /// A process adopted from a run left `starting` (its manager died between the
    /// spawn and the `running` write): the row says `running` with the process, as
    /// if that write had happened, and `started` is published.
    async fn adopted_while_starting(&mut self, proc: &ExecutorProcess) {
        // The config the process was given: the same merge `prepare` makes.
        let config = match super::params::parse(self.row.mode, &self.row.parameters) {
            Ok(req) => {
                super::params::merged_config(&self.row.strategy_config, req.config_patch.as_ref())
            }
            Err(_) => self.row.strategy_config.clone(),
        };
        let marked = with_retry(&self.shared, "mark the adopted run running", || {
            store::mark_adopted_running(
                &self.shared.pool,
                self.row.id,
                proc.pid,
                proc.start_ticks,
                &self.shared.boot_id,
                &config,
                self.row.lease_epoch,
            )
        })
        .await;
        if marked == Some(true) {
            self.row.state = RunState::Running;
            self.reporter
                .publish(&self.shared, RunEventType::Started, RunState::Running);
        }
    }

    /// The strategy's limits, which the run takes.
    fn limits(&self) -> engine_protocol::limits::ResourceLimits {
        run_limits(&self.row)
    }

    /// The run's input, the COPY of its bars file begun; `None` once the run has
    /// ended (its parameters were wrong, it was stopped, it timed out) or the
    /// manager stops.
    async fn prepared(&mut self) -> Option<Prepared> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let shared = self.shared.clone();
            let attempt = prepare(&shared, &self.row, &self.runs_dir);
            let outcome = tokio::select! {
                _ = shared.cancel.cancelled() => return None,
                Some(req) = self.stop_rx.recv() => Err(Followed::Stopped(req)),
                _ = sleep_until(self.deadline) => Err(Followed::TimedOut),
                prepared = attempt => Ok(prepared),
            };
            match outcome {
                Ok(Ok(prepared)) => return Some(prepared),
                Ok(Err(PrepareError::Database(err))) => {
                    tracing::warn!(run_id = %self.row.id, error = %err, "cannot prepare the run yet; trying again");
                    if !pause(&shared, &mut backoff).await {
                        return None;
                    }
                }
                Ok(Err(err)) => {
                    self.fail(crate::error_chain(&err)).await;
                    return None;
                }
                Err(stopped) => {
                    self.conclude(stopped, None).await;
                    return None;
                }
            }
        }
    }

    /// Read the outbox every [`OUTBOX_POLL`] until the process exits (then to its
    /// end), a stop comes, the time limit passes, the COPY of its bars fails or the
    /// manager stops.
    async fn follow(
        &mut self,
        mut proc: Option<ExecutorProcess>,
        mut copy: Option<BarsCopy>,
    ) -> (Followed, Option<ExecutorProcess>) {
        let shared = self.shared.clone();
        let mut outbox =
            super::outbox::Outbox::new(&proto::outbox_path(&self.runs_dir, self.row.id));
        let mut tick = tokio::time::interval(OUTBOX_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let followed = loop {
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => break Followed::Detached,
                Some(req) = self.stop_rx.recv() => break Followed::Stopped(req),
                _ = sleep_until(self.deadline) => break Followed::TimedOut,
                copied = bars_copied(&mut copy) => {
                    copy = None;
                    if let Err(err) = copied {
                        break Followed::BarsFailed(err);
                    }
                }
                exit = wait(&mut proc) => {
                    self.read(&mut outbox).await;
                    // A process that read a file cut short ends without a result:
                    // the COPY's failure is the reason, if it failed.
                    if self.reporter.said.is_none() {
                        if let Some(mut copy) = copy.take() {
                            if let Ok(Err(err)) = tokio::time::timeout(COPY_END_WAIT, copy.finished()).await {
                                break Followed::BarsFailed(err);
                            }
                        }
                    }
                    break Followed::Exited(exit);
                }
                _ = tick.tick() => {
                    self.read(&mut outbox).await;
                    self.reporter.flush_due(&shared).await;
                    if self.reporter.row_gone {
                        break Followed::Stopped(StopRequest { reason: StopReason::Deleted, reply: None });
                    }
                }
            }
        };
        (followed, proc)
    }

    async fn read(&mut self, outbox: &mut super::outbox::Outbox) {
        match outbox.read_new().await {
            Ok(lines) => {
                for line in lines {
                    match line {
                        Ok(line) => self.reporter.take(&self.shared, line),
                        Err(bad) => {
                            tracing::warn!(run_id = %self.row.id, line = %bad.line, error = %bad.error, "not a run output line; skipped")
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(run_id = %self.row.id, error = %err, "cannot read the run's outbox")
            }
        }
    }

    /// End the run as `followed` says; `true` when it is to be tried again.
    async fn conclude(&mut self, followed: Followed, proc: Option<ExecutorProcess>) -> bool {
        match followed {
            Followed::Detached => false,
            Followed::Stopped(req) => {
                if let Some(proc) = proc {
                    self.kill(proc).await;
                }
                self.stopped(req).await;
                false
            }
            Followed::TimedOut => {
                if let Some(proc) = proc {
                    self.kill(proc).await;
                }
                let limit = self.row.timeout_s.unwrap_or_default();
                let error = format!("the run took longer than its timeout_s of {limit} s and was stopped; give it a larger timeout_s (at most 86400) or less work");
                self.end(RunEnd::Failed {
                    state: RunState::TimedOut,
                    error,
                })
                .await;
                false
            }
            Followed::Exited(exit) => self.exited(exit, proc).await,
            Followed::BarsFailed(err) => {
                if let Some(proc) = proc {
                    self.kill(proc).await;
                }
                self.bars_failed(err).await
            }
        }
    }

    /// The COPY of the run's bars failed: for the database (away, or the
    /// connection cut), the run is prepared anew once it answers, without counting
    /// a try; for the file, the run ends `error`. `true` when it is to be prepared
    /// again.
    async fn bars_failed(&mut self, err: CopyBarsError) -> bool {
        let why = crate::error_chain(&err);
        if !matches!(err, CopyBarsError::Database(_)) {
            self.fail(why).await;
            return false;
        }
        tracing::warn!(run_id = %self.row.id, error = %why, "the COPY of the run's bars failed; preparing it again");
        let message = format!("the COPY of its bars failed ({why}); preparing it again");
        let attempt = self.row.attempt;
        let marked = with_retry(&self.shared, "mark the run for its new start", || {
            store::mark_retry(
                &self.shared.pool,
                self.row.id,
                attempt,
                &message,
                self.row.lease_epoch,
            )
        })
        .await;
        if marked != Some(true) {
            return false;
        }
        self.reporter = Reporter::new(RunIdentity::of(&self.row));
        true
    }

    async fn stopped(&mut self, req: StopRequest) {
        let StopReason::Cancel { command_id } = req.reason else {
            tracing::info!(run_id = %self.row.id, "the run's strategy was deleted; its process is stopped");
            self.remove_files().await;
            crate::orders::record_run(&self.shared, self.row.id, &self.runs_dir);
            return;
        };
        let error = format!("cancelled by command {command_id}");
        let ended = self
            .end(RunEnd::Failed {
                state: RunState::Cancelled,
                error,
            })
            .await;
        let reply = match ended {
            Some(true) => Ok(()),
            Some(false) => {
                let state = with_retry(&self.shared, "read the run's state", || {
                    store::run_state(&self.shared.pool, self.row.id)
                })
                .await;
                match state {
                    Some(Some((_, state))) => Err(CancelError::Finished {
                        run_id: self.row.id,
                        state,
                    }),
                    Some(None) => Err(CancelError::UnknownRun {
                        run_id: self.row.id,
                    }),
                    None => return, // the manager stops: the command stays `processing`
                }
            }
            None => return, // the manager stops: the command stays `processing`
        };
        if let Some(tx) = req.reply {
            let _ = tx.send(reply);
        }
    }

    /// The process exited: its result or error, else the retry rule.
    async fn exited(&mut self, exit: ExitInfo, proc: Option<ExecutorProcess>) -> bool {
        match self.reporter.said.take() {
            Some(Said::Result(result)) => {
                let p = &mut self.reporter.progress;
                p.progress_percent = 100.0;
                p.completed_items = p.total_items.or(p.completed_items);
                p.eta_s = Some(0.0);
                p.current_item = None;
                self.end(RunEnd::Completed { result }).await;
                false
            }
            Some(Said::Error(error)) => {
                self.end(RunEnd::Failed {
                    state: RunState::Error,
                    error,
                })
                .await;
                false
            }
            None => {
                let log = proto::run_log_path(&self.runs_dir, self.row.id);
                let tail = match &proc {
                    Some(proc) => proc.log_tail(5),
                    None => crate::process::log_tail(&log, 0, 5),
                };
                let how = match proc {
                    Some(_) => exit.to_string(),
                    None => "it ended while no manager watched".to_string(),
                };
                self.lost(&how, &tail).await
            }
        }
    }

    /// The process ended without a final line: tried once more (`attempt` 1), then
    /// the run ends `error`.
    async fn lost(&mut self, how: &str, tail: &str) -> bool {
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; the end of its log: {tail}")
        };
        if self.row.attempt == 0 {
            let why = format!("the run's process ended without a result ({how}); trying once more");
            tracing::warn!(run_id = %self.row.id, "{why}{tail}");
            let marked = with_retry(&self.shared, "mark the run for its retry", || {
                store::mark_retry(
                    &self.shared.pool,
                    self.row.id,
                    1,
                    &why,
                    self.row.lease_epoch,
                )
            })
            .await;
            if marked == Some(true) {
                self.row.attempt = 1;
                self.reporter = Reporter::new(RunIdentity::of(&self.row));
                return true;
            }
            return false;
        }
        let error = format!("the run's process ended without a result ({how}) on its second attempt; it is not tried again{tail}");
        self.end(RunEnd::Failed {
            state: RunState::Error,
            error,
        })
        .await;
        false
    }

    /// Write the items that wait and the final row, publish the final event and
    /// remove the bars and outbox (the log stays). `Some(false)`: the run had ended
    /// already or is gone; `None`: the manager stops before it could be written.
    async fn end(&mut self, end: RunEnd) -> Option<bool> {
        let shared = self.shared.clone();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(err) = self.reporter.write_items(&shared).await {
            tracing::warn!(run_id = %self.row.id, error = %err, "cannot write the run's items; trying again");
            if !pause(&shared, &mut backoff).await {
                return None;
            }
        }
        let (state, event) = match &end {
            RunEnd::Completed { .. } => (RunState::Completed, RunEventType::Completed),
            RunEnd::Failed { state, error } => {
                self.reporter.progress.message = Some(error.clone());
                let event = match state {
                    RunState::Cancelled => RunEventType::Cancelled,
                    RunState::TimedOut => RunEventType::TimedOut,
                    _ => RunEventType::Error,
                };
                (*state, event)
            }
        };
        let progress = self.reporter.progress.clone();
        let written = with_retry(&shared, "finish the run", || {
            store::finish_run(
                &shared.pool,
                self.row.id,
                &end,
                &progress,
                self.row.lease_epoch,
            )
        })
        .await?;
        if written {
            tracing::info!(run_id = %self.row.id, state = %state, "run ended");
            self.reporter.publish(&shared, event, state);
        }
        self.remove_files().await;
        // A backtest's fills (so far, for a run that did not complete: they were
        // placed), recorded off the run's path.
        crate::orders::record_run(&shared, self.row.id, &self.runs_dir);
        Some(written)
    }

    /// End the run `error` with `error`.
    async fn fail(&mut self, error: String) {
        let state = RunState::Error;
        self.end(RunEnd::Failed { state, error }).await;
    }

    /// SIGKILL the run's process group and wait for the exit.
    async fn kill(&self, mut proc: ExecutorProcess) {
        proc.signal(Signal::KILL);
        proc.wait().await;
    }

    async fn remove_files(&self) {
        let _ = tokio::fs::remove_file(proto::bars_path(&self.runs_dir, self.row.id)).await;
        for part in 1..proto::MAX_BARS_PARTS {
            let path = proto::bars_part_path(&self.runs_dir, self.row.id, part);
            let _ = tokio::fs::remove_file(path).await;
        }
        let _ = tokio::fs::remove_file(proto::outbox_path(&self.runs_dir, self.row.id)).await;
        // The orders file stays for `crate::orders::record_run`, which removes it.
    }
}

/// The end of the COPY of the run's bars; never, when there is none (any more).
async fn bars_copied(copy: &mut Option<BarsCopy>) -> Result<u64, CopyBarsError> {
    match copy {
        Some(copy) => copy.finished().await,
        None => std::future::pending().await,
    }
}

/// A run's limits: its strategy's.
pub(super) fn run_limits(row: &RunRow) -> engine_protocol::limits::ResourceLimits {
    crate::limits::stored(&row.strategy_limits)
}

/// The process's exit; at once (status unknown) when there is none.
async fn wait(proc: &mut Option<ExecutorProcess>) -> ExitInfo {
    match proc {
        Some(proc) => proc.wait().await,
        None => ExitInfo::Unknown,
    }
}

/// `write` until it succeeds (the database may be away), or `None` once the manager
/// stops.
async fn with_retry<T, F, Fut>(shared: &Shared, what: &str, mut write: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match write().await {
            Ok(v) => return Some(v),
            Err(err) => {
                tracing::warn!(error = %err, "cannot {what}; trying again");
                if !pause(shared, &mut backoff).await {
                    return None;
                }
            }
        }
    }
}

/// Sleep the backoff's next delay; `false` if the manager stops first.
pub(super) async fn pause(shared: &Shared, backoff: &mut Backoff) -> bool {
    tokio::select! {
        _ = shared.cancel.cancelled() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

/// The run's bars files (being written by the COPY), a new, empty outbox (and orders
/// file, for a backtest), made
/// the `--executor-user`'s (see [`crate::executor_user::hand_over`]).
async fn hand_over_files(
    input: &proto::RunInput,
    user: &engine_protocol::executor_env::RunAs,
) -> std::io::Result<()> {
    let mut bars = vec![input.bars_path.clone()];
    bars.extend(input.more_bars_paths.iter().cloned());
    let (outbox, user) = (input.outbox_path.clone(), user.clone());
    let orders = input.orders_path.clone();
    crate::tasks::blocking(move || {
        std::fs::File::create_new(&outbox)?;
        crate::executor_user::hand_over(&outbox, &user)?;
        if let Some(orders) = &orders {
            std::fs::File::create_new(orders)?;
            crate::executor_user::hand_over(orders, &user)?;
        }
        bars.iter()
            .try_for_each(|path| crate::executor_user::hand_over(path, &user))
    })
    .await
}
