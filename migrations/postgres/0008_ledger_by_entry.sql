-- Two changes to the rows every group commit writes.
--
-- 1. The ledger is keyed by its entry id. `seq` numbered the rows for SQLite's quota write-back,
--    which replays the ledger from a mark (`quota_writeback.through_seq`); on PostgreSQL the
--    group commit writes the counters itself and nothing reads `seq`. Each consume drew a value
--    from its sequence and added an entry to its index, beside the entry id's unique index.
--    Entry ids are UUIDv7, ordered by time, so the ledger's order is still its key's. Measured by
--    hand on the benchmark's database, 50,000 ledger rows inserted from arrays as the group
--    commit does: 178-204 ms against 246-298 ms.
--
--    Rebuilding the primary key locks the ledger for the time it takes to index it once.
ALTER TABLE ledger DROP CONSTRAINT ledger_pkey, DROP COLUMN seq;
ALTER TABLE ledger DROP CONSTRAINT ledger_entry_id_key, ADD CONSTRAINT ledger_pkey PRIMARY KEY (entry_id);

-- 2. Quota rows keep a tenth of each page free. Every consume writes a new version of its
--    user's row; on a full page that version goes to another page, with a new entry in the
--    primary key, instead of staying on the page (a heap-only update). Rows written from now on
--    get the free space.
ALTER TABLE quotas SET (fillfactor = 90);
