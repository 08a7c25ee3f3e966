-- The paper broker's state (open positions with size and average price, realised
-- PnL, orders and trade counts, the last price of each position) as the strategy's
-- last executor reported it. The manager writes it, and hands it to the next
-- executor of the strategy on stdin, so that a restart, a crash or a reboot does not
-- forget what the strategy holds. NULL: nothing saved, the next executor starts with
-- a fresh broker (setting it to NULL while the strategy is stopped resets it).
-- Additive: an older manager ignores it.
ALTER TABLE strategy_configs
    ADD COLUMN broker_state JSONB NULL
        CONSTRAINT strategy_configs_broker_state_object
        CHECK (broker_state IS NULL OR jsonb_typeof(broker_state) = 'object');

-- A reset (broker_state = NULL) of a strategy whose executor is up would not hold:
-- the executor reports its state again. Stop it first.
CREATE FUNCTION strategy_configs_guard_broker_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.broker_state IS NULL AND OLD.status IN ('starting', 'running', 'paused', 'stopping') THEN
        RAISE EXCEPTION 'strategy "%" is %; stop it first, then reset its broker (its executor would report its state again)', OLD.name, OLD.status
            USING ERRCODE = 'object_in_use';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER strategy_configs_broker_reset_guard
    BEFORE UPDATE OF broker_state ON strategy_configs
    FOR EACH ROW EXECUTE FUNCTION strategy_configs_guard_broker_reset();
