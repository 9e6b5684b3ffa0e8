-- DPoP (RFC 9449). A session (its refresh-token family) may be bound to the thumbprint of a
-- client's public key (RFC 7638), set once at login from the session.started event and
-- reproduced by a rebuild. Proofs already seen are kept by the SHA-256 of their jti until their
-- iat window has passed, so a replay is refused on every node: the primary key settles a race.
ALTER TABLE sessions ADD COLUMN dpop_jkt TEXT;

CREATE TABLE dpop_proofs (
    jti_hash    BLOB    PRIMARY KEY,              -- SHA-256 of the proof's jti
    expires_at  TEXT    NOT NULL                  -- after this the proof's iat is stale anyway
);
CREATE INDEX dpop_proofs_expiry ON dpop_proofs (expires_at);
