//! Reads for the end-user and security surfaces (API keys: `registry.rs`).

use super::SqliteStore;
use super::rows::*;
use crate::domain::session::Session;
use crate::store::StoreError;
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
}
