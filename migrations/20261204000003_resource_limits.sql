-- Resource limits per strategy (issue #12, CONTRACT.md §6): `limits` holds
-- `memory_mb`, `cpu_percent` (100 = one core), `pids` and `open_files`, each a whole
-- number in a sane range; '{}' is no limit. The check refuses anything else in the
-- words `engine_protocol::limits::LimitError` uses (the key at fault, what it was,
-- what is allowed), under the constraint's name `limits_valid`, so psql, enginectl,
-- the HTTP API and a failed `update` say the same thing. Keep the ranges equal to
-- `engine_protocol::limits::LIMIT_RANGES`.
ALTER TABLE strategy_configs ADD COLUMN limits JSONB NOT NULL DEFAULT '{}';

CREATE FUNCTION engine_limits_valid(limits jsonb)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    lo numeric;
    hi numeric;
    unit text;
BEGIN
    IF jsonb_typeof(limits) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'limits must be a JSON object such as {"memory_mb": 256, "cpu_percent": 50}, got %',
            CASE jsonb_typeof(limits) WHEN 'array' THEN 'an array' WHEN 'string' THEN 'a string'
                 WHEN 'number' THEN 'a number' WHEN 'boolean' THEN 'a boolean' ELSE 'null' END
            USING ERRCODE = 'check_violation', CONSTRAINT = 'limits_valid';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(limits) LOOP
        SELECT r.lo, r.hi, r.unit INTO lo, hi, unit
        FROM (VALUES ('memory_mb', 16, 1048576, 'megabytes'),
                     ('cpu_percent', 1, 25600, 'percent of one core'),
                     ('pids', 8, 4194304, 'processes and threads'),
                     ('open_files', 16, 1048576, 'file descriptors')) AS r(key, lo, hi, unit)
        WHERE r.key = k;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown limit ''%''; allowed: memory_mb, cpu_percent, pids, open_files', k
                USING ERRCODE = 'check_violation', CONSTRAINT = 'limits_valid';
        END IF;
        IF (CASE WHEN jsonb_typeof(v) = 'number'
                THEN (v #>> '{}')::numeric <> trunc((v #>> '{}')::numeric)
                     OR (v #>> '{}')::numeric NOT BETWEEN lo AND hi
                ELSE true END) THEN
            RAISE EXCEPTION 'limits.% must be a whole number from % to % (%), got %', k, lo, hi, unit, v::text
                USING ERRCODE = 'check_violation', CONSTRAINT = 'limits_valid';
        END IF;
    END LOOP;
    RETURN true;
END
$$;

-- No limits (the usual row) is checked without a call.
ALTER TABLE strategy_configs ADD CONSTRAINT limits_valid
    CHECK (limits = '{}'::jsonb OR engine_limits_valid(limits));

-- The manager says how it enforces limits (cgroup v2, cgroup v1 or rlimits, and
-- where), so that `enginectl doctor` can show it. NULL: a manager that has not said.
ALTER TABLE engine_manager_lease ADD COLUMN limits_mechanism TEXT NULL;
