-- How the manager hands Redis credentials to its executors (CONTRACT.md §8), said in
-- its lease row for `enginectl doctor`: `per-executor users` (an ACL user for each
-- executor) or `shared URL: <why>` (the manager's own URL, as before ACLs).
ALTER TABLE engine_manager_lease ADD COLUMN redis_acl TEXT NULL;
