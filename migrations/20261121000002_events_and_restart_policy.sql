-- Every state transition with its reason, so "why did it stop at 03:12?" has an
-- answer; and an optional per-strategy override of the automatic-restart policy.

CREATE TABLE strategy_events (
    id           BIGSERIAL PRIMARY KEY,
    strategy_id  UUID NOT NULL REFERENCES strategy_configs(id) ON DELETE CASCADE,
    at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    old_status   TEXT NULL,
    new_status   TEXT NOT NULL,
    reason       TEXT NULL,
    error        TEXT NULL,
    command_id   UUID NULL,
    pid          INTEGER NULL,
    node         TEXT NOT NULL
);

CREATE INDEX strategy_events_by_strategy ON strategy_events (strategy_id, at DESC);
CREATE INDEX strategy_events_by_time ON strategy_events (at);

-- Keys (all optional; the manager's flags give the rest): delay_s, max_delay_s,
-- jitter, stable_after_s, max_crashes.
ALTER TABLE strategy_configs
    ADD COLUMN restart_policy JSONB NULL
    CONSTRAINT restart_policy_is_a_json_object
        CHECK (restart_policy IS NULL OR jsonb_typeof(restart_policy) = 'object');
