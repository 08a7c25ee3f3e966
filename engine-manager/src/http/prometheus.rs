//! `GET /metrics` in the Prometheus text exposition format (0.0.4), encoded by
//! `prometheus-client`.
//!
//! Per strategy (labels `strategy_id`, `name`, `type`): up, status, CPU, memory,
//! restarts, PnL, positions, orders, success rate, tick age, uptime. Engine-wide:
//! commands by outcome and a command-latency histogram (`executed_at - created_at`,
//! kept in memory by [`CommandMetrics`](crate::command_metrics::CommandMetrics) and
//! seeded from `strategy_commands` at start-up, so they survive manager restarts),
//! unfinished commands, strategies by status, database and Redis reachability, and
//! the manager's own uptime, memory and CPU.
//!
//! Every scrape builds its own [`Registry`]: the gauges are what the manager knows at
//! that moment (its live map, the latest health and metrics, a read of
//! `strategy_configs`); the command counters are the long-lived ones.

use super::events::HealthSample;
use super::probes;
use super::AppState;
use crate::recorder::LastMetrics;
use crate::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use engine_protocol::Status;
use engine_store::metrics::{self as store, StrategySeries};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Labels `strategy_id`, `name`, `type`.
type StrategyLabels = [(&'static str, String); 3];

/// One gauge family computed at scrape time, its samples in the order given.
#[derive(Debug)]
struct Gauges<L>(Vec<(L, f64)>);

impl<L> EncodeMetric for Gauges<L>
where
    L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.0 {
            encoder.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// One strategy as exported: identity plus what the manager knows right now.
struct Series {
    id: Uuid,
    name: String,
    kind: String,
    status: Status,
    restart_count: i32,
    started_at: Option<DateTime<Utc>>,
}

impl Series {
    fn labels(&self) -> StrategyLabels {
        [
            ("strategy_id", self.id.to_string()),
            ("name", self.name.clone()),
            ("type", self.kind.clone()),
        ]
    }
}

/// What the database said for this scrape (`None`: not reachable, or the read
/// failed).
#[derive(Default)]
struct Stored {
    strategies: Option<Vec<StrategySeries>>,
    /// Command rows (`pending`, `processing`).
    unfinished: Option<(i64, i64)>,
}

async fn read_database(pool: &sqlx::PgPool) -> Stored {
    let (strategies, unfinished) = tokio::join!(
        store::strategy_series(pool),
        store::unfinished_commands(pool)
    );
    if let Err(err) = strategies
        .as_ref()
        .map(|_| ())
        .and(unfinished.as_ref().map(|_| ()))
    {
        tracing::warn!(error = %err, "/metrics: cannot read the database");
    }
    Stored {
        strategies: strategies.ok(),
        unfinished: unfinished.ok(),
    }
}

/// Every strategy, by name. The manager's own view (the live map) wins over the
/// row: it is what the supervisors know now, and it stays available when the
/// database is not.
fn strategy_series(shared: &Shared, rows: Option<Vec<StrategySeries>>) -> Vec<Series> {
    let live = shared.live.lock().expect("live lock").clone();
    let mut series: Vec<Series> = match rows {
        Some(rows) => rows
            .into_iter()
            .map(|r| {
                let entry = live.get(&r.id);
                Series {
                    id: r.id,
                    status: entry.map(|e| e.status).unwrap_or(r.status),
                    restart_count: entry.map_or(r.restart_count, |e| e.restart_count),
                    started_at: entry.and_then(|e| e.started_at),
                    name: r.name,
                    kind: r.strategy_type,
                }
            })
            .collect(),
        None => live
            .into_iter()
            .map(|(id, e)| Series {
                id,
                name: e.name,
                kind: String::new(),
                status: e.status,
                restart_count: e.restart_count,
                started_at: e.started_at,
            })
            .collect(),
    };
    series.sort_by(|a, b| a.name.cmp(&b.name));
    series
}

/// What the manager last heard from the executors, as of this scrape.
struct Heard {
    now: DateTime<Utc>,
    health: HashMap<Uuid, HealthSample>,
    metrics: HashMap<Uuid, LastMetrics>,
    /// A health sample older than this is not exported.
    stale_after: Duration,
}

impl Heard {
    fn new(state: &AppState) -> Heard {
        let shared = &state.shared;
        Heard {
            now: Utc::now(),
            health: state.live.all_health(),
            metrics: shared
                .last_metrics
                .lock()
                .expect("last_metrics lock")
                .clone(),
            stale_after: (shared.config.health_interval * 3).max(Duration::from_secs(5)),
        }
    }

    /// Seconds from `t` to this scrape.
    fn age_s(&self, t: DateTime<Utc>) -> f64 {
        (self.now - t).num_milliseconds().max(0) as f64 / 1000.0
    }

    /// The strategy's latest health sample, if it is live and the sample recent.
    fn fresh_health(&self, s: &Series) -> Option<&HealthSample> {
        self.health.get(&s.id).filter(|h| {
            s.status.is_live()
                && (self.now - h.received_at).to_std().unwrap_or_default() <= self.stale_after
        })
    }

    fn metrics(&self, s: &Series) -> Option<&LastMetrics> {
        self.metrics.get(&s.id)
    }
}

/// Register a per-strategy gauge: `value` for each strategy that has one.
fn per_strategy(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: &[Series],
    value: impl Fn(&Series) -> Option<f64>,
) {
    let samples = series
        .iter()
        .filter_map(|s| value(s).map(|v| (s.labels(), v)))
        .collect();
    registry.register(name, help, Gauges(samples));
}

/// `engine_strategy_*` from the supervisors and the health samples.
fn register_strategy_state(registry: &mut Registry, series: &[Series], heard: &Heard) {
    per_strategy(
        registry,
        "engine_strategy_up",
        "1 when the strategy's executor is up and its strategy initialised (running or paused), else 0",
        series,
        |s| Some(if s.status.is_live() { 1.0 } else { 0.0 }),
    );
    let status = series
        .iter()
        .flat_map(|s| {
            Status::ALL.into_iter().map(move |status| {
                let [id, name, kind] = s.labels();
                let labels = [id, name, kind, ("status", status.as_str().to_string())];
                (labels, if status == s.status { 1.0 } else { 0.0 })
            })
        })
        .collect();
    registry.register(
        "engine_strategy_status",
        "1 for the strategy's current status, 0 for the others",
        Gauges(status),
    );
    per_strategy(
        registry,
        "engine_strategy_cpu_percent",
        "CPU use of the strategy's executor, percent of one core (latest health sample)",
        series,
        |s| heard.fresh_health(s).map(|h| h.message.cpu_percent),
    );
    per_strategy(
        registry,
        "engine_strategy_memory_resident_bytes",
        "Resident memory of the strategy's executor (latest health sample)",
        series,
        |s| {
            heard
                .fresh_health(s)
                .map(|h| h.message.memory_mb * 1024.0 * 1024.0)
        },
    );
    per_strategy(
        registry,
        "engine_strategy_uptime_seconds",
        "Seconds since the strategy's executor started (running or paused strategies)",
        series,
        |s| {
            s.started_at
                .filter(|_| s.status.is_live())
                .map(|t| heard.age_s(t))
        },
    );
    per_strategy(
        registry,
        "engine_strategy_restarts",
        "Automatic restarts since the last operator start (restart_count)",
        series,
        |s| Some(f64::from(s.restart_count)),
    );
    per_strategy(
        registry,
        "engine_strategy_stale",
        "1 when the strategy takes market data but no tick arrived for --stale-after (latest health sample)",
        series,
        |s| heard.fresh_health(s).map(|h| f64::from(u8::from(h.message.stale))),
    );
}

/// `engine_strategy_*` from what each strategy last reported.
fn register_strategy_reports(registry: &mut Registry, series: &[Series], heard: &Heard) {
    per_strategy(
        registry,
        "engine_strategy_pnl",
        "Profit and loss of the strategy's current executor run, as last reported",
        series,
        |s| heard.metrics(s).and_then(|m| m.pnl),
    );
    per_strategy(
        registry,
        "engine_strategy_pnl_total",
        "Profit and loss since the strategy's broker state was last reset, across restarts (pnl_total)",
        series,
        |s| {
            heard
                .metrics(s)
                .and_then(|m| m.metrics.get("pnl_total").and_then(|v| v.as_f64()))
        },
    );
    per_strategy(
        registry,
        "engine_strategy_positions",
        "Open positions the strategy last reported",
        series,
        |s| {
            heard
                .metrics(s)
                .and_then(|m| m.positions_count)
                .map(f64::from)
        },
    );
    per_strategy(
        registry,
        "engine_strategy_orders",
        "Orders the strategy last reported (since its broker state was last reset)",
        series,
        |s| heard.metrics(s).and_then(|m| m.orders_count).map(f64::from),
    );
    per_strategy(
        registry,
        "engine_strategy_success_rate",
        "Success rate the strategy last reported (0 to 1)",
        series,
        |s| heard.metrics(s).and_then(|m| m.success_rate),
    );
    per_strategy(
        registry,
        "engine_strategy_tick_age_seconds",
        "Seconds since the strategy last received a market tick (from the time of that tick)",
        series,
        |s| {
            let m = heard.metrics(s).filter(|_| s.status.is_live())?;
            m.tick_age_ms(heard.now).map(|ms| ms / 1000.0)
        },
    );
    per_strategy(
        registry,
        "engine_strategy_metrics_age_seconds",
        "Seconds since the strategy's executor last reported metrics",
        series,
        |s| heard.metrics(s).map(|m| heard.age_s(m.received_at)),
    );
}

/// `engine_strategies`, and the command counters, histogram and backlog.
fn register_engine(
    registry: &mut Registry,
    shared: &Shared,
    series: &[Series],
    unfinished: Option<(i64, i64)>,
) {
    let by_status = Status::ALL
        .into_iter()
        .map(|status| {
            let n = series.iter().filter(|s| s.status == status).count();
            ([("status", status.as_str())], n as f64)
        })
        .collect();
    registry.register(
        "engine_strategies",
        "Strategies by status",
        Gauges(by_status),
    );
    shared.command_metrics.register(registry);
    if let Some((pending, processing)) = unfinished {
        let unfinished = vec![
            ([("status", "pending")], pending as f64),
            ([("status", "processing")], processing as f64),
        ];
        registry.register(
            "engine_commands_unfinished",
            "Command rows not finished yet, by status (pending or processing)",
            Gauges(unfinished),
        );
    }
}

/// The manager's reachability of its dependencies, and its own process.
fn register_manager(registry: &mut Registry, state: &AppState, database_up: bool, redis_up: bool) {
    let up = |ok: bool| ConstGauge::new(f64::from(u8::from(ok)));
    registry.register(
        "engine_database_up",
        "1 when PostgreSQL answered SELECT 1 within the probe timeout",
        up(database_up),
    );
    registry.register(
        "engine_redis_up",
        "1 when Redis answered PING within the probe timeout",
        up(redis_up),
    );
    let info = [
        ("node", state.shared.node.clone()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
    ];
    registry.register(
        "engine_manager_info",
        "Always 1; labels describe the manager",
        Gauges(vec![(info, 1.0)]),
    );
    registry.register(
        "engine_manager_uptime_seconds",
        "Seconds since this manager's HTTP server started",
        ConstGauge::new(state.started.elapsed().as_secs_f64()),
    );
    if let Some(bytes) = own_resident_bytes() {
        registry.register(
            "engine_manager_memory_resident_bytes",
            "Resident memory of the manager process",
            ConstGauge::new(bytes),
        );
    }
    if let Some(engine) = state.live.engine() {
        registry.register(
            "engine_manager_cpu_percent",
            "CPU use of the manager process, percent of one core (latest engine:health)",
            ConstGauge::new(engine.cpu_percent),
        );
    }
    registry.register(
        "engine_http_event_clients",
        "Browsers connected to /api/events",
        ConstGauge::new(state.sse_clients.load(Ordering::Relaxed) as f64),
    );
}

/// The manager's resident memory in bytes (`VmRSS`).
fn own_resident_bytes() -> Option<f64> {
    let kib = engine_protocol::procfs::rss_kib(std::process::id())?;
    Some(kib as f64 * 1024.0)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (db_probe, redis_probe) = tokio::join!(probes::database(&state), probes::redis(&state));
    let Stored {
        strategies,
        unfinished,
    } = if db_probe.ok {
        read_database(&state.shared.pool).await
    } else {
        Stored::default()
    };
    let series = strategy_series(&state.shared, strategies);
    let heard = Heard::new(&state);
    let mut registry = Registry::default();
    register_strategy_state(&mut registry, &series, &heard);
    register_strategy_reports(&mut registry, &series, &heard);
    register_engine(&mut registry, &state.shared, &series, unfinished);
    register_manager(&mut registry, &state, db_probe.ok, redis_probe.ok);
    let mut body = String::with_capacity(4096 + series.len() * 2048);
    match prometheus_text::encode(&mut body, &registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(std::fmt::Error) => {
            tracing::error!("/metrics: cannot encode the exposition");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_keep_their_order_and_escape_labels() {
        let mut registry = Registry::default();
        let samples = vec![
            ([("name", "b\"q\\".to_string())], 2.0),
            ([("name", "a".to_string())], 0.25),
        ];
        registry.register("m", "help", Gauges(samples));
        registry.register("n", "empty", Gauges::<[(&str, String); 1]>(Vec::new()));
        registry.register("u", "plain", ConstGauge::new(1.0));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        assert_eq!(
            text,
            "# HELP m help.\n# TYPE m gauge\nm{name=\"b\\\"q\\\\\"} 2.0\nm{name=\"a\"} 0.25\n\
             # HELP n empty.\n# TYPE n gauge\n\
             # HELP u plain.\n# TYPE u gauge\nu 1.0\n"
        );
    }
}
