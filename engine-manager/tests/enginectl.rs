//! `enginectl` end to end: the real binary against a real manager (in-process),
//! PostgreSQL and Redis, driving real executors. Also the manager's side of issue
//! #5: stale strategies flagged in health, executor logs rotated.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{process_alive, wait_for, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;

/// What one run of `enginectl` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "enginectl failed: {self:#?}");
        self
    }

    #[track_caller]
    fn failed(self) -> Run {
        assert_eq!(
            self.code, 1,
            "enginectl should have failed with 1: {self:#?}"
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Run `enginectl args…` against `engine` (and `env` on top of its variables).
async fn ctl_with(engine: &TestEngine, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = engine.enginectl(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("enginectl {args:?} did not finish within 120s"))
        .expect("run enginectl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ctl(engine: &TestEngine, args: &[&str]) -> Run {
    ctl_with(engine, args, &[]).await
}

/// The `list --json` entry of `name`.
async fn listed(engine: &TestEngine, name: &str) -> Value {
    let list = ctl(engine, &["list", "--json"]).await.ok().json();
    list.as_array()
        .expect("list --json prints an array")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_start_pause_resume_stop() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-a").await;
    engine.add_heartbeat("hb-b").await;

    let entry = listed(&engine, "hb-a").await;
    assert_eq!(entry["status"], "stopped");
    assert_eq!(entry["desired_state"], "stopped");
    assert_eq!(entry["strategy_type"], "heartbeat");
    assert_eq!(entry["id"], id.to_string());
    assert_eq!(entry["pid"], Value::Null);
    assert_eq!(entry["stale"], false);

    let run = ctl(&engine, &["start", "hb-a"]).await.ok();
    let row = engine.state(id).await;
    assert_eq!(row.status, "running");
    let pid = row.pid.unwrap();
    assert_eq!(
        run.stdout.trim(),
        format!("hb-a: start executed (running, pid {pid})")
    );

    // CPU, memory and uptime arrive with the health samples (state hash).
    let entry = wait_for("list to show health numbers", DEADLINE, || async {
        let e = listed(&engine, "hb-a").await;
        (e["cpu_percent"].is_number() && e["memory_mb"].is_number()).then_some(e)
    })
    .await;
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["pid"], pid);
    assert!(entry["uptime_s"].as_f64().unwrap() >= 0.0);
    assert!(entry["memory_mb"].as_f64().unwrap() > 0.0);

    let table = ctl(&engine, &["list"]).await.ok().stdout;
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "STATUS",
        "DESIRED",
        "PID",
        "UPTIME",
        "CPU",
        "MEM",
        "RESTARTS",
        "PNL",
        "TICK",
        "LAST ERROR",
    ] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    let line = table.lines().find(|l| l.starts_with("hb-a ")).unwrap();
    assert!(
        line.contains("running") && line.contains(&pid.to_string()),
        "{table}"
    );

    let run = ctl(&engine, &["pause", "hb-a"]).await.ok();
    assert!(
        run.stdout.contains("hb-a: pause executed (paused"),
        "{run:?}"
    );
    let run = ctl(&engine, &["resume", "hb-a"]).await.ok();
    assert!(
        run.stdout.contains("hb-a: resume executed (running"),
        "{run:?}"
    );

    let run = ctl(&engine, &["stop", "hb-a", "--timeout", "5"]).await.ok();
    assert_eq!(run.stdout.trim(), "hb-a: stop executed (stopped)");
    assert!(!process_alive(pid as u32));
    let row = engine.state(id).await;
    assert_eq!(
        (row.status.as_str(), row.desired_state.as_str()),
        ("stopped", "stopped")
    );
    let params: Value = sqlx::query_scalar(
        "SELECT parameters FROM strategy_commands WHERE strategy_id = $1 AND command = 'stop'",
    )
    .bind(id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(params, json!({"timeout_s": 5.0}));

    // --all: one row per strategy for start, one global row for stop.
    let run = ctl(&engine, &["start", "--all"]).await.ok();
    assert!(
        run.stdout.contains("hb-a: start executed (running"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("hb-b: start executed (running"),
        "{run:?}"
    );
    let run = ctl(&engine, &["stop", "--all", "--flatten"]).await.ok();
    assert!(
        run.stdout.contains("all strategies: stop executed"),
        "{run:?}"
    );
    assert!(run.stdout.contains("  hb-b: stopped"), "{run:?}");
    let global: (Option<Uuid>, Value) = sqlx::query_as(
        "SELECT strategy_id, parameters FROM strategy_commands WHERE strategy_id IS NULL",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(global, (None, json!({"mode": "flatten"})));

    // --no-wait only queues.
    let run = ctl(&engine, &["start", "hb-b", "--no-wait"]).await.ok();
    assert!(
        run.stdout.starts_with("hb-b: start queued (command "),
        "{run:?}"
    );

    // Bad names and bad usage.
    let run = ctl(&engine, &["start", "hb-c"]).await.failed();
    assert!(
        run.stderr
            .contains("no strategy named 'hb-c' (did you mean 'hb-a'?); known: hb-a, hb-b"),
        "{run:?}"
    );
    let run = ctl(&engine, &["pause"]).await.failed();
    assert!(run.stderr.contains("or pass --all"), "{run:?}");
    let run = ctl(&engine, &["stop", "hb-a", "--timeout", "0"]).await;
    assert_eq!(run.code, 2, "clap rejects a bad grace period: {run:?}");
    assert!(run.stderr.contains("above 0"), "{run:?}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_prints_the_error() {
    let engine = TestEngine::started().await;
    let id = engine
        .add_strategy("typo", "sma_crosover", json!({}), false)
        .await;
    let run = ctl(&engine, &["start", "typo"]).await.failed();
    assert!(
        run.stderr.starts_with("error: typo: start failed: "),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("unknown strategy_type 'sma_crosover'"),
        "{run:?}"
    );
    assert!(run.stderr.contains("sma_crossover"), "{run:?}");
    assert_eq!(engine.state(id).await.status, "error");
    let entry = listed(&engine, "typo").await;
    assert!(
        entry["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown strategy_type"),
        "{entry}"
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_sets_keys_and_reports_rejections() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-up").await;
    ctl(&engine, &["start", "hb-up"]).await.ok();

    let run = ctl(&engine, &["update", "hb-up", "--set", "interval_ms=5"])
        .await
        .failed();
    assert!(
        run.stderr.contains("error: hb-up: update failed"),
        "{run:?}"
    );
    assert!(run.stderr.contains("interval_ms"), "{run:?}");
    assert_eq!(engine.state(id).await.config, json!({"interval_ms": 50}));

    let run = ctl(&engine, &["update", "hb-up", "--set", "interval_ms=200"])
        .await
        .ok();
    assert!(
        run.stdout.contains("hb-up: update executed (running"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(r#"applied {"interval_ms":200}"#),
        "{run:?}"
    );
    assert_eq!(engine.state(id).await.config, json!({"interval_ms": 200}));

    // A merge patch from a file, with --unset on top (a stopped strategy: checked
    // by the executor's --validate, then stored).
    ctl(&engine, &["stop", "hb-up"]).await.ok();
    let patch = engine.state_dir.join("patch.json");
    std::fs::write(&patch, r#"{"token": "PATCH-USD", "interval_ms": 300}"#).unwrap();
    ctl(
        &engine,
        &[
            "update",
            "hb-up",
            "--config",
            patch.to_str().unwrap(),
            "--unset",
            "interval_ms",
        ],
    )
    .await
    .ok();
    assert_eq!(engine.state(id).await.config, json!({"token": "PATCH-USD"}));

    let run = ctl(&engine, &["update", "hb-up"]).await.failed();
    assert!(run.stderr.contains("nothing to update"), "{run:?}");
    let run = ctl(&engine, &["update", "hb-up", "--set", "interval_ms"])
        .await
        .failed();
    assert!(run.stderr.contains("KEY=VALUE"), "{run:?}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_checks_the_config_first_and_remove_stops_first() {
    let engine = TestEngine::started().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM strategy_configs")
            .fetch_one(&engine.pool)
            .await
            .unwrap()
    };

    let run = ctl(
        &engine,
        &[
            "add",
            "new",
            "--type",
            "heartbeat",
            "--config",
            r#"{"interval_ms": 5}"#,
        ],
    )
    .await
    .failed();
    assert!(
        run.stderr.contains("strategy 'new' was not added"),
        "{run:?}"
    );
    assert!(run.stderr.contains("interval_ms"), "{run:?}");
    let run = ctl(&engine, &["add", "new", "--type", "heartbeet"])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("unknown strategy_type 'heartbeet'; registered:"),
        "{run:?}"
    );
    let run = ctl(
        &engine,
        &["add", "new", "--type", "heartbeat", "--config", "[1]"],
    )
    .await
    .failed();
    assert!(run.stderr.contains("must be a JSON object"), "{run:?}");
    assert_eq!(count().await, 0, "nothing was inserted");

    let file = engine.state_dir.join("new.json");
    std::fs::write(&file, r#"{"interval_ms": 50}"#).unwrap();
    let run = ctl(
        &engine,
        &[
            "add",
            "new",
            "--type",
            "heartbeat",
            "--config",
            file.to_str().unwrap(),
            "--auto-start",
        ],
    )
    .await
    .ok();
    assert!(
        run.stdout.starts_with("added 'new' (heartbeat, id "),
        "{run:?}"
    );
    let (auto_start, config): (bool, Value) =
        sqlx::query_as("SELECT auto_start, config FROM strategy_configs WHERE name = 'new'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert!(auto_start);
    assert_eq!(config, json!({"interval_ms": 50}));
    let run = ctl(&engine, &["add", "new", "--type", "heartbeat"])
        .await
        .failed();
    assert!(
        run.stderr.contains("a strategy named 'new' already exists"),
        "{run:?}"
    );

    ctl(&engine, &["start", "new"]).await.ok();
    let pid = listed(&engine, "new").await["pid"].as_i64().unwrap();
    let run = ctl(&engine, &["remove", "new"]).await.ok();
    assert!(
        run.stdout.contains("new: stop executed (stopped)"),
        "{run:?}"
    );
    assert!(run.stdout.contains("removed 'new'"), "{run:?}");
    assert!(!process_alive(pid as u32));
    assert_eq!(count().await, 0);
    let run = ctl(&engine, &["remove", "new"]).await.failed();
    assert!(run.stderr.contains("no strategy named 'new'"), "{run:?}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_logs() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-hist").await;
    ctl(&engine, &["start", "hb-hist"]).await.ok();
    ctl(&engine, &["stop", "hb-hist"]).await.ok();

    let text = ctl(&engine, &["history", "hb-hist"]).await.ok().stdout;
    assert!(text.starts_with("TIME (UTC)"), "{text}");
    assert!(
        text.contains("command start") && text.contains("command stop"),
        "{text}"
    );
    assert!(text.contains("→ running"), "{text}");
    assert!(text.contains("→ stopped"), "{text}");
    assert!(text.contains("reason: "), "{text}");
    let stop_line = text.find("command stop").unwrap();
    let start_line = text.find("command start").unwrap();
    assert!(stop_line < start_line, "newest first: {text}");

    let entries = ctl(&engine, &["history", "hb-hist", "--json", "-n", "3"])
        .await
        .ok()
        .json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["kind"], "transition");
    assert_eq!(entries[0]["new_status"], "stopped");
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM strategy_events WHERE strategy_id = $1 AND reason IS NOT NULL",
    )
    .bind(id)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert!(
        reasons.iter().any(|r| text.contains(r.as_str())),
        "{reasons:?} in {text}"
    );

    let log = engine
        .state_dir
        .join("logs")
        .join(engine_protocol::state_dir::log_file_name("hb-hist", id));
    let whole = std::fs::read_to_string(&log).unwrap();
    let last_two: Vec<&str> = whole
        .lines()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let run = ctl(&engine, &["logs", "hb-hist", "-n", "2"]).await.ok();
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), last_two);
    let run = ctl(&engine, &["logs", "hb-hist"]).await.ok();
    assert!(run.stdout.lines().count() > 2, "{run:?}");
    let run = ctl(&engine, &["logs", "nope"]).await.failed();
    assert!(run.stderr.contains("no strategy named 'nope'"), "{run:?}");
    let run = ctl_with(
        &engine,
        &["logs", "hb-hist"],
        &[("ENGINE_STATE_DIR", "/nonexistent")],
    )
    .await
    .failed();
    assert!(
        run.stderr
            .contains("no log at /nonexistent/logs/hb-hist.log"),
        "{run:?}"
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_watch_and_types() {
    let engine = TestEngine::started().await;
    engine.add_heartbeat("hb-doc").await;
    ctl(&engine, &["start", "hb-doc"]).await.ok();

    let run = ctl(&engine, &["doctor"]).await.ok();
    for check in [
        "postgres",
        "migrations",
        "manager",
        "limits",
        "redis acl",
        "redis",
        "executor",
        "strategies",
        "state dir",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check} not ok: {}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("all checks passed"), "{run:?}");

    let run = ctl_with(
        &engine,
        &["doctor"],
        &[("REDIS_URL", "redis://127.0.0.1:1")],
    )
    .await
    .failed();
    let fail = run
        .stdout
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains("redis"));
    let fail = fail.unwrap_or_else(|| panic!("no redis failure: {}", run.stdout));
    let hint = run.stdout.lines().nth(fail + 1).unwrap();
    assert!(hint.contains("hint: start Redis"), "{}", run.stdout);
    assert!(run.stdout.contains("1 check failed"), "{}", run.stdout);

    let run = ctl_with(
        &engine,
        &["doctor"],
        &[("ENGINE_EXECUTOR_PATH", "/nonexistent/strategy-executor")],
    )
    .await
    .failed();
    assert!(run.stdout.contains("--executor-path"), "{}", run.stdout);

    let frame = wait_for("watch --once to show health", DEADLINE, || async {
        let run = ctl(&engine, &["watch", "--once"]).await.ok();
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("hb-doc "))?
            .to_string();
        line.contains('%').then_some(run.stdout)
    })
    .await;
    assert!(
        frame.starts_with("enginectl watch: 1 strategies"),
        "{frame}"
    );
    assert!(frame.contains("engine-manager pid"), "{frame}");
    assert!(
        frame.contains("NAME") && frame.contains("running"),
        "{frame}"
    );
    assert!(
        !frame.contains('\u{1b}'),
        "no terminal codes with --once: {frame:?}"
    );

    // A resource limit, set live; `list` shows the use against it.
    let run = ctl(&engine, &["update", "hb-doc", "--limit", "memory_mb=256"])
        .await
        .ok();
    assert!(
        run.stdout.contains(r#"applied limits {"memory_mb":256}"#),
        "{run:?}"
    );
    let run = ctl(&engine, &["update", "hb-doc", "--limit", "memory_mb=0"])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("limits.memory_mb must be a whole number"),
        "{run:?}"
    );
    wait_for(
        "list to show memory against its limit",
        DEADLINE,
        || async {
            let run = ctl(&engine, &["list"]).await.ok();
            run.stdout.contains(" MB / 256 MB").then_some(())
        },
    )
    .await;

    let run = ctl(&engine, &["types"]).await.ok();
    for t in ["heartbeat", "mean_reversion", "sma_crossover"] {
        assert!(run.stdout.lines().any(|l| l.starts_with(t)), "{t}: {run:?}");
    }
    let types = ctl(&engine, &["types", "--json"]).await.ok().json();
    let heartbeat = types
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["strategy_type"] == "heartbeat")
        .unwrap();
    assert!(heartbeat["example_config"].is_object());

    // Without a manager (its lock released), doctor fails and commands warn.
    let mut engine = engine;
    engine.stop_manager().await;
    let run = ctl(&engine, &["doctor"]).await.failed();
    let line = run.stdout.lines().find(|l| l.contains("manager")).unwrap();
    assert!(
        line.starts_with("FAIL") && line.contains("is gone"),
        "{}",
        run.stdout
    );
    let run = ctl(&engine, &["stop", "hb-doc", "--no-wait"]).await.ok();
    assert!(
        run.stderr
            .contains("warning: no live engine-manager serves this database"),
        "{run:?}"
    );
    engine.finish().await;
}

/// `watch` follows the channels until Ctrl-C and then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_runs_until_interrupted() {
    let engine = TestEngine::started().await;
    engine.add_heartbeat("hb-live").await;
    let mut child = tokio::process::Command::new(common::workspace_bin("enginectl"))
        .args(["watch", "--interval", "200ms"])
        .env("DATABASE_URL", &engine.db_url)
        .env("REDIS_URL", &engine.config.redis_url)
        .env("ENGINE_REDIS_PREFIX", &engine.prefix)
        .env("ENGINE_STATE_DIR", &engine.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stdout, &mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let last_line_of = |name: &str| {
        let text = seen.lock().unwrap().clone();
        let frame = text
            .rsplit("enginectl watch:")
            .next()
            .unwrap_or_default()
            .to_string();
        frame
            .lines()
            .find(|l| l.starts_with(name))
            .map(str::to_string)
    };
    wait_for("watch to draw the stopped strategy", DEADLINE, || async {
        last_line_of("hb-live ").filter(|l| l.contains("stopped"))
    })
    .await;
    ctl(&engine, &["start", "hb-live"]).await.ok();
    // From the live channels (or the next reload of the database).
    wait_for("watch to show it running with health", DEADLINE, || async {
        last_line_of("hb-live ").filter(|l| l.contains("running") && l.contains('%'))
    })
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "watch exits 0 on Ctrl-C");
    reader.await.unwrap();
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_whose_ticks_stop_is_stale() {
    let mut engine = TestEngine::new().await;
    engine.config.stale_after = Duration::from_secs(1);
    engine.start_manager().await;
    let token = format!("STALE-{}", Uuid::new_v4().simple());
    let fed = engine
        .add_strategy(
            "fed",
            "heartbeat",
            json!({"interval_ms": 50, "token": token}),
            false,
        )
        .await;
    let quiet = engine.add_heartbeat("no-token").await;
    engine.run_ok(Some(fed), "start", json!({})).await;
    engine.run_ok(Some(quiet), "start", json!({})).await;

    // Tick until the executor says it has received one (it may subscribe late).
    let mut redis = engine.redis_conn().await;
    let channel = engine.channels.live_data(&token);
    let state_key = engine.channels.state_key(fed);
    wait_for("the executor to report a tick", DEADLINE, || {
        let mut redis = redis.clone();
        let channel = channel.clone();
        let state_key = state_key.clone();
        async move {
            let tick = json!({"token": token_of(&channel), "price": 100.0, "timestamp": chrono::Utc::now()});
            let _: i64 = redis.publish(&channel, tick.to_string()).await.ok()?;
            let age: String = redis.hget(&state_key, "last_tick_age_ms").await.ok()?;
            (!age.is_empty()).then_some(())
        }
    })
    .await;

    // No more ticks: after --stale-after (1 s) health says stale, and so do the
    // state hash, `list` and `watch`.
    let mut health = engine.subscribe(&engine.channels.health()).await;
    let msg = health
        .expect("a stale health message", |_, m| {
            m["strategy_id"] == fed.to_string() && m["stale"] == true
        })
        .await;
    assert!(msg["last_tick_age_ms"].as_f64().unwrap() >= 1000.0, "{msg}");
    let msg = health
        .expect("the token-less heartbeat's health", |_, m| {
            m["strategy_id"] == quiet.to_string()
        })
        .await;
    assert_eq!(msg["stale"], false, "no ticks expected, never stale: {msg}");
    assert!(msg.get("last_tick_age_ms").is_none(), "{msg}");
    let stale: String = redis.hget(&state_key, "stale").await.unwrap();
    assert_eq!(stale, "true");

    let entry = listed(&engine, "fed").await;
    assert_eq!(entry["stale"], true, "{entry}");
    assert!(
        entry["last_tick_age_ms"].as_f64().unwrap() >= 1000.0,
        "{entry}"
    );
    assert_eq!(listed(&engine, "no-token").await["stale"], false);
    let frame = ctl(&engine, &["watch", "--once"]).await.ok().stdout;
    let line = frame.lines().find(|l| l.starts_with("fed ")).unwrap();
    assert!(line.contains("stale"), "{frame}");

    // Ticks again: no longer stale.
    wait_for("fresh ticks to clear stale", DEADLINE, || {
        let mut redis = redis.clone();
        let channel = channel.clone();
        let state_key = state_key.clone();
        async move {
            let tick = json!({"token": token_of(&channel), "price": 101.0, "timestamp": chrono::Utc::now()});
            let _: i64 = redis.publish(&channel, tick.to_string()).await.ok()?;
            let stale: String = redis.hget(&state_key, "stale").await.ok()?;
            (stale == "false").then_some(())
        }
    })
    .await;
    engine.finish().await;
}

fn token_of(channel: &str) -> &str {
    channel.rsplit(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_logs_are_rotated_and_still_readable() {
    let mut engine = TestEngine::new().await;
    // Any line makes the log "too large": it is rotated on the next check, which
    // is every health tick here.
    engine.config.log_max_size = 1;
    engine.config.log_check_interval = Duration::ZERO;
    engine.config.log_keep = 2;
    engine.start_manager().await;
    let id = engine.add_heartbeat("hb-rot").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let log = engine
        .state_dir
        .join("logs")
        .join(engine_protocol::state_dir::log_file_name("hb-rot", id));
    let copies: Vec<_> = (1..=2)
        .map(|n| engine_manager::log_rotation::rotated_path(&log, n))
        .collect();
    wait_for(
        "the startup lines to be rotated out of the live log",
        DEADLINE,
        || {
            let copies = copies.clone();
            async move {
                let rotated: String = copies
                    .iter()
                    .filter_map(|p| std::fs::read_to_string(p).ok())
                    .collect();
                rotated.contains("strategy running").then_some(())
            }
        },
    )
    .await;

    // The executor keeps writing to the live file (O_APPEND: no hole of zeros), and
    // a stop's lines land there; the stop still works and the log stays readable.
    engine.run_ok(Some(id), "stop", json!({})).await;
    let live = std::fs::read(&log).unwrap();
    assert!(!live.contains(&0), "no sparse hole after the truncation");
    let rotated = [1, 2, 3].map(|n| engine_manager::log_rotation::rotated_path(&log, n).exists());
    assert!(rotated[0], "{rotated:?}");
    assert!(!rotated[2], "at most --log-keep = 2 copies: {rotated:?}");
    let run = ctl(&engine, &["logs", "hb-rot", "-n", "50"]).await.ok();
    assert!(!run.stdout.contains('\0'), "{run:?}");

    // A crash after a rotation (the spawn's log offset now past the end of the
    // truncated file) is still reported with a clean message.
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid.unwrap();
    wait_for("a rotation after the start", DEADLINE, || {
        let log = log.clone();
        async move { (std::fs::metadata(&log).ok()?.len() == 0).then_some(()) }
    })
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let row = engine.wait_status(id, "backoff").await;
    let error = row.last_error.unwrap();
    assert!(error.contains("SIGKILL"), "{error}");
    assert!(!error.contains('\0'), "{error:?}");
    engine.finish().await;
}

/// Every name a hint prints is quoted the way a shell needs it, so the hint works
/// when pasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_quote_names_for_the_shell() {
    let engine = TestEngine::new().await;
    let run = ctl(&engine, &["add", "nc with space", "--type", "heartbeat"])
        .await
        .ok();
    assert!(
        run.stdout
            .contains("start it with `enginectl start 'nc with space'`"),
        "{run:?}"
    );
    let run = ctl(&engine, &["add", "nc with space", "--type", "heartbeat"])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("`enginectl update 'nc with space' --set"),
        "{run:?}"
    );
    let run = ctl(&engine, &["add", "--type", "heartbeat", "--", "-dash"])
        .await
        .ok();
    assert!(run.stdout.contains("`enginectl start -- -dash`"), "{run:?}");

    sqlx::query("UPDATE strategy_configs SET status = 'error' WHERE name = 'nc with space'")
        .execute(&engine.pool)
        .await
        .unwrap();
    let run = ctl(&engine, &["doctor"]).await;
    assert!(
        run.stdout.contains("`enginectl history 'nc with space'`")
            && run.stdout.contains("`enginectl start 'nc with space'`"),
        "{run:?}"
    );
    engine.finish().await;
}

/// What the schema would refuse is refused first, in the operator's words, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_in_the_operators_words() {
    let engine = TestEngine::new().await;
    for (args, words) in [
        (
            vec!["add", "", "--type", "heartbeat"],
            "a name that is not blank",
        ),
        (
            vec!["add", "  ", "--type", "heartbeat", "--no-validate"],
            "a name that is not blank",
        ),
        (
            vec!["add", "x", "--type", " ", "--no-validate"],
            "--type must not be blank",
        ),
        (
            vec![
                "add",
                "x",
                "--type",
                "heartbeat",
                "--no-validate",
                "--config",
                r#"{"a": "\u0000"}"#,
            ],
            "\\u0000",
        ),
    ] {
        let run = ctl(&engine, &args).await.failed();
        assert!(run.stderr.contains(words), "{args:?}: {run:?}");
        assert!(!run.stderr.contains("constraint"), "{args:?}: {run:?}");
        assert!(
            !run.stderr.contains("error returned from database"),
            "{args:?}: {run:?}"
        );
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:?}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_configs")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    engine.finish().await;
}

/// The command ids in `enginectl history NAME --json`.
async fn history_command_ids(engine: &TestEngine, name: &str) -> Vec<String> {
    let history = ctl(engine, &["history", name, "--json"]).await.ok().json();
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "command")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_command_is_in_the_history_of_the_strategies_it_concerned() {
    let engine = TestEngine::started().await;
    let base = engine.http_base().await;
    let running = engine.add_heartbeat("hist-running").await;
    engine.add_heartbeat("hist-stopped").await;
    engine.run_ok(Some(running), "start", json!({})).await;
    // A word no global command may have: it fails as a whole, and concerns nobody.
    let refused = engine.command(None, "start", json!({})).await;
    assert_eq!(engine.outcome(refused).await.status, "failed");
    // A global pause pauses the running strategy; the stopped one is untouched.
    let pause = engine.run_ok(None, "pause", json!({})).await;
    engine.wait_status(running, "paused").await;

    let (pause, refused) = (pause.to_string(), refused.to_string());
    let shown = history_command_ids(&engine, "hist-running").await;
    assert!(shown.contains(&pause), "{shown:?}");
    assert!(!shown.contains(&refused), "{shown:?}");
    let shown = history_command_ids(&engine, "hist-stopped").await;
    assert!(
        !shown.contains(&pause) && !shown.contains(&refused),
        "{shown:?}"
    );
    let table = ctl(&engine, &["history", "hist-running"]).await.ok().stdout;
    assert!(table.contains("command pause (global)"), "{table}");

    // The API (and the dashboard's history) says the same, and marks it global.
    let get = |name: &'static str| {
        let base = base.clone();
        async move {
            let url = format!("{base}/api/strategies/{name}");
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body["recent_commands"].as_array().unwrap().clone()
        }
    };
    let commands = get("hist-running").await;
    let global = commands.iter().find(|c| c["id"] == pause.as_str());
    assert_eq!(
        global.map(|c| &c["global"]),
        Some(&json!(true)),
        "{commands:?}"
    );
    assert!(commands.iter().all(|c| c["id"] != refused.as_str()));
    let commands = get("hist-stopped").await;
    assert!(
        commands.iter().all(|c| c["global"] == false),
        "{commands:?}"
    );
    engine.run_ok(Some(running), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_start_warn_when_nothing_is_published_on_the_token() {
    let engine = TestEngine::started().await;
    let token = format!("DOGE-{}", Uuid::new_v4().simple());
    let channel = engine.channels.live_data(&token);
    let config = json!({"interval_ms": 200, "token": token}).to_string();
    let args = ["add", "doge", "--type", "heartbeat", "--config", &config];
    let run = ctl(&engine, &args).await.ok();
    let warning = format!("warning: 'doge': nothing was published on {channel} in the 2s");
    assert!(run.stderr.contains(&warning), "{run:?}");
    assert!(run.stdout.contains("added 'doge'"), "{run:?}");
    let run = ctl(&engine, &["start", "doge"]).await.ok();
    assert!(
        run.stderr.contains(&warning),
        "a warning, not an error: {run:?}"
    );
    assert!(
        run.stdout.contains("doge: start executed (running"),
        "{run:?}"
    );
    ctl(&engine, &["stop", "doge"]).await.ok();

    // With a feed on the token: no warning.
    let mut redis = engine.redis_conn().await;
    let feed = tokio::spawn(async move {
        loop {
            let tick =
                json!({"token": token_of(&channel), "price": 1.0, "timestamp": chrono::Utc::now()});
            let _: Result<i64, _> = redis.publish(&channel, tick.to_string()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let run = ctl(&engine, &["start", "doge"]).await.ok();
    assert!(!run.stderr.contains("warning"), "{run:?}");
    feed.abort();
    ctl(&engine, &["stop", "doge"]).await.ok();
    // A strategy without a token is not checked.
    engine.add_heartbeat("no-token").await;
    let run = ctl(&engine, &["start", "no-token"]).await.ok();
    assert!(!run.stderr.contains("warning"), "{run:?}");
    ctl(&engine, &["stop", "no-token"]).await.ok();
    engine.finish().await;
}

#[tokio::test]
async fn interval_strategies_are_added_triggered_edited_and_listed() {
    let engine = TestEngine::started().await;
    let added = ctl(
        &engine,
        &[
            "add",
            "hourly",
            "--type",
            "heartbeat",
            "--interval",
            "3600",
            "--max-execution",
            "5",
        ],
    )
    .await
    .ok();
    assert!(added.stdout.contains("executed every 3600s"), "{added:?}");
    let row = listed(&engine, "hourly").await;
    assert_eq!(row["executions"]["execution_interval_s"], 3600, "{row}");
    assert_eq!(row["executions"]["max_execution_s"], 5, "{row}");

    // Refused before the INSERT: a type without interval support, a bad interval.
    let refused = ctl(
        &engine,
        &[
            "add",
            "sma",
            "--type",
            "sma_crossover",
            "--config",
            r#"{"token": "BTC-USD"}"#,
            "--interval",
            "60",
        ],
    )
    .await
    .failed();
    assert!(
        refused
            .stderr
            .contains("'sma_crossover' does not support interval execution")
            && refused.stderr.contains("types that do: dca, heartbeat"),
        "{refused:?}"
    );
    let usage = ctl(&engine, &["edit", "hourly", "--interval", "0"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
    assert!(usage.stderr.contains("--interval"), "{usage:?}");

    ctl(&engine, &["start", "hourly"]).await.ok();
    let triggered = ctl(&engine, &["trigger", "hourly"]).await.ok();
    assert!(
        triggered.stdout.contains("hourly: trigger executed"),
        "{triggered:?}"
    );
    let row = wait_for("the execution in list --json", DEADLINE, || async {
        let row = listed(&engine, "hourly").await;
        (row["executions"]["execution_count"] == 1).then_some(row)
    })
    .await;
    assert_eq!(row["executions"]["successful_executions"], 1, "{row}");
    assert!(row["executions"]["next_execution_at"].is_string(), "{row}");
    let table = ctl(&engine, &["list"]).await.ok();
    assert!(
        table
            .stdout
            .contains("every 3600s: 1 ok, 0 failed, 0 skipped; next "),
        "{table:?}"
    );

    // A continuous strategy again: the manager takes the edit, and trigger says why not.
    ctl(&engine, &["edit", "hourly", "--no-interval"])
        .await
        .ok();
    let refusal = wait_for("the edit taken by the manager", DEADLINE, || async {
        let run = ctl(&engine, &["trigger", "hourly"]).await;
        (run.code == 1).then_some(run.stderr)
    })
    .await;
    assert!(refusal.contains("no execution_interval_s"), "{refusal}");
    assert_eq!(listed(&engine, "hourly").await["executions"], Value::Null);
    engine.finish().await;
}
