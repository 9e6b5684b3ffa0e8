-- Personal data in the log is sealed per subject (issue 12): one data key per user and
-- retention period (and one identity key per user for the name and password hash), each
-- wrapped with a key derived from the master key. Not a projection: a rebuild never touches
-- it. Destroying a key (erasure, retention) clears `sealed_key` and sets `destroyed_at`; the
-- events keep their ciphertext and so their hashes.
CREATE TABLE data_keys (
    key_id           TEXT    PRIMARY KEY,          -- {subject}/identity or {subject}/{period}
    subject          TEXT    NOT NULL,             -- a user id, or 'service'
    period           INTEGER,                      -- 30-day period number; NULL for identity
    sealed_key       BLOB,                         -- nonce || ChaCha20-Poly1305; NULL once destroyed
    created_at       TEXT    NOT NULL,
    destroyed_at     TEXT,
    destroyed_reason TEXT                          -- erased, expired
);
CREATE INDEX data_keys_by_subject ON data_keys (subject);
CREATE INDEX data_keys_by_period ON data_keys (period);
