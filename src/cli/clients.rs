//! `sessiond clients create|list|delete`: the OAuth client registry from the command line.
//! Each prints JSON; `create` prints the client's secret once (confidential clients only).

use super::Common;
use super::accounts;
use crate::StartError;
use crate::domain::client::Client;
use crate::domain::event::Actor;
use crate::service::clients::NewClient;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ClientsCmd {
    /// Register a client; prints {"client_id", "client_secret"?, ...} (the secret only once).
    Create {
        #[command(flatten)]
        common: Common,
        /// The application's name, shown on the consent page and in the user's device list.
        #[arg(long)]
        name: String,
        /// An exact redirect URI (repeat for several); no wildcard, no prefix matching.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A public client (a browser or native app): no secret, PKCE proves the requester.
        #[arg(long)]
        public: bool,
        /// The operator's own application: the user is not asked to consent.
        #[arg(long)]
        first_party: bool,
        /// Where RP-initiated logout may send the browser back to (repeat for several).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// OpenID Connect Back-Channel Logout endpoint of the client.
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
        /// Scopes the client may ask for (repeat or comma-separate) [default: openid,profile,offline_access]
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Grants the client may use (repeat or comma-separate) [default: authorization_code,refresh_token, and client_credentials for a confidential client]
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<String>,
        /// ID token signature algorithm: RS256 (the default) or EdDSA.
        #[arg(long)]
        id_token_signed_response_alg: Option<String>,
    },
    /// Every registered client, one JSON object a line.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Remove a client: its codes and tokens can no longer be exchanged or refreshed.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The client id.
        id: String,
    },
}

/// The public view of a client (never its secret or hash).
pub fn view(c: &Client) -> serde_json::Value {
    serde_json::to_value(c).expect("a client serializes")
}

pub async fn clients(command: ClientsCmd) -> Result<ExitCode, StartError> {
    let fail = |e: crate::error::Error| StartError::Io(e.to_string());
    match command {
        ClientsCmd::Create {
            common,
            name,
            redirect_uris,
            public,
            first_party,
            post_logout_redirect_uris,
            backchannel_logout_uri,
            scopes,
            grants,
            id_token_signed_response_alg,
        } => {
            let new = NewClient {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                backchannel_logout_uri,
                public,
                first_party,
                scopes,
                grants,
                id_token_signed_response_alg,
            };
            let app = accounts::service(common.existing_config()?).await?;
            let result = app.service.create_client(new, Actor::System).await;
            app.shutdown().await;
            let created = result.map_err(fail)?;
            let mut out = view(&created.client);
            if let Some(secret) = created.client_secret {
                out["client_secret"] = json!(secret);
            }
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        ClientsCmd::List { common } => {
            let store = common.store().await?;
            for c in store.clients().await? {
                println!("{}", view(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientsCmd::Delete { common, id } => {
            let app = accounts::service(common.existing_config()?).await?;
            let result = app.service.delete_client(id.trim(), Actor::System).await;
            app.shutdown().await;
            result.map_err(|e| match e {
                crate::error::Error::NotFound => StartError::Io(format!("no client {id}")),
                other => fail(other),
            })?;
            println!("{}", json!({ "deleted": id.trim() }));
            Ok(ExitCode::SUCCESS)
        }
    }
}
