-- Size caps on what people put in (issue #14, CONTRACT.md §8): a strategy's
-- `config`, a command's and a run's `parameters` are at most 65536 bytes as JSON
-- text. Each cap is a CHECK on octet_length(x::text); past the cap the check calls
-- engine_input_too_large, which refuses the row saying the size and the limit
-- ("config is 70012 bytes; the limit is 65536") under the constraint's name, so psql,
-- enginectl, the HTTP API and a failed command all show the same words.
CREATE FUNCTION engine_input_too_large(what text, bytes integer, max_bytes integer, constraint_name text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION '% is % bytes; the limit is %', what, bytes, max_bytes
        USING ERRCODE = 'check_violation',
              CONSTRAINT = constraint_name,
              HINT = 'keep large data out of ' || what || ' (market data belongs in market_bars)';
END
$$;

ALTER TABLE strategy_configs ADD CONSTRAINT config_size_limit
    CHECK (octet_length(config::text) <= 65536
           OR engine_input_too_large('config', octet_length(config::text), 65536, 'config_size_limit'));

ALTER TABLE strategy_commands ADD CONSTRAINT command_parameters_size_limit
    CHECK (octet_length(parameters::text) <= 65536
           OR engine_input_too_large('parameters', octet_length(parameters::text), 65536, 'command_parameters_size_limit'));

ALTER TABLE strategy_runs ADD CONSTRAINT run_parameters_size_limit
    CHECK (octet_length(parameters::text) <= 65536
           OR engine_input_too_large('parameters', octet_length(parameters::text), 65536, 'run_parameters_size_limit'));
