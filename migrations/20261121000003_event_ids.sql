-- Every transition the manager records carries an id it makes itself, so that an
-- event it could not write (PostgreSQL away) is written later, exactly once: the
-- retry inserts it again with ON CONFLICT (event_id) DO NOTHING. Rows written before
-- this migration keep a NULL id (a unique index allows any number of NULLs).
ALTER TABLE strategy_events ADD COLUMN event_id UUID NULL;
CREATE UNIQUE INDEX strategy_events_event_id ON strategy_events (event_id);
