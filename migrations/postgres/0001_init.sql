-- Leaky Tokens schema, PostgreSQL (the same tables and versions as migrations/sqlite). Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    org_id        TEXT REFERENCES orgs(id),
    roles         TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_by_user ON api_keys(user_id);

-- One row per (owner, provider). `used` counts within the current period.
CREATE TABLE quotas (
    owner_type   TEXT NOT NULL CHECK (owner_type IN ('user', 'org')),
    owner_id     TEXT NOT NULL,
    provider     TEXT NOT NULL,
    quota_limit  BIGINT NOT NULL CHECK (quota_limit >= 0),
    used         BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    period       TEXT NOT NULL CHECK (period IN ('none', 'daily', 'monthly')),
    period_start BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (owner_type, owner_id, provider)
);

-- Every debit and credit, written in the same transaction as its outbox event.
CREATE TABLE ledger (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id    TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('consume', 'purchase')),
    user_id     TEXT NOT NULL,
    org_id      TEXT,
    provider    TEXT NOT NULL,
    tokens      BIGINT NOT NULL,
    request_id  TEXT,
    created_at  BIGINT NOT NULL
);

-- Transactional outbox: events committed with their state change, relayed at least once in
-- `seq` order. The relay's progress is one cursor row, moved after each published batch, so
-- relaying costs one write per batch rather than one per event. Consumers deduplicate by
-- event id.
CREATE TABLE outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE outbox_cursor (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    last_seq     BIGINT NOT NULL,
    published_at BIGINT NOT NULL
);
INSERT INTO outbox_cursor (id, last_seq, published_at) VALUES (1, 0, 0);

CREATE TABLE purchases (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    tokens      BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE saga_steps (
    purchase_id TEXT NOT NULL REFERENCES purchases(id),
    step        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('DONE', 'COMPENSATED', 'FAILED')),
    detail      TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (purchase_id, step)
);

-- The embedded payment provider's book: one payment per purchase, ever.
CREATE TABLE payments (
    id          TEXT PRIMARY KEY,
    purchase_id TEXT NOT NULL UNIQUE REFERENCES purchases(id),
    tokens      BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('CAPTURED', 'REFUNDED')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status_code  BIGINT,
    response     TEXT,
    purchase_id  TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The SQL analytics sink: one row per event id, so a replayed event changes nothing.
CREATE TABLE analytics_events (
    event_id    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    org_id      TEXT,
    provider    TEXT NOT NULL,
    model       TEXT,
    tokens      BIGINT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('allowed', 'rate_limited', 'quota_rejected', 'purchased')),
    occurred_at BIGINT NOT NULL
);
CREATE INDEX analytics_by_user ON analytics_events(user_id, occurred_at);
CREATE INDEX analytics_by_org ON analytics_events(org_id, occurred_at);
