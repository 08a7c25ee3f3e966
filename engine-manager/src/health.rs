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
use engine_protocol::{procfs, EngineHealthMessage, HealthMessage};
use engine_store::manager::MetricsRow;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// When each strategy's health was last written to `strategy_metrics`.
    recorded: HashMap<Uuid, Instant>,
}

impl HealthSampler {
    pub fn new(shared: Arc<Shared>, recorder: mpsc::Sender<MetricsRow>) -> Self {
        HealthSampler {
            shared,
            recorder,
            processes: Some(ProcessSampler::new()),
            started: Instant::now(),
            rotation_checked: None,
            rotation_failing: HashSet::new(),
            recorded: HashMap::new(),
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
            if usage.cpu_percent.is_some() && self.history_due(*id) {
                rows.push(metrics_row(&msg, entry.restart_count));
            }
        }
        if self.recorded.len() > entries.len() {
            let live: HashSet<Uuid> = entries.iter().map(|(id, _)| *id).collect();
            self.recorded.retain(|id, _| live.contains(id));
        }
        let own = usage.get(&own_pid).copied().unwrap_or_default();
        self.publish_engine(own, entries.len(), now);
        for row in rows {
            if self.recorder.try_send(row).is_err() {
                break;
            }
        }
    }

    /// Whether the strategy's health is due in `strategy_metrics` (its first sample
    /// with a CPU figure, then one per `--health-history-interval`); noted as written.
    fn history_due(&mut self, id: Uuid) -> bool {
        let every = self.shared.config.health_history_interval;
        let now = Instant::now();
        match self.recorded.get(&id) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                self.recorded.insert(id, now);
                true
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
        let json = serde_json::to_string(msg).unwrap_or_default();
        self.shared
            .health_cache
            .put_health(msg.clone(), msg.timestamp);
        self.shared.publisher.set_state(
            channels.state_key(msg.strategy_id),
            vec![
                // What `enginectl` computes the tick's age from when it shows it.
                (
                    "tick_reported_at",
                    reported_at.map(|at| at.to_rfc3339()).unwrap_or_default(),
                ),
                (
                    "metrics_interval_ms",
                    report_every
                        .flatten()
                        .map(|every| every.as_millis().to_string())
                        .unwrap_or_default(),
                ),
                ("cpu_percent", msg.cpu_percent.to_string()),
                ("memory_mb", msg.memory_mb.to_string()),
                // Use against limit, for `enginectl list` and the dashboard.
                (
                    "memory_limit_mb",
                    msg.memory_limit_mb
                        .map(|mb| mb.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "cpu_limit_percent",
                    msg.cpu_limit_percent
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                ),
                ("uptime_s", msg.uptime_s.to_string()),
                ("health_at", msg.timestamp.to_rfc3339()),
                ("stale", msg.stale.to_string()),
                (
                    "last_tick_age_ms",
                    msg.last_tick_age_ms
                        .map(|ms| ms.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "last_tick_at",
                    msg.last_tick_at
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_default(),
                ),
                ("health_message", json.clone()),
            ],
        );
        self.shared.publisher.publish_json(channels.health(), json);
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
        self.shared.health_cache.put_engine(engine);
    }
}

/// A health sample and when it arrived.
#[derive(Debug, Clone)]
pub struct HealthSample {
    pub message: HealthMessage,
    pub received_at: DateTime<Utc>,
}

/// The latest `strategy:health` per strategy and this node's latest `engine:health`,
/// for the API, `/metrics` and the probes. The health sampler puts its own samples
/// here directly; the dashboard relay adds other nodes' while a browser listens.
#[derive(Debug, Default)]
pub struct LiveCache {
    health: Mutex<HashMap<Uuid, HealthSample>>,
    engine: Mutex<Option<EngineHealthMessage>>,
}

impl LiveCache {
    pub fn health(&self, id: Uuid) -> Option<HealthSample> {
        self.health.lock().expect("health cache").get(&id).cloned()
    }

    pub fn all_health(&self) -> HashMap<Uuid, HealthSample> {
        self.health.lock().expect("health cache").clone()
    }

    pub fn engine(&self) -> Option<EngineHealthMessage> {
        self.engine.lock().expect("engine cache").clone()
    }

    pub fn put_health(&self, message: HealthMessage, received_at: DateTime<Utc>) {
        let sample = HealthSample {
            message,
            received_at,
        };
        self.health
            .lock()
            .expect("health cache")
            .insert(sample.message.strategy_id, sample);
    }

    fn put_engine(&self, message: EngineHealthMessage) {
        *self.engine.lock().expect("engine cache") = Some(message);
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

/// CPU % and resident memory of processes from `/proc/<pid>/stat`, one `pread` per
/// process per sample on a file kept open between samples: no path lookup, `open` or
/// `close` per sample, and only the `stat` file, which the kernel renders cheaply
/// (BENCHMARKS.md, "The health sampler, again": sysinfo read `status`, `stat` and
/// `statm` and made 16 system calls per process and sample). CPU % is the process's
/// user + system time between two samples over the wall time between them, per core
/// (100 is one core, as `top` computes it).
pub struct ProcessSampler {
    /// pid → its `stat` file and what its last sample read.
    watched: HashMap<u32, Watched>,
    ticks_per_s: f64,
    page_bytes: f64,
}

/// A process being sampled.
struct Watched {
    stat: procfs::StatFile,
    start_ticks: u64,
    cpu_ticks: u64,
    at: Instant,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessSampler {
    pub fn new() -> Self {
        ProcessSampler {
            watched: HashMap::new(),
            ticks_per_s: rustix::param::clock_ticks_per_second() as f64,
            page_bytes: rustix::param::page_size() as f64,
        }
    }

    /// Sample `pids` (blocking `/proc` reads: call it on the blocking pool). A pid
    /// that is gone or a zombie has no entry; the files of pids not asked for any
    /// more are closed.
    pub fn sample(&mut self, pids: &[u32]) -> HashMap<u32, ProcessUsage> {
        let mut usage = HashMap::with_capacity(pids.len());
        let mut watched = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let (stat, previous) = match self.watched.remove(&pid) {
                Some(w) => (w.stat, Some((w.start_ticks, w.cpu_ticks, w.at))),
                None => match procfs::StatFile::open(pid) {
                    Some(stat) => (stat, None),
                    None => continue,
                },
            };
            let Some(now) = stat.read() else {
                continue;
            };
            let at = Instant::now();
            let cpu_percent = previous
                .filter(|(start_ticks, _, _)| *start_ticks == now.start_ticks)
                .map(|(_, cpu_ticks, then)| {
                    let secs = at.duration_since(then).as_secs_f64().max(1e-3);
                    let ticks = now.cpu_ticks.saturating_sub(cpu_ticks) as f64;
                    ticks / self.ticks_per_s / secs * 100.0
                });
            let memory_mb = now.rss_pages as f64 * self.page_bytes / (1024.0 * 1024.0);
            usage.insert(
                pid,
                ProcessUsage {
                    cpu_percent,
                    memory_mb,
                },
            );
            let watch = Watched {
                stat,
                start_ticks: now.start_ticks,
                cpu_ticks: now.cpu_ticks,
                at,
            };
            watched.insert(pid, watch);
        }
        self.watched = watched;
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
        let mut sampler = ProcessSampler::new();
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
        assert!(
            sampler.watched.is_empty(),
            "the files of pids not asked for are closed"
        );
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
