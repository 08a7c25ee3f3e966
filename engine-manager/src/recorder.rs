//! The metrics recorder: subscribes to `strategy:metrics:*`, checks each message
//! ([`check_message`]: at most 64 KiB, a JSON object whose `strategy_id` matches its
//! channel; then the contract's fields with the right types), and writes them with
//! the health samples into `strategy_metrics` in batches; prunes metrics, events and
//! finished commands past their retention periods.
//!
//! Built for bursts (BENCHMARKS.md): waiting rows are kept compact, in batch-sized
//! chunks that hold the fixed-size fields in one vector and every `metrics` object as
//! JSON text in one string (a parsed `Value` costs about ten times its text), so a
//! backlog of 200 000 rows costs tens of MB, not hundreds; and two batches are
//! written at once, each on its own pooled connection, because PostgreSQL spends an
//! insert in its own backend and two backends use two cores.

use crate::tasks::sleep_until;
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::inbound::{check_message, MessageRejected};
use engine_protocol::Channels;
use engine_store::manager::{self as db, MetricsRow};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::ops::ControlFlow;
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
    /// When the manager received them (for metrics read back from the database at
    /// start-up: when they were sent).
    pub received_at: chrono::DateTime<Utc>,
    pub pnl: Option<f64>,
    pub positions_count: Option<i32>,
    pub orders_count: Option<i32>,
    pub success_rate: Option<f64>,
    /// `last_tick_age_ms` as the executor reported it (None before its first tick).
    pub last_tick_age_ms: Option<f64>,
    /// When the executor received its last tick (`last_tick_at`; None before its
    /// first tick, or from an executor that does not report it).
    pub last_tick_at: Option<DateTime<Utc>>,
    /// When the executor sent them (the message's `timestamp`, its own clock).
    pub reported_at: DateTime<Utc>,
    /// How often it reports (`metrics_interval_ms`).
    pub report_every: Option<std::time::Duration>,
    /// Whether the strategy subscribes to market data (`subscribed_tokens`; None
    /// from an executor that does not say).
    pub takes_market_data: Option<bool>,
    /// The whole `metrics` object.
    pub metrics: Value,
}

impl LastMetrics {
    /// The latest metrics of `row`, received at `received_at`.
    pub fn from_row(row: &MetricsRow, received_at: DateTime<Utc>) -> LastMetrics {
        let mut last = LastMetrics::from_object(row.metrics.clone(), row.timestamp, received_at);
        last.pnl = row.pnl;
        last.positions_count = row.positions_count;
        last.orders_count = row.orders_count;
        last.success_rate = row.success_rate;
        last
    }

    /// The runtime's fields of a `metrics` object (the contract's four are left
    /// `None` for the caller).
    fn from_object(
        metrics: Value,
        reported_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
    ) -> LastMetrics {
        LastMetrics {
            received_at,
            reported_at,
            report_every: engine_protocol::metrics_interval(&metrics),
            pnl: None,
            positions_count: None,
            orders_count: None,
            success_rate: None,
            last_tick_age_ms: metrics.get("last_tick_age_ms").and_then(Value::as_f64),
            last_tick_at: engine_protocol::last_tick_at(&metrics),
            takes_market_data: engine_protocol::takes_market_data(&metrics),
            metrics,
        }
    }

    /// Milliseconds since the last tick at `now`: from `last_tick_at` when the
    /// executor reports it ([`engine_protocol::tick_age_ms`]), else (an older
    /// executor) the age it reported plus the time since the report.
    pub fn tick_age_ms(&self, now: DateTime<Utc>) -> Option<f64> {
        match self.last_tick_at {
            Some(at) => Some(engine_protocol::tick_age_ms(
                at,
                self.reported_at,
                self.report_every,
                now,
            )),
            None => {
                let since = (now - self.received_at).num_milliseconds().max(0) as f64;
                self.last_tick_age_ms
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| ms + since)
            }
        }
    }
}

/// The newest metrics each strategy reported before this manager started (from
/// `strategy_metrics`): tick age and PnL are known at once after a restart, before
/// the executors report again.
pub async fn seed_last_metrics(shared: &Shared) {
    match db::latest_strategy_metrics(&shared.pool).await {
        Ok(rows) => {
            let mut last = shared.last_metrics.lock().expect("last_metrics lock");
            for row in rows {
                last.entry(row.strategy_id)
                    .or_insert_with(|| LastMetrics::from_row(&row, row.timestamp));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the latest metrics; tick ages are unknown until the executors report again");
        }
    }
}

/// Why an executor's message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("channel is not strategy:metrics:{{uuid}}")]
    BadChannel,
    #[error(transparent)]
    Message(#[from] MessageRejected),
    #[error("fields do not match the metrics payload")]
    BadFields(#[source] serde_json::Error),
}

/// The fields of a [`MetricsMessage`] a row needs, checked as it checks them, but
/// without its `#[serde(flatten)]` map of the other metrics: that copied every other
/// field of every message (most of the recorder's work at 1,000 strategies).
#[derive(Deserialize)]
struct Checked<'a> {
    #[allow(dead_code)] // checked: a string
    name: &'a str,
    timestamp: DateTime<Utc>,
    metrics: CheckedMetrics,
}

/// [`engine_protocol::StrategyMetrics`]'s contract fields; the others are left in the
/// object, which must be one.
struct CheckedMetrics {
    pnl: f64,
    positions_count: i64,
    orders_count: i64,
    success_rate: f64,
}

impl<'de> Deserialize<'de> for CheckedMetrics {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            pnl: f64,
            #[allow(dead_code)] // checked: a number when present
            #[serde(default)]
            pnl_total: Option<f64>,
            positions_count: i64,
            orders_count: i64,
            success_rate: f64,
        }
        // A map only, as the flattened struct took it (a derived struct would also
        // take an array, field by field).
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CheckedMetrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a metrics object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let f = Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(CheckedMetrics {
                    pnl: f.pnl,
                    positions_count: f.positions_count,
                    orders_count: f.orders_count,
                    success_rate: f.success_rate,
                })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Check one message from `strategy:metrics:{id}` and turn it into a row.
pub fn parse_metrics(
    channels: &Channels,
    channel: &str,
    payload: &[u8],
) -> Result<MetricsRow, Rejected> {
    let channel_id = channels
        .strategy_id_of_metrics_channel(channel)
        .ok_or(Rejected::BadChannel)?;
    let value = Value::Object(check_message(payload, Some(channel_id))?);
    // Checked in place (no copy of the message); then the `metrics` object is moved
    // out of it for the row.
    let (timestamp, checked) = {
        let msg = Checked::deserialize(&value).map_err(Rejected::BadFields)?;
        (msg.timestamp, msg.metrics)
    };
    let metrics = match value {
        Value::Object(mut object) => object.remove("metrics").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let finite = |x: f64| x.is_finite().then_some(x);
    let as_i32 = |x: i64| i32::try_from(x).ok();
    Ok(MetricsRow {
        strategy_id: channel_id,
        timestamp,
        source: "strategy",
        pnl: finite(checked.pnl),
        positions_count: as_i32(checked.positions_count),
        orders_count: as_i32(checked.orders_count),
        success_rate: finite(checked.success_rate),
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

    /// The rows again, for the INSERT (`metrics` as the text kept here).
    fn to_rows(&self) -> Vec<MetricsRow<&str>> {
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
                    metrics: text,
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

/// Subscribe to `strategy:metrics:*` and forward every checked message to the
/// writer, reconnecting whenever Redis goes away, until the manager stops.
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
        let pubsub = match pubsub {
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
        if forward(&shared, pubsub, &tx, &mut dropped).await.is_break() {
            return;
        }
        if !down_logged {
            tracing::warn!("metrics subscription lost; reconnecting");
            down_logged = true;
        }
    }
}

/// Forward one subscription's messages: `Break` once the manager stops, `Continue`
/// when Redis ended the subscription (reconnect).
async fn forward(
    shared: &Shared,
    mut pubsub: redis::aio::PubSub,
    tx: &mpsc::Sender<PendingRow>,
    dropped: &mut u64,
) -> ControlFlow<()> {
    let mut stream = pubsub.on_message();
    loop {
        let msg = tokio::select! {
            _ = shared.cancel.cancelled() => return ControlFlow::Break(()),
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else {
            return ControlFlow::Continue(());
        };
        accept(
            shared,
            msg.get_channel_name(),
            msg.get_payload_bytes(),
            tx,
            dropped,
        );
    }
}

/// Check one message; keep it as the strategy's latest metrics and pass it to the
/// writer (dropped, and counted, when the writer is [`MAX_BUFFERED`] behind).
fn accept(
    shared: &Shared,
    channel: &str,
    payload: &[u8],
    tx: &mpsc::Sender<PendingRow>,
    dropped: &mut u64,
) {
    let row = match parse_metrics(&shared.channels, channel, payload) {
        Ok(row) => row,
        Err(why) => {
            let reason = crate::error_chain(&why);
            tracing::warn!(channel, reason, "dropped an executor message");
            return;
        }
    };
    if shared.scope.node().is_some()
        && !shared
            .live
            .lock()
            .expect("live lock")
            .contains_key(&row.strategy_id)
    {
        return; // a cluster node records only its own strategies' metrics
    }
    let (pending, metrics) = PendingRow::split(row);
    let last = LastMetrics {
        pnl: pending.pnl,
        positions_count: pending.positions_count,
        orders_count: pending.orders_count,
        success_rate: pending.success_rate,
        ..LastMetrics::from_object(metrics, pending.timestamp, Utc::now())
    };
    shared
        .last_metrics
        .lock()
        .expect("last_metrics lock")
        .insert(pending.strategy_id, last);
    if tx.try_send(pending).is_err() {
        *dropped += 1;
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped = *dropped,
                "metrics writer is behind ({MAX_BUFFERED} rows waiting); samples dropped"
            );
        }
    }
}

/// One batch written, or given back with the error.
type InsertOutcome = Result<(), (Chunk, sqlx::Error)>;

/// Empties the channel into the backlog continuously and keeps up to
/// [`INSERTS_IN_FLIGHT`] batches being written; a batch that fails goes back to the
/// front and is tried again after [`RETRY_AFTER`]. At shutdown, what is waiting is
/// written once more (not retried). Prunes what is past its retention every hour.
async fn write_batches(
    shared: Arc<Shared>,
    mut health_rx: mpsc::Receiver<MetricsRow>,
    mut rx: mpsc::Receiver<PendingRow>,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut writer = BatchWriter::new(shared.clone());
    let mut incoming: Vec<PendingRow> = Vec::with_capacity(1024);
    let mut health: Vec<MetricsRow> = Vec::new();
    let mut health_open = true;
    loop {
        let room = writer.has_room();
        let wake_at = writer.wake_at();
        tokio::select! {
            _ = shared.cancel.cancelled(), if !writer.closing => {
                while let Ok(row) = health_rx.try_recv() {
                    writer.backlog.push(&PendingRow::split(row).0);
                }
                while let Ok(row) = rx.try_recv() {
                    writer.backlog.push(&row);
                }
                writer.close();
            }
            Some(done) = writer.inflight.join_next(), if !writer.inflight.is_empty() => {
                writer.insert_done(done);
            }
            n = rx.recv_many(&mut incoming, 1024), if room => {
                if n == 0 {
                    // The subscriber is gone: only at shutdown.
                    writer.close();
                }
                for row in incoming.drain(..) {
                    writer.backlog.push(&row);
                }
            }
            n = health_rx.recv_many(&mut health, 1024), if room && health_open => {
                health_open = n > 0;
                for row in health.drain(..) {
                    writer.backlog.push(&PendingRow::split(row).0);
                }
            }
            _ = prune.tick(), if !writer.closing => prune_past_retention(&shared).await,
            _ = sleep_until(wake_at) => {}
            else => break,
        }
        writer.start_due_inserts();
        if writer.is_done() {
            break;
        }
    }
    if writer.backlog.len() > 0 {
        tracing::warn!(
            rows = writer.backlog.len(),
            "metrics samples not written at shutdown"
        );
    }
}

/// The batch writer's state between two wake-ups: the backlog, the inserts in
/// flight, and whether the database is failing.
struct BatchWriter {
    shared: Arc<Shared>,
    backlog: Backlog,
    inflight: JoinSet<InsertOutcome>,
    /// The last insert failed (logged once, until one succeeds).
    failing: bool,
    /// When a failed batch may be tried again.
    retry_at: Option<Instant>,
    /// Shutting down: nothing new is taken, what waits is written once more.
    closing: bool,
}

impl BatchWriter {
    fn new(shared: Arc<Shared>) -> BatchWriter {
        BatchWriter {
            shared,
            backlog: Backlog::default(),
            inflight: JoinSet::new(),
            failing: false,
            retry_at: None,
            closing: false,
        }
    }

    /// Whether more rows may be taken from the channels.
    fn has_room(&self) -> bool {
        self.backlog.len() < MAX_BUFFERED && !self.closing
    }

    /// When to wake for a due partial batch or a retry: only when a write could start.
    fn wake_at(&self) -> Option<Instant> {
        if self.inflight.len() >= INSERTS_IN_FLIGHT {
            return None;
        }
        match (self.retry_at, self.backlog.due_at()) {
            (Some(r), Some(d)) => Some(r.max(d)),
            (r, d) => r.or(d),
        }
    }

    fn close(&mut self) {
        self.closing = true;
        self.retry_at = None;
    }

    /// An insert ended: a failed batch goes back to the front (or, at shutdown, is
    /// given up).
    fn insert_done(&mut self, done: Result<InsertOutcome, tokio::task::JoinError>) {
        match done {
            Ok(Ok(())) => {
                if self.failing {
                    tracing::info!("writing strategy_metrics again");
                    self.failing = false;
                }
            }
            Ok(Err((chunk, err))) => {
                if !self.failing {
                    tracing::warn!(error = %err, buffered = self.backlog.len() + chunk.len(), "cannot write strategy_metrics; keeping samples and retrying");
                    self.failing = true;
                }
                if self.closing {
                    tracing::warn!(
                        rows = chunk.len(),
                        "metrics samples not written at shutdown"
                    );
                } else {
                    self.backlog.put_back(chunk);
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
            Err(err) => tracing::error!(error = %err, "a metrics insert task failed"),
        }
    }

    /// Start inserting the batches that are due, up to [`INSERTS_IN_FLIGHT`] (none
    /// before a retry is due, nor at shutdown once the database failed).
    fn start_due_inserts(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.retry_at = None;
        while self.inflight.len() < INSERTS_IN_FLIGHT && !(self.closing && self.failing) {
            let Some(chunk) = self.backlog.take_due(now, self.closing) else {
                break;
            };
            let pool = self.shared.pool.clone();
            self.inflight.spawn(async move {
                match db::insert_metrics(&pool, &chunk.to_rows()).await {
                    Ok(_) => Ok(()),
                    Err(err) => Err((chunk, err)),
                }
            });
        }
    }

    /// Shutting down, and nothing more will be written.
    fn is_done(&self) -> bool {
        self.closing && self.inflight.is_empty() && (self.backlog.len() == 0 || self.failing)
    }
}

/// Delete what is past its retention: metrics and events (`--metrics-retention`),
/// finished commands (`--command-retention`).
async fn prune_past_retention(shared: &Shared) {
    let now = Utc::now();
    let cutoff = |retention: Duration, fallback_days: i64| {
        now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(fallback_days))
    };
    let metrics_cutoff = cutoff(shared.config.metrics_retention, 7);
    match db::prune_history(&shared.pool, metrics_cutoff).await {
        Ok(n) if n > 0 => tracing::info!(
            rows = n,
            "pruned strategy_metrics and strategy_events rows past the retention period"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune strategy_metrics"),
    }
    let commands_cutoff = cutoff(shared.config.command_retention, 30);
    match engine_store::metrics::prune_commands(&shared.pool, commands_cutoff).await {
        Ok(n) if n > 0 => tracing::info!(
            rows = n,
            "pruned finished strategy_commands rows past the retention period"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not prune strategy_commands"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_protocol::MAX_MESSAGE_BYTES;
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

    /// Rows as a chunk gives them back, with their `metrics` text parsed.
    fn parsed(rows: Vec<MetricsRow<&str>>) -> Vec<MetricsRow> {
        rows.into_iter()
            .map(|r| {
                let metrics: Value =
                    serde_json::from_str(r.metrics).expect("text the recorder wrote");
                r.with_metrics(metrics)
            })
            .collect()
    }

    #[test]
    fn chunks_give_back_the_rows_they_keep() {
        let mut chunk = Chunk::default();
        let rows: Vec<MetricsRow> = (0..50).map(row).collect();
        for r in &rows {
            chunk.push(&pending(r));
        }
        assert_eq!(chunk.len(), 50);
        assert_eq!(parsed(chunk.to_rows()), rows);
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
        assert_eq!(parsed(full.to_rows())[0], row(0));
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
        assert_eq!(parsed(again.to_rows())[0], row(BATCH));
        assert_eq!(
            parsed(backlog.take_due(later, true).unwrap().to_rows()),
            vec![row(99)]
        );
        assert!(backlog.take_due(later, true).is_none());
    }

    #[test]
    fn the_check_takes_and_refuses_what_the_contracts_message_type_does() {
        let c = Channels::default();
        let id = Uuid::new_v4();
        let ch = c.metrics(id);
        let variants: Vec<(&str, Value)> = vec![
            ("good", json!({})),
            (
                "extra fields of any kind",
                json!({"m": {"beats": 3, "x": [1, {"y": null}], "s": "t"}}),
            ),
            ("pnl_total a number", json!({"m": {"pnl_total": 2.5}})),
            ("pnl_total null", json!({"m": {"pnl_total": null}})),
            ("pnl_total a string", json!({"m": {"pnl_total": "2"}})),
            ("pnl a string", json!({"m": {"pnl": "lots"}})),
            (
                "positions_count a fraction",
                json!({"m": {"positions_count": 1.5}}),
            ),
            ("orders_count negative", json!({"m": {"orders_count": -3}})),
            ("success_rate missing", json!({"drop_m": "success_rate"})),
            ("metrics an array", json!({"metrics": [0.0, 0, 0, 0.0]})),
            ("metrics null", json!({"metrics": null})),
            ("name a number", json!({"name": 7})),
            ("name missing", json!({"drop": "name"})),
            ("timestamp not a time", json!({"timestamp": "yesterday"})),
        ];
        for (what, change) in variants {
            let mut msg = good(id);
            if let Some(fields) = change.get("m").and_then(Value::as_object) {
                for (k, v) in fields {
                    msg["metrics"][k] = v.clone();
                }
            } else if let Some(field) = change.get("drop_m").and_then(Value::as_str) {
                msg["metrics"].as_object_mut().unwrap().remove(field);
            } else if let Some(field) = change.get("drop").and_then(Value::as_str) {
                msg.as_object_mut().unwrap().remove(field);
            } else {
                for (k, v) in change.as_object().unwrap() {
                    msg[k] = v.clone();
                }
            }
            let contract = engine_protocol::MetricsMessage::deserialize(&msg).is_ok();
            let ours = parse_metrics(&c, &ch, msg.to_string().as_bytes());
            assert_eq!(ours.is_ok(), contract, "{what}: {msg} gave {ours:?}");
        }
    }

    #[test]
    fn rejects_bad_messages() {
        let c = Channels::default();
        let id = Uuid::new_v4();
        let ch = c.metrics(id);
        let other = good(Uuid::new_v4()).to_string();
        assert!(matches!(
            parse_metrics(&c, &ch, other.as_bytes()),
            Err(Rejected::Message(MessageRejected::WrongStrategy { .. }))
        ));
        assert!(matches!(
            parse_metrics(&c, &ch, b"[1,2]"),
            Err(Rejected::Message(MessageRejected::NotAnObject(_)))
        ));
        assert!(matches!(
            parse_metrics(&c, &ch, b"{not json"),
            Err(Rejected::Message(MessageRejected::NotJson(_)))
        ));
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            parse_metrics(&c, &ch, &big),
            Err(Rejected::Message(MessageRejected::TooLarge(_)))
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
