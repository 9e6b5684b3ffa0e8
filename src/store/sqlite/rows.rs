//! Row mapping and the reads shared by the pool and the writer's transaction.

use crate::domain::context::RequestContext;
use crate::domain::session::{Session, SessionStatus};
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::{User, UserStatus};
use crate::domain::{Timestamp, parse_timestamp};
use crate::store::{ChainHead, RecordedEvent, StoreError, TokenRecord};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use uuid::Uuid;

/// Reads shared by the pool and the writer's own transaction.
pub(super) mod queries {
    use super::*;

    pub async fn head(c: &mut SqliteConnection) -> Result<ChainHead, StoreError> {
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

    pub async fn user_by_id(
        c: &mut SqliteConnection,
        id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE user_id = ?")
            .bind(id.to_string())
            .fetch_optional(c)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn user_by_name(
        c: &mut SqliteConnection,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(name)
            .fetch_optional(c)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn session(
        c: &mut SqliteConnection,
        id: Uuid,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE session_id = ?")
            .bind(id.to_string())
            .fetch_optional(c)
            .await?;
        row.as_ref().map(session_row).transpose()
    }

    pub async fn active_sessions_of(
        c: &mut SqliteConnection,
        user_id: Uuid,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ? AND status = 'active' ORDER BY created_at",
        )
        .bind(user_id.to_string())
        .fetch_all(c)
        .await?;
        rows.iter().map(session_row).collect()
    }

    pub async fn token(
        c: &mut SqliteConnection,
        key: &TokenKey,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, session_id, generation FROM refresh_tokens WHERE token_id = ?",
        )
        .bind(key.id.as_bytes().as_slice())
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

pub(super) fn ts(s: String) -> Result<Timestamp, StoreError> {
    parse_timestamp(&s).ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {s:?}")))
}

pub(super) fn opt_ts(s: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    s.map(ts).transpose()
}

pub(super) fn context(s: String) -> Result<RequestContext, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("context: {e}")))
}

pub(super) fn roles(s: String) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("roles: {e}")))
}

pub(super) fn user_row(r: &SqliteRow) -> Result<User, StoreError> {
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

pub(super) fn session_row(r: &SqliteRow) -> Result<Session, StoreError> {
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

pub(super) fn recorded_event(r: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: r.get("position"),
        stream_id: r.get("stream_id"),
        stream_version: r.get("stream_version"),
        event_type: r.get("event_type"),
        schema_version: r.get("schema_version"),
        data: r.get("data"),
        metadata: r.get("metadata"),
        occurred_at: r.get("occurred_at"),
        recorded_at: r.get("recorded_at"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    })
}
