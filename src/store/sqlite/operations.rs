//! Queries of the operations side: the expiry sweep and readiness (signing keys and webhook
//! subscriptions: `registry.rs`).

use super::SqliteStore;
use super::rows::*;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use uuid::Uuid;

impl SqliteStore {
    /// Active sessions whose idle (hence also any absolute) expiry is at or before `now`,
    /// soonest first, through the `sessions_due` index.
    pub async fn sessions_due(&self, now: Timestamp, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE status = 'active' AND idle_expires_at <= ? \
             ORDER BY idle_expires_at LIMIT ?",
        )
        .bind(format_timestamp(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(uuid).collect()
    }

    pub async fn count_active_sessions(&self) -> Result<i64, StoreError> {
        Ok(
            // The partial index holds active sessions only: a count over it reads no other rows.
            sqlx::query_scalar(
                "SELECT count(*) FROM sessions INDEXED BY sessions_due WHERE status = 'active'",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }

    /// Fails unless the database answers and every migration this build knows is applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.pool)
                .await?;
        let expected = super::MIGRATOR.iter().map(|m| m.version).max();
        if applied < expected {
            return Err(StoreError::Corrupt(format!(
                "migrations applied up to {applied:?}, this build needs {expected:?}"
            )));
        }
        Ok(())
    }
}
