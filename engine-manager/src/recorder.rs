//! The metrics recorder: subscribes to `strategy:metrics:*`, checks each message (at
//! most 64 KiB, a JSON object whose `strategy_id` matches its channel, the contract's
//! fields with the right types), and writes them with the health samples into
//! `strategy_metrics` in batches; prunes rows past the retention period.
//!
//! Built for bursts (BENCHMARKS.md): waiting rows are kept compact, in batch-sized
//! chunks that hold the fixed-size fields in one vector and every `metrics` object as
//! JSON text in one string (a parsed `Value` costs about ten times its text), so a
//! backlog of 200 000 rows costs tens of MB, not hundreds; and two batches are
//! written at once, each on its own pooled connection, because PostgreSQL spends an
//! insert in its own backend and two backends use two cores.

use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::Channels;
use engine_protocol::{MetricsMessage, MAX_MESSAGE_BYTES};
use engine_store::manager::{self as db, MetricsRow};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// Rows per INSERT.
const BATCH: usize = 5_000;
/// A partial batch is written once its oldest row has waited this long.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Rows kept waiting at most (while the database is slow or away); beyond it new
/// samples are dropped, and counted in the log.
const MAX_BUFFERED: usize = 200_000;
/// Batches written at once, each on its own connection of the pool.
const INSERTS_IN_FLIGHT: usize = 2;
/// Capacity of the channel from the subscriber to the writer (compact rows, a few
/// hundred bytes each), which the writer empties continuously into its backlog.
const CHANNEL_CAPACITY: usize = 32_768;
/// Capacity of the channel from the health sampler (one row per running strategy
/// per health interval).
const HEALTH_CHANNEL_CAPACITY: usize = 4_096;
/// How long a failed batch waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The latest metrics an executor reported, kept in memory for health and APIs.
#[derive(Debug, Clone, PartialEq)]
pub struct LastMetrics {
    /// When the manager received them.
    pub received_at: chrono::DateTime<Utc>,
    pub pnl: Option<f64>,
    pub positions_count: Option<i32>,
    pub orders_count: Option<i32>,
    pub success_rate: Option<f64>,
    /// `last_tick_age_ms` as the executor reported it (None before its first tick).
    pub last_tick_age_ms: Option<f64>,
    /// The whole `metrics` object.
    pub metrics: Value,
}

impl LastMetrics {
    pub fn from_row(row: &MetricsRow) -> LastMetrics {
        LastMetrics {
            received_at: Utc::now(),
            pnl: row.pnl,
            positions_count: row.positions_count,
            orders_count: row.orders_count,
            success_rate: row.success_rate,
            last_tick_age_ms: row.metrics.get("last_tick_age_ms").and_then(Value::as_f64),
            metrics: row.metrics.clone(),
        }
    }
}

/// Why an executor's message was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("message of {0} bytes is over the 64 KiB limit")]
    TooLarge(usize),
    #[error("channel is not strategy:metrics:{{uuid}}")]
    BadChannel,
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    #[error("strategy_id {claimed} does not match the channel's {channel}")]
    WrongStrategy { claimed: String, channel: Uuid },
    #[error("fields do not match the metrics payload: {0}")]
    BadFields(String),
}

/// Check one message from `strategy:metrics:{id}` and turn it into a row.
pub fn parse_metrics(
    channels: &Channels,
    channel: &str,
    payload: &[u8],
) -> Result<MetricsRow, Rejected> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(Rejected::TooLarge(payload.len()));
    }
    let channel_id = channels
        .strategy_id_of_metrics_channel(channel)
        .ok_or(Rejected::BadChannel)?;
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| Rejected::NotAnObject(e.to_string()))?;
    if !value.is_object() {
        return Err(Rejected::NotAnObject(
            engine_protocol::json_kind(&value).to_string(),
        ));
    }
    let claimed = value.get("strategy_id").unwrap_or(&Value::Null);
    if claimed.as_str() != Some(channel_id.to_string().as_str()) {
        return Err(Rejected::WrongStrategy {
            claimed: claimed.to_string(),
            channel: channel_id,
        });
    }
    // Checked in place (no copy of the message); then the `metrics` object is moved
    // out of it for the row.
    let msg =
        MetricsMessage::deserialize(&value).map_err(|e| Rejected::BadFields(e.to_string()))?;
    let metrics = match value {
        Value::Object(mut object) => object.remove("metrics").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let finite = |x: f64| x.is_finite().then_some(x);
    let as_i32 = |x: i64| i32::try_from(x).ok();
    Ok(MetricsRow {
        strategy_id: channel_id,
        timestamp: msg.timestamp,
        source: "strategy",
        pnl: finite(msg.metrics.pnl),
        positions_count: as_i32(msg.metrics.positions_count),
        orders_count: as_i32(msg.metrics.orders_count),
        success_rate: finite(msg.metrics.success_rate),
        cpu_percent: None,
        memory_mb: None,
        metrics,
    })
}

/// The fixed-size part of a waiting row; its `metrics` text is in its chunk's arena.
#[derive(Debug, Clone, PartialEq)]
struct WaitingRow {
    strategy_id: Uuid,
    timestamp: DateTime<Utc>,
    source: &'static str,
    pnl: Option<f64>,
    positions_count: Option<i32>,
    orders_count: Option<i32>,
    success_rate: Option<f64>,
    cpu_percent: Option<f64>,
    memory_mb: Option<f64>,
    /// Where its `metrics` JSON text ends in the chunk's `text`.
    metrics_end: usize,
}

/// A checked row on its way to the writer: a [`MetricsRow`] with its `metrics`
/// object already turned into JSON text.
#[derive(Debug, Clone, PartialEq)]
struct PendingRow {
    strategy_id: Uuid,
    timestamp: DateTime<Utc>,
    source: &'static str,
    pnl: Option<f64>,
    positions_count: Option<i32>,
    orders_count: Option<i32>,
    success_rate: Option<f64>,
    cpu_percent: Option<f64>,
    memory_mb: Option<f64>,
    metrics: Box<str>,
}

impl PendingRow {
    /// The row, and its `metrics` object given back (moved, not copied).
    fn split(row: MetricsRow) -> (PendingRow, Value) {
        let pending = PendingRow {
            metrics: row.metrics.to_string().into_boxed_str(),
            strategy_id: row.strategy_id,
            timestamp: row.timestamp,
            source: row.source,
            pnl: row.pnl,
            positions_count: row.positions_count,
            orders_count: row.orders_count,
            success_rate: row.success_rate,
            cpu_percent: row.cpu_percent,
            memory_mb: row.memory_mb,
        };
        (pending, row.metrics)
    }
}

/// Up to [`BATCH`] waiting rows: the fixed-size fields in one vector, every
/// `metrics` object as JSON text in one string. A parsed `Value` costs about ten
/// times its text, and a row allocates nothing of its own, so a written chunk is
/// freed in two blocks.
#[derive(Debug, Default)]
struct Chunk {
    rows: Vec<WaitingRow>,
    text: String,
}

impl Chunk {
    fn push(&mut self, row: &PendingRow) {
        self.text.push_str(&row.metrics);
        self.rows.push(WaitingRow {
            strategy_id: row.strategy_id,
            timestamp: row.timestamp,
            source: row.source,
            pnl: row.pnl,
            positions_count: row.positions_count,
            orders_count: row.orders_count,
            success_rate: row.success_rate,
            cpu_percent: row.cpu_percent,
            memory_mb: row.memory_mb,
            metrics_end: self.text.len(),
        });
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows again, for the INSERT.
    fn to_rows(&self) -> Vec<MetricsRow> {
        let mut start = 0;
        self.rows
            .iter()
            .map(|r| {
                let text = &self.text[start..r.metrics_end];
                start = r.metrics_end;
                MetricsRow {
                    strategy_id: r.strategy_id,
                    timestamp: r.timestamp,
                    source: r.source,
                    pnl: r.pnl,
                    positions_count: r.positions_count,
                    orders_count: r.orders_count,
                    success_rate: r.success_rate,
                    cpu_percent: r.cpu_percent,
                    memory_mb: r.memory_mb,
                    // Text this process wrote from a Value: it parses.
                    metrics: serde_json::from_str(text).unwrap_or(Value::Null),
                }
            })
            .collect()
    }
}

/// Rows waiting to be written, oldest first, in chunks: taking a batch is popping
/// a chunk.
#[derive(Debug, Default)]
struct Backlog {
    chunks: VecDeque<Chunk>,
    len: usize,
    /// When the oldest waiting row arrived.
    since: Option<Instant>,
}

impl Backlog {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, row: &PendingRow) {
        if self.chunks.back().is_none_or(|c| c.len() >= BATCH) {
            self.chunks.push_back(Chunk::default());
        }
        self.chunks.back_mut().expect("just ensured").push(row);
        self.len += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    /// The next batch, if one is due: a full one at once, a partial one once its
    /// oldest row has waited [`FLUSH_EVERY`], anything when `closing`.
    fn take_due(&mut self, now: Instant, closing: bool) -> Option<Chunk> {
        let full = self.chunks.front().is_some_and(|c| c.len() >= BATCH);
        let waited = self.since.is_some_and(|t| now >= t + FLUSH_EVERY);
        if !(full || waited || closing) {
            return None;
        }
        let chunk = self.chunks.pop_front()?;
        self.len -= chunk.len();
        if self.chunks.is_empty() {
            self.since = None;
        }
        Some(chunk)
    }

    /// A batch that could not be written goes back to the front.
    fn put_back(&mut self, chunk: Chunk) {
        self.len += chunk.len();
        self.since.get_or_insert_with(Instant::now);
        self.chunks.push_front(chunk);
    }

    /// When a partial batch becomes due.
    fn due_at(&self) -> Option<Instant> {
        self.since.map(|t| t + FLUSH_EVERY)
    }
}

/// Start the subscriber and the batch writer; returns where health rows go.
pub fn start(shared: Arc<Shared>, client: redis::Client) -> mpsc::Sender<MetricsRow> {
    let (health_tx, health_rx) = mpsc::channel(HEALTH_CHANNEL_CAPACITY);
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    shared.tracker.spawn(subscribe(shared.clone(), client, tx));
    shared
        .tracker
        .spawn(write_batches(shared.clone(), health_rx, rx));
    health_tx
}

async fn subscribe(shared: Arc<Shared>, client: redis::Client, tx: mpsc::Sender<PendingRow>) {
    let pattern = shared.channels.metrics_pattern();
    let mut down_logged = false;
    let mut dropped: u64 = 0;
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(&pattern).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = connected => r,
        };
        let mut pubsub = match pubsub {
            Ok(p) => {
                if down_logged {
                    tracing::info!("metrics subscription is back");
                    down_logged = false;
                }
                p
            }
            Err(err) => {
                if !down_logged {
                    tracing::warn!(error = %err, "cannot subscribe to strategy metrics; retrying");
                    down_logged = true;
                }
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let mut stream = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = shared.cancel.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            match parse_metrics(
                &shared.channels,
                msg.get_channel_name(),
                msg.get_payload_bytes(),
            ) {
                Ok(row) => {
                    let (pending, metrics) = PendingRow::split(row);
                    let last = LastMetrics {
                        received_at: Utc::now(),
                        pnl: pending.pnl,
                        positions_count: pending.positions_count,
                        orders_count: pending.orders_count,
                        success_rate: pending.success_rate,
                        last_tick_age_ms: metrics.get("last_tick_age_ms").and_then(Value::as_f64),
                        metrics,
                    };
                    shared
                        .last_metrics
                        .lock()
                        .expect("last_metrics lock")
                        .insert(pending.strategy_id, last);
                    if tx.try_send(pending).is_err() {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                dropped,
                                "metrics writer is behind ({MAX_BUFFERED} rows waiting); samples dropped"
                            );
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(channel = msg.get_channel_name(), reason = %why, "dropped an executor message")
                }
            }
        }
        if !down_logged {
            tracing::warn!("metrics subscription lost; reconnecting");
            down_logged = true;
        }
    }
}

/// One batch written, or given back with the error.
type InsertOutcome = Result<(), (Chunk, sqlx::Error)>;

/// Empties the channel into the backlog continuously and keeps up to
/// [`INSERTS_IN_FLIGHT`] batches being written; a batch that fails goes back to the
/// front and is tried again after [`RETRY_AFTER`]. At shutdown, what is waiting is
/// written once more (not retried).
async fn write_batches(
    shared: Arc<Shared>,
    mut health_rx: mpsc::Receiver<MetricsRow>,
    mut rx: mpsc::Receiver<PendingRow>,
) {
    let retention = chrono::Duration::from_std(shared.config.metrics_retention)
        .unwrap_or(chrono::Duration::days(7));
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut backlog = Backlog::default();
    let mut inflight: JoinSet<InsertOutcome> = JoinSet::new();
    let mut incoming: Vec<PendingRow> = Vec::with_capacity(1024);
    let mut health: Vec<MetricsRow> = Vec::new();
    let mut health_open = true;
    let mut failing = false;
    let mut retry_at: Option<Instant> = None;
    let mut closing = false;
    loop {
        let room = backlog.len() < MAX_BUFFERED && !closing;
        // Wake for a due partial batch or a retry only when a write could start.
        let wake_at = if inflight.len() < INSERTS_IN_FLIGHT {
            match (retry_at, backlog.due_at()) {
                (Some(r), Some(d)) => Some(r.max(d)),
                (r, d) => r.or(d),
            }
        } else {
            None
        };
        tokio::select! {
            _ = shared.cancel.cancelled(), if !closing => {
                while let Ok(row) = health_rx.try_recv() {
                    backlog.push(&PendingRow::split(row).0);
                }
                while let Ok(row) = rx.try_recv() {
                    backlog.push(&row);
                }
                closing = true;
                retry_at = None;
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!("writing strategy_metrics again");
                        failing = false;
                    }
                }
                Ok(Err((chunk, err))) => {
                    if !failing {
                        tracing::warn!(error = %err, buffered = backlog.len() + chunk.len(), "cannot write strategy_metrics; keeping samples and retrying");
                        failing = true;
                    }
                    if closing {
                        tracing::warn!(rows = chunk.len(), "metrics samples not written at shutdown");
                    } else {
                        backlog.put_back(chunk);
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
                Err(err) => tracing::error!(error = %err, "a metrics insert task failed"),
            },
            n = rx.recv_many(&mut incoming, 1024), if room => {
                if n == 0 {
                    // The subscriber is gone: only at shutdown.
                    closing = true;
                    retry_at = None;
                }
                for row in incoming.drain(..) {
                    backlog.push(&row);
                }
            }
            n = health_rx.recv_many(&mut health, 1024), if room && health_open => {
                health_open = n > 0;
                for row in health.drain(..) {
                    backlog.push(&PendingRow::split(row).0);
                }
            }
            _ = prune.tick(), if !closing => {
                match db::prune_history(&shared.pool, Utc::now() - retention).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned strategy_metrics and strategy_events rows past the retention period"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "could not prune strategy_metrics"),
                }
            }
            _ = sleep_until(wake_at) => {}
            else => break,
        }
        let now = Instant::now();
        if retry_at.is_none_or(|r| now >= r) {
            retry_at = None;
            while inflight.len() < INSERTS_IN_FLIGHT && !(closing && failing) {
                let Some(chunk) = backlog.take_due(now, closing) else {
                    break;
                };
                let pool = shared.pool.clone();
                inflight.spawn(async move {
                    match db::insert_metrics(&pool, &chunk.to_rows()).await {
                        Ok(_) => Ok(()),
                        Err(err) => Err((chunk, err)),
                    }
                });
            }
        }
        if closing && inflight.is_empty() && (backlog.len() == 0 || failing) {
            break;
        }
    }
    if backlog.len() > 0 {
        tracing::warn!(
            rows = backlog.len(),
            "metrics samples not written at shutdown"
        );
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good(id: Uuid) -> Value {
        json!({"strategy_id": id.to_string(), "name": "a", "timestamp": "2026-01-01T00:00:00Z",
               "metrics": {"pnl": 1.5, "positions_count": 1, "orders_count": 3, "success_rate": 0.5, "ticks": 9}})
    }

    #[test]
    fn accepts_a_good_message() {
        let c = Channels::default();
        let id = Uuid::new_v4();
        let row = parse_metrics(&c, &c.metrics(id), good(id).to_string().as_bytes()).unwrap();
        assert_eq!(row.strategy_id, id);
        assert_eq!(row.pnl, Some(1.5));
        assert_eq!(row.orders_count, Some(3));
        assert_eq!(row.metrics["ticks"], 9);
    }

    fn row(i: usize) -> MetricsRow {
        MetricsRow {
            strategy_id: Uuid::from_u128(i as u128 % 7),
            timestamp: DateTime::from_timestamp(1_800_000_000 + i as i64, 0).unwrap(),
            source: if i.is_multiple_of(2) {
                "strategy"
            } else {
                "health"
            },
            pnl: Some(i as f64 * 0.5),
            positions_count: Some(1),
            orders_count: Some(i as i32),
            success_rate: None,
            cpu_percent: (!i.is_multiple_of(2)).then_some(1.5),
            memory_mb: None,
            metrics: json!({"seq": i, "note": "é \"quoted\"", "nested": {"a": [1, 2]}}),
        }
    }

    fn pending(row: &MetricsRow) -> PendingRow {
        PendingRow::split(row.clone()).0
    }

    #[test]
    fn chunks_give_back_the_rows_they_keep() {
        let mut chunk = Chunk::default();
        let rows: Vec<MetricsRow> = (0..50).map(row).collect();
        for r in &rows {
            chunk.push(&pending(r));
        }
        assert_eq!(chunk.len(), 50);
        assert_eq!(chunk.to_rows(), rows);
    }

    #[test]
    fn backlog_hands_out_full_batches_at_once_and_partial_ones_when_due() {
        let mut backlog = Backlog::default();
        let start = Instant::now();
        for i in 0..BATCH + 10 {
            backlog.push(&pending(&row(i)));
        }
        assert_eq!(backlog.len(), BATCH + 10);
        let full = backlog
            .take_due(start, false)
            .expect("a full batch is due at once");
        assert_eq!(full.len(), BATCH);
        assert_eq!(full.to_rows()[0], row(0));
        assert!(
            backlog.take_due(start, false).is_none(),
            "the partial one waits"
        );
        let later = start + FLUSH_EVERY + Duration::from_millis(1);
        let failed = backlog
            .take_due(later, false)
            .expect("due after FLUSH_EVERY");
        assert_eq!(failed.len(), 10);
        assert_eq!(backlog.len(), 0);
        assert!(backlog.due_at().is_none());
        // A failed batch goes back to the front, and is due again.
        backlog.push(&pending(&row(99)));
        backlog.put_back(failed);
        assert_eq!(backlog.len(), 11);
        let again = backlog
            .take_due(later, true)
            .expect("anything when closing");
        assert_eq!(again.to_rows()[0], row(BATCH));
        assert_eq!(
            backlog.take_due(later, true).unwrap().to_rows(),
            vec![row(99)]
        );
        assert!(backlog.take_due(later, true).is_none());
    }

    #[test]
    fn rejects_bad_messages() {
        let c = Channels::default();
        let id = Uuid::new_v4();
        let ch = c.metrics(id);
        let other = good(Uuid::new_v4()).to_string();
        assert!(matches!(
            parse_metrics(&c, &ch, other.as_bytes()),
            Err(Rejected::WrongStrategy { .. })
        ));
        assert!(matches!(
            parse_metrics(&c, &ch, b"[1,2]"),
            Err(Rejected::NotAnObject(_))
        ));
        assert!(matches!(
            parse_metrics(&c, &ch, b"{not json"),
            Err(Rejected::NotAnObject(_))
        ));
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            parse_metrics(&c, &ch, &big),
            Err(Rejected::TooLarge(_))
        ));
        assert!(matches!(
            parse_metrics(&c, "strategy:metrics:nope", b"{}"),
            Err(Rejected::BadChannel)
        ));
        let mut wrong = good(id);
        wrong["metrics"]["pnl"] = json!("lots");
        assert!(matches!(
            parse_metrics(&c, &ch, wrong.to_string().as_bytes()),
            Err(Rejected::BadFields(_))
        ));
        let mut missing = good(id);
        missing.as_object_mut().unwrap().remove("timestamp");
        assert!(matches!(
            parse_metrics(&c, &ch, missing.to_string().as_bytes()),
            Err(Rejected::BadFields(_))
        ));
    }
}
