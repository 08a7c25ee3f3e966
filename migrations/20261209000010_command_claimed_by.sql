-- Who claimed a per-strategy command (CONTRACT.md §7, issue #13): the cluster node
-- that set the row `processing` (NULL: claimed by a manager without --cluster, by an
-- older version, or not claimed). When that node stops renewing its lease, the node
-- that owns the strategy now takes the row over (the column then names it) and
-- carries it out once. Additive only: nothing else reads the column.
ALTER TABLE strategy_commands ADD COLUMN claimed_by TEXT NULL;
