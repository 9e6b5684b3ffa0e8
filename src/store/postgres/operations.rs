//! PostgreSQL twin of `sqlite/operations.rs`: the expiry sweep, signing-key status, readiness
//! and webhook subscriptions.

use super::PostgresStore;
use super::rows::*;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{StoreError, StoredSigningKey, WebhookSubscription};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

const WEBHOOK_COLUMNS: &str = "subscription_id::text AS subscription_id, url, secret_sealed, \
     event_types::text AS event_types, format, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_at, delivered_position, failures, \
     last_error, (extract(epoch FROM last_attempt_at) * 1000)::bigint AS last_attempt_at";

impl PostgresStore {
    pub async fn sessions_due(&self, now: Timestamp, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT session_id::text FROM sessions \
             WHERE status = 'active' AND idle_expires_at <= $1::timestamptz \
             ORDER BY idle_expires_at LIMIT $2",
        )
        .bind(format_timestamp(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(uuid).collect()
    }

    pub async fn count_active_sessions(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM sessions WHERE status = 'active'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Fails unless the database answers and every migration this build knows is applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
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
            "UPDATE signing_keys SET status = $1, activated_at = $2::timestamptz, \
             retired_at = $3::timestamptz WHERE kid = $4",
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
             VALUES ($1::uuid, $2, $3, $4::jsonb, $5, $6::timestamptz, $7, $8, $9, $10::timestamptz)",
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
        sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, subscription_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_row)
        .collect()
    }

    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM webhook_subscriptions WHERE subscription_id = $1::uuid")
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let sql = if error.is_none() {
            "UPDATE webhook_subscriptions SET \
             delivered_position = GREATEST(delivered_position, $1), failures = 0, \
             last_error = $2, last_attempt_at = $3::timestamptz WHERE subscription_id = $4::uuid"
        } else {
            "UPDATE webhook_subscriptions SET \
             delivered_position = GREATEST(delivered_position, $1), failures = failures + 1, \
             last_error = $2, last_attempt_at = $3::timestamptz WHERE subscription_id = $4::uuid"
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

fn webhook_row(r: &PgRow) -> Result<WebhookSubscription, StoreError> {
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
