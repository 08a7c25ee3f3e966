//! The Redis relay and `GET /api/events`. While at least one browser listens, one
//! task subscribes (with the configured prefix) to the channels a dashboard needs —
//! `strategy:status:*`, `strategy:metrics:*`, `strategy:health` and `engine:health`,
//! never the command channels, which can carry configs — checks each message as the
//! recorder does ([`check_message`]), adds other nodes' health to the
//! [`LiveCache`] (this node's comes from its health sampler directly), and fans the
//! messages out to every browser as server-sent events (`status`, `metrics`,
//! `health`, `engine`). With no browser it holds no subscription: parsing every
//! health message the manager itself published cost it more than anything else at
//! 1,000 strategies (BENCHMARKS.md).
//! A browser that falls behind gets a `resync` event and reloads the snapshot.

use super::AppState;
pub use crate::health::{HealthSample, LiveCache};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::Utc;
use engine_protocol::inbound::check_message;
use engine_protocol::{glob_escape, HealthMessage};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a new browser's `hello` waits for the relay's subscription (Redis may be
/// away: it is sent anyway then).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Messages buffered per browser before it is told to resync.
pub const BROADCAST_CAPACITY: usize = 8192;

/// One relayed message: the SSE event name and the (compact) JSON payload.
#[derive(Debug)]
pub struct RelayedEvent {
    pub kind: &'static str,
    pub data: String,
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
        if wait_for_a_browser(&state, &cancel).await.is_break() {
            return;
        }
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
        state.relay_subscribed.send_replace(true);
        let ended = relay_subscription(&state, pubsub, &cancel, &mut dropped).await;
        state.relay_subscribed.send_replace(false);
        match ended {
            Ended::Cancelled => return,
            Ended::NoBrowser => continue,
            Ended::Lost => {}
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

/// Wait until a browser listens: `Break` if `cancel` fires first.
async fn wait_for_a_browser(state: &AppState, cancel: &CancellationToken) -> ControlFlow<()> {
    while state.sse_clients.load(Ordering::Acquire) == 0 {
        tokio::select! {
            _ = cancel.cancelled() => return ControlFlow::Break(()),
            _ = state.clients_changed.notified() => {}
        }
    }
    ControlFlow::Continue(())
}

/// Why a subscription's relay ended.
enum Ended {
    /// The manager stops.
    Cancelled,
    /// The last browser left: unsubscribed.
    NoBrowser,
    /// Redis ended the subscription (reconnect).
    Lost,
}

/// Relay one subscription's messages until the manager stops, the last browser
/// leaves or Redis ends it.
async fn relay_subscription(
    state: &AppState,
    mut pubsub: redis::aio::PubSub,
    cancel: &CancellationToken,
    dropped: &mut u64,
) -> Ended {
    let mut stream = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            _ = state.clients_changed.notified() => {
                if state.sse_clients.load(Ordering::Acquire) == 0 {
                    return Ended::NoBrowser;
                }
                continue;
            }
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else {
            return Ended::Lost;
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
            // Another node's strategy (this node's samples are in the cache already).
            if value.get("node").and_then(Value::as_str) != Some(state.shared.node.as_str()) {
                if let Ok(message) = serde_json::from_value::<HealthMessage>(value.clone()) {
                    state.live.put_health(message, Utc::now());
                }
            }
            "health"
        }
        // The cache keeps this node's own, from its health sampler.
        Kind::Engine => "engine",
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
        if self.0.sse_clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.clients_changed.notify_one();
        }
    }
}

/// `GET /api/events`: the relayed messages as server-sent events. The first event,
/// `hello`, carries the node and prefix; the stream ends when the manager stops.
pub async fn stream(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    if state.sse_clients.fetch_add(1, Ordering::AcqRel) == 0 {
        state.clients_changed.notify_one();
    }
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
    // Sent once the relay is subscribed (it subscribes for the first browser).
    let subscribed = state.relay_subscribed.subscribe();
    let hello = async move {
        let mut subscribed = subscribed;
        let _ = tokio::time::timeout(SUBSCRIBE_WAIT, subscribed.wait_for(|s| *s)).await;
        Ok(hello)
    };
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
    let events = futures_util::stream::once(hello)
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
