//! Throughput: metrics persisted per second (sustained, and an unpaced burst) and
//! ticks per second through one executor, read from its own counters.

use super::{mb, ms, BenchContext, EVENT_DEADLINE};
use crate::engine::{BenchEngine, EngineOptions, Feed, StrategySpec};
use crate::report::{num, Figure, Goal, Progress, Results};
use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use engine_protocol::Tick;
use engine_protocol::{MetricsMessage, StrategyMetrics};
use engine_store::bench as db;
use engine_store::{CommandStatus, CommandWord};
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Metrics persisted per second, and ticks per second through one executor.
pub async fn throughput(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    const SINKS: usize = 50;
    let token = format!("BENCH{}", &Uuid::new_v4().simple().to_string()[..8]);
    eprintln!(
        "\n== throughput: {} metrics messages over {SINKS} strategy ids, {} ticks through one executor ==",
        ctx.args.metrics_messages, ctx.args.ticks
    );
    let mut strategies = vec![StrategySpec {
        name: "ticks".into(),
        strategy_type: "heartbeat".into(),
        config: json!({"interval_ms": 1000, "token": token}),
    }];
    strategies.extend((0..SINKS).map(|i| StrategySpec::heartbeat(format!("sink-{i:03}"))));
    let options = EngineOptions {
        label: "throughput".into(),
        health_interval: None,
        // The tick count is read from the executor's metrics: a short interval makes
        // the end of the run precise to 100 ms.
        metrics_interval: Some(Duration::from_millis(100)),
        restart_delay: None,
        max_concurrent_executions: None,
        strategies,
        data: Vec::new(),
    };
    let mut engine = BenchEngine::start(&ctx.args, &ctx.binaries, &ctx.cleanup, options).await?;
    let outcome = throughput_on(&mut engine, ctx, &token, results).await;
    let shutdown = engine.shutdown().await;
    outcome?;
    shutdown
}

async fn throughput_on(
    engine: &mut BenchEngine,
    ctx: &BenchContext,
    token: &str,
    results: &mut Results,
) -> anyhow::Result<()> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    let redis = engine
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("cannot connect to Redis")?;
    metrics_flood(
        engine,
        &redis,
        ctx.args.metrics_messages,
        ctx.args.metrics_burst,
        results,
    )
    .await?;
    tick_flood(engine, &redis, token, ctx.args.ticks, results).await
}

/// Publish every payload, pipelined in chunks, several chunks in flight.
async fn publish_all(
    redis: &MultiplexedConnection,
    channels: &[String],
    items: &[(usize, String)],
) -> anyhow::Result<()> {
    const CHUNK: usize = 1_000;
    const IN_FLIGHT: usize = 4;
    futures_util::stream::iter(items.chunks(CHUNK))
        .map(|chunk| {
            let mut conn = redis.clone();
            async move {
                let mut pipe = redis::pipe();
                for (channel, payload) in chunk {
                    pipe.publish(&channels[*channel], payload).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
        .context("publishing to Redis failed")
}

/// How one flood of metrics messages went.
struct Flood {
    rows: i64,
    inserts: i64,
    /// From the first publish to the poll that saw the last row.
    persist_s: f64,
    publish_s: f64,
}

impl Flood {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.persist_s
    }
}

/// Messages the sustained flood keeps published but not yet persisted, at most: a
/// few MB, far below Redis' 32 MB limit on a subscriber's output buffer.
const METRICS_WINDOW: usize = 20_000;

/// Synthetic, valid metrics messages for the `sinks` strategies, round robin.
fn metrics_payloads(
    engine: &BenchEngine,
    sinks: &[Uuid],
    count: usize,
) -> (Vec<String>, Vec<(usize, String)>) {
    let channels: Vec<String> = sinks
        .iter()
        .map(|id| engine.channels.metrics(*id))
        .collect();
    let now = Utc::now();
    let items = (0..count)
        .map(|i| {
            let k = i % sinks.len();
            let mut metrics = StrategyMetrics {
                pnl: i as f64 * 0.01,
                positions_count: 1,
                orders_count: i as i64,
                success_rate: 0.5,
                ..StrategyMetrics::default()
            };
            metrics.extra.insert("seq".into(), Value::from(i));
            let msg = MetricsMessage {
                strategy_id: sinks[k],
                name: format!("sink-{k:03}"),
                timestamp: now,
                metrics,
            };
            (k, serde_json::to_string(&msg).expect("metrics serialize"))
        })
        .collect();
    (channels, items)
}

/// Publish `count` metrics messages for `sinks` and count the rows they become.
/// `window`: keep at most this many published but not yet persisted (None: publish
/// everything at once).
async fn flood_metrics(
    engine: &BenchEngine,
    redis: &MultiplexedConnection,
    sinks: &[Uuid],
    count: usize,
    window: Option<usize>,
    label: &str,
) -> anyhow::Result<Flood> {
    let (channels, items) = metrics_payloads(engine, sinks, count);
    let (count_tx, count_rx) = tokio::sync::watch::channel(0i64);
    let published_from = Utc::now();
    let publisher = async {
        let mut count_rx = count_rx;
        let mut sent = 0;
        while sent < items.len() {
            if let Some(window) = window {
                while sent as i64 - *count_rx.borrow_and_update() >= window as i64 {
                    if count_rx.changed().await.is_err() {
                        return Ok(Utc::now());
                    }
                }
            }
            let take = match window {
                Some(window) => (items.len() - sent).min(window / 4).max(1),
                None => items.len() - sent,
            };
            publish_all(redis, &channels, &items[sent..sent + take]).await?;
            sent += take;
        }
        anyhow::Ok(Utc::now())
    };
    // Count the rows until all are there or the count stops moving for 3 s.
    let counter = async {
        let mut progress = Progress::new(label, count);
        let until = Instant::now() + Duration::from_secs(300);
        let mut last = (0i64, Utc::now());
        let mut stalled_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let rows = db::count_metrics(&engine.pool, sinks).await?;
            let at = Utc::now();
            progress.set(rows as usize);
            let _ = count_tx.send(rows);
            if rows != last.0 {
                last = (rows, at);
                stalled_since = Instant::now();
            }
            if rows as usize >= count
                || stalled_since.elapsed() > Duration::from_secs(3)
                || Instant::now() > until
            {
                progress.finish();
                return anyhow::Ok(last);
            }
        }
    };
    let (published_to, (rows, done_at)) = tokio::try_join!(publisher, counter)?;
    let inserts = db::count_metric_inserts(&engine.pool, sinks).await?;
    Ok(Flood {
        rows,
        inserts,
        persist_s: ms(done_at, published_from) / 1000.0,
        publish_s: ms(published_to, published_from) / 1000.0,
    })
}

async fn metrics_flood(
    engine: &mut BenchEngine,
    redis: &MultiplexedConnection,
    count: usize,
    burst: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    // Two sets of strategy ids: one for the sustained flood, one for the burst.
    let sinks: Vec<Uuid> = engine.strategies[1..].to_vec();
    let (sustained_ids, burst_ids) = sinks.split_at(sinks.len() / 2);

    let sustained = flood_metrics(
        engine,
        redis,
        sustained_ids,
        count,
        Some(METRICS_WINDOW),
        "metrics rows",
    )
    .await?;
    let hwm_sustained = procfs::hwm_kib(engine.manager.pid).map(mb);
    let lost = count as i64 - sustained.rows;
    results.push(
        Figure::single(
            "metrics_rows_per_s",
            "metrics persisted (`strategy:metrics:*` → `strategy_metrics` rows)",
            "rows/s",
            Some(sustained.rate()),
            Some(Goal::AtLeast(20_000.0)),
        )
        .with_note(format!(
            "{count} valid messages published pipelined, at most {METRICS_WINDOW} ahead of the rows (so Redis never drops the subscriber); {} rows in {:.2} s from the first publish (counted every 100 ms, so a lower bound) in {} INSERTs ({:.0} rows each); {lost} lost; the manager's resident memory peaked at {} MB",
            sustained.rows,
            sustained.persist_s,
            sustained.inserts,
            sustained.rows as f64 / sustained.inserts.max(1) as f64,
            hwm_sustained.map(num).unwrap_or_else(|| "?".into()),
        )),
    );
    results.push(Figure::single(
        "metrics_rows_lost",
        "metrics messages not persisted (sustained)",
        "rows",
        Some(lost as f64),
        Some(Goal::AtMost(0.0)),
    ));

    let mut burst_json = Value::Null;
    if burst > 0 {
        let flood =
            flood_metrics(engine, redis, burst_ids, burst, None, "metrics burst rows").await?;
        let hwm = procfs::hwm_kib(engine.manager.pid).map(mb);
        let after = procfs::rss_kib(engine.manager.pid).map(mb);
        let lost = burst as i64 - flood.rows;
        results.push(
            Figure::single(
                "metrics_burst_lost",
                &format!("metrics burst: {burst} messages published at once → not persisted"),
                "rows",
                Some(lost as f64),
                None,
            )
            .with_note(format!(
                "published in {:.2} s ({} msg/s); {} rows in {:.2} s ({} rows/s); the manager's resident memory peaked at {} MB and was {} MB after. A burst the manager cannot parse as fast as it arrives queues inside the Redis client and then in Redis, which drops a subscriber whose output buffer passes 32 MB (client-output-buffer-limit pubsub)",
                flood.publish_s,
                num(burst as f64 / flood.publish_s),
                flood.rows,
                flood.persist_s,
                num(flood.rate()),
                hwm.map(num).unwrap_or_else(|| "?".into()),
                after.map(num).unwrap_or_else(|| "?".into()),
            )),
        );
        burst_json = json!({"messages": burst, "rows": flood.rows, "inserts": flood.inserts,
            "publish_s": flood.publish_s, "persist_s": flood.persist_s,
            "manager_hwm_mb": hwm, "manager_rss_after_mb": after});
    }
    results.extra.insert(
        "metrics_flood".into(),
        json!({"messages": count, "window": METRICS_WINDOW, "rows": sustained.rows,
               "inserts": sustained.inserts, "publish_s": sustained.publish_s,
               "persist_s": sustained.persist_s, "manager_hwm_mb": hwm_sustained,
               "burst": burst_json}),
    );
    Ok(())
}

/// The executor's own counters, from one of its metrics messages.
#[derive(Debug, Clone, Copy)]
struct TickCounts {
    received: u64,
    dropped: u64,
    at: DateTime<Utc>,
    sent_at: DateTime<Utc>,
}

fn tick_counts(msg: &crate::engine::Received) -> Option<TickCounts> {
    let value = msg.json()?;
    let metrics = value.get("metrics")?;
    Some(TickCounts {
        received: metrics.get("ticks_received")?.as_u64()?,
        dropped: metrics.get("ticks_dropped")?.as_u64()?,
        at: msg.at,
        sent_at: value.get("timestamp")?.as_str()?.parse().ok()?,
    })
}

async fn tick_flood(
    engine: &mut BenchEngine,
    redis: &MultiplexedConnection,
    token: &str,
    count: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let id = engine.strategies[0];
    let mut metrics = Feed::subscribe(&engine.redis, &engine.channels.metrics(id)).await?;
    let (cmd, _) = engine
        .insert_command(Some(id), CommandWord::Start, json!({}))
        .await?;
    let end = engine.wait_command(cmd, EVENT_DEADLINE).await?;
    if end.status != CommandStatus::Executed {
        bail!(
            "start of the tick strategy ended {}: {:?}",
            end.status,
            end.error
        );
    }
    // Its subscription to live_data:{token} is in place (PUBSUB NUMSUB), and a
    // metrics message gives the counts before the flood.
    let channel = engine.channels.live_data(token);
    wait_subscribed(redis, &channel).await?;
    metrics.drain();
    let base = next_counts(&mut metrics).await?;
    let executor = engine.running_pid(id).await?;
    let executor_cpu_from = procfs::threads_cpu_ns(executor);

    let items = tick_payloads(token, count);
    let bytes = items.first().map_or(0, |(_, p)| p.len());
    let channels = vec![channel];
    let published_from = Utc::now();
    publish_all(redis, &channels, &items).await?;
    let published_to = Utc::now();
    drop(items);

    let (series, done) = follow_counts(&mut metrics, base, count).await?;
    let executor_cpu_to = procfs::threads_cpu_ns(executor);
    let end = done.unwrap_or(*series.last().expect("has the base"));
    let run = FloodRun {
        count,
        bytes,
        base,
        end,
        series,
        published_from,
        published_to,
        executor_cpu_ns: (executor_cpu_from, executor_cpu_to),
    };
    report_tick_flood(&run, results);
    Ok(())
}

/// Wait until something (the tick executor) subscribes to `channel`.
async fn wait_subscribed(redis: &MultiplexedConnection, channel: &str) -> anyhow::Result<()> {
    let mut conn = redis.clone();
    let until = Instant::now() + EVENT_DEADLINE;
    loop {
        let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await?;
        if numsub.first().is_some_and(|(_, n)| *n >= 1) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the tick executor never subscribed to {channel}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `count` ticks of `token`, the price going up and down a cent, as JSON payloads
/// for the first (only) channel.
fn tick_payloads(token: &str, count: usize) -> Vec<(usize, String)> {
    let mut price = 100.0;
    (0..count)
        .map(|i| {
            price += if i % 2 == 0 { 0.01 } else { -0.01 };
            let tick = Tick {
                token: token.to_string(),
                price,
                timestamp: Utc::now(),
                volume: Some(1.0),
                bid: None,
                ask: None,
            };
            (0, serde_json::to_string(&tick).expect("ticks serialize"))
        })
        .collect()
}

/// Follow the executor's counters until they account for every tick, or stop
/// moving for a second: every reading from `base` on, and the final one (`None`
/// when the 120 s deadline passed first).
async fn follow_counts(
    metrics: &mut Feed,
    base: TickCounts,
    count: usize,
) -> anyhow::Result<(Vec<TickCounts>, Option<TickCounts>)> {
    let mut progress = Progress::new("ticks", count);
    let mut series = vec![base];
    let mut done = None;
    let mut stalled_since = Instant::now();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let counts = next_counts(metrics).await?;
        let last = *series.last().expect("has the base");
        series.push(counts);
        let seen = (counts.received - base.received) + (counts.dropped - base.dropped);
        progress.set(seen as usize);
        if seen as usize >= count {
            done = Some(counts);
            break;
        }
        if counts.received != last.received || counts.dropped != last.dropped {
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(1) {
            done = Some(counts);
            break;
        }
    }
    progress.finish();
    Ok((series, done))
}

/// What one tick flood measured.
struct FloodRun {
    count: usize,
    /// The size of one tick's payload.
    bytes: usize,
    /// The executor's counters before the flood, and at its end.
    base: TickCounts,
    end: TickCounts,
    /// Every reading of the counters, from `base` on.
    series: Vec<TickCounts>,
    published_from: DateTime<Utc>,
    published_to: DateTime<Utc>,
    /// The executor's CPU time before and after.
    executor_cpu_ns: (Option<u64>, Option<u64>),
}

/// The fastest rate between two readings of the counters (by their send times).
fn peak_rate(series: &[TickCounts]) -> f64 {
    series
        .windows(2)
        .filter_map(|w| {
            let dt = ms(w[1].sent_at, w[0].sent_at) / 1000.0;
            (dt > 0.0).then(|| (w[1].received - w[0].received) as f64 / dt)
        })
        .fold(0.0, f64::max)
}

fn report_tick_flood(run: &FloodRun, results: &mut Results) {
    let FloodRun {
        count,
        bytes,
        base,
        end,
        published_from,
        ..
    } = *run;
    let series = &run.series;
    // The first message whose counts already equal the final ones marks the end.
    let finished = series
        .iter()
        .find(|c| c.received == end.received && c.dropped == end.dropped)
        .copied()
        .unwrap_or(end);
    let received = end.received - base.received;
    let dropped = end.dropped - base.dropped;
    let unseen = count as i64 - received as i64 - dropped as i64;
    let elapsed_s = ms(finished.at, published_from) / 1000.0;
    let rate = received as f64 / elapsed_s;
    let peak = peak_rate(series);
    let publish_s = ms(run.published_to, published_from) / 1000.0;
    let cpu_per_tick_us = match run.executor_cpu_ns {
        (Some(a), Some(b)) if received + dropped > 0 => {
            Some(b.saturating_sub(a) as f64 / 1000.0 / (received + dropped) as f64)
        }
        _ => None,
    };
    results.push(
        Figure::single("ticks_per_s", "market ticks through one executor's strategy", "ticks/s", Some(rate), Some(Goal::AtLeast(100_000.0)))
            .with_note(format!(
                "{count} ticks of {bytes} bytes published pipelined on one live_data channel in {publish_s:.2} s ({} ticks/s); the executor's ticks_received rose by {received} in {elapsed_s:.2} s from the first publish (read from its metrics every 100 ms, so a lower bound); fastest 100 ms window {} ticks/s; the executor used {} µs of CPU per tick (Redis read, JSON parse, strategy)",
                num(count as f64 / publish_s),
                num(peak),
                cpu_per_tick_us.map(num).unwrap_or_else(|| "?".into()),
            )),
    );
    results.push(
        Figure::single(
            "ticks_lost",
            "ticks the executor dropped or never saw",
            "ticks",
            Some((dropped as i64 + unseen) as f64),
            Some(Goal::AtMost(0.0)),
        )
        .with_note(format!(
            "ticks_dropped rose by {dropped}; {unseen} neither received nor counted as dropped"
        )),
    );
    results.extra.insert(
        "tick_flood".into(),
        json!({"ticks": count, "received": received, "dropped": dropped, "unseen": unseen,
               "publish_s": publish_s, "processed_s": elapsed_s, "peak_per_s": peak,
               "executor_cpu_per_tick_us": cpu_per_tick_us,
               "series": series.iter().map(|c| json!([ms(c.at, published_from), c.received - base.received, c.dropped - base.dropped])).collect::<Vec<_>>()}),
    );
}

async fn next_counts(feed: &mut Feed) -> anyhow::Result<TickCounts> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let Some(msg) = feed.next_until(until).await else {
            bail!("the tick executor published no metrics for 10 s");
        };
        if let Some(counts) = tick_counts(&msg) {
            return Ok(counts);
        }
    }
}
