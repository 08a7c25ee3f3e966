//! `engine-bench`: measures the engine end to end, from the outside.
//!
//! It starts the real `engine-manager` binary as a subprocess (which starts real
//! `strategy-executor` processes) against a fresh PostgreSQL database and a private
//! Redis prefix, and drives it only through the public contract: SQL inserts into
//! `strategy_commands`, Redis subscriptions, and the process table (`/proc`). It
//! prints a table of figures (medians and p99 against the goals of BENCHMARKS.md) and
//! the growth curve, and writes the same as JSON with `--json PATH`.
//!
//! # Layout
//! - `main.rs`: flags, the order of the parts, Ctrl-C, output.
//! - [`engine`]: one engine under test (database, manager subprocess, Redis feeds,
//!   clean-up of everything it created).
//! - [`probe`]: what `/proc` says about a process (resident memory, CPU time, alive).
//! - [`scenarios`]: the three parts (latency, throughput, growth).
//! - [`report`]: statistics, the figures with their goals, the table and the JSON.

mod engine;
mod probe;
mod report;
mod scenarios;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Benchmarks the engine against the local PostgreSQL and Redis: command latencies,
/// crash detection, memory and CPU, start-all time, metrics and tick throughput, and
/// how memory, CPU and start-all time grow with the number of strategies.
///
/// Everything it creates (databases `bench_<uuid>`, Redis keys under a unique prefix,
/// a state directory in the temp dir, executor processes) is removed at the end, also
/// after an error or Ctrl-C.
#[derive(Debug, Clone, Parser)]
#[command(name = "engine-bench", version)]
pub struct BenchArgs {
    /// Samples per latency figure (medians and p99 need at least 50).
    #[arg(long, default_value_t = 100)]
    pub samples: usize,

    /// Strategy counts of the growth curve (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,50,200,500")]
    pub scales: Vec<usize>,

    /// The scale whose memory, CPU and start-all time are the headline figures; the
    /// nearest of --scales is used if it is not one of them.
    #[arg(long, default_value_t = 200)]
    pub headline_scale: usize,

    /// A tiny smoke-sized run (5 samples, scales 2,4, short windows): checks that
    /// the bench works, measures nothing worth quoting.
    #[arg(long)]
    pub quick: bool,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Which parts to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "latency,throughput,growth,runs"
    )]
    pub parts: Vec<Part>,

    /// The engine-manager binary [default: the one beside this binary].
    #[arg(long, env = "ENGINE_BENCH_MANAGER")]
    pub manager_path: Option<PathBuf>,

    /// The strategy-executor binary [default: the one beside the manager].
    #[arg(long, env = "ENGINE_BENCH_EXECUTOR")]
    pub executor_path: Option<PathBuf>,

    /// A PostgreSQL URL the bench may create and drop databases through; each engine
    /// gets a fresh `bench_<uuid>` database beside it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// How long the manager's and executors' CPU use is measured at each scale.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub cpu_window: Duration,

    /// Synthetic metrics messages published for the persistence throughput figure.
    #[arg(long, default_value_t = 200_000)]
    pub metrics_messages: usize,

    /// Metrics messages published at once, unpaced, to show what a burst does (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub metrics_burst: usize,

    /// Ticks published for the tick throughput figure.
    #[arg(long, default_value_t = 500_000)]
    pub ticks: usize,

    /// Cluster part: strategies among its three nodes.
    #[arg(long, default_value_t = 300)]
    pub cluster_strategies: usize,

    /// Cluster part: the lease times (seconds) it is measured at.
    #[arg(long, value_delimiter = ',', default_value = "10,3")]
    pub cluster_leases: Vec<u64>,

    /// Cluster part: how long nothing fails before the node is killed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub cluster_window: Duration,

    /// Interval strategies of the lateness part (no-op steps, every 1 s).
    #[arg(long, default_value_t = 1000)]
    pub lateness_strategies: usize,

    /// How long the lateness part collects executions, after they settled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lateness_window: Duration,

    /// `--max-concurrent-executions` of the lateness part's managers, one engine each
    /// (comma-separated; 5 is the manager's default; 0: a baseline engine whose
    /// strategies stay continuous, for the manager's CPU without executions).
    #[arg(long, value_delimiter = ',', default_value = "5,1000")]
    pub lateness_caps: Vec<u32>,

    /// A runaway strategy started beside the lateness part's interval strategies, to
    /// see what it does to them: `spinner` (a heartbeat burning a core, limited to
    /// `cpu_percent` 50) or `hog` (a heartbeat allocating 8 MB every 50 ms, limited to
    /// `memory_mb` 64: killed and restarted again and again).
    #[arg(long, value_enum, default_value = "none")]
    pub lateness_runaway: Runaway,

    /// Keep the state directories (manager and executor logs) instead of removing them.
    #[arg(long)]
    pub keep_logs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Command latencies, crash detection, executor memory.
    Latency,
    /// Metrics persistence and tick throughput.
    Throughput,
    /// Memory, CPU and start-all time at each of --scales.
    Growth,
    /// Backtest and screener run times, the run queue, cancel.
    Runs,
    /// Three cluster nodes: renewals, self-fencing, failover of a killed node.
    Cluster,
    /// Interval executions: start minus due time at 1 000 strategies every 1 s, the
    /// manager's CPU and memory meanwhile (not in the default parts).
    Lateness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runaway {
    None,
    Spinner,
    Hog,
}

impl BenchArgs {
    /// Apply `--quick` and sanity limits.
    fn normalised(mut self) -> BenchArgs {
        if self.quick {
            self.samples = self.samples.min(5);
            self.scales = vec![2, 4];
            self.headline_scale = 4;
            self.cpu_window = Duration::from_secs(2);
            self.metrics_messages = self.metrics_messages.min(2_000);
            self.metrics_burst = self.metrics_burst.min(1_000);
            self.ticks = self.ticks.min(5_000);
            self.lateness_strategies = self.lateness_strategies.min(20);
            self.lateness_window = Duration::from_secs(3);
        }
        self.lateness_strategies = self.lateness_strategies.max(1);
        self.samples = self.samples.max(1);
        self.scales.retain(|n| *n > 0);
        self.scales.sort_unstable();
        self.scales.dedup();
        self
    }
}

fn main() -> ExitCode {
    let args = BenchArgs::parse().normalised();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("engine-bench: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let cleanup = engine::CleanupRegistry::default();
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(args, cleanup.clone()) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nengine-bench: interrupted; cleaning up");
                Err(anyhow::anyhow!("interrupted"))
            }
        }
    });
    // Whatever an error or Ctrl-C left behind: managers, executors, databases, keys.
    runtime.block_on(cleanup.clean_all());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("engine-bench: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: BenchArgs, cleanup: engine::CleanupRegistry) -> anyhow::Result<()> {
    let binaries = engine::Binaries::locate(&args)?;
    let machine = report::Machine::read(&args).await;
    eprintln!(
        "engine-bench: manager {}, executor {}",
        binaries.manager.display(),
        binaries.executor.display()
    );
    eprintln!("engine-bench: {}", machine.summary());
    let mut results = report::Results::new(&args, machine, &binaries);
    let ctx = scenarios::BenchContext {
        args: args.clone(),
        binaries,
        cleanup: cleanup.clone(),
    };
    if args.parts.contains(&Part::Latency) {
        scenarios::latency(&ctx, &mut results)
            .await
            .context("latency part")?;
    }
    if args.parts.contains(&Part::Throughput) {
        scenarios::throughput(&ctx, &mut results)
            .await
            .context("throughput part")?;
    }
    if args.parts.contains(&Part::Growth) {
        scenarios::growth(&ctx, &mut results)
            .await
            .context("growth part")?;
    }
    if args.parts.contains(&Part::Runs) {
        scenarios::runs(&ctx, &mut results)
            .await
            .context("runs part")?;
    }
    if args.parts.contains(&Part::Cluster) {
        scenarios::cluster(&ctx, &mut results)
            .await
            .context("cluster part")?;
    }
    if args.parts.contains(&Part::Lateness) {
        scenarios::lateness(&ctx, &mut results)
            .await
            .context("lateness part")?;
    }
    results.finish().await;
    results
        .extra
        .insert("engines".into(), serde_json::Value::from(cleanup.created()));
    println!("{}", results.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results.json())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("engine-bench: JSON written to {}", path.display());
    }
    Ok(())
}
