//! One [`StrategySupervisor`] task per strategy: it owns that strategy's executor
//! process and control link, applies the strategy's commands one at a time in order,
//! notices an exit the moment it happens, restarts crashes with backoff, and records
//! every transition (database row, `strategy:status:{id}`, `strategy:state:{id}`).

use crate::config::RestartPolicy;
use crate::link::ControlLink;
use crate::process::{ExecutorProcess, ExitInfo, SpawnSpec};
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::control::{ExecutorMessage, ManagerMessage, EXIT_BAD_CONFIG, EXIT_HALTED};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind, StatusMessage};
use engine_protocol::{ShutdownReason, Status, StopMode};
use engine_store::commands::CommandKind;
use engine_store::manager::{self as db, ObservedState};
use engine_store::DesiredState;
use rustix::process::Signal;
use serde_json::Value;
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

/// How a command ended for one strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// A global command that did not apply to this strategy's state.
    NotApplicable,
    Failed(String),
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
    pub tx: mpsc::Sender<SupervisorCommand>,
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
}

pub struct StrategySupervisor {
    shared: Arc<Shared>,
    id: Uuid,
    name: String,
    strategy_type: String,
    config: Value,
    status: Status,
    observed: ObservedState,
    proc: Option<ExecutorProcess>,
    link: Option<ControlLink>,
    link_rx: mpsc::Receiver<ControlLink>,
    inbox: mpsc::Receiver<SupervisorCommand>,
    consecutive_crashes: u32,
    running_since: Option<Instant>,
    backoff_until: Option<Instant>,
    halt_reason: Option<String>,
    db_dirty: bool,
    /// What operators asked for, kept here too: re-applied after a crash restart and
    /// written again if the database was away when it changed.
    desired: DesiredState,
    operator_stopped: bool,
    desired_dirty: bool,
    /// Outcomes of commands applied while `desired_state` could not be written: a
    /// command is `executed` only once what it asked for is durable, so they wait
    /// for that write (if the manager dies first, the rows stay `processing` and the
    /// next manager applies them again).
    held_replies: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// Transitions not in `strategy_events` yet (the database was away), oldest
    /// first, at most [`MAX_PENDING_EVENTS`].
    pending_events: Vec<db::TransitionEvent>,
    events_dropped: u64,
    policy: RestartPolicy,
}

/// How many unwritten transitions a supervisor keeps through an outage (a crash
/// loop makes four a restart); past it the oldest go, and the loss is logged.
const MAX_PENDING_EVENTS: usize = 512;

/// How long one database write may hold up a supervisor: past it the write is
/// retried every second, and the supervisor goes on serving its executor.
const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a start did not reach `running`.
struct StartFailure {
    message: String,
    exit: Option<ExitInfo>,
}

impl StartFailure {
    /// An exit that restarting cannot fix (bad config, unknown type, halted).
    fn is_permanent(&self) -> bool {
        matches!(self.exit, Some(ExitInfo::Code(c)) if c == EXIT_BAD_CONFIG || c == EXIT_HALTED)
            || self.exit.is_none()
    }
}

impl StrategySupervisor {
    /// Start the supervisor task for `row`.
    pub fn spawn(shared: Arc<Shared>, row: db::StrategyRow, initial: Initial) -> SupervisorHandle {
        let (tx, inbox) = mpsc::channel(1024);
        let (link_tx, link_rx) = mpsc::channel(4);
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
        let operator_stopped = row.operator_stopped;
        let row_policy = row.restart_policy.clone();
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
            status,
            observed,
            proc: None,
            link: None,
            link_rx,
            inbox,
            consecutive_crashes: 0,
            running_since: None,
            backoff_until: None,
            halt_reason: None,
            db_dirty: false,
            desired,
            operator_stopped,
            desired_dirty: false,
            held_replies: Vec::new(),
            pending_events: Vec::new(),
            events_dropped: 0,
            policy: shared.policy,
        };
        supervisor.apply_restart_policy(row_policy.as_ref());
        shared
            .tracker
            .spawn(supervisor.run(initial).instrument(span));
        SupervisorHandle { tx }
    }

    async fn run(mut self, initial: Initial) {
        self.publish_live();
        self.begin(initial).await;
        let cancel = self.shared.cancel.clone();
        let mut db_retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                exit = wait_exit(&mut self.proc) => self.on_exit(exit).await,
                link = self.link_rx.recv() => {
                    if let Some(link) = link {
                        self.accept_link(link).await;
                    }
                }
                frame = next_frame(&mut self.link) => self.on_frame(frame).await,
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                _ = sleep_until(self.backoff_until) => self.restart_after_backoff().await,
                _ = db_retry.tick() => {
                    if self.desired_dirty {
                        self.write_desired().await;
                    }
                    if self.db_dirty {
                        self.write_observed().await;
                    }
                    self.reconcile_pause().await;
                }
            }
        }
        self.on_manager_exit().await;
    }

    // ---------------------------------------------------------------- start-up

    async fn begin(&mut self, initial: Initial) {
        match initial {
            Initial::Idle => {
                // Nothing runs: make the row say so (it may hold a dead pid).
                let stale = self.observed.pid.is_some();
                self.forget_process();
                if !matches!(self.status, Status::Error | Status::Stopped) {
                    self.transition(
                        Status::Stopped,
                        Some("not running at manager start"),
                        None,
                        None,
                    )
                    .await;
                } else if stale {
                    let status = self.status;
                    self.transition(status, None, None, None).await;
                }
            }
            Initial::Adopt(proc, desired) => {
                tracing::info!(pid = proc.pid, "adopted a running executor");
                self.observed.pid = Some(proc.pid);
                self.observed.pid_start_ticks = Some(proc.start_ticks);
                self.observed.pid_boot_id = Some(self.shared.boot_id.clone());
                self.proc = Some(*proc);
                self.running_since = Some(Instant::now());
                let status = match self.status {
                    Status::Paused => Status::Paused,
                    _ => Status::Running,
                };
                self.transition(status, Some("adopted"), None, None).await;
                match desired {
                    DesiredState::Stopped => {
                        let _ = self
                            .stop(
                                engine_store::commands::DEFAULT_STOP_TIMEOUT,
                                StopMode::Leave,
                                ShutdownReason::Stop,
                                None,
                            )
                            .await;
                    }
                    DesiredState::Paused if status == Status::Running => {
                        let _ = self
                            .request(ExecutorCommandKind::Pause, None, Uuid::new_v4())
                            .await;
                    }
                    DesiredState::Running if status == Status::Paused => {
                        let _ = self
                            .request(ExecutorCommandKind::Resume, None, Uuid::new_v4())
                            .await;
                    }
                    _ => {}
                }
            }
            Initial::Start(desired) => {
                let paused = desired == DesiredState::Paused;
                if let Err(failure) = self.start(None, "starting at manager start", paused).await {
                    self.after_failed_start(failure, None).await;
                }
            }
        }
    }

    // ---------------------------------------------------------------- commands

    async fn on_command(&mut self, cmd: SupervisorCommand) {
        let span =
            tracing::info_span!("command", command_id = %cmd.command_id, command = cmd.kind.word());
        let outcome = self.apply(&cmd).instrument(span).await;
        match &outcome {
            Outcome::Failed(e) => {
                tracing::warn!(command_id = %cmd.command_id, command = cmd.kind.word(), error = %e, "command failed")
            }
            Outcome::Done => {
                tracing::info!(command_id = %cmd.command_id, command = cmd.kind.word(), "command executed")
            }
            Outcome::NotApplicable => {}
        }
        if self.desired_dirty {
            tracing::info!(command_id = %cmd.command_id, "the outcome waits until desired_state is recorded");
            self.held_replies.push((cmd.reply, outcome));
        } else {
            let _ = cmd.reply.send(outcome);
        }
    }

    async fn apply(&mut self, cmd: &SupervisorCommand) -> Outcome {
        let id = Some(cmd.command_id);
        if cmd.superseded {
            tracing::info!(
                "applied by the previous manager, and later commands since: not applied again"
            );
            return Outcome::Done;
        }
        if cmd.global {
            let applies = match cmd.kind {
                CommandKind::Stop { .. } => !matches!(self.status, Status::Stopped | Status::Error),
                CommandKind::Pause => self.status == Status::Running,
                CommandKind::Resume => self.status == Status::Paused,
                _ => false,
            };
            if !applies {
                return Outcome::NotApplicable;
            }
        }
        let result = match &cmd.kind {
            CommandKind::Start => {
                if self.status.is_live() || (self.status == Status::Starting && self.proc.is_some())
                {
                    return Outcome::Done;
                }
                self.set_desired(DesiredState::Running, false).await;
                self.operator_start(id).await
            }
            CommandKind::Stop { timeout, mode } => {
                self.set_desired(DesiredState::Stopped, true).await;
                self.stop(*timeout, *mode, ShutdownReason::Stop, id).await
            }
            CommandKind::Restart { timeout, mode } => {
                if let (Some(since), Some(started)) = (cmd.recovered_from, self.observed.started_at)
                {
                    if started > since && self.status.is_live() {
                        // The previous manager got as far as the new start.
                        return Outcome::Done;
                    }
                }
                self.set_desired(DesiredState::Running, false).await;
                match self
                    .stop(*timeout, *mode, ShutdownReason::Restart, id)
                    .await
                {
                    Ok(()) => self.operator_start(id).await,
                    Err(e) => Err(e),
                }
            }
            CommandKind::Pause => match self.status {
                Status::Paused => {
                    self.set_desired(DesiredState::Paused, false).await;
                    Ok(())
                }
                Status::Running => {
                    // desired_state first (a manager that dies after the effect must
                    // not undo it at adoption), and back if the pause fails, so a
                    // failed pause leaves status and desired_state agreeing.
                    let before = (self.desired, self.operator_stopped);
                    self.set_desired(DesiredState::Paused, false).await;
                    let done = self
                        .request(ExecutorCommandKind::Pause, None, cmd.command_id)
                        .await;
                    if done.is_err() {
                        self.set_desired(before.0, before.1).await;
                    }
                    done
                }
                other => Err(format!(
                    "cannot pause: the strategy is {other}, not running; start it first"
                )),
            },
            CommandKind::Resume => match self.status {
                Status::Running => {
                    self.set_desired(DesiredState::Running, false).await;
                    Ok(())
                }
                Status::Paused => {
                    let before = (self.desired, self.operator_stopped);
                    self.set_desired(DesiredState::Running, false).await;
                    let done = self
                        .request(ExecutorCommandKind::Resume, None, cmd.command_id)
                        .await;
                    if done.is_err() {
                        self.set_desired(before.0, before.1).await;
                    }
                    done
                }
                other => Err(format!(
                    "cannot resume: the strategy is {other}, not running; start it instead"
                )),
            },
            CommandKind::Update { patch } => self.update(patch, cmd.command_id).await,
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// An operator's start: resets the restart count; a failure ends in `error`.
    async fn operator_start(&mut self, command_id: Option<Uuid>) -> Result<(), String> {
        self.observed.restart_count = 0;
        self.consecutive_crashes = 0;
        self.observed.last_error = None;
        match self
            .start(command_id, "started by an operator", false)
            .await
        {
            Ok(()) => Ok(()),
            Err(failure) if self.shared.cancel.is_cancelled() => Err(failure.message),
            Err(failure) if failure.is_permanent() => {
                let message = failure.message.clone();
                self.transition(Status::Error, None, Some(message.clone()), command_id)
                    .await;
                Err(message)
            }
            Err(failure) => {
                // Killed or crashed in its start-up: a crash like any other, restarted
                // with backoff; the command says it did not take.
                let message = failure.message.clone();
                self.crashed(message.clone()).await;
                Err(format!("{message}; an automatic restart is scheduled"))
            }
        }
    }

    async fn update(&mut self, patch: &Value, command_id: Uuid) -> Result<(), String> {
        if !self.status.is_live() {
            self.reload_definition().await;
        }
        let mut merged = self.config.clone();
        json_patch::merge(&mut merged, patch);
        if !merged.is_object() {
            return Err("the merged config is not a JSON object".to_string());
        }
        if self.proc.is_some() && self.status.is_live() {
            self.request(
                ExecutorCommandKind::UpdateConfig,
                Some(merged.clone()),
                command_id,
            )
            .await
            .map_err(|e| {
                format!("the strategy rejected the new config, which was not stored: {e}")
            })?;
        } else {
            self.validate_offline(&merged).await?;
        }
        db::write_config(&self.shared.pool, self.id, &merged)
            .await
            .map_err(|e| format!("the config was accepted but could not be stored: {e}"))?;
        self.config = merged;
        // The history says when the config changed, and a recovered update can tell
        // that a later one has been applied since (`db::superseded_recovered`).
        self.record_event("config updated", command_id).await;
        Ok(())
    }

    /// An event that is not a transition (the status stays), e.g. a config change.
    async fn record_event(&mut self, reason: &str, command_id: Uuid) {
        self.push_event(db::TransitionEvent {
            event_id: Uuid::new_v4(),
            at: Utc::now(),
            old_status: self.status,
            new_status: self.status,
            reason: Some(reason.to_string()),
            error: None,
            command_id: Some(command_id),
            pid: self.observed.pid,
        });
        self.record().await;
    }

    /// Operators may edit `strategy_configs` directly: start from what the row says
    /// now (keeping what we had if the database cannot be read).
    async fn reload_definition(&mut self) {
        let load = db::load_strategy(&self.shared.pool, self.id);
        let loaded = match tokio::time::timeout(DB_WRITE_TIMEOUT, load).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        match loaded {
            Ok(Some(row)) => {
                self.name = row.name;
                self.strategy_type = row.strategy_type;
                self.config = row.config;
                self.apply_restart_policy(row.restart_policy.as_ref());
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "could not reload the strategy's row; using the last known config")
            }
        }
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

    /// Ask the executor binary whether it accepts `config` (`--validate`).
    async fn validate_offline(&self, config: &Value) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let path = &self.shared.executor_path;
        if !path.is_file() {
            return Err(format!(
                "cannot check the config: executor binary not found at {}; set --executor-path",
                path.display()
            ));
        }
        let mut child = tokio::process::Command::new(path)
            .arg("--validate")
            .arg("--strategy-type")
            .arg(&self.strategy_type)
            .arg("--config-file")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {} --validate: {e}", path.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin
                .write_all(&serde_json::to_vec(config).unwrap_or_default())
                .await;
        }
        let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .map_err(|_| "config validation timed out after 10s".to_string())?
            .map_err(|e| format!("config validation failed to run: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&output.stderr);
            let text = text.trim().trim_start_matches("error: ");
            Err(format!(
                "the strategy rejected the new config, which was not stored: {text}"
            ))
        }
    }

    // ---------------------------------------------------------------- start / stop

    fn spawn_spec_paths(&self) -> std::path::PathBuf {
        self.shared
            .config
            .logs_dir()
            .join(engine_protocol::state_dir::log_file_name(
                &self.name, self.id,
            ))
    }

    /// Spawn an executor and wait until its strategy is initialised; with `paused`
    /// it comes up paused (`--start-paused`) and the status goes straight to `paused`.
    async fn start(
        &mut self,
        command_id: Option<Uuid>,
        reason: &str,
        paused: bool,
    ) -> Result<(), StartFailure> {
        self.backoff_until = None;
        self.reload_definition().await;
        self.halt_reason = None;
        self.link = None;
        let log_path = self.spawn_spec_paths();
        let control_socket = self.shared.config.control_socket_path();
        let spec = SpawnSpec {
            executor_path: &self.shared.executor_path,
            strategy_id: self.id,
            name: &self.name,
            strategy_type: &self.strategy_type,
            config: &self.config,
            control_socket: &control_socket,
            redis_url: &self.shared.config.redis_url,
            redis_prefix: &self.shared.config.redis_prefix,
            metrics_interval: self.shared.config.metrics_interval,
            log_path: &log_path,
            start_paused: paused,
        };
        let proc = match ExecutorProcess::spawn(&spec).await {
            Ok(p) => p,
            Err(e) => {
                return Err(StartFailure {
                    message: format!("{e:#}").replace('\n', " "),
                    exit: None,
                })
            }
        };
        tracing::info!(pid = proc.pid, "executor spawned");
        self.observed.pid = Some(proc.pid);
        self.observed.pid_start_ticks = Some(proc.start_ticks);
        self.observed.pid_boot_id = Some(self.shared.boot_id.clone());
        self.proc = Some(proc);
        // The spawn's time, recorded with `starting`: a manager killed before
        // `running` leaves the next one able to tell that a recovered restart
        // already got this far (see `apply`).
        self.observed.started_at = Some(Utc::now());
        self.transition(Status::Starting, Some(reason), None, command_id)
            .await;

        let deadline = Instant::now() + self.shared.config.start_timeout;
        let reported = loop {
            tokio::select! {
                exit = wait_exit(&mut self.proc) => {
                    let tail = self.proc.as_ref().map(|p| p.log_tail(5)).unwrap_or_default();
                    self.forget_process();
                    let message = describe_exit("the executor exited during start-up", exit, &tail);
                    return Err(StartFailure { message, exit: Some(exit) });
                }
                link = self.link_rx.recv() => {
                    if let Some(link) = link {
                        let hello = link.hello_status;
                        self.accept_link(link).await;
                        if hello.is_live() && self.link.is_some() {
                            break hello;
                        }
                    }
                }
                frame = next_frame(&mut self.link) => match frame {
                    Some(ExecutorMessage::State { status, .. }) if status.is_live() => break status,
                    Some(ExecutorMessage::Halted { reason }) => self.halt_reason = Some(reason),
                    Some(_) => {}
                    None => self.link = None,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let secs = self.shared.config.start_timeout.as_secs_f64();
                    self.kill_and_reap(Duration::from_secs(5)).await;
                    return Err(StartFailure {
                        message: format!(
                            "the executor did not finish initialising within {secs}s (start timeout) and was killed"
                        ),
                        // Our own kill, not a crash: a strategy that hangs in set-up is
                        // not restarted into the same hang.
                        exit: None,
                    });
                }
                _ = self.shared.cancel.cancelled() => {
                    return Err(StartFailure { message: "the manager is shutting down".into(), exit: None });
                }
            }
        };
        self.running_since = Some(Instant::now());
        let status = if reported == Status::Paused {
            Status::Paused
        } else {
            Status::Running
        };
        self.transition(status, None, None, command_id).await;
        Ok(())
    }

    /// Stop the executor: shutdown message, then SIGTERM at half the grace period,
    /// then SIGKILL when it is over.
    async fn stop(
        &mut self,
        timeout: Duration,
        mode: StopMode,
        reason: ShutdownReason,
        command_id: Option<Uuid>,
    ) -> Result<(), String> {
        self.backoff_until = None;
        if self.proc.is_none() {
            self.link = None;
            self.transition(
                Status::Stopped,
                Some("stopped by an operator"),
                None,
                command_id,
            )
            .await;
            return Ok(());
        }
        self.transition(Status::Stopping, Some(reason.as_str()), None, command_id)
            .await;
        let cmd = self.executor_command(
            ExecutorCommandKind::Shutdown,
            None,
            command_id.unwrap_or_else(Uuid::new_v4),
        );
        let cmd = ExecutorCommand {
            mode: Some(mode),
            reason: Some(reason.as_str().to_string()),
            ..cmd
        };
        self.send_to_executor(cmd).await;
        let started = Instant::now();
        let term_at = started + timeout / 2;
        let kill_at = started + timeout;
        let mut stage = 0;
        let exit = loop {
            let next_deadline = if stage == 0 { term_at } else { kill_at };
            tokio::select! {
                exit = wait_exit(&mut self.proc) => break Some(exit),
                frame = next_frame(&mut self.link) => {
                    if frame.is_none() {
                        self.link = None;
                    }
                }
                link = self.link_rx.recv() => {
                    // A late (re)connection: nothing to tell it but to stop.
                    drop(link);
                }
                _ = tokio::time::sleep_until(next_deadline) => {
                    if let Some(p) = &self.proc {
                        if stage == 0 {
                            tracing::warn!(pid = p.pid, "executor still running after the shutdown message; sending SIGTERM");
                            p.signal(Signal::TERM);
                            stage = 1;
                        } else {
                            tracing::warn!(pid = p.pid, "executor ignored SIGTERM; sending SIGKILL");
                            p.signal(Signal::KILL);
                            match tokio::time::timeout(Duration::from_secs(5), wait_exit(&mut self.proc)).await {
                                Ok(exit) => break Some(exit),
                                Err(_) => break None,
                            }
                        }
                    }
                }
            }
        };
        match exit {
            Some(exit) => {
                tracing::info!(%exit, "executor stopped");
                self.forget_process();
                self.running_since = None;
                self.transition(Status::Stopped, Some(reason.as_str()), None, command_id)
                    .await;
                Ok(())
            }
            None => {
                let pid = self.proc.as_ref().map(|p| p.pid).unwrap_or_default();
                Err(format!(
                    "the executor (pid {pid}) survived SIGKILL; it may be stuck in the kernel"
                ))
            }
        }
    }

    async fn kill_and_reap(&mut self, wait: Duration) {
        if let Some(p) = &self.proc {
            p.signal(Signal::KILL);
        }
        let _ = tokio::time::timeout(wait, wait_exit(&mut self.proc)).await;
        self.forget_process();
    }

    fn forget_process(&mut self) {
        self.proc = None;
        self.link = None;
        self.observed.pid = None;
        self.observed.pid_start_ticks = None;
        self.observed.pid_boot_id = None;
    }

    // ---------------------------------------------------------------- requests

    fn executor_command(
        &self,
        command: ExecutorCommandKind,
        config: Option<Value>,
        command_id: Uuid,
    ) -> ExecutorCommand {
        ExecutorCommand {
            strategy_id: Some(self.id),
            name: self.name.clone(),
            timestamp: Utc::now(),
            command,
            command_id,
            config,
            mode: None,
            reason: None,
            source: None,
        }
    }

    /// Send on the control link (if connected) and on `strategy:commands:{id}`.
    async fn send_to_executor(&mut self, cmd: ExecutorCommand) {
        if let Some(link) = &mut self.link {
            if let Err(err) = link.send(&ManagerMessage::Command(cmd.clone())).await {
                tracing::warn!(error = %err, "control link write failed");
                self.link = None;
            }
        }
        self.shared
            .publisher
            .publish(self.shared.channels.commands(self.id), &cmd);
    }

    /// Pause, resume or update the running executor and wait for its acknowledgement.
    async fn request(
        &mut self,
        kind: ExecutorCommandKind,
        config: Option<Value>,
        command_id: Uuid,
    ) -> Result<(), String> {
        let cmd = self.executor_command(kind, config, command_id);
        let deadline = Instant::now() + self.shared.config.ack_timeout;
        let mut sent_on_link = self.link.is_some();
        self.send_to_executor(cmd.clone()).await;
        sent_on_link &= self.link.is_some();
        loop {
            tokio::select! {
                exit = wait_exit(&mut self.proc) => {
                    self.on_exit(exit).await;
                    return Err(format!("the executor exited before acknowledging ({exit})"));
                }
                link = self.link_rx.recv() => {
                    if let Some(link) = link {
                        self.accept_link(link).await;
                        if !sent_on_link {
                            if let Some(l) = &mut self.link {
                                sent_on_link = l.send(&ManagerMessage::Command(cmd.clone())).await.is_ok();
                            }
                        }
                    }
                }
                frame = next_frame(&mut self.link) => match frame {
                    Some(ExecutorMessage::Ack { command_id: acked, ok, error }) if acked == command_id => {
                        if !ok {
                            return Err(error.unwrap_or_else(|| "rejected without a reason".into()));
                        }
                        match kind {
                            ExecutorCommandKind::Pause => {
                                self.transition(Status::Paused, None, None, Some(command_id)).await
                            }
                            ExecutorCommandKind::Resume => {
                                self.transition(Status::Running, None, None, Some(command_id)).await
                            }
                            _ => {}
                        }
                        return Ok(());
                    }
                    None => {
                        self.link = None;
                        sent_on_link = false;
                    }
                    Some(other) => self.on_frame(Some(other)).await,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let secs = self.shared.config.ack_timeout.as_secs_f64();
                    let why = if self.link.is_some() { "did not answer" } else { "is not connected to the manager's control socket and did not answer" };
                    return Err(format!("the executor {why} within {secs}s"));
                }
            }
        }
    }

    // ---------------------------------------------------------------- events

    async fn accept_link(&mut self, link: ControlLink) {
        match &self.proc {
            Some(p) if p.pid == link.peer_pid => {
                tracing::debug!(pid = p.pid, status = %link.hello_status, "executor connected");
                let hello = link.hello_status;
                self.link = Some(link);
                // An adopted executor tells us whether it is paused.
                if hello.is_live() && self.status.is_live() && hello != self.status {
                    self.transition(hello, Some("reported by the executor"), None, None)
                        .await;
                }
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
            Some(ExecutorMessage::State {
                status,
                reason,
                command_id,
            }) => {
                // The executor applied a command that came over Redis (pause/resume).
                if status.is_live() && self.status.is_live() && status != self.status {
                    self.transition(status, reason.as_deref(), None, command_id)
                        .await;
                }
            }
            Some(ExecutorMessage::Halted { reason }) => self.halt_reason = Some(reason),
            Some(_) => {}
        }
    }

    /// The executor exited without being asked to.
    async fn on_exit(&mut self, exit: ExitInfo) {
        let tail = self
            .proc
            .as_ref()
            .map(|p| p.log_tail(5))
            .unwrap_or_default();
        self.forget_process();
        let halted = self.halt_reason.take().or_else(|| {
            (exit == ExitInfo::Code(EXIT_HALTED) || exit == ExitInfo::Unknown)
                .then(|| tail.rsplit_once("halted: ").map(|(_, r)| r.to_string()))
                .flatten()
        });
        if let Some(reason) = halted {
            let message = format!("halted by the strategy: {reason}");
            tracing::warn!(%exit, "{message}");
            self.transition(Status::Error, Some("halted"), Some(message), None)
                .await;
            return;
        }
        if exit == ExitInfo::Code(EXIT_BAD_CONFIG) {
            let message = describe_exit("the executor exited", exit, &tail);
            self.transition(Status::Error, None, Some(message), None)
                .await;
            return;
        }
        self.crashed(describe_exit(
            "the executor exited without being asked",
            exit,
            &tail,
        ))
        .await;
    }

    /// Count a crash and schedule a restart, or give up.
    async fn crashed(&mut self, message: String) {
        let policy = self.policy;
        if self
            .running_since
            .is_some_and(|since| since.elapsed() >= policy.stable_after)
        {
            self.consecutive_crashes = 0;
        }
        self.running_since = None;
        self.consecutive_crashes += 1;
        if self.consecutive_crashes >= policy.max_crashes {
            let message = format!(
                "gave up after {} consecutive crashes; last: {message}",
                self.consecutive_crashes
            );
            tracing::error!("{message}");
            self.transition(Status::Error, Some("crash loop"), Some(message), None)
                .await;
            return;
        }
        let delay = policy.jittered_delay(self.consecutive_crashes, rand::random::<f64>());
        self.observed.restart_count += 1;
        self.backoff_until = Some(Instant::now() + delay);
        let reason = format!("crashed; restarting in {:.1}s", delay.as_secs_f64());
        tracing::warn!(error = %message, "{reason}");
        self.transition(Status::Backoff, Some(&reason), Some(message), None)
            .await;
    }

    /// The reconciler's last word on pause: a live executor whose paused/running
    /// state differs from what operators asked for (a re-pause after a crash restart
    /// that did not get through, say) is asked again, once a second.
    async fn reconcile_pause(&mut self) {
        if self.proc.is_none() || self.link.is_none() || self.backoff_until.is_some() {
            return;
        }
        let kind = match (self.status, self.desired) {
            (Status::Running, DesiredState::Paused) => ExecutorCommandKind::Pause,
            (Status::Paused, DesiredState::Running) => ExecutorCommandKind::Resume,
            _ => return,
        };
        tracing::info!(status = %self.status, desired = self.desired.as_str(), "bringing the executor back to the desired state");
        let _ = self.request(kind, None, Uuid::new_v4()).await;
    }

    async fn restart_after_backoff(&mut self) {
        self.backoff_until = None;
        // It crashed while paused: it comes back paused, and never trades on the way.
        let paused = self.desired == DesiredState::Paused;
        if let Err(failure) = self
            .start(None, "automatic restart after a crash", paused)
            .await
        {
            self.after_failed_start(failure, None).await;
        }
    }

    async fn after_failed_start(&mut self, failure: StartFailure, command_id: Option<Uuid>) {
        if self.shared.cancel.is_cancelled() {
            return;
        }
        if failure.is_permanent() {
            self.transition(Status::Error, None, Some(failure.message), command_id)
                .await;
        } else {
            self.crashed(failure.message).await;
        }
    }

    async fn on_manager_exit(&mut self) {
        if self.shared.config.stop_strategies_on_exit && self.proc.is_some() {
            tracing::info!(
                "stopping the strategy because the manager exits (--stop-strategies-on-exit)"
            );
            let _ = self
                .stop(
                    engine_store::commands::DEFAULT_STOP_TIMEOUT,
                    StopMode::Leave,
                    ShutdownReason::HostShutdown,
                    None,
                )
                .await;
        }
        self.shared
            .link_routes
            .lock()
            .expect("routes lock")
            .remove(&self.id);
    }

    // ---------------------------------------------------------------- recording

    async fn set_desired(&mut self, desired: DesiredState, operator_stopped: bool) {
        self.desired = desired;
        self.operator_stopped = operator_stopped;
        self.write_desired().await;
    }

    async fn write_desired(&mut self) {
        let write = db::write_desired(
            &self.shared.pool,
            self.id,
            self.desired,
            self.operator_stopped,
        );
        match tokio::time::timeout(DB_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.desired_dirty = false;
                for (reply, outcome) in self.held_replies.drain(..) {
                    let _ = reply.send(outcome);
                }
            }
            Ok(Err(err)) => {
                if !self.desired_dirty {
                    tracing::warn!(error = %err, "could not record desired_state; retrying every second");
                }
                self.desired_dirty = true;
            }
            Err(_) => {
                if !self.desired_dirty {
                    tracing::warn!("could not record desired_state (the database did not answer within 1s); retrying every second");
                }
                self.desired_dirty = true;
            }
        }
    }

    /// Record a transition everywhere: the row, the status channel, the state hash.
    async fn transition(
        &mut self,
        status: Status,
        reason: Option<&str>,
        error: Option<String>,
        command_id: Option<Uuid>,
    ) {
        let previous = self.status;
        self.status = status;
        self.observed.status = status;
        if !matches!(
            status,
            Status::Running | Status::Paused | Status::Starting | Status::Stopping
        ) {
            self.observed.started_at = if status == Status::Backoff {
                self.observed.started_at
            } else {
                None
            };
        }
        if error.is_some() {
            self.observed.last_error = error.clone();
        }
        if previous != status {
            tracing::info!(from = %previous, to = %status, reason, "status");
        }
        if previous != status || reason.is_some() {
            self.push_event(db::TransitionEvent {
                event_id: Uuid::new_v4(),
                at: Utc::now(),
                old_status: previous,
                new_status: status,
                reason: reason.map(str::to_string),
                error: error.clone(),
                command_id,
                pid: self.observed.pid,
            });
        }
        self.record().await;
        let msg = StatusMessage {
            strategy_id: self.id,
            name: self.name.clone(),
            timestamp: Utc::now(),
            status,
            pid: self.observed.pid,
            node: self.shared.node.clone(),
            error,
            reason: reason.map(str::to_string),
            command_id,
            source: Some("manager".to_string()),
        };
        let channels = &self.shared.channels;
        self.shared.publisher.set_state(
            channels.state_key(self.id),
            vec![
                ("strategy_id".into(), self.id.to_string()),
                ("name".into(), self.name.clone()),
                ("status".into(), status.to_string()),
                (
                    "pid".into(),
                    self.observed.pid.map(|p| p.to_string()).unwrap_or_default(),
                ),
                ("node".into(), self.shared.node.clone()),
                (
                    "restart_count".into(),
                    self.observed.restart_count.to_string(),
                ),
                (
                    "last_error".into(),
                    self.observed.last_error.clone().unwrap_or_default(),
                ),
                ("updated_at".into(), msg.timestamp.to_rfc3339()),
                (
                    "status_message".into(),
                    serde_json::to_string(&msg).unwrap_or_default(),
                ),
            ],
        );
        self.shared
            .publisher
            .publish(channels.status(self.id), &msg);
        self.publish_live();
    }

    /// Queue an event for the next write, keeping at most [`MAX_PENDING_EVENTS`].
    fn push_event(&mut self, event: db::TransitionEvent) {
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            self.pending_events.remove(0);
            self.events_dropped += 1;
        }
        self.pending_events.push(event);
    }

    async fn write_observed(&mut self) {
        self.record().await;
    }

    /// Write the observed state and the events not written yet (kept, in order,
    /// until a write succeeds: an outage loses no history).
    async fn record(&mut self) {
        // desired_state goes to the row before any status that follows from it: a
        // row saying `stopped` with a stale `desired_state = running` would make the
        // next manager start the strategy again (and apply its stop twice).
        if self.desired_dirty {
            self.write_desired().await;
            if self.desired_dirty {
                self.db_dirty = true;
                return;
            }
        }
        let write = db::write_observed(
            &self.shared.pool,
            self.id,
            &self.observed,
            &self.pending_events,
            &self.shared.node,
        );
        let result = match tokio::time::timeout(DB_WRITE_TIMEOUT, write).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        match result {
            Ok(()) => {
                if self.db_dirty {
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
                self.pending_events.clear();
                self.db_dirty = false;
            }
            Err(err) => {
                if !self.db_dirty {
                    tracing::warn!(error = %err, "could not record the strategy's state; retrying every second");
                }
                self.db_dirty = true;
            }
        }
    }

    fn publish_live(&self) {
        self.shared.live.lock().expect("live lock").insert(
            self.id,
            LiveEntry {
                name: self.name.clone(),
                status: self.status,
                pid: self.observed.pid,
                started_at: self.observed.started_at,
                restart_count: self.observed.restart_count,
            },
        );
    }
}

fn describe_exit(what: &str, exit: ExitInfo, tail: &str) -> String {
    if tail.is_empty() {
        format!("{what} ({exit})")
    } else {
        format!("{what} ({exit}): {tail}")
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}
