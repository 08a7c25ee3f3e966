//! Commands, from the manager's control link (the only source an executor obeys;
//! CONTRACT.md §8), as the event loop applies them: each is
//! acknowledged once and applied at most once (a repeated id is acknowledged again
//! from [`CommandLog`]); `shutdown` and a strategy's own halt end the loop.

use super::errors::one_line;
use super::event_loop::{EventLoop, Exit};
use super::report::Cause;
use engine_protocol::control::{self, ExecutorMessage};
use engine_protocol::{ExecutorCommand, ExecutorCommandKind, Status, StopMode};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Write;
use strategy_sdk::ShutdownReason;
use uuid::Uuid;

/// How many command ids are remembered to spot duplicates.
const COMMAND_LOG_SIZE: usize = 256;

/// A command on its way from the control link to the loop.
#[derive(Debug)]
pub(super) struct InboundCommand {
    pub(super) command: ExecutorCommand,
}

/// The outcome of a command, as acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ack {
    pub(super) ok: bool,
    pub(super) error: Option<String>,
}

impl Ack {
    fn ok() -> Self {
        Ack {
            ok: true,
            error: None,
        }
    }
    fn failed(error: impl Into<String>) -> Self {
        Ack {
            ok: false,
            error: Some(error.into()),
        }
    }
}

/// The last acks, by command id, so that a repeated command is acknowledged again but
/// not applied twice.
#[derive(Debug, Default)]
pub(super) struct CommandLog {
    acks: VecDeque<(Uuid, Ack)>,
}

impl CommandLog {
    fn get(&self, command_id: Uuid) -> Option<&Ack> {
        self.acks
            .iter()
            .find(|(id, _)| *id == command_id)
            .map(|(_, ack)| ack)
    }

    fn record(&mut self, command_id: Uuid, ack: Ack) {
        if self.acks.len() >= COMMAND_LOG_SIZE {
            self.acks.pop_front();
        }
        self.acks.push_back((command_id, ack));
    }
}

impl EventLoop {
    #[tracing::instrument(
        skip_all,
        fields(command_id = %inbound.command.command_id, command = ?inbound.command.command)
    )]
    pub(super) async fn handle_command(&mut self, inbound: InboundCommand) -> Option<Exit> {
        if self.lease_over() {
            return Some(self.fenced().await);
        }
        let command = inbound.command;
        let command_id = command.command_id;
        if let Some(ack) = self.commands_seen.get(command_id).cloned() {
            tracing::debug!("duplicate command; acknowledged again, not applied");
            self.send_ack(command_id, ack);
            return None;
        }
        // The ack goes out first, then the state the command caused.
        let (ack, transition) = match command.command {
            ExecutorCommandKind::Pause => (Ack::ok(), self.pause()),
            ExecutorCommandKind::Resume => (Ack::ok(), self.resume()),
            ExecutorCommandKind::UpdateConfig => {
                (self.update_config(command.config.as_ref()), None)
            }
            ExecutorCommandKind::Shutdown => {
                let reason = shutdown_reason(command.reason.as_deref());
                let mode = command.mode.unwrap_or_default();
                self.commands_seen.record(command_id, Ack::ok());
                self.send_ack(command_id, Ack::ok());
                return Some(self.shutdown(reason, mode, Some(command_id)).await);
            }
        };
        self.commands_seen.record(command_id, ack.clone());
        self.send_ack(command_id, ack);
        if let Some(status) = transition {
            let cause = Cause {
                command_id: Some(command_id),
                ..Cause::default()
            };
            self.set_status(status, cause);
        }
        self.after_callback().await
    }

    /// `on_pause` if running; the new status, if it changed.
    fn pause(&mut self) -> Option<Status> {
        if !self.host.pause(chrono::Utc::now()) {
            return None;
        }
        tracing::info!("strategy paused");
        Some(Status::Paused)
    }

    /// `on_resume` if paused; the new status, if it changed.
    fn resume(&mut self) -> Option<Status> {
        if !self.host.resume(chrono::Utc::now()) {
            return None;
        }
        tracing::info!("strategy resumed");
        Some(Status::Running)
    }

    fn update_config(&mut self, config: Option<&Value>) -> Ack {
        let Some(config) = config else {
            return Ack::failed("update_config needs `config`, the whole new config object");
        };
        match self.host.update_config(chrono::Utc::now(), config) {
            Ok(()) => {
                tracing::info!("new config applied");
                self.reset_timer();
                Ack::ok()
            }
            Err(err) => {
                tracing::warn!("new config rejected; keeping the old one: {err}");
                Ack::failed(err.to_string())
            }
        }
    }

    /// Stop for good: `stopping`, flatten if asked, `on_shutdown`, final messages.
    pub(super) async fn shutdown(
        &mut self,
        reason: ShutdownReason,
        mode: StopMode,
        command_id: Option<Uuid>,
    ) -> Exit {
        tracing::info!(%reason, ?mode, "shutting down");
        let cause = Cause {
            command_id,
            reason: Some(reason.as_str().to_string()),
            error: None,
        };
        self.set_status(Status::Stopping, cause.clone());
        let now = chrono::Utc::now();
        if mode == StopMode::Flatten {
            let (fills, errors) = self.host.flatten(now);
            for fill in &fills {
                tracing::info!(
                    token = %fill.token, side = ?fill.side, qty = fill.qty, price = fill.price,
                    realised_pnl = fill.realised_pnl, "position closed (flatten)"
                );
            }
            for err in &errors {
                tracing::warn!("could not close a position (flatten): {err}");
            }
        }
        self.host.shutdown(now, reason);
        self.publish_metrics();
        self.report_broker_state();
        self.set_status(Status::Stopped, cause);
        self.flush().await;
        Exit(0)
    }

    /// The strategy ended itself: tell the manager, shut it down, exit with
    /// [`control::EXIT_HALTED`].
    pub(super) async fn halt(&mut self, reason: String) -> Exit {
        tracing::warn!(%reason, "strategy halted itself");
        self.send_link(ExecutorMessage::Halted {
            reason: reason.clone(),
        });
        let _ = writeln!(std::io::stderr(), "halted: {}", one_line(&reason));
        self.host.shutdown(chrono::Utc::now(), ShutdownReason::Stop);
        self.publish_metrics();
        self.report_broker_state();
        self.status = Status::Error;
        self.publish_status(
            Status::Error,
            &Cause {
                error: Some(reason),
                ..Cause::default()
            },
        );
        self.flush().await;
        Exit(control::EXIT_HALTED as u8)
    }
}

/// A shutdown command's `reason`: `stop` when absent or unknown.
fn shutdown_reason(text: Option<&str>) -> ShutdownReason {
    match text {
        None => ShutdownReason::Stop,
        Some(text) => ShutdownReason::parse(text).unwrap_or_else(|| {
            tracing::warn!(reason = text, "unknown shutdown reason; using stop");
            ShutdownReason::Stop
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_log_keeps_the_last_acks() {
        let mut log = CommandLog::default();
        let first = Uuid::new_v4();
        log.record(first, Ack::failed("no"));
        assert_eq!(log.get(first), Some(&Ack::failed("no")));
        for _ in 0..COMMAND_LOG_SIZE {
            log.record(Uuid::new_v4(), Ack::ok());
        }
        assert_eq!(log.get(first), None);
        assert_eq!(log.acks.len(), COMMAND_LOG_SIZE);
    }

    #[test]
    fn shutdown_reasons_default_to_stop() {
        assert_eq!(shutdown_reason(None), ShutdownReason::Stop);
        assert_eq!(shutdown_reason(Some("restart")), ShutdownReason::Restart);
        assert_eq!(shutdown_reason(Some("sideways")), ShutdownReason::Stop);
    }
}
