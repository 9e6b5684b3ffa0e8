-- PostgreSQL twin of migrations/sqlite/0005: signing keys, API keys and webhook subscriptions
-- become projections of their events; what must not enter the log (sealed private keys and
-- webhook secrets, API key hashes) moves to `secrets`, delivery checkpoints to
-- `webhook_progress`. Neither is a projection: a rebuild never touches them.

CREATE TABLE secrets (
    owner       text  PRIMARY KEY,   -- signing_key-{kid}, webhook-{id}, api_key-{id}
    material    bytea NOT NULL
);

INSERT INTO secrets (owner, material)
    SELECT 'signing_key-' || kid, private_key_sealed FROM signing_keys;
INSERT INTO secrets (owner, material)
    SELECT 'webhook-' || subscription_id::text, secret_sealed FROM webhook_subscriptions;
INSERT INTO secrets (owner, material)
    SELECT 'api_key-' || key_id::text, key_hash FROM api_keys;

CREATE TABLE webhook_progress (
    subscription_id     uuid        PRIMARY KEY,
    delivered_position  bigint      NOT NULL,
    failures            bigint      NOT NULL DEFAULT 0,
    last_error          text,
    last_attempt_at     timestamptz
);

INSERT INTO webhook_progress (subscription_id, delivered_position, failures, last_error,
                              last_attempt_at)
    SELECT subscription_id, delivered_position, failures, last_error, last_attempt_at
    FROM webhook_subscriptions;

ALTER TABLE signing_keys DROP COLUMN private_key_sealed;
ALTER TABLE api_keys DROP COLUMN key_hash;
ALTER TABLE webhook_subscriptions
    DROP COLUMN secret_sealed,
    DROP COLUMN delivered_position,
    DROP COLUMN failures,
    DROP COLUMN last_error,
    DROP COLUMN last_attempt_at;
