//! `sessiond users …` and `sessiond keys …`: accounts and API keys made from the command line,
//! through the same service functions (and the same events) as the HTTP API.

use crate::config::Config;
use crate::domain::context::RequestContext;
use crate::domain::format_timestamp;
use crate::{App, StartError};
use base64::Engine;
use clap::Subcommand;
use rand::RngCore;
use std::io::Read;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Create a user (for example the first security analyst) and print its password once.
    Create {
        #[command(flatten)]
        common: super::Common,
        /// The new user's name.
        username: String,
        /// Roles to grant (repeat or comma-separate): user, security.
        #[arg(long = "role", value_delimiter = ',', default_value = "user")]
        roles: Vec<String>,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Replace a user's roles (`user.roles_changed`). Sessions keep the roles granted at their
    /// login: the change applies from the next login.
    SetRoles {
        #[command(flatten)]
        common: super::Common,
        /// The user's name.
        username: String,
        /// The roles to hold from now on (repeat or comma-separate): user, security.
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    /// Erase a user (`user.erased`): its sessions end, its data keys are destroyed so its
    /// name, password hash, addresses and User-Agents in the log read as erased; the name can
    /// be registered again.
    Erase {
        #[command(flatten)]
        common: super::Common,
        /// The user's id.
        user_id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
pub enum ApiKeysCmd {
    /// Create an API key and print it once (only its hash is kept).
    CreateApiKey {
        #[command(flatten)]
        common: super::Common,
        /// What the key is for, shown in listings and the event log.
        #[arg(long)]
        name: String,
        /// resource_server (introspection, revocation feed; the default, least privilege) or
        /// security (the whole security API: say so explicitly).
        #[arg(
            long = "role",
            value_delimiter = ',',
            default_value = "resource_server"
        )]
        roles: Vec<String>,
    },
    /// List API keys (never the keys themselves).
    ListApiKeys {
        #[command(flatten)]
        common: super::Common,
    },
    /// Revoke an API key by its id; it stops working at once.
    RevokeApiKey {
        #[command(flatten)]
        common: super::Common,
        key_id: uuid::Uuid,
    },
}

/// The service over a data directory, without the jobs and delivery a server runs: one
/// command's worth of work through the same writer and events as the API.
pub(super) async fn service(config: Config) -> Result<App, StartError> {
    App::build_with(
        config,
        crate::app::Options {
            start_jobs: false,
            start_delivery: false,
            ..Default::default()
        },
    )
    .await
}

fn fail(message: String) -> Result<ExitCode, StartError> {
    eprintln!("sessiond: {message}");
    Ok(ExitCode::FAILURE)
}

pub async fn users(cmd: UsersCmd) -> Result<ExitCode, StartError> {
    match cmd {
        UsersCmd::Erase { common, user_id } => {
            let app = service(common.existing_config()?).await?;
            let actor = crate::domain::event::Actor::System;
            let result = app.service.erase_user(user_id, actor, None).await;
            app.shutdown().await;
            match result {
                Ok(ended) => {
                    println!("erased user {user_id}; {ended} sessions ended");
                    Ok(ExitCode::SUCCESS)
                }
                Err(crate::error::Error::NotFound) => fail(format!("no user {user_id}")),
                Err(e) => fail(e.to_string()),
            }
        }
        UsersCmd::Create {
            common,
            username,
            roles,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| StartError::Io(format!("reading the password: {e}")))?;
                (text.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                let mut bytes = [0u8; 18];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                (
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
                    true,
                )
            };
            let app = service(common.config(None)?).await?;
            let ctx = RequestContext::default();
            match app
                .service
                .register(&username, password.clone(), roles, &ctx)
                .await
            {
                Ok(user) => {
                    println!("created user {} ({})", user.username, user.user_id);
                    println!("roles: {}", user.roles.join(", "));
                    if generated {
                        println!("password: {password}");
                        println!("(shown once; change it with POST /v1/auth/password)");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => fail(e.to_string()),
            }
        }
        UsersCmd::SetRoles {
            common,
            username,
            roles,
        } => {
            let app = service(common.existing_config()?).await?;
            let result = app.service.set_roles(&username, roles).await;
            app.shutdown().await;
            match result {
                Ok(user) => {
                    println!("user {} ({})", user.username, user.user_id);
                    println!("roles: {}", user.roles.join(", "));
                    println!("(sessions keep the roles they were granted at login)");
                    Ok(ExitCode::SUCCESS)
                }
                Err(crate::error::Error::NotFound) => fail(format!("no user {username:?}")),
                Err(e) => fail(e.to_string()),
            }
        }
    }
}

pub async fn api_keys(cmd: ApiKeysCmd) -> Result<ExitCode, StartError> {
    match cmd {
        ApiKeysCmd::CreateApiKey {
            common,
            name,
            roles,
        } => {
            let app = service(common.config(None)?).await?;
            let result = app.service.create_api_key(&name, roles).await;
            app.shutdown().await;
            match result {
                Ok((stored, key)) => {
                    println!("created API key {} ({})", stored.key_id, stored.name);
                    println!("roles: {}", stored.roles.join(", "));
                    println!("key: {}", key.expose());
                    println!("(shown once; send it as Authorization: Bearer <key>)");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => fail(e.to_string()),
            }
        }
        ApiKeysCmd::ListApiKeys { common } => {
            let store = common.store().await?;
            let keys = store.api_keys().await?;
            if keys.is_empty() {
                println!("no API keys");
            }
            for k in keys {
                let state = match k.revoked_at {
                    Some(t) => format!("revoked {}", format_timestamp(t)),
                    None => "active".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\tcreated {}\t{state}",
                    k.key_id,
                    k.name,
                    k.roles.join(","),
                    format_timestamp(k.created_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeysCmd::RevokeApiKey { common, key_id } => {
            let app = service(common.config(None)?).await?;
            let result = app.service.revoke_api_key(key_id).await;
            app.shutdown().await;
            match result {
                Ok(()) => {
                    println!("revoked API key {key_id}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(crate::error::Error::NotFound) => fail(format!("no active API key {key_id}")),
                Err(e) => fail(e.to_string()),
            }
        }
    }
}
