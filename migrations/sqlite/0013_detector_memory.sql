-- Detector memory shared by every node and surviving restarts (issue 15). Written by the writer
-- in the transaction that records the event judged; none of it is a projection (a rebuild
-- leaves it), and nothing identifying is stored in clear: keys, usernames and networks are
-- keyed hashes (HMAC-SHA256 under a key derived from the master key).
--
-- Threshold detectors' sliding windows: one row per event counted, per rule and key (the key's
-- and the username's hashes). Rows older than the rule's window are deleted as the key counts.
CREATE TABLE detector_counts (
    rule_id   TEXT NOT NULL,
    key_tag   TEXT NOT NULL,
    name_tag  TEXT NOT NULL,
    seen_at   TEXT NOT NULL
);
CREATE INDEX detector_counts_by_key ON detector_counts (rule_id, key_tag, seen_at);

-- The circuit breaker's budget per rule: one row per revoking action taken (tripped_until
-- NULL) and one per trip (tripped_until set). Rows older than the breaker's window are deleted.
CREATE TABLE breaker_spend (
    rule_id        TEXT NOT NULL,
    spent_at       TEXT NOT NULL,
    tripped_until  TEXT
);
CREATE INDEX breaker_spend_by_rule ON breaker_spend (rule_id, spent_at);

-- Each user's usual networks: `asn:<number>` and `net:<hash of the /24 or /48>`, with when they
-- were last seen on a trusted event. Keyed by user, so erasing a user deletes their rows.
CREATE TABLE usual_networks (
    user_id    TEXT NOT NULL,
    network    TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    PRIMARY KEY (user_id, network)
);
