-- Schedules of runs (CONTRACT.md §5 "strategy_schedules"): rows that make
-- `strategy_runs` rows on a cron timetable (five fields, UTC unless `timezone` says
-- otherwise) or every `interval_s` seconds. Operators write the definition; the
-- manager writes the statistics and `last_error`.
--
-- What the schema cannot check (a cron expression that does not parse, a time zone
-- it does not know) the manager reports in `last_error`, naming the field at fault,
-- and such a schedule makes no runs.

CREATE TABLE strategy_schedules (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    strategy_id      UUID NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    mode             TEXT NOT NULL
                     CONSTRAINT schedule_mode_vocabulary CHECK (mode IN ('backtest', 'screener', 'alert')),
    parameters       JSONB NOT NULL DEFAULT '{}'::jsonb
                     CONSTRAINT schedule_parameters_is_a_json_object CHECK (jsonb_typeof(parameters) = 'object'),
    priority         TEXT NOT NULL DEFAULT 'normal'
                     CONSTRAINT schedule_priority_vocabulary CHECK (priority IN ('high', 'normal', 'low')),
    timeout_s        INTEGER NULL
                     CONSTRAINT schedule_timeout_range CHECK (timeout_s > 0 AND timeout_s <= 86400),
    cron             TEXT NULL,
    timezone         TEXT NULL,
    interval_s       INTEGER NULL
                     CONSTRAINT schedule_interval_positive CHECK (interval_s > 0),
    enabled          BOOLEAN NOT NULL DEFAULT true,
    overlap          TEXT NOT NULL DEFAULT 'skip'
                     CONSTRAINT schedule_overlap_vocabulary CHECK (overlap IN ('skip', 'queue', 'cancel_previous')),
    catch_up         TEXT NOT NULL DEFAULT 'one'
                     CONSTRAINT schedule_catch_up_vocabulary CHECK (catch_up IN ('one', 'none')),
    -- Written by the manager.
    next_run_at      TIMESTAMPTZ NULL,
    last_run_at      TIMESTAMPTZ NULL,
    last_run_id      UUID NULL,
    runs_created     BIGINT NOT NULL DEFAULT 0,
    skipped_overlap  BIGINT NOT NULL DEFAULT 0,
    missed           BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT schedule_cron_or_interval CHECK ((cron IS NULL) <> (interval_s IS NULL)),
    CONSTRAINT schedule_timezone_with_cron CHECK (timezone IS NULL OR cron IS NOT NULL),
    CONSTRAINT schedule_parameters_size_limit
        CHECK (octet_length(parameters::text) <= 65536
               OR engine_input_too_large('parameters', octet_length(parameters::text), 65536, 'schedule_parameters_size_limit'))
);

CREATE INDEX strategy_schedules_by_strategy ON strategy_schedules (strategy_id);

-- The exactly-once key: a run made by a schedule names it and the due time it
-- serves, and one due time of one schedule makes at most one row, whatever happens
-- (a manager killed at the due moment, two managers at the same due time). Runs
-- inserted by hand leave both NULL.
ALTER TABLE strategy_runs
    ADD COLUMN schedule_id   UUID NULL REFERENCES strategy_schedules(id) ON DELETE SET NULL,
    ADD COLUMN scheduled_for TIMESTAMPTZ NULL,
    ADD CONSTRAINT run_schedule_due_once UNIQUE (schedule_id, scheduled_for);

-- Wake the manager on every change of what a schedule is (insert, delete, and an
-- update of an operator's column), with the schedule's id; the manager's own
-- writes of the statistics wake nobody.
CREATE FUNCTION strategy_schedules_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND
       (OLD.strategy_id, OLD.mode, OLD.parameters, OLD.priority, OLD.timeout_s, OLD.cron,
        OLD.timezone, OLD.interval_s, OLD.enabled, OLD.overlap, OLD.catch_up)
       IS NOT DISTINCT FROM
       (NEW.strategy_id, NEW.mode, NEW.parameters, NEW.priority, NEW.timeout_s, NEW.cron,
        NEW.timezone, NEW.interval_s, NEW.enabled, NEW.overlap, NEW.catch_up) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('strategy_schedules', OLD.id::text);
    ELSE
        PERFORM pg_notify('strategy_schedules', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER strategy_schedules_changed
    AFTER INSERT OR UPDATE OR DELETE ON strategy_schedules
    FOR EACH ROW EXECUTE FUNCTION strategy_schedules_notify();
