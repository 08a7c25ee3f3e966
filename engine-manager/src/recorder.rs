//! The [`MetricsRecorder`]: subscribes to `strategy:metrics:*`, checks each message
//! (at most 64 KiB, a JSON object whose `strategy_id` matches its channel, the
//! contract's fields with the right types), and writes them with the health samples
//! into `strategy_metrics` in batches; prunes rows past the retention period.

use crate::db::{self, MetricsRow};
use crate::Shared;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use strategy_sdk::protocol::{MetricsMessage, MAX_MESSAGE_BYTES};
use strategy_sdk::Channels;
use tokio::sync::mpsc;
use uuid::Uuid;

const BATCH: usize = 5_000;
const FLUSH_EVERY: Duration = Duration::from_millis(250);
const MAX_BUFFERED: usize = 200_000;

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
            strategy_sdk::config::json_kind(&value).to_string(),
        ));
    }
    let claimed = value.get("strategy_id").cloned().unwrap_or(Value::Null);
    if claimed.as_str() != Some(channel_id.to_string().as_str()) {
        return Err(Rejected::WrongStrategy {
            claimed: claimed.to_string(),
            channel: channel_id,
        });
    }
    let msg: MetricsMessage =
        serde_json::from_value(value.clone()).map_err(|e| Rejected::BadFields(e.to_string()))?;
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
        metrics: value.get("metrics").cloned().unwrap_or(Value::Null),
    })
}

/// Start the subscriber and the batch writer; returns where health rows go.
pub fn start(shared: Arc<Shared>, client: redis::Client) -> mpsc::Sender<MetricsRow> {
    let (tx, rx) = mpsc::channel(MAX_BUFFERED);
    shared
        .tracker
        .spawn(subscribe(shared.clone(), client, tx.clone()));
    shared.tracker.spawn(write_batches(shared.clone(), rx));
    tx
}

async fn subscribe(shared: Arc<Shared>, client: redis::Client, tx: mpsc::Sender<MetricsRow>) {
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
                    shared
                        .last_metrics
                        .lock()
                        .expect("last_metrics lock")
                        .insert(row.strategy_id, LastMetrics::from_row(&row));
                    if tx.try_send(row).is_err() {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "metrics writer is behind; samples dropped");
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

async fn write_batches(shared: Arc<Shared>, mut rx: mpsc::Receiver<MetricsRow>) {
    let retention = chrono::Duration::from_std(shared.config.metrics_retention)
        .unwrap_or(chrono::Duration::days(7));
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut buffer: Vec<MetricsRow> = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        let mut closing = false;
        tokio::select! {
            _ = shared.cancel.cancelled() => {
                while let Ok(row) = rx.try_recv() {
                    buffer.push(row);
                }
                closing = true;
            }
            _ = prune.tick() => {
                match db::prune_history(&shared.pool, Utc::now() - retention).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned strategy_metrics and strategy_events rows past the retention period"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "could not prune strategy_metrics"),
                }
                continue;
            }
            n = rx.recv_many(&mut buffer, BATCH) => {
                if n == 0 {
                    closing = true;
                } else if buffer.len() < BATCH {
                    // Gather a little more so inserts stay batched under load.
                    let _ = tokio::time::timeout(FLUSH_EVERY, async {
                        while buffer.len() < BATCH {
                            let room = BATCH - buffer.len();
                            if rx.recv_many(&mut buffer, room).await == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                }
            }
        }
        while !buffer.is_empty() {
            let take = buffer.len().min(BATCH);
            match db::insert_metrics(&shared.pool, &buffer[..take]).await {
                Ok(_) => {
                    if failing {
                        tracing::info!("writing strategy_metrics again");
                        failing = false;
                    }
                    buffer.drain(..take);
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, buffered = buffer.len(), "cannot write strategy_metrics; keeping samples and retrying");
                        failing = true;
                    }
                    if buffer.len() > MAX_BUFFERED {
                        let excess = buffer.len() - MAX_BUFFERED;
                        buffer.drain(..excess);
                    }
                    if closing {
                        return;
                    }
                    tokio::select! {
                        _ = shared.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    break;
                }
            }
        }
        if closing {
            return;
        }
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
