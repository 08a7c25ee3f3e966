//! The [`HealthSampler`]: every health interval, samples CPU and resident memory of
//! the supervised executors only (never the whole process table), publishes
//! `strategy:health` per live strategy and `engine:health`, refreshes the state
//! hashes, and hands the samples to the metrics recorder. On the same tick it marks
//! strategies whose market data stopped as stale ([`tick_verdict`]) and rotates the
//! executors' logs ([`crate::log_rotation`]).
//!
//! # The stale rule
//! A live strategy is stale when
//! - its last market tick is `--stale-after` old or older (the age from the time of
//!   that tick, `last_tick_at` in the executor's metrics, as
//!   [`engine_protocol::tick_age_ms`] reads it), or
//! - it subscribes to market data (`subscribed_tokens` in its metrics) and no tick
//!   has arrived in the `--stale-after` since it started (a token no feed publishes,
//!   e.g. `DOGE-USD`), or
//! - it has had a tick, or takes market data, and the executor has sent no metrics
//!   for `--stale-after` (and at least two metrics intervals): it is hung or cut off
//!   from Redis, so it gets no ticks either.
//!
//! A strategy that subscribes to no market data (a `heartbeat` without `token`) is
//! never stale, and neither is one whose executor does not report its subscriptions
//! before its first tick. `--stale-after 0` turns the check off.

use crate::log_rotation::{self, RotationPolicy};
use crate::recorder::LastMetrics;
use crate::supervisor::LiveEntry;
use crate::Shared;
use chrono::{DateTime, Utc};
use engine_protocol::{EngineHealthMessage, HealthMessage};
use engine_store::manager::MetricsRow;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
use tokio::sync::mpsc;
use uuid::Uuid;

pub struct HealthSampler {
    shared: Arc<Shared>,
    recorder: mpsc::Sender<MetricsRow>,
    /// `None` only while a sample runs on the blocking pool.
    processes: Option<ProcessSampler>,
    started: Instant,
    /// When the executors' logs were last checked for rotation.
    rotation_checked: Option<Instant>,
    /// Logs whose rotation failed on the last pass (warned about once, not every tick).
    rotation_failing: HashSet<PathBuf>,
}

impl HealthSampler {
    pub fn new(
        shared: Arc<Shared>,
        recorder: mpsc::Sender<MetricsRow>,
    ) -> Result<Self, sysinfo::Error> {
        Ok(HealthSampler {
            shared,
            recorder,
            processes: Some(ProcessSampler::new()?),
            started: Instant::now(),
            rotation_checked: None,
            rotation_failing: HashSet::new(),
        })
    }

    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(self.shared.config.health_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let cancel = self.shared.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {
                    self.sample().await;
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
        let report = crate::tasks::blocking(move || log_rotation::rotate_dir(&dir, policy)).await;
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

    /// One health tick: sample the live executors and the manager, publish their
    /// health and state, and hand the rows to the recorder.
    async fn sample(&mut self) {
        let own_pid = std::process::id();
        let entries: Vec<(Uuid, LiveEntry)> = {
            let live = self.shared.live.lock().expect("live lock");
            live.iter()
                .filter(|(_, e)| e.status.is_live() && e.pid.is_some())
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        let mut pids: Vec<u32> = entries.iter().filter_map(|(_, e)| e.pid).collect();
        pids.push(own_pid);
        let usage = self.measure(pids).await;
        let now = Utc::now();
        let verdicts = self.verdicts(&entries, now);
        let mut rows = Vec::with_capacity(entries.len());
        for ((id, entry), verdict) in entries.iter().zip(verdicts) {
            let pid = entry.pid.expect("filtered");
            let Some(usage) = usage.get(&pid) else {
                continue;
            };
            let reported = verdict.reported;
            let msg = self.health_message(*id, entry, pid, usage, verdict, now);
            self.publish_health(&msg, reported);
            // CPU % is a delta: a first sample has none, and is not recorded as one.
            if usage.cpu_percent.is_some() {
                rows.push(metrics_row(&msg, entry.restart_count));
            }
        }
        let own = usage.get(&own_pid).copied().unwrap_or_default();
        self.publish_engine(own, entries.len(), now);
        for row in rows {
            if self.recorder.try_send(row).is_err() {
                break;
            }
        }
    }

    /// CPU and memory of `pids`, read on the blocking pool (`/proc` files).
    async fn measure(&mut self, pids: Vec<u32>) -> HashMap<u32, ProcessUsage> {
        let mut sampler = self
            .processes
            .take()
            .expect("the sampler is put back after every sample");
        let (sampler, usage) = crate::tasks::blocking(move || {
            let usage = sampler.sample(&pids);
            (sampler, usage)
        })
        .await;
        self.processes = Some(sampler);
        usage
    }

    /// The stale rule applied to each entry.
    fn verdicts(&self, entries: &[(Uuid, LiveEntry)], now: DateTime<Utc>) -> Vec<TickVerdict> {
        let config = &self.shared.config;
        let metrics = self.shared.last_metrics.lock().expect("last_metrics lock");
        entries
            .iter()
            .map(|(id, entry)| {
                tick_verdict(
                    metrics.get(id),
                    entry.started_at,
                    now,
                    config.stale_after,
                    config.metrics_interval,
                )
            })
            .collect()
    }

    fn health_message(
        &self,
        id: Uuid,
        entry: &LiveEntry,
        pid: u32,
        usage: &ProcessUsage,
        verdict: TickVerdict,
        now: DateTime<Utc>,
    ) -> HealthMessage {
        HealthMessage {
            strategy_id: id,
            name: entry.name.clone(),
            timestamp: now,
            pid: Some(pid),
            status: entry.status,
            cpu_percent: round2(usage.cpu_percent.unwrap_or(0.0)),
            memory_mb: round2(usage.memory_mb),
            uptime_s: entry
                .started_at
                .map(|t| (now - t).num_seconds().max(0) as u64)
                .unwrap_or(0),
            restart_count: entry.restart_count,
            node: self.shared.node.clone(),
            stale: verdict.stale,
            last_tick_age_ms: verdict.age_ms,
            last_tick_at: verdict.last_tick_at,
            memory_limit_mb: entry.limits.memory_mb,
            cpu_limit_percent: entry.limits.cpu_percent,
        }
    }

    /// `strategy:health` and the health fields of the strategy's state hash; nothing
    /// for a strategy deleted since the sample began (checked under the live lock,
    /// which [`Shared::forget_strategy`] holds while it deletes the hash).
    fn publish_health(
        &self,
        msg: &HealthMessage,
        reported: Option<(DateTime<Utc>, Option<Duration>)>,
    ) {
        let channels = &self.shared.channels;
        let live = self.shared.live.lock().expect("live lock");
        if !live.contains_key(&msg.strategy_id) {
            return;
        }
        let (reported_at, report_every) = reported.unzip();
        self.shared.publisher.set_state(
            channels.state_key(msg.strategy_id),
            vec![
                // What `enginectl` computes the tick's age from when it shows it.
                (
                    "tick_reported_at".into(),
                    reported_at.map(|at| at.to_rfc3339()).unwrap_or_default(),
                ),
                (
                    "metrics_interval_ms".into(),
                    report_every
                        .flatten()
                        .map(|every| every.as_millis().to_string())
                        .unwrap_or_default(),
                ),
                ("cpu_percent".into(), msg.cpu_percent.to_string()),
                ("memory_mb".into(), msg.memory_mb.to_string()),
                // Use against limit, for `enginectl list` and the dashboard.
                (
                    "memory_limit_mb".into(),
                    msg.memory_limit_mb
                        .map(|mb| mb.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "cpu_limit_percent".into(),
                    msg.cpu_limit_percent
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                ),
                ("uptime_s".into(), msg.uptime_s.to_string()),
                ("health_at".into(), msg.timestamp.to_rfc3339()),
                ("stale".into(), msg.stale.to_string()),
                (
                    "last_tick_age_ms".into(),
                    msg.last_tick_age_ms
                        .map(|ms| ms.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "last_tick_at".into(),
                    msg.last_tick_at
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_default(),
                ),
                (
                    "health_message".into(),
                    serde_json::to_string(msg).unwrap_or_default(),
                ),
            ],
        );
        self.shared.publisher.publish(channels.health(), msg);
        drop(live);
    }

    /// `engine:health`: the manager's own figures.
    fn publish_engine(&self, own: ProcessUsage, strategies_running: usize, now: DateTime<Utc>) {
        let engine = EngineHealthMessage {
            name: "engine-manager".to_string(),
            timestamp: now,
            node: self.shared.node.clone(),
            pid: std::process::id(),
            strategies_running,
            cpu_percent: round2(own.cpu_percent.unwrap_or(0.0)),
            memory_mb: round2(own.memory_mb),
            uptime_s: self.started.elapsed().as_secs(),
        };
        self.shared
            .publisher
            .publish(self.shared.channels.engine_health(), &engine);
    }
}

/// The `strategy_metrics` row of one health sample.
fn metrics_row(msg: &HealthMessage, restart_count: i32) -> MetricsRow {
    MetricsRow {
        strategy_id: msg.strategy_id,
        timestamp: msg.timestamp,
        source: "health",
        pnl: None,
        positions_count: None,
        orders_count: None,
        success_rate: None,
        cpu_percent: Some(msg.cpu_percent),
        memory_mb: Some(msg.memory_mb),
        metrics: json!({
            "uptime_s": msg.uptime_s,
            "restart_count": restart_count,
            "stale": msg.stale,
            "last_tick_age_ms": msg.last_tick_age_ms,
            "last_tick_at": msg.last_tick_at,
        }),
    }
}

/// CPU and resident memory of one process at one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// CPU % since the process's previous sample (100 is one core); `None` on its
    /// first sample, which has no delta yet.
    pub cpu_percent: Option<f64>,
    pub memory_mb: f64,
}

/// CPU % and resident memory of processes through `sysinfo`, refreshing only the
/// pids asked for (never the whole process table) and, of each, only its CPU times
/// and memory (no thread listing). CPU % is the process's CPU time between two
/// samples over the machine's, per core (the way `top` computes it). A process that
/// had used no CPU time at all at its first sample reads 0 % at its second: sysinfo
/// computes no usage against a zero baseline.
pub struct ProcessSampler {
    system: System,
    /// pid → its start time, at its last sample (a reused pid starts over).
    seen: HashMap<u32, u64>,
}

impl ProcessSampler {
    /// `sysinfo` fails only on a platform it does not know.
    pub fn new() -> Result<Self, sysinfo::Error> {
        Ok(ProcessSampler {
            system: System::new()?,
            seen: HashMap::new(),
        })
    }

    /// Sample `pids` (blocking `/proc` reads: call it on the blocking pool). A pid that
    /// is gone or a zombie has no entry.
    pub fn sample(&mut self, pids: &[u32]) -> HashMap<u32, ProcessUsage> {
        // The pids of the previous samples are refreshed too, so that those that
        // have exited are dropped from `system`.
        let mut refresh: Vec<Pid> = self.system.processes().keys().copied().collect();
        refresh.extend(pids.iter().map(|pid| Pid::from_u32(*pid)));
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&refresh),
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        let mut usage = HashMap::with_capacity(pids.len());
        let mut seen = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(process) = self.system.process(Pid::from_u32(pid)) else {
                continue;
            };
            if matches!(
                process.status(),
                ProcessStatus::Zombie | ProcessStatus::Dead
            ) {
                continue;
            }
            let start = process.start_time();
            let first = self.seen.get(&pid) != Some(&start);
            seen.insert(pid, start);
            usage.insert(
                pid,
                ProcessUsage {
                    cpu_percent: (!first).then(|| f64::from(process.cpu_usage())),
                    memory_mb: process.memory() as f64 / (1024.0 * 1024.0),
                },
            );
        }
        self.seen = seen;
        usage
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What the health message says about a strategy's market data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickVerdict {
    /// Milliseconds since the last tick, now. `None` before the first tick of the
    /// current run.
    pub age_ms: Option<f64>,
    /// When the last tick arrived, where the executor says.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// When the executor reported that, and how often it reports (for readers that
    /// compute the age themselves: [`engine_protocol::tick_age_ms`]).
    pub reported: Option<(DateTime<Utc>, Option<Duration>)>,
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
        last_tick_at: None,
        reported: None,
        stale: false,
    };
    let Some(metrics) = metrics else {
        return nothing;
    };
    if started_at.is_some_and(|started| metrics.received_at < started) {
        return nothing;
    }
    let elapsed_ms = |since: DateTime<Utc>| (now - since).num_milliseconds().max(0) as f64;
    let stale_ms = stale_after.as_secs_f64() * 1000.0;
    let silent_ms = stale_ms.max(2.0 * metrics_interval.as_secs_f64() * 1000.0);
    let silent = elapsed_ms(metrics.received_at) >= silent_ms;
    let age_ms = metrics.tick_age_ms(now);
    let late = match age_ms {
        Some(age) => age >= stale_ms || silent,
        // No tick in this run: late only for a strategy that waits for one.
        None => {
            metrics.takes_market_data == Some(true)
                && (silent || started_at.is_some_and(|t| elapsed_ms(t) >= stale_ms))
        }
    };
    TickVerdict {
        age_ms,
        last_tick_at: metrics.last_tick_at,
        reported: Some((metrics.reported_at, metrics.report_every)),
        stale: !stale_after.is_zero() && late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_sampler_measures_busy_time_between_samples() {
        let me = std::process::id();
        // sysinfo computes no CPU % against a baseline of zero CPU time.
        burn_cpu_ms(me, 20);
        let mut sampler = ProcessSampler::new().expect("sysinfo knows Linux");
        let first = sampler.sample(&[me]);
        assert_eq!(first[&me].cpu_percent, None, "no delta yet");
        assert!(first[&me].memory_mb > 0.1, "{first:?}");
        burn_cpu_ms(me, 200);
        let cpu = sampler.sample(&[me])[&me]
            .cpu_percent
            .expect("a second sample has a delta");
        // One busy thread: above zero, and at most every core of the machine.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(cpu > 0.0 && cpu <= 100.0 * cores + 1.0, "cpu {cpu}");
        // A pid that is gone has no sample, and is forgotten.
        let gone = u32::MAX - 1;
        assert!(!sampler.sample(&[me, gone]).contains_key(&gone));
        assert!(sampler.sample(&[]).is_empty());
        assert!(sampler.seen.is_empty());
    }

    /// Burn CPU until the kernel has counted `ms` more of it for `me`.
    fn burn_cpu_ms(me: u32, ms: u64) {
        let cpu_ns = || engine_protocol::procfs::cpu_ns(me).expect("own stat");
        let until = cpu_ns() + ms * 1_000_000;
        let mut x = 0u64;
        while cpu_ns() < until {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }

    /// Metrics received at `received_at` saying the last tick was at `tick_at`.
    fn reported(tick_at: Option<DateTime<Utc>>, received_at: DateTime<Utc>) -> LastMetrics {
        LastMetrics {
            received_at,
            pnl: None,
            positions_count: None,
            orders_count: None,
            success_rate: None,
            last_tick_age_ms: tick_at.map(|t| (received_at - t).num_milliseconds() as f64),
            last_tick_at: tick_at,
            reported_at: received_at,
            report_every: Some(METRICS),
            takes_market_data: Some(tick_at.is_some()),
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

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn no_market_data_is_never_stale() {
        let now = Utc::now();
        // A heartbeat without a token: metrics arrive, ticks never do.
        let m = reported(None, now - secs(1));
        let v = verdict(Some(&m), Some(now - chrono::Duration::hours(1)), now);
        assert_eq!((v.age_ms, v.stale), (None, false));
        // No metrics at all yet (just started or adopted).
        assert!(!verdict(None, Some(now - chrono::Duration::hours(1)), now).stale);
        // An older executor that does not say what it subscribes to.
        let old = LastMetrics {
            takes_market_data: None,
            ..m
        };
        assert!(!verdict(Some(&old), Some(now - chrono::Duration::hours(1)), now).stale);
    }

    #[test]
    fn market_data_that_never_arrives_is_stale_after_stale_after() {
        let now = Utc::now();
        let waiting = LastMetrics {
            takes_market_data: Some(true),
            ..reported(None, now - secs(1))
        };
        let v = verdict(Some(&waiting), Some(now - secs(59)), now);
        assert_eq!((v.age_ms, v.stale), (None, false), "not yet");
        let v = verdict(Some(&waiting), Some(now - secs(60)), now);
        assert_eq!(
            (v.age_ms, v.stale),
            (None, true),
            "--stale-after since start"
        );
    }

    #[test]
    fn the_age_is_what_the_last_report_knew_until_reports_are_overdue() {
        let now = Utc::now();
        let ms = chrono::Duration::milliseconds;
        // Reported 3 s ago, its tick 100 ms before: 100 ms. Ticks since the report
        // are unknown; counting the 3 s would overstate a live feed.
        let m = reported(Some(now - ms(3100)), now - secs(3));
        let v = verdict(Some(&m), None, now);
        assert_eq!((v.age_ms, v.stale), (Some(100.0), false));
        assert_eq!(v.last_tick_at, m.last_tick_at);
        // The report says its tick was a minute old: stale.
        let m = reported(Some(now - secs(61)), now - secs(1));
        assert_eq!(verdict(Some(&m), None, now).age_ms, Some(60_000.0));
        assert!(verdict(Some(&m), None, now).stale);
        let m = reported(Some(now - ms(59_999)), now);
        assert!(!verdict(Some(&m), None, now).stale);
        // An older executor without `last_tick_at`: its age plus the time since.
        let old = LastMetrics {
            last_tick_at: None,
            last_tick_age_ms: Some(100.0),
            ..reported(None, now - secs(3))
        };
        assert_eq!(verdict(Some(&old), None, now).age_ms, Some(3100.0));
    }

    #[test]
    fn a_silent_executor_is_stale() {
        let now = Utc::now();
        let m = reported(
            Some(now - chrono::Duration::milliseconds(61_100)),
            now - secs(61),
        );
        assert_eq!(
            verdict(Some(&m), None, now),
            TickVerdict {
                age_ms: Some(61_100.0),
                last_tick_at: m.last_tick_at,
                reported: Some((m.reported_at, Some(METRICS))),
                stale: true
            }
        );
        // Silence is judged against at least two metrics intervals.
        let m = reported(
            Some(now - chrono::Duration::milliseconds(100)),
            now - secs(3),
        );
        let v = tick_verdict(Some(&m), None, now, Duration::from_secs(1), METRICS);
        assert!(!v.stale, "{v:?}");
    }

    #[test]
    fn metrics_of_an_earlier_run_do_not_count() {
        let now = Utc::now();
        let m = reported(
            Some(now - chrono::Duration::hours(2)),
            now - chrono::Duration::hours(2),
        );
        let started = now - secs(5);
        assert_eq!(verdict(Some(&m), Some(started), now).age_ms, None);
        let fresh = reported(Some(now - secs(2)), now - secs(1));
        assert_eq!(
            verdict(Some(&fresh), Some(started), now).age_ms,
            Some(1000.0)
        );
    }

    #[test]
    fn zero_turns_the_check_off() {
        let now = Utc::now();
        let m = reported(
            Some(now - chrono::Duration::hours(1)),
            now - chrono::Duration::hours(1),
        );
        assert!(!tick_verdict(Some(&m), None, now, Duration::ZERO, METRICS).stale);
    }
}
