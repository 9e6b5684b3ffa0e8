//! The reads of the PostgreSQL store, shared by the pool and the writer's transaction, and the
//! row mapping. The writes are in `writes.rs`.
//!
//! The build has no sqlx `uuid`/`chrono` features, so values cross the wire in their text form
//! and the SQL casts them: uuids as `$n::uuid` / `col::text`, timestamps written as RFC 3339 text
//! (`$n::timestamptz`, exact at millisecond precision) and read as epoch milliseconds.

use crate::domain::context::RequestContext;
use crate::domain::session::{Session, SessionStatus};
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::{User, UserStatus};
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{ChainHead, RecordedEvent, StoreError, TokenRecord};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

pub(super) const USER_COLUMNS: &str = "user_id::text AS user_id, username, password_hash, \
     roles::text AS roles, status, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM password_changed_at) * 1000)::bigint AS password_changed_at, version";

pub(super) const SESSION_COLUMNS: &str = "session_id::text AS session_id, \
     user_id::text AS user_id, status, scope, roles::text AS roles, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM auth_time) * 1000)::bigint AS auth_time, \
     (extract(epoch FROM last_seen_at) * 1000)::bigint AS last_seen_at, \
     (extract(epoch FROM idle_expires_at) * 1000)::bigint AS idle_expires_at, \
     (extract(epoch FROM absolute_expires_at) * 1000)::bigint AS absolute_expires_at, \
     generation, retries, (extract(epoch FROM rotated_at) * 1000)::bigint AS rotated_at, \
     rotated_from, login_context::text AS login_context, last_context::text AS last_context, \
     reauth_required, (extract(epoch FROM ended_at) * 1000)::bigint AS ended_at, end_reason, \
     version";

pub(super) const EVENT_COLUMNS: &str = "position, stream_id, stream_version, event_type, \
     schema_version, data_text, metadata_text, \
     (extract(epoch FROM occurred_at) * 1000)::bigint AS occurred_at, \
     (extract(epoch FROM recorded_at) * 1000)::bigint AS recorded_at, prev_hash, hash";

/// Reads shared by the pool and the writer's own transaction.
pub(super) mod queries {
    use super::*;

    pub async fn head(c: &mut PgConnection) -> Result<ChainHead, StoreError> {
        let row = sqlx::query("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(c)
            .await?;
        match row {
            None => Ok(ChainHead::GENESIS),
            Some(r) => Ok(ChainHead {
                position: r.get("position"),
                hash: hash32(r.get::<Vec<u8>, _>("hash"))?,
            }),
        }
    }

    pub async fn user_by_id(c: &mut PgConnection, id: Uuid) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn user_by_name(
        c: &mut PgConnection,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(name)
        .fetch_optional(c)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn session(c: &mut PgConnection, id: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?;
        row.as_ref().map(session_row).transpose()
    }

    pub async fn active_sessions_of(
        c: &mut PgConnection,
        user_id: Uuid,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE user_id = $1::uuid AND status = 'active' ORDER BY created_at, session_id"
        ))
        .bind(user_id.to_string())
        .fetch_all(c)
        .await?;
        rows.iter().map(session_row).collect()
    }

    pub async fn token(
        c: &mut PgConnection,
        key: &TokenKey,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, session_id::text AS session_id, generation FROM refresh_tokens \
             WHERE token_id = $1::uuid",
        )
        .bind(key.id.to_string())
        .fetch_optional(c)
        .await?;
        // A known id with another hash is a forged token: as unknown as any other.
        row.filter(|r| key.hash.matches(&r.get::<Vec<u8>, _>("token_hash")))
            .map(|r| {
                Ok(TokenRecord {
                    session_id: uuid(r.get("session_id"))?,
                    generation: u32::try_from(r.get::<i64, _>("generation"))
                        .map_err(|_| StoreError::Corrupt("token generation".into()))?,
                })
            })
            .transpose()
    }

    /// The tokens with these ids and, in the same statement, their sessions (a refresh needs
    /// both): (id, stored hash, record, session). Hashes are checked by the caller.
    pub async fn tokens_with_sessions(
        c: &mut PgConnection,
        keys: &[TokenKey],
    ) -> Result<Vec<(Uuid, Vec<u8>, TokenRecord, Option<Session>)>, StoreError> {
        let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
        let rows = sqlx::query(&format!(
            "SELECT t.t_id, t.t_hash, t.t_session, t.t_generation, s.* FROM \
             (SELECT token_id::text AS t_id, token_hash AS t_hash, session_id AS t_sid, \
              session_id::text AS t_session, generation AS t_generation FROM refresh_tokens \
              WHERE token_id = ANY($1::text[]::uuid[])) t \
             LEFT JOIN LATERAL (SELECT {SESSION_COLUMNS} FROM sessions \
              WHERE sessions.session_id = t.t_sid) s ON true"
        ))
        .bind(ids)
        .fetch_all(c)
        .await?;
        rows.iter()
            .map(|r| {
                let record = TokenRecord {
                    session_id: uuid(r.get("t_session"))?,
                    generation: u32::try_from(r.get::<i64, _>("t_generation"))
                        .map_err(|_| StoreError::Corrupt("token generation".into()))?,
                };
                let session = match r.get::<Option<String>, _>("session_id") {
                    Some(_) => Some(session_row(r)?),
                    None => None,
                };
                Ok((uuid(r.get("t_id"))?, r.get("t_hash"), record, session))
            })
            .collect()
    }

    pub async fn stream_version(c: &mut PgConnection, stream_id: &str) -> Result<i64, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(stream_version), 0)::bigint FROM events WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(c)
        .await?;
        Ok(v)
    }
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

pub(super) fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| StoreError::Corrupt("hash length".into()))
}

pub(super) fn uuid(s: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

pub(super) fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp out of range: {ms} ms")))
}

pub(super) fn opt_ts(ms: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    ms.map(ts).transpose()
}

fn context(s: String) -> Result<RequestContext, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("context: {e}")))
}

pub(super) fn roles(s: String) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("roles: {e}")))
}

pub(super) fn user_row(r: &PgRow) -> Result<User, StoreError> {
    Ok(User {
        user_id: uuid(r.get("user_id"))?,
        username: r.get("username"),
        password_hash: r.get("password_hash"),
        roles: roles(r.get("roles"))?,
        status: UserStatus::parse(&r.get::<String, _>("status"))
            .ok_or_else(|| StoreError::Corrupt("user status".into()))?,
        created_at: ts(r.get("created_at"))?,
        password_changed_at: opt_ts(r.get("password_changed_at"))?,
        version: r.get("version"),
    })
}

pub(super) fn session_row(r: &PgRow) -> Result<Session, StoreError> {
    let small = |col: &str| {
        u32::try_from(r.get::<i64, _>(col)).map_err(|_| StoreError::Corrupt(col.to_owned()))
    };
    Ok(Session {
        session_id: uuid(r.get("session_id"))?,
        user_id: uuid(r.get("user_id"))?,
        status: SessionStatus::parse(&r.get::<String, _>("status"))
            .ok_or_else(|| StoreError::Corrupt("session status".into()))?,
        scope: r.get("scope"),
        roles: roles(r.get("roles"))?,
        created_at: ts(r.get("created_at"))?,
        auth_time: ts(r.get("auth_time"))?,
        last_seen_at: ts(r.get("last_seen_at"))?,
        idle_expires_at: ts(r.get("idle_expires_at"))?,
        absolute_expires_at: ts(r.get("absolute_expires_at"))?,
        generation: small("generation")?,
        retries: small("retries")?,
        rotated_at: opt_ts(r.get("rotated_at"))?,
        rotated_from: r
            .get::<Option<Vec<u8>>, _>("rotated_from")
            .map(|b| {
                TokenHash::from_slice(&b).ok_or_else(|| StoreError::Corrupt("rotated_from".into()))
            })
            .transpose()?,
        login_context: context(r.get("login_context"))?,
        last_context: context(r.get("last_context"))?,
        reauth_required: r.get("reauth_required"),
        ended_at: opt_ts(r.get("ended_at"))?,
        end_reason: r.get("end_reason"),
        version: r.get("version"),
    })
}

/// The stored event with its timestamps in the RFC 3339 form the hash covers: written from that
/// text at millisecond precision, they format back to the same bytes.
pub(super) fn recorded_event(r: &PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: r.get("position"),
        stream_id: r.get("stream_id"),
        stream_version: r.get("stream_version"),
        event_type: r.get("event_type"),
        schema_version: r.get("schema_version"),
        data: r.get("data_text"),
        metadata: r.get("metadata_text"),
        occurred_at: format_timestamp(ts(r.get("occurred_at"))?),
        recorded_at: format_timestamp(ts(r.get("recorded_at"))?),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    })
}
