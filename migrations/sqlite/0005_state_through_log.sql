-- Signing keys, API keys and webhook subscriptions become projections of their events
-- (signing_key.*, api_key.*, webhook.*): rebuilt from the log like users and sessions. What
-- must not enter the log moves out of them:
--   secrets           a signing key's sealed private half, a webhook's sealed HMAC secret and
--                     an API key's hash, keyed by the stream id of their owner. Not a
--                     projection: a rebuild never touches it.
--   webhook_progress  each subscription's delivery checkpoint: the delivery worker's own state,
--                     not derived from the log, so a rebuild never resets delivery.

CREATE TABLE secrets (
    owner       TEXT PRIMARY KEY,                 -- signing_key-{kid}, webhook-{id}, api_key-{id}
    material    BLOB NOT NULL                     -- sealed (nonce || ChaCha20-Poly1305), or a SHA-256
);

INSERT INTO secrets (owner, material)
    SELECT 'signing_key-' || kid, private_key_sealed FROM signing_keys;
INSERT INTO secrets (owner, material)
    SELECT 'webhook-' || subscription_id, secret_sealed FROM webhook_subscriptions;
INSERT INTO secrets (owner, material)
    SELECT 'api_key-' || key_id, key_hash FROM api_keys;

CREATE TABLE webhook_progress (
    subscription_id     TEXT    PRIMARY KEY,
    delivered_position  INTEGER NOT NULL,         -- the last position delivered (or skipped)
    failures            INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts
    last_error          TEXT,
    last_attempt_at     TEXT
);

INSERT INTO webhook_progress (subscription_id, delivered_position, failures, last_error,
                              last_attempt_at)
    SELECT subscription_id, delivered_position, failures, last_error, last_attempt_at
    FROM webhook_subscriptions;

ALTER TABLE signing_keys DROP COLUMN private_key_sealed;
ALTER TABLE api_keys DROP COLUMN key_hash;
ALTER TABLE webhook_subscriptions DROP COLUMN secret_sealed;
ALTER TABLE webhook_subscriptions DROP COLUMN delivered_position;
ALTER TABLE webhook_subscriptions DROP COLUMN failures;
ALTER TABLE webhook_subscriptions DROP COLUMN last_error;
ALTER TABLE webhook_subscriptions DROP COLUMN last_attempt_at;
-- Subscriptions made before this migration have no webhook.subscribed event yet; the service
-- records one for each when it next opens the database (`commands::adopt_unlogged_webhooks`).
