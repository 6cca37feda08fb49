-- Version 4 on SQLite makes the quota counters a view of the ledger, written back in batches by
-- the process that is the database's only writer. On PostgreSQL, which replicas share, each
-- group commit checks and writes the counters itself, so nothing changes here; the version
-- exists so both databases carry the same ones.
SELECT 1;
