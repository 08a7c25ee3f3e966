//! The [`HealthSampler`]: every health interval, samples CPU and resident memory of
//! the supervised executors only (never the whole process table), publishes
//! `strategy:health` per live strategy and `engine:health`, refreshes the state
//! hashes, and hands the samples to the metrics recorder.

use crate::db::MetricsRow;
use crate::Shared;
use chrono::Utc;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use strategy_sdk::protocol::{EngineHealthMessage, HealthMessage};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::mpsc;

pub struct HealthSampler {
    shared: Arc<Shared>,
    recorder: mpsc::Sender<MetricsRow>,
    system: System,
    /// Pids sampled at least once: CPU % is a delta, so a first sample is not published.
    seen: HashSet<u32>,
    started: Instant,
}

impl HealthSampler {
    pub fn new(shared: Arc<Shared>, recorder: mpsc::Sender<MetricsRow>) -> Self {
        HealthSampler {
            shared,
            recorder,
            system: System::new(),
            seen: HashSet::new(),
            started: Instant::now(),
        }
    }

    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(self.shared.config.health_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let cancel = self.shared.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => self.sample(),
            }
        }
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
        let mut pids: Vec<Pid> = entries
            .iter()
            .filter_map(|(_, e)| e.pid.map(Pid::from_u32))
            .collect();
        pids.push(Pid::from_u32(own_pid));
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let now = Utc::now();
        let channels = &self.shared.channels;
        let mut still_seen = HashSet::with_capacity(entries.len() + 1);
        let mut rows = Vec::with_capacity(entries.len());
        for (id, entry) in &entries {
            let pid = entry.pid.expect("filtered");
            let Some(process) = self.system.process(Pid::from_u32(pid)) else {
                continue;
            };
            let first = !self.seen.contains(&pid);
            still_seen.insert(pid);
            let cpu = process.cpu_usage() as f64;
            let memory_mb = process.memory() as f64 / (1024.0 * 1024.0);
            let uptime_s = entry
                .started_at
                .map(|t| (now - t).num_seconds().max(0) as u64)
                .unwrap_or(0);
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
            };
            self.shared.publisher.set_state(
                channels.state_key(*id),
                vec![
                    ("cpu_percent".into(), msg.cpu_percent.to_string()),
                    ("memory_mb".into(), msg.memory_mb.to_string()),
                    ("uptime_s".into(), uptime_s.to_string()),
                    ("health_at".into(), now.to_rfc3339()),
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
                    metrics: json!({"uptime_s": uptime_s, "restart_count": entry.restart_count}),
                });
            }
        }
        let (cpu, mem) = self
            .system
            .process(Pid::from_u32(own_pid))
            .map(|p| (p.cpu_usage() as f64, p.memory() as f64 / (1024.0 * 1024.0)))
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
        self.seen = still_seen;
        for row in rows {
            if self.recorder.try_send(row).is_err() {
                break;
            }
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
