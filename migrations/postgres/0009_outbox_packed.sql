-- A group commit writes its events to the outbox as one row (`events` of them, one line each,
-- in `payload`), instead of a row an event (`store/outbox/packed.rs`).
--
-- Each consume wrote an outbox row of about 440 bytes of WAL with an entry in the primary key;
-- the relay read it back and the pruner deleted it, a row at a time. Measured by hand, 250
-- commits of 200 events: 689-696 ms and 21.9 MB of WAL as rows an event, 359-394 ms and 5.1 MB
-- as a row a commit (docs/09-performance.md, twelfth sitting).
--
-- Rows an event (purchases, sagas, the debits decided under lock) keep their shape, with
-- `events` 1; a packed row has no event id, topic or key of its own.
--
-- The relay of an earlier build cannot read a packed row: stop replicas of an earlier build
-- before starting this build's on the migrated database. Beside them nothing is lost (the
-- relays take turns, and this build's publish the packed rows), but each round an earlier
-- relay takes fails and is logged.
ALTER TABLE outbox ADD COLUMN events INTEGER NOT NULL DEFAULT 1;
ALTER TABLE outbox
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN topic DROP NOT NULL,
    ALTER COLUMN key DROP NOT NULL;
ALTER TABLE outbox ADD CONSTRAINT outbox_one_event_or_packed CHECK (
    (event_id IS NOT NULL AND topic IS NOT NULL AND key IS NOT NULL AND events = 1)
    OR (event_id IS NULL AND topic IS NULL AND key IS NULL AND events >= 1)
);

-- A packed row of a few hundred events is tens of kilobytes. lz4 compresses it in a fraction
-- of the time of the default (pglz: 593 ms against 316 for the same 50,000 events, by hand).
-- A server built without lz4 keeps its default.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
    END IF;
END
$$;
