//! `enginectl doctor`: is everything the engine needs in place? PostgreSQL
//! reachable, migrations applied, Redis reachable, the executor binary working, a
//! live manager serving the database, and in a cluster every node (a dead node that
//! owns strategies that should run fails, and so do lease times that differ). Each
//! failed check says how to fix it; the exit code is 1 when any check failed
//! (warnings do not fail).

use super::{executor, state, Finished, Target};
use crate::lease_words::DescribeLease;
use crate::shell::name_arg;
use crate::table;
use engine_protocol::redact::redact_url;
use engine_store::nodes::{NodeInfo, Stranded};
use engine_store::operator as store;
use engine_store::{Status, MIGRATOR};
use sqlx::PgPool;
use std::collections::HashMap;

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn { hint: String },
    Fail { hint: String },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub detail: String,
    pub verdict: Verdict,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            detail: detail.into(),
            verdict: Verdict::Ok,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            detail: detail.into(),
            verdict: Verdict::Warn { hint: hint.into() },
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            detail: detail.into(),
            verdict: Verdict::Fail { hint: hint.into() },
        }
    }
}

/// Run every check.
pub async fn checks(target: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    if target.tls_insecure {
        out.push(Check::warn(
            "tls",
            "--tls-insecure: certificates may go unverified",
            crate::TLS_INSECURE_WARNING,
        ));
    }
    let shown = redact_url(&target.database_url);
    match store::connect(&target.database_url).await {
        Ok(pool) => {
            let version = store::server_version(&pool).await.ok();
            out.push(Check::ok(
                "postgres",
                format!(
                    "{shown} (PostgreSQL {})",
                    version.as_deref().unwrap_or("version unknown")
                ),
            ));
            out.push(migrations(&pool).await);
            out.push(manager(&pool).await);
            out.extend(cluster(&pool).await);
            out.push(limits(&pool).await);
            out.push(redis_acl(&pool).await);
            out.push(strategies(&pool).await);
            pool.close().await;
        }
        Err(err) => {
            out.push(Check::fail(
                "postgres",
                format!("{err:#}"),
                "start PostgreSQL (`bash ops/ensure-services.sh` installs and starts it) or point \
                 --database-url / DATABASE_URL at the engine's database",
            ));
            for name in ["migrations", "manager"] {
                out.push(Check::fail(
                    name,
                    "not checked: PostgreSQL is unreachable",
                    "fix the postgres check first",
                ));
            }
        }
    }
    out.push(redis(target).await);
    out.push(executor_check(target).await);
    out.push(state_dir(target));
    out
}

async fn migrations(pool: &PgPool) -> Check {
    const HINT: &str = "start engine-manager (it applies migrations at start-up) or run \
                        `engine-manager --migrate-only` with the same DATABASE_URL";
    let applied = match store::applied_migrations(pool).await {
        Ok(rows) => rows,
        Err(err) if store::sql_state(&err).as_deref() == Some("42P01") => {
            return Check::fail(
                "migrations",
                "none applied (no _sqlx_migrations table)",
                HINT,
            )
        }
        Err(err) => {
            return Check::fail(
                "migrations",
                format!("cannot read _sqlx_migrations: {err}"),
                HINT,
            )
        }
    };
    let applied: HashMap<i64, (bool, Vec<u8>)> = applied
        .into_iter()
        .map(|m| (m.version, (m.success, m.checksum)))
        .collect();
    let known: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for m in &known {
        match applied.get(&m.version) {
            None => missing.push(format!("{} {}", m.version, m.description)),
            Some((false, _)) => problems.push(format!("{} failed half-way", m.version)),
            Some((true, sum)) if sum.as_slice() != &*m.checksum => {
                problems.push(format!("{} was changed after it was applied", m.version))
            }
            Some(_) => {}
        }
    }
    let newer = applied
        .keys()
        .filter(|v| !known.iter().any(|m| m.version == **v))
        .count();
    if !problems.is_empty() {
        return Check::fail(
            "migrations",
            problems.join("; "),
            "the schema does not match this engine's migrations; restore the database or use the \
             engine version that applied them",
        );
    }
    if !missing.is_empty() {
        return Check::fail(
            "migrations",
            format!(
                "{} of {} not applied: {}",
                missing.len(),
                known.len(),
                missing.join(", ")
            ),
            HINT,
        );
    }
    if newer > 0 {
        return Check::warn(
            "migrations",
            format!(
                "all {} applied, plus {newer} this enginectl does not know",
                known.len()
            ),
            "the database was migrated by a newer engine; upgrade enginectl",
        );
    }
    Check::ok("migrations", format!("all {} applied", known.len()))
}

async fn manager(pool: &PgPool) -> Check {
    const HINT: &str = "start it: `engine-manager` (or `systemctl start engine-manager`, or \
                        `bash ops/demo.sh`); commands wait in strategy_commands until a manager runs";
    match engine_store::lease::lease(pool).await {
        Ok(Some(lease)) if lease.is_alive() => Check::ok(
            "manager",
            format!(
                "{}, up since {} UTC",
                lease.describe(),
                lease.started_at.format("%Y-%m-%d %H:%M:%S"),
            ),
        ),
        Ok(Some(lease)) => Check::fail(
            "manager",
            format!("no live manager: {}", lease.describe()),
            HINT,
        ),
        Ok(None) => Check::fail("manager", "no manager has ever served this database", HINT),
        Err(err) => Check::fail("manager", format!("{err:#}"), HINT),
    }
}

/// A cluster (`engine_nodes` has rows): every node, and what is wrong among them.
async fn cluster(pool: &PgPool) -> Vec<Check> {
    let nodes = match engine_store::nodes::nodes(pool).await {
        Ok(nodes) => nodes,
        // Older schema without engine_nodes: the migrations check says so.
        Err(_) => return Vec::new(),
    };
    if nodes.is_empty() {
        return Vec::new();
    }
    match engine_store::nodes::stranded(pool).await {
        Ok(stranded) => cluster_checks(&nodes, &stranded),
        Err(err) => vec![Check::fail(
            "nodes",
            format!("{err:#}"),
            "see the migrations check",
        )],
    }
}

/// One line per node (a dead node that owns strategies that should run fails), and
/// a failure when the nodes' lease times differ.
fn cluster_checks(nodes: &[NodeInfo], stranded: &[Stranded]) -> Vec<Check> {
    let mut out = Vec::with_capacity(nodes.len() + 1);
    for n in nodes {
        let detail = format!(
            "{}: {} (heartbeat {} ago, lease {}), {} / {} strategies{}",
            n.node,
            if n.is_alive() { "alive" } else { "dead" },
            table::duration(n.heartbeat_age_s),
            table::duration(n.lease_s),
            n.strategies,
            n.capacity,
            if n.draining { ", draining" } else { "" },
        );
        let names: Vec<&str> = stranded
            .iter()
            .filter(|s| s.node == n.node)
            .map(|s| s.name.as_str())
            .collect();
        if n.is_alive() || names.is_empty() {
            out.push(Check::ok("node", detail));
            continue;
        }
        out.push(Check::fail(
            "node",
            format!(
                "{detail}; {} that should run {} not running: {}",
                names.len(),
                if names.len() == 1 { "is" } else { "are" },
                names.join(", ")
            ),
            format!(
                "start the node again with --node {} (it takes its strategies back), or make \
                 room on a live node (--capacity, or a new node): a live node takes them over \
                 once their lease ran out",
                n.node
            ),
        ));
    }
    let mut leases: Vec<(f64, &str)> = nodes.iter().map(|n| (n.lease_s, &*n.node)).collect();
    leases.sort_by(|a, b| a.0.total_cmp(&b.0));
    if leases.first().map(|l| l.0) != leases.last().map(|l| l.0) {
        let each: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {}", n.node, table::duration(n.lease_s)))
            .collect();
        out.push(Check::fail(
            "lease time",
            format!("the nodes' lease times differ: {}", each.join(", ")),
            "start every node with the same --lease-time (ENGINE_LEASE_TIME): a node judges \
             the others by their own lease, and failover waits for the longest",
        ));
    }
    out
}

/// How the manager enforces resource limits, as it said in its lease row.
async fn limits(pool: &PgPool) -> Check {
    match engine_store::lease::limits_mechanism(pool).await {
        Ok(Some(mechanism)) if mechanism.starts_with("cgroup") => Check::ok("limits", mechanism),
        Ok(Some(mechanism)) => Check::warn(
            "limits",
            mechanism,
            "cpu_percent and pids need a cgroup: run the manager where it may create child \
             groups (cgroup v2 with memory, cpu and pids delegated, e.g. systemd Delegate=yes; \
             or cgroup v1 with those controllers mounted)",
        ),
        Ok(None) => Check::warn(
            "limits",
            "no manager has said how it enforces limits",
            "start engine-manager; it says so at start-up",
        ),
        Err(err) => Check::warn("limits", format!("{err:#}"), "see the migrations check"),
    }
}

/// How the manager's executors reach Redis, as it said in its lease row: each as its
/// own ACL user, or all with the manager's URL (and why).
async fn redis_acl(pool: &PgPool) -> Check {
    match engine_store::lease::redis_acl(pool).await {
        Ok(Some(said)) if said.starts_with("per-executor") => Check::ok("redis acl", said),
        Ok(Some(said)) => Check::warn(
            "redis acl",
            said,
            "give the manager's Redis user the right to run ACL SETUSER, ACL DELUSER and ACL \
             USERS on Redis 7.0 or newer, so each strategy gets a user that may publish only \
             its own channels (README, \"Redis users of the executors\")",
        ),
        Ok(None) => Check::warn(
            "redis acl",
            "no manager has said how its executors reach Redis",
            "start engine-manager; it says so at start-up",
        ),
        Err(err) => Check::warn("redis acl", format!("{err:#}"), "see the migrations check"),
    }
}

async fn strategies(pool: &PgPool) -> Check {
    let rows = match store::strategies(pool).await {
        Ok(rows) => rows,
        Err(err) => {
            return Check::warn("strategies", format!("{err:#}"), "see the migrations check")
        }
    };
    let mut counts: Vec<(String, usize)> = Vec::new();
    for row in &rows {
        match counts.iter_mut().find(|(s, _)| s == row.status.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((row.status.to_string(), 1)),
        }
    }
    counts.sort();
    let summary = counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    let detail = format!(
        "{} in all{}{summary}",
        rows.len(),
        if summary.is_empty() { "" } else { ": " }
    );
    let broken: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == Status::Error)
        .map(|r| r.name.as_str())
        .collect();
    if broken.is_empty() {
        Check::ok("strategies", detail)
    } else {
        Check::warn(
            "strategies",
            format!("{detail} (in error: {})", broken.join(", ")),
            format!(
                "see why with `enginectl history {0}` and `enginectl logs {0}`; fix the config with \
                 `enginectl update {0} --set KEY=VALUE`, then `enginectl start {0}`",
                name_arg(broken[0])
            ),
        )
    }
}

async fn redis(target: &Target) -> Check {
    const HINT: &str =
        "start Redis (`bash ops/ensure-services.sh` installs and starts it) or point \
                        --redis-url / REDIS_URL at it";
    let shown = redact_url(&target.redis_url);
    let mut conn = match state::connect(&target.redis_url).await {
        Ok(conn) => conn,
        Err(err) => return Check::fail("redis", format!("{err:#}"), HINT),
    };
    match redis::cmd("PING").query_async::<String>(&mut conn).await {
        Ok(_) => {
            let prefix = target.channels.prefix();
            let scope = if prefix.is_empty() {
                String::new()
            } else {
                format!(", prefix '{prefix}'")
            };
            Check::ok("redis", format!("{shown}{scope}"))
        }
        Err(err) => Check::fail("redis", format!("{shown}: PING failed: {err}"), HINT),
    }
}

async fn executor_check(target: &Target) -> Check {
    const HINT: &str = "build it (`cargo build --release`) or pass --executor-path / \
                        ENGINE_EXECUTOR_PATH (the manager's --executor-path)";
    let path = &target.executor_path;
    match executor::list_types(path).await {
        Ok(types) => {
            let names: Vec<&str> = types.iter().map(|t| t.strategy_type.as_str()).collect();
            Check::ok(
                "executor",
                format!(
                    "{}: {} strategy types ({})",
                    path.display(),
                    names.len(),
                    names.join(", ")
                ),
            )
        }
        Err(err) => Check::fail("executor", format!("{err:#}"), HINT),
    }
}

fn state_dir(target: &Target) -> Check {
    let dir = &target.state_dir;
    let logs = target.logs_dir();
    if !dir.is_dir() {
        return Check::warn(
            "state dir",
            format!("{} does not exist", dir.display()),
            "`enginectl logs` reads executor logs from <state-dir>/logs: pass the manager's \
             --state-dir (--state-dir / ENGINE_STATE_DIR)",
        );
    }
    let count = std::fs::read_dir(&logs)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        })
        .unwrap_or(0);
    Check::ok(
        "state dir",
        format!("{} ({count} executor logs)", dir.display()),
    )
}

/// The report as text.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let mark = match check.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn { .. } => "warn",
            Verdict::Fail { .. } => "FAIL",
        };
        out.push_str(&format!(
            "{mark}  {:width$}  {}\n",
            check.name, check.detail
        ));
        if let Verdict::Warn { hint } | Verdict::Fail { hint } = &check.verdict {
            out.push_str(&format!("      {:width$}  hint: {hint}\n", ""));
        }
    }
    let failed = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail { .. }))
        .count();
    if failed == 0 {
        out.push_str("all checks passed\n");
    } else {
        out.push_str(&format!(
            "{failed} check{} failed\n",
            if failed == 1 { "" } else { "s" }
        ));
    }
    out
}

/// `enginectl doctor`.
pub async fn doctor(target: &Target) -> anyhow::Result<Finished> {
    let checks = checks(target).await;
    print!("{}", render(&checks));
    let failed = checks
        .iter()
        .any(|c| matches!(c.verdict, Verdict::Fail { .. }));
    Ok(if failed {
        Finished::Failed
    } else {
        Finished::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, age: f64, lease: f64) -> NodeInfo {
        NodeInfo {
            node: name.into(),
            host: "h".into(),
            pid: 7,
            started_at: chrono::Utc::now(),
            heartbeat_age_s: age,
            lease_s: lease,
            strategies: 2,
            capacity: 1000,
            draining: false,
        }
    }

    #[test]
    fn a_dead_node_with_strategies_that_should_run_fails_and_a_lease_mismatch_fails() {
        let stranded = [Stranded {
            node: "b".into(),
            name: "hb-1".into(),
        }];
        let healthy = cluster_checks(&[node("a", 0.5, 10.0), node("b", 1.0, 10.0)], &[]);
        assert_eq!(healthy.len(), 2);
        assert!(healthy.iter().all(|c| c.verdict == Verdict::Ok));
        assert!(
            healthy[0]
                .detail
                .starts_with("a: alive (heartbeat 0.5s ago, lease 10s), 2 / 1000"),
            "{:?}",
            healthy[0]
        );
        let checks = cluster_checks(&[node("a", 0.5, 10.0), node("b", 30.0, 10.0)], &stranded);
        assert_eq!(checks[0].verdict, Verdict::Ok);
        assert!(matches!(checks[1].verdict, Verdict::Fail { .. }));
        assert!(
            checks[1].detail.contains("b: dead")
                && checks[1]
                    .detail
                    .ends_with("1 that should run is not running: hb-1"),
            "{:?}",
            checks[1]
        );
        // A dead node that owns nothing that should run is only listed.
        let idle = cluster_checks(&[node("a", 0.5, 10.0), node("c", 99.0, 10.0)], &stranded);
        assert!(idle.iter().all(|c| c.verdict == Verdict::Ok));
        let mismatch = cluster_checks(&[node("a", 0.5, 10.0), node("b", 0.5, 5.0)], &[]);
        assert_eq!(mismatch.len(), 3);
        assert_eq!(mismatch[2].name, "lease time");
        assert!(
            mismatch[2].detail.contains("a 10s, b 5.0s"),
            "{:?}",
            mismatch[2]
        );
    }

    #[test]
    fn the_report_names_failures_and_hints() {
        let text = render(&[
            Check::ok("postgres", "up"),
            Check::fail("redis", "refused", "start Redis"),
            Check::warn("state dir", "missing", "pass --state-dir"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ok    postgres   up",
                "FAIL  redis      refused",
                "                 hint: start Redis",
                "warn  state dir  missing",
                "                 hint: pass --state-dir",
                "1 check failed",
            ]
        );
    }
}
