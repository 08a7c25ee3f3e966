//! Everything the manager sends to Redis goes through one task: pub/sub messages
//! (lossy by nature: dropped while Redis is down) and the latest state of each
//! strategy in `strategy:state:{id}` (kept here and rewritten whenever Redis comes
//! back, so a dashboard that connects late still sees the present).

use engine_protocol::redact::redact_url;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
enum Outgoing {
    Publish {
        channel: String,
        payload: String,
    },
    State {
        key: String,
        fields: Vec<(String, String)>,
    },
    Forget {
        key: String,
    },
}

/// A cheap handle to the publishing task. Never blocks the caller.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Outgoing>,
}

impl Publisher {
    /// Publish `msg` as JSON on `channel` (dropped if the queue is full).
    pub fn publish<T: Serialize>(&self, channel: String, msg: &T) {
        let payload = serde_json::to_string(msg).expect("payloads serialize");
        self.send(Outgoing::Publish { channel, payload });
    }

    /// Merge `fields` into the hash `key` (kept and rewritten after an outage).
    pub fn set_state(&self, key: String, fields: Vec<(String, String)>) {
        self.send(Outgoing::State { key, fields });
    }

    /// Delete the hash `key`.
    pub fn forget_state(&self, key: String) {
        self.send(Outgoing::Forget { key });
    }

    fn send(&self, msg: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(msg) {
            tracing::debug!(?msg, "redis publish queue full; message dropped");
        }
    }
}

/// Start the publishing task; it ends when `cancel` fires and the queue is drained.
pub fn start(
    client: redis::Client,
    redis_url: &str,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Publisher {
    let (tx, rx) = mpsc::channel(65_536);
    let url = redact_url(redis_url);
    tracker.spawn(run(client, url, rx, cancel));
    Publisher { tx }
}

pub fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

async fn run(
    client: redis::Client,
    url: String,
    mut rx: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    let mut states: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut down_since_logged = false;
    let mut retry_at = tokio::time::Instant::now();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(512);
    loop {
        batch.clear();
        let mut closing = false;
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, 512) => n,
            _ = cancel.cancelled() => {
                // Flush what is queued, then stop.
                while let Ok(msg) = rx.try_recv() {
                    batch.push(msg);
                    if batch.len() >= 4096 {
                        break;
                    }
                }
                closing = true;
                batch.len()
            }
        };
        if got == 0 && (closing || rx.is_closed()) {
            break;
        }
        // Remember the latest state before trying to send, so an outage loses none.
        for msg in &batch {
            match msg {
                Outgoing::State { key, fields } => {
                    let entry = states.entry(key.clone()).or_default();
                    for (k, v) in fields {
                        entry.insert(k.clone(), v.clone());
                    }
                }
                Outgoing::Forget { key } => {
                    states.remove(key);
                }
                Outgoing::Publish { .. } => {}
            }
        }
        if conn.is_none() && tokio::time::Instant::now() >= retry_at {
            match client
                .get_multiplexed_async_connection_with_config(&connection_config())
                .await
            {
                Ok(mut c) => {
                    if down_since_logged {
                        tracing::info!(redis = %url, "redis is back; rewriting {} state hashes", states.len());
                        down_since_logged = false;
                    }
                    // Rewrite every state hash: Redis may have restarted empty.
                    let mut pipe = redis::pipe();
                    for (key, fields) in &states {
                        let pairs: Vec<(&String, &String)> = fields.iter().collect();
                        pipe.hset_multiple(key, &pairs).ignore();
                    }
                    if states.is_empty() || pipe.query_async::<()>(&mut c).await.is_ok() {
                        conn = Some(c);
                    }
                }
                Err(err) => {
                    if !down_since_logged {
                        tracing::warn!(redis = %url, error = %err, "redis unreachable; pub/sub messages are dropped until it is back, state is kept and rewritten then");
                        down_since_logged = true;
                    }
                    retry_at = tokio::time::Instant::now() + Duration::from_millis(500);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            if closing {
                break;
            }
            continue;
        };
        let mut pipe = redis::pipe();
        for msg in batch.drain(..) {
            match msg {
                Outgoing::Publish { channel, payload } => {
                    pipe.publish(channel, payload).ignore();
                }
                Outgoing::State { key, fields } => {
                    pipe.hset_multiple(key, &fields).ignore();
                }
                Outgoing::Forget { key } => {
                    pipe.del(key).ignore();
                }
            }
        }
        if let Err(err) = pipe.query_async::<()>(c).await {
            if !down_since_logged {
                tracing::warn!(redis = %url, error = %err, "redis publish failed; reconnecting");
                down_since_logged = true;
            }
            conn = None;
            retry_at = tokio::time::Instant::now() + Duration::from_millis(200);
        }
        if closing {
            break;
        }
    }
}
