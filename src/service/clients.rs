//! The OAuth client registry (CLI and security API) and client authentication at the token
//! endpoint: `client_secret_basic`, `client_secret_post`, or `none` for a public client.

use super::Sessiond;
use crate::commands::{DeleteClient, RegisterClient, UnknownClient};
use crate::domain::client::{Client, ClientError, Registration};
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::token::{ClientSecret, TokenHash};
use crate::error::Error;
use rand::RngCore;
use serde::Deserialize;
use uuid::Uuid;

/// A registration as the CLI and the security API take it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub first_party: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub id_token_signed_response_alg: Option<String>,
}

/// A registered client and, for a confidential one, its secret: shown this once.
#[derive(Debug)]
pub struct CreatedClient {
    pub client: Client,
    pub client_secret: Option<String>,
}

/// How a token request authenticates its client, as the HTTP layer read it.
#[derive(Debug, Default)]
pub struct ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1), id and secret already form-decoded.
    pub basic: Option<(String, String)>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl ClientAuth {
    pub fn is_empty(&self) -> bool {
        self.basic.is_none() && self.client_id.is_none() && self.client_secret.is_none()
    }
}

fn client_error(e: ClientError) -> Error {
    Error::InvalidField("invalid_client_metadata", e.to_string())
}

impl Sessiond {
    pub async fn create_client(
        &self,
        new: NewClient,
        actor: Actor,
    ) -> Result<CreatedClient, Error> {
        let client_id = Uuid::new_v4().simple().to_string();
        let secret = (!new.public).then(|| {
            let mut entropy = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut entropy);
            ClientSecret::new(Uuid::now_v7(), entropy)
        });
        let cmd = RegisterClient {
            registration: Registration {
                client_id,
                name: new.name,
                redirect_uris: new.redirect_uris,
                post_logout_redirect_uris: new.post_logout_redirect_uris,
                backchannel_logout_uri: new.backchannel_logout_uri,
                public: new.public,
                first_party: new.first_party,
                scopes: new.scopes,
                grants: new.grants,
                id_token_signed_response_alg: new.id_token_signed_response_alg,
            },
            secret_hash: secret.as_ref().map(|s| s.hash().0),
        };
        let client = self
            .writer
            .submit(cmd, EventMetadata::new(actor, None))
            .await?
            .map_err(client_error)?;
        Ok(CreatedClient {
            client,
            client_secret: secret.map(|s| s.expose().to_owned()),
        })
    }

    pub async fn clients(&self) -> Result<Vec<Client>, Error> {
        Ok(self.store.clients().await?)
    }

    pub async fn delete_client(&self, client_id: &str, actor: Actor) -> Result<(), Error> {
        let cmd = DeleteClient {
            client_id: client_id.to_owned(),
        };
        match self
            .writer
            .submit(cmd, EventMetadata::new(actor, None))
            .await?
        {
            Ok(()) => Ok(()),
            Err(UnknownClient) => Err(Error::NotFound),
        }
    }

    /// A registered client by id (for the authorization endpoint: no authentication there).
    pub async fn registered_client(&self, client_id: &str) -> Result<Option<Client>, Error> {
        if client_id.len() > 200 {
            return Ok(None);
        }
        Ok(self.store.client(client_id).await?.map(|(c, _)| c))
    }

    /// The client a token request authenticates as (RFC 6749 §2.3): one method only; a
    /// confidential client by its secret (compared by SHA-256 in constant time), a public
    /// client by its id alone and never with a secret. Any failure is `invalid_client`.
    pub async fn authenticate_client(&self, auth: &ClientAuth) -> Result<Client, Error> {
        let basic = auth.basic.is_some();
        let fail = Error::InvalidClient { basic };
        if basic && auth.client_secret.is_some() {
            return Err(Error::InvalidRequest(
                "use one client authentication method, not Basic and client_secret both".into(),
            ));
        }
        let (id, secret) = match &auth.basic {
            Some((id, secret)) => {
                if auth.client_id.as_deref().is_some_and(|c| c != id) {
                    return Err(fail);
                }
                (id.as_str(), Some(secret.as_str()))
            }
            None => match &auth.client_id {
                Some(id) => (id.as_str(), auth.client_secret.as_deref()),
                None => return Err(fail),
            },
        };
        if id.len() > 200 {
            return Err(fail);
        }
        let Some((client, stored)) = self.store.client(id).await? else {
            return Err(fail);
        };
        match (client.public, stored, secret) {
            (true, _, None) => Ok(client),
            (false, Some(stored), Some(secret)) => {
                let presented = ClientSecret::parse(secret).map(|s| s.hash());
                let hash = presented.unwrap_or(TokenHash([0; 32]));
                if hash.matches(&stored) && presented.is_ok() {
                    Ok(client)
                } else {
                    Err(fail)
                }
            }
            _ => Err(fail),
        }
    }
}
