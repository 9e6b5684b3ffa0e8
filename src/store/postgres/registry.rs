//! PostgreSQL twin of `sqlite/registry.rs`: signing keys, API keys and webhook subscriptions,
//! the secrets table and the delivery checkpoints. Reads for the pool here; the writer's
//! statements in [`tx`], run on its transaction's connection.

use super::PostgresStore;
use super::rows::*;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord, SigningKeyStatus};
use crate::domain::token::TokenKey;
use crate::domain::webhook::{SubscriptionRecord, WebhookFormat};
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{StoreError, StoredApiKey, StoredSigningKey, WebhookSubscription};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

const SIGNING_KEY_COLUMNS: &str = "k.kid, k.algorithm, k.public_key, k.status, \
     (extract(epoch FROM k.created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM k.activated_at) * 1000)::bigint AS activated_at, \
     (extract(epoch FROM k.retired_at) * 1000)::bigint AS retired_at";
const API_KEY_COLUMNS: &str = "a.key_id::text AS key_id, a.name, a.roles::text AS roles, \
     (extract(epoch FROM a.created_at) * 1000)::bigint AS created_at, \
     (extract(epoch FROM a.revoked_at) * 1000)::bigint AS revoked_at";
const WEBHOOK_COLUMNS: &str = "w.subscription_id::text AS subscription_id, w.url, \
     w.event_types::text AS event_types, w.format, \
     (extract(epoch FROM w.created_at) * 1000)::bigint AS created_at";

// The secrets table is keyed by the owner's stream id (`domain::event::*_stream`).
fn signing_keys_joined() -> String {
    format!(
        "SELECT {SIGNING_KEY_COLUMNS}, s.material AS private_key_sealed FROM signing_keys k \
         JOIN secrets s ON s.owner = 'signing_key-' || k.kid"
    )
}

fn api_keys_joined() -> String {
    format!(
        "SELECT {API_KEY_COLUMNS}, s.material AS key_hash FROM api_keys a \
         JOIN secrets s ON s.owner = 'api_key-' || a.key_id::text"
    )
}

fn webhooks_joined() -> String {
    format!(
        "SELECT {WEBHOOK_COLUMNS}, s.material AS secret_sealed, p.delivered_position, \
         p.failures, p.last_error, \
         (extract(epoch FROM p.last_attempt_at) * 1000)::bigint AS last_attempt_at \
         FROM webhook_subscriptions w \
         JOIN secrets s ON s.owner = 'webhook-' || w.subscription_id::text \
         JOIN webhook_progress p ON p.subscription_id = w.subscription_id"
    )
}

impl PostgresStore {
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        sqlx::query(&format!(
            "{} ORDER BY k.created_at, k.kid",
            signing_keys_joined()
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredSigningKey::new(
                signing_key_row(r)?,
                r.get("private_key_sealed"),
            ))
        })
        .collect()
    }

    pub async fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError> {
        let row = sqlx::query(&format!("{} WHERE a.key_id = $1::uuid", api_keys_joined()))
            .bind(key.id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.filter(|r| key.hash.matches(&r.get::<Vec<u8>, _>("key_hash")))
            .as_ref()
            .map(stored_api_key)
            .transpose()
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError> {
        sqlx::query(&format!(
            "{} ORDER BY a.created_at, a.key_id",
            api_keys_joined()
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(stored_api_key)
        .collect()
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        sqlx::query(&format!(
            "{} ORDER BY w.created_at, w.subscription_id",
            webhooks_joined()
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_subscription)
        .collect()
    }

    pub async fn unlogged_webhooks(&self) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT subscription_id::text FROM webhook_subscriptions w WHERE NOT EXISTS \
             (SELECT 1 FROM events e WHERE e.stream_id = 'webhook-' || w.subscription_id::text) \
             ORDER BY created_at, subscription_id",
        )
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter().map(uuid).collect()
    }

    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let failures = if error.is_none() { "0" } else { "failures + 1" };
        sqlx::query(&format!(
            "UPDATE webhook_progress SET \
             delivered_position = GREATEST(delivered_position, $1), failures = {failures}, \
             last_error = $2, last_attempt_at = $3::timestamptz WHERE subscription_id = $4::uuid"
        ))
        .bind(delivered_position)
        .bind(error)
        .bind(format_timestamp(at))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The writer's statements, on its transaction's connection (the caller has flushed the
/// batch's pending writes first).
pub(super) mod tx {
    use super::*;
    use sqlx::Executor;
    use sqlx::postgres::PgConnection;

    /// Empties the projected tables of this module (for a rebuild); secrets and delivery
    /// checkpoints stay.
    pub async fn clear_projections(c: &mut PgConnection) -> Result<(), StoreError> {
        c.execute(sqlx::raw_sql(
            "DELETE FROM signing_keys; DELETE FROM api_keys; DELETE FROM webhook_subscriptions;",
        ))
        .await?;
        Ok(())
    }

    pub async fn signing_key_records(
        c: &mut PgConnection,
    ) -> Result<Vec<SigningKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys k ORDER BY k.created_at, k.kid"
        ))
        .fetch_all(c)
        .await?
        .iter()
        .map(signing_key_row)
        .collect()
    }

    pub async fn put_signing_key(
        c: &mut PgConnection,
        k: &SigningKeyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_key, status, created_at, \
             activated_at, retired_at) \
             VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7::timestamptz) \
             ON CONFLICT (kid) DO UPDATE SET status = excluded.status, \
             activated_at = excluded.activated_at, retired_at = excluded.retired_at",
        )
        .bind(&k.kid)
        .bind(&k.algorithm)
        .bind(&k.public_key)
        .bind(k.status.as_str())
        .bind(format_timestamp(k.created_at))
        .bind(k.activated_at.map(format_timestamp))
        .bind(k.retired_at.map(format_timestamp))
        .execute(c)
        .await?;
        Ok(())
    }

    pub async fn api_key_record(
        c: &mut PgConnection,
        id: Uuid,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys a WHERE a.key_id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(api_key_row)
        .transpose()
    }

    pub async fn put_api_key(c: &mut PgConnection, k: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, roles, created_at, revoked_at) \
             VALUES ($1::uuid, $2, $3::jsonb, $4::timestamptz, $5::timestamptz) \
             ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, roles = excluded.roles, \
             revoked_at = excluded.revoked_at",
        )
        .bind(k.key_id.to_string())
        .bind(&k.name)
        .bind(json(&k.roles))
        .bind(format_timestamp(k.created_at))
        .bind(k.revoked_at.map(format_timestamp))
        .execute(c)
        .await?;
        Ok(())
    }

    pub async fn webhook_record(
        c: &mut PgConnection,
        id: Uuid,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_subscriptions w \
             WHERE w.subscription_id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(webhook_row)
        .transpose()
    }

    pub async fn put_webhook(
        c: &mut PgConnection,
        w: &SubscriptionRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_subscriptions (subscription_id, url, event_types, format, \
             created_at) VALUES ($1::uuid, $2, $3::jsonb, $4, $5::timestamptz) \
             ON CONFLICT (subscription_id) DO UPDATE SET url = excluded.url, \
             event_types = excluded.event_types, format = excluded.format, \
             created_at = excluded.created_at",
        )
        .bind(w.subscription_id.to_string())
        .bind(&w.url)
        .bind(json(&w.event_types))
        .bind(w.format.as_str())
        .bind(format_timestamp(w.created_at))
        .execute(c)
        .await?;
        Ok(())
    }

    pub async fn delete_webhook(c: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_subscriptions WHERE subscription_id = $1::uuid")
            .bind(id.to_string())
            .execute(c)
            .await?;
        Ok(())
    }

    pub async fn put_secret(
        c: &mut PgConnection,
        owner: &str,
        material: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (owner, material) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET material = excluded.material",
        )
        .bind(owner)
        .bind(material)
        .execute(c)
        .await?;
        Ok(())
    }

    pub async fn delete_secret(c: &mut PgConnection, owner: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM secrets WHERE owner = $1")
            .bind(owner)
            .execute(c)
            .await?;
        Ok(())
    }

    pub async fn start_webhook_delivery(
        c: &mut PgConnection,
        id: Uuid,
        after_position: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_progress (subscription_id, delivered_position, failures) \
             VALUES ($1::uuid, $2, 0) ON CONFLICT (subscription_id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(after_position)
        .execute(c)
        .await?;
        Ok(())
    }

    pub async fn delete_webhook_delivery(c: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_progress WHERE subscription_id = $1::uuid")
            .bind(id.to_string())
            .execute(c)
            .await?;
        Ok(())
    }
}

fn signing_key_row(r: &PgRow) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        kid: r.get("kid"),
        algorithm: r.get("algorithm"),
        public_key: r.get("public_key"),
        status: SigningKeyStatus::parse(&r.get::<String, _>("status"))
            .ok_or_else(|| StoreError::Corrupt("signing key status".into()))?,
        created_at: ts(r.get("created_at"))?,
        activated_at: opt_ts(r.get("activated_at"))?,
        retired_at: opt_ts(r.get("retired_at"))?,
    })
}

fn api_key_row(r: &PgRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        key_id: uuid(r.get("key_id"))?,
        name: r.get("name"),
        roles: roles(r.get("roles"))?,
        created_at: ts(r.get("created_at"))?,
        revoked_at: opt_ts(r.get("revoked_at"))?,
    })
}

fn stored_api_key(r: &PgRow) -> Result<StoredApiKey, StoreError> {
    let k = api_key_row(r)?;
    Ok(StoredApiKey {
        key_id: k.key_id,
        name: k.name,
        key_hash: hash32(r.get("key_hash"))?,
        roles: k.roles,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    })
}

fn webhook_row(r: &PgRow) -> Result<SubscriptionRecord, StoreError> {
    Ok(SubscriptionRecord {
        subscription_id: uuid(r.get("subscription_id"))?,
        url: r.get("url"),
        event_types: serde_json::from_str(&r.get::<String, _>("event_types"))
            .map_err(|e| StoreError::Corrupt(format!("webhook event types: {e}")))?,
        format: WebhookFormat::parse(&r.get::<String, _>("format"))
            .ok_or_else(|| StoreError::Corrupt("webhook format".into()))?,
        created_at: ts(r.get("created_at"))?,
    })
}

fn webhook_subscription(r: &PgRow) -> Result<WebhookSubscription, StoreError> {
    let w = webhook_row(r)?;
    Ok(WebhookSubscription {
        subscription_id: w.subscription_id,
        url: w.url,
        secret_sealed: r.get("secret_sealed"),
        event_types: w.event_types,
        format: w.format,
        created_at: w.created_at,
        delivered_position: r.get("delivered_position"),
        failures: r.get("failures"),
        last_error: r.get("last_error"),
        last_attempt_at: opt_ts(r.get("last_attempt_at"))?,
    })
}
