//! The effects that wait: spawn an executor and wait until it is initialised, stop it
//! with grace, ask it to pause/resume/update and wait for its acknowledgement, apply a
//! config patch. Each returns what happened; the machine decides what it means. Frames,
//! connections and exits that arrive meanwhile go to the machine as they come.

use super::error::{RequestError, StartError, StopError, UpdateError, ValidateFailure};
use super::machine::Event;
use super::{next_frame, wait_exit, StrategySupervisor};
use crate::link::ControlLink;
use crate::process::{Confine, ExecutorProcess, SpawnSpec};
use chrono::Utc;
use engine_protocol::control::{ExecutorMessage, ManagerMessage};
use engine_protocol::limits::ResourceLimits;
use engine_protocol::secrets::{Resolved, Scrub};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind, ShutdownReason, StopMode};
use engine_store::manager as db;
use rustix::process::Signal;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How long `--validate` may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// `source` of an announcement the executor must not apply (see `send_to_executor`).
const MANAGER_SOURCE: &str = "manager";

/// `err` with the secret values of `scrub` hidden in the executor's words.
fn scrubbed(err: RequestError, scrub: &Scrub) -> RequestError {
    match err {
        RequestError::Rejected { reason } => RequestError::Rejected {
            reason: reason.map(|r| scrub.scrub(&r)),
        },
        other => other,
    }
}

impl StrategySupervisor {
    /// Spawn an executor (`--start-paused` with `paused`), from the definition the row
    /// has now.
    pub(super) async fn spawn_executor(&mut self, paused: bool) -> Event {
        if let Err(err) = self.wait_for_lease().await {
            return Event::StartFailed(err);
        }
        let owner = self.reload_definition().await;
        if let Some(err) = self.not_owner(owner) {
            self.lost.store(true, std::sync::atomic::Ordering::Release);
            return Event::StartFailed(err);
        }
        self.link = None;
        let log_path =
            self.shared
                .config
                .logs_dir()
                .join(engine_protocol::state_dir::log_file_name(
                    &self.name, self.id,
                ));
        let control_socket = self.shared.config.control_socket_path();
        // Its own Redis user where Redis allows it (crate::redis_users).
        let redis_url = self.shared.redis_users.issue(self.id).await;
        // The config's secret references resolved for this executor's stdin only.
        let resolved = match self.shared.secrets.resolve(&self.config).await {
            Ok(resolved) => resolved,
            Err(err) => return Event::StartFailed(StartError::Secrets(err)),
        };
        self.scrub = resolved.scrub;
        let spec = SpawnSpec {
            executor_path: &self.shared.executor_path,
            strategy_id: self.id,
            name: &self.name,
            strategy_type: &self.strategy_type,
            config: &resolved.config,
            broker_state: self.broker.latest(),
            control_socket: &control_socket,
            redis_url: &redis_url,
            redis_prefix: &self.shared.config.redis_prefix,
            metrics_interval: self.shared.config.metrics_interval,
            log_path: &log_path,
            start_paused: paused,
            interval: self.interval,
            lease: self.lease_grant(),
            lease_epoch: self.lease_epoch,
            node: &self.shared.node,
            confine: Confine {
                limiter: &self.shared.limiter,
                id: self.id,
                limits: crate::limits::stored(&self.limits),
            },
            run_as: self.shared.executor_user.as_ref(),
        };
        let proc = match ExecutorProcess::spawn(&spec).await {
            Ok(p) => p,
            Err(e) => {
                self.shared.redis_users.release(self.id);
                return Event::StartFailed(StartError::Spawn(e));
            }
        };
        tracing::info!(pid = proc.pid, limits = %proc.limits, "executor spawned");
        if let Some(note) = proc.unenforced.clone() {
            tracing::warn!(pid = proc.pid, "{note}");
            self.record_note(db::LIMITS_UNENFORCED, Some(note), None)
                .await;
        }
        self.observed.pid = Some(proc.pid);
        self.observed.pid_start_ticks = Some(proc.start_ticks);
        self.observed.pid_boot_id = Some(self.shared.boot_id.clone());
        self.proc = Some(proc);
        // The spawn's time, recorded with `starting`: a manager killed before
        // `running` leaves the next one able to tell that a recovered restart
        // already got this far.
        self.observed.started_at = Some(Utc::now());
        Event::Spawned
    }

    /// Wait until the spawned executor's strategy is initialised (its hello or a
    /// state frame says running or paused).
    pub(super) async fn await_ready(&mut self) -> Event {
        let deadline = Instant::now() + self.shared.config.start_timeout;
        loop {
            tokio::select! {
                exit = wait_exit(&mut self.proc) => {
                    let tail = self.proc.as_ref().map(|p| p.log_tail(5)).unwrap_or_default();
                    let tail = self.scrub.scrub(&tail);
                    self.forget_process();
                    return Event::StartFailed(StartError::Exited { exit, tail });
                }
                link = self.link_rx.recv() => {
                    if let Some(link) = link {
                        let hello = link.hello_status;
                        self.accept_link(*link).await;
                        if hello.is_live() && self.link.is_some() {
                            return Event::Ready { reported: hello };
                        }
                    }
                }
                frame = next_frame(&mut self.link) => match frame {
                    Some(ExecutorMessage::State { status, .. }) if status.is_live() => {
                        return Event::Ready { reported: status };
                    }
                    Some(ExecutorMessage::Halted { reason }) => self.observe(Event::Halted { reason }).await,
                    Some(frame @ (ExecutorMessage::BrokerState { .. } | ExecutorMessage::Orders { .. })) => self.on_frame(Some(frame)).await,
                    Some(_) => {}
                    None => self.link = None,
                },
                written = in_flight(&mut self.in_flight) => {
                    let landed = self.in_flight.take().expect("the write in flight");
                    self.landed(landed, written);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let secs = self.shared.config.start_timeout.as_secs_f64();
                    self.kill_and_reap(Duration::from_secs(5)).await;
                    // Our own kill, not a crash: a strategy that hangs in set-up is
                    // not restarted into the same hang.
                    return Event::StartFailed(StartError::TimedOut { secs });
                }
                _ = self.shared.cancel.cancelled() => {
                    return Event::StartFailed(StartError::ShuttingDown);
                }
            }
        }
    }

    /// Stop the executor: shutdown message, then SIGTERM at half the grace period,
    /// then SIGKILL when it is over.
    pub(super) async fn shutdown_executor(
        &mut self,
        grace: Duration,
        mode: StopMode,
        reason: ShutdownReason,
        command_id: Uuid,
    ) -> Result<(), StopError> {
        let cmd = ExecutorCommand {
            mode: Some(mode),
            reason: Some(reason.as_str().to_string()),
            ..self.executor_command(ExecutorCommandKind::Shutdown, None, command_id)
        };
        let sent_on_link = self.link.is_some();
        self.send_to_executor(cmd.clone(), None).await;
        let resend = (!(sent_on_link && self.link.is_some())).then_some(&cmd);
        match self.escalate(grace, resend).await {
            Some(exit) => {
                tracing::info!(%exit, "executor stopped");
                self.forget_process();
                Ok(())
            }
            None => Err(StopError::SurvivedKill {
                pid: self.proc.as_ref().map(|p| p.pid).unwrap_or_default(),
            }),
        }
    }

    /// Wait for the exit; SIGTERM at half `grace`, SIGKILL at its end (`None`: it
    /// survived even that for 5 s). `resend`: the shutdown did not go over a control
    /// link (none was up: an executor still reconnecting to a restarted manager, with
    /// Redis perhaps away too), so it goes over the link as soon as one comes up,
    /// rather than waiting for the SIGTERM.
    async fn escalate(
        &mut self,
        grace: Duration,
        mut resend: Option<&ExecutorCommand>,
    ) -> Option<crate::process::ExitInfo> {
        let started = Instant::now();
        let term_at = started + grace / 2;
        let kill_at = started + grace;
        let mut termed = false;
        loop {
            let next_deadline = if termed { kill_at } else { term_at };
            tokio::select! {
                exit = wait_exit(&mut self.proc) => return Some(exit),
                frame = next_frame(&mut self.link) => match frame {
                    // Its last report, on its way out: what the next executor gets.
                    Some(frame @ (ExecutorMessage::BrokerState { .. } | ExecutorMessage::Orders { .. })) => self.on_frame(Some(frame)).await,
                    Some(_) => {}
                    None => self.link = None,
                },
                link = self.link_rx.recv() => {
                    // A late (re)connection: nothing to tell it but to stop.
                    let ours = |l: &ControlLink| self.proc.as_ref().is_some_and(|p| p.pid == l.peer_pid);
                    if let (Some(mut link), Some(cmd)) = (link.filter(|l| ours(l)), resend) {
                        if link.send(&ManagerMessage::Command(cmd.clone())).await.is_ok() {
                            tracing::info!("the executor connected while stopping; shutdown sent");
                            resend = None;
                            self.link = Some(*link);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_deadline) => {
                    if let Some(p) = &self.proc {
                        if !termed {
                            tracing::warn!(pid = p.pid, "executor still running after the shutdown message; sending SIGTERM");
                            p.signal(Signal::TERM);
                            termed = true;
                        } else {
                            tracing::warn!(pid = p.pid, "executor ignored SIGTERM; sending SIGKILL");
                            p.signal(Signal::KILL);
                            let wait = tokio::time::timeout(Duration::from_secs(5), wait_exit(&mut self.proc));
                            return wait.await.ok();
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn kill_and_reap(&mut self, wait: Duration) {
        if let Some(p) = &self.proc {
            p.signal(Signal::KILL);
        }
        let _ = tokio::time::timeout(wait, wait_exit(&mut self.proc)).await;
        self.forget_process();
    }

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

    /// Send on the control link (if connected) and announce on
    /// `strategy:commands:{id}`. An `update_config` is announced with `stored`, the
    /// config as stored, masked ([`engine_protocol::secrets::mask`]): never with the
    /// resolved secrets the link carries. When the two differ the announcement says
    /// `source: manager`, and an executor does not apply it (the link brings the
    /// config it must get, or the request resends it when the link comes up).
    async fn send_to_executor(&mut self, cmd: ExecutorCommand, stored: Option<&Value>) {
        if let Some(link) = &mut self.link {
            if let Err(err) = link.send(&ManagerMessage::Command(cmd.clone())).await {
                tracing::warn!(error = %super::error::render(&err), "control link write failed");
                self.link = None;
            }
        }
        let mut announced = cmd;
        if let Some(stored) = stored {
            let shown = engine_protocol::secrets::mask(stored);
            if announced.config.as_ref() != Some(&shown) {
                announced.source = Some(MANAGER_SOURCE.to_string());
            }
            announced.config = Some(shown);
        }
        self.shared
            .publisher
            .publish(self.shared.channels.commands(self.id), &announced);
    }

    /// Pause, resume or update the running executor and wait for its acknowledgement.
    /// An update carries `config`, the config the executor gets (secrets resolved),
    /// and `stored`, the one announced on Redis.
    pub(super) async fn request(
        &mut self,
        kind: ExecutorCommandKind,
        config: Option<(Value, &Value)>,
        command_id: Uuid,
    ) -> Result<(), RequestError> {
        let (config, stored) = config.unzip();
        let cmd = self.executor_command(kind, config, command_id);
        let deadline = Instant::now() + self.shared.config.ack_timeout;
        let mut sent_on_link = self.link.is_some();
        self.send_to_executor(cmd.clone(), stored).await;
        sent_on_link &= self.link.is_some();
        loop {
            tokio::select! {
                exit = wait_exit(&mut self.proc) => {
                    let event = self.exit_event(exit);
                    self.observe(event).await;
                    return Err(RequestError::ExitedBeforeAck { exit });
                }
                link = self.link_rx.recv() => {
                    if let Some(link) = link {
                        self.accept_link(*link).await;
                        if !sent_on_link {
                            if let Some(l) = &mut self.link {
                                sent_on_link = l.send(&ManagerMessage::Command(cmd.clone())).await.is_ok();
                            }
                        }
                    }
                }
                frame = next_frame(&mut self.link) => match frame {
                    Some(ExecutorMessage::Ack { command_id: acked, ok, error }) if acked == command_id => {
                        return if ok { Ok(()) } else { Err(RequestError::Rejected { reason: error }) };
                    }
                    None => {
                        self.link = None;
                        sent_on_link = false;
                    }
                    other => self.on_frame(other).await,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let secs = self.shared.config.ack_timeout.as_secs_f64();
                    return Err(RequestError::NoAnswer { secs, linked: self.link.is_some() });
                }
            }
        }
    }

    /// Merge `patch` into the config, have it accepted (by the running executor when
    /// `online`, else by `--validate`), store it, and record the change; then merge
    /// `limits` into the limits, apply them to the running executor's group and
    /// store them.
    pub(super) async fn update(
        &mut self,
        patch: &Value,
        limits: Option<&Value>,
        command_id: Uuid,
        online: bool,
    ) -> Result<(), UpdateError> {
        if !self.machine.status().is_live() {
            self.reload_definition().await;
        }
        // Only limits: the config is left alone (no round trip to the executor).
        if limits.is_none() || patch.as_object().is_none_or(|p| !p.is_empty()) {
            self.update_config(patch, command_id, online).await?;
        }
        if let Some(limits) = limits {
            self.update_limits(limits, command_id).await?;
        }
        Ok(())
    }

    /// Merge `patch` into `limits`, put them in force on the running executor (its
    /// group's files, its rlimits), store them and record the change.
    async fn update_limits(&mut self, patch: &Value, command_id: Uuid) -> Result<(), UpdateError> {
        let mut merged = self.limits.clone();
        json_patch::merge(&mut merged, patch);
        let limits = ResourceLimits::from_value(&merged).map_err(UpdateError::BadLimits)?;
        if let Some(proc) = self.proc.as_mut() {
            let (limiter, id, pid) = (self.shared.limiter.clone(), self.id, proc.pid);
            let mut group = proc.group.take();
            let (group, applied) = crate::tasks::blocking(move || {
                let applied = limiter.update(&mut group, &id.to_string(), pid, &limits);
                (group, applied)
            })
            .await;
            proc.group = group;
            let note = applied.map_err(|source| UpdateError::LimitsNotApplied { source })?;
            proc.limits = limits;
            if let Some(note) = note {
                tracing::warn!(pid, "{note}");
                self.record_note(db::LIMITS_UNENFORCED, Some(note), Some(command_id))
                    .await;
            }
        }
        db::write_limits(&self.shared.pool, self.id, &merged, self.fence_epoch())
            .await
            .map_err(UpdateError::Store)?;
        self.limits = merged;
        self.publish_live();
        tracing::info!(%limits, "limits updated");
        self.record_event(db::LIMITS_UPDATED, Some(command_id))
            .await;
        Ok(())
    }

    async fn update_config(
        &mut self,
        patch: &Value,
        command_id: Uuid,
        online: bool,
    ) -> Result<(), UpdateError> {
        let mut merged = self.config.clone();
        json_patch::merge(&mut merged, patch);
        if !merged.is_object() {
            return Err(UpdateError::NotAnObject);
        }
        let (bytes, limit) = (
            engine_store::limits::json_text_len(&merged),
            engine_store::limits::MAX_INPUT_BYTES,
        );
        if bytes > limit {
            return Err(UpdateError::TooLarge { bytes, limit });
        }
        // Checked and handed over with its secret references resolved; stored and
        // announced as it is.
        let resolved = self
            .shared
            .secrets
            .resolve(&merged)
            .await
            .map_err(UpdateError::Secrets)?;
        if online {
            self.request(
                ExecutorCommandKind::UpdateConfig,
                Some((resolved.config, &merged)),
                command_id,
            )
            .await
            .map_err(|err| UpdateError::ExecutorRefused(scrubbed(err, &resolved.scrub)))?;
        } else {
            self.validate_offline(&resolved).await?;
        }
        db::write_config(&self.shared.pool, self.id, &merged, self.fence_epoch())
            .await
            .map_err(UpdateError::Store)?;
        self.config = merged;
        if online {
            // The running executor holds these secrets now.
            self.scrub = resolved.scrub;
        }
        // The history says when the config changed, and a recovered update can tell
        // that a later one has been applied since (`db::superseded_recovered`).
        self.record_event(db::CONFIG_UPDATED, Some(command_id))
            .await;
        Ok(())
    }

    /// Ask the executor binary whether it accepts `resolved` (`--validate`).
    async fn validate_offline(&self, resolved: &Resolved) -> Result<(), UpdateError> {
        let path = &self.shared.executor_path;
        if !path.is_file() {
            return Err(UpdateError::ExecutorMissing { path: path.clone() });
        }
        let verdict = engine_protocol::validate::validate_config_as(
            path,
            &self.strategy_type,
            &resolved.config,
            VALIDATE_TIMEOUT,
            self.shared.executor_user.as_ref(),
        )
        .await
        .map_err(ValidateFailure::from)?;
        if verdict.accepted() {
            Ok(())
        } else {
            let reason = resolved
                .scrub
                .scrub(verdict.stderr.trim_start_matches("error: "));
            Err(UpdateError::ValidatorRefused { reason })
        }
    }

    /// In a cluster: the epoch every write about the strategy is conditional on.
    pub(super) fn fence_epoch(&self) -> Option<i64> {
        self.shared.fence.is_cluster().then_some(self.lease_epoch)
    }

    /// In a cluster: the lease its executor trades under (see [`crate::lease::Fence`]).
    pub(super) fn lease_grant(&self) -> Option<engine_protocol::control::LeaseGrant> {
        self.shared.fence.grant(self.lease_epoch)
    }

    /// In a cluster, nothing is spawned while the node's lease has run out (its
    /// strategies may be going to other nodes): wait for the next renewal.
    async fn wait_for_lease(&mut self) -> Result<(), StartError> {
        let Some(mut rx) = self.shared.fence.subscribe() else {
            return Ok(());
        };
        let mut said = false;
        while !self.shared.fence.valid() {
            if !said {
                tracing::warn!("this node's lease has run out; the executor starts once it is renewed and the strategy is still this node's");
                said = true;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return Err(StartError::ShuttingDown);
                },
                _ = self.shared.cancel.cancelled() => return Err(StartError::ShuttingDown),
            }
        }
        Ok(())
    }

    /// In a cluster: the error if the row (as just read, `owner`) says another node
    /// owns the strategy now, or this node under another epoch (it lost it and took
    /// it back: a new supervisor serves that tenure).
    fn not_owner(&self, owner: Option<(Option<String>, i64)>) -> Option<StartError> {
        let node = self.shared.scope.node()?;
        let (owner, epoch) = owner?;
        if owner.as_deref() == Some(node) && epoch == self.lease_epoch {
            return None;
        }
        Some(StartError::NotOwner {
            owner: owner.unwrap_or_else(|| "no node".into()),
            epoch,
        })
    }

    /// Operators may edit `strategy_configs` directly: start from what the row says
    /// now (keeping what we had if the database cannot be read). Returns the owner and
    /// epoch the row names, when it was read.
    /// The row `desired_state` was just written with, when nothing waited since
    /// ([`Self::fresh`]), is as good as a read.
    pub(super) async fn reload_definition(&mut self) -> Option<(Option<String>, i64)> {
        let loaded = match self.fresh.take() {
            Some(row) => Ok(Some(*row)),
            None => super::bounded(db::load_strategy(&self.shared.pool, self.id)).await,
        };
        match loaded {
            Ok(Some(row)) => {
                self.name = row.name;
                self.strategy_type = row.strategy_type;
                self.config = row.config;
                self.interval = row.execution_interval_s.is_some();
                self.limits = row.limits;
                self.broker.reloaded(row.broker_state);
                self.apply_restart_policy(row.restart_policy.as_ref());
                Some((row.node, row.lease_epoch))
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "could not reload the strategy's row; using the last known config");
                None
            }
        }
    }
}

/// The outcome of the write in flight; pending while there is none.
async fn in_flight(
    in_flight: &mut Option<Box<super::record::InFlight>>,
) -> Result<Result<(), sqlx::Error>, tokio::sync::oneshot::error::RecvError> {
    match in_flight {
        Some(write) => write.outcome().await,
        None => std::future::pending().await,
    }
}
