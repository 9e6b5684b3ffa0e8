//! Queries of the operations side: the expiry sweep, signing-key status, readiness and webhook
//! subscriptions.

use super::SqliteStore;
use super::rows::*;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{StoreError, StoredSigningKey, WebhookSubscription};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
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

    pub async fn update_signing_key(&self, k: &StoredSigningKey) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE signing_keys SET status = ?, activated_at = ?, retired_at = ? WHERE kid = ?",
        )
        .bind(&k.status)
        .bind(k.activated_at.map(format_timestamp))
        .bind(k.retired_at.map(format_timestamp))
        .bind(&k.kid)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn insert_webhook(&self, w: &WebhookSubscription) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_subscriptions (subscription_id, url, secret_sealed, event_types, \
             format, created_at, delivered_position, failures, last_error, last_attempt_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(w.subscription_id.to_string())
        .bind(&w.url)
        .bind(&w.secret_sealed)
        .bind(json(&w.event_types))
        .bind(&w.format)
        .bind(format_timestamp(w.created_at))
        .bind(w.delivered_position)
        .bind(w.failures)
        .bind(&w.last_error)
        .bind(w.last_attempt_at.map(format_timestamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        sqlx::query("SELECT * FROM webhook_subscriptions ORDER BY created_at, subscription_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(webhook_row)
            .collect()
    }

    /// Returns whether there was such a subscription.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE subscription_id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records one delivery attempt: success moves the checkpoint and clears the failure
    /// count; a failure counts up and keeps its reason.
    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let sql = if error.is_none() {
            "UPDATE webhook_subscriptions SET delivered_position = MAX(delivered_position, ?), \
             failures = 0, last_error = ?, last_attempt_at = ? WHERE subscription_id = ?"
        } else {
            "UPDATE webhook_subscriptions SET delivered_position = MAX(delivered_position, ?), \
             failures = failures + 1, last_error = ?, last_attempt_at = ? WHERE subscription_id = ?"
        };
        sqlx::query(sql)
            .bind(delivered_position)
            .bind(error)
            .bind(format_timestamp(at))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn webhook_row(r: &SqliteRow) -> Result<WebhookSubscription, StoreError> {
    Ok(WebhookSubscription {
        subscription_id: uuid(r.get("subscription_id"))?,
        url: r.get("url"),
        secret_sealed: r.get("secret_sealed"),
        event_types: serde_json::from_str(&r.get::<String, _>("event_types"))
            .map_err(|e| StoreError::Corrupt(format!("webhook event types: {e}")))?,
        format: r.get("format"),
        created_at: ts(r.get("created_at"))?,
        delivered_position: r.get("delivered_position"),
        failures: r.get("failures"),
        last_error: r.get("last_error"),
        last_attempt_at: opt_ts(r.get("last_attempt_at"))?,
    })
}
