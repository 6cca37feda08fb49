-- Analytics by the hour. A per-event index on the user (and the org) took a write at a random
-- place of a growing index for every event; reports now read hourly totals, which an insert
-- trigger keeps, and only the part of a range that does not fill whole hours reads events
-- (through an index in time order, which every insert appends to).
--
-- The trigger runs in the transaction of the insert, and only for an event inserted (one
-- passed over as already recorded fires nothing), so the totals count each event id once.
-- `org_id` is '' for a user in no org (a key column cannot be NULL).

CREATE TABLE analytics_hourly (
    hour_start INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    org_id     TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    requests   INTEGER NOT NULL,
    tokens     INTEGER NOT NULL,
    PRIMARY KEY (hour_start, user_id, org_id, provider, outcome)
) WITHOUT ROWID;
CREATE INDEX analytics_hourly_by_user ON analytics_hourly (user_id, hour_start);
CREATE INDEX analytics_hourly_by_org ON analytics_hourly (org_id, hour_start);

INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens)
SELECT (occurred_at / 3600000) * 3600000, user_id, COALESCE(org_id, ''), provider, outcome, COUNT(*), SUM(tokens)
FROM analytics_events
GROUP BY 1, 2, 3, 4, 5;

CREATE TRIGGER analytics_roll_up AFTER INSERT ON analytics_events
BEGIN
    INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens)
    VALUES ((NEW.occurred_at / 3600000) * 3600000, NEW.user_id, COALESCE(NEW.org_id, ''), NEW.provider,
            NEW.outcome, 1, NEW.tokens)
    ON CONFLICT (hour_start, user_id, org_id, provider, outcome)
    DO UPDATE SET requests = requests + 1, tokens = tokens + excluded.tokens;
END;

DROP INDEX analytics_by_user;
DROP INDEX analytics_by_org;
CREATE INDEX analytics_by_time ON analytics_events (occurred_at);
