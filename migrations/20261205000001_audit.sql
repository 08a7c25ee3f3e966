-- Who asked (CONTRACT.md §8, issue #14).
--
-- `issued_by` on strategy_commands and strategy_runs: the database login role of the
-- session that inserted the row (`session_user`), stamped by a trigger whatever the
-- INSERT says, and kept on every UPDATE, so nobody can forge it. (The column's
-- default is `current_user`, as the contract says; the trigger then puts the login
-- role in it, which is the person even after a `SET ROLE`.) `on_behalf_of`: the
-- person or token a tool acted for (`enginectl --as`, the HTTP token's name), given
-- by the tool in the row or, when the row leaves it NULL, in the session setting
-- `engine.on_behalf_of`. It is a claim of the tool's, not a proof.
--
-- `engine_audit`: an append-only record of every command, run and strategy edit and
-- deletion, written by triggers (SECURITY DEFINER: nobody is granted INSERT, UPDATE
-- or DELETE on it, and a trigger refuses UPDATE, DELETE and TRUNCATE even to its
-- owner). It has no foreign key: it survives the retention of commands and the
-- deletion of strategies.

ALTER TABLE strategy_commands
    ADD COLUMN issued_by TEXT NOT NULL DEFAULT current_user,
    ADD COLUMN on_behalf_of TEXT NULL
        CONSTRAINT command_on_behalf_of_length CHECK (length(on_behalf_of) BETWEEN 1 AND 200);

ALTER TABLE strategy_runs
    ADD COLUMN issued_by TEXT NOT NULL DEFAULT current_user,
    ADD COLUMN on_behalf_of TEXT NULL
        CONSTRAINT run_on_behalf_of_length CHECK (length(on_behalf_of) BETWEEN 1 AND 200);

-- The tool's `on_behalf_of`: the session setting, if it says one. (PL/pgSQL, here
-- and in engine_session_role: it keeps its plans for the session, where an SQL
-- function called from a trigger is planned again on every row.)
CREATE FUNCTION engine_on_behalf_of() RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN left(nullif(btrim(current_setting('engine.on_behalf_of', true)), ''), 200);
END;
$$;

CREATE FUNCTION engine_stamp_issuer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.issued_by := session_user;
        IF NEW.on_behalf_of IS NULL THEN
            NEW.on_behalf_of := engine_on_behalf_of();
        END IF;
    ELSE
        NEW.issued_by := OLD.issued_by;
        NEW.on_behalf_of := OLD.on_behalf_of;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER strategy_commands_stamp_issuer
    BEFORE INSERT OR UPDATE OF issued_by, on_behalf_of ON strategy_commands
    FOR EACH ROW EXECUTE FUNCTION engine_stamp_issuer();

CREATE TRIGGER strategy_runs_stamp_issuer
    BEFORE INSERT OR UPDATE OF issued_by, on_behalf_of ON strategy_runs
    FOR EACH ROW EXECUTE FUNCTION engine_stamp_issuer();

CREATE TABLE engine_audit (
    id            BIGSERIAL PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- The login role of the session (session_user): who, unforgeably.
    who           TEXT NOT NULL,
    -- The engine role it acted through: the role it SET, else the engine_* roles it
    -- is a member of, or 'superuser'.
    role          TEXT NULL,
    on_behalf_of  TEXT NULL,
    -- 'strategy', 'command', 'run' or 'schedule', and its row's id.
    object        TEXT NOT NULL,
    object_id     UUID NULL,
    -- 'insert', 'update' or 'delete'.
    action        TEXT NOT NULL,
    strategy_id   UUID NULL,
    strategy_name TEXT NULL,
    -- One line: 'start', 'backtest', 'config, auto_start', 'executed', ...
    what          TEXT NOT NULL,
    before        JSONB NULL,
    after         JSONB NULL
);

CREATE INDEX engine_audit_by_time ON engine_audit (at DESC);
CREATE INDEX engine_audit_by_strategy ON engine_audit (strategy_id, at DESC);

REVOKE ALL ON engine_audit FROM PUBLIC;

CREATE FUNCTION engine_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'engine_audit is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'its rows are kept for good; read them with SELECT or enginectl audit';
END;
$$;

CREATE TRIGGER engine_audit_append_only
    BEFORE UPDATE OR DELETE ON engine_audit
    FOR EACH ROW EXECUTE FUNCTION engine_audit_refuse_change();

CREATE TRIGGER engine_audit_no_truncate
    BEFORE TRUNCATE ON engine_audit
    FOR EACH STATEMENT EXECUTE FUNCTION engine_audit_refuse_change();

-- The engine role the session acts through (see engine_audit.role).
CREATE FUNCTION engine_session_role() RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE
        WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN 'superuser'
        WHEN current_setting('role') <> 'none' THEN current_setting('role')
        ELSE (SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_roles r
              WHERE r.rolname IN ('engine_viewer', 'engine_operator', 'engine_manager')
                AND pg_has_role(session_user, r.oid, 'MEMBER'))
    END;
END;
$$;

-- Append one audit row. SECURITY DEFINER: the row is written with the owner's
-- rights, and its `who` is session_user, which the caller cannot choose.
CREATE FUNCTION engine_audit_record() RETURNS trigger
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
        keys := ARRAY['name', 'strategy_type', 'config', 'auto_start', 'restart_policy', 'broker_state'];
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
            -- strategy_schedules (CONTRACT.md §5), once a migration makes it and
            -- attaches this function to it: its operator columns.
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

REVOKE ALL ON FUNCTION engine_audit_record() FROM PUBLIC;

-- Commands: each one asked, and its outcome.
CREATE TRIGGER strategy_commands_audit_insert
    AFTER INSERT ON strategy_commands
    FOR EACH ROW EXECUTE FUNCTION engine_audit_record();
CREATE TRIGGER strategy_commands_audit_outcome
    AFTER UPDATE OF status ON strategy_commands
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('executed', 'failed'))
    EXECUTE FUNCTION engine_audit_record();

-- Runs: each one asked, and each change of its state.
CREATE TRIGGER strategy_runs_audit_insert
    AFTER INSERT ON strategy_runs
    FOR EACH ROW EXECUTE FUNCTION engine_audit_record();
CREATE TRIGGER strategy_runs_audit_state
    AFTER UPDATE OF state ON strategy_runs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION engine_audit_record();

-- Strategies: added, edited (the operators' columns; the manager's observations
-- are in strategy_events), deleted.
CREATE TRIGGER strategy_configs_audit_insert_delete
    AFTER INSERT OR DELETE ON strategy_configs
    FOR EACH ROW EXECUTE FUNCTION engine_audit_record();
CREATE TRIGGER strategy_configs_audit_edit
    AFTER UPDATE ON strategy_configs
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
                       OR OLD.strategy_type IS DISTINCT FROM NEW.strategy_type
                       OR OLD.config IS DISTINCT FROM NEW.config
                       OR OLD.auto_start IS DISTINCT FROM NEW.auto_start
                       OR OLD.restart_policy IS DISTINCT FROM NEW.restart_policy
                       OR (NEW.broker_state IS NULL AND OLD.broker_state IS NOT NULL))
    EXECUTE FUNCTION engine_audit_record();

-- Operators may reset a strategy's broker (broker_state = NULL, README "Positions
-- and PnL across restarts"), never write one: only the tables' owner (the manager)
-- stores a state, so nobody can hand a strategy made-up positions.
CREATE FUNCTION strategy_configs_guard_broker_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.broker_state IS NOT NULL
       AND NEW.broker_state IS DISTINCT FROM OLD.broker_state
       AND NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'only the manager writes broker_state; an operator may only reset it (SET broker_state = NULL while the strategy is stopped)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER strategy_configs_broker_write_guard
    BEFORE UPDATE OF broker_state ON strategy_configs
    FOR EACH ROW EXECUTE FUNCTION strategy_configs_guard_broker_write();
