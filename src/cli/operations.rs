//! `sessiond keys …` (signing keys, and API keys through `accounts`) and `sessiond webhooks …`.

use super::{Common, accounts};
use crate::domain::event::Actor;
use crate::{App, StartError};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Every signing key with its status (published, active, retired, expired).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Publish a new signing key now; the server makes it the signer once it has been in the
    /// JWKS for signing_key_publish_ahead, and retires the current one.
    Rotate {
        #[command(flatten)]
        common: Common,
    },
    #[command(flatten)]
    ApiKeys(accounts::ApiKeysCmd),
}

#[derive(Subcommand)]
pub enum WebhooksCmd {
    /// Subscribe a URL; prints the subscription and its signing secret (shown only once).
    Create {
        #[command(flatten)]
        common: Common,
        /// Where to POST the events.
        #[arg(long)]
        url: String,
        /// Only these event types (repeat or comma-separate); none means every type.
        #[arg(long = "event-type", value_delimiter = ',')]
        event_types: Vec<String>,
        /// `json` (each event as JSON) or `caep` (session revocations as CAEP security event tokens).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Every subscription and how its delivery stands.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Remove a subscription; delivery to it stops.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The subscription id.
        id: String,
    },
}

pub async fn keys(command: KeysCmd) -> Result<ExitCode, StartError> {
    match command {
        KeysCmd::ApiKeys(command) => accounts::api_keys(command).await,
        KeysCmd::List { common } => {
            let store = common.store().await?;
            for k in store.signing_keys().await? {
                let when = |t: Option<crate::domain::Timestamp>| {
                    t.map(crate::domain::format_timestamp)
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{}\t{}\tcreated {}\tactivated {}\tretired {}",
                    k.kid,
                    k.status,
                    crate::domain::format_timestamp(k.created_at),
                    when(k.activated_at),
                    when(k.retired_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Rotate { common } => {
            let app = App::build_with(
                common.existing_config()?,
                crate::app::Options {
                    start_jobs: false,
                    start_delivery: false,
                    ..Default::default()
                },
            )
            .await?;
            let outcome = app.jobs().rotate_keys_now().await;
            app.shutdown().await;
            match outcome.map_err(|e| StartError::Io(e.to_string()))? {
                crate::jobs::JobOutcome::Done(report) => {
                    println!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                crate::jobs::JobOutcome::Skipped => {
                    println!("a rotation is already running; try again");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

pub async fn webhooks(command: WebhooksCmd) -> Result<ExitCode, StartError> {
    use crate::service::webhooks as subscriptions;
    let fail = |e: crate::error::Error| StartError::Io(e.to_string());
    match command {
        WebhooksCmd::Create {
            common,
            url,
            event_types,
            format,
        } => {
            let new = subscriptions::NewSubscription {
                url,
                event_types,
                format,
            };
            let app = accounts::service(common.existing_config()?).await?;
            let result = app.service.create_webhook(new, Actor::System).await;
            app.shutdown().await;
            let (view, secret) = result.map_err(fail)?;
            println!("subscription {}", view.subscription_id);
            println!("secret {secret}");
            println!(
                "(the secret is not shown again; deliveries carry sessiond-signature: v1=HMAC-SHA256(secret, \"<sessiond-timestamp>.<body>\"))"
            );
            Ok(ExitCode::SUCCESS)
        }
        WebhooksCmd::List { common } => {
            let store = common.store().await?;
            for view in subscriptions::list(&store).await.map_err(fail)? {
                println!(
                    "{}",
                    serde_json::to_string(&view).expect("a view serializes")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WebhooksCmd::Delete { common, id } => {
            let id = uuid::Uuid::parse_str(id.trim())
                .map_err(|_| StartError::Io(format!("{id:?} is not a subscription id")))?;
            let app = accounts::service(common.existing_config()?).await?;
            let result = app.service.delete_webhook(id, Actor::System).await;
            app.shutdown().await;
            result.map_err(|e| match e {
                crate::error::Error::NotFound => StartError::Io(format!("no subscription {id}")),
                other => fail(other),
            })?;
            println!("subscription {id} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}
