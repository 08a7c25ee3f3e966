//! Bad input never takes the manager down: each case ends as a `failed` command (or
//! is refused by the schema) with an error saying what was wrong and what would be
//! right, and the next good command is still served.

mod common;

use common::TestEngine;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_fail_clearly_and_the_manager_keeps_serving() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("hb-bad").await;
    let cases = [
        (
            "strat",
            json!({}),
            "unknown command 'strat'; expected one of start, stop, restart, update, pause, resume, cancel",
        ),
        (
            "stop",
            json!({"timeout_s": "soon"}),
            "timeout_s must be a number with 0 < timeout_s <= 3600",
        ),
        ("stop", json!({"timeout_s": -1}), "0 < timeout_s <= 3600"),
        ("stop", json!({"mode": "sell-everything"}), "\"leave\""),
        (
            "stop",
            json!({"grace": 3}),
            "unknown parameter 'grace' for stop",
        ),
        (
            "start",
            json!([1, 2]),
            "parameters must be a JSON object, got an array",
        ),
        ("start", json!({"now": true}), "start takes no parameters"),
        (
            "update",
            json!({}),
            "update needs parameters {\"config\": {...}}",
        ),
        (
            "update",
            json!({"config": "fast"}),
            "parameters.config must be a JSON object",
        ),
    ];
    for (word, params, expected) in cases {
        let err = engine.run_failed(Some(id), word, params.clone()).await;
        assert!(err.contains(expected), "{word} {params}: {err}");
    }
    // The manager still serves the next command.
    engine.run_ok(Some(id), "start", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_what_cannot_be_right() {
    let engine = TestEngine::started().await;
    // A command for a strategy that does not exist.
    let err =
        sqlx::query("INSERT INTO strategy_commands (strategy_id, command) VALUES ($1, 'start')")
            .bind(Uuid::new_v4())
            .execute(&engine.pool)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("foreign key"), "{err}");
    // A config that is not a JSON object.
    let err = sqlx::query("INSERT INTO strategy_configs (name, strategy_type, config) VALUES ('x', 'heartbeat', '[1]')")
        .execute(&engine.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("config_is_a_json_object"), "{err}");
    // A running strategy cannot be deleted; a stopped one can.
    let id = engine.add_heartbeat("hb-delete").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let err = sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stop it first"), "{err}");
    engine.run_ok(Some(id), "stop", json!({})).await;
    sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_type_and_rejected_config_fail_the_start() {
    let engine = TestEngine::started().await;
    let typo = engine
        .add_strategy("typo-type", "sma_crosover", json!({}), false)
        .await;
    let err = engine.run_failed(Some(typo), "start", json!({})).await;
    assert!(
        err.contains("unknown strategy_type 'sma_crosover'"),
        "{err}"
    );
    assert!(
        err.contains("heartbeat, mean_reversion, sma_crossover"),
        "{err}"
    );
    let row = engine.state(typo).await;
    assert_eq!(row.status, "error");
    assert!(row.last_error.unwrap().contains("sma_crosover"));
    assert_eq!(row.pid, None);

    let bad = engine
        .add_strategy(
            "bad-config",
            "sma_crossover",
            json!({"token": "X", "fast_perod": 3}),
            false,
        )
        .await;
    let err = engine.run_failed(Some(bad), "start", json!({})).await;
    assert!(err.contains("fast_perod"), "{err}");
    assert_eq!(engine.state(bad).await.status, "error");

    // Fixing the config with update makes the next start work.
    sqlx::query("UPDATE strategy_configs SET config = '{\"token\": \"X\", \"fast_period\": 3}' WHERE id = $1")
        .bind(bad)
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.run_ok(Some(bad), "start", json!({})).await;
    assert_eq!(engine.state(bad).await.status, "running");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executor_binary_fails_the_start() {
    let mut engine = TestEngine::new().await;
    engine.config.executor_path = Some(engine.state_dir.join("no-such-executor"));
    engine.start_manager().await;
    let id = engine.add_heartbeat("hb-nobinary").await;
    let err = engine.run_failed(Some(id), "start", json!({})).await;
    assert!(err.contains("executor binary not found"), "{err}");
    assert!(err.contains("--executor-path"), "{err}");
    assert_eq!(engine.state(id).await.status, "error");
    // update of a stopped strategy needs the binary for validation: a clear failure too.
    let err = engine
        .run_failed(Some(id), "update", json!({"config": {"interval_ms": 100}}))
        .await;
    assert!(err.contains("executor binary not found"), "{err}");
    engine.finish().await;
}
