//! The engine's life: auto-start at boot, crashes noticed and restarted, adoption
//! across a manager restart, one manager per database, commands left `processing`,
//! health/metrics/state on Redis, a strategy that halts itself.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{process_alive, wait_for, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::json;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_start_at_boot_respects_operator_stops() {
    let mut engine = TestEngine::new().await;
    let auto = engine
        .add_strategy("auto", "heartbeat", json!({}), true)
        .await;
    let manual = engine
        .add_strategy("manual", "heartbeat", json!({}), false)
        .await;
    let stopped = engine
        .add_strategy("auto-but-stopped", "heartbeat", json!({}), true)
        .await;
    // An operator's stop was the last word on this one.
    sqlx::query("UPDATE strategy_configs SET operator_stopped = true WHERE id = $1")
        .bind(stopped)
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.start_manager().await;

    let row = engine.wait_status(auto, "running").await;
    assert!(process_alive(row.pid.unwrap() as u32));
    assert_eq!(row.desired_state, "running");
    assert_eq!(engine.state(manual).await.status, "stopped");
    assert_eq!(engine.state(stopped).await.status, "stopped");

    // A host reboot (new boot id): only auto_start strategies come back; a
    // non-auto_start one that was running does not, and is marked stopped.
    engine.run_ok(Some(manual), "start", json!({})).await;
    let old_pid = engine.state(auto).await.pid;
    engine.stop_manager().await;
    engine.kill_executors(); // the reboot killed every process
    sqlx::query("UPDATE engine_manager_lease SET boot_id = 'previous-boot'")
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.start_manager().await;
    // The auto_start strategy comes back.
    let pid = engine
        .wait_running_with_new_pid(auto, old_pid.map(|p| p as u32))
        .await;
    assert!(process_alive(pid));
    let row = engine.wait_status(manual, "stopped").await;
    assert_eq!(row.desired_state, "stopped");
    assert_eq!(row.pid, None);
    assert_eq!(engine.state(stopped).await.status, "stopped");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_executor_is_noticed_and_restarted() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-kill").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid.unwrap();
    let mut status = engine.subscribe(&engine.channels.status(id)).await;

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let msg = status
        .expect("backoff after SIGKILL", |_, m| m["status"] == "backoff")
        .await;
    assert!(msg["error"].as_str().unwrap().contains("SIGKILL"), "{msg}");

    let msg = status
        .expect("running again", |_, m| {
            m["status"] == "running" && m["source"] == "manager"
        })
        .await;
    assert_ne!(msg["pid"], pid);
    let row = engine.state(id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.restart_count, 1);
    assert!(row.last_error.unwrap().contains("SIGKILL"));
    assert!(process_alive(row.pid.unwrap() as u32));

    // An operator start resets the restart count... (start on running is a no-op,
    // so stop and start).
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    assert_eq!(engine.state(id).await.restart_count, 0);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_ends_in_error() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-loop").await;
    // A per-strategy restart policy overrides the manager's flags (8 crashes).
    sqlx::query("UPDATE strategy_configs SET restart_policy = '{\"max_crashes\": 3, \"delay_s\": 0.05}' WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.run_ok(Some(id), "start", json!({})).await;
    for crash in 1..=3 {
        let row = engine.wait_status(id, "running").await;
        let pid = row.pid.unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let pool = engine.pool.clone();
        wait_for(&format!("crash {crash} to be recorded"), DEADLINE, || {
            let pool = pool.clone();
            async move {
                let (status, p): (String, Option<i32>) =
                    sqlx::query_as("SELECT status, pid FROM strategy_configs WHERE id = $1")
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (p != Some(pid) && status != "running" || status == "error").then_some(())
            }
        })
        .await;
    }
    let row = engine.wait_status(id, "error").await;
    let err = row.last_error.unwrap();
    assert!(err.contains("gave up after 3 consecutive crashes"), "{err}");
    assert_eq!(row.pid, None);
    assert_eq!(row.restart_count, 2);

    // The history says why, transition by transition.
    type Event = (Option<String>, String, Option<String>, Option<String>);
    let events: Vec<Event> = sqlx::query_as(
        "SELECT old_status, new_status, reason, error FROM strategy_events WHERE strategy_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    let path: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        path,
        [
            "starting", "running", "backoff", "starting", "running", "backoff", "starting",
            "running", "error"
        ]
    );
    let backoff = &events[2];
    assert_eq!(backoff.0.as_deref(), Some("running"));
    assert!(
        backoff
            .2
            .as_deref()
            .unwrap()
            .starts_with("crashed; restarting in"),
        "{backoff:?}"
    );
    assert!(
        backoff.3.as_deref().unwrap().contains("SIGKILL"),
        "{backoff:?}"
    );
    assert!(
        events[8].3.as_deref().unwrap().contains("gave up"),
        "{:?}",
        events[8]
    );
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_outlive_the_manager_and_are_adopted() {
    let mut engine = TestEngine::started().await;
    let running = engine.add_heartbeat("hb-adopt").await;
    let paused = engine.add_heartbeat("hb-adopt-paused").await;
    engine.run_ok(Some(running), "start", json!({})).await;
    engine.run_ok(Some(paused), "start", json!({})).await;
    engine.run_ok(Some(paused), "pause", json!({})).await;
    let pid = engine.state(running).await.pid.unwrap();
    let paused_pid = engine.state(paused).await.pid.unwrap();

    engine.stop_manager().await;
    assert!(
        process_alive(pid as u32),
        "the executor died with the manager"
    );
    assert!(process_alive(paused_pid as u32));

    let mut status = engine.subscribe(&engine.channels.status(running)).await;
    engine.start_manager().await;
    let msg = status
        .expect("adopted", |_, m| m["reason"] == "adopted")
        .await;
    assert_eq!(msg["pid"], pid);
    assert_eq!(msg["status"], "running");
    assert_eq!(engine.state(running).await.pid, Some(pid));
    let row = engine.state(paused).await;
    assert_eq!((row.status.as_str(), row.pid), ("paused", Some(paused_pid)));

    // Adopted executors obey commands and their exit is noticed.
    engine.run_ok(Some(paused), "resume", json!({})).await;
    engine
        .run_ok(
            Some(running),
            "update",
            json!({"config": {"interval_ms": 60}}),
        )
        .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    status
        .expect("backoff after the adopted executor died", |_, m| {
            m["status"] == "backoff"
        })
        .await;
    engine.run_ok(Some(paused), "stop", json!({})).await;
    assert!(!process_alive(paused_pid as u32));
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_refuses_to_run() {
    let engine = TestEngine::started().await;
    let exe = common::executor_path().with_file_name("engine-manager");
    let output = tokio::process::Command::new(exe)
        .env("DATABASE_URL", &engine.db_url)
        .env("ENGINE_STATE_DIR", engine.state_dir.join("second"))
        .env("ENGINE_REDIS_PREFIX", &engine.prefix)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains(&engine_protocol::node_name()), "{stderr}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_left_processing_are_finished_at_start() {
    let mut engine = TestEngine::new().await;
    let id = engine.add_heartbeat("hb-recover").await;
    let stuck = engine.command(Some(id), "start", json!({})).await;
    sqlx::query("UPDATE strategy_commands SET status = 'processing' WHERE id = $1")
        .bind(stuck)
        .execute(&engine.pool)
        .await
        .unwrap();
    let pending = engine.command(Some(id), "pause", json!({})).await;
    engine.start_manager().await;
    let out = engine.outcome(stuck).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    assert_eq!(engine.outcome(pending).await.status, "executed");
    assert_eq!(engine.state(id).await.status, "paused");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_state_hash_carry_every_field() {
    let engine = TestEngine::started().await;
    let mut health = engine.subscribe(&engine.channels.health()).await;
    let mut engine_health = engine.subscribe(&engine.channels.engine_health()).await;
    let id = engine
        .add_strategy("hb-health", "heartbeat", json!({"interval_ms": 50}), false)
        .await;
    let mut metrics = engine.subscribe(&engine.channels.metrics(id)).await;
    engine.run_ok(Some(id), "start", json!({})).await;

    let msg = health
        .expect("strategy health", |_, m| m["strategy_id"] == id.to_string())
        .await;
    for field in [
        "name",
        "timestamp",
        "pid",
        "status",
        "cpu_percent",
        "memory_mb",
        "uptime_s",
        "restart_count",
        "node",
    ] {
        assert!(msg.get(field).is_some(), "health lacks {field}: {msg}");
    }
    assert_eq!(msg["status"], "running");
    assert!(msg["memory_mb"].as_f64().unwrap() > 0.0, "{msg}");

    let msg = engine_health
        .expect("engine health", |_, m| {
            m["strategies_running"].as_u64() >= Some(1)
        })
        .await;
    for field in [
        "node",
        "pid",
        "strategies_running",
        "cpu_percent",
        "memory_mb",
        "uptime_s",
        "timestamp",
        "name",
    ] {
        assert!(
            msg.get(field).is_some(),
            "engine health lacks {field}: {msg}"
        );
    }

    let msg = metrics.expect("strategy metrics", |_, _| true).await;
    assert_eq!(msg["strategy_id"], id.to_string());
    for field in ["pnl", "positions_count", "orders_count", "success_rate"] {
        assert!(
            msg["metrics"].get(field).is_some(),
            "metrics lack {field}: {msg}"
        );
    }

    let mut conn = engine.redis_conn().await;
    let key = engine.channels.state_key(id);
    let hash: HashMap<String, String> = wait_for("the state hash with health", DEADLINE, || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let h: HashMap<String, String> = conn.hgetall(&key).await.ok()?;
            h.contains_key("memory_mb").then_some(h)
        }
    })
    .await;
    assert_eq!(hash["status"], "running");
    assert_eq!(hash["pid"], engine.state(id).await.pid.unwrap().to_string());
    let _: () = conn.del(&key).await.unwrap();

    // Executor metrics and health samples are persisted.
    let pool = engine.pool.clone();
    wait_for("metrics rows from both sources", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let (strategy, health): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE source = 'strategy' AND pnl IS NOT NULL), \
                        count(*) FILTER (WHERE source = 'health' AND memory_mb > 0) \
                 FROM strategy_metrics WHERE strategy_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (strategy > 0 && health > 0).then_some(())
        }
    })
    .await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_that_halts_itself_is_not_restarted() {
    let engine = TestEngine::started().await;
    let id = engine
        .add_strategy(
            "hb-halt",
            "heartbeat",
            json!({"interval_ms": 20, "halt_after_beats": 3}),
            false,
        )
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let row = engine.wait_status(id, "error").await;
    let err = row.last_error.unwrap();
    assert!(err.contains("halted by the strategy"), "{err}");
    assert!(err.contains("halt_after_beats"), "{err}");
    assert_eq!(row.restart_count, 0);
    assert_eq!(row.pid, None);
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_the_database_forgot_is_adopted_and_duplicates_are_killed() {
    let mut engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-forgotten").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid.unwrap();
    engine.stop_manager().await;
    // The manager died between spawning and recording: the row knows no pid.
    sqlx::query("UPDATE strategy_configs SET pid = NULL, pid_start_ticks = NULL WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    // And somebody started a second executor for the same strategy by hand.
    let mut twin = std::process::Command::new(common::executor_path())
        .arg("--strategy-id")
        .arg(id.to_string())
        .arg("--strategy-type")
        .arg("heartbeat")
        .arg("--control-socket")
        .arg(engine.state_dir.join("control.sock"))
        .env("ENGINE_REDIS_PREFIX", &engine.prefix)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    engine.start_manager().await;
    let pool = engine.pool.clone();
    let adopted = wait_for("the manager to adopt an executor", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let (status, pid): (String, Option<i32>) =
                sqlx::query_as("SELECT status, pid FROM strategy_configs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (status == "running").then_some(pid? as u32)
        }
    })
    .await;
    let candidates = [pid as u32, twin.id()];
    assert!(
        candidates.contains(&adopted),
        "adopted {adopted}, not one of {candidates:?}"
    );
    let other = candidates.into_iter().find(|p| *p != adopted).unwrap();
    wait_for(
        "the duplicate executor to be killed",
        DEADLINE,
        || async move { (!process_alive(other)).then_some(()) },
    )
    .await;
    assert!(process_alive(adopted));
    engine.run_ok(Some(id), "pause", json!({})).await;
    let _ = twin.kill();
    let _ = twin.wait();
    engine.finish().await;
}
