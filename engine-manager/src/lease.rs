//! One manager per database, or a cluster of nodes: a session-level advisory lock
//! held on a dedicated connection, plus a lease row saying which host and pid hold it.
//!
//! Without `--cluster` the manager takes the lock exclusively (as it always did);
//! a cluster node takes it shared, so the two kinds exclude each other, and also the
//! lock of its own node name, so that two live nodes never share a name. A node
//! keeps its `engine_nodes` row beating with one statement per beat.

use chrono::{DateTime, Utc};
use engine_store::lease::{self as db, LeaseHolder};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "this database is already served by engine-manager pid {pid} on host {host} (since {since}); \
         stop that manager first, or point this one at another database"
    )]
    Held {
        host: String,
        pid: i32,
        since: DateTime<Utc>,
    },
    #[error(
        "this database is already served by another engine-manager (its lease row is missing)"
    )]
    HeldUnknown,
    #[error(
        "this database is served by a cluster of engine-managers (node '{node}', pid {pid} on host {host}, among others); \
         start this manager with --cluster to join it, or point it at another database"
    )]
    Cluster {
        node: String,
        host: String,
        pid: i32,
    },
    #[error(
        "the node name '{node}' is taken by a live engine-manager (pid {pid} on host {host}); \
         give this manager another --node, or stop that one first"
    )]
    NodeTaken {
        node: String,
        host: String,
        pid: i32,
    },
    #[error(
        "the node name '{node}' is taken by a live engine-manager (its row in engine_nodes is missing, \
         or another name shares its hash); give this manager another --node"
    )]
    NodeTakenUnknown { node: String },
    #[error("cannot take the manager lease")]
    Db(#[from] sqlx::Error),
}

impl LeaseError {
    /// Whether another manager holds what this one needs (exit code 3).
    pub fn is_held(&self) -> bool {
        !matches!(self, LeaseError::Db(_))
    }
}

/// Who this manager is in the database: the one manager, or a node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseMode {
    Single,
    Cluster {
        node: String,
        capacity: u32,
        lease_time: Duration,
    },
}

pub struct ManagerLease {
    conn: PgConnection,
    options: PgConnectOptions,
    holder: LeaseHolder,
    mode: LeaseMode,
    /// The boot id the previous manager (or, in a cluster, the previous life of this
    /// node) recorded; `None` on a fresh database or a new node.
    pub previous_boot_id: Option<String>,
}

impl ManagerLease {
    pub async fn acquire(
        options: &PgConnectOptions,
        host: &str,
        pid: u32,
        boot_id: &str,
        mode: LeaseMode,
    ) -> Result<ManagerLease, LeaseError> {
        let mut conn = PgConnection::connect_with(options).await?;
        let holder = LeaseHolder {
            host: host.to_string(),
            pid: pid as i32,
            boot_id: boot_id.to_string(),
            started_at: Utc::now(),
        };
        let previous_boot_id = match &mode {
            LeaseMode::Single => take_lock(&mut conn).await?.map(|p| p.boot_id),
            LeaseMode::Cluster { node, .. } => {
                take_node_locks(&mut conn, node).await?.map(|p| p.boot_id)
            }
        };
        let mut lease = ManagerLease {
            conn,
            options: options.clone(),
            holder,
            mode,
            previous_boot_id,
        };
        lease.write_rows().await?;
        Ok(lease)
    }

    /// The lease row and, for a node, its `engine_nodes` row.
    async fn write_rows(&mut self) -> Result<(), sqlx::Error> {
        db::write_lease(&mut self.conn, &self.holder).await?;
        if let LeaseMode::Cluster {
            node,
            capacity,
            lease_time,
        } = &self.mode
        {
            let row = db::NodeRow {
                node: node.clone(),
                host: self.holder.host.clone(),
                pid: self.holder.pid,
                boot_id: self.holder.boot_id.clone(),
                started_at: self.holder.started_at,
                capacity: i32::try_from(*capacity).unwrap_or(i32::MAX),
                lease_ms: i32::try_from(lease_time.as_millis()).unwrap_or(i32::MAX),
            };
            db::write_node(&mut self.conn, &row).await?;
        }
        Ok(())
    }

    /// How often the keeper beats: every `health` interval, and in a cluster at
    /// least three times per lease time.
    pub fn beat_interval(&self, health: Duration) -> Duration {
        match &self.mode {
            LeaseMode::Single => health,
            LeaseMode::Cluster { lease_time, .. } => health.min(*lease_time / 3),
        }
    }

    async fn beat(&mut self) -> Result<(), sqlx::Error> {
        match &self.mode {
            LeaseMode::Single => db::heartbeat(&mut self.conn).await,
            LeaseMode::Cluster { node, .. } => {
                if !db::node_heartbeat(&mut self.conn, node).await? {
                    // Deleted by hand: write it again.
                    self.write_rows().await?;
                }
                Ok(())
            }
        }
    }

    async fn retake(&mut self, conn: &mut PgConnection) -> Result<(), LeaseError> {
        match &self.mode {
            LeaseMode::Single => take_lock(conn).await.map(drop),
            LeaseMode::Cluster { node, .. } => take_node_locks(conn, node).await.map(drop),
        }
    }

    /// Keep the lock's connection alive and the lease row fresh until `cancel`;
    /// after a lost connection (PostgreSQL restarted) take the lock again.
    pub async fn keep(mut self, interval: Duration, cancel: CancellationToken) {
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let beat = self.beat().await;
            match beat {
                Ok(_) => {
                    if !healthy {
                        tracing::info!("manager lease connection is back");
                        healthy = true;
                    }
                }
                Err(err) => {
                    if healthy {
                        tracing::warn!(error = %err, "manager lease connection lost; retaking the lock when PostgreSQL answers");
                        healthy = false;
                    }
                    if let Ok(mut conn) = PgConnection::connect_with(&self.options).await {
                        match self.retake(&mut conn).await {
                            Ok(()) => {
                                self.conn = conn;
                                let _ = self.write_rows().await;
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "could not retake the manager lease")
                            }
                        }
                    }
                }
            }
        }
        let _ = db::unlock_all(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

async fn take_lock(conn: &mut PgConnection) -> Result<Option<LeaseHolder>, LeaseError> {
    let locked = db::try_lock(conn).await?;
    let previous = db::read_lease(conn).await?;
    if !locked && db::cluster_holds_lock(conn).await? {
        let newest = db::newest_node(conn).await?;
        let (node, host, pid) = match (newest, previous) {
            (Some(n), _) => (n.node, n.host, n.pid),
            (None, Some(p)) => (p.host.clone(), p.host, p.pid),
            (None, None) => return Err(LeaseError::HeldUnknown),
        };
        return Err(LeaseError::Cluster { node, host, pid });
    }
    if !locked {
        return Err(held_by(previous));
    }
    Ok(previous)
}

/// The refusal naming the manager of the lease row (one without `--cluster`).
fn held_by(holder: Option<LeaseHolder>) -> LeaseError {
    match holder {
        Some(LeaseHolder {
            host,
            pid,
            started_at,
            ..
        }) => LeaseError::Held {
            host,
            pid,
            since: started_at,
        },
        None => LeaseError::HeldUnknown,
    }
}

/// A cluster node's locks: [`db::LOCK_KEY`] shared (refused while a manager without
/// `--cluster` serves the database), then its own name's. Returns the node's previous
/// row, if it ever ran.
async fn take_node_locks(
    conn: &mut PgConnection,
    node: &str,
) -> Result<Option<db::NodeRow>, LeaseError> {
    if !db::try_lock_shared(conn).await? {
        return Err(held_by(db::read_lease(conn).await?));
    }
    let locked = db::try_lock_node(conn, node).await?;
    let previous = db::read_node(conn, node).await?;
    if !locked {
        let _ = db::unlock_shared(conn).await;
        return Err(match previous {
            Some(row) => LeaseError::NodeTaken {
                node: row.node,
                host: row.host,
                pid: row.pid,
            },
            None => LeaseError::NodeTakenUnknown {
                node: node.to_string(),
            },
        });
    }
    Ok(previous)
}
