//! Reads for the end-user and security surfaces, and the API-key table.

use super::SqliteStore;
use super::rows::*;
use crate::domain::format_timestamp;
use crate::domain::session::Session;
use crate::domain::{Timestamp, token::TokenKey};
use crate::store::{StoreError, StoredApiKey};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

impl SqliteStore {
    pub async fn active_sessions_of(&self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::active_sessions_of(&mut conn, user_id).await
    }

    /// Every session a user ever had, newest first: a timeline reads their streams.
    pub async fn session_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE user_id = ? ORDER BY created_at DESC",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(uuid).collect()
    }

    pub async fn has_user_with_role(&self, role: &str) -> Result<bool, StoreError> {
        let found: i64 = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users, json_each(users.roles) WHERE json_each.value = ?)",
        )
        .bind(role)
        .fetch_one(&self.pool)
        .await?;
        Ok(found == 1)
    }

    pub async fn insert_api_key(&self, k: &StoredApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, key_hash, roles, created_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(k.key_id.to_string())
        .bind(&k.name)
        .bind(k.key_hash.as_slice())
        .bind(json(&k.roles))
        .bind(format_timestamp(k.created_at))
        .bind(k.revoked_at.map(format_timestamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key with this id, if its stored hash is `key.hash` (else `None`, as if unknown).
    pub async fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = ?")
            .bind(key.id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.filter(|r| key.hash.matches(&r.get::<Vec<u8>, _>("key_hash")))
            .as_ref()
            .map(api_key_row)
            .transpose()
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(api_key_row).collect()
    }

    /// Marks a key revoked; `false` when there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, key_id: Uuid, at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
        )
        .bind(format_timestamp(at))
        .bind(key_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn api_key_row(r: &SqliteRow) -> Result<StoredApiKey, StoreError> {
    Ok(StoredApiKey {
        key_id: uuid(r.get("key_id"))?,
        name: r.get("name"),
        key_hash: hash32(r.get("key_hash"))?,
        roles: roles(r.get("roles"))?,
        created_at: ts(r.get("created_at"))?,
        revoked_at: opt_ts(r.get("revoked_at"))?,
    })
}
