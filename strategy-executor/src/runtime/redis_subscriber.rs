//! The Redis subscriber task: the command channels and `live_data:{token}` for each
//! of the strategy's tokens, handed to the loop without ever waiting on it;
//! reconnected with backoff, logged once per outage.

use super::commands::{CommandSource, InboundCommand};
use super::errors::error_chain;
use super::TICK_BATCH;
use engine_protocol::backoff::Backoff;
use engine_protocol::control::MAX_FRAME_BYTES;
use engine_protocol::{ExecutorCommand, ExecutorCommandKind};
use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubSink;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strategy_sdk::Tick;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Reconnect backoff.
const REDIS_RETRY_MIN: Duration = Duration::from_millis(100);
const REDIS_RETRY_MAX: Duration = Duration::from_secs(5);
/// The bound on connecting, subscribing and unsubscribing.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the subscriber pings to notice a dead connection.
const REDIS_PING_INTERVAL: Duration = Duration::from_secs(30);
const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest Redis command or tick payload the executor parses.
const MAX_REDIS_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES;

/// Counters shared between the Redis subscriber and the loop.
#[derive(Debug, Default)]
pub(super) struct TickCounters {
    /// Ticks dropped because the loop's tick channel was full.
    pub(super) dropped: AtomicU64,
}

/// Why a subscriber connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionLost {
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("cannot connect")]
    Connect(#[source] redis::RedisError),
    #[error("subscribing timed out")]
    SubscribeTimeout,
    #[error("subscribing failed")]
    Subscribe(#[source] redis::RedisError),
    #[error("unsubscribing timed out")]
    UnsubscribeTimeout,
    #[error("unsubscribing failed")]
    Unsubscribe(#[source] redis::RedisError),
    #[error("connection closed")]
    Closed,
    #[error("ping failed")]
    Ping(#[source] redis::RedisError),
    #[error("ping timed out")]
    PingTimeout,
}

/// Subscribes to the command channels and to `live_data:{token}` for each of the
/// strategy's tokens; hands commands and ticks to the loop without ever waiting on it.
/// Reconnects with backoff and logs once per outage.
pub(super) struct RedisSubscriber {
    pub(super) client: redis::Client,
    /// `strategy:commands:{id}`, `strategy:global:commands` and `live_data:` with the
    /// prefix, named once rather than for every message.
    pub(super) commands_channel: String,
    pub(super) global_channel: String,
    pub(super) live_data_prefix: String,
    pub(super) strategy_id: Uuid,
    /// The channels the loop wants, kept in sync on every (re)connection.
    pub(super) desired: watch::Receiver<BTreeSet<String>>,
    pub(super) commands: mpsc::Sender<InboundCommand>,
    pub(super) ticks: mpsc::Sender<Tick>,
    pub(super) counters: Arc<TickCounters>,
    /// Whether the control link is connected (see `route_command`).
    pub(super) link_up: Arc<AtomicBool>,
    /// Started by a manager (`--control-socket`).
    pub(super) managed: bool,
    pub(super) cancel: CancellationToken,
}

impl RedisSubscriber {
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(REDIS_RETRY_MIN, REDIS_RETRY_MAX);
        let mut in_outage = false;
        let cancel = self.cancel.clone();
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.connect_and_serve(&mut in_outage, &mut backoff) => outcome,
            };
            match outcome {
                Err(err) => {
                    let err = error_chain(&err);
                    if !in_outage {
                        tracing::warn!(
                            "redis subscriber disconnected: {err}; reconnecting in the background (further failures are not logged until it works again)"
                        );
                        in_outage = true;
                    } else {
                        tracing::debug!("redis subscriber still disconnected: {err}");
                    }
                }
                Ok(()) => return,
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection: returns `Ok` only when the loop went away.
    async fn connect_and_serve(
        &mut self,
        in_outage: &mut bool,
        backoff: &mut Backoff,
    ) -> Result<(), ConnectionLost> {
        let pubsub = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| ConnectionLost::ConnectTimeout)?
            .map_err(ConnectionLost::Connect)?;
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed = BTreeSet::new();
        let desired = self.desired.borrow_and_update().clone();
        sync_subscriptions(&mut sink, &mut subscribed, &desired).await?;
        if *in_outage {
            tracing::info!("redis subscriber connected again");
            *in_outage = false;
        } else {
            tracing::info!("redis subscriber connected");
        }
        backoff.reset();

        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + REDIS_PING_INTERVAL,
            REDIS_PING_INTERVAL,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        self.route(&message);
                        // Whatever else has already arrived, without going round
                        // the select! for each message.
                        for _ in 1..TICK_BATCH {
                            match stream.next().now_or_never() {
                                Some(Some(message)) => self.route(&message),
                                Some(None) => return Err(ConnectionLost::Closed),
                                None => break,
                            }
                        }
                    }
                    None => return Err(ConnectionLost::Closed),
                },
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let desired = self.desired.borrow_and_update().clone();
                    sync_subscriptions(&mut sink, &mut subscribed, &desired).await?;
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(REDIS_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Err(ConnectionLost::Ping(err)),
                        Err(_) => return Err(ConnectionLost::PingTimeout),
                    }
                }
            }
        }
    }

    fn route(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if payload.len() > MAX_REDIS_PAYLOAD_BYTES {
            tracing::warn!(
                channel,
                bytes = payload.len(),
                "oversized redis message dropped"
            );
            return;
        }
        if let Some(token) = channel.strip_prefix(self.live_data_prefix.as_str()) {
            self.route_tick(token, payload);
        } else if channel == self.commands_channel || channel == self.global_channel {
            self.route_command(channel, payload);
        } else {
            tracing::debug!(channel, "message on an unexpected channel ignored");
        }
    }

    fn route_command(&self, channel: &str, payload: &[u8]) {
        let command: ExecutorCommand = match serde_json::from_slice(payload) {
            Ok(command) => command,
            Err(err) => {
                tracing::warn!(channel, "malformed command dropped: {err}");
                return;
            }
        };
        if let Some(target) = command.strategy_id {
            if target != self.strategy_id {
                tracing::debug!(channel, %target, "command for another strategy ignored");
                return;
            }
        }
        // Under a manager, a global command reaches this executor through its
        // supervisor, in order with the strategy's other commands (or not at all, when
        // it does not apply). The broadcast is for executors no manager serves: applied
        // here it could overtake, or undo, commands given after it. That holds for the
        // manager's own broadcast (`source: manager`) even while the link is down (a
        // manager restarting): it applied the command before publishing it.
        let manager_sent = command.source.as_deref() == Some("manager");
        // The manager's announcement of an update whose config is not what this
        // executor must get (secret references unresolved, secret-looking values
        // masked): the config comes over the control link.
        if channel == self.commands_channel
            && manager_sent
            && command.command == ExecutorCommandKind::UpdateConfig
        {
            tracing::debug!(channel, command_id = %command.command_id, "update announcement ignored: the manager delivers the config over the control link");
            return;
        }
        if channel == self.global_channel
            && (self.link_up.load(Ordering::Relaxed) || (self.managed && manager_sent))
        {
            tracing::debug!(channel, command_id = %command.command_id, "global broadcast ignored: the manager delivers it over the control link");
            return;
        }
        let inbound = InboundCommand {
            command,
            source: CommandSource::Redis,
        };
        if let Err(err) = self.commands.try_send(inbound) {
            tracing::warn!(channel, "command queue full; command dropped: {err}");
        }
    }

    fn route_tick(&self, token: &str, payload: &[u8]) {
        let tick: Tick = match serde_json::from_slice(payload) {
            Ok(tick) => tick,
            Err(err) => {
                tracing::debug!(token, "invalid tick dropped: {err}");
                return;
            }
        };
        if tick.token != token {
            tracing::debug!(token, tick_token = %tick.token, "tick for another token dropped");
            return;
        }
        if !tick.price.is_finite() || tick.price <= 0.0 {
            tracing::debug!(
                token,
                "tick with a price that is not a positive number dropped"
            );
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.ticks.try_send(tick) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Make the connection's subscriptions equal `desired`.
async fn sync_subscriptions(
    sink: &mut PubSubSink,
    subscribed: &mut BTreeSet<String>,
    desired: &BTreeSet<String>,
) -> Result<(), ConnectionLost> {
    let to_add: Vec<&String> = desired.difference(subscribed).collect();
    if !to_add.is_empty() {
        tokio::time::timeout(REDIS_CONNECT_TIMEOUT, sink.subscribe(&to_add))
            .await
            .map_err(|_| ConnectionLost::SubscribeTimeout)?
            .map_err(ConnectionLost::Subscribe)?;
        tracing::debug!(channels = ?to_add, "subscribed");
    }
    let to_remove: Vec<&String> = subscribed.difference(desired).collect();
    if !to_remove.is_empty() {
        tokio::time::timeout(REDIS_CONNECT_TIMEOUT, sink.unsubscribe(&to_remove))
            .await
            .map_err(|_| ConnectionLost::UnsubscribeTimeout)?
            .map_err(ConnectionLost::Unsubscribe)?;
        tracing::debug!(channels = ?to_remove, "unsubscribed");
    }
    *subscribed = desired.clone();
    Ok(())
}
