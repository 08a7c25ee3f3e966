-- The engine's schema: the public contract (CONTRACT.md §1) plus the manager's own
-- bookkeeping columns and tables. gen_random_uuid() is built into PostgreSQL 13+.

CREATE TABLE strategy_configs (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name            TEXT NOT NULL UNIQUE CHECK (length(btrim(name)) > 0),
    strategy_type   TEXT NOT NULL,
    config          JSONB NOT NULL DEFAULT '{}'::jsonb
                    CONSTRAINT config_is_a_json_object CHECK (jsonb_typeof(config) = 'object'),
    auto_start      BOOLEAN NOT NULL DEFAULT false,
    desired_state   TEXT NOT NULL DEFAULT 'stopped'
                    CONSTRAINT desired_state_vocabulary CHECK (desired_state IN ('running', 'paused', 'stopped')),
    status          TEXT NOT NULL DEFAULT 'stopped'
                    CONSTRAINT status_vocabulary CHECK (status IN ('stopped', 'starting', 'running', 'paused', 'stopping', 'backoff', 'error')),
    pid             INTEGER NULL,
    last_error      TEXT NULL,
    restart_count   INTEGER NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Manager bookkeeping (not part of the contract):
    -- start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), and
    -- the boot it belongs to, so a reused pid is never mistaken for our executor.
    pid_start_ticks BIGINT NULL,
    pid_boot_id     TEXT NULL,
    -- true once an operator's stop (own or global) was the last word on this strategy.
    operator_stopped BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE strategy_commands (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    strategy_id  UUID NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    command      TEXT NOT NULL,
    parameters   JSONB NOT NULL DEFAULT '{}'::jsonb,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CONSTRAINT command_status_vocabulary CHECK (status IN ('pending', 'processing', 'executed', 'failed')),
    error        TEXT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    executed_at  TIMESTAMPTZ NULL,
    -- Insertion order: breaks ties between rows of one transaction (same now()).
    seq          BIGSERIAL NOT NULL
);

CREATE INDEX strategy_commands_pending ON strategy_commands (created_at, seq) WHERE status = 'pending';
CREATE INDEX strategy_commands_processing ON strategy_commands (created_at, seq) WHERE status = 'processing';
CREATE INDEX strategy_commands_by_strategy ON strategy_commands (strategy_id, created_at DESC);

-- Wake the manager at once on every INSERT (one notification per statement).
CREATE FUNCTION strategy_commands_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('strategy_commands', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER strategy_commands_inserted
    AFTER INSERT ON strategy_commands
    FOR EACH STATEMENT EXECUTE FUNCTION strategy_commands_notify();

CREATE TABLE strategy_metrics (
    id               BIGSERIAL PRIMARY KEY,
    strategy_id      UUID NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    "timestamp"      TIMESTAMPTZ NOT NULL,
    -- 'strategy' for what the executor reported, 'health' for the manager's samples.
    source           TEXT NOT NULL DEFAULT 'strategy',
    pnl              NUMERIC NULL,
    positions_count  INTEGER NULL,
    orders_count     INTEGER NULL,
    success_rate     DOUBLE PRECISION NULL,
    cpu_percent      DOUBLE PRECISION NULL,
    memory_mb        DOUBLE PRECISION NULL,
    metrics          JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX strategy_metrics_by_strategy ON strategy_metrics (strategy_id, "timestamp" DESC);
CREATE INDEX strategy_metrics_by_time ON strategy_metrics ("timestamp");

-- A strategy whose executor may be alive cannot be deleted: stop it first. This keeps
-- "never an executor the engine does not know about" true.
CREATE FUNCTION strategy_configs_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status NOT IN ('stopped', 'error') THEN
        RAISE EXCEPTION 'strategy "%" is %; stop it first (INSERT INTO strategy_commands (strategy_id, command) VALUES (''%'', ''stop'')), then delete it', OLD.name, OLD.status, OLD.id
            USING ERRCODE = 'object_in_use';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER strategy_configs_delete_guard
    BEFORE DELETE ON strategy_configs
    FOR EACH ROW EXECUTE FUNCTION strategy_configs_guard_delete();

-- Who serves this database: one row, written by the manager holding the advisory lock.
CREATE TABLE engine_manager_lease (
    id            INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    boot_id       TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);
