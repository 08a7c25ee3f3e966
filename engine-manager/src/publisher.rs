//! Everything the manager sends to Redis goes through one task: pub/sub messages
//! (lossy by nature: dropped while Redis is down) and the latest state of each
//! strategy in `strategy:state:{id}` (kept here and rewritten whenever Redis comes
//! back, so a dashboard that connects late still sees the present).

use engine_protocol::redact::redact_url;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
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
        fields: Vec<(&'static str, String)>,
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
        self.publish_json(channel, payload);
    }

    /// Publish `payload`, JSON already, on `channel` (dropped if the queue is full).
    pub fn publish_json(&self, channel: String, payload: String) {
        self.send(Outgoing::Publish { channel, payload });
    }

    /// Merge `fields` into the hash `key` (kept and rewritten after an outage).
    pub fn set_state(&self, key: String, fields: Vec<(&'static str, String)>) {
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

/// The publisher and its task (for the caller to spawn and own); the task ends when
/// `cancel` fires and the queue is drained.
pub fn start(
    client: redis::Client,
    redis_url: &str,
    cancel: CancellationToken,
) -> (Publisher, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(65_536);
    let task = PublishingTask {
        client,
        url: redact_url(redis_url),
        states: HashMap::new(),
        conn: None,
        down_logged: false,
        retry_at: tokio::time::Instant::now(),
        sends: [tokio::time::Instant::now() - STREAM_GAP * 2; 2],
    };
    (Publisher { tx }, task.run(rx, cancel))
}

pub fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

/// The publishing task's state.
struct PublishingTask {
    client: redis::Client,
    /// The Redis URL, redacted, for the log.
    url: String,
    /// The latest state of each strategy (rewritten whenever Redis comes back).
    states: HashMap<String, HashMap<&'static str, String>>,
    conn: Option<MultiplexedConnection>,
    /// Whether the outage was logged (logged once, and its end once).
    down_logged: bool,
    /// No reconnection attempt before this.
    retry_at: tokio::time::Instant,
    /// When the last two batches were sent (see [`PublishingTask::gather`]).
    sends: [tokio::time::Instant; 2],
}

/// The longest a message waits for others while messages stream.
const STREAM_GAP: Duration = Duration::from_millis(2);

impl PublishingTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, cancel: CancellationToken) {
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
            if !closing {
                self.gather(&mut rx, &mut batch, &cancel).await;
            }
            if self.conn.is_none() && tokio::time::Instant::now() >= self.retry_at {
                self.connect().await;
            }
            if self.conn.is_some() {
                self.send(&mut batch).await;
            } else {
                // Kept, so an outage loses no state.
                self.remember(batch.drain(..));
            }
            if closing {
                break;
            }
        }
    }

    /// In a stream of messages (the last two sends were each within
    /// [`STREAM_GAP`] of the one before), wait until [`STREAM_GAP`] after the last
    /// send and take what came meanwhile: 1,000 interval executions a second then
    /// cost a few hundred pipelines, not a thousand `writev`s and replies. A message
    /// after a quiet moment (a command's `starting` or `running`) goes at once.
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Outgoing>,
        batch: &mut Vec<Outgoing>,
        cancel: &CancellationToken,
    ) {
        let now = tokio::time::Instant::now();
        let [before, last] = self.sends;
        let streaming = last + STREAM_GAP > now && before + STREAM_GAP > last;
        if streaming {
            tokio::select! {
                _ = tokio::time::sleep_until(last + STREAM_GAP) => {}
                _ = cancel.cancelled() => {}
            }
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
        }
        self.sends = [last, tokio::time::Instant::now()];
    }

    /// Keep the latest state of each hash (moved in: the health tick sends a dozen
    /// fields per strategy every interval, not worth a copy each).
    fn remember(&mut self, batch: impl Iterator<Item = Outgoing>) {
        for msg in batch {
            match msg {
                Outgoing::State { key, fields } => {
                    self.states.entry(key).or_default().extend(fields);
                }
                Outgoing::Forget { key } => {
                    self.states.remove(&key);
                }
                Outgoing::Publish { .. } => {}
            }
        }
    }

    /// Connect, and rewrite every state hash: Redis may have restarted empty.
    async fn connect(&mut self) {
        let url = &self.url;
        match self
            .client
            .get_multiplexed_async_connection_with_config(&connection_config())
            .await
        {
            Ok(mut c) => {
                if self.down_logged {
                    tracing::info!(redis = %url, "redis is back; rewriting {} state hashes", self.states.len());
                    self.down_logged = false;
                }
                let mut pipe = redis::pipe();
                for (key, fields) in &self.states {
                    let pairs: Vec<(&&str, &String)> = fields.iter().collect();
                    pipe.hset_multiple(key, &pairs).ignore();
                }
                if self.states.is_empty() || pipe.query_async::<()>(&mut c).await.is_ok() {
                    self.conn = Some(c);
                }
            }
            Err(err) => {
                if !self.down_logged {
                    tracing::warn!(redis = %url, error = %err, "redis unreachable; pub/sub messages are dropped until it is back, state is kept and rewritten then");
                    self.down_logged = true;
                }
                self.retry_at = tokio::time::Instant::now() + Duration::from_millis(500);
            }
        }
    }

    /// Send `batch` in one pipeline; a failure drops the connection.
    async fn send(&mut self, batch: &mut Vec<Outgoing>) {
        if self.conn.is_none() {
            return;
        }
        let mut pipe = redis::pipe();
        for msg in batch.drain(..) {
            match msg {
                Outgoing::Publish { channel, payload } => {
                    pipe.publish(channel, payload).ignore();
                }
                Outgoing::State { key, fields } => {
                    // Only the fields that changed: most of a health tick's are as
                    // they were. Remembered before the answer, so a failed send loses
                    // nothing (the reconnect rewrites every hash).
                    let mut hset = redis::cmd("HSET");
                    hset.arg(&key);
                    let known = self.states.entry(key).or_default();
                    let mut changed = false;
                    for (field, value) in fields {
                        if known.get(field) != Some(&value) {
                            hset.arg(field).arg(&value);
                            known.insert(field, value);
                            changed = true;
                        }
                    }
                    if changed {
                        pipe.add_command(hset).ignore();
                    }
                }
                Outgoing::Forget { key } => {
                    pipe.del(&key).ignore();
                    self.states.remove(&key);
                }
            }
        }
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        if let Err(err) = pipe.query_async::<()>(c).await {
            if !self.down_logged {
                tracing::warn!(redis = %self.url, error = %err, "redis publish failed; reconnecting");
                self.down_logged = true;
            }
            self.conn = None;
            self.retry_at = tokio::time::Instant::now() + Duration::from_millis(200);
        }
    }
}
