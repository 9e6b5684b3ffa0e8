-- PostgreSQL twin of migrations/sqlite/0001: the same tables with native types.

-- The event log: append-only, hash-chained. Nothing updates or deletes a row here.
-- Positions are assigned by the writer holding the append lock (a transaction-scoped advisory
-- lock), not by a sequence: they are gap-free and become visible in commit order.
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  bigint      NOT NULL,
    -- The exact JSON text the hash covers. jsonb normalises key order and spacing, so the hash
    -- is over this text and the jsonb columns are derived from it (and cannot be written).
    data_text       text        NOT NULL,
    metadata_text   text        NOT NULL,
    data            jsonb       GENERATED ALWAYS AS (data_text::jsonb) STORED,
    metadata        jsonb       GENERATED ALWAYS AS (metadata_text::jsonb) STORED,
    occurred_at     timestamptz NOT NULL,   -- millisecond precision, hashed in RFC 3339 form
    recorded_at     timestamptz NOT NULL,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, stream_version)  -- the optimistic-concurrency guard
);
CREATE INDEX events_type_time ON events (event_type, occurred_at);

-- Inline projections, written in the same transaction as their events and rebuilt from them.
CREATE TABLE users (
    user_id             uuid        PRIMARY KEY,
    username            text        NOT NULL UNIQUE,
    password_hash       text        NOT NULL,
    roles               jsonb       NOT NULL,
    status              text        NOT NULL,
    created_at          timestamptz NOT NULL,
    password_changed_at timestamptz,
    version             bigint      NOT NULL
);

CREATE TABLE sessions (
    session_id          uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    status              text        NOT NULL,
    scope               text        NOT NULL,
    roles               jsonb       NOT NULL,
    created_at          timestamptz NOT NULL,
    auth_time           timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    generation          bigint      NOT NULL,
    retries             bigint      NOT NULL,
    rotated_at          timestamptz,
    rotated_from        bytea,
    login_context       jsonb       NOT NULL,
    last_context        jsonb       NOT NULL,
    reauth_required     boolean     NOT NULL,
    ended_at            timestamptz,
    end_reason          text,
    version             bigint      NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id, status);

-- Every refresh token ever issued, keyed by its public id (UUIDv7, time-ordered: new tokens land
-- at the right edge of the index). A lookup is accepted only if token_hash matches.
CREATE TABLE refresh_tokens (
    token_id    uuid        PRIMARY KEY,
    token_hash  bytea       NOT NULL,
    session_id  uuid        NOT NULL,
    generation  bigint      NOT NULL,
    issued_at   timestamptz NOT NULL
);

-- Signing keys: not a projection. The private key is encrypted with the master key and never
-- enters the event log; the log records each key's creation and activation.
CREATE TABLE signing_keys (
    kid                   text        PRIMARY KEY,
    algorithm             text        NOT NULL,
    public_key            bytea       NOT NULL,
    private_key_sealed    bytea       NOT NULL,   -- nonce || ChaCha20-Poly1305 ciphertext
    status                text        NOT NULL,   -- published, active, retired
    created_at            timestamptz NOT NULL,
    activated_at          timestamptz,
    retired_at            timestamptz
);
