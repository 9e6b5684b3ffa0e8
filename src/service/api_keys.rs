//! API keys, and who may call the security surfaces: a user whose access token carries the
//! `security` role, or an API key with a role that covers the route.

use super::{Principal, Sessiond};
use crate::commands::{CreateApiKey, RevokeApiKey};
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::token::{API_KEY_PREFIX, ApiKey};
use crate::error::Error;
use crate::store::StoredApiKey;
use rand::RngCore;
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
        if roles.iter().any(|r| caller.has_role(r)) {
            Ok(caller)
        } else {
            Err(Error::Forbidden(
                "forbidden",
                format!("this route needs the role {}", roles.join(" or ")),
            ))
        }
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

/// API keys are made and revoked from the command line: the system acts.
fn system() -> EventMetadata {
    EventMetadata::new(Actor::System, None)
}
