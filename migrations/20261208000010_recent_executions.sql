-- The last executions of each interval strategy, as published on
-- `strategy:execution:{id}` (additive): a ring of 30 slots per strategy, each new
-- execution overwriting the oldest's slot, written by the manager in its batched
-- statistics write (one statement per batch, never one per execution; no deletes)
-- and read back when it starts, so that `executions.recent` of the HTTP API (the
-- dashboard's duration sparkline) survives a manager restart.
CREATE TABLE strategy_recent_executions (
    strategy_id UUID        NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    slot        SMALLINT    NOT NULL CHECK (slot BETWEEN 0 AND 29),
    started_at  TIMESTAMPTZ NOT NULL,
    duration_ms BIGINT      NOT NULL,
    outcome     TEXT        NOT NULL CHECK (outcome IN ('ok', 'error', 'timeout', 'skipped')),
    PRIMARY KEY (strategy_id, slot)
);

COMMENT ON TABLE strategy_recent_executions IS
    'The last executions of each interval strategy (a ring of 30 slots per strategy), written by the manager with its statistics and read back at its start for executions.recent.';
