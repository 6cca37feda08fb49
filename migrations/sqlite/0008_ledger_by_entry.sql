-- Version 8 on PostgreSQL keys the ledger by its entry id and leaves room on the quota rows'
-- pages. On SQLite the ledger keeps `seq`, from which the quota write-back replays
-- (`quota_writeback.through_seq`); nothing changes here, and the version exists so both
-- databases carry the same ones.
SELECT 1;
