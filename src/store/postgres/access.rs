//! PostgreSQL twin of `sqlite/access.rs`: reads for the end-user and security surfaces (API
//! keys: `registry.rs`).

use super::PostgresStore;
use super::rows::*;
use crate::domain::session::Session;
use crate::store::StoreError;
use uuid::Uuid;

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
}
