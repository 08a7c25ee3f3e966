//! A cluster node's take-over of the commands a dead node had claimed (CONTRACT.md
//! §7, issue #13: every command ends). A per-strategy row records the node that
//! claimed it (`strategy_commands.claimed_by`). When that node stops renewing its
//! lease, its strategies fail over, and the row would stay `processing` until some
//! manager started: instead the strategy's new owner takes the row over (at once
//! after it claims strategies, and on every poll for those it owns) and finishes it
//! as a manager's start-up finishes the rows its predecessor left `processing` — the
//! same [`CommandIntake::recover`], in `created_at` order, each once: a strategy
//! that has provably been through it already is not put through it again. Global
//! commands are not taken over: a dead node's part is failed, naming its strategies
//! (`fail_dead_parts`); nor are `move` rows (the sweep of stuck moves ends them).

use super::CommandIntake;
use engine_store::cluster_ops as store;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

impl CommandIntake {
    /// Take over and carry out the `processing` commands a dead node had claimed
    /// for strategies this node owns ([`store::adopt_orphaned_commands`]).
    pub(super) async fn adopt_orphaned(&mut self) {
        let Some(node) = self.shared.scope.node() else {
            return;
        };
        // Not bounded by a timeout: one that fired after the commit would leave rows
        // taken over and never carried out.
        let (rows, pairs) = match store::adopt_orphaned_commands(&self.shared.pool, node).await {
            Ok(adopted) => adopted,
            Err(err) => {
                return tracing::debug!(error = %err, "cannot take over the commands of dead nodes")
            }
        };
        if rows.is_empty() {
            return;
        }
        tracing::warn!(
            commands = rows.len(),
            "taking over commands that a node which stopped renewing its lease had claimed for strategies this node owns now"
        );
        let mut superseded: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        for (command_id, strategy_id) in pairs {
            superseded
                .entry(command_id)
                .or_default()
                .insert(strategy_id);
        }
        self.recover(rows, &superseded, "a dead node had claimed")
            .await;
    }
}
