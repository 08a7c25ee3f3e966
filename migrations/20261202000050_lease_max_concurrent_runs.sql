-- The manager says how many runs it lets run at once (`--max-concurrent-runs`), so
-- that the HTTP API and `enginectl` can show the queue's capacity and estimate when
-- a queued run starts. NULL: a manager that has not said (the default, 2, applies).
ALTER TABLE engine_manager_lease ADD COLUMN max_concurrent_runs INTEGER NULL
    CONSTRAINT lease_max_concurrent_runs_positive CHECK (max_concurrent_runs > 0);
