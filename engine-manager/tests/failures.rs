//! Executors that misbehave (hang in start-up, ignore shutdown), hostile input on the
//! Redis channels and the control socket, secrets, and the manager's exit modes.

mod common;

use common::{process_alive, wait_for, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_hanging_in_start_up_is_killed_and_the_start_fails() {
    let mut engine = TestEngine::new().await;
    engine.config.start_timeout = Duration::from_secs(1);
    engine.start_manager().await;
    let id = engine
        .add_strategy(
            "hb-hang",
            "heartbeat",
            json!({"start_delay_ms": 600000}),
            false,
        )
        .await;
    let err = engine.run_failed(Some(id), "start", json!({})).await;
    assert!(
        err.contains("did not finish initialising within 1s"),
        "{err}"
    );
    let row = engine.state(id).await;
    assert_eq!(row.status, "error");
    assert_eq!(row.pid, None);
    // No executor of this test is left.
    assert!(
        executor_pids(&engine).is_empty(),
        "{:?}",
        executor_pids(&engine)
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_ignoring_shutdown_is_killed_after_timeout_s() {
    let engine = TestEngine::started().await;
    let id = engine
        .add_strategy(
            "hb-stubborn",
            "heartbeat",
            json!({"shutdown_delay_ms": 600000}),
            false,
        )
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid.unwrap() as u32;
    engine
        .run_ok(Some(id), "stop", json!({"timeout_s": 1}))
        .await;
    assert!(!process_alive(pid), "executor {pid} survived stop");
    assert_eq!(engine.state(id).await.status, "stopped");
    let log = std::fs::read_to_string(engine.state_dir.join("logs/hb-stubborn.log")).unwrap();
    assert!(
        log.contains("shutting down"),
        "the executor got the shutdown message first: {log}"
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strategies_on_exit_stops_them_all() {
    let mut engine = TestEngine::new().await;
    engine.config.stop_strategies_on_exit = true;
    engine.start_manager().await;
    let a = engine.add_heartbeat("hb-exit-a").await;
    let b = engine.add_heartbeat("hb-exit-b").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    engine.run_ok(Some(b), "start", json!({})).await;
    let pids = [
        engine.state(a).await.pid.unwrap(),
        engine.state(b).await.pid.unwrap(),
    ];
    engine.stop_manager().await;
    for (id, pid) in [a, b].into_iter().zip(pids) {
        assert!(!process_alive(pid as u32));
        let row = engine.state(id).await;
        assert_eq!(row.status, "stopped");
        // Not an operator's stop: the strategy comes back with the next manager.
        assert_eq!(row.desired_state, "running");
    }
    engine.start_manager().await;
    engine.wait_status(a, "running").await;
    engine.wait_status(b, "running").await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_stay_out_of_argv_and_the_environment() {
    let engine = TestEngine::started().await;
    let secret = "SECRET-TOKEN-4242";
    let id = engine
        .add_strategy(
            "hb-secret",
            "heartbeat",
            json!({"token": secret, "interval_ms": 100}),
            false,
        )
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("--strategy-id {id}")),
        "{cmdline}"
    );
    assert!(!cmdline.contains(secret), "config in argv: {cmdline}");
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .to_string();
    assert!(!environ.contains(secret), "config in the environment");
    assert!(
        !environ.contains("DATABASE_URL="),
        "executors never get the database URL"
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_never_reach_the_logs() {
    let engine = TestEngine::new().await;
    let manager = common::executor_path().with_file_name("engine-manager");
    // A database URL with a password, to a port nothing listens on: it fails, and the
    // error must not show the password.
    let output = tokio::process::Command::new(&manager)
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2-db@127.0.0.1:1/nothing",
        )
        .env("ENGINE_STATE_DIR", engine.state_dir.join("a"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");

    // A Redis URL with a password, unreachable: the manager runs, logs the outage,
    // and never the password.
    let mut child = tokio::process::Command::new(&manager)
        .env("DATABASE_URL", &engine.db_url)
        .env("REDIS_URL", "redis://:hunter2-redis@127.0.0.1:1/0")
        .env("ENGINE_STATE_DIR", engine.state_dir.join("b"))
        .env("ENGINE_HEALTH_INTERVAL", "100ms")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        loop {
            let n = stdout.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("redis unreachable") {
                return true;
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(found, Ok(true), "no outage line logged: {text}");
    assert!(text.contains("redis://:***@127.0.0.1:1/0"), "{text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_executor_messages_are_dropped() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-hostile").await;
    let victim = engine.add_heartbeat("hb-victim").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let mut conn = engine.redis_conn().await;
    let channel = engine.channels.metrics(id);
    let good = |strategy: uuid::Uuid, pnl: f64| {
        json!({"strategy_id": strategy.to_string(), "name": "x", "timestamp": chrono::Utc::now(),
               "metrics": {"pnl": pnl, "positions_count": 0, "orders_count": 0, "success_rate": 0.0}})
        .to_string()
    };
    let huge = format!(
        "{{\"strategy_id\": \"{id}\", \"pad\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let hostile: Vec<String> = vec![
        "not json at all".into(),
        "[1, 2, 3]".into(),
        "null".into(),
        huge,
        // Lying: claims to be another strategy.
        good(victim, 1e9),
        json!({"strategy_id": id.to_string(), "name": "x", "timestamp": "yesterday",
               "metrics": {"pnl": 0, "positions_count": 0, "orders_count": 0, "success_rate": 0}}).to_string(),
        json!({"strategy_id": id.to_string(), "name": "x", "timestamp": chrono::Utc::now(),
               "metrics": {"pnl": "lots", "positions_count": 0, "orders_count": 0, "success_rate": 0}}).to_string(),
        json!({"strategy_id": id.to_string(), "name": "x", "timestamp": chrono::Utc::now(), "metrics": []}).to_string(),
        json!({"strategy_id": 42}).to_string(),
    ];
    for payload in &hostile {
        let _: i64 = conn.publish(&channel, payload).await.unwrap();
    }
    // A message on another strategy's channel claiming to be ours is dropped too.
    let _: i64 = conn
        .publish(engine.channels.metrics(victim), good(id, 7.0))
        .await
        .unwrap();
    // Then a good one with a marker value: once it is stored, all the bad ones before
    // it were processed (one subscriber, in order).
    let _: i64 = conn.publish(&channel, good(id, 123.25)).await.unwrap();
    let pool = engine.pool.clone();
    wait_for("the good metrics message to be stored", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM strategy_metrics WHERE strategy_id = $1 AND pnl = 123.25",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM strategy_metrics WHERE (strategy_id = $1 AND pnl IN (7, 1e9)) OR strategy_id = $2",
    )
    .bind(id)
    .bind(victim)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "a hostile message was stored");
    // The manager is still serving.
    engine.run_ok(Some(victim), "start", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_on_the_control_socket_are_ignored() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-impostor").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let socket = engine.state_dir.join("control.sock");
    // Claims to be the executor (wrong pid), then garbage, then an oversized line.
    let frames: Vec<Vec<u8>> = vec![
        format!(
            "{{\"type\":\"hello\",\"strategy_id\":\"{id}\",\"pid\":{},\"status\":\"running\"}}\n",
            std::process::id()
        )
        .into_bytes(),
        format!(
            "{{\"type\":\"hello\",\"strategy_id\":\"{id}\",\"pid\":1,\"status\":\"paused\"}}\n"
        )
        .into_bytes(),
        b"{\"type\":\"halted\",\"reason\":\"i say so\"}\n".to_vec(),
        vec![b'x'; 2 * 1024 * 1024],
    ];
    for frame in frames {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
    }
    // The real executor still obeys, and nobody changed its state.
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine.run_ok(Some(id), "resume", json!({})).await;
    let row = engine.state(id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.last_error, None);
    engine.finish().await;
}

/// Pids of this test's executors (their argv names the test's control socket).
fn executor_pids(engine: &TestEngine) -> Vec<u32> {
    let needle = engine.state_dir.join("control.sock").display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}
