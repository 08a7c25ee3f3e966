//! `GET /metrics` in the Prometheus text exposition format (0.0.4), written by hand.
//!
//! Per strategy (labels `strategy_id`, `name`, `type`): up, status, CPU, memory,
//! restarts, PnL, positions, orders, success rate, tick age, uptime. Engine-wide:
//! commands by outcome and a command-latency histogram (`executed_at - created_at`,
//! from the `strategy_commands` table, so they survive manager restarts), strategies
//! by status, database and Redis reachability, and the manager's own uptime, memory
//! and CPU.

use super::probes;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;
use engine_protocol::Status;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the command latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

const COMMAND_LABELS: [&str; 7] = [
    "start", "stop", "restart", "pause", "resume", "update", "other",
];

/// A text exposition being written.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[derive(Debug, sqlx::FromRow)]
struct StrategyRow {
    id: Uuid,
    name: String,
    strategy_type: String,
    status: String,
    restart_count: i32,
}

/// One strategy as exported: identity plus what the manager knows right now.
struct Series {
    id: String,
    name: String,
    kind: String,
    status: Status,
    restart_count: i32,
    uptime_s: Option<f64>,
}

/// Finished and unfinished commands, and the latency histogram, per command word.
#[derive(Default)]
struct CommandStats {
    /// (command, status) -> rows.
    by_outcome: BTreeMap<(String, String), i64>,
    /// command -> (count per bucket index 0..=len, sum of seconds).
    latency: BTreeMap<String, (Vec<i64>, f64)>,
}

/// Command rows of one (command, status, latency bucket).
#[derive(Debug, sqlx::FromRow)]
struct CommandBucket {
    command: String,
    status: String,
    bucket: Option<i32>,
    count: i64,
    sum: Option<f64>,
}

async fn command_stats(pool: &sqlx::PgPool) -> Result<CommandStats, sqlx::Error> {
    // width_bucket(x, thresholds) = how many thresholds are <= x: bucket 0 lies
    // below the first bound, bucket n above the last.
    let rows: Vec<CommandBucket> = sqlx::query_as(
        "SELECT command, status, width_bucket(latency, $1::float8[]) AS bucket, \
                count(*) AS count, sum(latency) AS sum \
         FROM (SELECT CASE WHEN command IN ('start','stop','restart','pause','resume','update') \
                      THEN command ELSE 'other' END AS command, status, \
                      extract(epoch FROM executed_at - created_at)::float8 AS latency \
               FROM strategy_commands) k \
         GROUP BY 1, 2, 3",
    )
    .bind(&LATENCY_BUCKETS[..])
    .fetch_all(pool)
    .await?;
    let mut stats = CommandStats::default();
    for CommandBucket {
        command,
        status,
        bucket,
        count,
        sum,
    } in rows
    {
        *stats
            .by_outcome
            .entry((command.clone(), status.clone()))
            .or_default() += count;
        if let (Some(bucket), "executed" | "failed") = (bucket, status.as_str()) {
            let entry = stats
                .latency
                .entry(command)
                .or_insert_with(|| (vec![0; LATENCY_BUCKETS.len() + 1], 0.0));
            let index = (bucket.max(0) as usize).min(LATENCY_BUCKETS.len());
            entry.0[index] += count;
            entry.1 += sum.unwrap_or(0.0);
        }
    }
    Ok(stats)
}

/// The manager's resident memory in bytes, from `/proc/self/status`.
fn own_resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let shared = &state.shared;
    let (db_probe, redis_probe) = tokio::join!(probes::database(&state), probes::redis(&state));
    let (rows, stats) = if db_probe.ok {
        let rows: Result<Vec<StrategyRow>, _> = sqlx::query_as(
            "SELECT id, name, strategy_type, status, restart_count FROM strategy_configs ORDER BY name",
        )
        .fetch_all(&shared.pool)
        .await;
        let stats = command_stats(&shared.pool).await;
        if let Err(err) = rows.as_ref().map(|_| ()).and(stats.as_ref().map(|_| ())) {
            tracing::warn!(error = %err, "/metrics: cannot read the database");
        }
        (rows.ok(), stats.ok())
    } else {
        (None, None)
    };

    // The manager's own view (the live map) wins over the row: it is what the
    // supervisors know now, and it stays available when the database is not.
    let live = shared.live.lock().expect("live lock").clone();
    let now = Utc::now();
    let uptime = |started: Option<chrono::DateTime<Utc>>, status: Status| {
        started
            .filter(|_| status.is_live())
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let mut series: Vec<Series> = match &rows {
        Some(rows) => rows
            .iter()
            .map(|r| {
                let entry = live.get(&r.id);
                let status = entry
                    .map(|e| e.status)
                    .unwrap_or_else(|| r.status.parse().unwrap_or(Status::Stopped));
                Series {
                    id: r.id.to_string(),
                    name: r.name.clone(),
                    kind: r.strategy_type.clone(),
                    status,
                    restart_count: entry.map_or(r.restart_count, |e| e.restart_count),
                    uptime_s: uptime(entry.and_then(|e| e.started_at), status),
                }
            })
            .collect(),
        None => live
            .iter()
            .map(|(id, e)| Series {
                id: id.to_string(),
                name: e.name.clone(),
                kind: String::new(),
                status: e.status,
                restart_count: e.restart_count,
                uptime_s: uptime(e.started_at, e.status),
            })
            .collect(),
    };
    series.sort_by(|a, b| a.name.cmp(&b.name));
    let ids: HashMap<&str, Uuid> = series
        .iter()
        .filter_map(|s| s.id.parse().ok().map(|u| (s.id.as_str(), u)))
        .collect();
    let health = state.live.all_health();
    let last_metrics = shared
        .last_metrics
        .lock()
        .expect("last_metrics lock")
        .clone();
    let stale_after = (shared.config.health_interval * 3).max(std::time::Duration::from_secs(5));

    let mut x = Exposition {
        out: String::with_capacity(4096 + series.len() * 2048),
    };
    let labels = |s: &Series| -> [(&'static str, String); 3] {
        [
            ("strategy_id", s.id.clone()),
            ("name", s.name.clone()),
            ("type", s.kind.clone()),
        ]
    };
    macro_rules! per_strategy {
        ($name:expr, $kind:expr, $help:expr, |$s:ident, $id:ident| $value:expr) => {{
            x.family($name, $kind, $help);
            for $s in &series {
                let $id = ids.get($s.id.as_str()).copied();
                let value: Option<f64> = $value;
                if let Some(v) = value {
                    let l = labels($s);
                    let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    x.sample($name, &l, v);
                }
            }
        }};
    }

    per_strategy!(
        "engine_strategy_up",
        "gauge",
        "1 when the strategy's executor is up and its strategy initialised (running or paused), else 0.",
        |s, _id| Some(if s.status.is_live() { 1.0 } else { 0.0 })
    );
    x.family(
        "engine_strategy_status",
        "gauge",
        "1 for the strategy's current status, 0 for the others.",
    );
    for s in &series {
        let l = labels(s);
        for status in Status::ALL {
            x.sample(
                "engine_strategy_status",
                &[
                    ("strategy_id", l[0].1.as_str()),
                    ("name", l[1].1.as_str()),
                    ("type", l[2].1.as_str()),
                    ("status", status.as_str()),
                ],
                if status == s.status { 1.0 } else { 0.0 },
            );
        }
    }
    let fresh_health = |s: &Series, id: Option<Uuid>| {
        id.and_then(|id| health.get(&id)).filter(|h| {
            s.status.is_live() && (now - h.received_at).to_std().unwrap_or_default() <= stale_after
        })
    };
    per_strategy!(
        "engine_strategy_cpu_percent",
        "gauge",
        "CPU use of the strategy's executor, percent of one core (latest health sample).",
        |s, id| fresh_health(s, id).map(|h| h.message.cpu_percent)
    );
    per_strategy!(
        "engine_strategy_memory_resident_bytes",
        "gauge",
        "Resident memory of the strategy's executor (latest health sample).",
        |s, id| fresh_health(s, id).map(|h| h.message.memory_mb * 1024.0 * 1024.0)
    );
    per_strategy!(
        "engine_strategy_uptime_seconds",
        "gauge",
        "Seconds since the strategy's executor started (running or paused strategies).",
        |s, _id| s.uptime_s
    );
    per_strategy!(
        "engine_strategy_restarts",
        "gauge",
        "Automatic restarts since the last operator start (restart_count).",
        |s, _id| Some(f64::from(s.restart_count))
    );
    per_strategy!(
        "engine_strategy_stale",
        "gauge",
        "1 when the strategy takes market data but no tick arrived for --stale-after (latest health sample).",
        |s, id| fresh_health(s, id).map(|h| f64::from(u8::from(h.message.stale)))
    );
    let metric = |id: Option<Uuid>| id.and_then(|id| last_metrics.get(&id));
    per_strategy!(
        "engine_strategy_pnl",
        "gauge",
        "Profit and loss the strategy last reported.",
        |_s, id| metric(id).and_then(|m| m.pnl)
    );
    per_strategy!(
        "engine_strategy_positions",
        "gauge",
        "Open positions the strategy last reported.",
        |_s, id| metric(id).and_then(|m| m.positions_count).map(f64::from)
    );
    per_strategy!(
        "engine_strategy_orders",
        "gauge",
        "Orders the strategy last reported (since its executor started).",
        |_s, id| metric(id).and_then(|m| m.orders_count).map(f64::from)
    );
    per_strategy!(
        "engine_strategy_success_rate",
        "gauge",
        "Success rate the strategy last reported (0 to 1).",
        |_s, id| metric(id).and_then(|m| m.success_rate)
    );
    per_strategy!(
        "engine_strategy_tick_age_seconds",
        "gauge",
        "Seconds since the strategy last received a market tick (its report, aged to now).",
        |s, id| metric(id)
            .filter(|_| s.status.is_live())
            .and_then(|m| m.last_tick_age_ms.map(|ms| {
                ms / 1000.0 + (now - m.received_at).num_milliseconds().max(0) as f64 / 1000.0
            }))
    );
    per_strategy!(
        "engine_strategy_metrics_age_seconds",
        "gauge",
        "Seconds since the strategy's executor last reported metrics.",
        |_s, id| metric(id)
            .map(|m| (now - m.received_at).num_milliseconds().max(0) as f64 / 1000.0)
    );

    x.family("engine_strategies", "gauge", "Strategies by status.");
    for status in Status::ALL {
        let n = series.iter().filter(|s| s.status == status).count();
        x.sample(
            "engine_strategies",
            &[("status", status.as_str())],
            n as f64,
        );
    }

    if let Some(stats) = &stats {
        x.family(
            "engine_commands_total",
            "counter",
            "Finished command rows in strategy_commands, by command word and outcome.",
        );
        for command in COMMAND_LABELS {
            for outcome in ["executed", "failed"] {
                let n = stats
                    .by_outcome
                    .get(&(command.to_string(), outcome.to_string()))
                    .copied()
                    .unwrap_or(0);
                x.sample(
                    "engine_commands_total",
                    &[("command", command), ("status", outcome)],
                    n as f64,
                );
            }
        }
        x.family(
            "engine_commands_unfinished",
            "gauge",
            "Command rows not finished yet, by status (pending or processing).",
        );
        for status in ["pending", "processing"] {
            let n: i64 = stats
                .by_outcome
                .iter()
                .filter(|((_, st), _)| st == status)
                .map(|(_, n)| n)
                .sum();
            x.sample(
                "engine_commands_unfinished",
                &[("status", status)],
                n as f64,
            );
        }
        x.family(
            "engine_command_latency_seconds",
            "histogram",
            "Time from a command row's created_at to its executed_at, finished commands.",
        );
        for command in COMMAND_LABELS {
            let empty = (vec![0; LATENCY_BUCKETS.len() + 1], 0.0);
            let (counts, sum) = stats.latency.get(command).unwrap_or(&empty);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += counts[i];
                x.sample(
                    "engine_command_latency_seconds_bucket",
                    &[("command", command), ("le", &format_value(*bound))],
                    cumulative as f64,
                );
            }
            cumulative += counts[LATENCY_BUCKETS.len()];
            x.sample(
                "engine_command_latency_seconds_bucket",
                &[("command", command), ("le", "+Inf")],
                cumulative as f64,
            );
            x.sample(
                "engine_command_latency_seconds_sum",
                &[("command", command)],
                *sum,
            );
            x.sample(
                "engine_command_latency_seconds_count",
                &[("command", command)],
                cumulative as f64,
            );
        }
    }

    x.family(
        "engine_database_up",
        "gauge",
        "1 when PostgreSQL answered SELECT 1 within the probe timeout.",
    );
    x.sample("engine_database_up", &[], f64::from(u8::from(db_probe.ok)));
    x.family(
        "engine_redis_up",
        "gauge",
        "1 when Redis answered PING within the probe timeout.",
    );
    x.sample("engine_redis_up", &[], f64::from(u8::from(redis_probe.ok)));
    x.family(
        "engine_manager_info",
        "gauge",
        "Always 1; labels describe the manager.",
    );
    x.sample(
        "engine_manager_info",
        &[
            ("node", shared.node.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    x.family(
        "engine_manager_uptime_seconds",
        "gauge",
        "Seconds since this manager's HTTP server started.",
    );
    x.sample(
        "engine_manager_uptime_seconds",
        &[],
        state.started.elapsed().as_secs_f64(),
    );
    if let Some(bytes) = own_resident_bytes() {
        x.family(
            "engine_manager_memory_resident_bytes",
            "gauge",
            "Resident memory of the manager process.",
        );
        x.sample("engine_manager_memory_resident_bytes", &[], bytes);
    }
    if let Some(engine) = state.live.engine() {
        x.family(
            "engine_manager_cpu_percent",
            "gauge",
            "CPU use of the manager process, percent of one core (latest engine:health).",
        );
        x.sample("engine_manager_cpu_percent", &[], engine.cpu_percent);
    }
    x.family(
        "engine_http_event_clients",
        "gauge",
        "Browsers connected to /api/events.",
    );
    x.sample(
        "engine_http_event_clients",
        &[],
        state.sse_clients.load(Ordering::Relaxed) as f64,
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], x.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(3.0), "3");
        let mut x = Exposition { out: String::new() };
        x.family("m", "gauge", "help");
        x.sample("m", &[("a", "x"), ("b", "y\"")], 2.0);
        x.sample("m", &[], 0.25);
        assert_eq!(
            x.out,
            "# HELP m help\n# TYPE m gauge\nm{a=\"x\",b=\"y\\\"\"} 2\nm 0.25\n"
        );
    }
}
