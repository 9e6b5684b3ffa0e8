//! Reads of the signing keys, API keys and webhook subscriptions (their projected rows joined
//! with the secrets table and the delivery checkpoints), and delivery's own checkpoint writes.
//! Everything else about them is written through the writer's [`UnitOfWork`](super::UnitOfWork).
//!
//! The secrets table is keyed by the stream id of what a secret belongs to
//! (`signing_key-{kid}`, `api_key-{id}`, `webhook-{id}`; see `domain::event`), and the
//! backends' joins spell those prefixes out.

use super::*;
use crate::domain::token::TokenKey;

impl Store {
    /// Every signing key with its sealed private half, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.signing_keys().await,
            Store::Postgres(p) => p.signing_keys().await,
        }
    }

    /// The API key with this id whose stored hash matches; `None` for any other.
    pub async fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.api_key(key).await,
            Store::Postgres(s) => s.api_key(key).await,
        }
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.api_keys().await,
            Store::Postgres(s) => s.api_keys().await,
        }
    }

    /// Every subscription with its sealed secret and delivery checkpoint.
    pub async fn webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        match self {
            Store::Sqlite(s) => s.webhooks().await,
            Store::Postgres(s) => s.webhooks().await,
        }
    }

    /// Subscriptions made before they were recorded in the log (by builds that wrote the row
    /// only), to be adopted into it.
    pub async fn unlogged_webhooks(&self) -> Result<Vec<Uuid>, StoreError> {
        match self {
            Store::Sqlite(s) => s.unlogged_webhooks().await,
            Store::Postgres(s) => s.unlogged_webhooks().await,
        }
    }

    /// One delivery attempt: on success (`error` None) the checkpoint moves to
    /// `delivered_position` and the failure count resets; a failure counts up.
    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.record_webhook_attempt(id, delivered_position, error, at)
                    .await
            }
            Store::Postgres(s) => {
                s.record_webhook_attempt(id, delivered_position, error, at)
                    .await
            }
        }
    }
}
