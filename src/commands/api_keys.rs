//! API keys: created and revoked through the log. The event, the projected `api_keys` row and
//! (at creation) the key's hash in the secrets table are written in one transaction, so a crash
//! leaves all or nothing. The hash never enters the log.

use super::recording::record_registry;
use super::{Command, Context};
use crate::domain::event::{ApiKeyCreated, ApiKeyRevoked, Event, api_key_stream};
use crate::domain::keys::ApiKeyRecord;
use crate::store::{StoreError, UnitOfWork};
use uuid::Uuid;

/// No API key has this id, or it is revoked already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownApiKey;

/// Creates an API key (name and roles checked by the caller).
#[derive(Debug, Clone)]
pub struct CreateApiKey {
    pub key_id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    /// SHA-256 of the key: kept beside the row, not in the event.
    pub key_hash: [u8; 32],
}

impl Command for CreateApiKey {
    type Reply = ApiKeyRecord;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let stream = api_key_stream(self.key_id);
        uow.put_secret(&stream, &self.key_hash).await?;
        let event = Event::ApiKeyCreated(ApiKeyCreated {
            key_id: self.key_id,
            name: self.name,
            roles: self.roles,
        });
        record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        uow.api_key_record(self.key_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a created API key has no row".into()))
    }
}

/// Revokes an API key; it stops working at once.
#[derive(Debug, Clone)]
pub struct RevokeApiKey {
    pub key_id: Uuid,
}

impl Command for RevokeApiKey {
    type Reply = Result<(), UnknownApiKey>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        match uow.api_key_record(self.key_id).await? {
            Some(k) if k.revoked_at.is_none() => {}
            _ => return Ok(Err(UnknownApiKey)),
        }
        let event = Event::ApiKeyRevoked(ApiKeyRevoked {
            key_id: self.key_id,
        });
        let stream = api_key_stream(self.key_id);
        record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(()))
    }
}
