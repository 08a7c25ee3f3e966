//! `enginectl run`, `runs`, `run-show`, `cancel` and `types`: the real binary against
//! a real database and Redis. No manager runs here: the test plays the manager's
//! part (it moves the row and publishes on `strategy:run:{id}`), so what is tested
//! is the tool alone — its insert, its live view of the run, its result tables, its
//! exit codes and its Ctrl-C.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{wait_for, TestEngine, DEADLINE};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command(engine: &TestEngine, args: &[&str]) -> tokio::process::Command {
    let mut command = engine.enginectl(args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

async fn finish(child: tokio::process::Child) -> Ran {
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("enginectl did not finish within 120s")
        .expect("run enginectl");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ctl(engine: &TestEngine, args: &[&str]) -> Ran {
    finish(command(engine, args).spawn().expect("spawn enginectl")).await
}

/// The id of the newest run, once there is one.
async fn newest_run(engine: &TestEngine, not: &[Uuid]) -> Uuid {
    wait_for("enginectl to insert its run", DEADLINE, || async {
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM strategy_runs ORDER BY created_at DESC, seq DESC")
                .fetch_all(&engine.pool)
                .await
                .ok()?;
        ids.into_iter().find(|id| !not.contains(id))
    })
    .await
}

async fn set_row(engine: &TestEngine, id: Uuid, sql: &str) {
    sqlx::query(&format!(
        "UPDATE strategy_runs SET {sql}, updated_at = now() WHERE id = $1"
    ))
    .bind(id)
    .execute(&engine.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_inserted_listed_shown_and_cancelled() {
    let engine = TestEngine::new().await;
    let sid = engine
        .add_strategy("breakout", "bullish_breakout", json!({}), false)
        .await;

    // --set builds the parameters; --no-wait --json prints the inserted row.
    let ran = ctl(
        &engine,
        &[
            "run",
            "breakout",
            "--mode",
            "screener",
            "--set",
            "symbols=[\"AAPL\",\"MSFT\"]",
            "--set",
            "limit=5",
            "--set",
            "config.min_score=60",
            "--priority",
            "high",
            "--timeout",
            "10m",
            "--no-wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let inserted: Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(inserted["state"], "queued");
    assert_eq!(inserted["position_in_queue"], 1);
    let id: Uuid = inserted["id"].as_str().unwrap().parse().unwrap();
    let row: (Uuid, String, Value, String, Option<i32>) = sqlx::query_as(
        "SELECT strategy_id, mode, parameters, priority, timeout_s FROM strategy_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            sid,
            "screener".into(),
            json!({"symbols": ["AAPL", "MSFT"], "limit": 5, "config": {"min_score": 60}}),
            "high".into(),
            Some(600)
        )
    );
    // Plain --no-wait prints the id alone on stdout, and where it stands on stderr.
    let ran = ctl(
        &engine,
        &["run", "breakout", "--mode", "alert", "--no-wait"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let second: Uuid = ran.stdout.trim().parse().expect("the run id on stdout");
    assert!(
        ran.stderr.contains("position 2 in the queue"),
        "{}",
        ran.stderr
    );

    // Bad input: said in words, nothing inserted.
    for (args, words) in [
        (
            vec!["run", "breakout", "--mode", "replay"],
            "unknown mode 'replay'",
        ),
        (
            vec!["run", "breakout", "--mode", "live"],
            "backtest, screener, alert",
        ),
        (
            vec!["run", "breakout", "--mode", "alert", "--priority", "urgent"],
            "high, normal, low",
        ),
        (
            vec!["run", "breakout", "--mode", "alert", "--set", "limit"],
            "KEY=VALUE",
        ),
        (
            vec!["run", "brekout", "--mode", "alert"],
            "did you mean 'breakout'",
        ),
    ] {
        let ran = ctl(&engine, &args).await;
        assert_eq!(ran.code, 1, "{args:?}: {ran:#?}");
        assert!(ran.stderr.contains(words), "{args:?}: {}", ran.stderr);
    }
    let ran = ctl(
        &engine,
        &["run", "breakout", "--mode", "alert", "--timeout", "0"],
    )
    .await;
    assert_eq!(ran.code, 2, "clap refuses the timeout: {ran:#?}");
    assert!(ran.stderr.contains("above 0"), "{}", ran.stderr);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_runs")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(runs, 2);

    // runs: newest first, filtered.
    let ran = ctl(&engine, &["runs", "--json"]).await;
    let listed: Value = serde_json::from_str(&ran.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second.to_string(), id.to_string()]);
    let ran = ctl(&engine, &["runs", "breakout", "--state", "completed,error"]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.starts_with("no runs"), "{}", ran.stdout);
    let ran = ctl(&engine, &["runs"]).await;
    assert!(
        ran.stdout.contains("STATE") && ran.stdout.contains(&id.to_string()),
        "{}",
        ran.stdout
    );
    let ran = ctl(&engine, &["runs", "--state", "done"]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("unknown run state 'done'"),
        "{}",
        ran.stderr
    );

    // run-show: the run, its result and items.
    sqlx::query("INSERT INTO strategy_run_items (run_id, item, position, passed, score) VALUES ($1, 'AAPL', 0, true, 81.5)")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    set_row(
        &engine,
        id,
        "state = 'completed', progress_percent = 100, started_at = now() - interval '3 seconds', \
         finished_at = now(), result = '{\"ranked_results\": [{\"symbol\": \"AAPL\", \"score\": 81.5, \
         \"current_price\": 190.5, \"sector\": \"Technology\"}], \"scores\": {\"AAPL\": 81.5}, \"universe_size\": 2}'",
    )
    .await;
    let ran = ctl(&engine, &["run-show", &id.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.contains("ranked results: 1 of a universe of 2"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("Technology") && ran.stdout.contains("items (1)"),
        "{}",
        ran.stdout
    );
    let ran = ctl(&engine, &["run-show", &id.to_string(), "--json"]).await;
    let shown: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(shown["items"][0]["item"], "AAPL");
    assert_eq!(shown["result"]["universe_size"], 2);
    let ran = ctl(&engine, &["run-show", &Uuid::new_v4().to_string()]).await;
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("no run with id"), "{}", ran.stderr);

    // cancel: a finished run is refused at once; a queued one gets its command row.
    let ran = ctl(&engine, &["cancel", &id.to_string()]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("already over (completed)"),
        "{}",
        ran.stderr
    );
    let ran = ctl(&engine, &["cancel", &second.to_string(), "--no-wait"]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let ran = ctl(&engine, &["cancel", "breakout", "--all-runs", "--no-wait"]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let commands: Vec<(String, Value)> = sqlx::query_as(
        "SELECT command, parameters FROM strategy_commands WHERE strategy_id = $1 ORDER BY created_at, seq",
    )
    .bind(sid)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(
        commands,
        vec![
            ("cancel".to_string(), json!({"run_id": second})),
            ("cancel".to_string(), json!({}))
        ]
    );

    // types: each type's modes and interval support.
    let ran = ctl(&engine, &["types"]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout
            .contains("modes: live, backtest, screener, alert"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("interval executions: yes"),
        "{}",
        ran.stdout
    );
    let ran = ctl(&engine, &["types", "--json"]).await;
    let types: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(types
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["modes"].as_array().is_some_and(|m| m.len() == 4)));
    engine.finish().await;
}

/// A `strategy:run:{id}` event as the manager publishes it.
fn event(run: Uuid, strategy: Uuid, event_type: &str, state: &str, percent: f64) -> String {
    json!({"event_type": event_type, "run_id": run, "strategy_id": strategy, "name": "sma",
           "timestamp": chrono::Utc::now(), "mode": "backtest", "state": state,
           "stage": "evaluating", "progress_percent": percent, "current_item": "AAPL",
           "total_items": 1, "completed_items": 0, "message": null,
           "metrics": {"items_per_second": 1.0, "eta_s": 1.0}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_run_to_its_result_or_its_error() {
    let engine = TestEngine::new().await;
    let sid = engine
        .add_strategy("sma", "sma_crossover", json!({"token": "AAPL"}), false)
        .await;
    let mut redis = engine.redis_conn().await;

    // Completed: exit 0, the result as tables.
    let child = command(
        &engine,
        &["run", "sma", "--mode", "backtest", "--set", "fee_bps=5"],
    )
    .spawn()
    .unwrap();
    let run = newest_run(&engine, &[]).await;
    set_row(
        &engine,
        run,
        "state = 'running', started_at = now(), progress_percent = 10",
    )
    .await;
    let _: () = redis::cmd("PUBLISH")
        .arg(engine.channels.run(run))
        .arg(event(run, sid, "progress", "running", 50.0))
        .query_async(&mut redis)
        .await
        .unwrap();
    set_row(
        &engine,
        run,
        "state = 'completed', progress_percent = 100, finished_at = now(), result = '{\"summary\": \
         {\"symbols_processed\": 1, \"bars\": 500, \"trades\": 4}, \"performance_metrics\": \
         {\"total_return\": 0.125, \"sharpe_ratio\": 1.5, \"profit_factor\": null}, \"per_symbol\": \
         {\"AAPL\": {\"total_return\": 0.125, \"sharpe_ratio\": 1.5}}, \"equity_curve\": []}'",
    )
    .await;
    let ran = finish(child).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!("run {run} completed")),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("performance metrics") && ran.stdout.contains("0.1250"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("per symbol") && ran.stdout.contains("AAPL"),
        "{}",
        ran.stdout
    );
    // What `run` says first is the row as it reads it after its INSERT: queued, or
    // already moved on by this test playing the manager (the queued wording itself
    // is checked with `--no-wait` above, where nothing moves the row).
    let first = format!("run {run}: backtest of 'sma'; ");
    assert!(
        ["queued, position 1 in the queue", "running", "completed"]
            .iter()
            .any(|words| ran.stderr.contains(&format!("{first}{words}"))),
        "{}",
        ran.stderr
    );

    // An error: exit 1 with the run's error.
    let child = command(&engine, &["run", "sma", "--mode", "backtest", "--json"])
        .spawn()
        .unwrap();
    let failing = newest_run(&engine, &[run]).await;
    set_row(
        &engine,
        failing,
        "state = 'error', finished_at = now(), error = 'unknown symbol ''ZZZ''; securities has AAPL'",
    )
    .await;
    let ran = finish(child).await;
    assert_eq!(ran.code, 1, "{ran:#?}");
    let shown: Value = serde_json::from_str(&ran.stdout).expect("--json prints the run");
    assert_eq!(shown["state"], "error");

    let child = command(&engine, &["run", "sma", "--mode", "backtest"])
        .spawn()
        .unwrap();
    let timed = newest_run(&engine, &[run, failing]).await;
    set_row(
        &engine,
        timed,
        "state = 'timed_out', finished_at = now(), error = 'ran past timeout_s 5'",
    )
    .await;
    let ran = finish(child).await;
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(
        ran.stderr.contains("ended timed_out") && ran.stderr.contains("ran past timeout_s 5"),
        "{}",
        ran.stderr
    );

    // The progress from the channel as it comes (a line per stage without a
    // terminal); Ctrl-C then leaves the run as it is and says how to cancel it.
    let mut child = command(&engine, &["run", "sma", "--mode", "backtest"])
        .spawn()
        .unwrap();
    let left = newest_run(&engine, &[run, failing, timed]).await;
    let stderr = child.stderr.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        }
    });
    let channel = engine.channels.run(left);
    wait_for(
        "enginectl to subscribe to the run's channel",
        DEADLINE,
        || {
            let (mut redis, channel) = (redis.clone(), channel.clone());
            async move {
                let (_, n): (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                (n > 0).then_some(())
            }
        },
    )
    .await;
    let _: () = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(event(left, sid, "progress", "running", 50.0))
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_for("the progress line", DEADLINE, || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().unwrap();
            seen.lines()
                .any(|l| l.contains("50.0%") && l.contains("AAPL") && l.contains("evaluating"))
                .then_some(())
        }
    })
    .await;
    let pid = child.id().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let ran = finish(child).await;
    reader.await.unwrap();
    let stderr = seen.lock().unwrap().clone();
    assert_eq!(ran.code, 130, "{ran:#?} {stderr}");
    assert!(
        stderr.contains(&format!("enginectl cancel {left}")),
        "{stderr}"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM strategy_runs WHERE id = $1")
        .bind(left)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(state, "queued");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_end_to_end_with_the_manager_and_the_run_process() {
    let engine = TestEngine::started().await;
    engine
        .add_strategy("sma-live", "sma_crossover", json!({"token": "AAA"}), false)
        .await;
    sqlx::raw_sql(
        "INSERT INTO securities (symbol, name, sector) VALUES ('AAA', 'A Inc', 'Tech'), ('BBB', 'B Inc', 'Energy'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT s, '1d', '2023-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                100 + i, 101 + i, 99 + i, 100 + i + (i % 7) - 3, 1000 + 10 * i \
         FROM unnest(ARRAY['AAA', 'BBB']) s, generate_series(0, 499) i",
    )
    .execute(&engine.pool)
    .await
    .unwrap();

    // A backtest: the bar, then the result as tables; exit 0.
    let ran = ctl(
        &engine,
        &[
            "run",
            "sma-live",
            "--mode",
            "backtest",
            "--set",
            "symbols=[\"AAA\",\"BBB\"]",
            "--set",
            "fee_bps=5",
            "--timeout",
            "5m",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.contains("completed"), "{}", ran.stdout);
    assert!(ran.stdout.contains("performance metrics"), "{}", ran.stdout);
    assert!(ran.stdout.contains("sharpe_ratio"), "{}", ran.stdout);
    assert!(ran.stdout.contains("per symbol"), "{}", ran.stdout);

    // A screener, as JSON: the contract's result shape.
    let ran = ctl(
        &engine,
        &["run", "sma-live", "--mode", "screener", "--json"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let run: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(run["state"], "completed");
    assert!(run["result"]["ranked_results"].is_array(), "{run}");
    assert_eq!(run["result"]["universe_size"], 2, "{run}");

    // A run the manager refuses (an unknown symbol): exit 1 with its words.
    let ran = ctl(
        &engine,
        &[
            "run",
            "sma-live",
            "--mode",
            "alert",
            "--set",
            "symbols=[\"NOPE\"]",
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(
        ran.stderr.contains("ended error") && ran.stderr.contains("NOPE"),
        "{}",
        ran.stderr
    );

    // The list and one run's items.
    let ran = ctl(
        &engine,
        &["runs", "sma-live", "--state", "completed", "--json"],
    )
    .await;
    let runs: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let id = runs[1]["id"].as_str().unwrap();
    let ran = ctl(&engine, &["run-show", id, "--json"]).await;
    let shown: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(shown["items"].as_array().unwrap().len(), 2, "{shown}");
    engine.finish().await;
}

/// A run process that reports a first progress and then works for ten minutes, so
/// that a cancel finds it running (written as the manager's `--executor-path`).
const BUSY_RUN: &str = r#"#!/usr/bin/python3
import json, os, sys, time
inp = json.load(sys.stdin)
total = len(inp['symbols'])
with open(inp['outbox_path'], 'a') as out:
    out.write(json.dumps({'type': 'started', 'pid': os.getpid(), 'total_items': total}) + '\n')
    out.write(json.dumps({'type': 'progress', 'stage': 'evaluating', 'progress_percent': 10.0,
                          'completed_items': 0, 'total_items': total,
                          'current_item': inp['symbols'][0]['symbol']}) + '\n')
    out.flush()
    time.sleep(600)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_waits_until_a_running_run_is_cancelled() {
    use std::os::unix::fs::PermissionsExt;
    let mut engine = TestEngine::new().await;
    let busy = engine.state_dir.join("busy_run.py");
    std::fs::write(&busy, BUSY_RUN).unwrap();
    std::fs::set_permissions(&busy, std::fs::Permissions::from_mode(0o755)).unwrap();
    engine.config.executor_path = Some(busy);
    engine.start_manager().await;
    engine
        .add_strategy("sma-busy", "sma_crossover", json!({"token": "AAA"}), false)
        .await;
    sqlx::raw_sql(
        "INSERT INTO securities (symbol) VALUES ('AAA'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT 'AAA', '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                100, 101, 99, 100, 1000 FROM generate_series(0, 49) i",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    let ran = ctl(
        &engine,
        &["run", "sma-busy", "--mode", "backtest", "--no-wait"],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    let id: Uuid = ran.stdout.trim().parse().unwrap();
    wait_for("the run to be running", DEADLINE, || async {
        let (state, percent): (String, f64) =
            sqlx::query_as("SELECT state, progress_percent FROM strategy_runs WHERE id = $1")
                .bind(id)
                .fetch_one(&engine.pool)
                .await
                .ok()?;
        (state == "running" && percent > 0.0).then_some(())
    })
    .await;
    let ran = ctl(&engine, &["run-show", &id.to_string()]).await;
    assert!(
        ran.stdout.contains("progress: [") && ran.stdout.contains("AAA"),
        "{}",
        ran.stdout
    );
    let ran = ctl(&engine, &["cancel", &id.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!("cancelled run {id}")),
        "{}",
        ran.stdout
    );
    let state: String = sqlx::query_scalar("SELECT state FROM strategy_runs WHERE id = $1")
        .bind(id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(state, "cancelled");
    // Cancelling it again is refused at once, in words.
    let ran = ctl(&engine, &["cancel", &id.to_string()]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("already over (cancelled)"),
        "{}",
        ran.stderr
    );
    engine.finish().await;
}
