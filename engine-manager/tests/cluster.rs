//! Several managers on one database (CONTRACT.md §7), the first slice: who may run
//! beside whom (exit code 3 otherwise), and strategies shared between cluster nodes,
//! each owned by one node and run by exactly one executor. Every manager here is the
//! real binary, with its own `--node` and state directory, on the test's database
//! and Redis namespace.

mod common;

use common::cluster::{node_env, owners, start_node};
use common::{
    executors_alive_together, sigkill, spawn_manager_binary, wait_lease, workspace_bin, TestEngine,
    DEADLINE,
};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Run a manager to its end (it is expected to refuse): its exit code and stderr.
async fn refused(env: &[(String, String)]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(workspace_bin("engine-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("a refused manager exits at once")
        .expect("run engine-manager");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_and_a_manager_without_cluster_exclude_each_other() {
    let engine = TestEngine::new().await;

    // A node serves: a manager without --cluster is refused, and told how to join.
    let node = start_node(&engine, "node-a").await;
    let (env, _) = node_env(&engine, "single", false, &[]);
    let (code, stderr) = refused(&env).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("--cluster"), "{stderr}");
    assert!(stderr.contains("'node-a'"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", node.pid())), "{stderr}");
    node.kill().await;

    // A manager without --cluster serves: a node is refused, the manager named.
    let (env, state_dir) = node_env(&engine, "single", false, &[]);
    let mut single = spawn_manager_binary(&env, &state_dir.join("manager.log"));
    let pid = single.id().expect("manager pid");
    wait_lease(&engine.op(), pid, DEADLINE).await;
    let (env, _) = node_env(&engine, "node-b", true, &[]);
    let (code, stderr) = refused(&env).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    let joined: i64 = sqlx::query_scalar("SELECT count(*) FROM engine_nodes WHERE node = 'node-b'")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(joined, 0, "a refused node leaves no row");
    sigkill(pid);
    let _ = single.wait().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_node_name_or_state_dir_twice_is_refused_and_another_name_joins() {
    let engine = TestEngine::new().await;
    let first = start_node(&engine, "node-a").await;
    let (mut env, _) = node_env(&engine, "node-a-again", true, &[]);
    for (key, value) in env.iter_mut() {
        if key == "ENGINE_NODE" {
            *value = "node-a".into();
        }
    }
    let (code, stderr) = refused(&env).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("node name 'node-a'"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    // The refused one did not take the row over.
    let pid: i32 = sqlx::query_scalar("SELECT pid FROM engine_nodes WHERE node = 'node-a'")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(pid as u32, first.pid());

    // Another name, but node-a's state directory: refused before it joins (it would
    // take node-a's executors for strays of its own).
    let (mut env, _) = node_env(&engine, "node-b", true, &[]);
    for (key, value) in env.iter_mut() {
        if key == "ENGINE_STATE_DIR" {
            *value = first.state_dir.display().to_string();
        }
    }
    let (code, stderr) = refused(&env).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("state directory"), "{stderr}");
    assert!(stderr.contains("--state-dir"), "{stderr}");
    let joined: i64 = sqlx::query_scalar("SELECT count(*) FROM engine_nodes WHERE node = 'node-b'")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(joined, 0, "a refused node leaves no row");

    // Nodes of other names share the database.
    let second = start_node(&engine, "node-b").await;
    let output = tokio::process::Command::new(workspace_bin("enginectl"))
        .args(["--database-url", &engine.db_url, "nodes"])
        .output()
        .await
        .expect("run enginectl nodes");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two nodes: {table}");
    for (line, node) in lines[1..].iter().zip([&first, &second]) {
        assert!(line.starts_with(&node.name), "{table}");
        assert!(line.contains(&node.pid().to_string()), "{table}");
        assert!(
            line.contains("alive") && line.contains("0 / 1000"),
            "{table}"
        );
    }
    first.kill().await;
    second.kill().await;
    engine.finish().await;
}

/// `enginectl list` has a NODE column naming each strategy's owner.
async fn assert_list_names_owners(engine: &TestEngine, owned: &HashMap<Uuid, Option<String>>) {
    let output = tokio::process::Command::new(workspace_bin("enginectl"))
        .args([
            "--database-url",
            &engine.db_url,
            "--redis-prefix",
            &engine.prefix,
            "list",
        ])
        .output()
        .await
        .expect("run enginectl list");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.lines().next().unwrap().starts_with("NAME  NODE"),
        "{table}"
    );
    for (id, node) in owned {
        let name = engine.op().state(*id).await.name;
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert!(line.contains(node.as_deref().unwrap()), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_ten_strategies_each_run_once_by_its_owner() {
    let engine = TestEngine::new().await;
    let nodes = [
        start_node(&engine, "node-a").await,
        start_node(&engine, "node-b").await,
    ];
    let op = engine.op();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = op
            .add_strategy(&format!("hb-{i}"), "heartbeat", json!({"interval_ms": 200}))
            .await;
        op.run_ok(Some(id), "start", json!({})).await;
        ids.push(id);
    }

    // Each owned by exactly one node, both nodes used.
    let owned = owners(&engine, &ids).await;
    let mut per_node: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (id, node) in &owned {
        let node = node.clone().unwrap_or_else(|| panic!("{id} has no owner"));
        per_node.entry(node).or_default().push(*id);
    }
    let counts: Vec<usize> = nodes
        .iter()
        .map(|n| per_node.get(&n.name).map_or(0, Vec::len))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 10, "{per_node:?}");
    assert!(
        counts[0].abs_diff(counts[1]) <= 2,
        "placement is balanced: {counts:?}"
    );

    // Each running exactly once, on its owner's executors (by --strategy-id).
    let seen: Vec<HashMap<Uuid, Vec<u32>>> = nodes
        .iter()
        .map(|n| executors_alive_together(&n.control_socket()))
        .collect();
    for id in &ids {
        let owner = owned[id].as_deref().unwrap();
        for (node, executors) in nodes.iter().zip(&seen) {
            let count = executors.get(id).map_or(0, Vec::len);
            let want = usize::from(node.name == owner);
            assert_eq!(count, want, "executors of {id} on {}", node.name);
        }
        let state = op.state(*id).await;
        assert_eq!(state.status, "running");
        let pid = state.pid.expect("a running strategy's pid") as u32;
        let on_owner = nodes.iter().zip(&seen).find(|(n, _)| n.name == owner);
        assert_eq!(on_owner.unwrap().1[id], vec![pid]);
    }

    // `enginectl list` names each strategy's owner.
    assert_list_names_owners(&engine, &owned).await;

    // Commands are carried out by the owner, whichever node is woken.
    for node in &nodes {
        let id = per_node[&node.name][0];
        let pid = op.state(id).await.pid.unwrap() as u32;
        op.run_ok(Some(id), "stop", json!({})).await;
        assert!(!common::process_alive(pid), "stopped by {}", node.name);
        op.run_ok(Some(id), "start", json!({})).await;
        assert_eq!(
            owners(&engine, &[id]).await[&id].as_deref(),
            Some(&*node.name)
        );
        let now = executors_alive_together(&node.control_socket());
        assert_eq!(now.get(&id).map_or(0, Vec::len), 1);
    }

    // A global command reaches every node's strategies (tests/cluster_global.rs).
    op.run_ok(None, "pause", json!({})).await;
    for id in &ids {
        assert_eq!(op.state(*id).await.status, "paused");
    }
    for node in nodes {
        node.kill().await;
    }
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_adopts_its_own_strategies_and_no_other_node_takes_them() {
    let engine = TestEngine::new().await;
    let a = start_node(&engine, "node-a").await;
    let op = engine.op();
    let id = op
        .add_strategy("hb-a", "heartbeat", json!({"interval_ms": 200}))
        .await;
    op.run_ok(Some(id), "start", json!({})).await;
    let pid = op.state(id).await.pid.unwrap() as u32;
    assert_eq!(owners(&engine, &[id]).await[&id].as_deref(), Some("node-a"));

    // node-a's manager dies alone; node-b joins; the strategy stays node-a's and its
    // executor runs on, within node-a's lease (10 s: failover and the executor's own
    // exit at the deadline are tests/cluster_fencing.rs).
    a.kill_manager().await;
    let b = start_node(&engine, "node-b").await;
    let other = op
        .add_strategy("hb-b", "heartbeat", json!({"interval_ms": 200}))
        .await;
    op.run_ok(Some(other), "start", json!({})).await;
    assert_eq!(
        owners(&engine, &[other]).await[&other].as_deref(),
        Some("node-b")
    );
    assert_eq!(owners(&engine, &[id]).await[&id].as_deref(), Some("node-a"));
    assert!(!executors_alive_together(&b.control_socket()).contains_key(&id));
    assert!(common::process_alive(pid));

    // node-a comes back: it adopts its executor (same pid) and serves its commands.
    let a = start_node(&engine, "node-a").await;
    let executors = executors_alive_together(&a.control_socket());
    assert_eq!(executors.get(&id), Some(&vec![pid]));
    op.run_ok(Some(id), "restart", json!({})).await;
    let state = op.wait_status(id, "running").await;
    assert_ne!(state.pid.map(|p| p as u32), Some(pid));
    assert!(wait_gone(pid).await, "the old executor stopped");
    a.kill().await;
    b.kill().await;
    engine.finish().await;
}

/// Wait (bounded) for a process to be gone.
async fn wait_gone(pid: u32) -> bool {
    common::try_wait_for(Duration::from_secs(10), || async move {
        (!common::process_alive(pid)).then_some(())
    })
    .await
    .is_some()
}
