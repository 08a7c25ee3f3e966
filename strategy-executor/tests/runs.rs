//! End-to-end tests of run mode: the real `strategy-executor` binary started with
//! `--run-id --runs-dir` and a `RunInput` on stdin, over bars files written with
//! `BarsWriter`, its outbox lines read back and checked. No database, no Redis.

#![allow(clippy::too_many_lines)] // tests may be long; the 80-line rule is for the code they test
use chrono::{DateTime, TimeDelta, Utc};
use engine_protocol::runs::bars_file::{Bar, BarsWriter};
use engine_protocol::runs::{outbox_path, RunInput, RunMode, RunOutput, RunSymbol};
use serde_json::{json, Value};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a run may take.
const DEADLINE: Duration = Duration::from_secs(30);

const METRICS: [&str; 11] = [
    "average_return",
    "hit_rate",
    "sharpe_ratio",
    "sortino_ratio",
    "calmar_ratio",
    "total_return",
    "cagr",
    "max_drawdown",
    "profit_factor",
    "expectancy",
    "exposure",
];

/// A private temporary directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("runs-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_640_995_200, 0).unwrap() // 2022-01-01
}

/// Daily bars of `closes` from 2022-01-01.
fn daily(closes: &[f64]) -> Vec<Bar> {
    closes
        .iter()
        .enumerate()
        .map(|(i, &close)| Bar {
            ts: start() + TimeDelta::days(i as i64),
            open: close,
            high: close * 1.01,
            low: close * 0.99,
            close,
            volume: 1000.0 + (i % 7) as f64 * 100.0,
        })
        .collect()
}

/// A wavy series: `base` with a trend of `drift` a bar and a 40-bar cycle.
fn wave(n: usize, base: f64, drift: f64) -> Vec<f64> {
    (0..n)
        .map(|i| base + drift * i as f64 + 5.0 * (i as f64 * std::f64::consts::TAU / 40.0).sin())
        .collect()
}

/// A run over `bars` (in the order given, which must be by symbol) of `symbols`.
struct Run {
    dir: TestDir,
    input: RunInput,
}

impl Run {
    fn new(mode: RunMode, strategy_type: &str, config: Value, symbols: &[&str]) -> Self {
        let dir = TestDir::new();
        let run_id = Uuid::new_v4();
        let input = RunInput {
            run_id,
            strategy_id: Uuid::new_v4(),
            name: "test-run".into(),
            strategy_type: strategy_type.into(),
            mode,
            config,
            symbols: symbols
                .iter()
                .map(|s| RunSymbol {
                    symbol: s.to_string(),
                    name: None,
                    sector: Some("Tech".into()),
                })
                .collect(),
            interval: "1d".into(),
            interval_s: 86_400,
            initial_capital: 10_000.0,
            fee_bps: 5.0,
            limit: None,
            threshold: None,
            start: start(),
            end: start() + TimeDelta::days(3650),
            bars_path: dir.0.join(format!("{run_id}.bars")),
            more_bars_paths: Vec::new(),
            outbox_path: outbox_path(&dir.0, run_id),
            progress_interval_ms: 50,
            lease_epoch: 0,
            orders_path: None,
        };
        Run { dir, input }
    }

    fn bars(&self, bars: &[(&str, Vec<Bar>)]) -> &Self {
        write_bars(&self.input.bars_path, bars);
        self
    }

    /// Run the process; its exit code and outbox lines.
    fn run(&self) -> (i32, Vec<RunOutput>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strategy-executor"))
            .arg("--run-id")
            .arg(self.input.run_id.to_string())
            .arg("--runs-dir")
            .arg(&self.dir.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = serde_json::to_vec(&self.input).unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not end within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        (status.code().unwrap_or(-1), self.lines())
    }

    fn lines(&self) -> Vec<RunOutput> {
        let text = std::fs::read_to_string(&self.input.outbox_path).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

fn write_bars(path: &Path, bars: &[(&str, Vec<Bar>)]) {
    let file = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = BarsWriter::new(file).unwrap();
    for (symbol, bars) in bars {
        for bar in bars {
            writer.write(symbol, bar).unwrap();
        }
    }
    writer.finish().unwrap();
}

/// The last line's result, after checking the run's shape of lines.
fn result_of(code: i32, lines: &[RunOutput]) -> Value {
    assert_eq!(code, 0, "{lines:#?}");
    assert!(
        matches!(lines.first(), Some(RunOutput::Started { .. })),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| matches!(l, RunOutput::Progress { .. })),
        "at least the first and last progress: {lines:#?}"
    );
    match lines.last() {
        Some(RunOutput::Result { result }) => result.clone(),
        other => panic!("the last line is not a result: {other:?}\n{lines:#?}"),
    }
}

fn error_of(code: i32, lines: &[RunOutput]) -> String {
    assert_eq!(code, 0, "an error line is the run's outcome, not a crash");
    match lines.last() {
        Some(RunOutput::Error { error }) => error.clone(),
        other => panic!("the last line is not an error: {other:?}\n{lines:#?}"),
    }
}

/// An item line: item, position, passed, score, detail.
type ItemLine = (String, i64, Option<bool>, Option<f64>, Option<Value>);

fn items(lines: &[RunOutput]) -> Vec<ItemLine> {
    lines
        .iter()
        .filter_map(|l| match l {
            RunOutput::Item {
                item,
                position,
                passed,
                score,
                detail,
            } => Some((item.clone(), *position, *passed, *score, detail.clone())),
            _ => None,
        })
        .collect()
}

fn sma_config() -> Value {
    json!({"token": "BTC-USD", "fast_period": 5, "slow_period": 20, "order_qty": 10.0})
}

#[test]
fn a_backtest_of_one_symbol_gives_the_contract_result() {
    let run = Run::new(RunMode::Backtest, "sma_crossover", sma_config(), &["AAPL"]);
    run.bars(&[("AAPL", daily(&wave(800, 100.0, 0.05)))]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    let summary = &result["summary"];
    assert_eq!(summary["total_instances"], 1);
    assert_eq!(summary["symbols_processed"], 1);
    assert_eq!(summary["bars"], 800);
    assert!(summary["trades"].as_u64().unwrap() > 5, "{summary}");
    assert_eq!(summary["date_range"]["start"], json!(start()));
    assert_eq!(
        summary["date_range"]["end"],
        json!(start() + TimeDelta::days(799))
    );
    for metric in METRICS {
        assert!(
            result["performance_metrics"].get(metric).is_some(),
            "{metric} missing: {result}"
        );
        assert!(result["per_symbol"]["AAPL"].get(metric).is_some());
    }
    // One symbol: its metrics are the run's, with its bars and closed trades added.
    let mut aapl = result["per_symbol"]["AAPL"].clone();
    let aapl = aapl.as_object_mut().unwrap();
    assert_eq!(aapl.remove("bars"), Some(json!(800)));
    assert_eq!(aapl.remove("trades").as_ref(), Some(&summary["trades"]));
    assert_eq!(result["performance_metrics"], Value::Object(aapl.clone()));
    let curve = result["equity_curve"].as_array().unwrap();
    assert_eq!(curve.len(), 500, "800 bars downsampled to 500 points");
    assert_eq!(curve[0]["ts"], json!(start()));
    let total_return = result["performance_metrics"]["total_return"]
        .as_f64()
        .unwrap();
    let last = curve[499]["equity"].as_f64().unwrap();
    assert!((last / 10_000.0 - 1.0 - total_return).abs() < 1e-9);

    let items = items(&lines);
    assert_eq!(items.len(), 1);
    let (item, position, passed, score, detail) = &items[0];
    assert_eq!((item.as_str(), *position), ("AAPL", 0));
    assert_eq!(*score, Some(total_return));
    assert_eq!(*passed, Some(total_return > 0.0));
    assert_eq!(detail.as_ref().unwrap()["bars"], 800);
    assert_eq!(summary["positive_signals"], u64::from(total_return > 0.0));
    // Stages: loading → evaluating → aggregating, each completed.
    let stages: Vec<&str> = lines
        .iter()
        .filter_map(|l| match l {
            RunOutput::StageCompleted { stage } => Some(stage.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stages, ["loading", "evaluating", "aggregating"]);
    let last_progress = lines
        .iter()
        .rev()
        .find_map(|l| match l {
            RunOutput::Progress {
                progress_percent,
                completed_items,
                ..
            } => Some((*progress_percent, *completed_items)),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_progress, (100.0, 1));
}

#[test]
fn several_symbols_make_a_portfolio_and_a_symbol_without_bars_is_an_item() {
    let run = Run::new(
        RunMode::Backtest,
        "sma_crossover",
        sma_config(),
        &["MSFT", "AAPL", "NOBARS"],
    );
    run.bars(&[
        ("AAPL", daily(&wave(300, 100.0, 0.2))),
        ("MSFT", daily(&wave(300, 200.0, -0.1))),
    ]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    let summary = &result["summary"];
    assert_eq!(summary["total_instances"], 3);
    assert_eq!(summary["symbols_processed"], 2);
    assert_eq!(summary["bars"], 600);
    let per_symbol = result["per_symbol"].as_object().unwrap();
    assert_eq!(per_symbol.len(), 2);
    let trades: u64 = per_symbol
        .values()
        .map(|m| m["trades"].as_u64().unwrap())
        .sum();
    assert_eq!(json!(trades), summary["trades"], "{result}");
    assert_eq!(per_symbol["AAPL"]["bars"], 300);

    let items = items(&lines);
    let names: Vec<(&str, i64)> = items.iter().map(|i| (i.0.as_str(), i.1)).collect();
    assert_eq!(names, [("AAPL", 1), ("MSFT", 0), ("NOBARS", 2)]);
    assert_eq!(items[2].2, Some(false));
    assert_eq!(items[2].4.as_ref().unwrap()["bars"], 0);

    // The portfolio: a third of the capital each, the idle third in cash; its total
    // return is the capital-weighted mean of the symbols'.
    let r = |s: &str| per_symbol[s]["total_return"].as_f64().unwrap();
    let expected = (r("AAPL") + r("MSFT")) / 3.0;
    let total = result["performance_metrics"]["total_return"]
        .as_f64()
        .unwrap();
    assert!((total - expected).abs() < 1e-9, "{total} vs {expected}");
    let curve = result["equity_curve"].as_array().unwrap();
    assert_eq!(curve.len(), 300);
    let last = curve[299]["equity"].as_f64().unwrap();
    assert!((last - 10_000.0 * (1.0 + total)).abs() < 1e-6);
    for metric in METRICS {
        assert!(result["performance_metrics"].get(metric).is_some());
    }
}

#[test]
fn the_same_run_twice_gives_the_same_result() {
    let bars = [
        ("AAA", daily(&wave(500, 50.0, 0.01))),
        ("BBB", daily(&wave(400, 80.0, 0.03))),
    ];
    let run = |_: u8| {
        let run = Run::new(
            RunMode::Backtest,
            "sma_crossover",
            sma_config(),
            &["AAA", "BBB"],
        );
        run.bars(&bars);
        let (code, lines) = run.run();
        (result_of(code, &lines), items(&lines))
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a.0).unwrap(),
        serde_json::to_string(&b.0).unwrap()
    );
}

/// A large run's bars come in parts (the manager's COPY split by symbols, or by time
/// for one symbol), read one after the other: the same result and items as one file.
#[test]
fn bars_in_parts_give_the_same_run_as_one_file() {
    let aaa = daily(&wave(500, 50.0, 0.01));
    let bbb = daily(&wave(400, 80.0, 0.03));
    let run = |parts: &[Vec<(&str, Vec<Bar>)>]| {
        let mut run = Run::new(
            RunMode::Backtest,
            "sma_crossover",
            sma_config(),
            &["AAA", "BBB"],
        );
        run.bars(&parts[0]);
        for (n, part) in parts.iter().enumerate().skip(1) {
            let path = run.dir.0.join(format!("{}.bars.{n}", run.input.run_id));
            write_bars(&path, part);
            run.input.more_bars_paths.push(path);
        }
        let (code, lines) = run.run();
        (result_of(code, &lines), items(&lines))
    };
    let whole = run(&[vec![("AAA", aaa.clone()), ("BBB", bbb.clone())]]);
    let by_symbol = run(&[vec![("AAA", aaa.clone())], vec![("BBB", bbb.clone())]]);
    assert_eq!(whole, by_symbol);
    // BBB cut in time: its first 150 bars in the first part, the rest in the second.
    let by_time = run(&[
        vec![("AAA", aaa.clone()), ("BBB", bbb[..150].to_vec())],
        vec![("BBB", bbb[150..].to_vec())],
    ]);
    assert_eq!(whole, by_time);
    // An empty part (no bars in its half) is read through.
    let empty = run(&[vec![("AAA", aaa), ("BBB", bbb)], vec![]]);
    assert_eq!(whole, empty);
    assert_eq!(whole.0["summary"]["bars"], 900);
}

#[test]
fn a_screener_scores_ranks_and_limits() {
    let mut run = Run::new(
        RunMode::Screener,
        "sma_crossover",
        sma_config(),
        &["UP", "DOWN", "FLAT", "UP2"],
    );
    run.input.limit = Some(1);
    // Rising: the fast average above the slow one (score above 50, passes);
    // falling: below (fails).
    let rising: Vec<f64> = (0..60).map(|i| 100.0 + i as f64).collect();
    let rising_more: Vec<f64> = (0..60).map(|i| 100.0 + 2.0 * i as f64).collect();
    let falling: Vec<f64> = (0..60).map(|i| 200.0 - i as f64).collect();
    run.bars(&[
        ("DOWN", daily(&falling)),
        ("UP", daily(&rising)),
        ("UP2", daily(&rising_more)),
    ]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    assert_eq!(result["universe_size"], 4);
    let ranked = result["ranked_results"].as_array().unwrap();
    assert_eq!(ranked.len(), 1, "limit 1: {result}");
    assert_eq!(ranked[0]["symbol"], "UP2", "{result}");
    assert_eq!(ranked[0]["current_price"], 218.0);
    assert_eq!(ranked[0]["sector"], "Tech");
    let scores = result["scores"].as_object().unwrap();
    assert_eq!(scores.len(), 3, "FLAT has no bars, so no score: {result}");
    assert!(scores["UP2"].as_f64().unwrap() > scores["UP"].as_f64().unwrap());
    assert!(scores["DOWN"].as_f64().unwrap() < 50.0);

    let items = items(&lines);
    let passed: Vec<(&str, Option<bool>)> = items.iter().map(|i| (i.0.as_str(), i.2)).collect();
    assert_eq!(
        passed,
        [
            ("DOWN", Some(false)),
            ("UP", Some(true)),
            ("UP2", Some(true)),
            ("FLAT", Some(false))
        ]
    );
    assert_eq!(items[1].1, 0, "positions are the run's order");
}

#[test]
fn an_alert_scan_raises_each_alert_as_it_is_found() {
    // Falling then a jump on the last bar: the fast average crosses above the slow
    // one on the latest bar. Steady: no crossover.
    let mut crossing: Vec<f64> = (0..40).map(|i| 200.0 - i as f64).collect();
    crossing.push(400.0);
    let steady: Vec<f64> = (0..41).map(|i| 100.0 + i as f64).collect();
    let mut run = Run::new(
        RunMode::Alert,
        "sma_crossover",
        sma_config(),
        &["JUMP", "CALM"],
    );
    run.bars(&[("CALM", daily(&steady)), ("JUMP", daily(&crossing))]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    assert_eq!(result["symbols_monitored"], 2);
    let alerts = result["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{result}");
    assert_eq!(alerts[0]["symbol"], "JUMP");
    assert_eq!(alerts[0]["type"], "bullish_crossover");
    assert_eq!(alerts[0]["priority"], "normal");
    assert_eq!(result["signals"]["JUMP"]["signal"], "bullish_crossover");
    assert!(result["signals"]["CALM"]["signal"].is_null());
    assert_eq!(
        result["signals"]["JUMP"]["timestamp"],
        json!(start() + TimeDelta::days(40))
    );
    // The alert line comes before JUMP's item, which is after CALM's.
    let alert_at = lines
        .iter()
        .position(|l| matches!(l, RunOutput::Alert { symbol, .. } if symbol == "JUMP"))
        .unwrap();
    let item_at = |name: &str| {
        lines
            .iter()
            .position(|l| matches!(l, RunOutput::Item { item, .. } if item == name))
            .unwrap()
    };
    assert!(item_at("CALM") < alert_at && alert_at < item_at("JUMP"));

    // A threshold above the crossing's score: no alert.
    run = Run::new(
        RunMode::Alert,
        "sma_crossover",
        sma_config(),
        &["JUMP", "CALM"],
    );
    run.input.threshold = Some(100.0);
    run.bars(&[("CALM", daily(&steady)), ("JUMP", daily(&crossing))]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    assert_eq!(result["alerts"], json!([]), "{result}");
}

#[test]
fn a_mode_the_type_does_not_support_is_an_error_naming_the_ones_that_do() {
    let run = Run::new(RunMode::Backtest, "dca", json!({}), &["AAPL"]);
    run.bars(&[("AAPL", daily(&[1.0, 2.0]))]);
    let (code, lines) = run.run();
    let error = error_of(code, &lines);
    assert!(
        error.starts_with("dca supports live only; a backtest run needs one of: "),
        "{error}"
    );
    assert!(error.contains("sma_crossover"), "{error}");
    assert!(!lines.iter().any(|l| matches!(l, RunOutput::Item { .. })));
}

#[test]
fn a_config_the_strategy_rejects_is_an_error_with_its_message() {
    let config = json!({"token": "X", "fast_period": 30, "slow_period": 10});
    let run = Run::new(RunMode::Backtest, "sma_crossover", config, &["AAPL"]);
    run.bars(&[("AAPL", daily(&[1.0, 2.0]))]);
    let (code, lines) = run.run();
    let error = error_of(code, &lines);
    assert!(error.contains("fast_period"), "{error}");
    assert!(error.contains("must be less than slow_period"), "{error}");
}

#[test]
fn no_bars_at_all_and_foreign_files_are_errors() {
    let run = Run::new(RunMode::Backtest, "sma_crossover", sma_config(), &["AAPL"]);
    run.bars(&[]);
    let error = error_of(run.run().0, &run.run().1);
    assert!(
        error.starts_with("no bars for any of the run's 1 symbols"),
        "{error}"
    );

    let run = Run::new(RunMode::Screener, "sma_crossover", sma_config(), &["AAPL"]);
    run.bars(&[("MSFT", daily(&[1.0, 2.0]))]);
    let (code, lines) = run.run();
    let error = error_of(code, &lines);
    assert_eq!(
        error,
        "the bars file has bars of MSFT, which the run does not name"
    );

    let run = Run::new(RunMode::Backtest, "sma_crossover", sma_config(), &["AAPL"]);
    std::fs::write(
        &run.input.bars_path,
        b"date,open,high,low,close\n2024-01-02,1,2,0.5,1.5\n",
    )
    .unwrap();
    let (code, lines) = run.run();
    let error = error_of(code, &lines);
    assert!(error.contains("cannot read the bars file"), "{error}");
}

#[test]
fn a_panic_in_strategy_code_is_an_error_naming_the_symbol() {
    let config = json!({"token": "X", "panic_after_ticks": 3});
    let run = Run::new(RunMode::Backtest, "heartbeat", config, &["AAPL", "MSFT"]);
    run.bars(&[
        ("AAPL", daily(&[1.0, 2.0])),
        ("MSFT", daily(&[1.0, 2.0, 3.0, 4.0])),
    ]);
    let (code, lines) = run.run();
    let error = error_of(code, &lines);
    assert!(
        error.starts_with("the strategy panicked on MSFT: "),
        "{error}"
    );
    assert!(error.contains("panic_after_ticks"), "{error}");
    assert_eq!(items(&lines).len(), 1, "AAPL finished before");
}

#[test]
fn a_bad_input_is_an_error_line_in_the_outbox_of_the_run_id() {
    let (code, text) = run_with_stdin(b"{\"run_id\": 3}");
    assert_eq!(code, 0, "{text}");
    let line: RunOutput = serde_json::from_str(text.trim()).unwrap();
    let RunOutput::Error { error } = line else {
        panic!("{text}")
    };
    assert!(
        error.starts_with("the run's input on stdin is not a run input"),
        "{error}"
    );
}

/// An input cut short (the manager died while writing it, or before): no outcome,
/// exit code 3, so that the next manager's retry rule applies.
#[test]
fn an_input_cut_short_gives_no_outcome() {
    for cut in [&b""[..], &b"{\"run_id\": \"0b6e"[..]] {
        let (code, text) = run_with_stdin(cut);
        assert_eq!(code, 3, "{text}");
        assert_eq!(text, "", "no line in the outbox");
    }
}

/// A run process given `stdin`: its exit code and its outbox's text.
fn run_with_stdin(stdin: &[u8]) -> (i32, String) {
    let dir = TestDir::new();
    let run_id = Uuid::new_v4();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strategy-executor"))
        .arg("--run-id")
        .arg(run_id.to_string())
        .arg("--runs-dir")
        .arg(&dir.0)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let text = std::fs::read_to_string(outbox_path(&dir.0, run_id)).unwrap_or_default();
    (code, text)
}

#[test]
fn a_backtest_of_one_long_symbol_moves_its_progress_by_bars() {
    // 300 000 one-minute bars of one symbol, a progress line allowed every 1 ms.
    let mut run = Run::new(
        RunMode::Backtest,
        "sma_crossover",
        sma_config(),
        &["MINUTE"],
    );
    run.input.interval = "1m".into();
    run.input.interval_s = 60;
    run.input.progress_interval_ms = 1;
    run.input.end = start() + TimeDelta::minutes(300_000);
    run.bars(&[("MINUTE", minutes(0, 300_000))]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    assert_eq!(result["summary"]["bars"], 300_000);
    let progress: Vec<(f64, i64)> = lines
        .iter()
        .filter_map(|l| match l {
            RunOutput::Progress {
                progress_percent,
                completed_items,
                ..
            } => Some((*progress_percent, *completed_items)),
            _ => None,
        })
        .collect();
    let within: Vec<f64> = progress
        .iter()
        .filter(|(p, done)| *done == 0 && *p > 0.0 && *p < 100.0)
        .map(|(p, _)| *p)
        .collect();
    assert!(
        within.len() >= 2,
        "progress moves within the one item: {progress:?}"
    );
    assert!(within.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&(100.0, 1)));
}

/// Minute bars of one symbol from [`start`], `from..to`.
fn minutes(from: usize, to: usize) -> Vec<Bar> {
    wave(to, 100.0, 0.0001)[from..]
        .iter()
        .enumerate()
        .map(|(i, &close)| Bar {
            ts: start() + TimeDelta::minutes((from + i) as i64),
            open: close,
            high: close,
            low: close,
            close,
            volume: 1.0,
        })
        .collect()
}

/// A run whose bars file is still being written (under the writer's lock, as the
/// manager's COPY writes it) when its process starts: half the bars before, the
/// rest once the process has started; `whole` says whether the writer ends with the
/// trailer or is gone without it. The process's exit code and lines.
fn run_while_written(whole: bool) -> (i32, Vec<RunOutput>) {
    let mut run = Run::new(
        RunMode::Backtest,
        "sma_crossover",
        sma_config(),
        &["MINUTE"],
    );
    run.input.interval = "1m".into();
    run.input.interval_s = 60;
    run.input.end = start() + TimeDelta::minutes(20_000);
    let file = std::fs::File::create_new(&run.input.bars_path).unwrap();
    file.lock().unwrap();
    let mut writer = BarsWriter::new(BufWriter::new(file)).unwrap();
    for bar in minutes(0, 10_000) {
        writer.write("MINUTE", &bar).unwrap();
    }
    writer.get_mut().flush().unwrap();
    std::thread::scope(|scope| {
        let process = scope.spawn(|| run.run());
        let deadline = Instant::now() + DEADLINE;
        while !run
            .lines()
            .iter()
            .any(|l| matches!(l, RunOutput::Started { .. }))
        {
            assert!(Instant::now() < deadline, "the run did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        for bar in minutes(10_000, 20_000) {
            writer.write("MINUTE", &bar).unwrap();
        }
        if whole {
            drop(writer.finish().unwrap()); // the lock goes with the file
        } else {
            drop(writer); // no trailer: the writer is gone, and its lock with it
        }
        process.join().unwrap()
    })
}

#[test]
fn a_run_reads_its_bars_file_while_the_manager_writes_it() {
    let (code, lines) = run_while_written(true);
    let result = result_of(code, &lines);
    assert_eq!(result["summary"]["bars"], 20_000, "{result:#}");
}

#[test]
fn a_bars_file_whose_writer_is_gone_before_its_end_gives_no_outcome() {
    let (code, lines) = run_while_written(false);
    assert_eq!(code, 3, "the exit code of a run cut short: {lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| matches!(l, RunOutput::Result { .. } | RunOutput::Error { .. })),
        "a run cut short says neither result nor error (the manager tries it again): {lines:#?}"
    );
}

#[test]
fn a_backtest_writes_every_fill_to_its_orders_file_with_the_runs_epoch() {
    let mut run = Run::new(
        RunMode::Backtest,
        "sma_crossover",
        sma_config(),
        &["AAPL", "MSFT"],
    );
    run.input.lease_epoch = 6;
    run.input.orders_path = Some(run.dir.0.join(format!("{}.orders", run.input.run_id)));
    run.bars(&[
        ("AAPL", daily(&wave(400, 100.0, 0.05))),
        ("MSFT", daily(&wave(300, 50.0, -0.02))),
    ]);
    let (code, lines) = run.run();
    let result = result_of(code, &lines);
    let text = std::fs::read_to_string(run.input.orders_path.as_ref().unwrap()).unwrap();
    let run_part = &run.input.run_id.simple().to_string()[..12];
    let owner = &run.input.strategy_id.simple().to_string()[..8];
    let mut ids = std::collections::BTreeSet::new();
    for (position, symbol) in ["AAPL", "MSFT"].into_iter().enumerate() {
        let prefix = format!("\"e6-{owner}-r{run_part}.{position}-");
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        let trades = result["per_symbol"][symbol]["trades"].as_u64().unwrap();
        assert!(trades > 0, "{result}");
        // A round trip is two fills, or one when a fill flips the position and
        // opens the next: more fills than round trips, at most twice as many.
        let fills = mine.len() as u64;
        assert!(
            fills > trades && fills <= 2 * trades,
            "{symbol}: {fills} fills for {trades} round trips"
        );
        for (n, line) in mine.iter().enumerate() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 7, "{line}");
            assert_eq!(
                fields[0],
                format!("{prefix}{}\"", n + 1),
                "numbered in order"
            );
            assert_eq!(fields[1], format!("\"{symbol}\""));
            assert!(fields[2] == "buy" || fields[2] == "sell", "{line}");
            assert!(fields[6].ends_with('Z'), "{line}");
            assert!(ids.insert(fields[0].to_string()), "unique: {line}");
        }
    }
    assert_eq!(
        ids.len(),
        text.lines().count(),
        "every line is one of the two"
    );
}
