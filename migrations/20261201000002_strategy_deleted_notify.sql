-- Tell the manager at once when a strategy row is deleted (by `enginectl remove` or
-- a plain DELETE), so that it drops its supervisor, its entry in /health and
-- /metrics, and its Redis state hash without waiting for a restart. The payload is
-- the deleted id; the manager also checks every poll interval for supervised ids
-- that no longer exist, in case a notification is missed.

CREATE FUNCTION strategy_configs_notify_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('strategy_configs_deleted', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER strategy_configs_deleted
    AFTER DELETE ON strategy_configs
    FOR EACH ROW EXECUTE FUNCTION strategy_configs_notify_deleted();
