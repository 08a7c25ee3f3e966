//! What the event loop sends out: state frames, acks and `halted` on the control
//! link, status and metrics messages on Redis — always without waiting (a full queue
//! drops), except for the bounded [`EventLoop::flush`] before the process exits.

use super::commands::Ack;
use super::control_link::LinkOutbound;
use super::event_loop::EventLoop;
use super::redis_publisher::Outgoing;
use engine_protocol::control::ExecutorMessage;
use engine_protocol::{MetricsMessage, Status, StatusMessage};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The bound on the last Redis messages and link frames before the process exits.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_millis(300);

/// A transition's cause, for the status message and the link's state frame.
#[derive(Debug, Default, Clone)]
pub(super) struct Cause {
    pub(super) command_id: Option<Uuid>,
    pub(super) reason: Option<String>,
    pub(super) error: Option<String>,
}

impl EventLoop {
    /// Record a transition: the link's state frame and the Redis status message.
    ///
    /// The link carries `running`, `paused` and `stopping` (and `starting` in the
    /// hello); `stopped` and `error` go to Redis only: the manager sees the exit itself.
    pub(super) fn set_status(&mut self, status: Status, cause: Cause) {
        self.status = status;
        if let Some(link) = &self.out.link {
            if matches!(
                status,
                Status::Starting | Status::Running | Status::Paused | Status::Stopping
            ) {
                link.status.send_replace(status);
                if status != Status::Starting {
                    self.send_link(ExecutorMessage::State {
                        status,
                        reason: cause.reason.clone(),
                        command_id: cause.command_id,
                    });
                }
            }
        }
        self.publish_status(status, &cause);
    }

    pub(super) fn send_ack(&self, command_id: Uuid, ack: Ack) {
        self.send_link(ExecutorMessage::Ack {
            command_id,
            ok: ack.ok,
            error: ack.error,
        });
    }

    pub(super) fn send_link(&self, message: ExecutorMessage) {
        let Some(link) = &self.out.link else {
            return;
        };
        if let Err(err) = link.frames.try_send(LinkOutbound::Frame(message)) {
            tracing::warn!("control link queue is full; a frame was dropped: {err}");
        }
    }

    pub(super) fn publish_status(&self, status: Status, cause: &Cause) {
        let message = StatusMessage {
            strategy_id: self.identity.strategy_id,
            name: self.identity.name.clone(),
            timestamp: chrono::Utc::now(),
            status,
            pid: Some(self.identity.pid),
            node: self.identity.node.clone(),
            error: cause.error.clone(),
            reason: cause.reason.clone(),
            command_id: cause.command_id,
            source: Some("executor".to_string()),
            lease_epoch: self.identity.lease_epoch,
        };
        self.publish(self.channels.status(self.identity.strategy_id), &message);
    }

    /// The strategy's metrics and the runtime's own: ticks received and dropped, the
    /// age and time of the last tick, the reporting interval, the tokens subscribed
    /// to, uptime.
    pub(super) fn publish_metrics(&self) {
        let mut metrics = self.host.metrics();
        metrics
            .extra
            .insert("ticks_received".into(), self.ticks_received.into());
        metrics.extra.insert(
            "ticks_dropped".into(),
            self.out.counters.dropped.load(Ordering::Relaxed).into(),
        );
        metrics.extra.insert(
            "last_tick_age_ms".into(),
            match self.last_tick_at {
                Some(at) => Value::from(at.elapsed().as_millis() as u64),
                None => Value::Null,
            },
        );
        // When the last tick arrived (RFC 3339, UTC): readers compute its age when
        // they show it, so it does not freeze between two reports.
        metrics.extra.insert(
            "last_tick_at".into(),
            match self.last_tick_wall {
                Some(at) => Value::from(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => Value::Null,
            },
        );
        // How often these reports come: a reader judges from it whether ticks may
        // have arrived since this one (see `engine_protocol::tick_age_ms`).
        metrics.extra.insert(
            "metrics_interval_ms".into(),
            (self.metrics_period.as_millis() as u64).into(),
        );
        // The market data it listens to: with none, no tick is ever expected.
        let tokens: Vec<Value> = self
            .host
            .context()
            .subscriptions()
            .iter()
            .map(|token| Value::from(token.as_str()))
            .collect();
        metrics
            .extra
            .insert("subscribed_tokens".into(), Value::Array(tokens));
        metrics.extra.insert(
            "uptime_s".into(),
            self.started_at.elapsed().as_secs().into(),
        );
        let message = MetricsMessage {
            strategy_id: self.identity.strategy_id,
            name: self.identity.name.clone(),
            timestamp: chrono::Utc::now(),
            metrics,
        };
        self.publish(self.channels.metrics(self.identity.strategy_id), &message);
    }

    fn publish<T: serde::Serialize>(&self, channel: String, message: &T) {
        let payload = match serde_json::to_string(message) {
            Ok(payload) => payload,
            Err(err) => {
                // Only a strategy's non-finite custom metric can get here.
                tracing::warn!(%channel, "message not published, it does not serialize: {err}");
                return;
            }
        };
        if self
            .out
            .publisher
            .try_send(Outgoing::Publish { channel, payload })
            .is_err()
        {
            tracing::debug!("redis publish queue is full; message dropped");
        }
    }

    /// Give the last link frames (the orders not sent yet first) and Redis messages
    /// a bounded chance to go out.
    pub(super) async fn flush(&mut self) {
        self.collect_orders();
        self.send_orders();
        let link = async {
            if let Some(link) = &self.out.link {
                let (tx, rx) = oneshot::channel();
                if link.frames.try_send(LinkOutbound::Flush(tx)).is_ok() {
                    let _ = rx.await;
                }
            }
        };
        let redis = async {
            let (tx, rx) = oneshot::channel();
            if self.out.publisher.try_send(Outgoing::Flush(tx)).is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(EXIT_FLUSH_TIMEOUT, futures_util::future::join(link, redis))
            .await
            .is_err()
        {
            tracing::debug!("final messages not all delivered within {EXIT_FLUSH_TIMEOUT:?}");
        }
    }
}
