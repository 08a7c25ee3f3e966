//! The supervisor's decisions, without I/O: [`Machine::step`] (or [`next`]) takes the
//! state of one strategy's process and an [`Event`] and returns the new state and the
//! [`Effect`]s the shell performs (spawn, stop with grace, ask the executor, record,
//! reply). The shell feeds the outcome of each long effect back as an event
//! ([`Event::Spawned`], [`Event::Ready`], [`Event::StopEnded`], …).
//!
//! Commands are applied one at a time: the shell hands the machine a command only
//! when no effect is in flight, so a command's steps (a restart's stop, then its start)
//! are never interleaved with another command.

use super::error::{describe_exit, render, CommandError, RequestError, StartError};
use super::error::{HandOverError, StopError, TargetCheck, UpdateError};
use super::Outcome;
use crate::config::RestartPolicy;
use crate::process::ExitInfo;
use chrono::{DateTime, Utc};
use engine_protocol::control::{EXIT_BAD_CONFIG, EXIT_HALTED};
use engine_protocol::{ExecutorCommandKind, ShutdownReason, Status, StopMode};
use engine_store::commands::{CommandKind, DEFAULT_STOP_TIMEOUT};
use engine_store::DesiredState;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The event reason of an executor the kernel killed at its memory limit (CONTRACT §6).
pub const OOM_REASON: &str = "oom";

/// The state of one strategy's process, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No executor, by request (or nothing asked for one).
    Stopped,
    /// Spawned, not initialised yet.
    Starting,
    /// Initialised and trading; `since` (when it became so) decides whether a crash
    /// counts as consecutive (unknown for a state read from the row).
    Running { since: Option<Instant> },
    /// Initialised, not trading.
    Paused { since: Option<Instant> },
    /// Told to shut down; waiting for it to exit.
    Stopping { since: Option<Instant> },
    /// Crashed; restarted at `until` (unknown for a state read from the row).
    Backoff { until: Option<Instant> },
    /// Given up on: bad config, unknown type, halted, a crash loop.
    Error,
}

impl State {
    /// The state a row's `status` says, before anything is known about the process.
    pub fn from_status(status: Status) -> State {
        match status {
            Status::Stopped => State::Stopped,
            Status::Starting => State::Starting,
            Status::Running => State::Running { since: None },
            Status::Paused => State::Paused { since: None },
            Status::Stopping => State::Stopping { since: None },
            Status::Backoff => State::Backoff { until: None },
            Status::Error => State::Error,
        }
    }

    /// The contract's word for this state.
    pub fn status(self) -> Status {
        match self {
            State::Stopped => Status::Stopped,
            State::Starting => Status::Starting,
            State::Running { .. } => Status::Running,
            State::Paused { .. } => Status::Paused,
            State::Stopping { .. } => Status::Stopping,
            State::Backoff { .. } => Status::Backoff,
            State::Error => Status::Error,
        }
    }

    /// Since when the executor has been initialised (running or paused).
    fn since(self) -> Option<Instant> {
        match self {
            State::Running { since } | State::Paused { since } | State::Stopping { since } => since,
            _ => None,
        }
    }

    /// `running` or `paused` (as `status` says), keeping `since`.
    fn live(status: Status, since: Option<Instant>) -> State {
        match status {
            Status::Paused => State::Paused { since },
            _ => State::Running { since },
        }
    }
}

/// A command as the machine sees it (the shell keeps its reply channel).
#[derive(Debug, Clone)]
pub struct Command {
    pub id: Uuid,
    pub kind: CommandKind,
    pub global: bool,
    /// Left `processing` by a previous manager; its `created_at`.
    pub recovered_from: Option<DateTime<Utc>>,
    /// Recovered, and this strategy has provably been through it already.
    pub superseded: bool,
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// Manager start: nothing runs and nothing should. `stale_pid`: the row still
    /// named a process.
    Idle { stale_pid: bool },
    /// Manager start: a live executor was taken over; make it match `desired`.
    Adopted { desired: DesiredState },
    /// Manager start: start an executor (paused when `desired` is paused).
    Boot { desired: DesiredState },
    /// An operator's command.
    Command(Command),
    /// The supervised executor connected; its hello said `hello`.
    Connected { hello: Status },
    /// The executor reported a state change (a command it took from Redis).
    Reported {
        status: Status,
        reason: Option<String>,
        command_id: Option<Uuid>,
    },
    /// The strategy halted itself (the executor exits next).
    Halted { reason: String },
    /// The executor exited without being asked; `tail` is the end of its log.
    Exited { exit: ExitInfo, tail: String },
    /// The backoff delay is over.
    BackoffOver,
    /// Once a second (also when the database may be back).
    Tick,
    /// The executor of a [`Effect::Spawn`] is running (not initialised yet).
    Spawned,
    /// The executor finished initialising and reported `reported`.
    Ready { reported: Status },
    /// A start failed (spawn, exit in start-up, start timeout, shutdown).
    StartFailed(StartError),
    /// A [`Effect::Shutdown`] ended: the executor exited, or survived SIGKILL.
    StopEnded(Result<(), StopError>),
    /// A [`Effect::Request`] was acknowledged, or not.
    RequestEnded(Result<(), RequestError>),
    /// An [`Effect::Update`] ended.
    UpdateEnded(Result<(), UpdateError>),
    /// An [`Effect::CheckTarget`] ended: may the strategy move there?
    TargetChecked(Result<TargetCheck, HandOverError>),
    /// An [`Effect::Release`] ended: the strategy is another node's now (or no
    /// node's, for the others to claim), or still this one's.
    Released(Result<(), HandOverError>),
    /// The manager is shutting down.
    Shutdown,
}

/// A recorded status change: the row, `strategy_events`, the status channel, the
/// state hash. `from == to` with no reason re-records without an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub command_id: Option<Uuid>,
}

/// What the shell does. Effects that wait (spawn, ready, shutdown, request, update)
/// come last in a batch; their outcome comes back as an event.
#[derive(Debug)]
pub enum Effect {
    Record(Transition),
    /// Write `desired_state` (before any status that follows from it).
    SetDesired {
        desired: DesiredState,
        operator_stopped: bool,
    },
    /// An operator's start: `restart_count` back to 0, `last_error` cleared.
    ResetRestarts,
    /// One more automatic restart in `restart_count`.
    CountRestart,
    /// Spawn an executor (`--start-paused` when `paused`) → [`Event::Spawned`] or
    /// [`Event::StartFailed`].
    Spawn {
        paused: bool,
    },
    /// Wait for the executor to initialise → [`Event::Ready`] or [`Event::StartFailed`].
    AwaitReady,
    /// Shutdown message, SIGTERM at half `grace`, SIGKILL at its end →
    /// [`Event::StopEnded`].
    Shutdown {
        grace: Duration,
        mode: StopMode,
        reason: ShutdownReason,
        command_id: Uuid,
    },
    /// Send a pause or resume and wait for its ack → [`Event::RequestEnded`].
    Request {
        kind: ExecutorCommandKind,
        command_id: Uuid,
    },
    /// Apply a config patch (`online`: through the running executor, else checked
    /// with `--validate`) → [`Event::UpdateEnded`].
    Update {
        patch: Value,
        /// A merge patch for `limits`, applied to the executor's group live.
        limits: Option<Value>,
        command_id: Uuid,
        online: bool,
    },
    /// A `trigger` of a running strategy: hand it, with the current command's reply,
    /// to the executions task (which answers it when the execution ends).
    Trigger {
        command_id: Uuid,
    },
    /// Cluster only: is `node` alive, not draining and below its capacity? →
    /// [`Event::TargetChecked`].
    CheckTarget {
        node: String,
    },
    /// Cluster only: hand the stopped strategy to `to` (`None`: to no node, for the
    /// others to claim) in one statement conditional on this node's epoch →
    /// [`Event::Released`]. Pending writes go first.
    Release {
        to: Option<String>,
        command_id: Uuid,
    },
    /// The current command's outcome.
    Reply(Outcome),
    Log {
        level: tracing::Level,
        message: String,
    },
}

impl Effect {
    /// Whether performing it waits for something outside the manager (a process,
    /// a reply, another node): its outcome is fed back as an event.
    pub fn waits(&self) -> bool {
        matches!(
            self,
            Effect::Spawn { .. }
                | Effect::AwaitReady
                | Effect::Shutdown { .. }
                | Effect::Request { .. }
                | Effect::Update { .. }
                | Effect::CheckTarget { .. }
                | Effect::Release { .. }
        )
    }
}

/// What the machine is told besides the event: facts about resources the shell owns,
/// the clock, the policy, and the two random inputs (so tests can fix them).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub now: Instant,
    pub policy: RestartPolicy,
    /// `--stop-strategies-on-exit`.
    pub stop_on_exit: bool,
    /// An executor process is supervised.
    pub process: bool,
    /// Its control link is up.
    pub linked: bool,
    /// The current executor's spawn time (`started_at`).
    pub started_at: Option<DateTime<Utc>>,
    pub shutting_down: bool,
    /// A number in [0, 1) for the restart delay's jitter.
    pub jitter: f64,
    /// An id for a request no operator asked for (adoption, the reconciler).
    pub fresh_id: Uuid,
}

/// What an effect in flight is for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Waiting {
    /// A start; `command`: an operator's (the outcome is replied).
    Start {
        command: Option<Uuid>,
        reason: &'static str,
    },
    Stop {
        then: AfterStop,
        reason: ShutdownReason,
        command: Option<Uuid>,
    },
    /// A pause or resume; `reply`: an operator's, with `desired_state` to put back if
    /// the executor does not acknowledge.
    Request {
        kind: ExecutorCommandKind,
        command_id: Uuid,
        reply: Option<(DesiredState, bool)>,
    },
    Update,
    /// A move's check of its target, or a hand-over's release ([`HandOver`]).
    HandOver,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterStop {
    Reply,
    /// A restart: start once stopped.
    Start(Uuid),
    /// A move or a drain: hand the strategy over once stopped.
    HandOver,
    Nothing,
}

/// A hand-over to another node in progress (cluster only): a `move` names the node,
/// a drain releases the strategy for any node to claim.
#[derive(Debug, Clone, PartialEq)]
struct HandOver {
    command: Uuid,
    to: Option<String>,
    /// The executor was live when the hand-over began: if the hand-over does not
    /// happen, it is started again here.
    was_live: bool,
}

impl HandOver {
    /// The event reason: `move` or `drain`.
    fn reason(&self) -> &'static str {
        match self.to {
            Some(_) => engine_store::cluster_ops::MOVE_REASON,
            None => engine_store::cluster_ops::DRAIN_REASON,
        }
    }
}

/// One strategy's supervisor state.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    /// What operators asked for: re-applied after a crash restart.
    desired: DesiredState,
    operator_stopped: bool,
    consecutive_crashes: u32,
    /// The reason of a `halted` frame, until the exit that follows it.
    halt_reason: Option<String>,
    waiting: Option<Waiting>,
    /// A move or a drain's hand-over in progress.
    handing_over: Option<HandOver>,
}

/// The transition function: `machine` after `event`, and what to do.
pub fn next(mut machine: Machine, event: Event, ctx: &Ctx) -> (Machine, Vec<Effect>) {
    let effects = machine.step(event, ctx);
    (machine, effects)
}

impl Machine {
    pub fn new(status: Status, desired: DesiredState, operator_stopped: bool) -> Machine {
        Machine {
            state: State::from_status(status),
            desired,
            operator_stopped,
            consecutive_crashes: 0,
            halt_reason: None,
            waiting: None,
            handing_over: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn status(&self) -> Status {
        self.state.status()
    }

    /// Whether a [`Event::Tick`] can do anything: the executor's state is not the
    /// desired one (running where it should be paused, or the reverse).
    pub fn wants_reconcile(&self) -> bool {
        matches!(
            (self.status(), self.desired),
            (Status::Running, DesiredState::Paused) | (Status::Paused, DesiredState::Running)
        )
    }

    pub fn desired(&self) -> DesiredState {
        self.desired
    }

    pub fn operator_stopped(&self) -> bool {
        self.operator_stopped
    }

    /// When the backoff timer fires.
    pub fn backoff_until(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => until,
            _ => None,
        }
    }

    /// Apply `event`; the effects to perform, in order.
    pub fn step(&mut self, event: Event, ctx: &Ctx) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::Idle { stale_pid } => self.idle(stale_pid, &mut out),
            Event::Adopted { desired } => self.adopted(desired, ctx, &mut out),
            Event::Boot { desired } => {
                let paused = desired == DesiredState::Paused;
                self.start(None, "starting at manager start", paused, &mut out)
            }
            Event::Command(cmd) => self.command(cmd, ctx, &mut out),
            Event::Connected { hello } => {
                let reason = Some("reported by the executor".to_string());
                self.reported(hello, reason, None, &mut out)
            }
            Event::Reported {
                status,
                reason,
                command_id,
            } => self.reported(status, reason, command_id, &mut out),
            Event::Halted { reason } => self.halt_reason = Some(reason),
            Event::Exited { exit, tail } => self.exited(exit, &tail, ctx, &mut out),
            Event::BackoffOver => {
                // It crashed while paused: it comes back paused, and never trades.
                let paused = self.desired == DesiredState::Paused;
                self.start(None, "automatic restart after a crash", paused, &mut out)
            }
            Event::Tick => self.reconcile(ctx, &mut out),
            Event::Spawned => self.spawned(&mut out),
            Event::Ready { reported } => self.ready(reported, ctx, &mut out),
            Event::StartFailed(failure) => self.start_failed(failure, ctx, &mut out),
            Event::StopEnded(result) => self.stop_ended(result, ctx, &mut out),
            Event::RequestEnded(result) => self.request_ended(result, &mut out),
            Event::UpdateEnded(result) => {
                if self.waiting.take() == Some(Waiting::Update) {
                    out.push(reply(result.map_err(CommandError::from)));
                }
            }
            Event::TargetChecked(result) => self.target_checked(result, ctx, &mut out),
            Event::Released(result) => self.released(result, &mut out),
            Event::Shutdown => self.shutdown(ctx, &mut out),
        }
        out
    }

    fn go(
        &mut self,
        to: State,
        reason: Option<String>,
        error: Option<String>,
        command_id: Option<Uuid>,
        out: &mut Vec<Effect>,
    ) {
        let from = self.state.status();
        self.state = to;
        out.push(Effect::Record(Transition {
            from,
            to: to.status(),
            reason,
            error,
            command_id,
        }));
    }

    fn set_desired(
        &mut self,
        desired: DesiredState,
        operator_stopped: bool,
        out: &mut Vec<Effect>,
    ) {
        self.desired = desired;
        self.operator_stopped = operator_stopped;
        out.push(Effect::SetDesired {
            desired,
            operator_stopped,
        });
    }

    // ------------------------------------------------------------ start-up

    fn idle(&mut self, stale_pid: bool, out: &mut Vec<Effect>) {
        match self.state {
            // Nothing runs: make the row say so (it may hold a dead pid).
            State::Stopped | State::Error if stale_pid => {
                self.go(self.state, None, None, None, out)
            }
            State::Stopped | State::Error => {}
            _ => {
                let reason = Some("not running at manager start".to_string());
                self.go(State::Stopped, reason, None, None, out)
            }
        }
    }

    fn adopted(&mut self, desired: DesiredState, ctx: &Ctx, out: &mut Vec<Effect>) {
        // Until its hello says, the executor is as the row says; a row that is not
        // live (a status write lost with the previous manager) says nothing, and an
        // executor is spawned paused exactly when the strategy should be paused.
        let guess = match self.status() {
            live if live.is_live() => live,
            _ if desired == DesiredState::Paused => Status::Paused,
            _ => Status::Running,
        };
        let to = State::live(guess, Some(ctx.now));
        self.go(to, Some("adopted".to_string()), None, None, out);
        match desired {
            DesiredState::Stopped => self.stop(
                DEFAULT_STOP_TIMEOUT,
                StopMode::Leave,
                ShutdownReason::Stop,
                (None, AfterStop::Nothing),
                ctx,
                out,
            ),
            DesiredState::Paused if to.status() == Status::Running => {
                self.request(ExecutorCommandKind::Pause, ctx.fresh_id, None, out)
            }
            DesiredState::Running if to.status() == Status::Paused => {
                self.request(ExecutorCommandKind::Resume, ctx.fresh_id, None, out)
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------ commands

    fn command(&mut self, cmd: Command, ctx: &Ctx, out: &mut Vec<Effect>) {
        if cmd.superseded {
            out.push(info(
                "applied by the previous manager, and later commands since: not applied again",
            ));
            out.push(Effect::Reply(Outcome::Done));
            return;
        }
        let status = self.status();
        if cmd.global && !applies_globally(&cmd.kind, status) {
            out.push(Effect::Reply(Outcome::NotApplicable));
            return;
        }
        let id = cmd.id;
        match cmd.kind {
            CommandKind::Start => {
                if status.is_live() || (status == Status::Starting && ctx.process) {
                    out.push(Effect::Reply(Outcome::Done));
                    return;
                }
                self.set_desired(DesiredState::Running, false, out);
                self.operator_start(id, out);
            }
            CommandKind::Stop { timeout, mode } => {
                self.set_desired(DesiredState::Stopped, true, out);
                let then = (Some(id), AfterStop::Reply);
                self.stop(timeout, mode, ShutdownReason::Stop, then, ctx, out);
            }
            CommandKind::Restart { timeout, mode } => {
                if let (Some(since), Some(started)) = (cmd.recovered_from, ctx.started_at) {
                    if started > since && status.is_live() {
                        // The previous manager got as far as the new start.
                        out.push(Effect::Reply(Outcome::Done));
                        return;
                    }
                }
                self.set_desired(DesiredState::Running, false, out);
                if !ctx.process {
                    // Nothing to stop: a restart is a start (no `stopped → stopped`).
                    self.operator_start(id, out);
                    return;
                }
                let then = (Some(id), AfterStop::Start(id));
                self.stop(timeout, mode, ShutdownReason::Restart, then, ctx, out);
            }
            CommandKind::Pause => self.pause_or_resume(ExecutorCommandKind::Pause, id, out),
            CommandKind::Resume => self.pause_or_resume(ExecutorCommandKind::Resume, id, out),
            CommandKind::Update { patch, limits } => {
                let online = ctx.process && status.is_live();
                self.waiting = Some(Waiting::Update);
                out.push(Effect::Update {
                    patch,
                    limits,
                    command_id: id,
                    online,
                });
            }
            // The intake hands `cancel` to the runs, never to a strategy's supervisor
            // (a cancel must not wait behind the strategy's other commands).
            CommandKind::Cancel { .. } => out.push(Effect::Reply(Outcome::NotApplicable)),
            // Executions are the executions task's; only a running strategy has them.
            CommandKind::Trigger => match status {
                Status::Running => out.push(Effect::Trigger { command_id: id }),
                status => out.push(reply(Err(CommandError::CannotTrigger { status }))),
            },
            CommandKind::Move { node } => {
                self.handing_over = Some(HandOver {
                    command: id,
                    to: Some(node.clone()),
                    was_live: ctx.process,
                });
                self.waiting = Some(Waiting::HandOver);
                out.push(Effect::CheckTarget { node });
            }
            // A draining node's hand-over of this strategy (the intake sends it).
            CommandKind::Drain { .. } => {
                self.handing_over = Some(HandOver {
                    command: id,
                    to: None,
                    was_live: ctx.process,
                });
                self.hand_over_stop(ctx, out);
            }
            // Only the intake acts on undrain: nothing for a strategy.
            CommandKind::Undrain { .. } => out.push(Effect::Reply(Outcome::NotApplicable)),
        }
    }

    // ------------------------------------------------------------ hand-over

    fn target_checked(
        &mut self,
        result: Result<TargetCheck, HandOverError>,
        ctx: &Ctx,
        out: &mut Vec<Effect>,
    ) {
        if self.waiting.take() != Some(Waiting::HandOver) {
            return;
        }
        match result {
            Ok(TargetCheck::Fits) => self.hand_over_stop(ctx, out),
            Ok(TargetCheck::SameNode) => {
                self.handing_over = None;
                out.push(info(
                    "move: the strategy is on that node already; nothing to do",
                ));
                out.push(Effect::Reply(Outcome::NotApplicable));
            }
            Err(err) => {
                self.handing_over = None;
                out.push(reply(Err(err.into())));
            }
        }
    }

    /// Stop the executor (graceful, positions left, `desired_state` kept: not an
    /// operator's stop), then release the strategy.
    fn hand_over_stop(&mut self, ctx: &Ctx, out: &mut Vec<Effect>) {
        let Some(hand_over) = &self.handing_over else {
            return;
        };
        let (id, why) = (hand_over.command, hand_over.reason());
        if !ctx.process {
            self.release(out);
            return;
        }
        let since = self.state.since();
        self.go(
            State::Stopping { since },
            Some(why.to_string()),
            None,
            Some(id),
            out,
        );
        self.waiting = Some(Waiting::Stop {
            then: AfterStop::HandOver,
            // Said to the strategy: it goes on elsewhere, as after a restart.
            reason: ShutdownReason::Restart,
            command: Some(id),
        });
        out.push(Effect::Shutdown {
            grace: DEFAULT_STOP_TIMEOUT,
            mode: StopMode::Leave,
            reason: ShutdownReason::Restart,
            command_id: id,
        });
    }

    fn release(&mut self, out: &mut Vec<Effect>) {
        let Some(hand_over) = &self.handing_over else {
            return;
        };
        self.waiting = Some(Waiting::HandOver);
        out.push(Effect::Release {
            to: hand_over.to.clone(),
            command_id: hand_over.command,
        });
    }

    fn released(&mut self, result: Result<(), HandOverError>, out: &mut Vec<Effect>) {
        if self.waiting.take() != Some(Waiting::HandOver) {
            return;
        }
        let Some(hand_over) = self.handing_over.take() else {
            return;
        };
        match result {
            // The shell ends this supervisor: the strategy is not this node's.
            Ok(()) => out.push(Effect::Reply(Outcome::Done)),
            Err(err @ HandOverError::Lost { .. }) => out.push(reply(Err(err.into()))),
            Err(err) => {
                out.push(reply(Err(err.into())));
                let live = matches!(self.desired, DesiredState::Running | DesiredState::Paused);
                if hand_over.was_live && live && self.state == State::Stopped {
                    let paused = self.desired == DesiredState::Paused;
                    self.start(
                        None,
                        "started again here: the hand-over did not happen",
                        paused,
                        out,
                    );
                }
            }
        }
    }

    /// Pause (or resume): `desired_state` first (a manager that dies after the
    /// effect must not undo it at adoption), put back if the executor does not
    /// acknowledge, so a failed pause leaves status and `desired_state` agreeing.
    fn pause_or_resume(&mut self, kind: ExecutorCommandKind, id: Uuid, out: &mut Vec<Effect>) {
        let pause = kind == ExecutorCommandKind::Pause;
        let (already, from, desired) = if pause {
            (Status::Paused, Status::Running, DesiredState::Paused)
        } else {
            (Status::Running, Status::Paused, DesiredState::Running)
        };
        let status = self.status();
        if status == already {
            self.set_desired(desired, false, out);
            out.push(Effect::Reply(Outcome::Done));
        } else if status == from {
            let before = (self.desired, self.operator_stopped);
            self.set_desired(desired, false, out);
            self.request(kind, id, Some(before), out);
        } else if pause {
            out.push(reply(Err(CommandError::CannotPause { status })));
        } else {
            out.push(reply(Err(CommandError::CannotResume { status })));
        }
    }

    fn operator_start(&mut self, id: Uuid, out: &mut Vec<Effect>) {
        self.consecutive_crashes = 0;
        out.push(Effect::ResetRestarts);
        self.start(Some(id), "started by an operator", false, out);
    }

    // ------------------------------------------------------------ start

    /// Spawn an executor; with `paused` it comes up paused (`--start-paused`).
    fn start(
        &mut self,
        command: Option<Uuid>,
        reason: &'static str,
        paused: bool,
        out: &mut Vec<Effect>,
    ) {
        if let State::Backoff { until } = &mut self.state {
            *until = None;
        }
        self.halt_reason = None;
        self.waiting = Some(Waiting::Start { command, reason });
        out.push(Effect::Spawn { paused });
    }

    fn spawned(&mut self, out: &mut Vec<Effect>) {
        let Some(Waiting::Start { command, reason }) = self.waiting else {
            return;
        };
        self.go(
            State::Starting,
            Some(reason.to_string()),
            None,
            command,
            out,
        );
        out.push(Effect::AwaitReady);
    }

    fn ready(&mut self, reported: Status, ctx: &Ctx, out: &mut Vec<Effect>) {
        let Some(Waiting::Start { command, .. }) = self.waiting.take() else {
            return;
        };
        self.go(
            State::live(reported, Some(ctx.now)),
            None,
            None,
            command,
            out,
        );
        if command.is_some() {
            out.push(Effect::Reply(Outcome::Done));
        }
    }

    fn start_failed(&mut self, failure: StartError, ctx: &Ctx, out: &mut Vec<Effect>) {
        let Some(Waiting::Start { command, .. }) = self.waiting.take() else {
            return;
        };
        if ctx.shutting_down {
            if command.is_some() {
                out.push(reply(Err(failure.into())));
            }
            return;
        }
        let message = render(&failure);
        if failure.is_permanent() {
            self.go(State::Error, None, Some(message), command, out);
            if command.is_some() {
                out.push(reply(Err(failure.into())));
            }
        } else {
            // Killed or crashed in its start-up: a crash like any other, restarted
            // with backoff; an operator's command says it did not take.
            self.crashed(message, None, ctx, out);
            if command.is_some() {
                out.push(reply(Err(CommandError::StartRetrying { failure })));
            }
        }
    }

    // ------------------------------------------------------------ stop

    fn stop(
        &mut self,
        grace: Duration,
        mode: StopMode,
        reason: ShutdownReason,
        (command, then): (Option<Uuid>, AfterStop),
        ctx: &Ctx,
        out: &mut Vec<Effect>,
    ) {
        if !ctx.process {
            // Already stopped: a no-op, and no `stopped → stopped` in the history.
            if self.state != State::Stopped {
                let why = Some("stopped by an operator".to_string());
                self.go(State::Stopped, why, None, command, out);
            }
            self.after_stop(then, Ok(()), command, out);
            return;
        }
        let since = self.state.since();
        let why = Some(reason.as_str().to_string());
        self.go(State::Stopping { since }, why, None, command, out);
        self.waiting = Some(Waiting::Stop {
            then,
            reason,
            command,
        });
        out.push(Effect::Shutdown {
            grace,
            mode,
            reason,
            command_id: command.unwrap_or(ctx.fresh_id),
        });
    }

    fn stop_ended(&mut self, result: Result<(), StopError>, _ctx: &Ctx, out: &mut Vec<Effect>) {
        let Some(Waiting::Stop {
            then,
            reason,
            command,
        }) = self.waiting.take()
        else {
            return;
        };
        if result.is_ok() {
            let why = match (then, &self.handing_over) {
                (AfterStop::HandOver, Some(hand_over)) => hand_over.reason(),
                _ => reason.as_str(),
            };
            self.go(State::Stopped, Some(why.to_string()), None, command, out);
        }
        self.after_stop(then, result, command, out);
    }

    fn after_stop(
        &mut self,
        then: AfterStop,
        result: Result<(), StopError>,
        command: Option<Uuid>,
        out: &mut Vec<Effect>,
    ) {
        match (then, result) {
            (AfterStop::Start(id), Ok(())) => self.operator_start(id, out),
            (AfterStop::HandOver, Ok(())) => self.release(out),
            (AfterStop::HandOver, Err(err)) => {
                self.handing_over = None;
                out.push(reply(Err(err.into())));
            }
            (AfterStop::Reply | AfterStop::Start(_), result) if command.is_some() => {
                out.push(reply(result.map_err(CommandError::from)))
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------ requests

    fn request(
        &mut self,
        kind: ExecutorCommandKind,
        command_id: Uuid,
        reply: Option<(DesiredState, bool)>,
        out: &mut Vec<Effect>,
    ) {
        self.waiting = Some(Waiting::Request {
            kind,
            command_id,
            reply,
        });
        out.push(Effect::Request { kind, command_id });
    }

    fn request_ended(&mut self, result: Result<(), RequestError>, out: &mut Vec<Effect>) {
        let Some(Waiting::Request {
            kind,
            command_id,
            reply: operator,
        }) = self.waiting.take()
        else {
            return;
        };
        match result {
            Ok(()) => {
                let status = match kind {
                    ExecutorCommandKind::Pause => Status::Paused,
                    _ => Status::Running,
                };
                let to = State::live(status, self.state.since());
                self.go(to, None, None, Some(command_id), out);
                if operator.is_some() {
                    out.push(Effect::Reply(Outcome::Done));
                }
            }
            Err(err) => {
                if let Some((desired, operator_stopped)) = operator {
                    self.set_desired(desired, operator_stopped, out);
                    out.push(reply(Err(err.into())));
                }
            }
        }
    }

    /// The executor's own report (hello or state frame): followed when both it and
    /// the supervisor say live and they differ (it applied a Redis pause, say).
    fn reported(
        &mut self,
        status: Status,
        reason: Option<String>,
        command_id: Option<Uuid>,
        out: &mut Vec<Effect>,
    ) {
        let current = self.status();
        if status.is_live() && current.is_live() && status != current {
            let to = State::live(status, self.state.since());
            self.go(to, reason, None, command_id, out);
        }
    }

    /// The reconciler's last word on pause: a live executor whose paused/running
    /// state differs from what operators asked for is asked again, once a second.
    fn reconcile(&mut self, ctx: &Ctx, out: &mut Vec<Effect>) {
        if !ctx.process || !ctx.linked || self.backoff_until().is_some() {
            return;
        }
        let kind = match (self.status(), self.desired) {
            (Status::Running, DesiredState::Paused) => ExecutorCommandKind::Pause,
            (Status::Paused, DesiredState::Running) => ExecutorCommandKind::Resume,
            _ => return,
        };
        out.push(info(&format!(
            "bringing the executor back to the desired state (status {}, desired {})",
            self.status(),
            self.desired.as_str()
        )));
        self.request(kind, ctx.fresh_id, None, out);
    }

    // ------------------------------------------------------------ exits

    /// The executor exited without being asked to.
    fn exited(&mut self, exit: ExitInfo, tail: &str, ctx: &Ctx, out: &mut Vec<Effect>) {
        let halted = self.halt_reason.take().or_else(|| {
            (exit == ExitInfo::Code(EXIT_HALTED) || exit == ExitInfo::Unknown)
                .then(|| tail.rsplit_once("halted: ").map(|(_, r)| r.to_string()))
                .flatten()
        });
        if let Some(reason) = halted {
            let message = format!("halted by the strategy: {reason}");
            out.push(Effect::Log {
                level: tracing::Level::WARN,
                message: format!("{message} ({exit})"),
            });
            self.go(
                State::Error,
                Some("halted".into()),
                Some(message),
                None,
                out,
            );
            return;
        }
        if exit == ExitInfo::Code(EXIT_BAD_CONFIG) {
            let message = describe_exit("the executor exited", exit, tail);
            self.go(State::Error, None, Some(message), None, out);
            return;
        }
        if let ExitInfo::OutOfMemory { .. } = exit {
            // The kernel's kill at the memory limit: said plainly, a crash otherwise.
            self.crashed(exit.to_string(), Some(OOM_REASON), ctx, out);
            return;
        }
        let message = describe_exit("the executor exited without being asked", exit, tail);
        self.crashed(message, None, ctx, out);
    }

    /// Count a crash and schedule a restart, or give up. `why`: the event's reason
    /// when it is not the plain crash's (`oom`).
    fn crashed(&mut self, message: String, why: Option<&str>, ctx: &Ctx, out: &mut Vec<Effect>) {
        let policy = &ctx.policy;
        let stable = self
            .state
            .since()
            .is_some_and(|since| ctx.now.saturating_duration_since(since) >= policy.stable_after);
        if stable {
            self.consecutive_crashes = 0;
        }
        self.consecutive_crashes += 1;
        if self.consecutive_crashes >= policy.max_crashes {
            let message = format!(
                "gave up after {} consecutive crashes; last: {message}",
                self.consecutive_crashes
            );
            out.push(Effect::Log {
                level: tracing::Level::ERROR,
                message: message.clone(),
            });
            let reason = Some("crash loop".to_string());
            self.go(State::Error, reason, Some(message), None, out);
            return;
        }
        let delay = policy.jittered_delay(self.consecutive_crashes, ctx.jitter);
        out.push(Effect::CountRestart);
        let restarting = format!("crashed; restarting in {:.1}s", delay.as_secs_f64());
        out.push(Effect::Log {
            level: tracing::Level::WARN,
            message: format!("{restarting}: {message}"),
        });
        let reason = why.map_or(restarting, str::to_string);
        let until = Some(ctx.now + delay);
        self.go(
            State::Backoff { until },
            Some(reason),
            Some(message),
            None,
            out,
        );
    }

    fn shutdown(&mut self, ctx: &Ctx, out: &mut Vec<Effect>) {
        if ctx.stop_on_exit && ctx.process {
            out.push(info(
                "stopping the strategy because the manager exits (--stop-strategies-on-exit)",
            ));
            let reason = ShutdownReason::HostShutdown;
            let then = (None, AfterStop::Nothing);
            self.stop(
                DEFAULT_STOP_TIMEOUT,
                StopMode::Leave,
                reason,
                then,
                ctx,
                out,
            );
        }
    }
}

/// Whether a global command concerns a strategy in `status`.
fn applies_globally(kind: &CommandKind, status: Status) -> bool {
    match kind {
        CommandKind::Stop { .. } => !matches!(status, Status::Stopped | Status::Error),
        CommandKind::Pause => status == Status::Running,
        CommandKind::Resume => status == Status::Paused,
        // A draining node hands every strategy over, whatever its state.
        CommandKind::Drain { .. } => true,
        _ => false,
    }
}

fn reply(result: Result<(), CommandError>) -> Effect {
    Effect::Reply(match result {
        Ok(()) => Outcome::Done,
        Err(err) => Outcome::Failed(err),
    })
}

fn info(message: &str) -> Effect {
    Effect::Log {
        level: tracing::Level::INFO,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests;
