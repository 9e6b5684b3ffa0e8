//! Webhook subscriptions: created, listed and deleted from the CLI or the security API, through
//! the writer (`webhook.subscribed` / `webhook.unsubscribed`, with the caller as actor). The
//! secret is generated here, shown once to whoever created the subscription, and stored sealed,
//! outside the log.

use crate::commands::{Subscribe, Unsubscribe};
use crate::domain::destination::DestinationPolicy;
use crate::domain::event::{Actor, Event, EventMetadata};
use crate::domain::webhook::WebhookFormat;
use crate::error::Error;
use crate::store::{Store, WebhookSubscription};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;
use uuid::Uuid;

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
    pub format: WebhookFormat,
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
            format: w.format,
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

/// Checks the request: the URL, the event types and the format as they will be stored.
fn check(
    new: NewSubscription,
    policy: &DestinationPolicy,
) -> Result<(reqwest::Url, Vec<String>, WebhookFormat), Error> {
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
    if url.scheme() == "http" && !policy.allow_http {
        return Err(invalid(
            "invalid_url",
            "plain http:// webhooks are refused: use https:// (webhook_allow_http allows http)",
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
    let format = WebhookFormat::parse(&new.format)
        .ok_or_else(|| invalid("invalid_format", "format must be \"json\" or \"caep\""))?;
    if format == WebhookFormat::Caep {
        if event_types.iter().any(|t| t != "session.revoked") {
            return Err(invalid(
                "invalid_event_type",
                "the caep format carries session.revoked only",
            ));
        }
        event_types = vec!["session.revoked".to_owned()];
    }
    Ok((url, event_types, format))
}

/// How long a subscription waits for its host's addresses; past it, the name is judged at
/// delivery (every connection is checked after resolution anyway).
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a destination inside the host's own or private networks (unless allow-listed): an
/// IP literal by itself, a name (`localhost` too) by every address it resolves to now.
/// Delivery checks again after each resolution, so a name that changes later gains nothing.
async fn check_destination(url: &reqwest::Url, policy: &DestinationPolicy) -> Result<(), Error> {
    let host = url.host_str().unwrap_or_default();
    let refused = |what: String, kind: &str| {
        Error::InvalidField(
            "destination_not_allowed",
            format!(
                "{what} is {kind}: webhooks may not reach loopback, private, link-local or \
                 metadata addresses (an operator can allow a network with webhook_allow_networks)"
            ),
        )
    };
    if let Some(kind) = policy.refuses_host(host) {
        return Err(refused(format!("the url's host {host}"), kind));
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let resolved =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    if let Ok(Ok(addrs)) = resolved {
        for addr in addrs {
            if let Some(kind) = policy.refuses(addr.ip()) {
                return Err(refused(
                    format!("{host} resolves to {}, which", addr.ip()),
                    kind,
                ));
            }
        }
    }
    Ok(())
}

pub async fn list(store: &Store) -> Result<Vec<SubscriptionView>, Error> {
    Ok(store
        .webhooks()
        .await?
        .iter()
        .map(SubscriptionView::from)
        .collect())
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
    /// Checks the request, records the subscription (delivering the events after it) and
    /// returns it with its secret, which is not shown again.
    pub async fn create_webhook(
        &self,
        new: NewSubscription,
        actor: Actor,
    ) -> Result<(SubscriptionView, String), Error> {
        let policy = self.config.destination_policy();
        let (url, event_types, format) = check(new, &policy)?;
        check_destination(&url, &policy).await?;
        let subscription_id = Uuid::new_v4();
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let command = Subscribe {
            subscription_id,
            url: url.to_string(),
            event_types,
            format,
            secret_sealed: self
                .master_key
                .seal(&subscription_id.to_string(), secret.as_bytes()),
        };
        let (row, delivered_position) = self
            .writer
            .submit(command, EventMetadata::new(actor, None))
            .await?;
        tracing::info!(subscription_id = %subscription_id, url = %redacted_url(&row.url), "webhook subscription created");
        let view = SubscriptionView {
            subscription_id,
            url: row.url,
            event_types: row.event_types,
            format: row.format,
            created_at: crate::domain::format_timestamp(row.created_at),
            delivered_position,
            failures: 0,
            last_error: None,
            last_attempt_at: None,
        };
        Ok((view, secret))
    }

    pub async fn webhooks(&self) -> Result<Vec<SubscriptionView>, Error> {
        list(&self.store).await
    }

    /// Removes a subscription (`webhook.unsubscribed`); 404 for an unknown one.
    pub async fn delete_webhook(&self, id: Uuid, actor: Actor) -> Result<(), Error> {
        let command = Unsubscribe {
            subscription_id: id,
        };
        self.writer
            .submit(command, EventMetadata::new(actor, None))
            .await?
            .map_err(|_| Error::NotFound)?;
        tracing::info!(subscription_id = %id, "webhook subscription deleted");
        Ok(())
    }
}
