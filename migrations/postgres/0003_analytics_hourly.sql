-- Analytics by the hour (see migrations/sqlite/0003_analytics_hourly.sql): reports read hourly
-- totals kept by an insert trigger, and events only for the part of a range that does not fill
-- whole hours, through an index in time order. The trigger counts only the events inserted, in
-- the insert's transaction, so the totals count each event id once. `org_id` is '' for a
-- user in no org.

CREATE TABLE analytics_hourly (
    hour_start BIGINT NOT NULL,
    user_id    TEXT   NOT NULL,
    org_id     TEXT   NOT NULL,
    provider   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    requests   BIGINT NOT NULL,
    tokens     BIGINT NOT NULL,
    PRIMARY KEY (hour_start, user_id, org_id, provider, outcome)
);
CREATE INDEX analytics_hourly_by_user ON analytics_hourly (user_id, hour_start);
CREATE INDEX analytics_hourly_by_org ON analytics_hourly (org_id, hour_start);

INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens)
SELECT (occurred_at / 3600000) * 3600000, user_id, COALESCE(org_id, ''), provider, outcome, COUNT(*), SUM(tokens)
FROM analytics_events
GROUP BY 1, 2, 3, 4, 5;

-- One statement-level trigger per insert: its transition table holds the rows the statement
-- inserted (not those ON CONFLICT passed over), summed per hour in one upsert.
CREATE FUNCTION analytics_roll_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_hourly (hour_start, user_id, org_id, provider, outcome, requests, tokens)
    SELECT (occurred_at / 3600000) * 3600000, user_id, COALESCE(org_id, ''), provider, outcome, COUNT(*), SUM(tokens)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (hour_start, user_id, org_id, provider, outcome)
    DO UPDATE SET requests = analytics_hourly.requests + EXCLUDED.requests,
                  tokens = analytics_hourly.tokens + EXCLUDED.tokens;
    RETURN NULL;
END
$$;
CREATE TRIGGER analytics_roll_up AFTER INSERT ON analytics_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_roll_up();

DROP INDEX analytics_by_user;
DROP INDEX analytics_by_org;
CREATE INDEX analytics_by_time ON analytics_events (occurred_at);
