-- Commands by name, for operators at a psql prompt. `INSERT … SELECT id FROM
-- strategy_configs WHERE name = 'typo'` inserts nothing and says nothing; these
-- functions insert the same row into strategy_commands and return its id, and an
-- unknown name is an error that lists the known ones. They run with the caller's
-- rights (SECURITY INVOKER): the row is the caller's own INSERT.
--
--   SELECT strategy_command('demo-sma-btc', 'stop', '{"timeout_s": 30}');
--   SELECT engine_command('stop');    -- the global kill switch (strategy_id NULL)
--
-- The command word and parameters are checked by the manager as for any row: a bad
-- one ends the command `failed` with an error saying what would be right.

CREATE FUNCTION strategy_command(name text, command text, parameters jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    target uuid;
    known  text;
    new_id uuid;
BEGIN
    SELECT s.id INTO target FROM strategy_configs s WHERE s.name = strategy_command.name;
    IF target IS NULL THEN
        SELECT coalesce(string_agg(s.name, ', ' ORDER BY s.name), '(none)') INTO known
        FROM strategy_configs s;
        RAISE EXCEPTION 'no strategy named ''%''; known: %', strategy_command.name, known
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT name FROM strategy_configs ORDER BY name; lists them';
    END IF;
    INSERT INTO strategy_commands (strategy_id, command, parameters)
    VALUES (target, strategy_command.command, coalesce(strategy_command.parameters, '{}'))
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;

COMMENT ON FUNCTION strategy_command(text, text, jsonb) IS
    'Insert a command for the strategy called name; returns the command id. An unknown name raises an error listing the known names.';

CREATE FUNCTION engine_command(command text, parameters jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    IF engine_command.command NOT IN ('stop', 'pause', 'resume') THEN
        RAISE EXCEPTION '''%'' cannot be global; global commands are pause, resume and stop (use strategy_command(name, ''%'') for one strategy)',
            engine_command.command, engine_command.command
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO strategy_commands (strategy_id, command, parameters)
    VALUES (NULL, engine_command.command, coalesce(engine_command.parameters, '{}'))
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;

COMMENT ON FUNCTION engine_command(text, jsonb) IS
    'Insert a global command (strategy_id NULL: every running or paused strategy): stop, pause or resume; returns the command id.';
