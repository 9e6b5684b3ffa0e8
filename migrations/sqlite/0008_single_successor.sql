-- One live refresh token per family: a retry of the token just replaced gets the successor the
-- rotation issued, again. The session keeps that token's id and hash (the token itself is
-- re-derived from the id and the refresh-token secret; only its hash is stored), and the
-- generation a late retry last served (0: none), since late retries on two consecutive
-- generations are reuse.
ALTER TABLE sessions ADD COLUMN current_token_id BLOB;
ALTER TABLE sessions ADD COLUMN current_token_hash BLOB;
ALTER TABLE sessions ADD COLUMN late_retry_generation INTEGER NOT NULL DEFAULT 0;

-- The token of each session's current generation, as a rebuild from session.started and
-- session.refreshed sets it (the first one issued, where an older build left retry siblings).
UPDATE sessions SET
    current_token_id = (SELECT t.token_id FROM refresh_tokens t
        WHERE t.session_id = sessions.session_id AND t.generation = sessions.generation
        ORDER BY t.issued_at, t.token_id LIMIT 1),
    current_token_hash = (SELECT t.token_hash FROM refresh_tokens t
        WHERE t.session_id = sessions.session_id AND t.generation = sessions.generation
        ORDER BY t.issued_at, t.token_id LIMIT 1);
