-- OAuth clients and the authorization code flow (issue 14). `clients` is the projection of
-- each client's stream (`client-{id}`; the whole registration as JSON in `record`); a
-- confidential client's secret is kept as its SHA-256 in `secrets` under `client-{id}`, never
-- in the log. `authorization_codes` is the projection of `authorization_code.*` events on the
-- session streams: codes are kept as their SHA-256 only, and a redeemed code keeps its row so
-- a second presentation is recognised as reuse. A session records the client it was started for.
ALTER TABLE sessions ADD COLUMN client_id TEXT;

CREATE TABLE clients (
    client_id   TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    record      TEXT    NOT NULL,                 -- the registration (domain::client::Client), JSON
    created_at  TEXT    NOT NULL
);

CREATE TABLE authorization_codes (
    code_id     TEXT    PRIMARY KEY,
    session_id  TEXT    NOT NULL,
    record      TEXT    NOT NULL,                 -- domain::authorization::AuthorizationCode, JSON
    expires_at  TEXT    NOT NULL
);
CREATE INDEX authorization_codes_session ON authorization_codes (session_id);
