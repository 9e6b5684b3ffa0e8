-- API keys for the security API, introspection and the revocation feed. Not a projection: the
-- log records each key's creation and revocation (api_key.created / api_key.revoked), never
-- its hash. The key itself is shown once, at creation; only its SHA-256 is kept.
CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,                 -- the key's public id (UUIDv7)
    name        TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    roles       TEXT NOT NULL,                    -- JSON array
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
