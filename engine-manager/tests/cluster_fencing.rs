//! Fencing and failover in a cluster (CONTRACT.md §7): executors trade under their
//! node's lease and exit by themselves when it runs out; a dead node's strategies start
//! on another node only after that deadline; a node that comes back to find its
//! strategies taken writes nothing with its old epoch and stops what is left. Every
//! manager is the real binary with its own `--node`, a 3 s lease, and its own state
//! directory; a sampler reads `/proc` every 20 ms throughout and fails the test if two
//! executors of one strategy are ever alive together, on any node.

mod common;

use common::cluster::{start_node_with, Node};
use common::db_proxy::DbProxy;
use common::processes::{executors_in_proc, ExecutorSeen};
use common::{sigkill, wait_for, Feed, TestEngine, DEADLINE};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const LEASE: &str = "3s";
const LEASE_TIME: Duration = Duration::from_secs(3);
/// Time between two ticks of the fault suite's feed (each one an order of every
/// running strategy).
const TICK_EVERY: Duration = Duration::from_millis(200);

/// Start cluster node `name` with a 3 s lease, its database reached at `database_url`
/// (the test's own, or a proxy to it), and `extra` environment.
async fn start_node(
    engine: &TestEngine,
    name: &str,
    database_url: Option<&str>,
    extra: &[(&str, &str)],
) -> Node {
    let mut env = vec![("ENGINE_LEASE_TIME", LEASE)];
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
    }
    env.extend_from_slice(extra);
    start_node_with(engine, name, &env).await
}

/// Reads `/proc` every 20 ms until stopped: every moment two executors of one strategy
/// were alive together (on any of `sockets`), re-checked after the scan so that an
/// executor that exited during it does not count.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, u64)>,
}

impl Sampler {
    fn start(sockets: Vec<PathBuf>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut doubles = Vec::new();
            let mut samples = 0u64;
            while !flag.load(Ordering::Acquire) {
                let mut by: HashMap<Uuid, Vec<ExecutorSeen>> = HashMap::new();
                for socket in &sockets {
                    for e in executors_in_proc(socket) {
                        by.entry(e.strategy_id).or_default().push(e);
                    }
                }
                for (id, seen) in by {
                    if seen.len() < 2 {
                        continue;
                    }
                    let alive: Vec<u32> = seen
                        .iter()
                        .filter(|e| {
                            engine_protocol::procfs::start_ticks(e.pid) == Some(e.start_ticks)
                        })
                        .map(|e| e.pid)
                        .collect();
                    if alive.len() > 1 {
                        doubles.push(format!("strategy {id}: executors {alive:?} alive together"));
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (doubles, samples)
        });
        Sampler { stop, thread }
    }

    /// Stop; assert there never were two executors of one strategy.
    fn check(self) {
        self.stop.store(true, Ordering::Release);
        let (doubles, samples) = self.thread.join().expect("sampler");
        // A scan of /proc takes a while on a loaded machine: at least a few.
        assert!(samples >= 3, "the sampler ran ({samples} samples)");
        assert!(
            doubles.is_empty(),
            "two executors of one strategy: {doubles:?}"
        );
    }
}

/// Each strategy's owner and epoch.
async fn owners(engine: &TestEngine, ids: &[Uuid]) -> HashMap<Uuid, (Option<String>, i64)> {
    let rows: Vec<(Uuid, Option<String>, i64)> =
        sqlx::query_as("SELECT id, node, lease_epoch FROM strategy_configs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(id, n, e)| (id, (n, e))).collect()
}

/// Add and start `n` heartbeat strategies; wait until each runs.
async fn start_strategies(engine: &TestEngine, prefix: &str, n: usize) -> Vec<Uuid> {
    let op = engine.op();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = op
            .add_strategy(
                &format!("{prefix}-{i}"),
                "heartbeat",
                json!({"interval_ms": 100}),
            )
            .await;
        op.run_ok(Some(id), "start", json!({})).await;
        ids.push(id);
    }
    ids
}

/// The strategies of `ids` owned by `node`.
async fn owned_by(engine: &TestEngine, ids: &[Uuid], node: &str) -> Vec<Uuid> {
    owners(engine, ids)
        .await
        .into_iter()
        .filter(|(_, (n, _))| n.as_deref() == Some(node))
        .map(|(id, _)| id)
        .collect()
}

/// Wait until every one of `ids` is `running` on `node`, with a live executor there
/// whose pid the row names.
async fn wait_running_on(engine: &TestEngine, ids: &[Uuid], node: &Node, within: Duration) {
    let pool = engine.pool.clone();
    let socket = node.control_socket();
    let name = node.name.clone();
    wait_for(&format!("{ids:?} running on {name}"), within, || {
        let pool = pool.clone();
        let socket = socket.clone();
        let name = name.clone();
        async move {
            let rows: Vec<(Uuid, Option<String>, String, Option<i32>)> = sqlx::query_as(
                "SELECT id, node, status, pid FROM strategy_configs WHERE id = ANY($1)",
            )
            .bind(ids)
            .fetch_all(&pool)
            .await
            .ok()?;
            let live = executors_in_proc(&socket);
            let all = rows.len() == ids.len()
                && rows.iter().all(|(id, n, status, pid)| {
                    n.as_deref() == Some(&*name)
                        && status == "running"
                        && live
                            .iter()
                            .any(|e| e.strategy_id == *id && Some(e.pid as i32) == *pid)
                });
            all.then_some(())
        }
    })
    .await;
}

/// Wait until `node` beats later than `at` (seconds since the epoch).
async fn wait_beat_after(engine: &TestEngine, node: &str, at: f64) {
    let pool = engine.pool.clone();
    wait_for(
        &format!("{node} to beat after {at}"),
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let now: f64 = sqlx::query_scalar(
                "SELECT extract(epoch FROM heartbeat_at)::float8 FROM engine_nodes WHERE node = $1",
            )
            .bind(node)
            .fetch_one(&pool)
            .await
            .ok()?;
                (now > at).then_some(())
            }
        },
    )
    .await;
}

/// The node's `heartbeat_at`, as seconds since the epoch.
async fn heartbeat(engine: &TestEngine, node: &str) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM heartbeat_at)::float8 FROM engine_nodes WHERE node = $1",
    )
    .bind(node)
    .fetch_one(&engine.pool)
    .await
    .unwrap()
}

/// How long after `since` (seconds since the epoch) each strategy's current executor
/// started (`started_at`), in seconds.
async fn started_after(engine: &TestEngine, ids: &[Uuid], since: f64) -> Vec<f64> {
    let rows: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 FROM strategy_configs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    rows.into_iter().map(|at| at - since).collect()
}

/// The `failover` events of `ids`, by strategy.
async fn failover_events(
    engine: &TestEngine,
    ids: &[Uuid],
) -> HashMap<Uuid, Vec<(String, String)>> {
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT strategy_id, node, error FROM strategy_events \
         WHERE strategy_id = ANY($1) AND reason = 'failover' ORDER BY at",
    )
    .bind(ids)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    let mut by: HashMap<Uuid, Vec<(String, String)>> = HashMap::new();
    for (id, node, error) in rows {
        by.entry(id)
            .or_default()
            .push((node, error.unwrap_or_default()));
    }
    by
}

/// Two nodes, some strategies on each; the ids on `node-a`.
async fn two_nodes_with_strategies(
    engine: &TestEngine,
    a_url: Option<&str>,
) -> (Node, Node, Vec<Uuid>, Vec<Uuid>) {
    let a = start_node(engine, "node-a", a_url, &[]).await;
    // node-a alone first: it takes these.
    let on_a = start_strategies(engine, "a", 3).await;
    let b = start_node(engine, "node-b", None, &[]).await;
    let on_b = start_strategies(engine, "b", 1).await;
    assert_eq!(owned_by(engine, &on_a, "node-a").await.len(), 3);
    (a, b, on_a, on_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_trade_on_across_many_renewals_of_a_short_lease() {
    let engine = TestEngine::new().await;
    let a = start_node(&engine, "node-a", None, &[]).await;
    let ids = start_strategies(&engine, "hb", 2).await;
    let op = engine.op();
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(op.state(*id).await.pid.unwrap());
    }
    // Three lease times of renewals (by the node's own heartbeat).
    let since = heartbeat(&engine, "node-a").await;
    wait_beat_after(&engine, "node-a", since + 3.0 * LEASE_TIME.as_secs_f64()).await;
    for (id, pid) in ids.iter().zip(pids) {
        let state = op.state(*id).await;
        assert_eq!(state.status, "running");
        assert_eq!(state.pid, Some(pid), "the same executor, renewed all along");
        assert_eq!(state.restart_count, 0);
        assert!(common::process_alive(pid as u32));
    }
    let log = std::fs::read_to_string(a.state_dir.join("manager.log")).unwrap();
    assert!(!log.contains("lease lapsed"), "{log}");
    a.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_fails_over_every_strategy_once_soon_after_its_lease() {
    let engine = TestEngine::new().await;
    let (a, b, on_a, on_b) = two_nodes_with_strategies(&engine, None).await;
    let epochs = owners(&engine, &on_a).await;
    let sampler = Sampler::start(vec![a.control_socket(), b.control_socket()]);

    // The host dies: its manager and executors at once.
    let last = heartbeat(&engine, "node-a").await;
    a.kill().await;
    wait_running_on(&engine, &on_a, &b, Duration::from_secs(30)).await;
    sampler.check();

    // Each started on node-b after node-a's lease ran out, within the contract's 15 s.
    let taken = started_after(&engine, &on_a, last).await;
    for t in &taken {
        assert!(
            *t >= LEASE_TIME.as_secs_f64(),
            "started {t:.2}s after the last heartbeat"
        );
        assert!(*t <= 15.0, "started {t:.2}s after the last heartbeat");
    }
    eprintln!("takeover after the last heartbeat (s): {taken:?}");
    let now = owners(&engine, &on_a).await;
    let events = failover_events(&engine, &on_a).await;
    for id in &on_a {
        assert_eq!(now[id].1, epochs[id].1 + 1, "one more epoch");
        let ev = &events[id];
        assert_eq!(ev.len(), 1, "one failover event: {ev:?}");
        assert_eq!(ev[0].0, "node-b");
        assert!(
            ev[0].1.contains("node node-a stopped renewing"),
            "{:?}",
            ev[0]
        );
    }
    // node-b's own strategy was not disturbed.
    assert_eq!(engine.op().state(on_b[0]).await.restart_count, 0);
    b.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_alone_leaves_executors_that_exit_at_the_deadline_before_the_new_owner_starts(
) {
    let engine = TestEngine::new().await;
    let (a, b, on_a, _) = two_nodes_with_strategies(&engine, None).await;
    let op = engine.op();
    let mut old = Vec::new();
    for id in &on_a {
        old.push(op.state(*id).await.pid.unwrap() as u32);
    }
    let sampler = Sampler::start(vec![a.control_socket(), b.control_socket()]);
    let a_socket = a.control_socket();
    // The manager alone: its executors are left running, unrenewed.
    sigkill(a.pid());
    let a_dir = a.state_dir.clone();
    a.kill_manager().await;
    for pid in &old {
        assert!(
            common::process_alive(*pid),
            "executors outlive their manager for now"
        );
    }
    wait_running_on(&engine, &on_a, &b, Duration::from_secs(30)).await;
    sampler.check();
    for pid in &old {
        assert!(
            !common::process_alive(*pid),
            "the old executor {pid} exited"
        );
    }
    assert!(executors_in_proc(&a_socket).is_empty());
    // They said why on their way out (in their logs).
    let logs = std::fs::read_dir(a_dir.join("logs")).unwrap();
    let mut said = 0;
    for entry in logs.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.contains("lease ran out") {
            said += 1;
        }
    }
    assert_eq!(said, on_a.len(), "each old executor logged its lease's end");
    b.kill().await;
    engine.finish().await;
}

/// Events written by `node` about `ids` after `since` (seconds since the epoch).
async fn events_by_after(engine: &TestEngine, ids: &[Uuid], node: &str, since: f64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM strategy_events WHERE strategy_id = ANY($1) AND node = $2 \
         AND extract(epoch FROM at) > $3",
    )
    .bind(ids)
    .bind(node)
    .bind(since)
    .fetch_one(&engine.pool)
    .await
    .unwrap()
}

/// What node-b's executors of `ids` are: (pid, status) of each row.
async fn rows_of(
    engine: &TestEngine,
    ids: &[Uuid],
) -> Vec<(Uuid, Option<String>, String, Option<i32>)> {
    let mut rows: Vec<(Uuid, Option<String>, String, Option<i32>)> =
        sqlx::query_as("SELECT id, node, status, pid FROM strategy_configs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    rows.sort();
    rows
}

/// After a node came back from being cut off (frozen, or its database unreachable):
/// the strategies stay node-b's, untouched by node-a, which runs nothing of them and
/// beats again; node-a still serves (a new strategy can be placed on it).
async fn assert_came_back_harmless(engine: &TestEngine, a: &Node, on_a: &[Uuid], taken_at: f64) {
    let before = rows_of(engine, on_a).await;
    // node-a beats again, for a second and more (it is alive, and had time to act
    // on what it found).
    let back: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    wait_beat_after(engine, "node-a", back + 1.0).await;
    // And its poll dropped its supervisors of them: its log says so.
    let log_path = a.state_dir.join("manager.log");
    wait_for(
        "node-a to drop what it lost",
        Duration::from_secs(30),
        || {
            let log_path = log_path.clone();
            async move {
                let log = std::fs::read_to_string(&log_path).ok()?;
                (log.matches("its supervisor here ended").count() >= on_a.len()).then_some(())
            }
        },
    )
    .await;
    assert!(executors_in_proc(&a.control_socket()).is_empty());
    assert_eq!(
        rows_of(engine, on_a).await,
        before,
        "node-a wrote nothing about them"
    );
    assert_eq!(events_by_after(engine, on_a, "node-a", taken_at).await, 0);
    for (_, node, status, _) in &before {
        assert_eq!(node.as_deref(), Some("node-b"));
        assert_eq!(status, "running");
    }
    // node-a serves again: the least loaded, it takes the next strategy, and runs it
    // under a lease of its own.
    let fresh = start_strategies(engine, "after", 1).await;
    let owner = owners(engine, &fresh).await;
    assert_eq!(owner[&fresh[0]].0.as_deref(), Some("node-a"));
    wait_running_on(engine, &fresh, a, DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_manager_wakes_to_find_its_strategies_taken_and_writes_nothing() {
    let engine = TestEngine::new().await;
    let (a, b, on_a, _) = two_nodes_with_strategies(&engine, None).await;
    let sampler = Sampler::start(vec![a.control_socket(), b.control_socket()]);
    a.signal(rustix::process::Signal::STOP);
    wait_running_on(&engine, &on_a, &b, Duration::from_secs(30)).await;
    let taken_at: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    a.signal(rustix::process::Signal::CONT);
    assert_came_back_harmless(&engine, &a, &on_a, taken_at).await;
    sampler.check();
    a.kill().await;
    b.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_stops_its_executors_and_comes_back_harmless() {
    let engine = TestEngine::new().await;
    let proxy = DbProxy::start(&engine.db_url).await;
    let (a, b, on_a, _) = two_nodes_with_strategies(&engine, Some(&proxy.url)).await;
    let op = engine.op();
    let mut old = Vec::new();
    for id in &on_a {
        old.push(op.state(*id).await.pid.unwrap() as u32);
    }
    let sampler = Sampler::start(vec![a.control_socket(), b.control_socket()]);
    // node-a's manager runs on, but cannot reach PostgreSQL: it cannot renew.
    proxy.cut();
    wait_running_on(&engine, &on_a, &b, Duration::from_secs(30)).await;
    for pid in &old {
        assert!(
            !common::process_alive(*pid),
            "node-a's executor {pid} stopped at its deadline"
        );
    }
    let taken_at: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    proxy.restore();
    assert_came_back_harmless(&engine, &a, &on_a, taken_at).await;
    sampler.check();
    a.kill().await;
    b.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_running_run_is_started_again_once_on_the_new_owner() {
    let engine = TestEngine::new().await;
    engine.seed_one_security().await;
    // Runs are a stand-in that sleeps: 4 s, long enough to be cut by the host's death.
    let fake = common::write_executable(&engine.state_dir, "fake_run.py", common::SLEEPING_RUN);
    let fake = fake.display().to_string();
    let runs_by_fake = [("ENGINE_EXECUTOR_PATH", fake.as_str())];
    let a = start_node(&engine, "node-a", None, &runs_by_fake).await;
    let strategy = engine
        .add_strategy("slow", "heartbeat", json!({"sleep_s": 4}), false)
        .await;
    let run: Uuid = sqlx::query_scalar(
        "INSERT INTO strategy_runs (strategy_id, mode, parameters) VALUES ($1, 'screener', '{}') RETURNING id",
    )
    .bind(strategy)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    let pool = engine.pool.clone();
    let run_on = |node: &'static str, state: &'static str| {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                let row: (String, Option<String>, i32, i64) = sqlx::query_as(
                    "SELECT state, node, attempt, lease_epoch FROM strategy_runs WHERE id = $1",
                )
                .bind(run)
                .fetch_one(&pool)
                .await
                .ok()?;
                (row.0 == state && row.1.as_deref() == Some(node)).then_some(row)
            }
        }
    };
    let first = wait_for(
        "the run running on node-a",
        DEADLINE,
        run_on("node-a", "running"),
    )
    .await;
    let b = start_node(&engine, "node-b", None, &runs_by_fake).await;
    // The host dies mid-run: its manager and the run's process.
    let runs_dir = engine_protocol::runs::runs_dir(&a.state_dir);
    let a_pid = a.pid();
    sigkill(a_pid);
    for (_, procs) in engine_manager::process::scan_runs(&runs_dir) {
        for (pid, _) in procs {
            sigkill(pid);
        }
    }
    let done = wait_for(
        "the run completed on node-b",
        Duration::from_secs(40),
        run_on("node-b", "completed"),
    )
    .await;
    assert_eq!(first.2, 0);
    assert_eq!(done.2, 1, "started again once, as a lost run is");
    assert_eq!(done.3, first.3 + 1, "under node-b's epoch");
    assert_eq!(
        owners(&engine, &[strategy]).await[&strategy].0.as_deref(),
        Some("node-b")
    );
    a.kill().await;
    b.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_keeps_every_strategy_up() {
    let engine = TestEngine::new().await;
    // The default lease (10 s): each node is back well within it.
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(common::cluster::start_node(&engine, name).await);
    }
    let ids = start_strategies(&engine, "hb", 6).await;
    let before = rows_of(&engine, &ids).await;
    let since: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    let sockets: Vec<PathBuf> = nodes.iter().map(|n| n.control_socket()).collect();
    let sampler = Sampler::start(sockets);
    for i in 0..nodes.len() {
        let mut node = nodes.remove(i);
        let name = node.name.clone();
        let log_path = node.state_dir.join("manager.log");
        let earlier = std::fs::read_to_string(&log_path).unwrap_or_default().len();
        node.signal(rustix::process::Signal::TERM);
        let exit = tokio::time::timeout(DEADLINE, node.child.wait())
            .await
            .expect("the node stops on SIGTERM")
            .unwrap();
        assert!(exit.success(), "{name} exited {exit}");
        node.forget();
        let back = common::cluster::start_node(&engine, &name).await;
        // It adopted its executors: each of its strategies reports to it again.
        let mine: Vec<Uuid> = before
            .iter()
            .filter(|(_, n, _, _)| n.as_deref() == Some(&*name))
            .map(|(id, ..)| *id)
            .collect();
        wait_for(&format!("{name} to adopt its executors"), DEADLINE, || {
            let log_path = log_path.clone();
            let want = mine.len();
            async move {
                let log = std::fs::read_to_string(&log_path).ok()?;
                let adopted = log
                    .get(earlier..)?
                    .matches("adopted a running executor")
                    .count();
                (adopted >= want).then_some(())
            }
        })
        .await;
        wait_running_on(&engine, &mine, &back, DEADLINE).await;
        nodes.insert(i, back);
    }
    sampler.check();
    assert_eq!(
        rows_of(&engine, &ids).await,
        before,
        "same owners, same executors"
    );
    for id in &ids {
        assert_eq!(engine.op().state(*id).await.restart_count, 0);
    }
    assert!(failover_events(&engine, &ids).await.is_empty());
    let since_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM strategy_events WHERE strategy_id = ANY($1) AND extract(epoch FROM at) > $2 \
         AND new_status <> 'running'",
    )
    .bind(&ids)
    .bind(since)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert_eq!(since_events, 0, "no strategy left running meanwhile");
    for node in nodes {
        node.kill().await;
    }
    engine.finish().await;
}

/// One fault of the cluster fault suite, on node-a.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The host dies: manager and executors SIGKILLed; node-a starts again later.
    KillHost,
    /// The manager alone SIGKILLed; started again later (its executors may have
    /// stopped at their deadline by then, and their strategies moved).
    KillManager,
    /// SIGSTOP for twice the lease, then SIGCONT.
    Freeze,
    /// Its connections to PostgreSQL cut for twice the lease, then let through.
    CutDatabase,
}

/// The cluster fault suite (CONTRACT.md §7): three nodes with a 3 s lease, nine
/// strategies trading paper orders on every tick of a feed, and `CLUSTER_FAULT_ROUNDS` rounds (default 4: one of each fault) of a
/// fault on node-a while commands (pause, resume, restart) flow to random
/// strategies. Checked throughout: never two executors of one strategy alive
/// together (the /proc sampler); checked every round: every command ends, every
/// strategy that should run runs on a live node with one executor, no order was
/// placed under an epoch the strategy had left (and orders still flow), and no
/// `strategy_events` row is written by a node under an epoch the strategy had left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fault_suite_kills_freezes_and_cuts_while_commands_flow() {
    let rounds: usize = std::env::var("CLUSTER_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let engine = TestEngine::new().await;
    let proxy = DbProxy::start(&engine.db_url).await;
    let mut a = start_node(&engine, "node-a", Some(&proxy.url), &[]).await;
    let b = start_node(&engine, "node-b", None, &[]).await;
    let c = start_node(&engine, "node-c", None, &[]).await;
    // The strategies trade on every tick of their token: orders flow throughout.
    let token = format!("CF-{}", Uuid::new_v4().simple());
    let ids = start_traders(&engine, "f", 9, &token).await;
    let _feed = Feed::start(&engine, &token, &[100.0, 101.0], TICK_EVERY).await;
    wait_every_strategy_trades(&engine, &ids).await;
    let mut orders_before = 0;
    let sockets = vec![a.control_socket(), b.control_socket(), c.control_socket()];
    let sampler = Sampler::start(sockets);
    let op = engine.op();
    let faults = [
        Fault::KillHost,
        Fault::KillManager,
        Fault::Freeze,
        Fault::CutDatabase,
    ];
    for round in 0..rounds {
        let fault = faults[round % faults.len()];
        // Commands flow to random strategies through the fault.
        let flow = command_flow(op.clone(), ids.clone());
        eprintln!("round {round}: {fault:?} on node-a");
        let two_leases = LEASE_TIME * 2;
        match fault {
            Fault::KillHost => {
                a.kill().await;
                tokio::time::sleep(two_leases).await;
                a = start_node(&engine, "node-a", Some(&proxy.url), &[]).await;
            }
            Fault::KillManager => {
                a.kill_manager().await;
                tokio::time::sleep(two_leases).await;
                a = start_node(&engine, "node-a", Some(&proxy.url), &[]).await;
            }
            Fault::Freeze => {
                a.signal(rustix::process::Signal::STOP);
                tokio::time::sleep(two_leases).await;
                a.signal(rustix::process::Signal::CONT);
            }
            Fault::CutDatabase => {
                proxy.cut();
                tokio::time::sleep(two_leases).await;
                proxy.restore();
            }
        }
        // Every command ends.
        let sent = flow.await.unwrap();
        for id in sent {
            let end = op.outcome(id, Duration::from_secs(60)).await;
            assert!(
                end.status == "executed" || end.status == "failed",
                "round {round}: command {id} ended {}",
                end.status
            );
        }
        // Every strategy that should run runs, once, on a live node; paused ones
        // are paused there.
        let sockets = [a.control_socket(), b.control_socket(), c.control_socket()];
        wait_settled(&engine, &sockets, &ids, round).await;
        // No order under an epoch the strategy had left; orders still flow.
        orders_before = check_orders(&engine, &ids, round, orders_before).await;
    }
    sampler.check();
    check_orders_at_end(&engine, &ids, rounds).await;
    let stale = stale_events(&engine, &ids).await;
    assert_eq!(
        stale, 0,
        "events written by a node after it lost the strategy"
    );
    a.kill().await;
    b.kill().await;
    c.kill().await;
    engine.finish().await;
}

/// Twelve commands (pause, resume, restart) to random strategies of `ids`, 150–250 ms
/// apart; their ids.
fn command_flow(op: common::Operator, ids: Vec<Uuid>) -> tokio::task::JoinHandle<Vec<Uuid>> {
    use rand::seq::IndexedRandom;
    tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..12 {
            let (id, word) = {
                let mut rng = rand::rng();
                (
                    *ids.choose(&mut rng).unwrap(),
                    *["pause", "resume", "restart"].choose(&mut rng).unwrap(),
                )
            };
            sent.push(op.command(Some(id), word, json!({})).await);
            tokio::time::sleep(Duration::from_millis(150 + 50 * (i % 3))).await;
        }
        sent
    })
}

/// A strategy as the fault suite checks it: id, desired state, status, pid.
type Settled = (Uuid, String, String, Option<i32>);

/// Wait until every strategy of `ids` is owned by a live node and as its
/// `desired_state` says: `running` or `paused` with exactly one executor (on any of
/// `sockets`), the row's pid; otherwise none.
async fn wait_settled(engine: &TestEngine, sockets: &[PathBuf], ids: &[Uuid], round: usize) {
    let pool = engine.pool.clone();
    wait_for(
        &format!("round {round}: every strategy as it should be"),
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                let rows: Vec<Settled> = sqlx::query_as(
                    "SELECT c.id, c.desired_state, c.status, c.pid \
                     FROM strategy_configs c JOIN engine_nodes n ON n.node = c.node \
                     WHERE c.id = ANY($1) \
                       AND n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond'",
                )
                .bind(ids)
                .fetch_all(&pool)
                .await
                .ok()?;
                let mut live: HashMap<Uuid, Vec<u32>> = HashMap::new();
                for s in sockets {
                    for e in executors_in_proc(s) {
                        live.entry(e.strategy_id).or_default().push(e.pid);
                    }
                }
                let fine = rows.len() == ids.len()
                    && rows.iter().all(|(id, desired, status, pid)| {
                        let want = match desired.as_str() {
                            "running" => "running",
                            "paused" => "paused",
                            _ => return live.get(id).is_none_or(Vec::is_empty),
                        };
                        status == want
                            && live.get(id).map(Vec::as_slice)
                                == pid.map(|p| vec![p as u32]).as_deref()
                    });
                fine.then_some(())
            }
        },
    )
    .await;
}

/// How many `strategy_events` rows of `ids` a node wrote after it lost the strategy.
async fn stale_events(engine: &TestEngine, ids: &[Uuid]) -> i64 {
    // No event was written under an epoch the strategy had already left: no row a
    // node wrote about a strategy was inserted (by its id, the insertion order, not
    // by its `at`, which a late write would carry from before) after the failover
    // that took the strategy from that node, unless a later failover gave it back.
    sqlx::query_scalar(
        "SELECT count(*) FROM strategy_events e \
         WHERE e.strategy_id = ANY($1) AND e.reason IS DISTINCT FROM 'failover' \
           AND EXISTS (SELECT 1 FROM strategy_events f WHERE f.strategy_id = e.strategy_id \
                       AND f.reason = 'failover' AND f.id < e.id \
                       AND f.error LIKE 'node ' || e.node || ' stopped renewing%' \
                       AND NOT EXISTS (SELECT 1 FROM strategy_events g \
                                       WHERE g.strategy_id = e.strategy_id AND g.reason = 'failover' \
                                         AND g.node = e.node AND g.id > f.id AND g.id < e.id))",
    )
    .bind(ids)
    .fetch_one(&engine.pool)
    .await
    .unwrap()
}

/// Add and start `n` `sma_crossover` strategies of `token` with a 1-tick fast and a
/// 2-tick slow average: on a feed that turns at every tick, each tick is a cross and
/// an order.
async fn start_traders(engine: &TestEngine, prefix: &str, n: usize, token: &str) -> Vec<Uuid> {
    let op = engine.op();
    let config = json!({"token": token, "fast_period": 1, "slow_period": 2, "order_qty": 1.0});
    let mut ids = Vec::new();
    for i in 0..n {
        let id = op
            .add_strategy(&format!("{prefix}-{i}"), "sma_crossover", config.clone())
            .await;
        op.run_ok(Some(id), "start", json!({})).await;
        ids.push(id);
    }
    ids
}

/// An epoch a strategy was given (by a failover, move or drain), and when (the
/// database's clock).
#[derive(Debug, Clone, sqlx::FromRow)]
struct Grant {
    strategy_id: Uuid,
    epoch: i64,
    at: chrono::DateTime<chrono::Utc>,
}

/// A live order as `strategy_orders` holds it (`at`: when it filled).
#[derive(Debug, Clone, sqlx::FromRow)]
struct PlacedOrder {
    strategy_id: Uuid,
    client_order_id: String,
    lease_epoch: i64,
    at: chrono::DateTime<chrono::Utc>,
}

/// The epochs `ids` were given, from the `failover`, `move` and `drain` events
/// (each says `lease epoch N`).
async fn grants(engine: &TestEngine, ids: &[Uuid]) -> Vec<Grant> {
    sqlx::query_as(
        "SELECT strategy_id, substring(error FROM 'lease epoch ([0-9]+)')::int8 AS epoch, at \
         FROM strategy_events WHERE strategy_id = ANY($1) \
           AND reason IN ('failover', 'move', 'drain') AND error ~ 'lease epoch [0-9]+'",
    )
    .bind(ids)
    .fetch_all(&engine.pool)
    .await
    .unwrap()
}

/// Every live order of `ids`.
async fn placed_orders(engine: &TestEngine, ids: &[Uuid]) -> Vec<PlacedOrder> {
    sqlx::query_as(
        "SELECT strategy_id, client_order_id, lease_epoch, at FROM strategy_orders \
         WHERE strategy_id = ANY($1) AND run_id IS NULL ORDER BY at, id",
    )
    .bind(ids)
    .fetch_all(&engine.pool)
    .await
    .unwrap()
}

/// What is wrong with `orders`, given the epochs the strategies were given: an order
/// filled under an epoch lower than one its strategy had already been given before
/// the fill (a stale owner traded), or whose client order id's `e{epoch}` is not the
/// row's epoch.
fn stale_orders(grants: &[Grant], orders: &[PlacedOrder]) -> Vec<String> {
    let mut wrong = Vec::new();
    for order in orders {
        let in_id = order
            .client_order_id
            .strip_prefix('e')
            .and_then(|rest| rest.split('-').next())
            .and_then(|epoch| epoch.parse::<i64>().ok());
        if in_id != Some(order.lease_epoch) {
            wrong.push(format!(
                "order {} of {} is recorded under epoch {}, its id says {in_id:?}",
                order.client_order_id, order.strategy_id, order.lease_epoch
            ));
        }
        let newer = grants
            .iter()
            .filter(|g| g.strategy_id == order.strategy_id)
            .filter(|g| g.epoch > order.lease_epoch && g.at < order.at)
            .max_by_key(|g| g.epoch);
        if let Some(g) = newer {
            wrong.push(format!(
                "order {} of {} filled at {} under epoch {}, after epoch {} was given at {}",
                order.client_order_id,
                order.strategy_id,
                order.at,
                order.lease_epoch,
                g.epoch,
                g.at
            ));
        }
    }
    wrong
}

/// The fault suite's check of a round: no stale order, and more orders than
/// `before` (they flow); the count now.
async fn check_orders(engine: &TestEngine, ids: &[Uuid], round: usize, before: usize) -> usize {
    // The orders writer flushes every 100 ms: wait for orders of this round.
    let placed = wait_for(
        &format!("round {round}: orders beyond the {before} of earlier rounds"),
        Duration::from_secs(30),
        || async {
            let placed = placed_orders(engine, ids).await;
            (placed.len() > before).then_some(placed)
        },
    )
    .await;
    let stale = stale_orders(&grants(engine, ids).await, &placed);
    assert!(stale.is_empty(), "round {round}: {stale:#?}");
    eprintln!("round {round}: {} orders, none stale", placed.len());
    placed.len()
}

#[test]
fn the_order_check_flags_a_stale_epoch_and_an_id_that_disagrees() {
    let strategy = Uuid::new_v4();
    let t0 = chrono::Utc::now();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let order = |id: &str, epoch: i64, s: i64| PlacedOrder {
        strategy_id: strategy,
        client_order_id: id.to_string(),
        lease_epoch: epoch,
        at: at(s),
    };
    // Epoch 2 given at 10 s (a failover), epoch 3 at 20 s (a move).
    let grants = [
        Grant {
            strategy_id: strategy,
            epoch: 2,
            at: at(10),
        },
        Grant {
            strategy_id: strategy,
            epoch: 3,
            at: at(20),
        },
        // Another strategy's grant says nothing of this one's orders.
        Grant {
            strategy_id: Uuid::new_v4(),
            epoch: 9,
            at: at(1),
        },
    ];
    let orders = [
        order("e1-0000abcd-s1-1", 1, 5),  // fine: before epoch 2
        order("e2-0000abcd-s2-1", 2, 11), // fine: its owner's
        order("e1-0000abcd-s1-2", 1, 12), // stale: epoch 2 was given at 10 s
        order("e3-0000abcd-s3-1", 2, 15), // its id disagrees with the row
        order("e2-0000abcd-s2-2", 2, 21), // stale: epoch 3 was given at 20 s
        order("e3-0000abcd-s3-2", 3, 22), // fine
    ];
    let wrong = stale_orders(&grants, &orders);
    assert_eq!(wrong.len(), 3, "{wrong:#?}");
    assert!(wrong[0].contains("e1-0000abcd-s1-2") && wrong[0].contains("after epoch 2"));
    assert!(wrong[1].contains("e3-0000abcd-s3-1") && wrong[1].contains("its id says Some(3)"));
    assert!(wrong[2].contains("e2-0000abcd-s2-2") && wrong[2].contains("after epoch 3"));
    // Without the grants, only the disagreeing id is flagged.
    assert_eq!(stale_orders(&[], &orders).len(), 1);
}

/// Wait until each of `ids` has placed an order (before the faults begin: the
/// strategies on node-a trade too).
async fn wait_every_strategy_trades(engine: &TestEngine, ids: &[Uuid]) {
    wait_for("an order of every strategy", DEADLINE, || async {
        let placed = placed_orders(engine, ids).await;
        let all = ids
            .iter()
            .all(|id| placed.iter().any(|o| o.strategy_id == *id));
        all.then_some(())
    })
    .await;
}

/// After the fault suite's `rounds`: no stale order (those a cut-off node wrote late
/// included), and a strategy traded under two epochs (it failed over and traded on).
async fn check_orders_at_end(engine: &TestEngine, ids: &[Uuid], rounds: usize) {
    let placed = placed_orders(engine, ids).await;
    let stale = stale_orders(&grants(engine, ids).await, &placed);
    assert!(stale.is_empty(), "at the end: {stale:#?}");
    let moved_on = ids.iter().any(|id| {
        let epochs: std::collections::HashSet<i64> = placed
            .iter()
            .filter(|o| o.strategy_id == *id)
            .map(|o| o.lease_epoch)
            .collect();
        epochs.len() > 1
    });
    assert!(
        rounds == 0 || moved_on,
        "a strategy that failed over traded under its new epoch too"
    );
}

/// Wait until every one of `commands` is `processing`; each row's `claimed_by`.
async fn wait_processing(engine: &TestEngine, commands: &[Uuid]) -> Vec<Option<String>> {
    let pool = engine.pool.clone();
    wait_for("the commands to be claimed", DEADLINE, || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT status, claimed_by FROM strategy_commands \
                 WHERE id = ANY($1) ORDER BY created_at, seq",
            )
            .bind(commands)
            .fetch_all(&pool)
            .await
            .ok()?;
            let claimed = rows.len() == commands.len()
                && rows.iter().all(|(status, _)| status == "processing");
            claimed.then(|| rows.into_iter().map(|(_, by)| by).collect())
        }
    })
    .await
}

/// Each command's status, error and `claimed_by`, in `commands`' order.
async fn command_rows(
    engine: &TestEngine,
    commands: &[Uuid],
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut rows = Vec::new();
    for id in commands {
        rows.push(
            sqlx::query_as("SELECT status, error, claimed_by FROM strategy_commands WHERE id = $1")
                .bind(id)
                .fetch_one(&engine.pool)
                .await
                .unwrap(),
        );
    }
    rows
}

/// The events a command left: `(node, old status, new status)`, in order.
async fn command_events(engine: &TestEngine, command: Uuid) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT node, COALESCE(old_status, ''), new_status FROM strategy_events \
         WHERE command_id = $1 ORDER BY at",
    )
    .bind(command)
    .fetch_all(&engine.pool)
    .await
    .unwrap()
}

/// The strategy is paused on node-b, by its one executor (not node-a's first one);
/// the pause (`commands[1]`) was applied once, there, and the restart (`commands[0]`)
/// needed no second start (the failover's start came after it was sent). Returns
/// the pause's events.
async fn assert_applied_once_on_b(
    engine: &TestEngine,
    b: &Node,
    id: Uuid,
    first_pid: i32,
    commands: &[Uuid; 2],
) -> Vec<(String, String, String)> {
    let [restart, pause] = *commands;
    let state = engine.op().wait_status(id, "paused").await;
    assert_eq!(owned_by(engine, &[id], "node-b").await, vec![id]);
    let on_b = executors_in_proc(&b.control_socket());
    let mine: Vec<u32> = on_b
        .iter()
        .filter(|e| e.strategy_id == id)
        .map(|e| e.pid)
        .collect();
    assert_eq!(mine.len(), 1, "one executor on node-b: {on_b:?}");
    assert_eq!(state.pid, Some(mine[0] as i32));
    assert_ne!(state.pid, Some(first_pid));
    let paused = command_events(engine, pause).await;
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0].0, "node-b");
    assert_eq!(paused[0].2, "paused");
    let restarted = command_events(engine, restart).await;
    assert!(
        restarted
            .iter()
            .all(|(node, _, new)| node == "node-a" && new != "running"),
        "{restarted:?}"
    );
    paused
}

/// A frozen node-a wakes: once it has dropped the strategy taken from it and beaten
/// again, the rows and the pause's events are as node-b left them.
async fn assert_woken_node_overwrites_nothing(
    engine: &TestEngine,
    a: Node,
    commands: &[Uuid; 2],
    rows: &[(String, Option<String>, Option<String>)],
    paused: &[(String, String, String)],
) {
    a.signal(rustix::process::Signal::CONT);
    let log = a.state_dir.join("manager.log");
    wait_for(
        "node-a to drop the strategy taken from it",
        DEADLINE,
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("its supervisor here ended").then_some(())
        },
    )
    .await;
    let now = heartbeat(engine, "node-a").await;
    wait_beat_after(engine, "node-a", now).await;
    assert_eq!(command_rows(engine, commands).await, rows);
    assert_eq!(command_events(engine, commands[1]).await, paused);
    a.kill().await;
}

/// node-a alone takes a running strategy that takes 6 s to shut down, then node-b
/// joins: the two nodes and the strategy.
async fn slow_stopper_on_a(engine: &TestEngine) -> (Node, Node, Uuid) {
    let op = engine.op();
    let a = start_node(engine, "node-a", None, &[]).await;
    let id = op
        .add_strategy(
            "slow-stop",
            "heartbeat",
            json!({"interval_ms": 100, "shutdown_delay_ms": 6000}),
        )
        .await;
    op.run_ok(Some(id), "start", json!({})).await;
    let b = start_node(engine, "node-b", None, &[]).await;
    (a, b, id)
}

/// node-a claims a `restart` (slow: the strategy takes 6 s to shut down) and the
/// `pause` behind it, and dies (`freeze`: SIGSTOPped, else killed with its executors)
/// with both `processing`. node-b takes the strategy over by failover and the two rows
/// with it: both end `executed` by node-b soon after the lease, in order, each applied
/// once (one pause, on node-b's one executor). A frozen node-a that wakes writes no
/// outcome over them.
async fn claimed_commands_of_a_dead_node_end_on_the_new_owner(freeze: bool) {
    let engine = TestEngine::new().await;
    let op = engine.op();
    let (a, b, id) = slow_stopper_on_a(&engine).await;
    assert_eq!(owned_by(&engine, &[id], "node-a").await, vec![id]);
    let first_pid = op.state(id).await.pid.unwrap();

    let restart = op.command(Some(id), "restart", json!({})).await;
    let pause = op.command(Some(id), "pause", json!({})).await;
    let commands = [restart, pause];
    let claimed_by = wait_processing(&engine, &commands).await;
    assert_eq!(claimed_by, vec![Some("node-a".to_string()); 2]);
    let died = std::time::Instant::now();
    let a = if freeze {
        a.signal(rustix::process::Signal::STOP);
        Some(a)
    } else {
        a.kill().await;
        None
    };

    // The lease, then the failover's start: within the contract's 15 s.
    let ends = LEASE_TIME + Duration::from_secs(12);
    for command in commands {
        op.outcome(command, ends).await;
    }
    let took = died.elapsed();
    eprintln!("the rows ended {took:?} after node-a died");
    assert!(took < ends, "the rows ended {took:?} after node-a died");
    let rows = command_rows(&engine, &commands).await;
    for (status, error, by) in &rows {
        assert_eq!(status, "executed", "{rows:?}");
        assert_eq!(error, &None);
        assert_eq!(by.as_deref(), Some("node-b"), "{rows:?}");
    }
    let paused = assert_applied_once_on_b(&engine, &b, id, first_pid, &commands).await;

    if let Some(a) = a {
        assert_woken_node_overwrites_nothing(&engine, a, &commands, &rows, &paused).await;
    }
    b.kill().await;
    engine.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_claimed_restart_and_pause_are_carried_out_once_by_the_new_owner() {
    claimed_commands_of_a_dead_node_end_on_the_new_owner(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nodes_claimed_commands_are_taken_over_and_it_overwrites_nothing_on_waking() {
    claimed_commands_of_a_dead_node_end_on_the_new_owner(true).await;
}

/// A `stop` of a strategy that takes 6 s to shut down, claimed by node-a, which dies
/// mid-stop: the strategy (stopped by an operator now, so wanted by nobody else) is
/// claimed for its `processing` row, and node-b ends the row `executed`, with the
/// strategy stopped and no executor of it anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_claimed_stop_of_a_slow_strategy_ends_on_the_new_owner() {
    let engine = TestEngine::new().await;
    let op = engine.op();
    let (a, b, id) = slow_stopper_on_a(&engine).await;
    let stop = op.command(Some(id), "stop", json!({})).await;
    let claimed_by = wait_processing(&engine, &[stop]).await;
    assert_eq!(claimed_by, vec![Some("node-a".to_string())]);
    let died = std::time::Instant::now();
    a.kill().await;

    let ends = LEASE_TIME + Duration::from_secs(12);
    op.outcome(stop, ends).await;
    let took = died.elapsed();
    assert!(took < ends, "the row ended {took:?} after node-a died");
    let rows = command_rows(&engine, &[stop]).await;
    assert_eq!(
        rows,
        vec![("executed".to_string(), None, Some("node-b".to_string()))]
    );
    let state = op.wait_status(id, "stopped").await;
    assert_eq!(state.pid, None);
    assert_eq!(owned_by(&engine, &[id], "node-b").await, vec![id]);
    let on_b = executors_in_proc(&b.control_socket());
    assert!(on_b.iter().all(|e| e.strategy_id != id), "{on_b:?}");
    b.kill().await;
    engine.finish().await;
}
