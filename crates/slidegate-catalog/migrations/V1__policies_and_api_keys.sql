-- The catalog: policies and API keys, the source of truth when Postgres is configured.
-- Every write bumps catalog_state.version in the same transaction (which also
-- serialises writers) and stamps the changed row with it.

CREATE TABLE catalog_state (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint  NOT NULL
);
INSERT INTO catalog_state (id, version) VALUES (true, 0);

CREATE TABLE policies (
    name              text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    algorithm         text        NOT NULL CHECK (algorithm IN ('sliding_log', 'sliding_window', 'gcra')),
    "limit"           bigint      NOT NULL CHECK ("limit" BETWEEN 1 AND 1000000000),
    window_ms         bigint      NOT NULL CHECK (window_ms BETWEEN 1 AND 86400000),
    default_cost      bigint      NOT NULL CHECK (default_cost >= 0),
    -- Match rules for the forward-auth endpoint: plain data here.
    match_methods     text[]      NOT NULL DEFAULT '{}',
    match_path_prefix text,
    match_host        text,
    shadow            boolean     NOT NULL DEFAULT false,
    enabled           boolean     NOT NULL DEFAULT true,
    description       text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    version           bigint      NOT NULL
);

CREATE TABLE api_keys (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 of the key; the key itself is never stored.
    key_hash       bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    display_prefix text        NOT NULL,
    tenant         text        NOT NULL CHECK (tenant ~ '^[A-Za-z0-9_.-]{1,64}$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    version        bigint      NOT NULL
);

CREATE TABLE api_key_overrides (
    key_id  bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    policy  text   NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    "limit" bigint NOT NULL CHECK ("limit" BETWEEN 1 AND 1000000000),
    PRIMARY KEY (key_id, policy)
);
