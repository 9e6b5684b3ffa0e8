//! Event delivery to webhook subscribers. One worker per subscription follows the event log
//! from the subscription's checkpoint, in position order: each matching event is sent, signed,
//! until the subscriber answers 2xx (retrying with exponential backoff), and only then does the
//! checkpoint move past it. A subscriber that was down gets everything afterwards; an event is
//! sent again only if the process stopped between the answer and the checkpoint.
//!
//! Workers wake on the writer's committed position and poll as a fallback (another process may
//! append: a CLI tool, another node).

pub mod backchannel;
pub mod caep;
pub mod mail;
pub mod transport;

use crate::clock::Clock;
use crate::domain::Duration as Span;
use crate::domain::destination::DestinationPolicy;
use crate::domain::webhook::WebhookFormat;
use crate::store::{EventFilter, RecordedEvent, Store, StoreError, WebhookSubscription};
use crate::tokens::TokenService;
use crate::tokens::keys::MasterKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const SIGNATURE_HEADER: &str = "sessiond-signature";
pub const TIMESTAMP_HEADER: &str = "sessiond-timestamp";
pub const DELIVERY_HEADER: &str = "sessiond-delivery";
pub const EVENT_TYPE_HEADER: &str = "sessiond-event-type";

/// Events read per page.
const PAGE: i64 = 100;

/// The signature of a delivery: hex HMAC-SHA256 over `"{timestamp}.{body}"` with the
/// subscription's secret, sent as `v1=<hex>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1={}",
        crate::domain::token::hex(&mac.finalize().into_bytes())
    )
}

/// How often and how patiently deliveries are made.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    pub webhook_poll_interval: Span,
    pub webhook_timeout: Span,
    pub webhook_retry_initial: Span,
    pub webhook_retry_max: Span,
}

/// What delivery uses: the log and the subscriptions' checkpoints, the master key that opens
/// their secrets, the signer of CAEP tokens, the clock, and the committed position to wake on.
pub struct Deliverer {
    pub store: Store,
    pub master_key: Arc<MasterKey>,
    pub tokens: Arc<TokenService>,
    pub clock: Arc<dyn Clock>,
    pub commits: watch::Receiver<i64>,
    pub config: DeliverySettings,
    /// Where deliveries may go (checked before each request and again after DNS resolution).
    pub policy: Arc<DestinationPolicy>,
    /// The one client every worker sends with ([`transport::client`]).
    pub http: reqwest::Client,
    /// Sign-in notices by e-mail, when SMTP is configured.
    pub mailer: Option<Arc<mail::Mailer>>,
}

/// Starts the delivery supervisors (webhook subscriptions and back-channel logout); they
/// end, with their workers, when `stop` turns true.
pub fn spawn(app: Deliverer, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let app = Arc::new(app);
    let logouts = tokio::spawn(backchannel::supervise(app.clone(), stop.clone()));
    let mails = app
        .mailer
        .clone()
        .map(|m| tokio::spawn(mail::deliver(app.clone(), m, stop.clone())));
    let webhooks = tokio::spawn(supervise(app, stop));
    tokio::spawn(async move {
        let _ = webhooks.await;
        let _ = logouts.await;
        if let Some(m) = mails {
            let _ = m.await;
        }
    })
}

async fn supervise(app: Arc<Deliverer>, mut stop: watch::Receiver<bool>) {
    let poll = to_std(app.config.webhook_poll_interval);
    let mut workers: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
    loop {
        match app.store.webhooks().await {
            Ok(subs) => {
                workers.retain(|_, w| !w.is_finished());
                for sub in subs {
                    if !workers.contains_key(&sub.subscription_id) {
                        let id = sub.subscription_id;
                        let worker = tokio::spawn(deliver_loop(app.clone(), id, stop.clone()));
                        workers.insert(id, worker);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot list subscriptions"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for (_, w) in workers {
        let _ = w.await;
    }
}

fn to_std(d: Span) -> Duration {
    d.to_std().unwrap_or(Duration::from_secs(1))
}

/// What a worker needs of its subscription, with the secret opened.
struct Target {
    id: Uuid,
    url: String,
    secret: Vec<u8>,
    event_types: Vec<String>,
    format: WebhookFormat,
}

impl Target {
    fn wants(&self, e: &RecordedEvent) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&e.event_type)
    }
}

async fn load_target(app: &Deliverer, id: Uuid) -> Result<Option<(Target, i64)>, StoreError> {
    let Some(sub) = app
        .store
        .webhooks()
        .await?
        .into_iter()
        .find(|s| s.subscription_id == id)
    else {
        return Ok(None);
    };
    let WebhookSubscription {
        url,
        secret_sealed,
        event_types,
        format,
        delivered_position,
        ..
    } = sub;
    let secret = app
        .master_key
        .open(&id.to_string(), &secret_sealed)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Some((
        Target {
            id,
            url,
            secret,
            event_types,
            format,
        },
        delivered_position,
    )))
}

async fn deliver_loop(app: Arc<Deliverer>, id: Uuid, mut stop: watch::Receiver<bool>) {
    let mut committed = app.commits.clone();
    let mut writer_alive = true;
    let poll = to_std(app.config.webhook_poll_interval);
    let http = app.http.clone();
    let (target, mut checkpoint) = match load_target(&app, id).await {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(subscription_id = %id, error = %e, "webhooks: cannot load the subscription");
            return;
        }
    };
    let label = id.to_string();
    loop {
        if *stop.borrow() {
            return;
        }
        let page = app
            .store
            .events(&EventFilter {
                after_position: checkpoint,
                limit: Some(PAGE),
                ..Default::default()
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(subscription_id = %id, error = %e, "webhooks: cannot read the log");
                Vec::new()
            }
        };
        if let Ok(head) = app.store.head().await {
            metrics::gauge!(crate::metrics::WEBHOOK_LAG, "subscription" => label.clone())
                .set((head.position - checkpoint).max(0) as f64);
        }
        if page.is_empty() {
            let woken_by_commit = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                // Err: the writer is gone; polling carries on.
                r = committed.changed(), if writer_alive => {
                    writer_alive = r.is_ok();
                    writer_alive
                }
                _ = tokio::time::sleep(poll) => false,
            };
            // A deleted subscription ends its worker (checked at the poll's pace, not on
            // every commit).
            if !woken_by_commit && matches!(load_target(&app, id).await, Ok(None)) {
                metrics::gauge!(crate::metrics::WEBHOOK_LAG, "subscription" => label).set(0.0);
                return;
            }
            continue;
        }
        let last = page.last().map_or(checkpoint, |e| e.position);
        for event in page.iter().filter(|e| target.wants(e)) {
            match deliver_with_retries(&app, &http, &target, event, checkpoint, &mut stop).await {
                Some(()) => checkpoint = event.position,
                None => return,
            }
        }
        // Past the unsubscribed events at the end of the page too.
        if last > checkpoint {
            checkpoint = last;
            let now = app.clock.now();
            if let Err(e) = app
                .store
                .record_webhook_attempt(id, checkpoint, None, now)
                .await
            {
                tracing::warn!(subscription_id = %id, error = %e, "webhooks: cannot save the checkpoint");
            }
        }
    }
}

/// Sends one event until it is accepted (`Some`) or delivery is stopped (`None`).
async fn deliver_with_retries(
    app: &Deliverer,
    http: &reqwest::Client,
    target: &Target,
    event: &RecordedEvent,
    checkpoint: i64,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    let mut delay = to_std(app.config.webhook_retry_initial);
    let max = to_std(app.config.webhook_retry_max);
    let mut attempt = 1u32;
    loop {
        let result = tokio::select! {
            r = send(app, http, target, event, attempt) => r,
            // Shutdown does not wait for a slow subscriber; the event is sent again later.
            _ = stop.wait_for(|s| *s) => return None,
        };
        let now = app.clock.now();
        match result {
            Ok(()) => {
                metrics::counter!(crate::metrics::WEBHOOK_DELIVERIES, "outcome" => "delivered")
                    .increment(1);
                if let Err(e) = app
                    .store
                    .record_webhook_attempt(target.id, event.position, None, now)
                    .await
                {
                    tracing::warn!(subscription_id = %target.id, error = %e, "webhooks: cannot save the checkpoint");
                }
                tracing::debug!(subscription_id = %target.id, position = event.position, attempt, "webhook delivered");
                return Some(());
            }
            Err(why) => {
                metrics::counter!(crate::metrics::WEBHOOK_DELIVERIES, "outcome" => "failed")
                    .increment(1);
                tracing::warn!(subscription_id = %target.id, position = event.position, attempt, error = %why, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                if let Err(e) = app
                    .store
                    .record_webhook_attempt(target.id, checkpoint, Some(&why), now)
                    .await
                {
                    tracing::warn!(subscription_id = %target.id, error = %e, "webhooks: cannot record the failure");
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        // A subscription deleted while its subscriber was down stops being retried.
        if matches!(load_target(app, target.id).await, Ok(None)) {
            return None;
        }
        delay = (delay * 2).min(max);
        attempt = attempt.saturating_add(1);
    }
}

/// The JSON body of a delivery: the event as the log holds it, less what only the service
/// should see (password hashes).
pub fn event_body(event: &RecordedEvent) -> Vec<u8> {
    let mut data: serde_json::Value =
        serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
    crate::domain::event::strip_secrets(&mut data);
    let metadata: serde_json::Value =
        serde_json::from_str(&event.metadata).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "position": event.position,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "occurred_at": event.occurred_at,
        "data": data,
        "metadata": metadata,
    }))
    .expect("JSON values serialize")
}

/// One attempt; the error says what went wrong without the URL or anything secret.
async fn send(
    app: &Deliverer,
    http: &reqwest::Client,
    target: &Target,
    event: &RecordedEvent,
    attempt: u32,
) -> Result<(), String> {
    if let Some(why) = transport::refusal(&target.url, &app.policy) {
        return Err(why.into());
    }
    let (body, content_type) = if target.format == WebhookFormat::Caep {
        match caep::security_event_token(app, &target.url, target.id, event).await {
            Ok(Some(jwt)) => (jwt.into_bytes(), caep::CONTENT_TYPE),
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot build the security event token: {e}")),
        }
    } else {
        (event_body(event), "application/json")
    };
    let timestamp = app.clock.now().timestamp();
    let response = http
        .post(&target.url)
        .header("content-type", content_type)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(
            SIGNATURE_HEADER,
            signature(&target.secret, timestamp, &body),
        )
        .header(DELIVERY_HEADER, format!("{}-{}", target.id, event.position))
        .header(EVENT_TYPE_HEADER, &event.event_type)
        .header("sessiond-attempt", attempt.to_string())
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!(
            "the subscriber answered HTTP {}",
            r.status().as_u16()
        )),
        Err(e) if transport::was_refused(&e) => Err(transport::REFUSED.into()),
        Err(e) if e.is_timeout() => Err("the subscriber did not answer in time".into()),
        Err(e) if e.is_connect() => Err("cannot connect to the subscriber".into()),
        Err(_) => Err("the request to the subscriber failed".into()),
    }
}
