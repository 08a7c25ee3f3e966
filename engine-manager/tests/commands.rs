//! Every command of the contract in every state (running, paused, stopped), and the
//! global commands: the command row's outcome and the observed state (status column,
//! the process table, messages on the status channel).

mod common;

use common::{process_alive, TestEngine};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_and_their_no_ops() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-start-stop").await;
    let mut status = engine.subscribe(&engine.channels.status(id)).await;

    // stopped → start: the executor is up and the strategy initialised.
    let cmd = engine.run_ok(Some(id), "start", json!({})).await;
    let row = engine.state(id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.desired_state, "running");
    let pid = row.pid.expect("pid recorded") as u32;
    assert!(process_alive(pid));
    assert!(row.started_at.is_some());
    let msg = status
        .expect("running on the status channel", |_, m| {
            m["status"] == "running" && m["source"] == "manager"
        })
        .await;
    assert_eq!(msg["pid"], pid);
    assert_eq!(msg["command_id"], cmd.to_string());
    assert_eq!(msg["strategy_id"], id.to_string());
    for field in ["name", "timestamp", "node"] {
        assert!(
            msg.get(field).is_some(),
            "status message lacks {field}: {msg}"
        );
    }

    // running → start: no-op, same process.
    engine.run_ok(Some(id), "start", json!({})).await;
    assert_eq!(engine.state(id).await.pid, Some(pid as i32));

    // running → stop: the process has exited when the row says executed.
    engine
        .run_ok(Some(id), "stop", json!({"timeout_s": 5}))
        .await;
    assert!(
        !process_alive(pid),
        "executor {pid} still alive after stop executed"
    );
    let row = engine.state(id).await;
    assert_eq!(row.status, "stopped");
    assert_eq!(row.desired_state, "stopped");
    assert_eq!(row.pid, None);
    status
        .expect("stopped on the status channel", |_, m| {
            m["status"] == "stopped"
        })
        .await;

    // stopped → stop: no-op, still stopped.
    engine.run_ok(Some(id), "stop", json!({})).await;
    assert_eq!(engine.state(id).await.status, "stopped");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_in_every_state() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-pause").await;

    // stopped: pause and resume fail, saying why.
    let err = engine.run_failed(Some(id), "pause", json!({})).await;
    assert!(err.contains("not running"), "{err}");
    let err = engine.run_failed(Some(id), "resume", json!({})).await;
    assert!(err.contains("not running"), "{err}");

    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid;
    let mut status = engine.subscribe(&engine.channels.status(id)).await;

    // running: resume is a no-op; pause pauses.
    engine.run_ok(Some(id), "resume", json!({})).await;
    assert_eq!(engine.state(id).await.status, "running");
    engine.run_ok(Some(id), "pause", json!({})).await;
    let row = engine.state(id).await;
    assert_eq!(
        (row.status.as_str(), row.desired_state.as_str()),
        ("paused", "paused")
    );
    assert_eq!(row.pid, pid, "pause keeps the same process");
    status
        .expect("paused on the status channel", |_, m| {
            m["status"] == "paused"
        })
        .await;

    // paused: pause is a no-op, start is a no-op, resume resumes.
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    assert_eq!(engine.state(id).await.status, "paused");
    engine.run_ok(Some(id), "resume", json!({})).await;
    let row = engine.state(id).await;
    assert_eq!(
        (row.status.as_str(), row.desired_state.as_str()),
        ("running", "running")
    );
    status
        .expect("running again", |_, m| m["status"] == "running")
        .await;

    // paused → stop stops it.
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine
        .run_ok(Some(id), "stop", json!({"mode": "flatten"}))
        .await;
    let row = engine.state(id).await;
    assert_eq!(row.status, "stopped");
    assert!(!process_alive(pid.unwrap() as u32));
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_a_new_process_in_every_state() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-restart").await;

    // stopped → restart = start, with no `stopped → stopped` in the history.
    let cmd = engine.run_ok(Some(id), "restart", json!({})).await;
    let first = engine.state(id).await.pid.unwrap() as u32;
    assert!(process_alive(first));
    let moves: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT old_status, new_status FROM strategy_events WHERE command_id = $1 ORDER BY at",
    )
    .bind(cmd)
    .fetch_all(&engine.pool)
    .await
    .expect("strategy_events");
    let moves: Vec<(&str, &str)> = moves
        .iter()
        .map(|(from, to)| (from.as_deref().unwrap_or("-"), to.as_str()))
        .collect();
    assert_eq!(moves, [("stopped", "starting"), ("starting", "running")]);

    // running → restart: stop then start, new pid.
    engine
        .run_ok(Some(id), "restart", json!({"timeout_s": 5}))
        .await;
    let second = engine.state(id).await;
    assert_eq!(second.status, "running");
    let second = second.pid.unwrap() as u32;
    assert_ne!(first, second);
    assert!(!process_alive(first));
    assert!(process_alive(second));

    // paused → restart: a new running process.
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine.run_ok(Some(id), "restart", json!({})).await;
    let third = engine.state(id).await;
    assert_eq!(third.status, "running");
    assert_ne!(third.pid.unwrap() as u32, second);
    assert!(!process_alive(second));
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_in_every_state() {
    let engine = TestEngine::started().await;
    let id = engine
        .add_strategy(
            "sma-update",
            "sma_crossover",
            json!({"token": "T1", "fast_period": 3, "slow_period": 10}),
            false,
        )
        .await;

    // stopped: checked by the strategy's own validation, then stored.
    engine
        .run_ok(Some(id), "update", json!({"config": {"fast_period": 4}}))
        .await;
    assert_eq!(engine.state(id).await.config["fast_period"], 4);
    let err = engine
        .run_failed(Some(id), "update", json!({"config": {"fast_perod": 5}}))
        .await;
    assert!(err.contains("fast_perod"), "{err}");
    assert_eq!(
        engine.state(id).await.config["fast_period"],
        4,
        "rejected config not stored"
    );

    // running: applied live (same process), stored; a rejected one changes nothing.
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.state(id).await.pid;
    engine
        .run_ok(Some(id), "update", json!({"config": {"fast_period": 5}}))
        .await;
    let row = engine.state(id).await;
    assert_eq!(row.config["fast_period"], 5);
    assert_eq!(
        row.config["slow_period"], 10,
        "merge patch keeps other keys"
    );
    assert_eq!(row.pid, pid);
    let err = engine
        .run_failed(Some(id), "update", json!({"config": {"fast_period": 50}}))
        .await;
    assert!(err.contains("fast_period"), "{err}");
    let row = engine.state(id).await;
    assert_eq!(row.config["fast_period"], 5, "old config still stored");
    assert_eq!(row.status, "running", "and the strategy still runs");
    assert_eq!(row.pid, pid);

    // paused: applied live too; null removes a key (RFC 7386).
    engine.run_ok(Some(id), "pause", json!({})).await;
    engine
        .run_ok(Some(id), "update", json!({"config": {"order_qty": 2.0}}))
        .await;
    engine
        .run_ok(Some(id), "update", json!({"config": {"order_qty": null}}))
        .await;
    let row = engine.state(id).await;
    assert!(row.config.get("order_qty").is_none(), "{}", row.config);
    assert_eq!(row.status, "paused");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_commands_are_a_kill_switch() {
    let engine = TestEngine::started().await;
    let a = engine.add_heartbeat("hb-global-a").await;
    let b = engine.add_heartbeat("hb-global-b").await;
    let idle = engine.add_heartbeat("hb-global-idle").await;
    engine.run_ok(Some(a), "start", json!({})).await;
    engine.run_ok(Some(b), "start", json!({})).await;
    let mut global = engine.subscribe(&engine.channels.global_commands()).await;

    let pause = engine.run_ok(None, "pause", json!({})).await;
    global
        .expect("the global pause broadcast", |_, m| {
            m["command"] == "pause" && m["command_id"] == pause.to_string()
        })
        .await;
    assert_eq!(engine.state(a).await.status, "paused");
    assert_eq!(engine.state(b).await.status, "paused");
    assert_eq!(
        engine.state(idle).await.status,
        "stopped",
        "a stopped strategy is untouched"
    );

    engine.run_ok(None, "resume", json!({})).await;
    assert_eq!(engine.state(a).await.status, "running");
    assert_eq!(engine.state(b).await.status, "running");

    let pids = [
        engine.state(a).await.pid.unwrap(),
        engine.state(b).await.pid.unwrap(),
    ];
    let stop = engine.run_ok(None, "stop", json!({"timeout_s": 5})).await;
    global
        .expect("the global shutdown broadcast", |_, m| {
            m["command"] == "shutdown" && m["command_id"] == stop.to_string()
        })
        .await;
    for (id, pid) in [a, b].into_iter().zip(pids) {
        let row = engine.state(id).await;
        assert_eq!(
            (row.status.as_str(), row.desired_state.as_str()),
            ("stopped", "stopped")
        );
        assert!(!process_alive(pid as u32));
    }

    // Only pause, resume and stop may be global.
    for word in ["start", "restart", "update"] {
        let params = if word == "update" {
            json!({"config": {}})
        } else {
            json!({})
        };
        let err = engine.run_failed(None, word, params).await;
        assert!(err.contains("cannot be global"), "{word}: {err}");
    }
    // Nothing running: a global stop is executed with nothing to do.
    engine.run_ok(None, "stop", json!({})).await;
    engine.finish().await;
}

/// `strategy_command` / `engine_command`: commands by name from SQL, carried out like
/// any row; a typo is an error listing the known names, never a silent no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_by_name_from_sql() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-by-name").await;
    engine.add_heartbeat("hb-other").await;

    let cmd: uuid::Uuid = sqlx::query_scalar("SELECT strategy_command('hb-by-name', 'start')")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(engine.outcome(cmd).await.status, "executed");
    assert_eq!(engine.state(id).await.status, "running");

    let err = sqlx::query("SELECT strategy_command('hb-by-nam', 'stop', '{\"timeout_s\": 5}')")
        .execute(&engine.pool)
        .await
        .unwrap_err();
    let message = err
        .as_database_error()
        .expect("a database error")
        .message()
        .to_string();
    assert_eq!(
        message,
        "no strategy named 'hb-by-nam'; known: hb-by-name, hb-other"
    );

    let err = sqlx::query("SELECT engine_command('update', '{}')")
        .execute(&engine.pool)
        .await
        .unwrap_err();
    let message = err.as_database_error().unwrap().message().to_string();
    assert!(message.contains("'update' cannot be global"), "{message}");

    let stop: uuid::Uuid =
        sqlx::query_scalar("SELECT engine_command('stop', '{\"timeout_s\": 5}')")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(engine.outcome(stop).await.status, "executed");
    assert_eq!(engine.state(id).await.status, "stopped");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM strategy_commands")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the refused calls inserted nothing");
    engine.finish().await;
}

/// A global `update` is refused for being global before its parameters are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_update_is_refused_as_global_first() {
    let engine = TestEngine::started().await;
    let error = engine.run_failed(None, "update", json!({})).await;
    assert!(error.contains("'update' cannot be global"), "{error}");
    let error = engine.run_failed(None, "start", json!({"x": 1})).await;
    assert!(error.contains("'start' cannot be global"), "{error}");
    engine.finish().await;
}
