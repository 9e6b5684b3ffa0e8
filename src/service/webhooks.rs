//! Webhook subscriptions: created, listed and deleted from the CLI or the security API. The secret
//! is generated here, shown once to whoever created the subscription, and stored sealed.

use crate::domain::Timestamp;
use crate::domain::event::Event;
use crate::error::Error;
use crate::store::{Store, WebhookSubscription};
use crate::tokens::keys::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;
use uuid::Uuid;

/// Each event as JSON.
pub const FORMAT_JSON: &str = "json";
/// Session revocations as OpenID CAEP `session-revoked` security event tokens.
pub const FORMAT_CAEP: &str = "caep";

pub const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub url: String,
    /// Event types to deliver; empty means every type.
    pub event_types: Vec<String>,
    pub format: String,
}

/// A subscription as shown to an operator: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    pub subscription_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub format: String,
    pub created_at: String,
    pub delivered_position: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
}

impl From<&WebhookSubscription> for SubscriptionView {
    fn from(w: &WebhookSubscription) -> Self {
        SubscriptionView {
            subscription_id: w.subscription_id,
            url: w.url.clone(),
            event_types: w.event_types.clone(),
            format: w.format.clone(),
            created_at: crate::domain::format_timestamp(w.created_at),
            delivered_position: w.delivered_position,
            failures: w.failures,
            last_error: w.last_error.clone(),
            last_attempt_at: w.last_attempt_at.map(crate::domain::format_timestamp),
        }
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidField(code, message.into())
}

/// Checks the request, stores the subscription (delivering from the current head of the log
/// onwards) and returns it with its secret, which is not shown again.
pub async fn create(
    store: &Store,
    master: &MasterKey,
    now: Timestamp,
    new: NewSubscription,
) -> Result<(SubscriptionView, String), Error> {
    let url = reqwest::Url::parse(new.url.trim()).map_err(|_| {
        invalid(
            "invalid_url",
            "the url must be an absolute http or https URL",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "invalid_url",
            "the url must be an absolute http or https URL",
        ));
    }
    if url.password().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "invalid_url",
            "the url must not carry credentials; the signature authenticates deliveries",
        ));
    }
    let mut event_types = Vec::new();
    for t in new
        .event_types
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        if !Event::TYPES.contains(&t) {
            return Err(invalid(
                "invalid_event_type",
                format!(
                    "unknown event type {t:?} (known: {})",
                    Event::TYPES.join(", ")
                ),
            ));
        }
        if !event_types.iter().any(|e| e == t) {
            event_types.push(t.to_owned());
        }
    }
    match new.format.as_str() {
        FORMAT_JSON => {}
        FORMAT_CAEP => {
            if event_types.iter().any(|t| t != "session.revoked") {
                return Err(invalid(
                    "invalid_event_type",
                    "the caep format carries session.revoked only",
                ));
            }
            event_types = vec!["session.revoked".to_owned()];
        }
        _ => {
            return Err(invalid(
                "invalid_format",
                "format must be \"json\" or \"caep\"",
            ));
        }
    }
    let subscription_id = Uuid::new_v4();
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let subscription = WebhookSubscription {
        subscription_id,
        url: url.to_string(),
        secret_sealed: master.seal(&subscription_id.to_string(), secret.as_bytes()),
        event_types,
        format: new.format,
        created_at: now,
        delivered_position: store.head().await?.position,
        failures: 0,
        last_error: None,
        last_attempt_at: None,
    };
    store.insert_webhook(&subscription).await?;
    tracing::info!(subscription_id = %subscription_id, url = %redacted_url(&subscription.url), "webhook subscription created");
    Ok((SubscriptionView::from(&subscription), secret))
}

pub async fn list(store: &Store) -> Result<Vec<SubscriptionView>, Error> {
    Ok(store
        .webhooks()
        .await?
        .iter()
        .map(SubscriptionView::from)
        .collect())
}

pub async fn delete(store: &Store, id: Uuid) -> Result<(), Error> {
    if store.delete_webhook(id).await? {
        tracing::info!(subscription_id = %id, "webhook subscription deleted");
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}

/// Scheme, host and port only: a path or query may carry a token of the subscriber's.
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparseable url)".into(),
    }
}

impl super::Sessiond {
    pub async fn create_webhook(
        &self,
        new: NewSubscription,
    ) -> Result<(SubscriptionView, String), Error> {
        create(&self.store, &self.master_key, self.clock.now(), new).await
    }

    pub async fn webhooks(&self) -> Result<Vec<SubscriptionView>, Error> {
        list(&self.store).await
    }

    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        delete(&self.store, id).await
    }
}
