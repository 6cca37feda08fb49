-- PostgreSQL. Policy lifecycle: immutable component versions, their activation history, and the bindings
-- of modules (with parameters) to providers. Every change bumps `policy_generation` in the same
-- transaction, so every replica sees that it must reload.

CREATE TABLE policy_versions (
    name        TEXT    NOT NULL,
    version     BIGINT NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('rate-limiter', 'quota-rule')),
    sha256      TEXT    NOT NULL,
    size        BIGINT NOT NULL,
    component   BYTEA    NOT NULL,
    source      TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, sha256)
);

-- The active version of a module is its latest activation that was not rolled back.
CREATE TABLE policy_activations (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    activated_at BIGINT NOT NULL,
    rolled_back  BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (name, version) REFERENCES policy_versions (name, version)
);
CREATE INDEX policy_activations_by_name ON policy_activations (name, rolled_back, seq);

-- One rate limiter and one quota rule per provider; `params` and `shadow_params` are JSON
-- objects of strings. `source` is `api` or the manifest file that declared the binding.
CREATE TABLE policy_bindings (
    provider      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('rate-limiter', 'quota-rule')),
    module        TEXT NOT NULL,
    params        TEXT NOT NULL,
    shadow_module TEXT,
    shadow_params TEXT,
    source        TEXT NOT NULL,
    PRIMARY KEY (provider, kind)
);

-- What was last imported from each file of the policy directory (by content hash), so a
-- restart does not undo a change made over the API since.
CREATE TABLE policy_sources (
    path   TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);

CREATE TABLE policy_generation (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO policy_generation (id, generation) VALUES (1, 0);
