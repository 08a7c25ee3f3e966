//! Draining nodes and moving strategies between them (CONTRACT.md §7): the nodes'
//! load and room, the `draining` flag, the one conditional statement that hands a
//! strategy over (a new owner or none, `lease_epoch + 1`, its `strategy_events` row),
//! putting back commands that reached the old owner too late, and the reads that tell
//! when a handed-over strategy runs on its new node.
//!
//! The claims of unowned strategies stay in [`crate::manager::claim_strategies`].

use crate::manager::CommandRow;
use crate::metrics::FinishedCommand;
use crate::vocab::CommandStatus;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The channel that wakes a node's intake for cluster operations: the payload is the
/// node concerned (the drained one, the target of a move), or empty.
pub const NODE_OPS_CHANNEL: &str = "engine_node_ops";

/// The `reason` of the event of a strategy a draining node released.
pub const DRAIN_REASON: &str = "drain";
/// The `reason` of the events of a strategy moved to another node.
pub const MOVE_REASON: &str = "move";

/// SQL: `n` (an `engine_nodes` row) is alive, by the database's clock.
const ALIVE: &str = "n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond'";

/// SQL: strategy `c` needs an owner (as [`crate::manager::claim_strategies`] judges).
const WANTED: &str = "(c.desired_state IN ('running', 'paused') \
     OR (c.auto_start AND NOT c.operator_stopped) \
     OR EXISTS (SELECT 1 FROM strategy_commands k WHERE k.strategy_id = c.id AND k.status = 'pending') \
     OR EXISTS (SELECT 1 FROM strategy_runs r WHERE r.strategy_id = c.id AND r.state = 'queued'))";

/// One node as a drain or a move judges it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NodeLoad {
    pub node: String,
    pub alive: bool,
    pub draining: bool,
    pub capacity: i32,
    /// The strategies it owns now.
    pub owned: i64,
    /// Seconds since its last heartbeat (database clock).
    pub heartbeat_age_s: f64,
    /// Its lease time in seconds.
    pub lease_s: f64,
}

impl NodeLoad {
    /// Strategies it may still take (0 when full, dead or draining).
    pub fn room(&self) -> i64 {
        if !self.alive || self.draining {
            return 0;
        }
        (i64::from(self.capacity) - self.owned).max(0)
    }

    /// `node-b (3 of 10, draining)`: how an error names it.
    pub fn describe(&self) -> String {
        let mut notes = Vec::new();
        if !self.alive {
            notes.push("dead".to_string());
        }
        if self.draining {
            notes.push("draining".to_string());
        }
        let notes: String = notes.iter().map(|n| format!(", {n}")).collect();
        format!("{} ({} of {}{notes})", self.node, self.owned, self.capacity)
    }
}

/// Every node of the cluster, by name.
pub async fn node_loads(pool: &PgPool) -> Result<Vec<NodeLoad>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT n.node, {ALIVE} AS alive, n.draining, n.capacity, \
             (SELECT count(*) FROM strategy_configs c WHERE c.node = n.node) AS owned, \
             EXTRACT(EPOCH FROM (now() - n.heartbeat_at))::float8 AS heartbeat_age_s, \
             n.lease_ms / 1000.0::float8 AS lease_s \
         FROM engine_nodes n ORDER BY n.node"
    ))
    .fetch_all(pool)
    .await
}

/// Set or clear `engine_nodes.draining` of `node`, and wake the nodes
/// ([`NODE_OPS_CHANNEL`]). `false` when no node has that name.
pub async fn set_draining(pool: &PgPool, node: &str, draining: bool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH set AS (UPDATE engine_nodes SET draining = $2 WHERE node = $1 RETURNING node) \
         SELECT EXISTS (SELECT 1 FROM set) FROM (SELECT pg_notify($3, $1)) AS woken",
    )
    .bind(node)
    .bind(draining)
    .bind(NODE_OPS_CHANNEL)
    .fetch_one(pool)
    .await
}

/// Whether `node` is draining (`None`: no such node).
pub async fn is_draining(pool: &PgPool, node: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT draining FROM engine_nodes WHERE node = $1")
        .bind(node)
        .fetch_optional(pool)
        .await
}

/// A strategy a draining node owns.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OwnedStrategy {
    pub id: Uuid,
    pub name: String,
    /// It needs an owner (it should run, or has a pending command or a queued run):
    /// it takes room on another node.
    pub wanted: bool,
}

/// The strategies `node` owns, by name, and the room the other nodes have for those
/// that need an owner: the free places of every other live node that is not
/// draining, less the strategies already waiting for an owner.
pub async fn drain_plan(
    pool: &PgPool,
    node: &str,
) -> Result<(Vec<OwnedStrategy>, i64), sqlx::Error> {
    let owned = sqlx::query_as(&format!(
        "SELECT c.id, c.name, {WANTED} AS wanted FROM strategy_configs c \
         WHERE c.node = $1 ORDER BY c.name"
    ))
    .bind(node)
    .fetch_all(pool)
    .await?;
    let room: i64 = sqlx::query_scalar(&format!(
        "WITH alive AS (SELECT n.node, n.capacity, n.draining FROM engine_nodes n WHERE {ALIVE}) \
         SELECT GREATEST(0, \
             COALESCE((SELECT sum(GREATEST(0, a.capacity - \
                 (SELECT count(*) FROM strategy_configs o WHERE o.node = a.node)))::int8 \
               FROM alive a WHERE NOT a.draining AND a.node <> $1), 0) \
             - (SELECT count(*) FROM strategy_configs c \
                WHERE (c.node IS NULL OR c.node NOT IN (SELECT node FROM alive)) AND {WANTED}))"
    ))
    .bind(node)
    .fetch_one(pool)
    .await?;
    Ok((owned, room))
}

/// One hand-over: the strategy, the epoch its owner holds it under, the owner, and
/// where it goes (`None`: to no node, for the others to claim).
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub id: Uuid,
    pub epoch: i64,
    pub from: &'a str,
    pub to: Option<&'a str>,
    /// [`DRAIN_REASON`] or [`MOVE_REASON`].
    pub reason: &'a str,
    pub command_id: Uuid,
}

/// Hand a strategy over in one conditional statement: only while `from` still owns
/// it under `epoch`, and (a move) while the target is alive, not draining and below
/// its capacity. Sets the owner (or none) and `lease_epoch + 1`, records the event
/// and wakes the nodes. The new epoch, or `None` when the conditions did not hold.
pub async fn release_strategy(
    pool: &PgPool,
    release: &Release<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "WITH target_ok AS ( \
             SELECT $4::text IS NULL OR EXISTS (SELECT 1 FROM engine_nodes n \
                 WHERE n.node = $4 AND {ALIVE} AND NOT n.draining \
                   AND (SELECT count(*) FROM strategy_configs o WHERE o.node = n.node) < n.capacity) AS ok), \
         moved AS ( \
             UPDATE strategy_configs c SET node = $4, lease_epoch = c.lease_epoch + 1 \
             WHERE c.id = $1 AND c.lease_epoch = $2 AND c.node = $3 AND (SELECT ok FROM target_ok) \
             RETURNING c.id, c.status, c.pid, c.lease_epoch), \
         noted AS ( \
             INSERT INTO strategy_events \
                 (event_id, strategy_id, old_status, new_status, reason, error, command_id, pid, node) \
             SELECT gen_random_uuid(), id, status, status, $5, \
                 CASE WHEN $4::text IS NULL \
                     THEN format('node %s is draining: it stopped the strategy and released it for another node to take (lease epoch %s)', $3::text, lease_epoch) \
                     ELSE format('moved from node %s to node %s (lease epoch %s)', $3::text, $4::text, lease_epoch) END, \
                 $6, pid, $3 \
             FROM moved RETURNING 1) \
         SELECT m.lease_epoch FROM moved m, (SELECT pg_notify($7, COALESCE($4, ''))) AS woken"
    ))
    .bind(release.id)
    .bind(release.epoch)
    .bind(release.from)
    .bind(release.to)
    .bind(release.reason)
    .bind(release.command_id)
    .bind(NODE_OPS_CHANNEL)
    .fetch_optional(pool)
    .await
}

/// Put a command node `node` claimed back to `pending` (the strategy is another
/// node's now, which claims it next), and wake the claimers. `false` when the row is
/// no longer `processing`, or another node took it over meanwhile
/// ([`adopt_orphaned_commands`]).
pub async fn requeue_command(pool: &PgPool, id: Uuid, node: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH back AS (UPDATE strategy_commands SET status = 'pending', claimed_by = NULL \
             WHERE id = $1 AND status = 'processing' \
               AND (claimed_by IS NULL OR claimed_by = $2) RETURNING id) \
         SELECT EXISTS (SELECT 1 FROM back) FROM (SELECT pg_notify('strategy_commands', '')) AS woken",
    )
    .bind(id)
    .bind(node)
    .fetch_one(pool)
    .await
}

/// Node `node` takes over the `processing` commands of the strategies it owns that
/// a node which stopped renewing its lease had claimed (`claimed_by`: a dead node,
/// or one with no `engine_nodes` row), oldest first: `claimed_by` becomes `node`, so
/// each row is taken over once, and the dead node, should it come back, neither
/// finishes nor requeues it ([`crate::manager::finish_command`], [`requeue_command`]).
/// `move` rows are not taken: the sweep of stuck moves ends them. With the rows, in
/// the same transaction, which strategies each has provably been through already
/// ([`crate::manager::superseded_recovered`]): a row is taken with them or not at all.
pub async fn adopt_orphaned_commands(
    pool: &PgPool,
    node: &str,
) -> Result<(Vec<CommandRow>, Vec<(Uuid, Uuid)>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut rows: Vec<CommandRow> = sqlx::query_as(
        "UPDATE strategy_commands k SET claimed_by = $1 \
         FROM strategy_configs c \
         WHERE k.status = 'processing' AND k.strategy_id = c.id AND c.node = $1 \
           AND k.claimed_by IS NOT NULL AND k.claimed_by <> $1 \
           AND lower(btrim(k.command)) <> 'move' \
           AND NOT EXISTS (SELECT 1 FROM engine_nodes n WHERE n.node = k.claimed_by \
               AND n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond') \
         RETURNING k.id, k.strategy_id, k.command, k.parameters, k.created_at, k.seq",
    )
    .bind(node)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok((rows, Vec::new()));
    }
    rows.sort_by_key(|r| (r.created_at, r.seq));
    let superseded = crate::manager::superseded_recovered(&mut *tx).await?;
    tx.commit().await?;
    Ok((rows, superseded))
}

/// The strategies `node` owns that it has no supervisor for (moved to it; `known`
/// are those it serves).
pub async fn moved_in(pool: &PgPool, node: &str, known: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM strategy_configs WHERE node = $1 AND NOT (id = ANY($2)) \
         ORDER BY created_at, id",
    )
    .bind(node)
    .bind(known)
    .fetch_all(pool)
    .await
}

/// A `drain` row still `processing`, with the node it names as the database knows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DrainRow {
    pub id: Uuid,
    pub parameters: Value,
    /// The node named exists and is alive.
    pub alive: bool,
    pub draining: bool,
    /// Seconds since the drain last made progress: since the row was sent, or since
    /// the named node last handed a strategy over (a `drain` event) after that.
    pub stalled_s: f64,
}

/// Every `drain` command still `processing`, oldest first.
pub async fn processing_drains(pool: &PgPool) -> Result<Vec<DrainRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT k.id, k.parameters, COALESCE({ALIVE}, false) AS alive, \
             COALESCE(n.draining, false) AS draining, \
             EXTRACT(EPOCH FROM now() - GREATEST(k.created_at, \
                 (SELECT max(e.at) FROM strategy_events e WHERE e.reason = 'drain' \
                    AND e.node = k.parameters->>'node' AND e.at >= k.created_at)))::float8 AS stalled_s \
         FROM strategy_commands k \
         LEFT JOIN engine_nodes n ON jsonb_typeof(k.parameters) = 'object' \
             AND n.node = k.parameters->>'node' \
         WHERE k.status = 'processing' AND k.strategy_id IS NULL AND k.command = 'drain' \
         ORDER BY k.created_at, k.seq"
    ))
    .fetch_all(pool)
    .await
}

/// A `move` row still `processing`, as the sweep of stuck moves judges it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MoveRow {
    pub id: Uuid,
    pub strategy_id: Uuid,
    /// The node it names (`None`: ill-formed; its claimer fails it).
    pub target: Option<String>,
    /// The node that handed the strategy over (the `move` event of the release,
    /// which leaves the status as it was), if one has.
    pub released_by: Option<String>,
    pub released_by_alive: bool,
    /// The strategy's owner now, and whether that node is alive.
    pub owner: Option<String>,
    pub owner_alive: bool,
    /// Seconds since the move last made progress: since the row was sent, or since
    /// its hand-over.
    pub stalled_s: f64,
    /// The node a failover took the strategy from after the row was sent (its owner
    /// died before the hand-over), if one did.
    pub taken_from: Option<String>,
}

/// Every `move` command still `processing`, oldest first.
pub async fn processing_moves(pool: &PgPool) -> Result<Vec<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT k.id, k.strategy_id, k.parameters->>'node' AS target, r.node AS released_by, \
             COALESCE((SELECT {ALIVE} FROM engine_nodes n WHERE n.node = r.node), false) AS released_by_alive, \
             c.node AS owner, \
             COALESCE((SELECT {ALIVE} FROM engine_nodes n WHERE n.node = c.node), false) AS owner_alive, \
             EXTRACT(EPOCH FROM now() - GREATEST(k.created_at, r.at))::float8 AS stalled_s, \
             (SELECT substring(f.error FROM '^node (.+) stopped renewing its lease') \
                FROM strategy_events f WHERE f.strategy_id = k.strategy_id \
                  AND f.reason = 'failover' AND f.at >= k.created_at \
                ORDER BY f.at DESC LIMIT 1) AS taken_from \
         FROM strategy_commands k JOIN strategy_configs c ON c.id = k.strategy_id \
         LEFT JOIN LATERAL (SELECT e.node, e.at FROM strategy_events e \
             WHERE e.strategy_id = k.strategy_id AND e.command_id = k.id AND e.reason = $1 \
               AND e.old_status IS NOT DISTINCT FROM e.new_status \
             ORDER BY e.at DESC LIMIT 1) r ON true \
         WHERE k.status = 'processing' AND lower(btrim(k.command)) = 'move' \
         ORDER BY k.created_at, k.seq"
    ))
    .bind(MOVE_REASON)
    .fetch_all(pool)
    .await
}

/// Record a command's outcome unless another node has already (a drain may be
/// finished by its node, by an undrain or by the sweep of a dead node's drains).
pub async fn finish_if_processing(
    pool: &PgPool,
    id: Uuid,
    outcome: &Result<(), String>,
) -> Result<Option<FinishedCommand>, sqlx::Error> {
    let (status, error) = match outcome {
        Ok(()) => (CommandStatus::Executed, None),
        Err(e) => (CommandStatus::Failed, Some(e.as_str())),
    };
    sqlx::query_as(
        "UPDATE strategy_commands SET status = $2, error = $3, executed_at = now() \
         WHERE id = $1 AND status = 'processing' \
         RETURNING command, status, extract(epoch FROM executed_at - created_at)::float8 AS latency_s",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(error)
    .fetch_optional(pool)
    .await
}

/// Where a handed-over strategy is, as the database says after its hand-over.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HandOverProgress {
    pub id: Uuid,
    pub name: String,
    /// Its owner now.
    pub node: Option<String>,
    pub desired_state: String,
    pub status: String,
    pub last_error: Option<String>,
    /// Its hand-over's event exists (it left the old node).
    pub released: bool,
    /// The node that took it to `running` or `paused` since (not the old node).
    pub started_on: Option<String>,
    /// Another node recorded `error` for it since (its start failed there).
    pub failed_elsewhere: bool,
}

impl HandOverProgress {
    /// Handed over, and either running elsewhere now or not meant to run (stopped,
    /// or in `error` as it was before: nothing starts it).
    pub fn settled(&self) -> bool {
        if !self.released {
            return false;
        }
        let should_run = matches!(self.desired_state.as_str(), "running" | "paused");
        !should_run
            || self.started_on.is_some()
            || (self.status == "error" && !self.failed_elsewhere)
    }
}

/// The progress of the strategies `ids` handed over by `from` under `command_id`
/// with `reason` (the events of [`release_strategy`] say when each left; the new
/// owner's own events say when it runs). Deleted strategies are left out.
pub async fn hand_over_progress(
    pool: &PgPool,
    ids: &[Uuid],
    command_id: Uuid,
    reason: &str,
    from: &str,
) -> Result<Vec<HandOverProgress>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.name, c.node, c.desired_state, c.status, c.last_error, \
             r.released IS NOT NULL AS released, \
             (SELECT e.node FROM strategy_events e WHERE e.strategy_id = c.id AND e.id > r.released \
                 AND e.new_status IN ('running', 'paused') \
                 AND e.old_status IS DISTINCT FROM e.new_status AND e.node <> $4 \
              ORDER BY e.id LIMIT 1) AS started_on, \
             EXISTS (SELECT 1 FROM strategy_events e WHERE e.strategy_id = c.id AND e.id > r.released \
                 AND e.new_status = 'error' AND e.node <> $4) AS failed_elsewhere \
         FROM strategy_configs c \
         LEFT JOIN LATERAL (SELECT max(e.id) AS released FROM strategy_events e \
             WHERE e.strategy_id = c.id AND e.command_id = $2 AND e.reason = $3) r ON true \
         WHERE c.id = ANY($1) ORDER BY c.name",
    )
    .bind(ids)
    .bind(command_id)
    .bind(reason)
    .bind(from)
    .fetch_all(pool)
    .await
}
