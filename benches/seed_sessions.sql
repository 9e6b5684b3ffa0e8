-- Bench only (issue 16, "with one million stored sessions"): adds 1,000,000 active sessions,
-- each with its current refresh token, straight into a SQLite store's projection tables, in
-- seconds instead of a million argon2 logins. There are no events behind these rows, so
-- `sessiond events verify` and `projections rebuild` no longer agree with them: never run this
-- on a store that matters.
--
--   sessiond serve --data-dir D ...   (once, to create the store; then stop it)
--   sqlite3 D/sessiond.db < benches/seed_sessions.sql
--
-- The rows look like real ones: a login's context (the first stored session's, if any), an
-- idle expiry far ahead (the expiry sweep leaves them alone), token ids below every real
-- UUIDv7 (older tokens, at the left of the b-tree, as a long-running store has them).
PRAGMA journal_mode = WAL;
BEGIN;
CREATE TEMP TABLE seed_context AS
SELECT COALESCE(
    (SELECT login_context FROM sessions LIMIT 1),
    '{"ip":"192.0.2.1","user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0","device":{"category":"pc","os":"Linux","browser":"Firefox","version":"128.0","vendor":"Mozilla"}}'
) AS ctx;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
INSERT INTO sessions (session_id, user_id, status, scope, roles, created_at, auth_time,
    last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, login_context,
    last_context, reauth_required, version, current_token_id, current_token_hash)
SELECT
    lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
          || '-a' || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
    lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
          || '-a' || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
    'active', 'session', '["user"]',
    '2026-11-01T00:00:00.000Z', '2026-11-01T00:00:00.000Z', '2026-11-01T00:00:00.000Z',
    '2099-01-01T00:00:00.000Z', '2099-01-01T00:00:00.000Z',
    1, 0, (SELECT ctx FROM seed_context), (SELECT ctx FROM seed_context), 0, 1,
    X'00' || randomblob(15), randomblob(32)
FROM n;
INSERT INTO refresh_tokens (token_id, token_hash, session_id, generation, issued_at)
SELECT current_token_id, current_token_hash, session_id, 1, created_at
FROM sessions WHERE substr(current_token_id, 1, 1) = X'00';
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SELECT count(*) AS sessions FROM sessions;
