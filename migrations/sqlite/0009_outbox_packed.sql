-- Version 9 on PostgreSQL lets one outbox row carry a group commit's events (`events` of them).
-- SQLite's outbox keeps a row an event, and has the count too, so that the relay, the count of
-- pending events and the pruner read both databases alike.
ALTER TABLE outbox ADD COLUMN events INTEGER NOT NULL DEFAULT 1;
