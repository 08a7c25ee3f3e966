-- Draining nodes and moving strategies (CONTRACT.md §7): the global commands `drain`
-- and `undrain` with {"node": "<name>"}, and the per-strategy `move` with
-- {"node": "<name>"}. strategy_commands.command has no CHECK constraint (the manager
-- judges every word), so only the by-name helper for global commands learns the two
-- new words. Same signature and behaviour otherwise: additive.
--
--   SELECT engine_command('drain', '{"node": "node-a"}');
--   SELECT engine_command('undrain', '{"node": "node-a"}');
--   SELECT strategy_command('demo-sma-btc', 'move', '{"node": "node-b"}');

CREATE OR REPLACE FUNCTION engine_command(command text, parameters jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
    IF engine_command.command NOT IN ('stop', 'pause', 'resume', 'drain', 'undrain') THEN
        RAISE EXCEPTION '''%'' cannot be global; global commands are pause, resume, stop, drain and undrain (use strategy_command(name, ''%'') for one strategy)',
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
    'Insert a global command (strategy_id NULL): stop, pause or resume (every running or paused strategy), or drain or undrain with {"node": "<name>"} (a cluster node); returns the command id.';
