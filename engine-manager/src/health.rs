//! The [`HealthSampler`]: every health interval, samples CPU and resident memory of
//! the supervised executors only (never the whole process table), publishes
//! `strategy:health` per live strategy and `engine:health`, refreshes the state
//! hashes, and hands the samples to the metrics recorder. On the same tick it marks
//! strategies whose market data stopped as stale ([`tick_verdict`]) and rotates the
//! executors' logs ([`crate::log_rotation`]).
//!
//! # The stale rule
//! A live strategy is stale when, in its current run, it has received at least one
//! market tick and either
//! - the executor's latest metrics say its last tick is `--stale-after` old or older
//!   (`last_tick_age_ms`, measured when the metrics were sent), or
//! - the executor has sent no metrics for `--stale-after` (and at least two metrics
//!   intervals): it is hung or cut off from Redis, so it gets no ticks either.
//!
//! Before its first tick the manager cannot tell a strategy that takes no market
//! data (a `heartbeat` without `token`) from one whose feed never delivered, so such
//! a strategy is never stale. `--stale-after 0` turns the check off.

use crate::log_rotation::{self, RotationPolicy};
use crate::process::ProcStat;
use crate::recorder::LastMetrics;
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::{EngineHealthMessage, HealthMessage};
use engine_store::manager::MetricsRow;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct HealthSampler {
    shared: Arc<Shared>,
    recorder: mpsc::Sender<MetricsRow>,
    cpu: CpuMeter,
    started: Instant,
    /// When the executors' logs were last checked for rotation.
    rotation_checked: Option<Instant>,
    /// Logs whose rotation failed on the last pass (warned about once, not every tick).
    rotation_failing: HashSet<PathBuf>,
}

impl HealthSampler {
    pub fn new(shared: Arc<Shared>, recorder: mpsc::Sender<MetricsRow>) -> Self {
        HealthSampler {
            shared,
            recorder,
            cpu: CpuMeter::default(),
            started: Instant::now(),
            rotation_checked: None,
            rotation_failing: HashSet::new(),
        }
    }

    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(self.shared.config.health_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let cancel = self.shared.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {
                    self.sample();
                    // A `readdir` and a `stat` per log: not on every tick.
                    let every = self.shared.config.log_check_interval;
                    if self.rotation_checked.is_none_or(|at| at.elapsed() >= every) {
                        self.rotation_checked = Some(Instant::now());
                        self.rotate_logs().await;
                    }
                }
            }
        }
    }

    /// Rotate the executors' logs that outgrew `--log-max-size` (file I/O, so on the
    /// blocking pool).
    async fn rotate_logs(&mut self) {
        let policy = RotationPolicy {
            max_size: self.shared.config.log_max_size,
            keep: self.shared.config.log_keep,
        };
        if !policy.is_enabled() {
            return;
        }
        let dir = self.shared.config.logs_dir();
        let Ok(report) =
            tokio::task::spawn_blocking(move || log_rotation::rotate_dir(&dir, policy)).await
        else {
            return;
        };
        for (path, size) in &report.rotated {
            self.rotation_failing.remove(path);
            tracing::info!(log = %path.display(), size = %log_rotation::format_size(*size), keep = policy.keep, "rotated an executor log");
        }
        let mut failing = HashSet::with_capacity(report.failed.len());
        for (path, err) in report.failed {
            if !self.rotation_failing.contains(&path) {
                tracing::warn!(log = %path.display(), error = %err, "cannot rotate an executor log; retrying every health interval");
            }
            failing.insert(path);
        }
        self.rotation_failing = failing;
    }

    fn sample(&mut self) {
        let own_pid = std::process::id();
        let entries: Vec<_> = {
            let live = self.shared.live.lock().expect("live lock");
            live.iter()
                .filter(|(_, e)| e.status.is_live() && e.pid.is_some())
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        let sampled_at = Instant::now();
        let now = Utc::now();
        let (stale_after, metrics_interval) = (
            self.shared.config.stale_after,
            self.shared.config.metrics_interval,
        );
        let verdicts: Vec<TickVerdict> = {
            let metrics = self.shared.last_metrics.lock().expect("last_metrics lock");
            entries
                .iter()
                .map(|(id, entry)| {
                    let reported = metrics.get(id);
                    tick_verdict(
                        reported,
                        entry.started_at,
                        now,
                        stale_after,
                        metrics_interval,
                    )
                })
                .collect()
        };
        let channels = &self.shared.channels;
        let mut rows = Vec::with_capacity(entries.len());
        for ((id, entry), verdict) in entries.iter().zip(verdicts) {
            let pid = entry.pid.expect("filtered");
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            // CPU % is a delta: a first sample has none, and is not published as one.
            let cpu = self.cpu.percent(pid, &stat, sampled_at);
            let first = cpu.is_none();
            let cpu = cpu.unwrap_or(0.0);
            let memory_mb = self.cpu.memory_mb(&stat);
            let uptime_s = entry
                .started_at
                .map(|t| (now - t).num_seconds().max(0) as u64)
                .unwrap_or(0);
            let TickVerdict {
                age_ms: tick_age_ms,
                stale,
            } = verdict;
            let msg = HealthMessage {
                strategy_id: *id,
                name: entry.name.clone(),
                timestamp: now,
                pid: Some(pid),
                status: entry.status,
                cpu_percent: if first { 0.0 } else { round2(cpu) },
                memory_mb: round2(memory_mb),
                uptime_s,
                restart_count: entry.restart_count,
                node: self.shared.node.clone(),
                stale,
                last_tick_age_ms: tick_age_ms,
            };
            self.shared.publisher.set_state(
                channels.state_key(*id),
                vec![
                    ("cpu_percent".into(), msg.cpu_percent.to_string()),
                    ("memory_mb".into(), msg.memory_mb.to_string()),
                    ("uptime_s".into(), uptime_s.to_string()),
                    ("health_at".into(), now.to_rfc3339()),
                    ("stale".into(), stale.to_string()),
                    (
                        "last_tick_age_ms".into(),
                        tick_age_ms.map(|ms| ms.to_string()).unwrap_or_default(),
                    ),
                    (
                        "health_message".into(),
                        serde_json::to_string(&msg).unwrap_or_default(),
                    ),
                ],
            );
            self.shared.publisher.publish(channels.health(), &msg);
            if !first {
                rows.push(MetricsRow {
                    strategy_id: *id,
                    timestamp: now,
                    source: "health",
                    pnl: None,
                    positions_count: None,
                    orders_count: None,
                    success_rate: None,
                    cpu_percent: Some(msg.cpu_percent),
                    memory_mb: Some(msg.memory_mb),
                    metrics: json!({
                        "uptime_s": uptime_s,
                        "restart_count": entry.restart_count,
                        "stale": stale,
                        "last_tick_age_ms": tick_age_ms,
                    }),
                });
            }
        }
        let (cpu, mem) = ProcStat::read(own_pid)
            .map(|stat| {
                let cpu = self.cpu.percent(own_pid, &stat, sampled_at);
                (cpu.unwrap_or(0.0), self.cpu.memory_mb(&stat))
            })
            .unwrap_or((0.0, 0.0));
        let engine = EngineHealthMessage {
            name: "engine-manager".to_string(),
            timestamp: now,
            node: self.shared.node.clone(),
            pid: own_pid,
            strategies_running: entries.len(),
            cpu_percent: round2(cpu),
            memory_mb: round2(mem),
            uptime_s: self.started.elapsed().as_secs(),
        };
        self.shared
            .publisher
            .publish(channels.engine_health(), &engine);
        self.cpu.forget_unsampled(sampled_at);
        for row in rows {
            if self.recorder.try_send(row).is_err() {
                break;
            }
        }
    }
}

/// CPU % of processes from successive reads of `/proc/<pid>/stat` (the way `top`
/// computes it: CPU time used between two samples over the wall time between them;
/// 100 is one core). Only the supervised pids are read, one small file each.
#[derive(Debug)]
pub struct CpuMeter {
    ticks_per_second: f64,
    page_size: f64,
    /// pid → (its start time, CPU ticks at the last sample, when that was).
    last: HashMap<u32, (u64, u64, Instant)>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            ticks_per_second: rustix::param::clock_ticks_per_second() as f64,
            page_size: rustix::param::page_size() as f64,
            last: HashMap::new(),
        }
    }
}

impl CpuMeter {
    /// CPU % since this pid's previous sample; `None` on its first sample (or the
    /// first of a new process that reuses the pid).
    pub fn percent(&mut self, pid: u32, stat: &ProcStat, at: Instant) -> Option<f64> {
        let previous = self
            .last
            .insert(pid, (stat.start_ticks, stat.cpu_ticks, at));
        let (start_ticks, cpu_ticks, then) = previous?;
        let wall = at.checked_duration_since(then)?.as_secs_f64();
        if start_ticks != stat.start_ticks || wall <= 0.0 || self.ticks_per_second <= 0.0 {
            return None;
        }
        let used = stat.cpu_ticks.saturating_sub(cpu_ticks) as f64 / self.ticks_per_second;
        Some(100.0 * used / wall)
    }

    pub fn memory_mb(&self, stat: &ProcStat) -> f64 {
        stat.rss_pages as f64 * self.page_size / (1024.0 * 1024.0)
    }

    /// Drop the pids not sampled at `at` (gone, or no longer live).
    pub fn forget_unsampled(&mut self, at: Instant) {
        self.last.retain(|_, (_, _, then)| *then == at);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What the health message says about a strategy's market data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickVerdict {
    /// Milliseconds since the last tick: as the executor last reported it, plus the
    /// time since that report once the executor has gone silent. `None` before the
    /// first tick of the current run.
    pub age_ms: Option<f64>,
    pub stale: bool,
}

/// The stale rule (see the module docs). Metrics received before `started_at`
/// belong to an earlier run and are ignored.
pub fn tick_verdict(
    metrics: Option<&LastMetrics>,
    started_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    stale_after: Duration,
    metrics_interval: Duration,
) -> TickVerdict {
    let nothing = TickVerdict {
        age_ms: None,
        stale: false,
    };
    let Some(metrics) = metrics else {
        return nothing;
    };
    if started_at.is_some_and(|started| metrics.received_at < started) {
        return nothing;
    }
    let Some(reported) = metrics
        .last_tick_age_ms
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    else {
        return nothing;
    };
    let since_report = (now - metrics.received_at).num_milliseconds().max(0) as f64;
    let stale_ms = stale_after.as_secs_f64() * 1000.0;
    let silent_ms = stale_ms.max(2.0 * metrics_interval.as_secs_f64() * 1000.0);
    let silent = since_report >= silent_ms;
    TickVerdict {
        age_ms: Some(if silent {
            reported + since_report
        } else {
            reported
        }),
        stale: !stale_after.is_zero() && (reported >= stale_ms || silent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_measures_busy_time_between_samples() {
        let me = std::process::id();
        let mut meter = CpuMeter::default();
        let first = ProcStat::read(me).expect("own stat");
        assert_eq!(
            meter.percent(me, &first, Instant::now()),
            None,
            "no delta yet"
        );
        // Burn CPU until the kernel has counted at least 20 more ticks for us.
        let mut x = 0u64;
        let now = loop {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let now = ProcStat::read(me).expect("own stat");
            if now.cpu_ticks >= first.cpu_ticks + 20 {
                break now;
            }
        };
        let cpu = meter
            .percent(me, &now, Instant::now())
            .expect("a second sample has a delta");
        // One busy thread: above zero, and at most every core of the machine.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(cpu > 0.0 && cpu <= 100.0 * cores + 1.0, "cpu {cpu}");
        assert!(meter.memory_mb(&now) > 0.1);

        // A new process under the same pid starts from scratch.
        let reused = ProcStat {
            start_ticks: now.start_ticks + 1,
            ..now
        };
        assert_eq!(meter.percent(me, &reused, Instant::now()), None);
        let at = Instant::now();
        meter.forget_unsampled(at);
        assert!(meter.last.is_empty());
    }

    fn reported(age_ms: Option<f64>, received_at: DateTime<Utc>) -> LastMetrics {
        LastMetrics {
            received_at,
            pnl: None,
            positions_count: None,
            orders_count: None,
            success_rate: None,
            last_tick_age_ms: age_ms,
            metrics: json!({}),
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);
    const METRICS: Duration = Duration::from_secs(5);

    fn verdict(
        m: Option<&LastMetrics>,
        started: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> TickVerdict {
        tick_verdict(m, started, now, MINUTE, METRICS)
    }

    #[test]
    fn no_tick_yet_is_never_stale() {
        let now = Utc::now();
        // A heartbeat without a token: metrics arrive, ticks never do.
        let m = reported(None, now - chrono::Duration::hours(1));
        let v = verdict(Some(&m), None, now);
        assert_eq!((v.age_ms, v.stale), (None, false));
        // No metrics at all yet (just started or adopted).
        assert!(!verdict(None, None, now).stale);
    }

    #[test]
    fn an_old_last_tick_is_stale() {
        let now = Utc::now();
        // Fresh metrics, fresh tick: the reported age as it is.
        let m = reported(Some(120.0), now - chrono::Duration::seconds(3));
        assert_eq!(
            verdict(Some(&m), None, now),
            TickVerdict {
                age_ms: Some(120.0),
                stale: false
            }
        );
        // The executor says the last tick is a minute old.
        let m = reported(Some(60_000.0), now - chrono::Duration::seconds(1));
        assert_eq!(
            verdict(Some(&m), None, now),
            TickVerdict {
                age_ms: Some(60_000.0),
                stale: true
            }
        );
        let m = reported(Some(59_999.0), now);
        assert!(!verdict(Some(&m), None, now).stale);
    }

    #[test]
    fn a_silent_executor_is_stale() {
        let now = Utc::now();
        let m = reported(Some(100.0), now - chrono::Duration::seconds(61));
        assert_eq!(
            verdict(Some(&m), None, now),
            TickVerdict {
                age_ms: Some(61_100.0),
                stale: true
            }
        );
        // Silence is judged against at least two metrics intervals.
        let m = reported(Some(100.0), now - chrono::Duration::seconds(3));
        let v = tick_verdict(Some(&m), None, now, Duration::from_secs(1), METRICS);
        assert_eq!((v.age_ms, v.stale), (Some(100.0), false));
    }

    #[test]
    fn metrics_of_an_earlier_run_do_not_count() {
        let now = Utc::now();
        let m = reported(Some(100.0), now - chrono::Duration::hours(2));
        let started = now - chrono::Duration::seconds(5);
        assert_eq!(verdict(Some(&m), Some(started), now).age_ms, None);
        let fresh = reported(Some(100.0), now - chrono::Duration::seconds(1));
        assert_eq!(
            verdict(Some(&fresh), Some(started), now).age_ms,
            Some(100.0)
        );
    }

    #[test]
    fn zero_turns_the_check_off() {
        let now = Utc::now();
        let m = reported(Some(1e9), now - chrono::Duration::hours(1));
        assert!(!tick_verdict(Some(&m), None, now, Duration::ZERO, METRICS).stale);
    }
}
