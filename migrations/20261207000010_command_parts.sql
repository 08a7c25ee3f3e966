-- Global commands in a cluster (CONTRACT.md §1 and §7, issue #13). A global row
-- (strategy_id NULL) is carried out by every node for the strategies it owns: the node
-- that claims the row writes one part per live node (and a failed part for each dead
-- node that still owns strategies the command concerns), each node claims its own part
-- in created_at order among its strategies' commands, applies it, and finishes it; the
-- node that finishes the last part finishes the row. Additive only: a manager without
-- --cluster never reads this table.

CREATE TABLE strategy_command_parts (
    command_id  UUID NOT NULL REFERENCES strategy_commands(id) ON DELETE CASCADE,
    node        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending'
        CONSTRAINT strategy_command_parts_status
        CHECK (status IN ('pending', 'processing', 'executed', 'failed')),
    -- The node's strategies the command concerned when the part was written, as the
    -- database saw them: named in the error if the node dies before it finishes.
    strategies  UUID[] NOT NULL DEFAULT '{}',
    error       TEXT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at     TIMESTAMPTZ NULL,
    PRIMARY KEY (command_id, node)
);

-- The parts not finished yet (each node's claim, and the sweep of dead nodes' parts).
CREATE INDEX strategy_command_parts_open ON strategy_command_parts (node, command_id)
    WHERE status IN ('pending', 'processing');

-- A cluster node's claim looks for the first global command it has yet to take.
CREATE INDEX strategy_commands_global_open ON strategy_commands (created_at, seq)
    WHERE strategy_id IS NULL AND status IN ('pending', 'processing');

-- Wake every node when parts are written (the intake listens on strategy_commands).
CREATE TRIGGER strategy_command_parts_inserted
    AFTER INSERT ON strategy_command_parts
    FOR EACH STATEMENT EXECUTE FUNCTION strategy_commands_notify();
