//! Paper orders in `strategy_orders` (CONTRACT.md §7): a live strategy's fills are
//! reported by its executor and recorded by the manager, one row per fill, under a
//! client order id that carries the lease epoch (`e{epoch}-{owner}-{session}-{seq}`);
//! the numbering goes on across a restart, in a new session. A backtest's fills land
//! with the run's id once it ended. The HTTP API and `enginectl orders` show them, and
//! on a cluster node the status messages of manager and executor carry the epoch.

#![allow(clippy::too_many_lines)] // a test reads best as one story

mod common;

use common::{wait_for, TestEngine, DEADLINE};
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// `sma_crossover` with a 1-tick fast and a 2-tick slow average: every turn of the
/// price is a cross, so the test's prices say exactly which orders fill.
fn crossover(token: &str) -> Value {
    json!({"token": token, "fast_period": 1, "slow_period": 2, "order_qty": 1.0})
}

/// Publish one tick of `token`, once an executor is subscribed to take it.
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

/// One row of `strategy_orders`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Order {
    client_order_id: String,
    lease_epoch: i64,
    run_id: Option<Uuid>,
    node: Option<String>,
    token: Option<String>,
    side: String,
    quantity: f64,
    price: f64,
    at: chrono::DateTime<chrono::Utc>,
}

/// The strategy's orders (live, or of `run`), oldest first.
async fn orders(pool: &PgPool, strategy: Uuid, run: Option<Uuid>) -> Vec<Order> {
    sqlx::query_as(
        "SELECT client_order_id, lease_epoch, run_id, node, token, side, \
                quantity::float8 AS quantity, price::float8 AS price, at \
         FROM strategy_orders WHERE strategy_id = $1 AND run_id IS NOT DISTINCT FROM $2 \
         ORDER BY at, id",
    )
    .bind(strategy)
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Wait until the strategy has `n` orders (live, or of `run`).
async fn wait_orders(pool: &PgPool, strategy: Uuid, run: Option<Uuid>, n: usize) -> Vec<Order> {
    wait_for(
        &format!("{n} orders in strategy_orders"),
        DEADLINE,
        || async {
            let rows = orders(pool, strategy, run).await;
            (rows.len() == n).then_some(rows)
        },
    )
    .await
}

/// The parts of a client order id: epoch, owner, session, seq.
fn parts(id: &str) -> (i64, String, String, u64) {
    let rest = id.strip_prefix('e').unwrap_or_else(|| panic!("{id}"));
    let fields: Vec<&str> = rest.split('-').collect();
    assert_eq!(
        fields.len(),
        4,
        "e{{epoch}}-{{owner}}-{{session}}-{{seq}}: {id}"
    );
    (
        fields[0].parse().unwrap(),
        fields[1].to_string(),
        fields[2].to_string(),
        fields[3].parse().unwrap(),
    )
}

async fn lease_epoch(pool: &PgPool, strategy: Uuid) -> i64 {
    sqlx::query_scalar("SELECT lease_epoch FROM strategy_configs WHERE id = $1")
        .bind(strategy)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn enginectl(engine: &TestEngine, args: &[&str]) -> (bool, String, String) {
    let output = engine
        .enginectl(args)
        .output()
        .await
        .expect("run enginectl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_fills_become_rows_with_ids_that_carry_the_epoch_and_go_on_after_a_restart() {
    let mut engine = TestEngine::new().await;
    engine.config.node = Some("orders-node".into());
    engine.start_manager().await;
    let token = format!("ORD-{}", Uuid::new_v4().simple());
    let id = engine
        .add_strategy("crossover", "sma_crossover", crossover(&token), false)
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;

    // 100, 101: the averages form. 100: cross below, sell 1. 98: still below.
    // 99: cross above, buy 2. 104: above. 100: cross below, sell 2.
    for price in [100.0, 101.0, 100.0, 98.0, 99.0, 104.0, 100.0] {
        tick(&engine, &token, price).await;
    }
    let rows = wait_orders(&engine.pool, id, None, 3).await;
    let fills: Vec<(&str, f64, f64)> = rows
        .iter()
        .map(|o| (o.side.as_str(), o.quantity, o.price))
        .collect();
    assert_eq!(
        fills,
        [
            ("sell", 1.0, 100.0),
            ("buy", 2.0, 99.0),
            ("sell", 2.0, 100.0)
        ]
    );
    let epoch = lease_epoch(&engine.pool, id).await;
    let owner = id.simple().to_string()[..8].to_string();
    let first_session = parts(&rows[0].client_order_id).2;
    for (n, order) in rows.iter().enumerate() {
        let (in_id, in_owner, session, seq) = parts(&order.client_order_id);
        assert_eq!(in_id, order.lease_epoch, "the id carries the row's epoch");
        assert_eq!(order.lease_epoch, epoch, "the strategy's epoch");
        assert_eq!((in_owner.as_str(), seq), (owner.as_str(), n as u64 + 1));
        assert_eq!(session, first_session, "one executor, one session");
        assert_eq!(order.run_id, None);
        assert_eq!(order.node.as_deref(), Some("orders-node"));
        assert_eq!(order.token.as_deref(), Some(token.as_str()));
        assert!((chrono::Utc::now() - order.at).num_seconds() < 60);
    }

    // The executor's broker counts the same orders.
    let pool = engine.pool.clone();
    wait_for("the broker state to count 3 orders", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT (broker_state->'broker'->>'orders_count')::bigint FROM strategy_configs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == Some(3)).then_some(())
        }
    })
    .await;

    // A restart: the next executor numbers on from the broker state it restored,
    // in a session of its own. Short 1 restored; 100, 101 form; 100 crosses below
    // (already short); 102 crosses above: buy 2.
    let pid = engine.live_pid(id).await;
    engine.run_ok(Some(id), "restart", json!({})).await;
    engine.wait_running_with_new_pid(id, Some(pid)).await;
    for price in [100.0, 101.0, 100.0, 102.0] {
        tick(&engine, &token, price).await;
    }
    let rows = wait_orders(&engine.pool, id, None, 4).await;
    let (_, _, session, seq) = parts(&rows[3].client_order_id);
    assert_eq!(seq, 4, "{rows:?}");
    assert_ne!(session, first_session, "a new executor, a new session");
    assert_eq!(
        (rows[3].side.as_str(), rows[3].quantity, rows[3].price),
        ("buy", 2.0, 102.0)
    );

    // The HTTP API: newest first, limited, with the total.
    let base = engine.http_base().await;
    let url = format!("{base}/api/strategies/crossover/orders?limit=2");
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["total"], 4, "{body}");
    assert_eq!(body["strategy_id"], json!(id));
    let listed = body["orders"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["client_order_id"], rows[3].client_order_id);
    assert_eq!(listed[0]["lease_epoch"], epoch);
    assert_eq!(listed[0]["side"], "buy");
    assert_eq!(listed[0]["price"], 102.0);
    assert_eq!(listed[1]["client_order_id"], rows[2].client_order_id);
    let bad = reqwest::get(format!("{base}/api/strategies/crossover/orders?limit=0"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    let error = error["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("limit must be a whole number from 1 to 1000"),
        "{error}"
    );
    let bad = reqwest::get(format!(
        "{base}/api/strategies/crossover/orders?run_id=nope"
    ))
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);

    // enginectl: a table and JSON.
    let (ok, table, stderr) = enginectl(&engine, &["orders", "crossover"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("4 of 4 orders of 'crossover'"),
        "{table}"
    );
    assert!(lines[1].starts_with("TIME (UTC)"), "{table}");
    assert!(
        lines[2].contains(&rows[3].client_order_id),
        "newest first: {table}"
    );
    assert!(lines[5].contains(&rows[0].client_order_id), "{table}");
    let (ok, json_out, stderr) =
        enginectl(&engine, &["orders", "crossover", "-n", "3", "--json"]).await;
    assert!(ok, "{stderr}");
    let listed: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2]["client_order_id"], rows[1].client_order_id);
    let (ok, _, stderr) = enginectl(&engine, &["orders", "crossover", "--run", "x"]).await;
    assert!(!ok && stderr.contains("not a run id"), "{stderr}");
    let (ok, _, stderr) = enginectl(&engine, &["orders", "crossover", "-n", "0"]).await;
    assert!(!ok && stderr.contains("from 1 to 1000"), "{stderr}");
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backtests_fills_land_with_its_run_id_at_its_end() {
    let mut engine = TestEngine::new().await;
    engine.config.node = Some("orders-node".into());
    // Prices that turn every few days: the averages cross many times.
    sqlx::raw_sql(
        "INSERT INTO securities (symbol) VALUES ('WAV'); \
         INSERT INTO market_bars (symbol, interval, ts, open, high, low, close, volume) \
         SELECT 'WAV', '1d', '2024-01-01T00:00:00Z'::timestamptz + make_interval(days => i), \
                c, c + 1, c - 1, c, 1000 \
         FROM generate_series(0, 199) i, LATERAL (SELECT 100 + 8 * sin(i / 3.0) AS c) p",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    engine.start_manager().await;
    let id = engine
        .add_strategy(
            "sma",
            "sma_crossover",
            json!({"token": "WAV", "fast_period": 2, "slow_period": 5, "order_qty": 1.0}),
            false,
        )
        .await;
    let run: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters) \
         VALUES ($1, 'backtest', '{\"symbols\": [\"WAV\"], \"fee_bps\": 10}') RETURNING id",
    )
    .bind(id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    let pool = engine.pool.clone();
    let result: Value = wait_for("the backtest to complete", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let (state, result): (String, Option<Value>) =
                sqlx::query_as("SELECT state, result FROM strategy_runs WHERE id = $1")
                    .bind(run)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            assert_ne!(state, "error", "{result:?}");
            (state == "completed").then_some(result?)
        }
    })
    .await;
    // Recorded off the run's path once it ended; the orders file goes after.
    let file = engine_protocol::runs::orders_path(&engine.config.runs_dir(), run);
    wait_for(
        "the run's orders file to be recorded and removed",
        DEADLINE,
        || {
            let gone = !file.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    let rows = orders(&engine.pool, id, Some(run)).await;
    let trades = result["summary"]["trades"].as_u64().unwrap();
    assert!(trades > 3, "{result}");
    let fills = rows.len() as u64;
    assert!(
        fills > trades && fills <= 2 * trades,
        "{fills} fills for {trades} round trips"
    );
    let run_epoch: i64 = sqlx::query_scalar("SELECT lease_epoch FROM strategy_runs WHERE id = $1")
        .bind(run)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    let owner = id.simple().to_string()[..8].to_string();
    let session = format!("r{}.0", &run.simple().to_string()[..12]);
    let first_bar = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
    for (n, order) in rows.iter().enumerate() {
        let (epoch, in_owner, in_session, seq) = parts(&order.client_order_id);
        assert_eq!((epoch, order.lease_epoch), (run_epoch, run_epoch));
        assert_eq!(
            (in_owner.as_str(), in_session.as_str()),
            (owner.as_str(), session.as_str())
        );
        assert_eq!(seq, n as u64 + 1, "{order:?}");
        assert_eq!(order.run_id, Some(run));
        assert_eq!(order.node.as_deref(), Some("orders-node"));
        assert_eq!(order.token.as_deref(), Some("WAV"));
        assert!(
            order.at >= first_bar && order.at.timestamp() < 1_800_000_000,
            "a bar's time: {order:?}"
        );
    }
    assert!(
        orders(&engine.pool, id, None).await.is_empty(),
        "no live orders"
    );

    // The run's orders through the API and enginectl.
    let base = engine.http_base().await;
    let url = format!("{base}/api/strategies/sma/orders?run_id={run}&limit=1000");
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["total"], rows.len(), "{body}");
    assert_eq!(body["run_id"], json!(run));
    let live: Value = reqwest::get(format!("{base}/api/strategies/sma/orders"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["total"], 0, "{live}");
    let run_text = run.to_string();
    let (ok, table, stderr) = enginectl(&engine, &["orders", "sma", "--run", &run_text]).await;
    assert!(ok, "{stderr}");
    assert!(
        table.starts_with(&format!(
            "{} of {} orders of run {run}",
            rows.len().min(20),
            rows.len()
        )),
        "{table}"
    );
    assert!(
        table.contains(&rows.last().unwrap().client_order_id),
        "{table}"
    );
    engine.finish().await;
}

/// The `running` status messages of the manager and of the executor, in whichever
/// order they come.
async fn running_from_both(status: &mut common::Subscription) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < 2 {
        let msg = status
            .expect("`running` from the manager and the executor", |_, m| {
                m["status"] == "running"
            })
            .await;
        if !seen.iter().any(|s| s["source"] == msg["source"]) {
            seen.push(msg);
        }
    }
    let mut sources: Vec<&str> = seen.iter().map(|m| m["source"].as_str().unwrap()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["executor", "manager"]);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_node_status_messages_and_orders_carry_the_lease_epoch() {
    let engine = TestEngine::new().await;
    let node = common::cluster::start_node(&engine, "node-o").await;
    let token = format!("ORC-{}", Uuid::new_v4().simple());
    let op = engine.op();
    let id = op
        .add_strategy("clustered", "sma_crossover", crossover(&token))
        .await;
    let mut status = engine.subscribe(&engine.channels.status(id)).await;
    op.run_ok(Some(id), "start", json!({})).await;
    let (owner, epoch): (Option<String>, i64) =
        sqlx::query_as("SELECT node, lease_epoch FROM strategy_configs WHERE id = $1")
            .bind(id)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(owner.as_deref(), Some("node-o"));
    assert!(epoch >= 1, "an owner's epoch: {epoch}");

    // `running` from the manager and from the executor, each with the epoch.
    for msg in running_from_both(&mut status).await {
        assert_eq!(msg["lease_epoch"], epoch, "{msg}");
        assert_eq!(msg["node"], "node-o", "{msg}");
    }

    for price in [100.0, 101.0, 100.0] {
        tick(&engine, &token, price).await;
    }
    let rows = wait_orders(&engine.pool, id, None, 1).await;
    let (in_id, _, _, seq) = parts(&rows[0].client_order_id);
    assert_eq!((in_id, rows[0].lease_epoch, seq), (epoch, epoch, 1));
    assert!(rows[0].client_order_id.starts_with(&format!("e{epoch}-")));
    assert_eq!(rows[0].node.as_deref(), Some("node-o"));

    // Without --cluster (the other tests) status messages carry no epoch: checked
    // here on the stop, which a cluster node's manager publishes with it.
    op.run_ok(Some(id), "stop", json!({})).await;
    let stopped = status
        .expect("`stopped` from the manager", |_, m| {
            m["status"] == "stopped" && m["source"] == "manager"
        })
        .await;
    assert_eq!(stopped["lease_epoch"], epoch, "{stopped}");
    node.kill().await;
    engine.kill_executors();
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_status_messages_carry_no_epoch() {
    let engine = TestEngine::started().await;
    let id = engine.add_heartbeat("plain").await;
    let mut status = engine.subscribe(&engine.channels.status(id)).await;
    engine.run_ok(Some(id), "start", json!({})).await;
    for msg in running_from_both(&mut status).await {
        assert!(msg.get("lease_epoch").is_none(), "{msg}");
    }
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_filled_while_postgres_is_away_are_recorded_once_it_is_back() {
    let log = common::LogCapture::install();
    let mut engine = TestEngine::on_private_services().await;
    engine.start_manager().await;
    let token = format!("ORP-{}", Uuid::new_v4().simple());
    let id = engine
        .add_strategy("outage", "sma_crossover", crossover(&token), false)
        .await;
    engine.run_ok(Some(id), "start", json!({})).await;

    let mark = log.mark();
    engine.services().pg.stop(common::PgStop::Fast).await;
    // Three orders while the database is away (as in the first test).
    for price in [100.0, 101.0, 100.0, 98.0, 99.0, 104.0, 100.0] {
        tick(&engine, &token, price).await;
    }
    wait_for(
        "the orders writer to find the database away",
        DEADLINE,
        || {
            let said = log
                .lines_since(mark)
                .iter()
                .any(|l| l.contains("cannot record paper orders"));
            async move { said.then_some(()) }
        },
    )
    .await;
    engine.services().pg.start_again().await;

    // Kept and retried: each recorded once, in order.
    let rows = wait_for("the orders after the outage", DEADLINE, || async {
        let pool = engine.pool.clone();
        let rows: Vec<Order> = sqlx::query_as(
            "SELECT client_order_id, lease_epoch, run_id, node, token, side, \
                    quantity::float8 AS quantity, price::float8 AS price, at \
             FROM strategy_orders WHERE strategy_id = $1 ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .ok()?;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    let seqs: Vec<u64> = rows.iter().map(|o| parts(&o.client_order_id).3).collect();
    assert_eq!(seqs, [1, 2, 3], "{rows:?}");
    assert_eq!(
        rows.iter().map(|o| o.side.as_str()).collect::<Vec<_>>(),
        ["sell", "buy", "sell"]
    );
    engine.finish().await;
}
