-- Signed checkpoints of the log's head (issue 12, integrity). The writer signs the head it
-- committed (position, hash, time) with an Ed25519 key derived from the master key, in the same
-- transaction as the batch. Per 1024 positions the first and the latest checkpoint are kept.
-- Not a projection and not secret: the signatures are published.
CREATE TABLE checkpoints (
    position    INTEGER PRIMARY KEY,          -- the log position signed
    hash        BLOB    NOT NULL,             -- the chain hash of the event at that position
    signed_at   TEXT    NOT NULL,             -- RFC 3339, UTC, milliseconds: the exact text signed
    key_id      TEXT    NOT NULL,             -- RFC 7638 thumbprint of the checkpoint key
    signature   BLOB    NOT NULL              -- Ed25519 over the checkpoint message (README)
);
