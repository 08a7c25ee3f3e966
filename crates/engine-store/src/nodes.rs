//! The nodes of a cluster (CONTRACT.md §7) as operators' tools see them: each
//! `engine_nodes` row with its heartbeat's age and the strategies it owns, and the
//! strategies that should run on a dead node ([`stranded`], for `enginectl doctor`).

use crate::operator::query_error;
use chrono::{DateTime, Utc};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct NodeInfo {
    pub node: String,
    pub host: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    /// Its lease time: a node silent for longer is dead.
    pub lease_s: f64,
    /// The strategies it owns (`strategy_configs.node`).
    pub strategies: i64,
    pub capacity: i32,
    pub draining: bool,
}

impl NodeInfo {
    /// Alive: its heartbeat is younger than its lease time.
    pub fn is_alive(&self) -> bool {
        self.heartbeat_age_s < self.lease_s
    }
}

/// Every node, by name.
pub async fn nodes(pool: &sqlx::PgPool) -> anyhow::Result<Vec<NodeInfo>> {
    sqlx::query_as(
        "SELECT n.node, n.host, n.pid, n.started_at, \
             EXTRACT(EPOCH FROM (now() - n.heartbeat_at))::float8 AS heartbeat_age_s, \
             n.lease_ms / 1000.0::float8 AS lease_s, \
             (SELECT count(*) FROM strategy_configs c WHERE c.node = n.node) AS strategies, \
             n.capacity, n.draining \
         FROM engine_nodes n ORDER BY n.node",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read engine_nodes"))
}

/// A strategy that should run (`desired_state` running or paused) owned by a node
/// whose heartbeat is older than its lease: nobody runs it until a live node takes
/// it over, or its node comes back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stranded {
    pub node: String,
    pub name: String,
}

/// Every [`Stranded`] strategy, by node and name.
pub async fn stranded(pool: &sqlx::PgPool) -> anyhow::Result<Vec<Stranded>> {
    sqlx::query_as(
        "SELECT c.node, c.name FROM strategy_configs c JOIN engine_nodes n ON n.node = c.node \
         WHERE c.desired_state IN ('running', 'paused') \
           AND n.heartbeat_at <= now() - n.lease_ms * interval '1 millisecond' \
         ORDER BY c.node, c.name",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| query_error(e, "read strategy_configs and engine_nodes"))
}
