//! The paper broker's state survives every restart of a strategy's executor: an
//! operator's `restart`, a crash (SIGKILL), and a manager restart that finds the
//! executor dead. What the executor last reported is kept in
//! `strategy_configs.broker_state` and restored before `on_start`; a saved state the
//! executor cannot use is discarded with a recorded reason, never a failed start.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{sigkill, wait_for, Subscription, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::{json, Value};
use uuid::Uuid;

/// `sma_crossover` with a 1-tick fast and a 2-tick slow average: every turn of the
/// price is a cross, so the test's prices say exactly which orders fill.
fn crossover(token: &str) -> Value {
    json!({"token": token, "fast_period": 1, "slow_period": 2, "order_qty": 1.0})
}

/// Publish one tick of `token`, once an executor is subscribed to take it (a
/// PUBLISH nobody received is sent again; one that was received is never repeated).
async fn tick(engine: &TestEngine, token: &str, price: f64) {
    let redis = engine.redis_conn().await;
    let channel = engine.channels.live_data(token);
    let what = format!("an executor to take the tick of {token} at {price}");
    wait_for(&what, DEADLINE, || {
        let mut redis = redis.clone();
        let channel = channel.clone();
        async move {
            let tick = json!({"token": token, "price": price, "timestamp": chrono::Utc::now()});
            let receivers: i64 = redis.publish(&channel, tick.to_string()).await.ok()?;
            (receivers > 0).then_some(())
        }
    })
    .await;
}

/// The next metrics report in which the strategy has seen `ticks` ticks.
async fn metrics_after(metrics: &mut Subscription, ticks: u64) -> Value {
    let msg = metrics
        .expect(&format!("a metrics report after {ticks} ticks"), |_, m| {
            m["metrics"]["ticks"] == ticks
        })
        .await;
    msg["metrics"].clone()
}

/// What the database keeps for the next executor.
async fn saved_broker(engine: &TestEngine, id: Uuid) -> Value {
    let (state,): (Option<Value>,) =
        sqlx::query_as("SELECT broker_state FROM strategy_configs WHERE id = $1")
            .bind(id)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    state.unwrap_or(Value::Null)
}

#[track_caller]
fn assert_near(actual: &Value, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {actual}"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: expected {expected}, got {actual}"
    );
}

/// Long 1 at 99 with +1 realised, one order a side: the broker the test builds.
#[track_caller]
fn assert_carried(m: &Value, pnl_total: f64, pnl: f64) {
    assert_eq!(m["positions_count"], 1, "{m}");
    assert_eq!(m["orders_count"], 2, "{m}");
    assert_near(&m["success_rate"], 1.0, "success_rate");
    assert_near(&m["pnl_total"], pnl_total, "pnl_total");
    assert_near(&m["pnl"], pnl, "pnl (this run's)");
}

/// Wait until the strategy runs under a pid other than `old`; subscribe to its
/// metrics from then on (a report from the old executor cannot be mistaken).
async fn new_run(engine: &TestEngine, id: Uuid, old: Option<u32>) -> (u32, Subscription) {
    let pid = engine.wait_running_with_new_pid(id, old).await;
    let metrics = engine.subscribe(&engine.channels.metrics(id)).await;
    (pid, metrics)
}

/// The HTTP API and `enginectl list` show `pnl_total` once the strategy reported it.
async fn operators_see_pnl_total(engine: &TestEngine, id: Uuid, expected: f64) {
    let near = |v: &Value| v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-9);
    let url = format!("{}/api/strategies/crossover", engine.http_base().await);
    wait_for("the HTTP API to show pnl_total", DEADLINE, || {
        let url = url.clone();
        async move {
            let body: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            near(&body["metrics"]["pnl_total"]).then_some(())
        }
    })
    .await;
    // `list` reads the newest strategy_metrics row.
    let pool = engine.pool.clone();
    wait_for("strategy_metrics to record pnl_total", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let total: Option<f64> = sqlx::query_scalar(
                "SELECT (metrics->>'pnl_total')::float8 FROM strategy_metrics \
                 WHERE strategy_id = $1 AND source = 'strategy' ORDER BY \"timestamp\" DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .ok()??;
            near(&Value::from(total?)).then_some(())
        }
    })
    .await;
    let output = tokio::process::Command::new(common::workspace_bin("enginectl"))
        .args(["list", "--json"])
        .env("DATABASE_URL", &engine.db_url)
        .env("REDIS_URL", &engine.config.redis_url)
        .env("ENGINE_REDIS_PREFIX", &engine.prefix)
        .output()
        .await
        .expect("run enginectl");
    let list: Value = serde_json::from_slice(&output.stdout).expect("list --json prints JSON");
    let entry = &list[0];
    assert!(near(&entry["pnl_total"]), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_pnl_survive_restart_crash_and_manager_restart() {
    let mut engine = TestEngine::started().await;
    let token = format!("BRK-{}", Uuid::new_v4().simple());
    let id = engine
        .add_strategy("crossover", "sma_crossover", crossover(&token), false)
        .await;
    let mut metrics = engine.subscribe(&engine.channels.metrics(id)).await;
    engine.run_ok(Some(id), "start", json!({})).await;

    // 100, 101: the averages form (fast above). 100: crosses below, short 1 at 100.
    // 98: still below. 99: crosses above, buy 2 at 99 (+1 realised, long 1 at 99).
    // 104: long 1 worth +5.
    for price in [100.0, 101.0, 100.0, 98.0, 99.0, 104.0] {
        tick(&engine, &token, price).await;
    }
    let m = metrics_after(&mut metrics, 6).await;
    assert_carried(&m, 6.0, 6.0);
    let pool = engine.pool.clone();
    wait_for("the fills to reach strategy_configs.broker_state", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let (orders,): (Option<i64>,) = sqlx::query_as(
                "SELECT (broker_state->'broker'->>'orders_count')::bigint FROM strategy_configs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (orders == Some(2)).then_some(())
        }
    })
    .await;

    // An operator's restart: the new executor holds what the old one held, and
    // pnl_total carries on from where it was (its last report has the last price).
    let pid = engine.live_pid(id).await;
    engine.run_ok(Some(id), "restart", json!({})).await;
    let (pid, mut metrics) = new_run(&engine, id, Some(pid)).await;
    let saved = saved_broker(&engine, id).await;
    assert_eq!(saved["strategy_type"], "sma_crossover", "{saved}");
    let broker = &saved["broker"];
    assert_near(&broker["positions"][&token]["qty"], 1.0, "saved qty");
    assert_near(
        &broker["positions"][&token]["avg_price"],
        99.0,
        "saved avg_price",
    );
    assert_near(&broker["realised_pnl"], 1.0, "saved realised_pnl");
    assert_near(&broker["marks"][&token], 104.0, "saved mark");
    let m = metrics_after(&mut metrics, 0).await;
    assert_carried(&m, 6.0, 0.0);
    // Held, not bought again; valued at the new price.
    tick(&engine, &token, 106.0).await;
    let m = metrics_after(&mut metrics, 1).await;
    assert_carried(&m, 8.0, 2.0);
    operators_see_pnl_total(&engine, id, 8.0).await;

    // A crash: the state last reported (no fill since the restart) comes back.
    sigkill(pid);
    let (pid, mut metrics) = new_run(&engine, id, Some(pid)).await;
    assert!(engine.state(id).await.restart_count >= 1);
    tick(&engine, &token, 107.0).await;
    let m = metrics_after(&mut metrics, 1).await;
    assert_carried(&m, 9.0, 3.0);

    // The manager goes away, the executor dies meanwhile: the next manager starts
    // a new executor from the database alone.
    engine.stop_manager().await;
    sigkill(pid);
    engine.start_manager().await;
    let (_, mut metrics) = new_run(&engine, id, Some(pid)).await;
    tick(&engine, &token, 110.0).await;
    let m = metrics_after(&mut metrics, 1).await;
    assert_carried(&m, 12.0, 6.0);

    // An operator's reset (README): stopped, broker_state = NULL, started fresh.
    engine.run_ok(Some(id), "stop", json!({})).await;
    sqlx::query("UPDATE strategy_configs SET broker_state = NULL WHERE id = $1")
        .bind(id)
        .execute(&engine.pool)
        .await
        .unwrap();
    engine.run_ok(Some(id), "start", json!({})).await;
    let (_, mut metrics) = new_run(&engine, id, None).await;
    let m = metrics_after(&mut metrics, 0).await;
    assert_eq!(m["positions_count"], 0, "{m}");
    assert_eq!(m["orders_count"], 0, "{m}");
    assert_near(&m["pnl_total"], 0.0, "pnl_total after a reset");
    engine.finish().await;
}

/// The reason recorded in `strategy_events` when the executor discarded the saved
/// state, once it did.
async fn discarded_reason(engine: &TestEngine, id: Uuid) -> String {
    let pool = engine.pool.clone();
    wait_for(
        "the discarded broker state in strategy_events",
        DEADLINE,
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar(
                    "SELECT reason FROM strategy_events WHERE strategy_id = $1 \
                 AND reason LIKE 'saved broker state discarded%'",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await
                .ok()?
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_saved_state_is_discarded_and_the_strategy_starts_fresh() {
    let engine = TestEngine::started().await;
    let malformed = engine.add_heartbeat("malformed").await;
    let other_type = engine.add_heartbeat("other-type").await;
    let saved_by_crossover = json!({
        "strategy_type": "sma_crossover",
        "saved_at": chrono::Utc::now(),
        "broker": {"version": 1, "positions": {"BTC": {"qty": 1.0, "avg_price": 99.0}},
                   "marks": {}, "realised_pnl": 1.0, "orders_count": 2,
                   "closed_trades": 1, "winning_trades": 1}
    });
    for (id, state) in [
        (
            malformed,
            json!({"strategy_type": "heartbeat", "broker": {"version": 1}}),
        ),
        (other_type, saved_by_crossover),
    ] {
        sqlx::query("UPDATE strategy_configs SET broker_state = $2 WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&engine.pool)
            .await
            .unwrap();
        engine.run_ok(Some(id), "start", json!({})).await;
    }

    let why = discarded_reason(&engine, malformed).await;
    assert!(why.contains("unreadable"), "{why}");
    let why = discarded_reason(&engine, other_type).await;
    assert!(
        why.contains("saved by strategy_type 'sma_crossover'") && why.contains("'heartbeat'"),
        "{why}"
    );
    // Both run, and their fresh brokers replaced what could not be used.
    for id in [malformed, other_type] {
        assert_eq!(engine.state(id).await.status, "running");
        let saved = saved_broker(&engine, id).await;
        assert_eq!(saved["strategy_type"], "heartbeat", "{saved}");
        assert_eq!(saved["broker"]["orders_count"], 0, "{saved}");
        assert_eq!(saved["broker"]["positions"], json!({}), "{saved}");
    }
    engine.finish().await;
}
