//! API keys, and who may call the security surfaces: a user whose access token carries the
//! `security` role, or an API key with a role that covers the route.

use super::{Principal, Sessiond};
use crate::commands::{CreateApiKey, RevokeApiKey};
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::token::{API_KEY_PREFIX, ApiKey, TokenHash, TokenKey};
use crate::domain::user::UserStatus;
use crate::error::Error;
use crate::store::StoredApiKey;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// May use the whole security API.
pub const SECURITY_ROLE: &str = "security";
/// May introspect tokens and read the revocation feed, nothing else: for resource servers.
pub const RESOURCE_SERVER_ROLE: &str = "resource_server";
pub const API_KEY_ROLES: &[&str] = &[SECURITY_ROLE, RESOURCE_SERVER_ROLE];

/// Who is calling a security or resource-server route.
#[derive(Debug, Clone)]
pub enum Caller {
    User(Box<Principal>),
    ApiKey(StoredApiKey),
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        match self {
            Caller::User(p) => p.session.roles.iter().any(|r| r == role),
            Caller::ApiKey(k) => k.roles.iter().any(|r| r == role),
        }
    }

    /// How the log names this caller when it acts on someone else's sessions.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::User(p) => Actor::Admin(p.user_id()),
            Caller::ApiKey(k) => Actor::ApiKey(k.key_id),
        }
    }
}

impl Sessiond {
    /// Identifies the caller of a protected route from its Bearer credential: an API key
    /// (`sdak_…`) or an access token. The role check is the route's.
    pub async fn caller(&self, bearer: &str) -> Result<Caller, Error> {
        if !bearer.starts_with(API_KEY_PREFIX) {
            return self
                .authenticate(bearer)
                .await
                .map(|p| Caller::User(Box::new(p)));
        }
        let key = ApiKey::parse(bearer)
            .map_err(|_| Error::InvalidToken(crate::tokens::TokenError::Malformed))?;
        match self.store.api_key(&key.key()).await? {
            Some(stored) if stored.revoked_at.is_none() => Ok(Caller::ApiKey(stored)),
            _ => Err(Error::InvalidToken(crate::tokens::TokenError::Invalid)),
        }
    }

    /// The caller, if it holds one of `roles`; 403 otherwise.
    pub async fn caller_with_role(&self, bearer: &str, roles: &[&str]) -> Result<Caller, Error> {
        let caller = self.caller(bearer).await?;
        self.still_authorised(&caller, roles).await?;
        Ok(caller)
    }

    /// Whether `caller` holds one of `roles` now, as the store says: an API key not revoked
    /// and still with the role; a user's session still live, the user not locked, and the user
    /// (as now stored, not as at login) still with the role. Checked at the start of every
    /// protected request and again, periodically, by long-lived channels (the admin stream).
    pub async fn still_authorised(&self, caller: &Caller, roles: &[&str]) -> Result<(), Error> {
        let forbidden = || {
            Error::Forbidden(
                "forbidden",
                format!("this route needs the role {}", roles.join(" or ")),
            )
        };
        let holds = |have: &[String]| roles.iter().any(|r| have.iter().any(|h| h == r));
        match caller {
            Caller::ApiKey(k) => {
                let key = TokenKey {
                    id: k.key_id,
                    hash: TokenHash(k.key_hash),
                };
                match self.store.api_key(&key).await? {
                    Some(now) if now.revoked_at.is_none() => {
                        if holds(&now.roles) {
                            Ok(())
                        } else {
                            Err(forbidden())
                        }
                    }
                    _ => Err(Error::InvalidToken(crate::tokens::TokenError::Invalid)),
                }
            }
            Caller::User(p) => {
                let now = self.now();
                let session = self.store.session(p.session.session_id).await?;
                if !session.is_some_and(|s| s.is_active() && s.expiry_due(now).is_none()) {
                    return Err(Error::SessionEnded);
                }
                let user = self
                    .store
                    .user_by_id(p.user_id())
                    .await?
                    .ok_or(Error::SessionEnded)?;
                if user.status == UserStatus::Locked {
                    return Err(Error::AccountLocked);
                }
                if holds(&p.session.roles) && holds(&user.roles) {
                    Ok(())
                } else {
                    Err(forbidden())
                }
            }
        }
    }

    /// Takes one of the caller's live-stream slots on this node, or refuses with 429 when it
    /// holds `admin_stream_max_per_caller` already. The slot is given back when the guard drops
    /// (the stream ends or the client goes away).
    pub fn stream_slot(&self, caller: &Caller) -> Result<StreamSlot, Error> {
        let who = match caller {
            Caller::User(p) => format!("user-{}", p.user_id()),
            Caller::ApiKey(k) => format!("apikey-{}", k.key_id),
        };
        let max = self.config.admin_stream_max_per_caller;
        let mut open = self.streams.lock().expect("stream slots lock");
        let n = open.entry(who.clone()).or_insert(0);
        if *n >= max {
            return Err(Error::TooManyStreams(max));
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.streams.clone(),
            who,
        })
    }

    /// Creates a key and returns it: the only time the key itself is seen.
    pub async fn create_api_key(
        &self,
        name: &str,
        roles: Vec<String>,
    ) -> Result<(StoredApiKey, ApiKey), Error> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(Error::InvalidField(
                "invalid_name",
                "an API key needs a name of 1 to 100 printable characters".into(),
            ));
        }
        if roles.is_empty() {
            return Err(Error::InvalidField(
                "invalid_role",
                format!("give at least one role: {}", API_KEY_ROLES.join(", ")),
            ));
        }
        if let Some(bad) = roles.iter().find(|r| !API_KEY_ROLES.contains(&r.as_str())) {
            return Err(Error::InvalidField(
                "invalid_role",
                format!(
                    "unknown role {bad:?}: an API key may have {}",
                    API_KEY_ROLES.join(", ")
                ),
            ));
        }
        let mut entropy = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut entropy);
        let key = ApiKey::new(Uuid::now_v7(), entropy);
        let command = CreateApiKey {
            key_id: key.id(),
            name: name.to_owned(),
            roles,
            key_hash: key.hash().0,
        };
        let record = self.writer.submit(command, system()).await?;
        let stored = StoredApiKey {
            key_id: record.key_id,
            name: record.name,
            key_hash: key.hash().0,
            roles: record.roles,
            created_at: record.created_at,
            revoked_at: record.revoked_at,
        };
        Ok((stored, key))
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, Error> {
        Ok(self.store.api_keys().await?)
    }

    /// Revokes a key at once; 404 for an unknown or already revoked key.
    pub async fn revoke_api_key(&self, key_id: Uuid) -> Result<(), Error> {
        self.writer
            .submit(RevokeApiKey { key_id }, system())
            .await?
            .map_err(|_| Error::NotFound)
    }
}

/// Open admin streams per caller on this node.
pub type StreamSlots = Arc<Mutex<HashMap<String, usize>>>;

/// One open admin stream of a caller; dropping it frees the slot.
pub struct StreamSlot {
    slots: StreamSlots,
    who: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock().expect("stream slots lock");
        if let Some(n) = open.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

/// API keys are made and revoked from the command line: the system acts.
fn system() -> EventMetadata {
    EventMetadata::new(Actor::System, None)
}
