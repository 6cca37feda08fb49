-- Hourly totals rolled up from the events once a second, instead of by a trigger per event.
--
-- The trigger of version 3 upserted an hourly row for every event it inserted: with thousands
-- of users, each batch of events rewrote nearly every page of `analytics_hourly`, a third of
-- what the service wrote to storage under load (docs/09-performance.md). Now the service adds
-- the events after `through_rowid` to the totals in one statement per interval, which touches
-- each total once however many events it gains, and moves `through_rowid` in the same
-- transaction; a report first rolls up what is left, so it counts every event recorded before
-- it (docs/04-architecture.md, "Analytics").
--
-- `analytics_events` rows are never deleted, so SQLite gives each new row a `rowid` above every
-- earlier one. The trigger had counted every event so far.

DROP TRIGGER analytics_roll_up;

CREATE TABLE analytics_rollup (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    through_rowid INTEGER NOT NULL
);
INSERT INTO analytics_rollup (id, through_rowid) SELECT 1, COALESCE(MAX(rowid), 0) FROM analytics_events;
