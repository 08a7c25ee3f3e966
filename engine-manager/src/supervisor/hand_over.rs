//! A strategy handed to another node (cluster only, CONTRACT.md §7): a `move`'s
//! check of its target, and the release itself, the one statement conditional on
//! this node's epoch that names the new owner (or none, for a drain) and moves
//! `lease_epoch` up. The machine has stopped the executor before the release: the
//! old executor is gone before the new owner may start one.

use super::error::{HandOverError, TargetCheck};
use super::StrategySupervisor;
use engine_store::cluster_ops::{self, Release};
use engine_store::manager as db;
use std::sync::atomic::Ordering;
use uuid::Uuid;

impl StrategySupervisor {
    /// May the strategy move to `node`: alive, not draining, below its capacity?
    /// (`SameNode` when it is this node.) The release checks the same again.
    pub(super) async fn check_target(&self, node: &str) -> Result<TargetCheck, HandOverError> {
        if node == self.shared.node {
            return Ok(TargetCheck::SameNode);
        }
        let loads = cluster_ops::node_loads(&self.shared.pool)
            .await
            .map_err(HandOverError::Store)?;
        let Some(target) = loads.iter().find(|n| n.node == node) else {
            let known: Vec<&str> = loads.iter().map(|n| n.node.as_str()).collect();
            return Err(HandOverError::UnknownNode {
                node: node.to_string(),
                known: known.join(", "),
            });
        };
        if !target.alive {
            return Err(HandOverError::DeadNode {
                node: node.to_string(),
                age_s: target.heartbeat_age_s,
                lease_s: target.lease_s,
            });
        }
        if target.draining {
            return Err(HandOverError::Draining {
                node: node.to_string(),
            });
        }
        if target.owned >= i64::from(target.capacity) {
            return Err(HandOverError::Full {
                node: node.to_string(),
                owned: target.owned,
                capacity: target.capacity,
            });
        }
        Ok(TargetCheck::Fits)
    }

    /// Hand the (stopped) strategy to `to`, or to no node. On success this
    /// supervisor is done: it ends, and commands still queued for it go back to
    /// `pending` for the new owner ([`super::Outcome::Elsewhere`]).
    pub(super) async fn release(
        &mut self,
        to: Option<&str>,
        command_id: Uuid,
    ) -> Result<(), HandOverError> {
        // The row must say `stopped` under this node's epoch before it goes: after
        // the release, this node's writes do nothing.
        self.retry_writes().await;
        if self.journal.database_away() {
            return Err(HandOverError::DatabaseAway);
        }
        let reason = match to {
            Some(_) => cluster_ops::MOVE_REASON,
            None => cluster_ops::DRAIN_REASON,
        };
        let release = Release {
            id: self.id,
            epoch: self.lease_epoch,
            from: &self.shared.node,
            to,
            reason,
            command_id,
        };
        let released = cluster_ops::release_strategy(&self.shared.pool, &release)
            .await
            .map_err(HandOverError::Store)?;
        if let Some(epoch) = released {
            tracing::info!(
                to = to.unwrap_or("any node"),
                lease_epoch = epoch,
                "{reason}: the strategy is handed over"
            );
            self.lost.store(true, Ordering::Release);
            return Ok(());
        }
        // Why not: this node lost it, or (a move) the target cannot take it now.
        let row = db::load_strategy(&self.shared.pool, self.id)
            .await
            .map_err(HandOverError::Store)?;
        match row {
            Some(row)
                if row.lease_epoch != self.lease_epoch
                    || row.node.as_deref() != Some(self.shared.node.as_str()) =>
            {
                Err(HandOverError::Lost {
                    owner: row.node.unwrap_or_else(|| "no node".into()),
                    epoch: row.lease_epoch,
                })
            }
            None => Err(HandOverError::Lost {
                owner: "nobody (the strategy was deleted)".into(),
                epoch: self.lease_epoch,
            }),
            Some(_) => match to {
                Some(node) => match self.check_target(node).await? {
                    // Changed back between the two reads: say what was seen.
                    TargetCheck::Fits | TargetCheck::SameNode => {
                        Err(HandOverError::TargetRefused {
                            node: node.to_string(),
                        })
                    }
                },
                None => Err(HandOverError::Lost {
                    owner: self.shared.node.clone(),
                    epoch: self.lease_epoch,
                }),
            },
        }
    }
}
