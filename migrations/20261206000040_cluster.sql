-- Several managers (CONTRACT.md §7, issue #13), first slice: the nodes, who owns each
-- strategy and run, and the table of paper orders. Additive only: a manager started
-- without --cluster never reads these columns, and behaves as before.

-- One row per node that ever ran with --cluster. A node upserts its row at start and
-- beats it (one statement per beat, whatever the number of strategies it owns); a
-- node whose heartbeat_at is older than the lease time is dead.
CREATE TABLE engine_nodes (
    node          TEXT PRIMARY KEY CONSTRAINT engine_nodes_name CHECK (length(node) BETWEEN 1 AND 200),
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    -- The host's boot id when the node started: tells a reboot from a restart.
    boot_id       TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    -- The most strategies it takes (--capacity).
    capacity      INTEGER NOT NULL CONSTRAINT engine_nodes_capacity CHECK (capacity > 0),
    -- Its lease time (--lease-time), so that every node and tool judges it alike.
    lease_ms      INTEGER NOT NULL CONSTRAINT engine_nodes_lease CHECK (lease_ms > 0),
    draining      BOOLEAN NOT NULL DEFAULT false
);

-- The owner of a strategy (NULL: none) and the epoch of its lease, one more at each
-- change of owner.
ALTER TABLE strategy_configs
    ADD COLUMN node        TEXT NULL,
    ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX strategy_configs_by_node ON strategy_configs (node);

-- strategy_runs.node exists since the runs migration (the manager that runs it).
ALTER TABLE strategy_runs
    ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;

-- Every paper order (CONTRACT.md §7): its client order id carries the lease epoch,
-- so that an order of a stale owner is recognisable. The table only in this slice:
-- nothing writes it yet.
CREATE TABLE strategy_orders (
    id               BIGSERIAL PRIMARY KEY,
    strategy_id      UUID NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    run_id           UUID NULL REFERENCES strategy_runs(id) ON DELETE CASCADE,
    client_order_id  TEXT NOT NULL,
    lease_epoch      BIGINT NOT NULL,
    node             TEXT NULL,
    side             TEXT NOT NULL CONSTRAINT strategy_orders_side CHECK (side IN ('buy', 'sell')),
    quantity         NUMERIC NOT NULL,
    price            NUMERIC NOT NULL,
    fee              NUMERIC NOT NULL DEFAULT 0,
    at               TIMESTAMPTZ NOT NULL,
    CONSTRAINT strategy_orders_client_order_id UNIQUE (strategy_id, client_order_id)
);
CREATE INDEX strategy_orders_by_strategy ON strategy_orders (strategy_id, at DESC);
