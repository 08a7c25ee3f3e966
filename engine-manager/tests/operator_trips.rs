//! Regression tests for "What an operator still trips over": a deleted strategy is
//! forgotten at once (#2), tick age is computed from the time of the last tick (#4),
//! a strategy whose token never ticks is flagged stale (#5), and a strategy that is
//! not live shows no health block (#10a). (Global commands in a strategy's history,
//! #10b, and the `enginectl` warnings of #5 are in `enginectl.rs`.)

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{process_alive, wait_for, Feed, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

async fn get(base: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn get_text(base: &str, path: &str) -> String {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `/health`'s strategy counts: (supervised, by_status).
async fn supervised(base: &str) -> (u64, Value) {
    let health = get(base, "/health").await;
    let s = &health["strategies"];
    (s["supervised"].as_u64().unwrap(), s["by_status"].clone())
}

async fn hash_exists(engine: &TestEngine, id: Uuid) -> bool {
    let mut redis = engine.redis_conn().await;
    redis
        .exists(engine.channels.state_key(id))
        .await
        .expect("EXISTS")
}

/// A heartbeat strategy `name` on a token of its own (`{stem}-{uuid}`): no feed
/// publishes it unless the test does.
async fn add_on_fresh_token(engine: &TestEngine, name: &str, stem: &str) -> (Uuid, String) {
    let token = format!("{stem}-{}", Uuid::new_v4().simple());
    let config = json!({"interval_ms": 200, "token": token});
    (
        engine.add_strategy(name, "heartbeat", config, false).await,
        token,
    )
}

/// A feed of `token` at 100, a tick every 50 ms, until dropped.
async fn feed(engine: &TestEngine, token: &str) -> Feed {
    Feed::start(engine, token, &[100.0], Duration::from_millis(50)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_strategy_is_forgotten_at_once() {
    let engine = TestEngine::started().await;
    let base = engine.http_base().await;
    let stopped = engine.add_heartbeat("to-delete").await;
    let running = engine.add_heartbeat("deleted-while-running").await;
    let kept = engine.add_heartbeat("kept").await;
    for id in [stopped, running, kept] {
        engine.run_ok(Some(id), "start", json!({})).await;
    }
    engine.run_ok(Some(stopped), "stop", json!({})).await;
    wait_for("three supervised strategies", DEADLINE, || async {
        (supervised(&base).await.0 == 3).then_some(())
    })
    .await;
    assert!(hash_exists(&engine, stopped).await);

    // A plain DELETE of a stopped strategy: the trigger's NOTIFY.
    sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(stopped)
        .execute(&engine.pool)
        .await
        .unwrap();
    wait_for(
        "/health to forget the deleted strategy",
        DEADLINE,
        || async {
            let (n, by_status) = supervised(&base).await;
            (n == 2 && by_status.get("stopped").is_none()).then_some(())
        },
    )
    .await;
    wait_for("its state hash to be deleted", DEADLINE, || async {
        (!hash_exists(&engine, stopped).await).then_some(())
    })
    .await;

    // A row deleted with every trigger off (no guard, no NOTIFY) while its executor
    // runs: the poll's check finds it, and the executor gets the normal stop.
    let pid = engine.live_pid(running).await;
    let mut tx = engine.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM strategy_configs WHERE id = $1")
        .bind(running)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_for(
        "the executor of the deleted row to stop",
        DEADLINE,
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    wait_for(
        "/health to count only the kept strategy",
        DEADLINE,
        || async {
            let (n, by_status) = supervised(&base).await;
            (n == 1 && by_status["running"] == 1).then_some(())
        },
    )
    .await;
    wait_for(
        "the running one's state hash to be deleted",
        DEADLINE,
        || async { (!hash_exists(&engine, running).await).then_some(()) },
    )
    .await;
    let metrics = get_text(&base, "/metrics").await;
    assert!(!metrics.contains(&running.to_string()), "{metrics}");
    assert!(!metrics.contains(&stopped.to_string()), "{metrics}");
    assert!(metrics.contains(&kept.to_string()), "{metrics}");
    // The kept strategy is still served.
    engine.run_ok(Some(kept), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_age_is_computed_from_the_time_of_the_last_tick() {
    let mut engine = TestEngine::new().await;
    // Metrics far apart and ticks every 50 ms: an age that counted the time since
    // the last report would reach seconds.
    engine.config.metrics_interval = Duration::from_secs(3);
    engine.start_manager().await;
    let base = engine.http_base().await;
    let (id, token) = add_on_fresh_token(&engine, "ticking", "TICK").await;
    let _feed = feed(&engine, &token).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let tick_age = |body: &Value| body["metrics"]["tick_age_ms"].as_f64();
    wait_for("the API to know the last tick", DEADLINE, || async {
        let body = get(&base, "/api/strategies/ticking").await;
        body["metrics"]["last_tick_at"].is_string().then_some(())
    })
    .await;
    // Over more than a metrics interval, the age stays that of a 50 ms feed.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        let body = get(&base, "/api/strategies/ticking").await;
        let age = tick_age(&body).expect("a tick age");
        assert!(age < 1000.0, "tick age {age} ms on a 50 ms feed: {body}");
        let health_age = body["health"]["last_tick_age_ms"].as_f64();
        assert!(health_age.is_none_or(|a| a < 1000.0), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut redis = engine.redis_conn().await;
    let state_key = engine.channels.state_key(id);
    let at: String = redis.hget(&state_key, "last_tick_at").await.unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(&at).is_ok(), "{at:?}");

    // A manager restart: the age is there again at once (the newest stored metrics),
    // in the state hash `enginectl list` reads and in the API.
    engine.stop_manager().await;
    let _: () = redis.hdel(&state_key, "last_tick_at").await.unwrap();
    let _ = std::fs::remove_file(engine.state_dir.join(engine_manager::http::ADDR_FILE));
    engine.start_manager().await;
    let base = engine.http_base().await;
    wait_for(
        "the restarted manager to show the tick age",
        DEADLINE,
        || async {
            let mut redis = redis.clone();
            let at: String = redis.hget(&state_key, "last_tick_at").await.ok()?;
            let body = get(&base, "/api/strategies/ticking").await;
            (!at.is_empty() && tick_age(&body).is_some_and(|a| a < 5000.0)).then_some(())
        },
    )
    .await;
    engine.run_ok(Some(id), "stop", json!({})).await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_whose_token_never_ticks_is_stale() {
    let mut engine = TestEngine::new().await;
    engine.config.stale_after = Duration::from_secs(2);
    engine.start_manager().await;
    let base = engine.http_base().await;
    // A token no feed publishes.
    let (doge, token) = add_on_fresh_token(&engine, "doge", "DOGE").await;
    let quiet = engine.add_heartbeat("no-token").await;
    let mut health = engine.subscribe(&engine.channels.health()).await;
    engine.run_ok(Some(doge), "start", json!({})).await;
    engine.run_ok(Some(quiet), "start", json!({})).await;
    let started = std::time::Instant::now();

    let msg = health
        .expect(
            "a stale health message for the strategy without ticks",
            |_, m| m["strategy_id"] == doge.to_string() && m["stale"] == true,
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "stale only once --stale-after has passed since the start"
    );
    assert!(msg.get("last_tick_age_ms").is_none(), "no tick yet: {msg}");
    let msg = health
        .expect("the token-less heartbeat's health", |_, m| {
            m["strategy_id"] == quiet.to_string()
        })
        .await;
    assert_eq!(msg["stale"], false, "takes no market data: {msg}");

    // The API (and so the dashboard's alarm), the state hash and /metrics agree.
    let body = get(&base, "/api/strategies/doge").await;
    assert_eq!(body["health"]["stale"], true, "{body}");
    assert_eq!(body["status"], "running");
    let mut redis = engine.redis_conn().await;
    let stale: String = redis
        .hget(engine.channels.state_key(doge), "stale")
        .await
        .unwrap();
    assert_eq!(stale, "true");
    let metrics = get_text(&base, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("engine_strategy_stale{") && l.contains("\"doge\""))
        .unwrap_or_else(|| panic!("no stale gauge for doge: {metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, 1.0, "{line}");

    // A tick at last clears it.
    let _feed = feed(&engine, &token).await;
    health
        .expect("doge no longer stale once ticks arrive", |_, m| {
            m["strategy_id"] == doge.to_string() && m["stale"] == false
        })
        .await;
    for id in [doge, quiet] {
        engine.run_ok(Some(id), "stop", json!({})).await;
    }
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_strategy_shows_no_health_block() {
    let engine = TestEngine::started().await;
    let base = engine.http_base().await;
    let id = engine.add_heartbeat("hb").await;
    engine.run_ok(Some(id), "start", json!({})).await;
    let pid = engine.live_pid(id).await;
    let body = wait_for("a health block while it runs", DEADLINE, || async {
        let body = get(&base, "/api/strategies/hb").await;
        body["health"]["pid"].is_u64().then_some(body)
    })
    .await;
    assert_eq!(body["health"]["pid"], pid);
    engine.run_ok(Some(id), "stop", json!({})).await;
    let body = get(&base, "/api/strategies/hb").await;
    assert_eq!(body["status"], "stopped");
    assert_eq!(
        body["health"],
        Value::Null,
        "no old pid, CPU or memory: {body}"
    );
    let list = get(&base, "/api/strategies").await;
    let entry = list["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.to_string())
        .unwrap();
    assert_eq!(entry["health"], Value::Null, "{entry}");
    engine.finish().await;
}
