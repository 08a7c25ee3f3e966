-- Paper orders (CONTRACT.md §7), now written: the token each order was for (additive;
-- NULL in rows written before it), and an index for a run's orders (`enginectl orders
-- --run`, and the cascade when a run is deleted).
ALTER TABLE strategy_orders ADD COLUMN token TEXT NULL;
CREATE INDEX strategy_orders_by_run ON strategy_orders (run_id, at) WHERE run_id IS NOT NULL;
