//! Webhook subscriptions as the log records them. The HMAC secret is never here: it is kept
//! sealed outside the log, and delivery progress is the delivery worker's own checkpoint.

use super::Timestamp;
use super::event::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a subscription's events are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Each event as JSON.
    Json,
    /// Session revocations as OpenID CAEP `session-revoked` security event tokens.
    Caep,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Caep => "caep",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(WebhookFormat::Json),
            "caep" => Some(WebhookFormat::Caep),
            _ => None,
        }
    }
}

impl std::fmt::Display for WebhookFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subscription as projected from its stream (`webhook-{id}`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRecord {
    pub subscription_id: Uuid,
    pub url: String,
    /// Event types delivered; empty means every type.
    pub event_types: Vec<String>,
    pub format: WebhookFormat,
    pub created_at: Timestamp,
}

/// The subscription an event is about, if it is a webhook event.
pub fn subscription_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::WebhookSubscribed(e) => Some(e.subscription_id),
        Event::WebhookUnsubscribed(e) => Some(e.subscription_id),
        _ => None,
    }
}

/// `None` after `webhook.unsubscribed`: the row goes.
pub fn evolve(
    state: Option<SubscriptionRecord>,
    event: &Event,
    at: Timestamp,
) -> Option<SubscriptionRecord> {
    match event {
        Event::WebhookSubscribed(e) => Some(SubscriptionRecord {
            subscription_id: e.subscription_id,
            url: e.url.clone(),
            event_types: e.event_types.clone(),
            format: e.format,
            created_at: at,
        }),
        Event::WebhookUnsubscribed(_) => None,
        _ => state,
    }
}
