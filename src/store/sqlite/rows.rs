//! SQLite's dialect: its SQL, and its column types where they differ from PostgreSQL's.
//! Uuids, timestamps (RFC 3339) and JSON are TEXT; a refresh token's id is a 16-byte BLOB.

use crate::domain::token::TokenKey;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use crate::store::dispatch::dialect::{
    Arg, Cols, Dialect, Query, RegistrySql, Sql, Stmt, bind_scalar, raw_access,
};
use crate::store::dispatch::rows::ts;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use uuid::Uuid;

impl Dialect for Sqlite {
    const SQL: Sql = Sql {
        user_by_id: "SELECT * FROM users WHERE user_id = ?",
        user_by_name: "SELECT * FROM users WHERE username = ?",
        session: "SELECT * FROM sessions WHERE session_id = ?",
        active_sessions_of: "SELECT * FROM sessions WHERE user_id = ? AND status = 'active' \
             ORDER BY created_at",
        last_seen_session_of: "SELECT * FROM sessions WHERE user_id = ? AND status = 'active' \
             AND reauth_required = 0 AND session_id <> ? \
             ORDER BY last_seen_at DESC, created_at DESC LIMIT 1",
        token: "SELECT token_hash AS t_hash, session_id AS t_session, generation AS t_generation \
             FROM refresh_tokens WHERE token_id = ?",
        stream_version: "SELECT MAX(stream_version) AS v FROM events WHERE stream_id = ?",
        events: "SELECT position, stream_id, stream_version, event_type, schema_version, data, \
             metadata, occurred_at, recorded_at, prev_hash, hash FROM events WHERE position > ",
        insert_events: "INSERT INTO events (position, stream_id, stream_version, event_type, \
             schema_version, data, metadata, occurred_at, recorded_at, prev_hash, hash) ",
        data_session_id: "json_extract(data, '$.session_id')",
        data_user_id: "json_extract(data, '$.user_id')",
        session_ids_of: "SELECT session_id FROM sessions WHERE user_id = ? \
             ORDER BY created_at DESC",
        has_user_with_role: "SELECT EXISTS (SELECT 1 FROM users, json_each(users.roles) \
             WHERE json_each.value = ?) AS found",
        sessions_due: "SELECT session_id FROM sessions \
             WHERE status = 'active' AND idle_expires_at <= ? ORDER BY idle_expires_at LIMIT ?",
        // The partial index holds active sessions only: a count over it reads no other rows.
        count_active_sessions: "SELECT count(*) AS n FROM sessions INDEXED BY sessions_due \
             WHERE status = 'active'",
        migrated: "SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success = 1",
        // Secrets are kept under the owner's stream id (`domain::event::*_stream`).
        registry: RegistrySql {
            signing_keys: "SELECT k.*, s.material AS private_key_sealed FROM signing_keys k \
                 JOIN secrets s ON s.owner = 'signing_key-' || k.kid ORDER BY k.created_at, k.kid",
            signing_key_records: "SELECT * FROM signing_keys ORDER BY created_at, kid",
            put_signing_key: "INSERT INTO signing_keys (kid, algorithm, public_key, status, \
                 created_at, activated_at, retired_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (kid) DO UPDATE SET status = excluded.status, \
                 activated_at = excluded.activated_at, retired_at = excluded.retired_at",
            api_key: "SELECT a.*, s.material AS key_hash FROM api_keys a \
                 JOIN secrets s ON s.owner = 'api_key-' || a.key_id WHERE a.key_id = ?",
            api_keys: "SELECT a.*, s.material AS key_hash FROM api_keys a \
                 JOIN secrets s ON s.owner = 'api_key-' || a.key_id ORDER BY a.created_at, a.key_id",
            api_key_record: "SELECT * FROM api_keys WHERE key_id = ?",
            put_api_key: "INSERT INTO api_keys (key_id, name, roles, created_at, revoked_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, \
                 roles = excluded.roles, revoked_at = excluded.revoked_at",
            webhooks: "SELECT w.*, s.material AS secret_sealed, p.delivered_position, \
                 p.failures, p.last_error, p.last_attempt_at FROM webhook_subscriptions w \
                 JOIN secrets s ON s.owner = 'webhook-' || w.subscription_id \
                 JOIN webhook_progress p ON p.subscription_id = w.subscription_id \
                 ORDER BY w.created_at, w.subscription_id",
            unlogged_webhooks: "SELECT subscription_id FROM webhook_subscriptions w \
                 WHERE NOT EXISTS (SELECT 1 FROM events e \
                 WHERE e.stream_id = 'webhook-' || w.subscription_id) \
                 ORDER BY created_at, subscription_id",
            webhook_record: "SELECT * FROM webhook_subscriptions WHERE subscription_id = ?",
            put_webhook: "INSERT INTO webhook_subscriptions (subscription_id, url, event_types, \
                 format, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscription_id) \
                 DO UPDATE SET url = excluded.url, event_types = excluded.event_types, \
                 format = excluded.format, created_at = excluded.created_at",
            delete_webhook: "DELETE FROM webhook_subscriptions WHERE subscription_id = ?",
            put_secret: "INSERT INTO secrets (owner, material) VALUES (?, ?) \
                 ON CONFLICT (owner) DO UPDATE SET material = excluded.material",
            delete_secret: "DELETE FROM secrets WHERE owner = ?",
            start_webhook_delivery: "INSERT INTO webhook_progress (subscription_id, \
                 delivered_position, failures) VALUES (?, ?, 0) \
                 ON CONFLICT (subscription_id) DO NOTHING",
            delete_webhook_delivery: "DELETE FROM webhook_progress WHERE subscription_id = ?",
            webhook_delivered: "UPDATE webhook_progress SET \
                 delivered_position = MAX(delivered_position, ?), failures = 0, last_error = ?, \
                 last_attempt_at = ? WHERE subscription_id = ?",
            webhook_failed: "UPDATE webhook_progress SET \
                 delivered_position = MAX(delivered_position, ?), failures = failures + 1, \
                 last_error = ?, last_attempt_at = ? WHERE subscription_id = ?",
            backchannel_checkpoint: "SELECT delivered_position FROM backchannel_progress \
                 WHERE client_id = ?",
            backchannel_delivered: "INSERT INTO backchannel_progress (client_id, \
                 delivered_position, failures, last_error, last_attempt_at) VALUES (?, ?, 0, ?, ?) \
                 ON CONFLICT (client_id) DO UPDATE SET delivered_position = \
                 MAX(backchannel_progress.delivered_position, excluded.delivered_position), \
                 failures = 0, last_error = excluded.last_error, \
                 last_attempt_at = excluded.last_attempt_at",
            backchannel_failed: "INSERT INTO backchannel_progress (client_id, \
                 delivered_position, failures, last_error, last_attempt_at) VALUES (?, ?, 1, ?, ?) \
                 ON CONFLICT (client_id) DO UPDATE SET delivered_position = \
                 MAX(backchannel_progress.delivered_position, excluded.delivered_position), \
                 failures = backchannel_progress.failures + 1, last_error = excluded.last_error, \
                 last_attempt_at = excluded.last_attempt_at",
            put_login_failure: "INSERT INTO login_failures (throttle_key, failed_at) VALUES (?, ?)",
            login_failure_at: "failed_at",
            claim_dpop_jti: "INSERT INTO dpop_proofs (jti_hash, expires_at) VALUES (?, ?) \
                 ON CONFLICT (jti_hash) DO NOTHING",
            prune_dpop_jtis: "DELETE FROM dpop_proofs WHERE expires_at < ?",
            window_counts: "SELECT COUNT(*) AS n, COUNT(DISTINCT name_tag) AS d, \
                 COALESCE(SUM(CASE WHEN name_tag = ? THEN 1 ELSE 0 END), 0) AS mine \
                 FROM detector_counts WHERE rule_id = ? AND key_tag = ? AND seen_at > ?",
            put_window_count: "INSERT INTO detector_counts (rule_id, key_tag, name_tag, seen_at) \
                 VALUES (?, ?, ?, ?)",
            prune_window: "DELETE FROM detector_counts \
                 WHERE rule_id = ? AND key_tag = ? AND seen_at <= ?",
            breaker_spent: "SELECT COALESCE(SUM(CASE WHEN tripped_until IS NULL THEN 1 ELSE 0 END), 0) \
                 AS n, MAX(tripped_until) AS until FROM breaker_spend \
                 WHERE rule_id = ? AND spent_at > ?",
            put_breaker_spend: "INSERT INTO breaker_spend (rule_id, spent_at, tripped_until) \
                 VALUES (?, ?, ?)",
            prune_breaker: "DELETE FROM breaker_spend WHERE rule_id = ? AND spent_at <= ?",
        },
    };
    const MIGRATOR: &'static sqlx::migrate::Migrator = &super::MIGRATOR;
    const NUMBERED: bool = false;
    const UUID: &'static str = "";
    const TIME: &'static str = "";
    const JSON: &'static str = "";
    const TOKENS_PER_STATEMENT: usize = 256;
    /// Well under SQLite's 32,766 bound parameters (21 per session).
    const ROWS_PER_STATEMENT: usize = 256;

    fn time(r: &SqliteRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
        r.opt_text(col)?.map(ts).transpose()
    }

    fn event_time(r: &SqliteRow, col: &str) -> Result<String, StoreError> {
        r.text(col)
    }

    fn token_id(r: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
        Uuid::from_slice(&r.bytes(col)?).map_err(|_| StoreError::Corrupt("token id length".into()))
    }

    fn token_id_arg(id: &Uuid) -> Arg<'_> {
        Arg::from(id.as_bytes().as_slice())
    }

    fn tokens_with_sessions<'a>(q: &mut Stmt<'a>, keys: &'a [TokenKey]) {
        q.push(
            "SELECT t.token_id AS t_id, t.token_hash AS t_hash, t.session_id AS t_session, \
             t.generation AS t_generation, s.* FROM refresh_tokens t \
             LEFT JOIN sessions s ON s.session_id = t.session_id WHERE t.token_id IN (",
        );
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(Self::token_id_arg(&k.id));
        }
        q.push(")");
    }

    fn prune(cutoff: Timestamp) -> [Stmt<'static>; 2] {
        let cutoff_text = format_timestamp(cutoff);
        // A session's tokens were issued before it ended, so their UUIDv7 ids all sort below
        // an id made of the cutoff's milliseconds and zeros: the scan stays among old tokens.
        let mut id_bound = [0u8; 16];
        let millis = cutoff.timestamp_millis().max(0) as u64;
        id_bound[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        [
            Stmt::new::<Self>(
                "DELETE FROM refresh_tokens WHERE token_id < ? AND session_id IN \
                 (SELECT session_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?)",
            )
            .arg(Arg::Blob(id_bound.to_vec()))
            .arg(cutoff_text.clone()),
            Stmt::new::<Self>("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?")
                .arg(cutoff_text),
        ]
    }

    /// Each column quoted as an SQL literal (NULL apart from 'NULL'), joined by `|`.
    async fn row_text(c: &mut SqliteConnection, table: &str) -> Result<String, StoreError> {
        let info = Stmt::new::<Self>(format!("PRAGMA table_info({table})"));
        let cols = Self::fetch_all(c, info).await?;
        let quoted: Result<Vec<String>, StoreError> = cols
            .iter()
            .map(|r| Ok(format!("quote({})", r.text("name")?)))
            .collect();
        Ok(quoted?.join(" || '|' || "))
    }

    async fn column_names(
        c: &mut SqliteConnection,
        table: &str,
    ) -> Result<Vec<String>, StoreError> {
        let info = Stmt::new::<Self>(format!("PRAGMA table_info({table})"));
        Self::fetch_all(c, info)
            .await?
            .iter()
            .map(|r| r.text("name"))
            .collect()
    }

    fn column_text(col: &str) -> String {
        format!("quote({col})")
    }

    fn literal(col: &str) -> String {
        format!("quote({col})")
    }

    fn bind<'q>(q: Query<'q, Self>, a: Arg<'q>) -> Query<'q, Self> {
        bind_scalar(q, a).unwrap_or_else(|_| unreachable!("SQLite has no array parameters"))
    }

    raw_access!();
}
