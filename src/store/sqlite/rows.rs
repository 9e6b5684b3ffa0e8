//! SQLite's dialect: its SQL, and its column types where they differ from PostgreSQL's.
//! Uuids, timestamps (RFC 3339) and JSON are TEXT; a refresh token's id is a 16-byte BLOB.

use crate::domain::token::TokenKey;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use crate::store::dispatch::dialect::{
    Arg, Cols, Dialect, Query, Sql, Stmt, bind_scalar, raw_access,
};
use crate::store::dispatch::rows::{insert_signing_key, ts};
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
        token: "SELECT token_hash AS t_hash, session_id AS t_session, generation AS t_generation \
             FROM refresh_tokens WHERE token_id = ?",
        stream_version: "SELECT MAX(stream_version) AS v FROM events WHERE stream_id = ?",
        events: "SELECT position, stream_id, stream_version, event_type, schema_version, data, \
             metadata, occurred_at, recorded_at, prev_hash, hash FROM events WHERE position > ",
        insert_events: "INSERT INTO events (position, stream_id, stream_version, event_type, \
             schema_version, data, metadata, occurred_at, recorded_at, prev_hash, hash) ",
        data_session_id: "json_extract(data, '$.session_id')",
        data_user_id: "json_extract(data, '$.user_id')",
        signing_keys: "SELECT kid, algorithm, public_key, private_key_sealed, status, \
             created_at, activated_at, retired_at FROM signing_keys ORDER BY created_at, kid",
        insert_signing_key: insert_signing_key!("VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        // One statement, so SQLite's single write lock makes the check and the insert one step.
        insert_first_signing_key: insert_signing_key!(
            "SELECT ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE status = 'active')",
        ),
        update_signing_key: "UPDATE signing_keys SET status = ?, activated_at = ?, \
             retired_at = ? WHERE kid = ?",
        session_ids_of: "SELECT session_id FROM sessions WHERE user_id = ? \
             ORDER BY created_at DESC",
        has_user_with_role: "SELECT EXISTS (SELECT 1 FROM users, json_each(users.roles) \
             WHERE json_each.value = ?) AS found",
        insert_api_key: "INSERT INTO api_keys (key_id, name, key_hash, roles, created_at, \
             revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
        api_key: "SELECT * FROM api_keys WHERE key_id = ?",
        api_keys: "SELECT * FROM api_keys ORDER BY created_at, key_id",
        revoke_api_key: "UPDATE api_keys SET revoked_at = ? \
             WHERE key_id = ? AND revoked_at IS NULL",
        sessions_due: "SELECT session_id FROM sessions \
             WHERE status = 'active' AND idle_expires_at <= ? ORDER BY idle_expires_at LIMIT ?",
        // The partial index holds active sessions only: a count over it reads no other rows.
        count_active_sessions: "SELECT count(*) AS n FROM sessions INDEXED BY sessions_due \
             WHERE status = 'active'",
        migrated: "SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success = 1",
        insert_webhook: "INSERT INTO webhook_subscriptions (subscription_id, url, \
             secret_sealed, event_types, format, created_at, delivered_position, failures, \
             last_error, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        webhooks: "SELECT * FROM webhook_subscriptions ORDER BY created_at, subscription_id",
        delete_webhook: "DELETE FROM webhook_subscriptions WHERE subscription_id = ?",
        webhook_delivered: "UPDATE webhook_subscriptions SET \
             delivered_position = MAX(delivered_position, ?), failures = 0, last_error = ?, \
             last_attempt_at = ? WHERE subscription_id = ?",
        webhook_failed: "UPDATE webhook_subscriptions SET \
             delivered_position = MAX(delivered_position, ?), failures = failures + 1, \
             last_error = ?, last_attempt_at = ? WHERE subscription_id = ?",
    };
    const MIGRATOR: &'static sqlx::migrate::Migrator = &super::MIGRATOR;
    const NUMBERED: bool = false;
    const UUID: &'static str = "";
    const TIME: &'static str = "";
    const JSON: &'static str = "";
    const TOKENS_PER_STATEMENT: usize = 256;
    /// Well under SQLite's 32,766 bound parameters (20 per session).
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

    fn bind<'q>(q: Query<'q, Self>, a: Arg<'q>) -> Query<'q, Self> {
        bind_scalar(q, a).unwrap_or_else(|_| unreachable!("SQLite has no array parameters"))
    }

    raw_access!();
}
