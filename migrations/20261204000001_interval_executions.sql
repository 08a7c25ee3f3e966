-- Interval strategies (issue #12, CONTRACT.md §5): a strategy with an
-- `execution_interval_s` is executed by its executor once every that many seconds on
-- the manager's clock (and once per `trigger` command); `max_execution_s` bounds one
-- execution. The statistics columns are written by the manager only (in batches, at
-- most a second behind).
--
-- The range checks call engine_value_refused, which refuses the row in words under
-- the constraint's name ("execution_interval_s is 0; it must be a whole number of
-- seconds from 1 to 31536000, or NULL for a continuous strategy"), so psql, enginectl
-- and the HTTP API all show the same words.
CREATE FUNCTION engine_value_refused(message text, constraint_name text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION '%', message
        USING ERRCODE = 'check_violation',
              CONSTRAINT = constraint_name;
END
$$;

ALTER TABLE strategy_configs
    ADD COLUMN execution_interval_s       INTEGER NULL,
    ADD COLUMN max_execution_s            INTEGER NOT NULL DEFAULT 30,
    ADD COLUMN next_execution_at          TIMESTAMPTZ NULL,
    ADD COLUMN last_execution_at          TIMESTAMPTZ NULL,
    ADD COLUMN execution_count            BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN successful_executions      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN failed_executions          BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN skipped_executions         BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_execution_duration_ms BIGINT NULL,
    ADD COLUMN avg_execution_ms           DOUBLE PRECISION NULL,
    ADD COLUMN last_execution_error       TEXT NULL;

ALTER TABLE strategy_configs ADD CONSTRAINT execution_interval_range
    CHECK (execution_interval_s IS NULL
           OR execution_interval_s BETWEEN 1 AND 31536000
           OR engine_value_refused(
                  format('execution_interval_s is %s; it must be a whole number of seconds from 1 to 31536000 (a year), or NULL for a continuous strategy',
                         execution_interval_s),
                  'execution_interval_range'));

ALTER TABLE strategy_configs ADD CONSTRAINT max_execution_range
    CHECK (max_execution_s BETWEEN 1 AND 3600
           OR engine_value_refused(
                  format('max_execution_s is %s; it must be a whole number of seconds from 1 to 3600 (default 30)',
                         max_execution_s),
                  'max_execution_range'));

COMMENT ON COLUMN strategy_configs.execution_interval_s IS
    'NULL: a continuous strategy. Seconds between executions of an interval strategy (CONTRACT §5), on the manager''s clock.';
COMMENT ON COLUMN strategy_configs.max_execution_s IS
    'How long one execution may take (1..3600 s): past it the execution counts as failed; 5 s more and the executor is killed and restarted.';
COMMENT ON COLUMN strategy_configs.skipped_executions IS
    'Due executions that never ran: still waiting for a slot when the next was due, or missed while the manager was down.';
