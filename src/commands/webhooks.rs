//! Webhook subscriptions through the log: `webhook.subscribed` / `webhook.unsubscribed` with the
//! projected `webhook_subscriptions` row, the sealed HMAC secret (secrets table, never the log)
//! and the delivery checkpoint (the delivery worker's own table), all in one transaction: a
//! crash leaves all of it or none of it.

use super::recording::record_registry;
use super::writer::run_once;
use super::{Command, Context};
use crate::domain::Timestamp;
use crate::domain::event::{
    Actor, Event, EventMetadata, WebhookSubscribed, WebhookUnsubscribed, webhook_stream,
};
use crate::domain::webhook::{SubscriptionRecord, WebhookFormat};
use crate::store::{Store, StoreError, UnitOfWork};
use uuid::Uuid;

/// No subscription has this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSubscription;

/// Subscribes a URL (checked by the caller). Delivery starts after this event's position.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub subscription_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub format: WebhookFormat,
    /// The HMAC secret sealed with the master key (the subscription id as associated data).
    pub secret_sealed: Vec<u8>,
}

impl Command for Subscribe {
    /// The subscription and its delivery checkpoint.
    type Reply = (SubscriptionRecord, i64);

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let id = self.subscription_id;
        let stream = webhook_stream(id);
        uow.put_secret(&stream, &self.secret_sealed).await?;
        let event = Event::WebhookSubscribed(WebhookSubscribed {
            subscription_id: id,
            url: self.url,
            event_types: self.event_types,
            format: self.format,
        });
        let recorded = record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        let from = recorded.last().map_or(0, |e| e.position);
        uow.start_webhook_delivery(id, from).await?;
        let row = uow
            .webhook_record(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a new subscription has no row".into()))?;
        Ok((row, from))
    }
}

/// Removes a subscription, its secret and its checkpoint; delivery to it stops.
#[derive(Debug, Clone)]
pub struct Unsubscribe {
    pub subscription_id: Uuid,
}

impl Command for Unsubscribe {
    type Reply = Result<(), UnknownSubscription>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let id = self.subscription_id;
        if uow.webhook_record(id).await?.is_none() {
            return Ok(Err(UnknownSubscription));
        }
        let stream = webhook_stream(id);
        let event = Event::WebhookUnsubscribed(WebhookUnsubscribed {
            subscription_id: id,
        });
        record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        uow.delete_secret(&stream).await?;
        uow.delete_webhook_delivery(id).await?;
        Ok(Ok(()))
    }
}

/// Records `webhook.subscribed` for subscriptions made by builds that wrote only the row (before
/// subscriptions were in the log), each at the time it was made, so a rebuild keeps them. Rows
/// whose stream has events by now (another process adopted them) are left alone.
#[derive(Debug, Clone)]
pub struct AdoptUnloggedWebhooks {
    pub subscription_ids: Vec<Uuid>,
}

impl Command for AdoptUnloggedWebhooks {
    /// How many were adopted.
    type Reply = usize;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let mut adopted = 0;
        for id in self.subscription_ids {
            let stream = webhook_stream(id);
            if uow.stream_version(&stream).await? > 0 {
                continue;
            }
            let Some(row) = uow.webhook_record(id).await? else {
                continue;
            };
            let event = Event::WebhookSubscribed(WebhookSubscribed {
                subscription_id: id,
                url: row.url,
                event_types: row.event_types,
                format: row.format,
            });
            record_registry(uow, &stream, vec![event], cx.meta, row.created_at).await?;
            adopted += 1;
        }
        Ok(adopted)
    }
}

/// Adopts the subscriptions no event names yet (see [`AdoptUnloggedWebhooks`]); a cheap read
/// when there are none. Run when the store is opened, before anything could rebuild.
pub async fn adopt_unlogged_webhooks(store: &Store, now: Timestamp) -> Result<usize, StoreError> {
    let ids = store.unlogged_webhooks().await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let command = AdoptUnloggedWebhooks {
        subscription_ids: ids,
    };
    let meta = EventMetadata::new(Actor::System, None);
    let adopted = match store {
        Store::Sqlite(s) => run_once(&mut s.write_session().await?, command, &meta, now).await?,
        Store::Postgres(p) => run_once(&mut p.write_session().await?, command, &meta, now).await?,
    };
    if adopted > 0 {
        tracing::info!(
            adopted,
            "recorded existing webhook subscriptions in the event log"
        );
    }
    Ok(adopted)
}
