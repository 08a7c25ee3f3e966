//! Cluster nodes for the tests of several managers (CONTRACT.md §7): each node is the
//! real `engine-manager` binary with `--cluster`, its own `--node` and state
//! directory, on the test's database and Redis namespace.

use super::{executors_alive_together, manager_env, sigkill, spawn_manager_binary, wait_for};
use super::{TestEngine, DEADLINE};
use std::collections::HashMap;
use std::path::PathBuf;
use uuid::Uuid;

/// One manager binary of the test: its name, process and state directory. Dropped,
/// it is SIGKILLed with its executors.
pub struct Node {
    pub name: String,
    pub child: tokio::process::Child,
    pub state_dir: PathBuf,
    /// Dropped, leave its executors alone (their manager was killed or stopped on
    /// purpose, and a node started again under its name adopts them).
    keep_executors: bool,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// Send the manager `signal` (SIGSTOP, SIGCONT, SIGTERM…).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a manager pid");
        rustix::process::kill_process(pid, signal).expect("signal the manager");
    }

    /// Its executors, by strategy.
    pub fn executors(&self) -> HashMap<Uuid, Vec<u32>> {
        executors_alive_together(&self.control_socket())
    }

    /// SIGKILL the manager alone (its executors live on until their lease runs
    /// out); wait for it to be gone. A node started again under its name (same
    /// state directory) adopts them.
    pub async fn kill_manager(mut self) {
        sigkill(self.pid());
        let _ = self.child.wait().await;
        self.keep_executors = true;
    }

    /// Forget a node whose manager has exited (e.g. on SIGTERM), leaving its
    /// executors to the node started again under its name.
    pub fn forget(mut self) {
        self.keep_executors = true;
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
        if !self.keep_executors {
            self.kill_executors();
        }
    }
}

/// The environment of a manager of `engine` named `name`, with its own state
/// directory; `cluster` adds `--cluster`; `extra` is added last (e.g.
/// `ENGINE_LEASE_TIME`, `ENGINE_CAPACITY`).
pub fn node_env(
    engine: &TestEngine,
    name: &str,
    cluster: bool,
    extra: &[(&str, &str)],
) -> (Vec<(String, String)>, PathBuf) {
    let mut config = engine.config.clone();
    config.state_dir = engine.state_dir.join(name);
    std::fs::create_dir_all(&config.state_dir).expect("node state dir");
    let mut env = manager_env(&config);
    env.push(("ENGINE_NODE".into(), name.into()));
    if cluster {
        env.push(("ENGINE_CLUSTER".into(), "true".into()));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (env, config.state_dir)
}

/// Start a cluster node named `name` (with `extra` environment) and wait until its
/// `engine_nodes` row is fresh.
pub async fn start_node_with(engine: &TestEngine, name: &str, extra: &[(&str, &str)]) -> Node {
    let (env, state_dir) = node_env(engine, name, true, extra);
    let log = state_dir.join("manager.log");
    let child = spawn_manager_binary(&env, &log);
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
        keep_executors: false,
    }
}

/// Start a cluster node named `name` with the default settings.
pub async fn start_node(engine: &TestEngine, name: &str) -> Node {
    start_node_with(engine, name, &[]).await
}

/// Each strategy's owner, by id.
pub async fn owners(engine: &TestEngine, ids: &[Uuid]) -> HashMap<Uuid, Option<String>> {
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, node FROM strategy_configs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&engine.pool)
            .await
            .unwrap();
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
