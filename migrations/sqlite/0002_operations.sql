-- Operations: the expiry sweep's index, retention's index, and webhook subscriptions.

-- The sweep asks "which active sessions are past their idle expiry?". idle_expires_at is never
-- later than absolute_expires_at (a rotation moves it to min(now + idle, absolute)), so one
-- time-ordered index over active sessions finds both kinds of expiry.
CREATE INDEX sessions_due ON sessions (idle_expires_at) WHERE status = 'active';

-- Retention looks for sessions that ended long ago; written once, when a session ends.
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;

-- Webhook subscriptions and each one's checkpoint in the event log. The secret is sealed with
-- the master key (like the signing keys): the database alone does not give it away.
CREATE TABLE webhook_subscriptions (
    subscription_id     TEXT    PRIMARY KEY,
    url                 TEXT    NOT NULL,
    secret_sealed       BLOB    NOT NULL,
    event_types         TEXT    NOT NULL,         -- JSON array; empty means every type
    format              TEXT    NOT NULL,         -- json, caep
    created_at          TEXT    NOT NULL,
    delivered_position  INTEGER NOT NULL,         -- the last position delivered (or skipped)
    failures            INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts
    last_error          TEXT,
    last_attempt_at     TEXT
);
