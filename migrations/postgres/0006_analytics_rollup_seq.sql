-- Hourly totals rolled up from the events, as on SQLite since version 5, instead of by the
-- trigger of version 3.
--
-- The trigger upserted a total for nearly every event it inserted when thousands of users were
-- active; it was the largest statement PostgreSQL ran per consume (docs/09-performance.md). Now
-- the service adds the events after `analytics_rollup.through_seq` to the totals in one
-- statement per interval, which touches each total once however many events it gains, and
-- moves `through_seq` in the same transaction; a report first rolls up what is left
-- (docs/04-architecture.md, "Hourly analytics totals").
--
-- Rows do not become visible in the order PostgreSQL draws their keys. So every insert of
-- events takes the advisory lock 0x6c65616b7903 (`advisory_locks::ANALYTICS_RECORD`) before its
-- rows draw `seq`, and holds it to its commit: once a row is visible, so is every row with a
-- lower `seq` that will ever be, and the rows after `through_seq` are exactly the events not yet
-- counted. Replicas of an earlier build insert without it: stop them before migrating.
--
-- The events recorded before this version were counted by the trigger; they keep a NULL `seq`,
-- which no roll-up reads, so the migration rewrites nothing.

DROP TRIGGER analytics_roll_up ON analytics_events;
DROP FUNCTION analytics_roll_up();

CREATE SEQUENCE analytics_events_seq AS BIGINT;
ALTER TABLE analytics_events ADD COLUMN seq BIGINT;
ALTER TABLE analytics_events ALTER COLUMN seq SET DEFAULT nextval('analytics_events_seq');
ALTER SEQUENCE analytics_events_seq OWNED BY analytics_events.seq;
CREATE INDEX analytics_by_seq ON analytics_events (seq) WHERE seq IS NOT NULL;

-- A roll-up rewrites most of the totals of the current hour at once. Pages kept half empty let
-- each new version go on its row's own page (a HOT update, no index entry): measured on the
-- benchmark's database, a roll-up of 50,000 events into 10,000 totals wrote 20,000 WAL records
-- instead of 62,000 and took 100-134 ms instead of 274-314 ms. It applies to pages written from
-- now on.
ALTER TABLE analytics_hourly SET (fillfactor = 50);

CREATE TABLE analytics_rollup (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq BIGINT NOT NULL
);
INSERT INTO analytics_rollup (id, through_seq) VALUES (1, 0);
