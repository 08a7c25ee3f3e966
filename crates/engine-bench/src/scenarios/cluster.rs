//! Cluster (issue #13): three `--cluster` nodes on one database, `--cluster-strategies`
//! heartbeat strategies placed among them, at each lease time of `--cluster-leases`:
//! - renewal statements: how often each node's `heartbeat_at` changes, with no
//!   strategy and with all of them running (one statement per beat, whatever the
//!   number of strategies);
//! - self-fencing: over `--cluster-window` with nothing failing, how many times a
//!   node's lease lapsed and how many executors were replaced;
//! - failover: the busiest node killed as a host dies (manager and executors,
//!   SIGKILL); for each of its strategies, the time from the node's last heartbeat to
//!   its new executor's `started_at` on another node.

use super::BenchContext;
use crate::engine::{self, ClusterNode, StrategySpec};
use crate::probe;
use crate::report::{Figure, Goal, Results};
use anyhow::{bail, Context as _};
use engine_protocol::procfs;
use rustix::process::Signal;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

pub async fn cluster(ctx: &BenchContext, results: &mut Results) -> anyhow::Result<()> {
    for &lease_s in &ctx.args.cluster_leases {
        let outcome = cluster_at(ctx, results, Duration::from_secs(lease_s)).await;
        ctx.cleanup.clean_all().await;
        outcome?;
    }
    Ok(())
}

/// Seconds since the epoch, as PostgreSQL's clock says.
async fn db_now(pool: &PgPool) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
            .fetch_one(pool)
            .await?,
    )
}

/// Each node's `heartbeat_at` (seconds since the epoch).
async fn heartbeats(pool: &PgPool) -> anyhow::Result<HashMap<String, f64>> {
    let rows: Vec<(String, f64)> =
        sqlx::query_as("SELECT node, extract(epoch FROM heartbeat_at)::float8 FROM engine_nodes")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Renewals per node per second over `window`: distinct `heartbeat_at` values seen.
async fn renewals_per_s(pool: &PgPool, window: Duration) -> anyhow::Result<f64> {
    let mut seen: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
    let until = Instant::now() + window;
    while Instant::now() < until {
        for (node, at) in heartbeats(pool).await? {
            seen.entry(node).or_default().insert(at.to_bits());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let nodes = seen.len().max(1) as f64;
    let changes: usize = seen.values().map(|s| s.len().saturating_sub(1)).sum();
    Ok(changes as f64 / nodes / window.as_secs_f64())
}

async fn wait_joined(pool: &PgPool, node: &ClusterNode) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let pid: Option<i32> = sqlx::query_scalar("SELECT pid FROM engine_nodes WHERE node = $1")
            .bind(&node.name)
            .fetch_optional(pool)
            .await?;
        if pid == Some(node.manager.pid as i32) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{} did not join within 60 s: {}", node.name, node.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until each of `ids` runs on a node other than `not_on`.
async fn wait_running(
    pool: &PgPool,
    ids: &[Uuid],
    not_on: Option<&str>,
    within: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM strategy_configs WHERE id = ANY($1) AND status = 'running' \
             AND node IS NOT NULL AND node IS DISTINCT FROM $2",
        )
        .bind(ids)
        .bind(not_on)
        .fetch_one(pool)
        .await?;
        if running as usize == ids.len() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "only {running} of {} strategies running after {} s",
                ids.len(),
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cluster_at(
    ctx: &BenchContext,
    results: &mut Results,
    lease: Duration,
) -> anyhow::Result<()> {
    let n = ctx.args.cluster_strategies;
    let lease_s = lease.as_secs();
    eprintln!("\n== cluster: 3 nodes, {n} strategies, lease {lease_s} s ==");
    let key = Uuid::new_v4().simple().to_string();
    let db_name = format!("bench_{key}");
    let prefix = format!("bench{}:", &key[..12]);
    let root = std::env::temp_dir().join(format!("engine-bench-{}", &key[..12]));
    let db_url = engine::cluster_database(&ctx.args, &ctx.binaries, &db_name, &root).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await
        .context("cannot connect to the bench database")?;
    let mut nodes = Vec::new();
    for name in NODES {
        let node = engine::start_cluster_node(
            &ctx.args,
            &ctx.binaries,
            &ctx.cleanup,
            &db_url,
            &db_name,
            &prefix,
            &root,
            name,
            lease,
        )?;
        wait_joined(&pool, &node).await?;
        nodes.push(node);
    }
    let steady = steady(ctx, &pool, &nodes, lease_s).await?;
    let failover = kill_busiest(&pool, &steady.ids, &mut nodes).await?;
    push_figures(ctx, results, lease_s, &steady, &failover);
    for node in nodes.iter_mut() {
        probe::signal(node.manager.pid, Signal::TERM);
    }
    for node in nodes.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(30), node.child.wait()).await;
    }
    Ok(())
}

/// The cluster with its strategies running and nothing failing.
struct Steady {
    ids: Vec<Uuid>,
    idle: f64,
    busy: f64,
    lapses: usize,
    replaced: usize,
}

/// Renewals with no strategy; the strategies started; renewals with them; a window
/// with nothing failing.
async fn steady(
    ctx: &BenchContext,
    pool: &PgPool,
    nodes: &[ClusterNode],
    lease_s: u64,
) -> anyhow::Result<Steady> {
    let n = ctx.args.cluster_strategies;
    let window = Duration::from_secs(5);
    let idle = renewals_per_s(pool, window).await?;

    let specs: Vec<StrategySpec> = (0..n)
        .map(|i| StrategySpec::heartbeat(format!("c{lease_s}-{i:04}")))
        .collect();
    let started = Instant::now();
    let ids = engine::create_running_strategies(pool, &specs).await?;
    wait_running(pool, &ids, None, Duration::from_secs(120 + n as u64 / 5)).await?;
    let start_all = started.elapsed().as_secs_f64();
    let busy = renewals_per_s(pool, window).await?;
    eprintln!(
        "  all {n} running in {start_all:.1} s; renewals per node per second: {idle:.2} with none, {busy:.2} with {n}"
    );

    // Nothing fails for a while: does a node fence itself anyway?
    let pids_before: HashMap<Uuid, Option<i32>> = pids(pool, &ids).await?;
    tokio::time::sleep(ctx.args.cluster_window).await;
    let pids_after = pids(pool, &ids).await?;
    let replaced = ids
        .iter()
        .filter(|id| pids_before.get(id) != pids_after.get(id))
        .count();
    let lapses: usize = nodes
        .iter()
        .map(|n| n.log().matches("lease lapsed").count())
        .sum();
    eprintln!(
        "  over {} s with nothing failing: {lapses} lease lapses, {replaced} executors replaced",
        ctx.args.cluster_window.as_secs()
    );
    Ok(Steady {
        ids,
        idle,
        busy,
        lapses,
        replaced,
    })
}

/// The failover of the busiest node.
struct Failover {
    victim: String,
    placement: String,
    strategies: usize,
    killed_after_s: f64,
    takeover: Vec<f64>,
}

/// The busiest node dies as a host does: its manager and executors SIGKILLed; each
/// of its strategies' time from its last heartbeat to running elsewhere.
async fn kill_busiest(
    pool: &PgPool,
    ids: &[Uuid],
    nodes: &mut Vec<ClusterNode>,
) -> anyhow::Result<Failover> {
    let owned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node, count(*) FROM strategy_configs WHERE id = ANY($1) GROUP BY node ORDER BY count(*) DESC, node",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let per_node: Vec<String> = owned.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let victim_name = owned.first().context("no node owns a strategy")?.0.clone();
    let victim_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM strategy_configs WHERE id = ANY($1) AND node = $2")
            .bind(ids)
            .bind(&victim_name)
            .fetch_all(pool)
            .await?;
    let victim = nodes
        .iter()
        .position(|n| n.name == victim_name)
        .map(|i| nodes.remove(i))
        .context("the busiest node is not one of ours")?;
    let last = heartbeats(pool).await?[&victim_name];
    probe::signal(victim.manager.pid, Signal::KILL);
    for pid in procfs::pids_with_arg(&victim.control_socket()) {
        probe::signal(pid, Signal::KILL);
    }
    let killed_at = db_now(pool).await?;
    wait_running(
        pool,
        &victim_ids,
        Some(&victim_name),
        Duration::from_secs(60),
    )
    .await?;
    let takeover: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 - $2 FROM strategy_configs WHERE id = ANY($1)",
    )
    .bind(&victim_ids)
    .bind(last)
    .fetch_all(pool)
    .await?;
    eprintln!(
        "  killed {victim_name} ({} strategies; placement {}) {:.2} s after its last heartbeat",
        victim_ids.len(),
        per_node.join(", "),
        killed_at - last
    );
    Ok(Failover {
        victim: victim_name,
        placement: per_node.join(", "),
        strategies: victim_ids.len(),
        killed_after_s: killed_at - last,
        takeover,
    })
}

fn push_figures(
    ctx: &BenchContext,
    results: &mut Results,
    lease_s: u64,
    steady: &Steady,
    failover: &Failover,
) {
    let n = ctx.args.cluster_strategies;
    let Steady {
        idle,
        busy,
        lapses,
        replaced,
        ..
    } = *steady;

    let goal = (lease_s == 10).then_some(Goal::P99AtMost(15.0));
    let mut figure = Figure::series(
        &format!("cluster_failover_s_lease_{lease_s}"),
        &format!("failover, last heartbeat → running elsewhere (lease {lease_s} s)"),
        "s",
        &failover.takeover,
        goal,
    );
    figure.note = format!(
        "3 nodes, {n} heartbeat strategies (placement {}); {} killed as a host dies, \
         {:.2} s after its last heartbeat; each of its {} strategies' new started_at",
        failover.placement, failover.victim, failover.killed_after_s, failover.strategies
    );
    results.push(figure);
    let mut renew = Figure::single(
        &format!("cluster_renewals_per_node_s_lease_{lease_s}"),
        &format!("lease renewals per node per second, {n} strategies (lease {lease_s} s)"),
        "/s",
        Some(busy),
        None,
    );
    renew.note = format!("{idle:.2}/s per node with no strategy: one statement per beat");
    results.push(renew);
    let mut fenced = Figure::single(
        &format!("cluster_self_fencing_lease_{lease_s}"),
        &format!(
            "lease lapses with nothing failing, {} s × 3 nodes (lease {lease_s} s)",
            ctx.args.cluster_window.as_secs()
        ),
        "",
        Some(lapses as f64),
        None,
    );
    fenced.note = format!("{replaced} of {n} executors replaced in that window");
    results.push(fenced);
}

async fn pids(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Option<i32>>> {
    let rows: Vec<(Uuid, Option<i32>)> =
        sqlx::query_as("SELECT id, pid FROM strategy_configs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}
