//! One manager per database: a session-level advisory lock held on a dedicated
//! connection, plus a lease row saying which host and pid hold it.

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
    #[error("cannot take the manager lease")]
    Db(#[from] sqlx::Error),
}

pub struct ManagerLease {
    conn: PgConnection,
    options: PgConnectOptions,
    holder: LeaseHolder,
    /// The boot id the previous manager recorded; `None` on a fresh database.
    pub previous_boot_id: Option<String>,
}

impl ManagerLease {
    pub async fn acquire(
        options: &PgConnectOptions,
        host: &str,
        pid: u32,
        boot_id: &str,
    ) -> Result<ManagerLease, LeaseError> {
        let mut conn = PgConnection::connect_with(options).await?;
        let holder = LeaseHolder {
            host: host.to_string(),
            pid: pid as i32,
            boot_id: boot_id.to_string(),
            started_at: Utc::now(),
        };
        let previous = take_lock(&mut conn).await?;
        let previous_boot_id = previous.map(|p| p.boot_id);
        db::write_lease(&mut conn, &holder).await?;
        Ok(ManagerLease {
            conn,
            options: options.clone(),
            holder,
            previous_boot_id,
        })
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
            let beat = db::heartbeat(&mut self.conn).await;
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
                        match take_lock(&mut conn).await {
                            Ok(_) => {
                                let _ = db::write_lease(&mut conn, &self.holder).await;
                                self.conn = conn;
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "could not retake the manager lease")
                            }
                        }
                    }
                }
            }
        }
        let _ = db::unlock(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

async fn take_lock(conn: &mut PgConnection) -> Result<Option<LeaseHolder>, LeaseError> {
    let locked = db::try_lock(conn).await?;
    let previous = db::read_lease(conn).await?;
    if !locked {
        return Err(match previous {
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
        });
    }
    Ok(previous)
}
