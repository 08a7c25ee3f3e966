-- Least privilege and audit (20261205000001) over what landed beside it: the
-- schedules of runs (20261204000002), and the interval columns (20261204000001) and
-- `limits` (20261204000003) of strategy_configs.
--
-- strategy_schedules gets `issued_by` (stamped from session_user) and
-- `on_behalf_of`, as strategy_commands and strategy_runs have them, and its
-- operators' inserts, edits and deletes go to engine_audit. Which of its columns an
-- operator may write is engine_store::roles::OPERATOR_WRITES (applied by
-- `engine-manager --setup-roles`).

ALTER TABLE strategy_schedules
    ADD COLUMN issued_by TEXT NOT NULL DEFAULT current_user,
    ADD COLUMN on_behalf_of TEXT NULL
        CONSTRAINT schedule_on_behalf_of_length CHECK (length(on_behalf_of) BETWEEN 1 AND 200);

CREATE TRIGGER strategy_schedules_stamp_issuer
    BEFORE INSERT OR UPDATE OF issued_by, on_behalf_of ON strategy_schedules
    FOR EACH ROW EXECUTE FUNCTION engine_stamp_issuer();

-- The interval columns and the limits join a strategy's audited operator columns.
CREATE OR REPLACE FUNCTION engine_audit_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    old_row  jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    new_row  jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    row_now  jsonb := coalesce(new_row, old_row);
    obj      text;
    sid      uuid;
    sname    text;
    behalf   text;
    what     text;
    keys     text[];
    before_v jsonb;
    after_v  jsonb;
BEGIN
    IF TG_TABLE_NAME = 'strategy_configs' THEN
        obj := 'strategy';
        keys := ARRAY['name', 'strategy_type', 'config', 'auto_start', 'restart_policy', 'broker_state',
                     'execution_interval_s', 'max_execution_s', 'limits'];
        sid := (row_now ->> 'id')::uuid;
        sname := row_now ->> 'name';
        behalf := engine_on_behalf_of();
    ELSE
        IF TG_TABLE_NAME = 'strategy_commands' THEN
            obj := 'command';
            keys := ARRAY['command', 'parameters', 'status', 'error'];
        ELSIF TG_TABLE_NAME = 'strategy_runs' THEN
            obj := 'run';
            keys := ARRAY['mode', 'parameters', 'priority', 'timeout_s', 'state', 'error'];
        ELSE
            -- strategy_schedules (CONTRACT.md §5): its operator columns.
            obj := 'schedule';
            keys := ARRAY['mode', 'parameters', 'priority', 'timeout_s', 'cron', 'timezone',
                          'interval_s', 'enabled', 'overlap', 'catch_up'];
        END IF;
        sid := (row_now ->> 'strategy_id')::uuid;
        SELECT s.name INTO sname FROM strategy_configs s WHERE s.id = sid;
        behalf := coalesce(row_now ->> 'on_behalf_of', engine_on_behalf_of());
    END IF;
    -- The key facts only: the columns of `keys` (on an update, those that changed).
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(k ORDER BY ord) INTO keys
        FROM unnest(keys) WITH ORDINALITY AS u(k, ord)
        WHERE old_row -> k IS DISTINCT FROM new_row -> k;
        keys := coalesce(keys, ARRAY[]::text[]);
    END IF;
    IF old_row IS NOT NULL THEN
        SELECT jsonb_object_agg(k, old_row -> k) INTO before_v FROM unnest(keys) AS k;
    END IF;
    IF new_row IS NOT NULL THEN
        SELECT jsonb_object_agg(k, new_row -> k) INTO after_v FROM unnest(keys) AS k;
    END IF;
    what := CASE
        WHEN obj = 'command' AND TG_OP = 'INSERT' THEN row_now ->> 'command'
        WHEN obj = 'command' THEN (row_now ->> 'command') || ' ' || (row_now ->> 'status')
        WHEN obj = 'run' AND TG_OP = 'INSERT' THEN row_now ->> 'mode'
        WHEN obj = 'run' THEN (row_now ->> 'mode') || ' ' || (row_now ->> 'state')
        WHEN TG_OP = 'UPDATE' THEN 'edited ' || array_to_string(keys, ', ')
        WHEN obj = 'schedule' AND TG_OP = 'INSERT' THEN 'added (' || (row_now ->> 'mode') || ')'
        WHEN TG_OP = 'INSERT' THEN 'added (' || (row_now ->> 'strategy_type') || ')'
        ELSE 'deleted'
    END;
    INSERT INTO engine_audit (who, role, on_behalf_of, object, object_id, action,
                              strategy_id, strategy_name, what, before, after)
    VALUES (session_user, engine_session_role(), behalf, obj, (row_now ->> 'id')::uuid,
            lower(TG_OP), sid, sname, what, before_v, after_v);
    RETURN NULL;
END;
$$;


-- Schedules: added, edited (the operators' columns; the manager's bookkeeping is
-- not audited), deleted.
CREATE TRIGGER strategy_schedules_audit_insert_delete
    AFTER INSERT OR DELETE ON strategy_schedules
    FOR EACH ROW EXECUTE FUNCTION engine_audit_record();
CREATE TRIGGER strategy_schedules_audit_edit
    AFTER UPDATE ON strategy_schedules
    FOR EACH ROW WHEN (OLD.mode IS DISTINCT FROM NEW.mode
                       OR OLD.parameters IS DISTINCT FROM NEW.parameters
                       OR OLD.priority IS DISTINCT FROM NEW.priority
                       OR OLD.timeout_s IS DISTINCT FROM NEW.timeout_s
                       OR OLD.cron IS DISTINCT FROM NEW.cron
                       OR OLD.timezone IS DISTINCT FROM NEW.timezone
                       OR OLD.interval_s IS DISTINCT FROM NEW.interval_s
                       OR OLD.enabled IS DISTINCT FROM NEW.enabled
                       OR OLD.overlap IS DISTINCT FROM NEW.overlap
                       OR OLD.catch_up IS DISTINCT FROM NEW.catch_up)
    EXECUTE FUNCTION engine_audit_record();

DROP TRIGGER strategy_configs_audit_edit ON strategy_configs;
CREATE TRIGGER strategy_configs_audit_edit
    AFTER UPDATE ON strategy_configs
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
                       OR OLD.strategy_type IS DISTINCT FROM NEW.strategy_type
                       OR OLD.config IS DISTINCT FROM NEW.config
                       OR OLD.auto_start IS DISTINCT FROM NEW.auto_start
                       OR OLD.restart_policy IS DISTINCT FROM NEW.restart_policy
                       OR (NEW.broker_state IS NULL AND OLD.broker_state IS NOT NULL)
                       OR OLD.execution_interval_s IS DISTINCT FROM NEW.execution_interval_s
                       OR OLD.max_execution_s IS DISTINCT FROM NEW.max_execution_s
                       OR OLD.limits IS DISTINCT FROM NEW.limits)
    EXECUTE FUNCTION engine_audit_record();
