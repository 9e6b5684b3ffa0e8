-- PostgreSQL twin of migrations/sqlite/0004: API keys, stored by hash only.
CREATE TABLE api_keys (
    key_id      uuid        PRIMARY KEY,
    name        text        NOT NULL,
    key_hash    bytea       NOT NULL,
    roles       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
