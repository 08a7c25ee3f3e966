-- Runs (CONTRACT.md §4): finite work done with a strategy's code — backtests,
-- screeners, alert scans — and the market data they read.

-- Market data at rest. `data generate` and `data import` fill these with COPY.
CREATE TABLE securities (
    symbol  TEXT PRIMARY KEY CHECK (length(btrim(symbol)) > 0),
    name    TEXT NULL,
    sector  TEXT NULL,
    active  BOOLEAN NOT NULL DEFAULT true
);

CREATE TABLE market_bars (
    symbol    TEXT NOT NULL,
    interval  TEXT NOT NULL,
    ts        TIMESTAMPTZ NOT NULL,
    open      DOUBLE PRECISION NOT NULL,
    high      DOUBLE PRECISION NOT NULL,
    low       DOUBLE PRECISION NOT NULL,
    close     DOUBLE PRECISION NOT NULL,
    volume    DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, interval, ts)
);

CREATE TABLE strategy_runs (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    strategy_id       UUID NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    mode              TEXT NOT NULL
                      CONSTRAINT run_mode_vocabulary CHECK (mode IN ('backtest', 'screener', 'alert')),
    parameters        JSONB NOT NULL DEFAULT '{}'::jsonb
                      CONSTRAINT run_parameters_is_a_json_object CHECK (jsonb_typeof(parameters) = 'object'),
    priority          TEXT NOT NULL DEFAULT 'normal'
                      CONSTRAINT run_priority_vocabulary CHECK (priority IN ('high', 'normal', 'low')),
    timeout_s         INTEGER NULL
                      CONSTRAINT run_timeout_range CHECK (timeout_s > 0 AND timeout_s <= 86400),
    state             TEXT NOT NULL DEFAULT 'queued'
                      CONSTRAINT run_state_vocabulary CHECK (state IN ('queued', 'starting', 'running', 'completed', 'error', 'cancelled', 'timed_out')),
    progress_percent  DOUBLE PRECISION NOT NULL DEFAULT 0,
    completed_items   BIGINT NULL,
    total_items       BIGINT NULL,
    items_per_second  DOUBLE PRECISION NULL,
    eta_s             DOUBLE PRECISION NULL,
    stage             TEXT NULL,
    current_item      TEXT NULL,
    message           TEXT NULL,
    config            JSONB NULL,
    result            JSONB NULL,
    error             TEXT NULL,
    pid               INTEGER NULL,
    node              TEXT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ NULL,
    finished_at       TIMESTAMPTZ NULL,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Manager bookkeeping (not part of the contract), as on strategy_configs: the
    -- start time of `pid` and the boot it belongs to, so that a reused pid is never
    -- mistaken for the run's process; and insertion order, which breaks ties between
    -- rows of one transaction.
    pid_start_ticks   BIGINT NULL,
    pid_boot_id       TEXT NULL,
    seq               BIGSERIAL NOT NULL
);

-- The queue: high before normal before low, oldest first.
CREATE INDEX strategy_runs_queue ON strategy_runs (
    (CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END), created_at, seq
) WHERE state = 'queued';
CREATE INDEX strategy_runs_active ON strategy_runs (created_at) WHERE state IN ('starting', 'running');
CREATE INDEX strategy_runs_by_strategy ON strategy_runs (strategy_id, created_at DESC);

-- A run is inserted queued; every other state is the manager's to set.
CREATE FUNCTION strategy_runs_guard_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'queued' THEN
        RAISE EXCEPTION 'a run is inserted with state ''queued'', not ''%''; the manager moves it on', NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'run_inserted_queued';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER strategy_runs_insert_guard
    BEFORE INSERT ON strategy_runs
    FOR EACH ROW EXECUTE FUNCTION strategy_runs_guard_insert();

-- Wake the manager at once on every INSERT (one notification per statement).
CREATE FUNCTION strategy_runs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('strategy_runs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER strategy_runs_inserted
    AFTER INSERT ON strategy_runs
    FOR EACH STATEMENT EXECUTE FUNCTION strategy_runs_notify();

CREATE TABLE strategy_run_items (
    run_id        UUID NOT NULL REFERENCES strategy_runs(id) ON DELETE CASCADE,
    item          TEXT NOT NULL,
    position      INTEGER NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    passed        BOOLEAN NULL,
    score         DOUBLE PRECISION NULL,
    detail        JSONB NULL,
    PRIMARY KEY (run_id, item)
);
