//! Measures runs (BENCHMARKS.md, "Runs: the strategy loop"): the `sma_crossover`
//! strategy loop alone (trait, `Context`, paper broker) and inside the SDK's
//! streaming backtest, then the whole run process on a generated 1,000,000-bar
//! one-minute bars file — wall time, bars/s and peak RSS (VmHWM) — with progress
//! every 50 ms against none at all (what reporting progress costs).
//!
//! ```text
//! cargo build --release --bin strategy-executor --example run_bench
//! target/release/examples/run_bench [--bars N] [--repeat R] [--csv PATH] [--loop-only]
//! ```
//!
//! `--csv PATH` also writes the bars' `ts,close` for `ops/bench/sma_python.py`.

use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::procfs;
use engine_protocol::runs::bars_file::BarsWriter;
use engine_protocol::runs::{outbox_path, RunInput, RunMode, RunOutput, RunSymbol};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strategy_executor::strategies::builtin_registry;
use strategy_sdk::backtest::{Backtest, BacktestSettings};
use strategy_sdk::{Bar, Host};
use uuid::Uuid;

const SYMBOL: &str = "BENCH";

struct Options {
    bars: usize,
    repeat: usize,
    csv: Option<PathBuf>,
    /// Measure the strategy loop only (for profiling it).
    loop_only: bool,
}

fn options() -> Options {
    let mut options = Options {
        bars: 1_000_000,
        repeat: 5,
        csv: None,
        loop_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--loop-only" {
            options.loop_only = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bars" => options.bars = value.parse().expect("--bars N"),
            "--repeat" => options.repeat = value.parse().expect("--repeat R"),
            "--csv" => options.csv = Some(PathBuf::from(value)),
            _ => panic!("unknown flag {arg}; flags: --bars N, --repeat R, --csv PATH, --loop-only"),
        }
    }
    options
}

/// One-minute bars of a geometric Brownian motion (seeded: the same every time).
fn generate(n: usize) -> Vec<Bar> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let start = DateTime::from_timestamp(1_672_531_200, 0).expect("2023-01-01");
    let sigma = 0.2 / (365.0f64 * 1440.0).sqrt();
    let mut price = 100.0;
    (0..n)
        .map(|i| {
            let z = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            let open = price;
            price *= (sigma * z).exp();
            Bar {
                ts: start + TimeDelta::minutes(i as i64),
                open,
                high: open.max(price) * 1.0002,
                low: open.min(price) * 0.9998,
                close: price,
                volume: 1000.0 + 500.0 * uniform(),
            }
        })
        .collect()
}

fn config() -> serde_json::Value {
    json!({"token": SYMBOL, "fast_period": 5, "slow_period": 20, "order_qty": 1.0})
}

/// Bars per second of `f` over `bars`: by wall time, the best of `repeat`; and by
/// the process's CPU time over all of them (what the loop costs when it has a core,
/// whatever else the machine runs: on a shared machine the wall time also counts
/// the time other processes held the core).
fn rates(bars: usize, repeat: usize, mut f: impl FnMut() -> u64) -> (f64, f64, u64) {
    let mut best = Duration::MAX;
    let mut check = 0;
    let cpu_before = procfs::threads_cpu_ns(std::process::id()).unwrap_or(0);
    for _ in 0..repeat {
        let started = Instant::now();
        check = f();
        best = best.min(started.elapsed());
    }
    let cpu = procfs::threads_cpu_ns(std::process::id()).unwrap_or(0) - cpu_before;
    let by_cpu = (bars * repeat) as f64 / (cpu as f64 / 1e9);
    (bars as f64 / best.as_secs_f64(), by_cpu, check)
}

fn main() {
    let options = options();
    let bars = generate(options.bars);
    let registry = builtin_registry();
    let n = bars.len();

    let (loop_rate, loop_cpu_rate, orders) = rates(n, options.repeat, || {
        let strategy = registry.create("sma_crossover", &config()).expect("config");
        let mut host = Host::new(Uuid::nil(), "bench", strategy);
        host.drop_custom_metrics();
        host.start(bars[0].ts);
        let mut feed = host.bar_feed(SYMBOL);
        for bar in &bars {
            host.feed_bar(&mut feed, bar);
        }
        host.context().broker().orders_count()
    });
    println!(
        "strategy loop (trait, Context, paper broker): {n} bars, {:.1} M bars/s by wall time (best of {}), {:.1} M bars/s by CPU time ({orders} orders)",
        loop_rate / 1e6,
        options.repeat,
        loop_cpu_rate / 1e6
    );
    if options.loop_only {
        return;
    }

    let (backtest_rate, backtest_cpu_rate, trades) = rates(n, options.repeat, || {
        let strategy = registry.create("sma_crossover", &config()).expect("config");
        let settings = BacktestSettings::new(SYMBOL, Duration::from_secs(60), 10_000.0);
        let mut backtest = Backtest::new(strategy, settings).expect("settings");
        for bar in &bars {
            backtest.bar(bar).expect("bars in order");
        }
        backtest.finish().expect("a report").trades.len() as u64
    });
    println!(
        "SDK backtest (loop + equity, trades, metrics): {:.1} M bars/s by wall time, {:.1} M bars/s by CPU time ({trades} trades)",
        backtest_rate / 1e6,
        backtest_cpu_rate / 1e6
    );

    let dir = std::env::temp_dir().join(format!("run-bench-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let bars_file = dir.join("bench.bars");
    write_bars(&bars_file, &bars);
    if let Some(csv) = &options.csv {
        write_csv(csv, &bars);
        println!("wrote {} for ops/bench/sma_python.py", csv.display());
    }
    drop(bars);
    let mut with_progress = Vec::new();
    let mut without = Vec::new();
    for _ in 0..options.repeat {
        with_progress.push(run_process(&dir, &bars_file, 50));
        without.push(run_process(&dir, &bars_file, 0));
    }
    report_process(n, &with_progress, &without);
    let _ = std::fs::remove_dir_all(&dir);
}

fn report_process(n: usize, with_progress: &[Measured], without: &[Measured]) {
    // The best of the runs (the least disturbed by other work on the machine) and
    // the median.
    let stats = |runs: &[Measured]| {
        let mut times: Vec<Duration> = runs.iter().map(|m| m.wall).collect();
        times.sort();
        (times[0], times[times.len() / 2])
    };
    let ((a, a_median), (b, b_median)) = (stats(with_progress), stats(without));
    let hwm = with_progress
        .iter()
        .chain(without)
        .map(|m| m.hwm_kib)
        .max()
        .unwrap_or(0);
    let lines = with_progress.last().map_or(0, |m| m.progress_lines);
    let least_cpu = |runs: &[Measured]| runs.iter().map(|m| m.cpu).min().unwrap_or_default();
    let (a_cpu, b_cpu) = (least_cpu(with_progress), least_cpu(without));
    println!(
        "run process (spawn → exit, 1 symbol): best {:.0} ms (median {:.0} ms), {:.1} M bars/s, peak RSS (VmHWM) {:.1} MB",
        a.as_secs_f64() * 1e3,
        a_median.as_secs_f64() * 1e3,
        n as f64 / a.as_secs_f64() / 1e6,
        hwm as f64 / 1024.0
    );
    println!(
        "progress cost: best {:.1} ms with progress every 50 ms ({lines} progress lines) vs {:.1} ms with none but the first and last: {:+.1} % (medians {:.1} vs {:.1} ms: {:+.1} %)",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0,
        a_median.as_secs_f64() * 1e3,
        b_median.as_secs_f64() * 1e3,
        (a_median.as_secs_f64() / b_median.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "progress cost by the run process's CPU time (least of the runs): {:.1} ms vs {:.1} ms: {:+.1} %",
        a_cpu.as_secs_f64() * 1e3,
        b_cpu.as_secs_f64() * 1e3,
        (a_cpu.as_secs_f64() / b_cpu.as_secs_f64() - 1.0) * 100.0
    );
}

fn write_bars(path: &Path, bars: &[Bar]) {
    let file = BufWriter::new(std::fs::File::create(path).expect("the bars file"));
    let mut writer = BarsWriter::new(file).expect("the bars file");
    for bar in bars {
        writer.write(SYMBOL, bar).expect("the bars file");
    }
    writer.finish().expect("the bars file");
}

fn write_csv(path: &Path, bars: &[Bar]) {
    let mut file = BufWriter::new(std::fs::File::create(path).expect("the CSV file"));
    writeln!(file, "ts,close").expect("the CSV file");
    for bar in bars {
        writeln!(file, "{},{}", bar.ts.timestamp(), bar.close).expect("the CSV file");
    }
    file.flush().expect("the CSV file");
}

struct Measured {
    wall: Duration,
    /// The process's CPU time, as last seen before it exited (polled every
    /// millisecond: the last one of its life is missed, alike in every run).
    cpu: Duration,
    hwm_kib: u64,
    progress_lines: usize,
}

/// The executor beside this example (`target/release/strategy-executor`).
fn executor() -> PathBuf {
    let exe = std::env::current_exe().expect("the example's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join("strategy-executor");
    assert!(
        path.is_file(),
        "{} is missing: build it first",
        path.display()
    );
    path
}

/// One run process over the bars file, spawn to exit.
fn run_process(dir: &Path, bars_file: &Path, progress_interval_ms: u64) -> Measured {
    let run_id = Uuid::new_v4();
    let start: DateTime<Utc> = DateTime::from_timestamp(1_672_531_200, 0).expect("a time");
    let input = RunInput {
        run_id,
        strategy_id: Uuid::new_v4(),
        name: "bench".into(),
        strategy_type: "sma_crossover".into(),
        mode: RunMode::Backtest,
        config: config(),
        symbols: vec![RunSymbol {
            symbol: SYMBOL.into(),
            name: None,
            sector: None,
        }],
        interval: "1m".into(),
        interval_s: 60,
        initial_capital: 10_000.0,
        fee_bps: 1.0,
        limit: None,
        threshold: None,
        start,
        end: start + TimeDelta::days(730),
        bars_path: bars_file.to_path_buf(),
        more_bars_paths: Vec::new(),
        outbox_path: outbox_path(dir, run_id),
        progress_interval_ms,
        lease_epoch: 0,
        // As the manager asks of a backtest: every fill to the orders file.
        orders_path: Some(engine_protocol::runs::orders_path(dir, run_id)),
    };
    let input = serde_json::to_vec(&input).expect("the input");
    let started = Instant::now();
    let mut child = Command::new(executor())
        .args(["--run-id", &run_id.to_string(), "--runs-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("the executor starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("the input is written");
    let mut hwm_kib = 0;
    let mut cpu_ns = 0;
    let status = loop {
        if let Some(kib) = procfs::hwm_kib(child.id()) {
            hwm_kib = hwm_kib.max(kib);
        }
        if let Some(ns) = procfs::threads_cpu_ns(child.id()) {
            cpu_ns = cpu_ns.max(ns);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let wall = started.elapsed();
    assert!(status.success(), "the run process failed: {status}");
    let text = std::fs::read_to_string(outbox_path(dir, run_id)).expect("the outbox");
    let lines: Vec<RunOutput> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("an outbox line"))
        .collect();
    assert!(
        matches!(lines.last(), Some(RunOutput::Result { .. })),
        "the run did not complete: {:?}",
        lines.last()
    );
    let progress_lines = lines
        .iter()
        .filter(|l| matches!(l, RunOutput::Progress { .. }))
        .count();
    Measured {
        wall,
        cpu: Duration::from_nanos(cpu_ns),
        hwm_kib,
        progress_lines,
    }
}
