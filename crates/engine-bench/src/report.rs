//! Statistics (nearest-rank percentiles), the figures with their goals, the growth
//! curve, the machine they were measured on, progress lines, and the two outputs: a
//! Markdown table on stdout and a JSON document.

use crate::engine::Binaries;
use crate::BenchArgs;
use chrono::{DateTime, Utc};
use engine_protocol::procfs;
use serde_json::{json, Value};
use sqlx::Connection;
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Order statistics of one series of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles (p99 of 100 samples is the 99th smallest; of 50, the
/// largest). `None` without samples.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let k = (p * sorted.len() as f64).ceil() as usize;
        sorted[k.clamp(1, sorted.len()) - 1]
    };
    Some(Summary {
        n: sorted.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// What a figure should be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    P50AtMost(f64),
    P99AtMost(f64),
    P50P99AtMost(f64, f64),
    /// Every sample (the largest) at most this.
    MaxAtMost(f64),
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn text(&self, unit: &str) -> String {
        match self {
            Goal::P50AtMost(x) => format!("p50 ≤ {} {unit}", num(*x)),
            Goal::P99AtMost(x) => format!("p99 ≤ {} {unit}", num(*x)),
            Goal::P50P99AtMost(a, b) => {
                format!("p50 ≤ {} {unit}, p99 ≤ {} {unit}", num(*a), num(*b))
            }
            Goal::MaxAtMost(x) => format!("each ≤ {} {unit}", num(*x)),
            Goal::AtMost(x) => format!("≤ {} {unit}", num(*x)),
            Goal::AtLeast(x) => format!("≥ {} {unit}", num(*x)),
        }
    }
}

/// One measured figure: a series (p50/p99) or a single value.
#[derive(Debug, Clone)]
pub struct Figure {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub summary: Option<Summary>,
    pub value: Option<f64>,
    pub goal: Option<Goal>,
    /// How it was measured, or what went wrong (shown under the table).
    pub note: String,
}

impl Figure {
    pub fn series(key: &str, label: &str, unit: &str, values: &[f64], goal: Option<Goal>) -> Self {
        Figure {
            key: key.to_string(),
            label: label.to_string(),
            unit: unit.to_string(),
            summary: summarize(values),
            value: None,
            goal,
            note: String::new(),
        }
    }

    pub fn single(
        key: &str,
        label: &str,
        unit: &str,
        value: Option<f64>,
        goal: Option<Goal>,
    ) -> Self {
        Figure {
            key: key.to_string(),
            label: label.to_string(),
            unit: unit.to_string(),
            summary: None,
            value,
            goal,
            note: String::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// `Some(Ok)` when the goal holds, `Some(Err(why))` when missed, `None` without a
    /// goal or a measurement.
    pub fn verdict(&self) -> Option<Result<(), String>> {
        let goal = self.goal?;
        let unit = &self.unit;
        let check = |name: &str, got: f64, limit: f64, at_most: bool| -> Result<(), String> {
            let ok = if at_most { got <= limit } else { got >= limit };
            if ok {
                Ok(())
            } else {
                let off = if limit != 0.0 {
                    format!(" ({:+.0} %)", (got - limit) / limit * 100.0)
                } else {
                    String::new()
                };
                let cmp = if at_most { ">" } else { "<" };
                Err(format!(
                    "{name}{} {cmp} {} {unit}{off}",
                    num(got),
                    num(limit)
                ))
            }
        };
        let result = match (goal, self.summary, self.value) {
            (Goal::P50AtMost(x), Some(s), _) => check("p50 ", s.p50, x, true),
            (Goal::P99AtMost(x), Some(s), _) => check("p99 ", s.p99, x, true),
            (Goal::P50P99AtMost(a, b), Some(s), _) => {
                check("p50 ", s.p50, a, true).and_then(|()| check("p99 ", s.p99, b, true))
            }
            (Goal::MaxAtMost(x), Some(s), _) => check("max ", s.max, x, true),
            (Goal::AtMost(x), _, Some(v)) => check("", v, x, true),
            (Goal::AtLeast(x), _, Some(v)) => check("", v, x, false),
            _ => return None,
        };
        Some(result)
    }
}

/// One point of the growth curve.
#[derive(Debug, Clone, Default)]
pub struct GrowthPoint {
    pub strategies: usize,
    pub running: usize,
    pub failed_starts: usize,
    pub start_all_running_s: Option<f64>,
    pub start_all_executed_s: Option<f64>,
    pub manager_rss_mb: Option<f64>,
    pub manager_hwm_mb: Option<f64>,
    /// The manager's RSS split: anonymous (heap, stacks) and file-backed (mostly the
    /// binary's own pages).
    pub manager_rss_anon_mb: Option<f64>,
    pub manager_rss_file_mb: Option<f64>,
    pub manager_cpu_percent: Option<f64>,
    pub executors_cpu_percent: Option<f64>,
    pub machine_cpu_percent: Option<f64>,
    pub executor_rss_median_mb: Option<f64>,
    pub executor_rss_max_mb: Option<f64>,
    pub executors_pss_total_mb: Option<f64>,
    pub global_stop_s: Option<f64>,
    pub cpu_window_s: f64,
}

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    pub redis: String,
    pub load_at_start: Option<[f64; 3]>,
    pub started_at: DateTime<Utc>,
}

impl Machine {
    pub async fn read(args: &BenchArgs) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        let postgres = async {
            let mut conn = sqlx::PgConnection::connect(&args.database_url).await.ok()?;
            let v = engine_store::operator::server_version(&mut conn)
                .await
                .ok()?;
            let _ = conn.close().await;
            Some(v)
        }
        .await
        .unwrap_or_else(|| "unknown".into());
        let redis = async {
            let client = redis::Client::open(args.redis_url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(|v| v.trim().to_string())
        }
        .await
        .unwrap_or_else(|| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            postgres,
            redis,
            load_at_start: procfs::load_average(),
            started_at: Utc::now(),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB, Linux {}, PostgreSQL {}, Redis {}, load average {}",
            self.cores,
            self.cpu_model,
            self.memory_gib,
            self.kernel,
            self.postgres,
            self.redis,
            load_text(self.load_at_start)
        )
    }
}

fn load_text(load: Option<[f64; 3]>) -> String {
    match load {
        Some([a, b, c]) => format!("{a:.2} {b:.2} {c:.2}"),
        None => "unknown".into(),
    }
}

/// Everything measured in one run.
pub struct Results {
    args: BenchArgs,
    machine: Machine,
    binaries: Binaries,
    pub figures: Vec<Figure>,
    pub growth: Vec<GrowthPoint>,
    /// Further measurements, by name, for the JSON only.
    pub extra: serde_json::Map<String, Value>,
    started: Instant,
    load_at_end: Option<[f64; 3]>,
    elapsed_s: f64,
}

impl Results {
    pub fn new(args: &BenchArgs, machine: Machine, binaries: &Binaries) -> Results {
        Results {
            args: args.clone(),
            machine,
            binaries: binaries.clone(),
            figures: Vec::new(),
            growth: Vec::new(),
            extra: serde_json::Map::new(),
            started: Instant::now(),
            load_at_end: None,
            elapsed_s: 0.0,
        }
    }

    pub fn push(&mut self, figure: Figure) {
        let line = match (&figure.summary, figure.value) {
            (Some(s), _) => format!(
                "p50 {} {unit}, p99 {} {unit} (n = {})",
                num(s.p50),
                num(s.p99),
                s.n,
                unit = figure.unit
            ),
            (None, Some(v)) => format!("{} {}", num(v), figure.unit),
            (None, None) => "not measured".to_string(),
        };
        let verdict = match figure.verdict() {
            Some(Ok(())) => "  [goal holds]".to_string(),
            Some(Err(why)) => format!("  [MISSED: {why}]"),
            None => String::new(),
        };
        eprintln!("  = {}: {line}{verdict}", figure.label);
        self.figures.push(figure);
    }

    pub async fn finish(&mut self) {
        self.load_at_end = procfs::load_average();
        self.elapsed_s = self.started.elapsed().as_secs_f64();
    }

    /// The figures and the growth curve as Markdown tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "\n## engine-bench results ({})\n\nMachine: {}.\nRun: {} samples per latency figure, scales {:?}{}, {:.0} s in all, load average at the end {}.\n\n",
            self.machine.started_at.format("%Y-%m-%d %H:%M UTC"),
            self.machine.summary(),
            self.args.samples,
            self.args.scales,
            if self.args.quick { " (--quick: smoke size, not figures to quote)" } else { "" },
            self.elapsed_s,
            load_text(self.load_at_end),
        ));
        out.push_str("| figure | n | p50 | p99 | goal | verdict |\n|---|---:|---:|---:|---|---|\n");
        for f in &self.figures {
            let (n, p50, p99) = match (&f.summary, f.value) {
                (Some(s), _) => (
                    s.n.to_string(),
                    format!("{} {}", num(s.p50), f.unit),
                    format!("{} {}", num(s.p99), f.unit),
                ),
                (None, Some(v)) => (
                    "1".to_string(),
                    format!("{} {}", num(v), f.unit),
                    "—".into(),
                ),
                (None, None) => ("0".to_string(), "not measured".into(), "—".into()),
            };
            let goal = f
                .goal
                .map(|g| g.text(&f.unit))
                .unwrap_or_else(|| "—".into());
            let verdict = match f.verdict() {
                Some(Ok(())) => "holds".to_string(),
                Some(Err(why)) => format!("**missed**: {why}"),
                None => "—".to_string(),
            };
            out.push_str(&format!(
                "| {} | {n} | {p50} | {p99} | {goal} | {verdict} |\n",
                f.label
            ));
        }
        let notes: Vec<&Figure> = self.figures.iter().filter(|f| !f.note.is_empty()).collect();
        if !notes.is_empty() {
            out.push('\n');
            for f in notes {
                out.push_str(&format!("- {}: {}\n", f.label, f.note));
            }
        }
        if !self.growth.is_empty() {
            out.push_str(&format!(
                "\n### Growth curve (health interval 1 s, CPU over {:.0} s)\n\n",
                self.growth[0].cpu_window_s
            ));
            out.push_str(
                "| strategies | running | start-all → all running | → all executed | manager RSS | manager CPU | executors CPU (sum) | executor RSS median / max | executors PSS (sum) | global stop → executed |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for g in &self.growth {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
                    g.strategies,
                    g.running,
                    opt(g.start_all_running_s, " s"),
                    opt(g.start_all_executed_s, " s"),
                    opt(g.manager_rss_mb, " MB"),
                    opt(g.manager_cpu_percent, " %"),
                    opt(g.executors_cpu_percent, " %"),
                    opt(g.executor_rss_median_mb, ""),
                    opt(g.executor_rss_max_mb, " MB"),
                    opt(g.executors_pss_total_mb, " MB"),
                    opt(g.global_stop_s, " s"),
                ));
            }
            if let Some(slopes) = self.growth_slopes() {
                out.push_str(&format!("\nPer added strategy: {slopes}.\n"));
            }
        }
        out
    }

    /// Marginal cost per strategy between consecutive scales.
    fn growth_slopes(&self) -> Option<String> {
        let pairs: Vec<String> = self
            .growth
            .windows(2)
            .filter_map(|w| {
                let (a, b) = (&w[0], &w[1]);
                let dn = (b.strategies - a.strategies) as f64;
                let rss = (b.manager_rss_mb? - a.manager_rss_mb?) * 1024.0 / dn;
                let cpu = (b.manager_cpu_percent? - a.manager_cpu_percent?) / dn;
                let start = (b.start_all_running_s? - a.start_all_running_s?) * 1000.0 / dn;
                Some(format!(
                    "{}→{}: manager {:.0} KiB, {:.4} % CPU, start-all {:.1} ms",
                    a.strategies, b.strategies, rss, cpu, start
                ))
            })
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    pub fn json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let verdict = f.verdict();
                json!({
                    "key": f.key,
                    "label": f.label,
                    "unit": f.unit,
                    "n": f.summary.map(|s| s.n).or(f.value.map(|_| 1)).unwrap_or(0),
                    "p50": f.summary.map(|s| s.p50),
                    "p99": f.summary.map(|s| s.p99),
                    "min": f.summary.map(|s| s.min),
                    "max": f.summary.map(|s| s.max),
                    "mean": f.summary.map(|s| s.mean),
                    "value": f.value,
                    "goal": f.goal.map(|g| g.text(&f.unit)),
                    "goal_holds": verdict.as_ref().map(|v| v.is_ok()),
                    "missed_by": verdict.and_then(|v| v.err()),
                    "note": (!f.note.is_empty()).then_some(&f.note),
                })
            })
            .collect();
        let growth: Vec<Value> = self
            .growth
            .iter()
            .map(|g| {
                json!({
                    "strategies": g.strategies,
                    "running": g.running,
                    "failed_starts": g.failed_starts,
                    "start_all_running_s": g.start_all_running_s,
                    "start_all_executed_s": g.start_all_executed_s,
                    "manager_rss_mb": g.manager_rss_mb,
                    "manager_hwm_mb": g.manager_hwm_mb,
                    "manager_rss_anon_mb": g.manager_rss_anon_mb,
                    "manager_rss_file_mb": g.manager_rss_file_mb,
                    "manager_cpu_percent": g.manager_cpu_percent,
                    "executors_cpu_percent": g.executors_cpu_percent,
                    "machine_cpu_percent": g.machine_cpu_percent,
                    "executor_rss_median_mb": g.executor_rss_median_mb,
                    "executor_rss_max_mb": g.executor_rss_max_mb,
                    "executors_pss_total_mb": g.executors_pss_total_mb,
                    "global_stop_s": g.global_stop_s,
                    "cpu_window_s": g.cpu_window_s,
                })
            })
            .collect();
        let m = &self.machine;
        json!({
            "bench": "engine-bench",
            "started_at": m.started_at.to_rfc3339(),
            "elapsed_s": self.elapsed_s,
            "quick": self.args.quick,
            "machine": {
                "cores": m.cores,
                "cpu_model": m.cpu_model,
                "memory_gib": m.memory_gib,
                "kernel": m.kernel,
                "postgres": m.postgres,
                "redis": m.redis,
                "load_average_start": m.load_at_start,
                "load_average_end": self.load_at_end,
            },
            "config": {
                "samples": self.args.samples,
                "scales": self.args.scales,
                "headline_scale": self.args.headline_scale,
                "cpu_window_s": self.args.cpu_window.as_secs_f64(),
                "metrics_messages": self.args.metrics_messages,
                "metrics_burst": self.args.metrics_burst,
                "ticks": self.args.ticks,
                "manager": self.binaries.manager.display().to_string(),
                "executor": self.binaries.executor.display().to_string(),
            },
            "figures": figures,
            "growth": growth,
            "extra": self.extra,
        })
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("{}{unit}", num(v)),
        None => "—".into(),
    }
}

/// A number with as many decimals as it deserves.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 10_000.0 {
        let whole = format!("{:.0}", x);
        // 123456 → 123,456
        let (sign, digits) = whole.split_at(usize::from(whole.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Progress of a long step on stderr: an updating line on a terminal, a line every
/// 10 % (or 5 s) otherwise.
pub struct Progress {
    label: String,
    total: usize,
    tty: bool,
    last_line: Instant,
    last_tenth: usize,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Progress {
        let progress = Progress {
            label: label.into(),
            total,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            last_tenth: 0,
        };
        if !progress.tty {
            eprintln!("  {}: 0/{}", progress.label, total);
        }
        progress
    }

    pub fn set(&mut self, done: usize) {
        if self.tty {
            eprint!("\r  {}: {done}/{}   ", self.label, self.total);
            let _ = std::io::stderr().flush();
            return;
        }
        let tenth = done * 10 / self.total.max(1);
        if tenth > self.last_tenth || self.last_line.elapsed().as_secs() >= 5 {
            eprintln!("  {}: {done}/{}", self.label, self.total);
            self.last_tenth = tenth;
            self.last_line = Instant::now();
        }
    }

    pub fn finish(&mut self) {
        if self.tty {
            eprintln!("\r  {}: {}/{} done   ", self.label, self.total, self.total);
        } else if self.last_tenth < 10 {
            eprintln!("  {}: done", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v).unwrap();
        assert_eq!((s.p50, s.p99, s.min, s.max), (50.0, 99.0, 1.0, 100.0));
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        let s = summarize(&v).unwrap();
        assert_eq!((s.p50, s.p99), (25.0, 50.0));
        assert_eq!(summarize(&[3.0]).unwrap().p99, 3.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn verdicts_say_by_how_much() {
        let f = Figure::series("x", "x", "ms", &[10.0, 30.0], Some(Goal::P50AtMost(20.0)));
        assert_eq!(f.verdict(), Some(Ok(())));
        let f = Figure::single("y", "y", "MB", Some(30.0), Some(Goal::AtMost(25.0)));
        assert_eq!(f.verdict(), Some(Err("30.0 > 25.0 MB (+20 %)".to_string())));
        let f = Figure::single(
            "z",
            "z",
            "rows/s",
            Some(10_000.0),
            Some(Goal::AtLeast(20_000.0)),
        );
        assert!(f.verdict().unwrap().unwrap_err().contains("< 20,000"));
        assert_eq!(num(123_456.7), "123,457");
        assert_eq!(num(1.234), "1.23");
    }
}
