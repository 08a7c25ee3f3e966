//! One manager per database: the session-level advisory lock ([`LOCK_KEY`]) and the
//! lease row (`engine_manager_lease`) saying which host and pid hold it. The manager
//! takes, beats and releases them on a connection of its own; operators' tools read
//! them ([`lease`]) to tell a live manager from a dead or hung one.

use crate::operator::query_error;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

/// The advisory lock key ("STRATENG" in ASCII). A session holding it is the live
/// manager of the database (`enginectl doctor` looks for it in `pg_locks`).
pub const LOCK_KEY: i64 = 0x5354_5241_5445_4e47;

/// A manager whose lease heartbeat is older than this is taken for dead. The manager
/// beats every health interval (2 s by default), so this is several missed beats.
pub const MANAGER_FRESH: Duration = Duration::from_secs(10);

/// The lease row as the manager wrote it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseHolder {
    pub host: String,
    pub pid: i32,
    pub boot_id: String,
    pub started_at: DateTime<Utc>,
}

/// Try to take the advisory lock on this session; `false` when another session has it.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// Try to take the advisory lock shared, as a cluster node does (`--cluster`): any
/// number of nodes hold it together, and none while a manager without `--cluster`
/// holds it exclusively ([`try_lock`]), nor that one while a node holds it.
pub async fn try_lock_shared(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock_shared($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// The first key of a node's own advisory lock (the second is `hashtext` of its
/// name): a two-key lock, so apart from [`LOCK_KEY`]'s space ("NODE" in ASCII).
pub const NODE_LOCK_CLASS: i32 = 0x4e4f_4445;

/// Try to take the lock of node `node` on this session; `false` when a live node of
/// that name holds it (or, rarely, one whose name hashes alike).
pub async fn try_lock_node(conn: &mut PgConnection, node: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(NODE_LOCK_CLASS)
        .bind(node)
        .fetch_one(conn)
        .await
}

/// Whether cluster nodes hold [`LOCK_KEY`] (shared) right now.
pub async fn cluster_holds_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock' \
               AND d.datname = current_database() \
               AND l.classid::text::int8 = $1 AND l.objid::text::int8 = $2 AND l.objsubid = 1)",
    )
    .bind(LOCK_KEY >> 32)
    .bind(LOCK_KEY & 0xffff_ffff)
    .fetch_one(conn)
    .await
}

/// A cluster node's row in `engine_nodes`, as it writes it at start.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub node: String,
    pub host: String,
    pub pid: i32,
    pub boot_id: String,
    pub started_at: DateTime<Utc>,
    pub capacity: i32,
    pub lease_ms: i32,
}

/// The row of node `node`, if it ever ran.
pub async fn read_node(
    conn: &mut PgConnection,
    node: &str,
) -> Result<Option<NodeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT node, host, pid, boot_id, started_at, capacity, lease_ms FROM engine_nodes WHERE node = $1",
    )
    .bind(node)
    .fetch_optional(conn)
    .await
}

/// The most recently beating node of the cluster, if any (for a refusal's words).
pub async fn newest_node(conn: &mut PgConnection) -> Result<Option<NodeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT node, host, pid, boot_id, started_at, capacity, lease_ms FROM engine_nodes \
         ORDER BY heartbeat_at DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await
}

/// Write (or overwrite) the node's row, its heartbeat now. `draining` is kept.
pub async fn write_node(conn: &mut PgConnection, row: &NodeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO engine_nodes (node, host, pid, boot_id, started_at, heartbeat_at, capacity, lease_ms) \
         VALUES ($1, $2, $3, $4, $5, now(), $6, $7) \
         ON CONFLICT (node) DO UPDATE SET host = $2, pid = $3, boot_id = $4, started_at = $5, \
             heartbeat_at = now(), capacity = $6, lease_ms = $7",
    )
    .bind(&row.node)
    .bind(&row.host)
    .bind(row.pid)
    .bind(&row.boot_id)
    .bind(row.started_at)
    .bind(row.capacity)
    .bind(row.lease_ms)
    .execute(conn)
    .await
    .map(drop)
}

/// A cluster node's heartbeat: its `engine_nodes` row and the manager lease row (what
/// operators' tools read to tell whether a manager serves the database) in one
/// statement, whatever the number of strategies the node owns. `false` when the
/// node's row is gone.
pub async fn node_heartbeat(conn: &mut PgConnection, node: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH beat AS (UPDATE engine_nodes SET heartbeat_at = now() WHERE node = $1 RETURNING 1), \
              lease AS (UPDATE engine_manager_lease SET heartbeat_at = now() WHERE id = 1) \
         SELECT EXISTS (SELECT 1 FROM beat)",
    )
    .bind(node)
    .fetch_one(conn)
    .await
}

/// Release the advisory lock held by this session.
pub async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(conn)
        .await
        .map(drop)
}

/// Release the shared advisory lock held by this session.
pub async fn unlock_shared(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(LOCK_KEY)
        .execute(conn)
        .await
        .map(drop)
}

/// Release every advisory lock of this session (a node's two).
pub async fn unlock_all(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(conn)
        .await
        .map(drop)
}

/// The previous holder of the lease, if any.
pub async fn read_lease(conn: &mut PgConnection) -> Result<Option<LeaseHolder>, sqlx::Error> {
    sqlx::query_as("SELECT host, pid, boot_id, started_at FROM engine_manager_lease WHERE id = 1")
        .fetch_optional(conn)
        .await
}

/// Write (or overwrite) the lease row with this manager, its heartbeat now.
pub async fn write_lease(conn: &mut PgConnection, holder: &LeaseHolder) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO engine_manager_lease (id, host, pid, boot_id, started_at, heartbeat_at) \
         VALUES (1, $1, $2, $3, $4, now()) \
         ON CONFLICT (id) DO UPDATE SET host = $1, pid = $2, boot_id = $3, started_at = $4, heartbeat_at = now()",
    )
    .bind(&holder.host)
    .bind(holder.pid)
    .bind(&holder.boot_id)
    .bind(holder.started_at)
    .execute(conn)
    .await
    .map(drop)
}

/// Move the lease row's heartbeat to now.
pub async fn heartbeat(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE engine_manager_lease SET heartbeat_at = now() WHERE id = 1")
        .execute(conn)
        .await
        .map(drop)
}

/// The pid of the manager in the lease row, if there is one.
pub async fn holder_pid(pool: &PgPool) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT pid FROM engine_manager_lease WHERE id = 1")
        .fetch_optional(pool)
        .await
}

/// The manager that serves (or last served) the database.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseInfo {
    pub host: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    /// Whether a session holds the manager's advisory lock right now.
    pub lock_held: bool,
}

/// What the lease row and the lock say about the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerState {
    /// It holds the lock and beats.
    Alive,
    /// Nobody holds the lock: it exited or died.
    Gone,
    /// It holds the lock but has not beaten for [`MANAGER_FRESH`]: hung, or its
    /// database connection is stuck.
    Silent,
}

impl LeaseInfo {
    pub fn state(&self) -> ManagerState {
        match (
            self.lock_held,
            self.heartbeat_age_s < MANAGER_FRESH.as_secs_f64(),
        ) {
            (true, true) => ManagerState::Alive,
            (true, false) => ManagerState::Silent,
            (false, _) => ManagerState::Gone,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.state() == ManagerState::Alive
    }
}

/// The lease row and whether its lock is held, as operators' tools see them.
pub async fn lease(pool: &PgPool) -> anyhow::Result<Option<LeaseInfo>> {
    let row: Option<(String, i32, DateTime<Utc>, f64, bool)> = sqlx::query_as(
        "SELECT host, pid, started_at, EXTRACT(EPOCH FROM (now() - heartbeat_at))::float8, \
             EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
                   AND l.classid::text::int8 = $1 AND l.objid::text::int8 = $2 AND l.objsubid = 1) \
         FROM engine_manager_lease WHERE id = 1",
    )
    .bind(LOCK_KEY >> 32)
    .bind(LOCK_KEY & 0xffff_ffff)
    .fetch_optional(pool)
    .await
    .map_err(|e| query_error(e, "read engine_manager_lease"))?;
    Ok(row.map(
        |(host, pid, started_at, heartbeat_age_s, lock_held)| LeaseInfo {
            host,
            pid,
            started_at,
            heartbeat_age_s,
            lock_held,
        },
    ))
}

/// The manager records how it enforces resource limits (its start-up line) in its
/// lease row, for `enginectl doctor`.
pub async fn record_limits_mechanism(pool: &PgPool, mechanism: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE engine_manager_lease SET limits_mechanism = $1 WHERE id = 1")
        .bind(mechanism)
        .execute(pool)
        .await
        .map(drop)
}

/// How the manager said it enforces resource limits (`None`: no manager said).
pub async fn limits_mechanism(pool: &PgPool) -> anyhow::Result<Option<String>> {
    let said: Option<Option<String>> =
        sqlx::query_scalar("SELECT limits_mechanism FROM engine_manager_lease WHERE id = 1")
            .fetch_optional(pool)
            .await
            .map_err(|e| query_error(e, "read engine_manager_lease"))?;
    Ok(said.flatten())
}

/// The manager records how its executors get their Redis credentials (per-executor
/// ACL users, or its own URL and why) in its lease row, for `enginectl doctor`.
pub async fn record_redis_acl(pool: &PgPool, said: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE engine_manager_lease SET redis_acl = $1 WHERE id = 1")
        .bind(said)
        .execute(pool)
        .await
        .map(drop)
}

/// What the manager said about its executors' Redis credentials (`None`: no manager
/// said).
pub async fn redis_acl(pool: &PgPool) -> anyhow::Result<Option<String>> {
    let said: Option<Option<String>> =
        sqlx::query_scalar("SELECT redis_acl FROM engine_manager_lease WHERE id = 1")
            .fetch_optional(pool)
            .await
            .map_err(|e| query_error(e, "read engine_manager_lease"))?;
    Ok(said.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_is_alive_only_with_its_lock_and_a_fresh_heartbeat() {
        let lease = |lock_held, heartbeat_age_s| LeaseInfo {
            host: "h".into(),
            pid: 7,
            started_at: Utc::now(),
            heartbeat_age_s,
            lock_held,
        };
        assert_eq!(lease(true, 1.0).state(), ManagerState::Alive);
        assert_eq!(lease(false, 1.0).state(), ManagerState::Gone);
        assert_eq!(lease(true, 30.0).state(), ManagerState::Silent);
    }
}
