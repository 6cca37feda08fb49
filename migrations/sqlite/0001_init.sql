-- Leaky Tokens schema, SQLite. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    org_id        TEXT REFERENCES orgs(id),
    roles         TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_by_user ON api_keys(user_id);

-- One row per (owner, provider). `used` counts within the current period.
CREATE TABLE quotas (
    owner_type   TEXT NOT NULL CHECK (owner_type IN ('user', 'org')),
    owner_id     TEXT NOT NULL,
    provider     TEXT NOT NULL,
    quota_limit  INTEGER NOT NULL CHECK (quota_limit >= 0),
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    period       TEXT NOT NULL CHECK (period IN ('none', 'daily', 'monthly')),
    period_start INTEGER NOT NULL DEFAULT 0,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (owner_type, owner_id, provider)
);

-- Every debit and credit, written in the same transaction as its outbox event.
CREATE TABLE ledger (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id    TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('consume', 'purchase')),
    user_id     TEXT NOT NULL,
    org_id      TEXT,
    provider    TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    request_id  TEXT,
    created_at  INTEGER NOT NULL
);

-- Transactional outbox: events committed with their state change, relayed at least once in
-- `seq` order. The relay's progress is one cursor row, moved after each published batch, so
-- relaying costs one write per batch rather than one per event. Consumers deduplicate by
-- event id.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE outbox_cursor (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq     INTEGER NOT NULL,
    published_at INTEGER NOT NULL
);
INSERT INTO outbox_cursor (id, last_seq, published_at) VALUES (1, 0, 0);

CREATE TABLE purchases (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE saga_steps (
    purchase_id TEXT NOT NULL REFERENCES purchases(id),
    step        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('DONE', 'COMPENSATED', 'FAILED')),
    detail      TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (purchase_id, step)
);

-- The embedded payment provider's book: one payment per purchase, ever.
CREATE TABLE payments (
    id          TEXT PRIMARY KEY,
    purchase_id TEXT NOT NULL UNIQUE REFERENCES purchases(id),
    tokens      INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('CAPTURED', 'REFUNDED')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status_code  INTEGER,
    response     TEXT,
    purchase_id  TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The SQL analytics sink: one row per event id, so a replayed event changes nothing.
CREATE TABLE analytics_events (
    event_id    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    org_id      TEXT,
    provider    TEXT NOT NULL,
    model       TEXT,
    tokens      INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('allowed', 'rate_limited', 'quota_rejected', 'purchased')),
    occurred_at INTEGER NOT NULL
);
CREATE INDEX analytics_by_user ON analytics_events(user_id, occurred_at);
CREATE INDEX analytics_by_org ON analytics_events(org_id, occurred_at);
