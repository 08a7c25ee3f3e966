//! One [`StrategySupervisor`] task per strategy: it owns that strategy's executor
//! process and control link, applies the strategy's commands one at a time in order,
//! notices an exit the moment it happens, restarts crashes with backoff, and records
//! every transition (database row, `strategy:status:{id}`, `strategy:state:{id}`).
//!
//! # Layout
//! - [`machine`]: the decisions, without I/O — `(state, event) → (state, effects)`.
//! - this module: the shell — it turns what happens (an exit, a frame, a command, a
//!   timer) into [`machine::Event`]s and performs the [`machine::Effect`]s.
//! - `ops`: the effects that wait (spawn and wait for `running`, stop with grace,
//!   ask the executor and wait for its ack, update a config).
//! - `record`: what a transition writes, and the [`record::Journal`] that keeps
//!   writes through a database outage.
//! - `broker`: the broker state the executor reports, kept for the next executor.
//! - `hand_over`: a move's check of its target, and the release of a strategy to
//!   another node (a move, a drain), cluster only.
//! - [`error`]: the typed failures, rendered to words only where they are written.

mod broker;
pub mod error;
mod hand_over;
pub mod machine;
mod ops;
mod record;

pub use error::CommandError;

use crate::config::RestartPolicy;
use crate::executions::task::{ExecRequest, Message as ExecMessage};
use crate::link::ControlLink;
use crate::process::{ExecutorProcess, ExitInfo};
use crate::tasks::sleep_until;
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::control::{ExecutorMessage, ManagerMessage};
use engine_protocol::secrets::Scrub;
use engine_protocol::Status;
use engine_store::commands::CommandKind;
use engine_store::manager::{self as db, ObservedState};
use engine_store::DesiredState;
use machine::{Ctx, Effect, Event, Machine};
use record::Journal;
use serde_json::Value;
use std::collections::VecDeque;
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// How a command ended for one strategy.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// A global command that did not apply to this strategy's state.
    NotApplicable,
    Failed(CommandError),
    /// Not applied: the strategy is another node's now (handed over, or lost to a
    /// failover). The command goes back to `pending` for its new owner.
    Elsewhere,
}

/// A command for one supervisor.
#[derive(Debug)]
pub struct SupervisorCommand {
    pub command_id: Uuid,
    pub kind: CommandKind,
    pub global: bool,
    /// Left `processing` by a previous manager and being finished now.
    pub recovered_from: Option<DateTime<Utc>>,
    /// Recovered, and this strategy has provably been through it already
    /// ([`engine_store::manager::superseded_recovered`]): not applied again.
    pub superseded: bool,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the supervisor does first.
pub enum Initial {
    /// Nothing runs and nothing should.
    Idle,
    /// Take over this live executor, then make it match `DesiredState`.
    Adopt(Box<ExecutorProcess>, DesiredState),
    /// Start an executor (then pause it if `Paused`).
    Start(DesiredState),
}

/// The public face of one running supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    /// Boxed commands: a channel allocates a block of 32 slots when it is made, and
    /// boxes keep that block small (one inbox per strategy).
    pub tx: mpsc::Sender<Box<SupervisorCommand>>,
    /// Fired when the strategy's row is deleted.
    removed: CancellationToken,
    /// Set before `removed` fires when the strategy is another node's now.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl SupervisorHandle {
    /// The strategy is another node's now (cluster only): the supervisor SIGKILLs an
    /// executor that is somehow still there (its lease ran out, so it must not trade,
    /// not even in a graceful stop), writes nothing, and ends.
    pub fn lose(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Release);
        self.removed.cancel();
    }

    /// The strategy's row was deleted: the supervisor stops an executor that still
    /// runs (the normal graceful stop), forgets the strategy (the live map behind
    /// `/health` and `/metrics`, its latest metrics, its `strategy:state:{id}` hash)
    /// and ends. Commands still queued for it end as not applicable (its own rows
    /// went with it; a global one is then finished for the other strategies).
    pub fn remove(&self) {
        self.removed.cancel();
    }
}

/// The state one strategy's supervisor publishes for the health sampler and for
/// global commands.
#[derive(Debug, Clone)]
pub struct LiveEntry {
    pub name: String,
    pub status: Status,
    pub pid: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub restart_count: i32,
    /// Its resource limits (health shows `memory_limit_mb`, `cpu_limit_percent`).
    pub limits: engine_protocol::limits::ResourceLimits,
}

pub struct StrategySupervisor {
    shared: Arc<Shared>,
    id: Uuid,
    name: String,
    strategy_type: String,
    config: Value,
    /// The strategy has an `execution_interval_s` (as of the last reload).
    interval: bool,
    /// `strategy_configs.limits` as stored (checked by the schema).
    limits: Value,
    /// `strategy_configs.lease_epoch` as this supervisor knows it: in a cluster, the
    /// epoch of this node's lease on the strategy (CONTRACT.md §7).
    lease_epoch: i64,
    policy: RestartPolicy,
    /// The decisions: status, desired state, crash count, backoff, what is in flight.
    machine: Machine,
    observed: ObservedState,
    proc: Option<ExecutorProcess>,
    link: Option<ControlLink>,
    link_rx: mpsc::Receiver<Box<ControlLink>>,
    inbox: mpsc::Receiver<Box<SupervisorCommand>>,
    /// The reply channel of the command being applied.
    replying: Option<oneshot::Sender<Outcome>>,
    journal: Journal,
    /// The broker state the executor last reported, for the next executor.
    broker: broker::BrokerState,
    /// Cancelled when the strategy's row is deleted.
    removed: CancellationToken,
    /// The strategy is another node's now ([`SupervisorHandle::lose`]), or this
    /// supervisor found so itself before a spawn.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// In a cluster: wakes at each renewal of the node's lease, sent on to the
    /// executor.
    fence_rx: Option<tokio::sync::watch::Receiver<crate::lease::LeaseClock>>,
    /// What the executions task asks of the executor (execute, kill), and the sender
    /// handed to it with every `running`.
    exec_rx: mpsc::Receiver<ExecRequest>,
    exec_tx: mpsc::Sender<ExecRequest>,
    /// Why the manager killed the executor (a hung execution), for its exit's error.
    killed_for: Option<String>,
    /// The secret values the running executor's config was given: hidden in its
    /// log's tail before that becomes an error.
    scrub: Scrub,
    /// The row as the last `desired_state` write returned it, kept only until an
    /// effect that waits: a spawn right after that write needs no read of its own.
    /// Boxed, as `in_flight`: both are empty nearly always, and a thousand idle
    /// supervisors would carry their size.
    fresh: Option<Box<db::StrategyRow>>,
    /// The `starting` record, written while the executor starts up.
    in_flight: Option<Box<record::InFlight>>,
}

/// What woke the supervisor's loop.
enum Wake {
    Exited(ExitInfo),
    Link(ControlLink),
    Frame(Option<ExecutorMessage>),
    Command(SupervisorCommand),
    Exec(ExecRequest),
    BackoffOver,
    /// The node's lease was renewed (cluster only).
    Renewed,
    /// The once-a-second retry of writes and the reconciler.
    Second,
}

/// Execute and kill requests a supervisor holds (the plan runs one execution per
/// strategy at a time).
const EXEC_REQUESTS: usize = 4;

/// How long one database write may hold up a supervisor: past it the write is
/// retried every second, and the supervisor goes on serving its executor.
const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// `query` within [`DB_WRITE_TIMEOUT`] (past it, `PoolTimedOut`).
async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(DB_WRITE_TIMEOUT, query)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

impl StrategySupervisor {
    /// Start the supervisor task for `row`.
    pub fn spawn(shared: Arc<Shared>, row: db::StrategyRow, initial: Initial) -> SupervisorHandle {
        let (tx, inbox) = mpsc::channel(1024);
        let (link_tx, link_rx) = mpsc::channel(4);
        let (exec_tx, exec_rx) = mpsc::channel(EXEC_REQUESTS);
        shared
            .link_routes
            .lock()
            .expect("routes lock")
            .insert(row.id, link_tx);
        let status = row.status;
        let desired = match &initial {
            Initial::Adopt(_, d) | Initial::Start(d) => *d,
            Initial::Idle => row.desired_state,
        };
        let observed = ObservedState {
            status,
            pid: row.pid.map(|p| p as u32),
            pid_start_ticks: row.pid_start_ticks.map(|t| t as u64),
            pid_boot_id: row.pid_boot_id.clone(),
            last_error: None,
            restart_count: row.restart_count,
            started_at: row.started_at,
        };
        let span = tracing::info_span!("strategy", strategy_id = %row.id, name = %row.name);
        let mut supervisor = StrategySupervisor {
            shared: shared.clone(),
            id: row.id,
            name: row.name,
            strategy_type: row.strategy_type,
            config: row.config,
            interval: row.execution_interval_s.is_some(),
            limits: row.limits,
            lease_epoch: row.lease_epoch,
            policy: shared.policy,
            machine: Machine::new(status, desired, row.operator_stopped),
            observed,
            proc: None,
            link: None,
            link_rx,
            inbox,
            replying: None,
            journal: Journal::default(),
            broker: broker::BrokerState::from_row(row.broker_state),
            removed: CancellationToken::new(),
            lost: Default::default(),
            fence_rx: shared.fence.subscribe(),
            exec_rx,
            exec_tx,
            killed_for: None,
            scrub: Scrub::default(),
            fresh: None,
            in_flight: None,
        };
        supervisor.apply_restart_policy(row.restart_policy.as_ref());
        let removed = supervisor.removed.clone();
        let lost = supervisor.lost.clone();
        let task = format!("supervisor of strategy {}", supervisor.name);
        shared
            .tracker
            .spawn_named(task, supervisor.run(initial).instrument(span));
        SupervisorHandle { tx, removed, lost }
    }

    async fn run(mut self, initial: Initial) {
        self.publish_live();
        Box::pin(self.begin(initial)).await;
        let cancel = self.shared.cancel.clone();
        let removed = self.removed.clone();
        // Armed only while a tick has work (see `wants_second`): a thousand idle
        // supervisors waking every second cost the manager more than anything else.
        let mut db_retry = tokio::time::interval(Duration::from_secs(1));
        db_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = removed.cancelled() => return Box::pin(self.forget()).await,
                exit = wait_exit(&mut self.proc) => Wake::Exited(exit),
                Some(link) = self.link_rx.recv() => Wake::Link(*link),
                frame = next_frame(&mut self.link) => Wake::Frame(frame),
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => Wake::Command(*cmd),
                    None => break,
                },
                Some(request) = self.exec_rx.recv() => Wake::Exec(request),
                Some(()) = lease_renewed(&mut self.fence_rx) => Wake::Renewed,
                _ = sleep_until(self.machine.backoff_until()) => Wake::BackoffOver,
                _ = db_retry.tick(), if self.wants_second() => Wake::Second,
            };
            // Boxed: what handling a wake-up awaits (a spawn, a stop, database
            // writes) is most of this task's size, and it is needed only while
            // handling; the idle task stays small (BENCHMARKS.md, "After the
            // restructure": about 10 KiB per strategy otherwise).
            Box::pin(self.handle(wake)).await;
            if self.is_lost() {
                return Box::pin(self.forget()).await;
            }
        }
        Box::pin(self.feed(Event::Shutdown)).await;
        self.shared
            .link_routes
            .lock()
            .expect("routes lock")
            .remove(&self.id);
    }

    async fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Exited(exit) => {
                let event = self.exit_event(exit);
                self.feed(event).await;
            }
            Wake::Link(link) => self.accept_link(link).await,
            Wake::Frame(frame) => self.on_frame(frame).await,
            Wake::Command(cmd) => self.on_command(cmd).await,
            Wake::Exec(request) => self.on_exec_request(request).await,
            Wake::BackoffOver => self.feed(Event::BackoffOver).await,
            Wake::Renewed => self.send_lease().await,
            Wake::Second => {
                self.retry_writes().await;
                self.feed(Event::Tick).await;
            }
        }
    }

    /// The row is gone (see [`SupervisorHandle::remove`]). Nothing is recorded: there
    /// is no row to record it in. The delete guard refuses to delete a strategy
    /// whose status is not `stopped` or `error`, so an executor is rarely still up
    /// here (one adopted or started just before the delete); it gets the normal
    /// graceful stop (shutdown message, SIGTERM, SIGKILL), positions left as they
    /// are, and the manager never leaves an executor running that it cannot show.
    async fn forget(mut self) {
        if self.is_lost() {
            if let Some(pid) = self.proc.as_ref().map(|p| p.pid) {
                tracing::warn!(
                    pid,
                    "the strategy is another node's now and its executor is still here; killing it"
                );
                self.kill_and_reap(Duration::from_secs(5)).await;
            }
        } else if let Some(pid) = self.proc.as_ref().map(|p| p.pid) {
            tracing::warn!(
                pid,
                "the strategy was deleted while its executor runs; stopping it"
            );
            let grace = engine_store::commands::DEFAULT_STOP_TIMEOUT;
            let stop = self.shutdown_executor(
                grace,
                engine_protocol::StopMode::Leave,
                engine_protocol::ShutdownReason::Stop,
                Uuid::new_v4(),
            );
            if let Err(err) = stop.await {
                tracing::error!(error = %error::render(&err), "could not stop the executor of a deleted strategy");
            }
        }
        // Commands still queued: a global one waits for every strategy's outcome,
        // and this strategy is not there to take it.
        self.inbox.close();
        while let Ok(cmd) = self.inbox.try_recv() {
            let outcome = if self.is_lost() {
                Outcome::Elsewhere
            } else {
                Outcome::NotApplicable
            };
            let _ = cmd.reply.send(outcome);
        }
        self.shared.forget_strategy(self.id);
        self.shared.executions.send(ExecMessage::NotRunning {
            strategy_id: self.id,
            status: Status::Stopped,
        });
        self.shared
            .link_routes
            .lock()
            .expect("routes lock")
            .remove(&self.id);
        if self.is_lost() {
            tracing::info!("the strategy is another node's now; its supervisor here ended");
        } else {
            tracing::info!("strategy deleted; its supervisor ended");
        }
    }

    /// Whether the one-second tick has something to do: a write to retry, or the
    /// executor to bring back to the desired state.
    fn wants_second(&self) -> bool {
        self.journal.database_away() || self.broker.is_unwritten() || self.machine.wants_reconcile()
    }

    fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Send the executor the lease it now trades under (cluster only).
    async fn send_lease(&mut self) {
        let (Some(grant), Some(link)) = (self.lease_grant(), &mut self.link) else {
            return;
        };
        if let Err(err) = link.send(&ManagerMessage::Lease(grant)).await {
            tracing::debug!(error = %err, "cannot send the lease renewal; the executor reconnects");
            self.link = None;
        }
    }

    async fn begin(&mut self, initial: Initial) {
        let event = match initial {
            Initial::Idle => {
                let stale_pid = self.observed.pid.is_some();
                self.forget_process();
                Event::Idle { stale_pid }
            }
            Initial::Adopt(proc, desired) => {
                tracing::info!(pid = proc.pid, "adopted a running executor");
                self.observed.pid = Some(proc.pid);
                self.observed.pid_start_ticks = Some(proc.start_ticks);
                self.observed.pid_boot_id = Some(self.shared.boot_id.clone());
                self.proc = Some(*proc);
                Event::Adopted { desired }
            }
            Initial::Start(desired) => Event::Boot { desired },
        };
        self.feed(event).await;
    }

    async fn on_command(&mut self, cmd: SupervisorCommand) {
        let span =
            tracing::info_span!("command", command_id = %cmd.command_id, command = cmd.kind.word());
        self.replying = Some(cmd.reply);
        let event = Event::Command(machine::Command {
            id: cmd.command_id,
            kind: cmd.kind,
            global: cmd.global,
            recovered_from: cmd.recovered_from,
            superseded: cmd.superseded,
        });
        self.feed(event).instrument(span).await;
    }

    // ---------------------------------------------------------------- the shell

    /// What the machine is told besides the event.
    fn ctx(&self) -> Ctx {
        Ctx {
            now: Instant::now(),
            policy: self.policy,
            stop_on_exit: self.shared.config.stop_strategies_on_exit,
            process: self.proc.is_some(),
            linked: self.link.is_some(),
            started_at: self.observed.started_at,
            shutting_down: self.shared.cancel.is_cancelled(),
            jitter: rand::random::<f64>(),
            fresh_id: Uuid::new_v4(),
        }
    }

    /// Feed `event` and perform its effects; the outcome of an effect that waits is
    /// fed next, until the machine asks for nothing more.
    async fn feed(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let ctx = self.ctx();
            for effect in self.machine.step(event, &ctx) {
                if let Some(next) = self.perform(effect).await {
                    queue.push_back(next);
                }
            }
        }
        self.fresh = None;
        self.settle().await;
    }

    /// Feed an event that happens while an effect waits (a frame, an exit during a
    /// request): its effects never wait themselves.
    async fn observe(&mut self, event: Event) {
        let ctx = self.ctx();
        for effect in self.machine.step(event, &ctx) {
            if let Some(next) = self.perform_now(effect).await {
                tracing::error!(
                    ?next,
                    "an effect that waits was asked for while another one waits; ignored"
                );
            }
        }
    }

    async fn perform(&mut self, effect: Effect) -> Option<Event> {
        if !matches!(effect, Effect::Spawn { .. }) && effect.waits() {
            // Time passes: operators may edit the row meanwhile.
            self.fresh = None;
        }
        if !matches!(effect, Effect::AwaitReady) {
            // Whatever it does comes after the write in flight.
            self.settle().await;
        }
        match effect {
            Effect::Spawn { paused } => Some(self.spawn_executor(paused).await),
            Effect::AwaitReady => Some(self.await_ready().await),
            Effect::Shutdown {
                grace,
                mode,
                reason,
                command_id,
            } => Some(Event::StopEnded(
                self.shutdown_executor(grace, mode, reason, command_id)
                    .await,
            )),
            Effect::Request { kind, command_id } => Some(Event::RequestEnded(
                self.request(kind, None, command_id).await,
            )),
            Effect::Update {
                patch,
                limits,
                command_id,
                online,
            } => Some(Event::UpdateEnded(
                self.update(&patch, limits.as_ref(), command_id, online)
                    .await,
            )),
            Effect::CheckTarget { node } => {
                Some(Event::TargetChecked(self.check_target(&node).await))
            }
            Effect::Release { to, command_id } => Some(Event::Released(
                self.release(to.as_deref(), command_id).await,
            )),
            other => self.perform_now(other).await,
        }
    }

    /// Perform an effect that does not wait (anything else is handed back).
    async fn perform_now(&mut self, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Record(transition) => self.transition(transition).await,
            Effect::SetDesired {
                desired,
                operator_stopped,
            } => self.write_desired(desired, operator_stopped).await,
            Effect::ResetRestarts => {
                self.observed.restart_count = 0;
                self.observed.last_error = None;
            }
            Effect::CountRestart => self.observed.restart_count += 1,
            Effect::Reply(outcome) => self.reply(outcome),
            Effect::Trigger { command_id } => {
                if let Some(reply) = self.replying.take() {
                    self.shared.executions.send(ExecMessage::Trigger {
                        strategy_id: self.id,
                        command_id,
                        reply,
                    });
                }
            }
            Effect::Log { level, message } => log(level, &message),
            waits => {
                tracing::error!(effect = ?waits, "an effect that waits cannot be performed here");
            }
        }
        None
    }

    fn reply(&mut self, outcome: Outcome) {
        match &outcome {
            Outcome::Failed(e) => {
                tracing::warn!(error = %error::render(e), "command failed")
            }
            Outcome::Done => tracing::info!("command executed"),
            Outcome::NotApplicable | Outcome::Elsewhere => {}
        }
        let Some(reply) = self.replying.take() else {
            return;
        };
        self.journal.reply(reply, outcome);
    }

    // ---------------------------------------------------------------- the executor

    /// The event for an exit nobody asked for (its log's tail read before the process
    /// is forgotten).
    fn exit_event(&mut self, exit: ExitInfo) -> Event {
        let tail = match self.killed_for.take() {
            Some(reason) => reason,
            None => self.scrub.scrub(
                &self
                    .proc
                    .as_ref()
                    .map(|p| p.log_tail(5))
                    .unwrap_or_default(),
            ),
        };
        self.forget_process();
        Event::Exited { exit, tail }
    }

    async fn accept_link(&mut self, link: ControlLink) {
        match &self.proc {
            Some(p) if p.pid == link.peer_pid => {
                tracing::debug!(pid = p.pid, status = %link.hello_status, "executor connected");
                let hello = link.hello_status;
                self.link = Some(link);
                // An adopted executor trades under this manager's lease from now on.
                self.send_lease().await;
                // An adopted executor tells us whether it is paused.
                self.observe(Event::Connected { hello }).await;
            }
            _ => tracing::warn!(
                peer_pid = link.peer_pid,
                "control connection from a process that is not this strategy's executor; dropped"
            ),
        }
    }

    async fn on_frame(&mut self, frame: Option<ExecutorMessage>) {
        match frame {
            None => self.link = None,
            // A state the executor reports by itself (a halt's way out, an adopted
            // executor's hello, a command it took on the link).
            Some(ExecutorMessage::State {
                status,
                reason,
                command_id,
            }) => {
                let event = Event::Reported {
                    status,
                    reason,
                    command_id,
                };
                self.observe(event).await
            }
            Some(ExecutorMessage::Halted { reason }) => {
                self.observe(Event::Halted { reason }).await
            }
            Some(ExecutorMessage::BrokerState { state, discarded }) => {
                self.keep_broker_state(state, discarded).await
            }
            Some(ExecutorMessage::Orders { orders }) => {
                self.shared
                    .orders
                    .record(self.id, &self.shared.node, orders)
            }
            Some(ExecutorMessage::Executed {
                execution_id,
                ok,
                error,
                started_at,
                ..
            }) => {
                let outcome = match (ok, error) {
                    (true, _) => Ok(()),
                    (false, error) => {
                        Err(error.unwrap_or_else(|| "the strategy reported a failure".into()))
                    }
                };
                self.shared.executions.send(ExecMessage::Ended {
                    strategy_id: self.id,
                    execution_id,
                    outcome,
                    executor_started_at: started_at,
                });
            }
            Some(_) => {}
        }
    }

    /// What the executions task asks: an execute frame on the control link (an
    /// executor that cannot be reached ends the execution with an error), or the
    /// SIGKILL of a hung executor (its exit then takes the crash rules).
    async fn on_exec_request(&mut self, request: ExecRequest) {
        match request {
            ExecRequest::Execute { execution_id } => {
                let frame = ManagerMessage::Execute { execution_id };
                let error = match &mut self.link {
                    Some(link) => match link.send(&frame).await {
                        Ok(()) => return,
                        Err(err) => {
                            self.link = None;
                            format!("the execute request could not be sent: {err}")
                        }
                    },
                    None => {
                        "the executor is not connected to the manager's control socket".to_string()
                    }
                };
                self.shared.executions.send(ExecMessage::Ended {
                    strategy_id: self.id,
                    execution_id,
                    outcome: Err(error),
                    executor_started_at: None,
                });
            }
            ExecRequest::Kill { reason } => {
                if let Some(proc) = &self.proc {
                    tracing::warn!(pid = proc.pid, "{reason}");
                    proc.signal(rustix::process::Signal::KILL);
                    self.killed_for = Some(reason);
                }
            }
        }
    }

    /// The executor is gone (or was never there): its Redis user goes too.
    fn forget_process(&mut self) {
        self.shared.redis_users.release(self.id);
        self.proc = None;
        self.link = None;
        self.observed.pid = None;
        self.observed.pid_start_ticks = None;
        self.observed.pid_boot_id = None;
    }

    fn apply_restart_policy(&mut self, overrides: Option<&Value>) {
        self.policy = match overrides {
            None => self.shared.policy,
            Some(o) => self.shared.policy.with_overrides(o).unwrap_or_else(|err| {
                tracing::warn!("ignoring this strategy's restart_policy: {err}");
                self.shared.policy
            }),
        };
    }
}

fn log(level: tracing::Level, message: &str) {
    match level {
        tracing::Level::ERROR => tracing::error!("{message}"),
        tracing::Level::WARN => tracing::warn!("{message}"),
        _ => tracing::info!("{message}"),
    }
}

async fn wait_exit(proc: &mut Option<ExecutorProcess>) -> ExitInfo {
    match proc {
        Some(p) => p.wait().await,
        None => pending().await,
    }
}

async fn next_frame(link: &mut Option<ControlLink>) -> Option<ExecutorMessage> {
    match link {
        Some(l) => l.next().await,
        None => pending().await,
    }
}

/// `Some(())` at each renewal of the node's lease; never without `--cluster` (nor
/// once the lease keeper is gone).
async fn lease_renewed(
    rx: &mut Option<tokio::sync::watch::Receiver<crate::lease::LeaseClock>>,
) -> Option<()> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => pending().await,
        },
        None => pending().await,
    }
}
