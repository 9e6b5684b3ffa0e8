-- PostgreSQL twin of migrations/sqlite/0002: the expiry sweep's index, retention's index, and
-- webhook subscriptions.

CREATE INDEX sessions_due ON sessions (idle_expires_at) WHERE status = 'active';
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE webhook_subscriptions (
    subscription_id     uuid        PRIMARY KEY,
    url                 text        NOT NULL,
    secret_sealed       bytea       NOT NULL,   -- sealed with the master key
    event_types         jsonb       NOT NULL,   -- empty array means every type
    format              text        NOT NULL,   -- json, caep
    created_at          timestamptz NOT NULL,
    delivered_position  bigint      NOT NULL,   -- the last position delivered (or skipped)
    failures            bigint      NOT NULL DEFAULT 0,
    last_error          text,
    last_attempt_at     timestamptz
);
