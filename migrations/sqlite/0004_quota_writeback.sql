-- The quota counters as a view of the ledger, written back once a second instead of in every
-- group commit (docs/04-architecture.md, "Quota counters"). Each consume row carries what its
-- write-back needs, and `through_seq` is the highest ledger `seq` the counters include: at
-- start the consume rows after it are written back before the service answers.
--
-- `cost` is what the debit charged the quotas (the tokens, or a quota rule's price);
-- `user_period_start` the user's quota period it was decided in; `user_limit` the limit stored
-- with a first spender's row; `org_period_start` the period of the org quota it charged, NULL
-- when it charged none. Rows before this version were already counted.

ALTER TABLE ledger ADD COLUMN cost INTEGER;
ALTER TABLE ledger ADD COLUMN user_period_start INTEGER;
ALTER TABLE ledger ADD COLUMN user_limit INTEGER;
ALTER TABLE ledger ADD COLUMN org_period_start INTEGER;

CREATE TABLE quota_writeback (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);
INSERT INTO quota_writeback (id, through_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM ledger;
