//! Global commands in a cluster (CONTRACT.md §1 and §7): a global `pause`, `resume`
//! or `stop` reaches every strategy on every node, in its place in each strategy's
//! order; a node that dies before its part is done fails its part, naming its
//! strategies, so the row never stays `processing`. And `enginectl doctor` checks
//! every node. Every manager is the real binary, with its own `--node`.

mod common;

use common::cluster::{owners, start_node, start_node_with};
use common::{process_alive, wait_for, TestEngine, DEADLINE};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

/// `n` heartbeat strategies named `{prefix}-{i}`, started.
async fn started(engine: &TestEngine, prefix: &str, n: usize) -> Vec<Uuid> {
    let op = engine.op();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = op
            .add_strategy(
                &format!("{prefix}-{i}"),
                "heartbeat",
                json!({"interval_ms": 200}),
            )
            .await;
        op.run_ok(Some(id), "start", json!({})).await;
        ids.push(id);
    }
    ids
}

/// The strategies of each node, by node name (every strategy has an owner).
async fn by_node(engine: &TestEngine, ids: &[Uuid]) -> HashMap<String, Vec<Uuid>> {
    let mut out: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (id, node) in owners(engine, ids).await {
        out.entry(node.unwrap_or_else(|| panic!("{id} has no owner")))
            .or_default()
            .push(id);
    }
    out
}

/// The parts of global command `id`: (node, status), by node.
async fn parts(engine: &TestEngine, id: Uuid) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT node, status FROM strategy_command_parts WHERE command_id = $1 ORDER BY node",
    )
    .bind(id)
    .fetch_all(&engine.pool)
    .await
    .unwrap()
}

async fn assert_all(engine: &TestEngine, ids: &[Uuid], status: &str) {
    for id in ids {
        assert_eq!(engine.op().state(*id).await.status, status, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_pause_resume_and_stop_reach_every_strategy_on_every_node_in_order() {
    let engine = TestEngine::new().await;
    let nodes = [
        start_node(&engine, "node-a").await,
        start_node(&engine, "node-b").await,
        start_node(&engine, "node-c").await,
    ];
    let ids = started(&engine, "hb", 6).await;
    let per_node = by_node(&engine, &ids).await;
    for node in &nodes {
        assert!(per_node.contains_key(&node.name), "{per_node:?}");
    }
    let op = engine.op();
    let every_node: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), "executed".to_string()))
        .collect();

    // pause: every strategy on every node; one part per node, each executed.
    let pause = op.run_ok(None, "pause", json!({})).await;
    assert_all(&engine, &ids, "paused").await;
    assert_eq!(parts(&engine, pause).await, every_node);

    // resume, then (in one transaction, so in created_at/seq order) a global pause
    // and a resume of one strategy: the resume comes after the pause for it.
    op.run_ok(None, "resume", json!({})).await;
    assert_all(&engine, &ids, "running").await;
    let last = per_node["node-b"][0];
    let mut tx = engine.pool.begin().await.unwrap();
    let mut inserted = Vec::new();
    for (target, word) in [(None, "pause"), (Some(last), "resume")] {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO strategy_commands (strategy_id, command) VALUES ($1, $2) RETURNING id",
        )
        .bind(target)
        .bind(word)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        inserted.push(id);
    }
    tx.commit().await.unwrap();
    for id in &inserted {
        let out = op.outcome(*id, DEADLINE).await;
        assert_eq!(out.status, "executed", "{:?}", out.error);
    }
    for id in &ids {
        let want = if *id == last { "running" } else { "paused" };
        assert_eq!(op.state(*id).await.status, want, "{id}");
    }

    // stop: every executor exits, on every node; the row is executed.
    let pids: Vec<u32> = nodes
        .iter()
        .flat_map(|n| n.executors())
        .flat_map(|(_, p)| p)
        .collect();
    assert_eq!(pids.len(), ids.len());
    let stop = op.run_ok(None, "stop", json!({"timeout_s": 5})).await;
    assert_all(&engine, &ids, "stopped").await;
    assert_eq!(parts(&engine, stop).await, every_node);
    for pid in pids {
        assert!(!process_alive(pid), "executor {pid} still runs");
    }
    for node in &nodes {
        assert!(node.executors().is_empty(), "{} runs executors", node.name);
    }

    // Nothing runs now: a global pause concerns nobody, and is executed.
    op.run_ok(None, "pause", json!({})).await;
    assert_all(&engine, &ids, "stopped").await;
    for node in nodes {
        node.kill().await;
    }
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_command_while_a_node_is_killed_fails_naming_its_strategies() {
    let engine = TestEngine::new().await;
    let lease = [("ENGINE_LEASE_TIME", "3s")];
    let a = start_node_with(&engine, "node-a", &lease).await;
    let b = start_node_with(&engine, "node-b", &lease).await;
    let ids = started(&engine, "hb", 4).await;
    let per_node = by_node(&engine, &ids).await;
    let mut names: HashMap<&str, Vec<String>> = HashMap::new();
    for node in ["node-a", "node-b"] {
        for id in per_node.get(node).into_iter().flatten() {
            names
                .entry(node)
                .or_default()
                .push(engine.op().state(*id).await.name);
        }
    }
    let (on_a, on_b) = (&names["node-a"], &names["node-b"]);

    // node-b dies (manager and executors) just before the kill switch is pulled.
    b.kill().await;
    let op = engine.op();
    let id = op.command(None, "pause", json!({})).await;
    let out = op.outcome(id, DEADLINE).await;
    assert_eq!(out.status, "failed");
    let error = out.error.unwrap_or_default();
    assert!(error.contains("node-b"), "{error}");
    for name in on_b {
        assert!(error.contains(name.as_str()), "{name} is named: {error}");
    }
    for name in on_a {
        assert!(!error.contains(name.as_str()), "{name} took it: {error}");
    }
    // node-a's part was carried out: its strategies paused.
    for id in &per_node["node-a"] {
        assert_eq!(op.state(*id).await.status, "paused");
    }
    let statuses = parts(&engine, id).await;
    assert_eq!(
        statuses,
        [
            ("node-a".to_string(), "executed".to_string()),
            ("node-b".to_string(), "failed".to_string())
        ]
    );

    // A later global command with node-b long dead: not waited for either.
    let (_, resumed) = op.run(None, "resume", json!({})).await;
    assert_ne!(resumed.status, "processing");
    a.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarting_in_the_middle_of_its_part_finishes_it_at_start_up() {
    let engine = TestEngine::new().await;
    let a = start_node(&engine, "node-a").await;
    let ids = started(&engine, "hb", 2).await;
    let pids: Vec<u32> = a.executors().into_values().flatten().collect();
    assert_eq!(pids.len(), 2);

    // node-a's manager dies (its executors live on, within their lease) in the middle
    // of its part of a global pause: the row and the part are left `processing`.
    a.kill_manager().await;
    let mut tx = engine.pool.begin().await.unwrap();
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_commands (strategy_id, command) VALUES (NULL, 'pause') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE strategy_commands SET status = 'processing' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO strategy_command_parts (command_id, node, status, strategies) \
         VALUES ($1, 'node-a', 'processing', $2)",
    )
    .bind(id)
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // It comes back under its name: adopts its executors and finishes its part, and
    // with it the row.
    let a = start_node(&engine, "node-a").await;
    let out = engine.op().outcome(id, DEADLINE).await;
    assert_eq!(out.status, "executed", "{:?}", out.error);
    assert_all(&engine, &ids, "paused").await;
    let mut now: Vec<u32> = a.executors().into_values().flatten().collect();
    now.sort_unstable();
    let mut before = pids;
    before.sort_unstable();
    assert_eq!(now, before, "the executors were adopted, not restarted");
    assert_eq!(
        parts(&engine, id).await,
        [("node-a".to_string(), "executed".to_string())]
    );
    a.kill().await;
    engine.finish().await;
}

/// `enginectl doctor`'s output and whether it succeeded.
async fn doctor(engine: &TestEngine) -> (bool, String) {
    let output = engine
        .enginectl(&["doctor"])
        .output()
        .await
        .expect("run enginectl doctor");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

/// The doctor's line about node `name`.
fn node_line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| !l.starts_with(' ') && l.contains(&format!("  {name}: ")))
        .unwrap_or_else(|| panic!("no line for {name}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_every_node_of_a_cluster() {
    let engine = TestEngine::new().await;
    // node-a has room for two strategies only, so node-b's cannot all move to it.
    let a = start_node_with(
        &engine,
        "node-a",
        &[("ENGINE_LEASE_TIME", "3s"), ("ENGINE_CAPACITY", "2")],
    )
    .await;
    let b = start_node_with(&engine, "node-b", &[("ENGINE_LEASE_TIME", "3s")]).await;
    let ids = started(&engine, "hb", 5).await;
    let per_node = by_node(&engine, &ids).await;
    assert!(per_node["node-b"].len() >= 3, "{per_node:?}");

    let (ok, text) = doctor(&engine).await;
    for name in ["node-a", "node-b"] {
        let line = node_line(&text, name);
        assert!(line.starts_with("ok"), "{text}");
        assert!(line.contains("alive"), "{text}");
    }
    assert!(
        node_line(&text, "node-a").contains("/ 2 strategies"),
        "{text}"
    );
    assert!(!text.contains("lease time"), "{text}");
    assert!(ok, "a healthy cluster passes: {text}");

    // node-b dies: what node-a has no room for stays stranded on it.
    b.kill().await;
    let (ok, text) = wait_for("doctor to see node-b dead", DEADLINE, || async {
        let (ok, text) = doctor(&engine).await;
        node_line(&text, "node-b")
            .starts_with("FAIL")
            .then_some((ok, text))
    })
    .await;
    assert!(
        !ok,
        "a dead node with strategies that should run fails: {text}"
    );
    let line = node_line(&text, "node-b");
    assert!(line.contains("node-b: dead"), "{text}");
    assert!(line.contains("that should run"), "{text}");
    assert!(
        text.contains("hint: start the node again with --node node-b"),
        "{text}"
    );
    assert!(node_line(&text, "node-a").starts_with("ok"), "{text}");

    // A node with another lease time: said, and a failure.
    let c = start_node_with(&engine, "node-c", &[("ENGINE_LEASE_TIME", "5s")]).await;
    let (ok, text) = doctor(&engine).await;
    assert!(!ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("lease time"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("node-c 5.0s"),
        "{text}"
    );
    a.kill().await;
    c.kill().await;
    engine.finish().await;
}
