//! One strategy as `list` (and `watch`) show it, merged from its row, its Redis state
//! hash, and its newest `strategy_metrics` rows; and the `list` subcommand.
//!
//! Where each number comes from:
//! - status, desired state, pid, restarts, last error: `strategy_configs`;
//! - uptime: `started_at` of the row (the state hash's `uptime_s` if it is missing);
//! - CPU, memory, tick age, stale: the state hash, else the newest `source='health'`
//!   row (only samples of the current run count, and only while a process is up);
//!   the tick age is computed now from the time of the last tick (`last_tick_at`),
//!   so it does not freeze between two reports (or after a manager restart);
//! - PnL (this run's) and PnL total (since the broker's state was last reset, across
//!   restarts): the newest `source='strategy'` row (kept after a stop).

use super::state::{self, StateHash};
use super::table::{self, Align, Table};
use super::{Finished, Target};
use chrono::{DateTime, Utc};
use engine_protocol::limits::ResourceLimits;
use engine_protocol::Channels;
use engine_store::executions::ExecutionColumns;
use engine_store::operator::{self as store, LatestHealth, LatestStrategyMetrics, StrategyRecord};
use engine_store::{DesiredState, Status};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// A strategy as operators see it (`list --json` prints an array of these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyView {
    pub id: Uuid,
    pub name: String,
    pub strategy_type: String,
    pub status: Status,
    pub desired_state: DesiredState,
    pub auto_start: bool,
    pub pid: Option<i32>,
    pub uptime_s: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    /// Its limits (CONTRACT §6), shown against the use above.
    pub memory_limit_mb: Option<u64>,
    pub cpu_limit_percent: Option<u64>,
    pub restart_count: i32,
    pub pnl: Option<f64>,
    pub pnl_total: Option<f64>,
    pub last_tick_age_ms: Option<f64>,
    /// When the last market tick arrived (the age above is computed from it).
    pub last_tick_at: Option<DateTime<Utc>>,
    pub stale: bool,
    pub last_error: Option<String>,
    /// An interval strategy's interval, time limit and execution statistics (`null`
    /// for a continuous strategy).
    pub executions: Option<ExecutionColumns>,
    /// The cluster node that owns it (`null`: none, or no cluster).
    pub node: Option<String>,
    /// What the age is computed from when it is shown.
    #[serde(skip)]
    pub tick: TickSeen,
}

/// What is known of a strategy's last tick, to compute its age when it is shown
/// ([`engine_protocol::tick_age_ms`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TickSeen {
    pub at: Option<DateTime<Utc>>,
    /// When the executor reported `at`, and how often it reports.
    pub reported_at: Option<DateTime<Utc>>,
    pub report_every: Option<std::time::Duration>,
    /// The age a sample measured (from a manager or executor that gives no time).
    pub measured_age_ms: Option<f64>,
}

impl TickSeen {
    /// The age at `now`.
    pub fn age_ms(&self, now: DateTime<Utc>) -> Option<f64> {
        let Some(at) = self.at else {
            return self.measured_age_ms;
        };
        let reported_at = self.reported_at.unwrap_or(now);
        Some(engine_protocol::tick_age_ms(
            at,
            reported_at,
            self.report_every,
            now,
        ))
    }
}

/// Where a view's numbers come from besides the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    pub hash: Option<&'a StateHash>,
    pub metrics: Option<&'a LatestStrategyMetrics>,
    pub health: Option<&'a LatestHealth>,
}

/// When the strategy last saw a tick, and whether it is stale: from the state hash
/// when there is one, else the executor's own report of this run (a health row
/// adding the manager's verdict).
fn tick_seen(
    hash: Option<&StateHash>,
    this_run_metrics: Option<&LatestStrategyMetrics>,
    health: Option<&LatestHealth>,
) -> (TickSeen, bool) {
    if hash.is_some() {
        let tick = TickSeen {
            at: state::time(hash, "last_tick_at"),
            reported_at: state::time(hash, "tick_reported_at"),
            report_every: state::number(hash, "metrics_interval_ms")
                .filter(|ms| *ms > 0.0)
                .map(|ms| std::time::Duration::from_millis(ms as u64)),
            measured_age_ms: state::number(hash, "last_tick_age_ms"),
        };
        return (tick, state::flag(hash, "stale").unwrap_or(false));
    }
    let tick = match this_run_metrics {
        Some(m) => TickSeen {
            at: m.last_tick_at,
            reported_at: Some(m.at),
            report_every: m.report_every,
            measured_age_ms: m.last_tick_age_ms,
        },
        None => TickSeen {
            at: health.and_then(|h| h.last_tick_at),
            measured_age_ms: health.and_then(|h| h.last_tick_age_ms),
            ..TickSeen::default()
        },
    };
    (tick, health.and_then(|h| h.stale).unwrap_or(false))
}

impl StrategyView {
    pub fn build(
        record: &StrategyRecord,
        sources: Sources<'_>,
        now: DateTime<Utc>,
    ) -> StrategyView {
        let alive = record.pid.is_some() && record.status.is_up();
        // A sample counts only if it was taken during the current run.
        let this_run = |at: Option<DateTime<Utc>>| match (at, record.started_at) {
            (Some(at), Some(started)) => at >= started,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let hash = sources.hash.filter(|h| {
            alive
                && this_run(
                    h.get("health_at")
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                )
        });
        let health = sources.health.filter(|h| alive && this_run(Some(h.at)));
        let uptime_s = if alive {
            record
                .started_at
                .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
                .or_else(|| state::number(hash, "uptime_s"))
        } else {
            None
        };
        let cpu_percent =
            state::number(hash, "cpu_percent").or_else(|| health.and_then(|h| h.cpu_percent));
        let memory_mb =
            state::number(hash, "memory_mb").or_else(|| health.and_then(|h| h.memory_mb));
        let this_run_metrics = sources.metrics.filter(|m| alive && this_run(Some(m.at)));
        let (tick, stale) = tick_seen(hash, this_run_metrics, health);
        // The row's limits, which the schema checked (unreadable: shown as none).
        let limits = ResourceLimits::from_value(&record.limits).unwrap_or_default();
        StrategyView {
            id: record.id,
            name: record.name.clone(),
            strategy_type: record.strategy_type.clone(),
            status: record.status,
            desired_state: record.desired_state,
            auto_start: record.auto_start,
            pid: record.pid,
            uptime_s,
            cpu_percent,
            memory_mb,
            memory_limit_mb: limits.memory_mb,
            cpu_limit_percent: limits.cpu_percent,
            restart_count: record.restart_count,
            pnl: sources.metrics.and_then(|m| m.pnl),
            pnl_total: sources.metrics.and_then(|m| m.pnl_total),
            last_tick_age_ms: tick.age_ms(now),
            last_tick_at: tick.at,
            stale,
            last_error: record.last_error.clone().filter(|e| !e.is_empty()),
            executions: record
                .executions
                .execution_interval_s
                .is_some()
                .then(|| record.executions.clone()),
            node: record.node.clone(),
            tick,
        }
    }
}

/// The tick age column: `-`, `0.4s`, or `75s stale`.
pub fn tick_cell(age_ms: Option<f64>, stale: bool) -> String {
    match age_ms {
        None if stale => "stale".into(),
        None => table::NONE.into(),
        Some(ms) if stale => format!("{} stale", table::duration(ms / 1000.0)),
        Some(ms) => table::duration(ms / 1000.0),
    }
}

/// Every strategy merged from its row, its newest metrics rows and, when `redis`
/// is given and answers, its state hash. A Redis failure is returned beside the
/// views (they are still useful without it).
pub async fn collect_views(
    pool: &PgPool,
    redis: Option<&mut MultiplexedConnection>,
    channels: &Channels,
) -> anyhow::Result<(Vec<StrategyView>, Option<anyhow::Error>)> {
    let records = store::strategies(pool).await?;
    let (metrics, health) = store::latest_metrics(pool).await?;
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let (hashes, redis_error) = match redis {
        Some(conn) => match state::state_hashes(conn, channels, &ids).await {
            Ok(hashes) => (hashes, None),
            Err(err) => (HashMap::new(), Some(err)),
        },
        None => (HashMap::new(), None),
    };
    let now = Utc::now();
    let views = records
        .iter()
        .map(|r| {
            let sources = Sources {
                hash: hashes.get(&r.id),
                metrics: metrics.get(&r.id),
                health: health.get(&r.id),
            };
            StrategyView::build(r, sources, now)
        })
        .collect();
    Ok((views, redis_error))
}

/// Every strategy, with what Redis and the metrics table know about it; a note on
/// stderr when Redis cannot help.
pub async fn load_views(target: &Target) -> anyhow::Result<Vec<StrategyView>> {
    let pool = target.pool().await?;
    let mut redis = match state::connect(&target.redis_url).await {
        Ok(conn) => Some(conn),
        Err(err) => {
            eprintln!("note: {err:#}; CPU, memory and tick age come from the database instead");
            None
        }
    };
    let result = collect_views(&pool, redis.as_mut(), &target.channels).await;
    pool.close().await;
    let (views, redis_error) = result?;
    if let Some(err) = redis_error {
        eprintln!("note: {err:#}; CPU, memory and tick age come from the database instead");
    }
    Ok(views)
}

/// The `list` table; with a `NODE` column when a cluster node owns any strategy.
pub fn list_table(views: &[StrategyView]) -> Table {
    let with_node = views.iter().any(|v| v.node.is_some());
    let mut t = list_table_columns(with_node);
    for v in views {
        let mut row = list_row(v);
        if with_node {
            row.insert(1, v.node.clone().unwrap_or_else(|| table::NONE.into()));
        }
        t.push(row);
    }
    t
}

fn list_table_columns(with_node: bool) -> Table {
    let node: &[(&'static str, Align)] = if with_node {
        &[("NODE", Align::Left)]
    } else {
        &[]
    };
    let columns: Vec<(&'static str, Align)> = [("NAME", Align::Left)]
        .into_iter()
        .chain(node.iter().copied())
        .chain(LIST_COLUMNS.iter().copied())
        .collect();
    Table::new(&columns)
}

const LIST_COLUMNS: &[(&str, Align)] = &[
    ("TYPE", Align::Left),
    ("STATUS", Align::Left),
    ("DESIRED", Align::Left),
    ("PID", Align::Right),
    ("UPTIME", Align::Right),
    ("CPU", Align::Right),
    ("MEM", Align::Right),
    ("RESTARTS", Align::Right),
    ("PNL", Align::Right),
    ("PNL TOTAL", Align::Right),
    ("TICK", Align::Right),
    ("EXECUTIONS", Align::Left),
    ("LAST ERROR", Align::Left),
];

/// One strategy's cells of the `list` table, the node's aside.
fn list_row(v: &StrategyView) -> Vec<String> {
    vec![
        v.name.clone(),
        v.strategy_type.clone(),
        v.status.to_string(),
        v.desired_state.to_string(),
        v.pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| table::NONE.into()),
        v.uptime_s
            .map(table::duration)
            .unwrap_or_else(|| table::NONE.into()),
        table::against_limit(table::percent(v.cpu_percent), v.cpu_limit_percent, "%"),
        table::against_limit(table::megabytes(v.memory_mb), v.memory_limit_mb, " MB"),
        v.restart_count.to_string(),
        table::money(v.pnl),
        table::money(v.pnl_total),
        tick_cell(v.last_tick_age_ms, v.stale),
        executions_cell(v.executions.as_ref()),
        v.last_error
            .as_deref()
            .map(|e| table::shorten(e, 60))
            .unwrap_or_default(),
    ]
}

/// The executions column: `-` for a continuous strategy, else the interval, the
/// counts and the next execution, e.g. `every 60s: 12 ok, 1 failed, 2 skipped; next
/// 10:47:05`.
pub fn executions_cell(executions: Option<&ExecutionColumns>) -> String {
    let Some(e) = executions else {
        return table::NONE.into();
    };
    let every = e.execution_interval_s.unwrap_or_default();
    let s = &e.stats;
    let next = s
        .next_execution_at
        .map(|at| format!("; next {}", at.format("%H:%M:%S")))
        .unwrap_or_default();
    format!(
        "every {every}s: {} ok, {} failed, {} skipped{next}",
        s.successful_executions, s.failed_executions, s.skipped_executions
    )
}

/// `enginectl list [--json]`.
pub async fn list(target: &Target, json: bool) -> anyhow::Result<Finished> {
    let views = load_views(target).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else if views.is_empty() {
        println!("no strategies yet; add one with `enginectl add NAME --type TYPE` (`enginectl types` lists the types)");
    } else {
        print!("{}", list_table(&views).render());
    }
    Ok(Finished::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: &str, pid: Option<i32>, started_at: Option<DateTime<Utc>>) -> StrategyRecord {
        StrategyRecord {
            id: Uuid::new_v4(),
            name: "a".into(),
            strategy_type: "heartbeat".into(),
            config: serde_json::json!({}),
            auto_start: false,
            desired_state: DesiredState::Running,
            status: status.parse().expect("a status word"),
            pid,
            last_error: Some(String::new()),
            restart_count: 2,
            started_at,
            created_at: Utc::now(),
            executions: Default::default(),
            limits: serde_json::json!({"memory_mb": 64}),
            node: None,
        }
    }

    #[test]
    fn list_shows_the_owner_node_only_on_a_cluster() {
        let now = Utc::now();
        let view = |node: Option<&str>| {
            let mut r = record("running", Some(42), Some(now));
            r.node = node.map(str::to_string);
            StrategyView::build(&r, Sources::default(), now)
        };
        let single = list_table(&[view(None)]).render();
        assert!(!single.contains("NODE"), "{single}");
        let cluster = list_table(&[view(Some("host-a")), view(None)]).render();
        let lines: Vec<&str> = cluster.lines().collect();
        assert!(lines[0].starts_with("NAME  NODE"), "{cluster}");
        assert!(lines[1].starts_with("a     host-a"), "{cluster}");
        assert!(lines[2].starts_with("a     -"), "{cluster}");
    }

    #[test]
    fn a_live_strategy_takes_health_from_its_hash() {
        let now = Utc::now();
        let started = now - chrono::Duration::seconds(90);
        let r = record("running", Some(42), Some(started));
        let hash: StateHash = HashMap::from([
            ("cpu_percent".into(), "1.5".into()),
            ("memory_mb".into(), "9.25".into()),
            (
                "health_at".into(),
                (now - chrono::Duration::seconds(1)).to_rfc3339(),
            ),
            ("stale".into(), "true".into()),
            ("last_tick_age_ms".into(), "59000".into()),
            (
                "last_tick_at".into(),
                (now - chrono::Duration::seconds(61)).to_rfc3339(),
            ),
            (
                "tick_reported_at".into(),
                (now - chrono::Duration::seconds(1)).to_rfc3339(),
            ),
            ("metrics_interval_ms".into(), "5000".into()),
        ]);
        let metrics = LatestStrategyMetrics {
            at: now,
            pnl: Some(12.5),
            pnl_total: Some(40.0),
            last_tick_age_ms: Some(5.0),
            last_tick_at: None,
            report_every: None,
        };
        let v = StrategyView::build(
            &r,
            Sources {
                hash: Some(&hash),
                metrics: Some(&metrics),
                health: None,
            },
            now,
        );
        assert_eq!(v.cpu_percent, Some(1.5));
        assert_eq!(v.memory_mb, Some(9.25));
        assert_eq!((v.memory_limit_mb, v.cpu_limit_percent), (Some(64), None));
        let cells = list_table(std::slice::from_ref(&v)).render();
        assert!(cells.contains(" MB / 64 MB"), "{cells}");
        assert_eq!(v.uptime_s, Some(90.0));
        assert_eq!(v.pnl, Some(12.5));
        assert_eq!(v.pnl_total, Some(40.0));
        assert!(v.stale);
        // From the time of the last tick as of its report, not the age the last
        // health sample measured.
        assert_eq!(v.last_tick_age_ms, Some(60_000.0));
        assert_eq!(v.last_error, None, "an empty error is no error");
        assert_eq!(tick_cell(v.last_tick_age_ms, v.stale), "1m00s stale");
    }

    #[test]
    fn samples_of_an_earlier_run_or_a_stopped_strategy_are_not_shown() {
        let now = Utc::now();
        let health = LatestHealth {
            at: now - chrono::Duration::hours(1),
            cpu_percent: Some(3.0),
            memory_mb: Some(8.0),
            stale: Some(true),
            last_tick_age_ms: None,
            last_tick_at: None,
        };
        let sources = Sources {
            hash: None,
            metrics: None,
            health: Some(&health),
        };
        let restarted = record("running", Some(7), Some(now - chrono::Duration::seconds(5)));
        let v = StrategyView::build(&restarted, sources, now);
        assert_eq!((v.cpu_percent, v.stale), (None, false));
        let stopped = record("stopped", None, None);
        let v = StrategyView::build(&stopped, sources, now);
        assert_eq!((v.cpu_percent, v.uptime_s), (None, None));
        // Without a hash, a health row of this run is the fallback.
        let running = record("running", Some(7), Some(now - chrono::Duration::hours(2)));
        let v = StrategyView::build(&running, sources, now);
        assert_eq!(
            (v.cpu_percent, v.memory_mb, v.stale),
            (Some(3.0), Some(8.0), true)
        );
    }
}
