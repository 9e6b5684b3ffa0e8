-- The event log: append-only, hash-chained. Nothing updates or deletes a row here.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,          -- global order, assigned by the single writer
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL,             -- JSON payload
    metadata        TEXT    NOT NULL,             -- JSON: actor, request id, causation
    occurred_at     TEXT    NOT NULL,             -- RFC 3339, UTC, milliseconds
    recorded_at     TEXT    NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    UNIQUE (stream_id, stream_version)            -- the optimistic-concurrency guard
);
CREATE INDEX events_type_time ON events (event_type, occurred_at);
-- No index on occurred_at alone: every append would write to it, and a time-bounded export
-- pages by position anyway (a scan of the rowid order), or uses events_type_time with a type.

-- Inline projections, written in the same transaction as their events and rebuilt from them.
CREATE TABLE users (
    user_id             TEXT    PRIMARY KEY,
    username            TEXT    NOT NULL UNIQUE,
    password_hash       TEXT    NOT NULL,
    roles               TEXT    NOT NULL,         -- JSON array
    status              TEXT    NOT NULL,
    created_at          TEXT    NOT NULL,
    password_changed_at TEXT,
    version             INTEGER NOT NULL
);

CREATE TABLE sessions (
    session_id          TEXT    PRIMARY KEY,
    user_id             TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    scope               TEXT    NOT NULL,
    roles               TEXT    NOT NULL,         -- JSON array, granted at login
    created_at          TEXT    NOT NULL,
    auth_time           TEXT    NOT NULL,
    last_seen_at        TEXT    NOT NULL,
    idle_expires_at     TEXT    NOT NULL,
    absolute_expires_at TEXT    NOT NULL,
    generation          INTEGER NOT NULL,
    retries             INTEGER NOT NULL,
    rotated_at          TEXT,
    rotated_from        BLOB,
    login_context       TEXT    NOT NULL,         -- JSON RequestContext
    last_context        TEXT    NOT NULL,
    reauth_required     INTEGER NOT NULL,
    ended_at            TEXT,
    end_reason          TEXT,
    version             INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id, status);

-- Every refresh token ever issued: which family and generation it belongs to. Keyed by the
-- token's public id (16-byte UUIDv7, time-ordered), so a new token is appended at the right
-- edge of the b-tree; keyed by the random SHA-256 it dirtied a random page per refresh. A
-- lookup by id is accepted only if token_hash matches the presented token's hash.
CREATE TABLE refresh_tokens (
    token_id    BLOB    PRIMARY KEY,
    token_hash  BLOB    NOT NULL,
    session_id  TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    issued_at   TEXT    NOT NULL
) WITHOUT ROWID;
-- Looked up by id only. No (session_id, generation) index until something reads by family:
-- it was one more randomly placed page written per refresh.

-- Signing keys: not a projection. The private key is encrypted with the master key and never
-- enters the event log; the log records each key's creation and activation.
CREATE TABLE signing_keys (
    kid                   TEXT PRIMARY KEY,
    algorithm             TEXT NOT NULL,
    public_key            BLOB NOT NULL,
    private_key_sealed    BLOB NOT NULL,          -- nonce || ChaCha20-Poly1305 ciphertext
    status                TEXT NOT NULL,          -- published, active, retired
    created_at            TEXT NOT NULL,
    activated_at          TEXT,
    retired_at            TEXT
);
