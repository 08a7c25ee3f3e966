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
