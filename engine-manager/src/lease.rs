//! One manager per database, or a cluster of nodes: a session-level advisory lock
//! held on a dedicated connection, plus a lease row saying which host and pid hold it.
//!
//! Without `--cluster` the manager takes the lock exclusively (as it always did);
//! a cluster node takes it shared, so the two kinds exclude each other, and also the
//! lock of its own node name, so that two live nodes never share a name. A node
//! keeps its `engine_nodes` row beating with one statement per beat.

use chrono::{DateTime, Utc};
use engine_protocol::control::{monotonic_ms, LeaseGrant};
use engine_store::lease::{self as db, LeaseHolder};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio::sync::watch;
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

/// A cluster node's lease as its supervisors and executors see it: the deadline (in
/// [`monotonic_ms`]) before which this node may act for its strategies, and how many
/// times it lapsed (no renewal in time). Without `--cluster` there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseClock {
    pub deadline_ms: u64,
    pub lapses: u64,
}

/// The node's lease for its supervisors (`Shared::fence`): `None` without
/// `--cluster`, where executors outlive the manager and nothing is fenced.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    rx: Option<watch::Receiver<LeaseClock>>,
}

impl Fence {
    pub fn none() -> Fence {
        Fence { rx: None }
    }

    /// Whether this manager is a cluster node (its strategies are fenced).
    pub fn is_cluster(&self) -> bool {
        self.rx.is_some()
    }

    /// The node's lease now.
    pub fn clock(&self) -> Option<LeaseClock> {
        self.rx.as_ref().map(|rx| *rx.borrow())
    }

    /// What an executor of a strategy held at `epoch` trades under.
    pub fn grant(&self, epoch: i64) -> Option<LeaseGrant> {
        self.clock().map(|c| LeaseGrant {
            epoch,
            deadline_ms: c.deadline_ms,
        })
    }

    /// Whether the node may act for its strategies now: always without `--cluster`.
    pub fn valid(&self) -> bool {
        self.clock().is_none_or(|c| c.deadline_ms > monotonic_ms())
    }

    /// A receiver that wakes at each renewal (`None` without `--cluster`).
    pub fn subscribe(&self) -> Option<watch::Receiver<LeaseClock>> {
        self.rx.clone()
    }
}

/// How much earlier than the database's deadline (`heartbeat_at` + the lease time,
/// after which other nodes may take this node's strategies) this node's own deadline
/// falls: room for an executor to stop and exit, and for clocks to drift. A tenth of
/// the lease, at least 200 ms.
pub fn fence_margin(lease_time: Duration) -> Duration {
    (lease_time / 10).max(Duration::from_millis(200))
}

pub struct ManagerLease {
    conn: PgConnection,
    /// In a cluster: the renewals' deadline, sent to [`Fence`]s.
    clock: Option<watch::Sender<LeaseClock>>,
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
        let clock = match &mode {
            LeaseMode::Single => None,
            LeaseMode::Cluster { .. } => Some(watch::Sender::new(LeaseClock::default())),
        };
        let mut lease = ManagerLease {
            conn,
            clock,
            options: options.clone(),
            holder,
            mode,
            previous_boot_id,
        };
        let renewing = monotonic_ms();
        lease.write_rows().await?;
        lease.renewed(renewing);
        Ok(lease)
    }

    /// The fence this node's supervisors hold.
    pub fn fence(&self) -> Fence {
        Fence {
            rx: self.clock.as_ref().map(|tx| tx.subscribe()),
        }
    }

    /// A renewal that began at `began` (in [`monotonic_ms`]) succeeded: the node's
    /// deadline is the lease time from then, less [`fence_margin`] (the database
    /// dates `heartbeat_at` no earlier than `began`, so other nodes' judgement of this
    /// one comes later still).
    fn renewed(&mut self, began: u64) {
        let (Some(tx), LeaseMode::Cluster { lease_time, .. }) = (&self.clock, &self.mode) else {
            return;
        };
        let valid = lease_time.saturating_sub(fence_margin(*lease_time));
        let deadline_ms = began + valid.as_millis() as u64;
        tx.send_modify(|c| {
            if c.deadline_ms != 0 && c.deadline_ms <= began {
                c.lapses += 1;
                tracing::warn!(
                    late_ms = began - c.deadline_ms,
                    "this node's lease lapsed before it could renew it; its executors stopped at the deadline, and strategies other nodes took since are theirs"
                );
            }
            c.deadline_ms = deadline_ms;
        });
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
            let began = monotonic_ms();
            let beat = self.beat().await;
            match beat {
                Ok(_) => {
                    self.renewed(began);
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
                                if self.write_rows().await.is_ok() {
                                    self.renewed(began);
                                }
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
