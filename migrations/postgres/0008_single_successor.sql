-- PostgreSQL twin of migrations/sqlite/0008: the session keeps its current token's id (16
-- bytes) and hash, which a retry of the token it replaced gets again, and the generation a
-- late retry last served (0: none).
ALTER TABLE sessions
    ADD COLUMN current_token_id bytea,
    ADD COLUMN current_token_hash bytea,
    ADD COLUMN late_retry_generation bigint NOT NULL DEFAULT 0;

-- The token of each session's current generation, as a rebuild from session.started and
-- session.refreshed sets it (the first one issued, where an older build left retry siblings).
UPDATE sessions s
SET current_token_id = uuid_send(t.token_id), current_token_hash = t.token_hash
FROM (SELECT DISTINCT ON (session_id, generation) session_id, generation, token_id, token_hash
      FROM refresh_tokens ORDER BY session_id, generation, issued_at, token_id) t
WHERE t.session_id = s.session_id AND t.generation = s.generation;
