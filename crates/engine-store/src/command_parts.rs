//! Global commands in a cluster (CONTRACT.md §1 and §7): a global row is carried out
//! by every node for the strategies it owns, one `strategy_command_parts` row per node.
//!
//! - The node that claims a global row writes the parts: one per live node (its own
//!   already `processing`), and a `failed` one for each dead node that still owns
//!   strategies the command concerns (they cannot be reached until another node takes
//!   them over, and would then run as their `desired_state` says).
//! - A node claims its own commands in `created_at` order, and stops before the first
//!   global command it has yet to take its place in ([`claim_pending_node`]): so a
//!   global command takes its place in every strategy's order, as on a single manager.
//! - [`finish_part`] finishes a node's part and, when it was the last one, the row:
//!   `executed` when every part was, else `failed` naming each node's failures. Every
//!   finisher first locks the command row, so exactly one of them sees the last part.
//! - [`fail_dead_parts`]: a part whose node stopped renewing its lease is finished
//!   for it (`failed`, naming the strategies it concerned there), so no row stays
//!   `processing` because a node died.

use crate::commands::parse_command;
use crate::manager::CommandRow;
use crate::metrics::FinishedCommand;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Whether a strategy `c` is concerned by the global command word `$3`, as the
/// database sees it (the supervisor's own rule, `applies_globally`, decides on the
/// node that owns it): what a dead node's part names.
const CONCERNED: &str = "CASE $3 WHEN 'stop' THEN c.status NOT IN ('stopped', 'error') \
     WHEN 'pause' THEN c.status = 'running' ELSE c.status = 'paused' END";

/// A live node: its heartbeat is younger than its own lease time.
const LIVE: &str = "n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond'";

/// The first global command node `$1` has yet to take its place in: `pending` (no
/// node has taken it), or `processing` with this node's part still `pending`.
#[derive(Debug, sqlx::FromRow)]
struct Barrier {
    id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    seq: i64,
}

/// A cluster node's claim (see the module's words): its own strategies' pending
/// commands before the first global command it has yet to take, then that global
/// command (the row itself, writing every node's part, or this node's part of it).
/// A global row comes back with `part` set, unless its word or parameters are not
/// valid: then it has no parts and is finished `failed` as a row.
pub async fn claim_pending_node(
    pool: &PgPool,
    limit: i64,
    node: &str,
) -> Result<Vec<CommandRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let barrier: Option<Barrier> = sqlx::query_as(
        "SELECT c.id, c.status, c.created_at, c.seq FROM strategy_commands c \
         WHERE c.strategy_id IS NULL AND c.status IN ('pending', 'processing') \
           AND (c.status = 'pending' OR EXISTS (SELECT 1 FROM strategy_command_parts p \
               WHERE p.command_id = c.id AND p.node = $1 AND p.status = 'pending')) \
         ORDER BY c.created_at, c.seq LIMIT 1",
    )
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?;
    let mut rows: Vec<CommandRow> = sqlx::query_as(
        "WITH next AS ( \
             SELECT id FROM strategy_commands WHERE status = 'pending' \
                 AND strategy_id IN (SELECT id FROM strategy_configs WHERE node = $2) \
                 AND ($3::timestamptz IS NULL OR (created_at, seq) < ($3, $4)) \
             ORDER BY created_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE strategy_commands c SET status = 'processing', claimed_by = $2 \
         FROM next WHERE c.id = next.id \
         RETURNING c.id, c.strategy_id, c.command, c.parameters, c.created_at, c.seq",
    )
    .bind(limit)
    .bind(node)
    .bind(barrier.as_ref().map(|b| b.created_at))
    .bind(barrier.as_ref().map_or(0, |b| b.seq))
    .fetch_all(&mut *tx)
    .await?;
    rows.sort_by_key(|r| (r.created_at, r.seq));
    if let (Some(barrier), true) = (barrier, (rows.len() as i64) < limit) {
        let global = if barrier.status == "pending" {
            take_global(&mut tx, barrier.id, node).await?
        } else {
            take_part(&mut tx, barrier.id, node).await?
        };
        rows.extend(global);
    }
    tx.commit().await?;
    Ok(rows)
}

/// Take a pending global row (unless another node is taking it right now) and, if
/// it is valid, write every node's part.
async fn take_global(
    tx: &mut PgConnection,
    id: Uuid,
    node: &str,
) -> Result<Option<CommandRow>, sqlx::Error> {
    let row: Option<CommandRow> = sqlx::query_as(
        "UPDATE strategy_commands c SET status = 'processing' \
         WHERE c.id = (SELECT id FROM strategy_commands WHERE id = $1 AND status = 'pending' \
                       FOR UPDATE SKIP LOCKED) \
         RETURNING c.id, c.strategy_id, c.command, c.parameters, c.created_at, c.seq",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    let Ok(kind) = parse_command(&row.command, &row.parameters, true) else {
        return Ok(Some(row)); // refused as a row, with the parser's words
    };
    write_parts(tx, id, node, kind.word()).await?;
    row.part = true;
    Ok(Some(row))
}

/// The parts of global command `id` (word `word`), taken by node `node`: its own
/// (`processing`), one `pending` per other live node, and a `failed` one per dead
/// node that owns strategies the command concerns.
async fn write_parts(
    tx: &mut PgConnection,
    id: Uuid,
    node: &str,
    word: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO strategy_command_parts (command_id, node, status, strategies) \
         SELECT $1, n.node, CASE WHEN n.node = $2 THEN 'processing' ELSE 'pending' END, \
             ARRAY(SELECT c.id FROM strategy_configs c WHERE c.node = n.node AND {CONCERNED} \
                   ORDER BY c.name) \
         FROM (SELECT node, heartbeat_at, lease_ms FROM engine_nodes \
               UNION ALL SELECT $2, now(), 1 \
                   WHERE NOT EXISTS (SELECT 1 FROM engine_nodes WHERE node = $2)) n \
         WHERE n.node = $2 OR {LIVE}"
    ))
    .bind(id)
    .bind(node)
    .bind(word)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO strategy_command_parts (command_id, node, status, strategies, error, done_at) \
         SELECT $1, c.node, 'failed', array_agg(c.id ORDER BY c.name), \
             format('not live when the command was taken (%s): %s not reached; another node \
                     will start %s as %s desired_state says once it takes %s over; send the \
                     command again then', \
                 CASE WHEN n.node IS NULL THEN 'no row in engine_nodes' \
                     ELSE format('no heartbeat for %s s, lease %s s', \
                         round(extract(epoch FROM now() - n.heartbeat_at)::numeric, 1), \
                         round(n.lease_ms / 1000.0, 1)) END, \
                 string_agg(c.name, ', ' ORDER BY c.name), \
                 CASE WHEN count(*) = 1 THEN 'it' ELSE 'them' END, \
                 CASE WHEN count(*) = 1 THEN 'its' ELSE 'their' END, \
                 CASE WHEN count(*) = 1 THEN 'it' ELSE 'them' END), \
             now() \
         FROM strategy_configs c LEFT JOIN engine_nodes n ON n.node = c.node \
         WHERE c.node IS NOT NULL AND c.node <> $2 AND {CONCERNED} \
           AND (n.node IS NULL OR NOT ({LIVE})) \
         GROUP BY c.node, n.node, n.heartbeat_at, n.lease_ms"
    ))
    .bind(id)
    .bind(node)
    .bind(word)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Take this node's pending part of global command `id`.
async fn take_part(
    tx: &mut PgConnection,
    id: Uuid,
    node: &str,
) -> Result<Option<CommandRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH taken AS ( \
             UPDATE strategy_command_parts SET status = 'processing' \
             WHERE command_id = $1 AND node = $2 AND status = 'pending' RETURNING command_id) \
         SELECT c.id, c.strategy_id, c.command, c.parameters, c.created_at, c.seq, true AS part \
         FROM strategy_commands c JOIN taken ON taken.command_id = c.id",
    )
    .bind(id)
    .bind(node)
    .fetch_optional(&mut *tx)
    .await
}

/// Finish node `node`'s part of global command `id` (`Err`: `failed` with those
/// words), unless it is finished already; when no part is left open, finish the row
/// too: `executed` if every part was, else `failed` with each failed part's words,
/// by node. Returns the row as written when this call finished it.
pub async fn finish_part(
    pool: &PgPool,
    id: Uuid,
    node: &str,
    outcome: &Result<(), String>,
) -> Result<Option<FinishedCommand>, sqlx::Error> {
    let (status, error) = match outcome {
        Ok(()) => ("executed", None),
        Err(e) => ("failed", Some(e.as_str())),
    };
    let mut tx = pool.begin().await?;
    // Every finisher of this command's parts waits here for the one before it, and
    // each statement after sees what those committed: the last part is seen once.
    sqlx::query("SELECT 1 FROM strategy_commands WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE strategy_command_parts SET status = $3, error = $4, done_at = now() \
         WHERE command_id = $1 AND node = $2 AND status IN ('pending', 'processing')",
    )
    .bind(id)
    .bind(node)
    .bind(status)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    let finished = sqlx::query_as(
        "WITH parts AS ( \
             SELECT count(*) FILTER (WHERE status IN ('pending', 'processing')) AS open, \
                 count(*) FILTER (WHERE status = 'failed') AS failed, \
                 string_agg(format('on node %s: %s', node, error), '; ' ORDER BY node) \
                     FILTER (WHERE status = 'failed') AS errors \
             FROM strategy_command_parts WHERE command_id = $1) \
         UPDATE strategy_commands c \
         SET status = CASE WHEN parts.failed = 0 THEN 'executed' ELSE 'failed' END, \
             error = CASE WHEN parts.failed = 0 THEN NULL \
                 ELSE 'did not take effect everywhere: ' || parts.errors END, \
             executed_at = now() \
         FROM parts WHERE c.id = $1 AND c.status = 'processing' AND parts.open = 0 \
         RETURNING c.command, c.status, \
             extract(epoch FROM c.executed_at - c.created_at)::float8 AS latency_s",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(finished)
}

/// A part whose node stopped renewing its lease before finishing it.
#[derive(Debug, sqlx::FromRow)]
struct DeadPart {
    command_id: Uuid,
    node: String,
    /// Seconds since its last heartbeat (`None`: its `engine_nodes` row is gone).
    silent_s: Option<f64>,
    lease_s: Option<f64>,
    /// The strategies the command concerned there, by name (`None`: none).
    names: Option<String>,
}

/// Finish the open parts of nodes that stopped renewing their lease: `failed`,
/// naming the strategies each concerned there, or `executed` where it concerned
/// none. Returns the rows this finished (see [`finish_part`]).
pub async fn fail_dead_parts(pool: &PgPool) -> Result<Vec<FinishedCommand>, sqlx::Error> {
    let dead: Vec<DeadPart> = sqlx::query_as(&format!(
        "SELECT p.command_id, p.node, \
             extract(epoch FROM now() - n.heartbeat_at)::float8 AS silent_s, \
             n.lease_ms / 1000.0::float8 AS lease_s, \
             (SELECT string_agg(c.name, ', ' ORDER BY c.name) FROM strategy_configs c \
              WHERE c.id = ANY(p.strategies)) AS names \
         FROM strategy_command_parts p LEFT JOIN engine_nodes n ON n.node = p.node \
         WHERE p.status IN ('pending', 'processing') AND (n.node IS NULL OR NOT ({LIVE}))"
    ))
    .fetch_all(pool)
    .await?;
    let mut finished = Vec::new();
    for part in dead {
        let outcome = match &part.names {
            None => Ok(()),
            Some(names) => Err(dead_part_error(&part, names)),
        };
        if let Some(row) = finish_part(pool, part.command_id, &part.node, &outcome).await? {
            finished.push(row);
        }
    }
    Ok(finished)
}

fn dead_part_error(part: &DeadPart, names: &str) -> String {
    let silence = match (part.silent_s, part.lease_s) {
        (Some(silent), Some(lease)) => {
            format!("no heartbeat for {silent:.1} s, lease {lease:.1} s")
        }
        _ => "its row in engine_nodes is gone".to_string(),
    };
    format!(
        "stopped renewing its lease ({silence}) before it finished its part; \
         not known to have taken effect on: {names}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_part_names_its_silence_and_strategies() {
        let part = DeadPart {
            command_id: Uuid::nil(),
            node: "node-b".into(),
            silent_s: Some(12.34),
            lease_s: Some(10.0),
            names: Some("hb-1, hb-2".into()),
        };
        assert_eq!(
            dead_part_error(&part, "hb-1, hb-2"),
            "stopped renewing its lease (no heartbeat for 12.3 s, lease 10.0 s) before it \
             finished its part; not known to have taken effect on: hb-1, hb-2"
        );
        let gone = DeadPart {
            silent_s: None,
            lease_s: None,
            ..part
        };
        assert!(dead_part_error(&gone, "x").contains("its row in engine_nodes is gone"));
    }
}
