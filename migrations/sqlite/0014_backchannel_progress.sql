-- Back-channel logout delivery (issue 14, OpenID Connect Back-Channel Logout 1.0): where each
-- client's delivery stands in the log, like webhook_progress for subscriptions. Written by the
-- delivery worker only; not a projection (a rebuild leaves it). A client with no row starts at
-- its registration event.
CREATE TABLE backchannel_progress (
    client_id           TEXT    PRIMARY KEY,
    delivered_position  INTEGER NOT NULL,         -- the last position delivered (or skipped)
    failures            INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts
    last_error          TEXT,
    last_attempt_at     TEXT
);
