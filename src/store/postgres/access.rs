//! PostgreSQL twin of `sqlite/access.rs`: reads for the end-user and security surfaces, and the
//! API-key table.

use super::PostgresStore;
use super::rows::*;
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{StoreError, StoredApiKey};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

const API_KEY_COLUMNS: &str = "key_id::text AS key_id, name, key_hash, roles::text AS roles, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_at";

impl PostgresStore {
    pub async fn active_sessions_of(&self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        queries::active_sessions_of(&mut *self.pool.acquire().await?, user_id).await
    }

    pub async fn session_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT session_id::text FROM sessions WHERE user_id = $1::uuid ORDER BY created_at DESC",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(uuid).collect()
    }

    pub async fn has_user_with_role(&self, role: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE roles ? $1)")
                .bind(role)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn insert_api_key(&self, k: &StoredApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, key_hash, roles, created_at, revoked_at) \
             VALUES ($1::uuid, $2, $3, $4::jsonb, $5::timestamptz, $6::timestamptz)",
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

    pub async fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = $1::uuid"
        ))
        .bind(key.id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.filter(|r| key.hash.matches(&r.get::<Vec<u8>, _>("key_hash")))
            .as_ref()
            .map(api_key_row)
            .transpose()
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_row).collect()
    }

    pub async fn revoke_api_key(&self, key_id: Uuid, at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1::timestamptz \
             WHERE key_id = $2::uuid AND revoked_at IS NULL",
        )
        .bind(format_timestamp(at))
        .bind(key_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn api_key_row(r: &PgRow) -> Result<StoredApiKey, StoreError> {
    Ok(StoredApiKey {
        key_id: uuid(r.get("key_id"))?,
        name: r.get("name"),
        key_hash: hash32(r.get("key_hash"))?,
        roles: roles(r.get("roles"))?,
        created_at: ts(r.get("created_at"))?,
        revoked_at: opt_ts(r.get("revoked_at"))?,
    })
}
