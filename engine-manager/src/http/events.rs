//! The Redis relay and `GET /api/events`. One task subscribes (with the configured
//! prefix) to the channels a dashboard needs — `strategy:status:*`,
//! `strategy:metrics:*`, `strategy:health` and `engine:health`, never the command
//! channels, which can carry configs — checks each message as the recorder does
//! ([`check_message`]), keeps the latest health per strategy in [`LiveCache`], and
//! fans the messages out to every browser as server-sent events (`status`,
//! `metrics`, `health`, `engine`).
//! A browser that falls behind gets a `resync` event and reloads the snapshot.

use super::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use engine_protocol::inbound::check_message;
use engine_protocol::{glob_escape, EngineHealthMessage, HealthMessage};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Messages buffered per browser before it is told to resync.
pub const BROADCAST_CAPACITY: usize = 8192;

/// One relayed message: the SSE event name and the (compact) JSON payload.
#[derive(Debug)]
pub struct RelayedEvent {
    pub kind: &'static str,
    pub data: String,
}

/// A health sample and when it arrived.
#[derive(Debug, Clone)]
pub struct HealthSample {
    pub message: HealthMessage,
    pub received_at: DateTime<Utc>,
}

/// The latest `strategy:health` per strategy and the latest `engine:health`.
#[derive(Debug, Default)]
pub struct LiveCache {
    health: Mutex<HashMap<Uuid, HealthSample>>,
    engine: Mutex<Option<EngineHealthMessage>>,
}

impl LiveCache {
    pub fn health(&self, id: Uuid) -> Option<HealthSample> {
        self.health.lock().expect("health cache").get(&id).cloned()
    }

    pub fn all_health(&self) -> HashMap<Uuid, HealthSample> {
        self.health.lock().expect("health cache").clone()
    }

    pub fn engine(&self) -> Option<EngineHealthMessage> {
        self.engine.lock().expect("engine cache").clone()
    }
}

/// What kind of channel a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Status(Uuid),
    Metrics(Uuid),
    Health,
    Engine,
}

impl Kind {
    /// The strategy a per-strategy channel names (its messages must claim it).
    fn channel_strategy(self) -> Option<Uuid> {
        match self {
            Kind::Status(id) | Kind::Metrics(id) => Some(id),
            Kind::Health | Kind::Engine => None,
        }
    }
}

fn classify(channels: &engine_protocol::Channels, channel: &str) -> Option<Kind> {
    if channel == channels.health() {
        return Some(Kind::Health);
    }
    if channel == channels.engine_health() {
        return Some(Kind::Engine);
    }
    let rest = channel.strip_prefix(channels.prefix())?;
    if let Some(id) = rest.strip_prefix("strategy:status:") {
        return id.parse().ok().map(Kind::Status);
    }
    if let Some(id) = rest.strip_prefix("strategy:metrics:") {
        return id.parse().ok().map(Kind::Metrics);
    }
    None
}

/// Subscribe to the dashboard channels and relay them until `cancel` fires,
/// reconnecting whenever Redis goes away.
pub async fn relay(state: Arc<AppState>, cancel: CancellationToken) {
    let channels = state.shared.channels.clone();
    let prefix = glob_escape(channels.prefix());
    let patterns = [
        format!("{prefix}strategy:status:*"),
        format!("{prefix}strategy:metrics:*"),
    ];
    let plain = [channels.health(), channels.engine_health()];
    let mut down_logged = false;
    let mut dropped: u64 = 0;
    loop {
        let connected = async {
            let mut pubsub = state.redis.get_async_pubsub().await?;
            pubsub.psubscribe(&patterns[..]).await?;
            pubsub.subscribe(&plain[..]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = cancel.cancelled() => return,
            r = connected => r,
        };
        let pubsub = match pubsub {
            Ok(p) => {
                if down_logged {
                    tracing::info!("dashboard event relay subscribed again");
                    down_logged = false;
                }
                p
            }
            Err(err) => {
                if !down_logged {
                    tracing::warn!(error = %err, "dashboard event relay cannot subscribe to Redis; retrying");
                    down_logged = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if relay_subscription(&state, pubsub, &cancel, &mut dropped)
            .await
            .is_break()
        {
            return;
        }
        if !down_logged {
            tracing::warn!("dashboard event relay lost its Redis subscription; reconnecting");
            down_logged = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Relay one subscription's messages: `Break` once `cancel` fires, `Continue` when
/// Redis ended the subscription (reconnect).
async fn relay_subscription(
    state: &AppState,
    mut pubsub: redis::aio::PubSub,
    cancel: &CancellationToken,
    dropped: &mut u64,
) -> ControlFlow<()> {
    let mut stream = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return ControlFlow::Break(()),
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else {
            return ControlFlow::Continue(());
        };
        relay_message(
            state,
            msg.get_channel_name(),
            msg.get_payload_bytes(),
            dropped,
        );
    }
}

/// Check one message, keep what the caches need, and send it to every browser.
fn relay_message(state: &AppState, channel: &str, payload: &[u8], dropped: &mut u64) {
    let Some(kind) = classify(&state.shared.channels, channel) else {
        return;
    };
    let value = match check_message(payload, kind.channel_strategy()) {
        Ok(object) => Value::Object(object),
        Err(why) => {
            *dropped += 1;
            if dropped.is_power_of_two() {
                let reason = crate::error_chain(&why);
                tracing::warn!(
                    channel,
                    reason,
                    dropped = *dropped,
                    "dashboard relay dropped a message"
                );
            }
            return;
        }
    };
    let name = match kind {
        Kind::Status(_) => "status",
        Kind::Metrics(_) => "metrics",
        Kind::Health => {
            if let Ok(message) = serde_json::from_value::<HealthMessage>(value.clone()) {
                state.live.health.lock().expect("health cache").insert(
                    message.strategy_id,
                    HealthSample {
                        message,
                        received_at: Utc::now(),
                    },
                );
            }
            "health"
        }
        Kind::Engine => {
            if let Ok(message) = serde_json::from_value::<EngineHealthMessage>(value.clone()) {
                *state.live.engine.lock().expect("engine cache") = Some(message);
            }
            "engine"
        }
    };
    // Nobody listening is fine: the caches above are kept either way.
    let _ = state.events.send(Arc::new(RelayedEvent {
        kind: name,
        data: value.to_string(),
    }));
}

/// Counts a browser in `sse_clients` for as long as its stream lives.
struct ClientGuard(Arc<AppState>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/events`: the relayed messages as server-sent events. The first event,
/// `hello`, carries the node and prefix; the stream ends when the manager stops.
pub async fn stream(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    state.sse_clients.fetch_add(1, Ordering::Relaxed);
    let guard = ClientGuard(state.clone());
    let rx = state.events.subscribe();
    let hello = Event::default().event("hello").data(
        serde_json::json!({
            "node": state.shared.node,
            "redis_prefix": state.shared.channels.prefix(),
            "health_interval_ms": state.shared.config.health_interval.as_millis() as u64,
        })
        .to_string(),
    );
    let relayed = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let event = match rx.recv().await {
            Ok(ev) => Event::default().event(ev.kind).data(&ev.data),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("resync")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, guard)))
    });
    let events = futures_util::stream::once(async move { Ok(hello) })
        .chain(relayed)
        .take_until(state.shared.cancel.clone().cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_protocol::Channels;

    #[test]
    fn classifies_channels() {
        let c = Channels::new("t1:");
        let id = Uuid::new_v4();
        assert_eq!(classify(&c, &c.status(id)), Some(Kind::Status(id)));
        assert_eq!(classify(&c, &c.metrics(id)), Some(Kind::Metrics(id)));
        assert_eq!(classify(&c, &c.health()), Some(Kind::Health));
        assert_eq!(classify(&c, &c.engine_health()), Some(Kind::Engine));
        assert_eq!(classify(&c, &c.commands(id)), None);
        assert_eq!(classify(&c, "t1:strategy:status:nope"), None);
        assert_eq!(classify(&Channels::default(), &c.status(id)), None);
    }

    #[test]
    fn per_strategy_channels_name_the_strategy_their_messages_claim() {
        let id = Uuid::new_v4();
        assert_eq!(Kind::Status(id).channel_strategy(), Some(id));
        assert_eq!(Kind::Metrics(id).channel_strategy(), Some(id));
        assert_eq!(Kind::Health.channel_strategy(), None);
        assert_eq!(Kind::Engine.channel_strategy(), None);
    }
}
