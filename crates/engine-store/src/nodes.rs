//! The nodes of a cluster (CONTRACT.md §7) as operators' tools see them: each
//! `engine_nodes` row with its heartbeat's age and the strategies it owns.

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
