//! One manager per database: a session-level advisory lock held on a dedicated
//! connection, plus a lease row saying which host and pid hold it.

use chrono::{DateTime, Utc};
use engine_store::manager as db;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use engine_store::LOCK_KEY;

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
    host: String,
    pid: u32,
    boot_id: String,
    started_at: DateTime<Utc>,
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
        let started_at = Utc::now();
        let previous = take_lock(&mut conn).await?;
        let previous_boot_id = previous.map(|(_, _, boot, _)| boot);
        write_lease(&mut conn, host, pid, boot_id, started_at).await?;
        Ok(ManagerLease {
            conn,
            options: options.clone(),
            host: host.to_string(),
            pid,
            boot_id: boot_id.to_string(),
            started_at,
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
            let beat =
                sqlx::query("UPDATE engine_manager_lease SET heartbeat_at = now() WHERE id = 1")
                    .execute(&mut self.conn)
                    .await;
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
                                let _ = write_lease(
                                    &mut conn,
                                    &self.host,
                                    self.pid,
                                    &self.boot_id,
                                    self.started_at,
                                )
                                .await;
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
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

type LeaseRow = (String, i32, String, DateTime<Utc>);

async fn take_lock(conn: &mut PgConnection) -> Result<Option<LeaseRow>, LeaseError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    let previous = db::read_lease(conn).await?;
    if !locked {
        return Err(match previous {
            Some((host, pid, _, since)) => LeaseError::Held { host, pid, since },
            None => LeaseError::HeldUnknown,
        });
    }
    Ok(previous)
}

async fn write_lease(
    conn: &mut PgConnection,
    host: &str,
    pid: u32,
    boot_id: &str,
    started_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO engine_manager_lease (id, host, pid, boot_id, started_at, heartbeat_at) \
         VALUES (1, $1, $2, $3, $4, now()) \
         ON CONFLICT (id) DO UPDATE SET host = $1, pid = $2, boot_id = $3, started_at = $4, heartbeat_at = now()",
    )
    .bind(host)
    .bind(pid as i32)
    .bind(boot_id)
    .bind(started_at)
    .execute(conn)
    .await?;
    Ok(())
}
