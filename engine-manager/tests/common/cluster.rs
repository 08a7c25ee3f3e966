//! Cluster nodes for the tests (CONTRACT.md §7): the real `engine-manager` binary
//! with `--cluster`, its own `--node` and state directory, on one test's database
//! and Redis namespace; and where each strategy's executors are, node by node.

use super::{
    executors_alive_together, manager_env, sigkill, spawn_manager_binary, wait_for, TestEngine,
    DEADLINE,
};
use std::collections::HashMap;
use std::path::PathBuf;
use uuid::Uuid;

/// One manager binary of the test: its name, process and state directory. Dropped,
/// it is SIGKILLed with its executors.
pub struct Node {
    pub name: String,
    pub child: tokio::process::Child,
    pub state_dir: PathBuf,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// Its executors alive together now, by strategy.
    pub fn executors(&self) -> HashMap<Uuid, Vec<u32>> {
        executors_alive_together(&self.control_socket())
    }

    /// SIGKILL the manager and its executors; wait for the manager to be gone.
    pub async fn kill(mut self) {
        sigkill(self.pid());
        let _ = self.child.wait().await;
        self.kill_executors();
    }

    fn kill_executors(&self) {
        for pids in self.executors().values() {
            for pid in pids {
                sigkill(*pid);
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            sigkill(pid);
        }
        self.kill_executors();
    }
}

/// The environment of a cluster node of `engine` named `name`, with its own state
/// directory, and `extra` variables (e.g. `ENGINE_CAPACITY`).
pub fn node_env(
    engine: &TestEngine,
    name: &str,
    extra: &[(&str, &str)],
) -> (Vec<(String, String)>, PathBuf) {
    let mut config = engine.config.clone();
    config.state_dir = engine.state_dir.join(name);
    std::fs::create_dir_all(&config.state_dir).expect("node state dir");
    let mut env = manager_env(&config);
    env.push(("ENGINE_NODE".into(), name.into()));
    env.push(("ENGINE_CLUSTER".into(), "true".into()));
    for (key, value) in extra {
        env.push(((*key).into(), (*value).into()));
    }
    (env, config.state_dir)
}

/// Start cluster node `name` and wait until its `engine_nodes` row is fresh.
pub async fn start_node(engine: &TestEngine, name: &str, extra: &[(&str, &str)]) -> Node {
    let (env, state_dir) = node_env(engine, name, extra);
    let child = spawn_manager_binary(&env, &state_dir.join("manager.log"));
    let pid = child.id().expect("node pid") as i32;
    let pool = engine.pool.clone();
    wait_for(&format!("node {name} to join"), DEADLINE, || {
        let pool = pool.clone();
        async move {
            let row: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM engine_nodes WHERE node = $1 AND heartbeat_at > now() - interval '5 seconds'",
            )
            .bind(name)
            .fetch_optional(&pool)
            .await
            .ok()?;
            (row == Some(pid)).then_some(())
        }
    })
    .await;
    Node {
        name: name.to_string(),
        child,
        state_dir,
    }
}

/// Each strategy's owner (`strategy_configs.node`), by id.
pub async fn owners(engine: &TestEngine, ids: &[Uuid]) -> HashMap<Uuid, Option<String>> {
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, node FROM strategy_configs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&engine.pool)
            .await
            .expect("read owners");
    rows.into_iter().collect()
}

/// The executors of every node, by strategy: (node, pid) pairs.
pub fn executors_everywhere(nodes: &[&Node]) -> HashMap<Uuid, Vec<(String, u32)>> {
    let mut all: HashMap<Uuid, Vec<(String, u32)>> = HashMap::new();
    for node in nodes {
        for (id, pids) in node.executors() {
            for pid in pids {
                all.entry(id).or_default().push((node.name.clone(), pid));
            }
        }
    }
    all
}
