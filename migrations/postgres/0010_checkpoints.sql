-- PostgreSQL twin of migrations/sqlite/0010: signed checkpoints of the log's head, written by
-- the writer in the same transaction as its batch (under the append lock). `signed_at` is the
-- exact RFC 3339 text signed, so it is text here too.
CREATE TABLE checkpoints (
    position    bigint  PRIMARY KEY,
    hash        bytea   NOT NULL,
    signed_at   text    NOT NULL,
    key_id      text    NOT NULL,
    signature   bytea   NOT NULL
);
