//! The command line: `serve`, `migrate`, `users create`, `keys list|rotate|…-api-key`,
//! `webhooks create|list|delete`, `clients create|list|delete`, `rules lint|test|backtest`, `events verify|export`,
//! `projections rebuild`.

mod accounts;
mod clients;
mod integrity;
mod operations;
use operations::{KeysCmd, WebhooksCmd, keys, webhooks};

use crate::app::{open_store, open_store_keyed};
use crate::config::{Config, LogFormat, Overrides};
use crate::domain::parse_timestamp;
use crate::store::{EventFilter, Store};
use crate::tokens::checkpoint::{CheckpointKey, CheckpointPublicKey};
use crate::{App, StartError};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;

mod rules;
use rules::{RulesCmd, rules_command};

#[derive(Parser)]
#[command(
    name = "sessiond",
    version,
    about = "Sessions, rotating refresh tokens and an event log"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (SQLite in the data directory unless configured otherwise).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on [env: SESSIOND_LISTEN] [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<String>,
        /// MaxMind-format city database [env: SESSIOND_GEOIP_CITY]
        #[arg(long, value_name = "FILE")]
        geoip_city: Option<PathBuf>,
        /// MaxMind-format ASN database [env: SESSIOND_GEOIP_ASN]
        #[arg(long, value_name = "FILE")]
        geoip_asn: Option<PathBuf>,
        /// GeoIP2-Anonymous-IP database (hosting, VPN, proxy, Tor networks)
        /// [env: SESSIOND_GEOIP_ANONYMOUS_IP]
        #[arg(long, value_name = "FILE")]
        geoip_anonymous_ip: Option<PathBuf>,
        /// GeoIP2-Connection-Type database (Cable/DSL, Cellular, Corporate, Satellite)
        /// [env: SESSIOND_GEOIP_CONNECTION_TYPE]
        #[arg(long, value_name = "FILE")]
        geoip_connection_type: Option<PathBuf>,
        /// Directory of rule files, *.toml [env: SESSIOND_RULES]
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// Proxies whose X-Forwarded-For is believed [env: SESSIOND_TRUSTED_PROXIES]
        #[arg(long, value_name = "CIDR[,CIDR...]")]
        trusted_proxies: Option<String>,
    },
    /// Check, test and try out rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCmd,
    },
    /// Create the database and apply pending migrations, then exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Manage users (the first security analyst, for one).
    Users {
        #[command(subcommand)]
        command: accounts::UsersCmd,
    },
    /// Read and check the event log.
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// Maintain the read models derived from the log.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCmd,
    },
    /// Signing keys (list, rotate by hand) and API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// OAuth clients: applications that sign users in through /oauth/authorize.
    Clients {
        #[command(subcommand)]
        command: clients::ClientsCmd,
    },
    /// Webhook subscriptions: event delivery to other systems.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCmd,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Check the log: walk the hash chain from the first event and name the first position
    /// that does not hold; check every stored checkpoint's Ed25519 signature against the chain
    /// and require the head to be signed; then replay the log into a scratch store and compare
    /// every projected table row by row, naming the first row that differs (table, key, column).
    /// An attacker who can write the database but lacks the master key cannot sign a new head,
    /// so an edited event (even with every later hash recomputed) fails. Limit: deleting the
    /// tail of the log together with its checkpoints leaves a shorter log that verifies; a
    /// checkpoint kept outside (GET /v1/admin/checkpoints, or an export's last line) detects it,
    /// as this command names a checkpoint past the log's end, and `--export` a missing tail.
    #[command(verbatim_doc_comment)]
    Verify {
        #[command(flatten)]
        common: Common,
        /// Verify an export file (from `events export`) instead of the database: a complete,
        /// unaltered prefix of the log, signed by its last line's checkpoint. Needs no database.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// The checkpoint public key to trust (base64url of the 32-byte Ed25519 key, or its
        /// JWK), as published by GET /v1/admin/checkpoints; default: derived from the master key.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// Check the chain and the checkpoints only, without the projection replay.
        #[arg(long)]
        chain_only: bool,
    },
    /// Write events as NDJSON, oldest first.
    Export {
        #[command(flatten)]
        common: Common,
        /// Only this stream (e.g. session-<uuid>, user-<uuid>).
        #[arg(long)]
        stream: Option<String>,
        /// Only these event types (repeat or comma-separate).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only events that occurred at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events that occurred before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Export the events as stored, personal fields sealed (what a copy without the
        /// master key holds; the chain hashes match these bytes). Without it, personal fields
        /// are opened when the master key is at hand.
        #[arg(long)]
        sealed: bool,
    },
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Empty the sessions, users and refresh-token tables and replay the whole log into them.
    Rebuild {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
pub struct Common {
    /// Data directory [env: SESSIOND_DATA_DIR] [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite: postgres://user@host:port/database [env: SESSIOND_DATABASE_URL]
    #[arg(long)]
    database_url: Option<String>,
    /// TOML configuration file
    #[arg(long, env = "SESSIOND_CONFIG")]
    config: Option<PathBuf>,
}

impl Common {
    fn config(&self, listen: Option<String>) -> Result<Config, StartError> {
        self.config_with(Overrides {
            listen,
            ..Default::default()
        })
    }

    fn config_with(&self, overrides: Overrides) -> Result<Config, StartError> {
        let overrides = Overrides {
            config_file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..overrides
        };
        Ok(Config::load(&overrides, std::env::vars())?)
    }

    /// The configuration of an existing store (a SQLite file is never created by accident).
    fn existing_config(&self) -> Result<Config, StartError> {
        let config = self.config(None)?;
        let path = config.database_path();
        if config.database_url.is_none() && !path.exists() {
            return Err(StartError::Io(format!(
                "no database at {} (wrong --data-dir?)",
                path.display()
            )));
        }
        Ok(config)
    }

    /// Opens the configured store; a SQLite file must exist already (never created by accident).
    async fn store(&self) -> Result<Store, StartError> {
        open_store_keyed(&self.config(None)?, false).await
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiond: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sessiond: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, StartError> {
    match cli.command {
        Cmd::Serve {
            common,
            listen,
            geoip_city,
            geoip_asn,
            geoip_anonymous_ip,
            geoip_connection_type,
            rules,
            trusted_proxies,
        } => {
            serve(common.config_with(Overrides {
                listen,
                geoip_city,
                geoip_asn,
                geoip_anonymous_ip,
                geoip_connection_type,
                rules,
                trusted_proxies,
                ..Default::default()
            })?)
            .await
        }
        Cmd::Rules { command } => rules_command(command).await,
        Cmd::Migrate { common } => {
            let config = common.config(None)?;
            let store = open_store(&config, true).await?;
            match &config.database_url {
                Some(_) => println!("migrations applied to the PostgreSQL database"),
                None => println!("migrations applied to {}", config.database_path().display()),
            }
            // History of an older build holds personal data in clear: seal it (issue 12).
            let env = std::env::var(crate::tokens::keys::MASTER_KEY_ENV)
                .ok()
                .filter(|v| !v.is_empty());
            let master = crate::tokens::keys::MasterKey::load(env, &config.data_dir)?;
            store.install_vault(crate::app::vault_of(&master));
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            match crate::commands::reseal_history(&store, now, &CheckpointKey::derive(&master))
                .await?
            {
                Some(r) => println!(
                    "sealed the personal data of {} events; the chain was recomputed from position {} (old head {} recorded in log.resealed)",
                    r.events, r.from_position, r.old_head.position
                ),
                None => println!("no personal data in clear"),
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Users { command } => accounts::users(command).await,
        Cmd::Events {
            command:
                EventsCmd::Verify {
                    common,
                    export,
                    public_key,
                    chain_only,
                },
        } => integrity::verify(&common, export, public_key, chain_only).await,
        Cmd::Events {
            command:
                EventsCmd::Export {
                    common,
                    stream,
                    types,
                    since,
                    until,
                    output,
                    sealed,
                },
        } => {
            let filter = EventFilter {
                stream_id: stream,
                event_types: types,
                since: since.as_deref().map(time_arg("--since")).transpose()?,
                until: until.as_deref().map(time_arg("--until")).transpose()?,
                ..Default::default()
            };
            let key = integrity::existing_master(&common.existing_config()?)?
                .map(|m| CheckpointKey::derive(&m).public().clone());
            let store = if sealed {
                open_store(&common.existing_config()?, false).await?
            } else {
                common.store().await?
            };
            export(&store, filter, output, key, sealed).await
        }
        Cmd::Keys { command } => keys(command).await,
        Cmd::Webhooks { command } => webhooks(command).await,
        Cmd::Clients { command } => clients::clients(command).await,
        Cmd::Projections {
            command: ProjectionsCmd::Rebuild { common },
        } => {
            let store = common.store().await?;
            let n = crate::projection::rebuild_projections(&store).await?;
            println!("projections rebuilt from {n} events");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn time_arg(flag: &'static str) -> impl Fn(&str) -> Result<crate::domain::Timestamp, StartError> {
    move |s| {
        parse_timestamp(s)
            .ok_or_else(|| StartError::Io(format!("{flag}: {s:?} is not an RFC 3339 time")))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sessiond=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(config: Config) -> Result<ExitCode, StartError> {
    init_logging(config.log_format);
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let database = match &config.database_url {
        Some(_) => "PostgreSQL (database_url)".to_owned(),
        None => "sessiond.db".to_owned(),
    };
    let app = App::build(config).await?;
    // Signal handlers are in place before "listening" is logged: a SIGTERM or SIGHUP sent as
    // soon as the server says it is up must not meet the default action (exit, unflushed).
    let shutdown = shutdown_signal();
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => {
            tokio::spawn(crate::app::reload_on_hangup(
                hangups,
                std::sync::Arc::downgrade(&app.service),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload only by the scheduled job")
        }
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    tracing::info!(
        "sessiond listening on http://{addr}; data in {} (database {database}, master key master.key unless {} is set)",
        data_dir.display(),
        crate::tokens::keys::MASTER_KEY_ENV,
    );
    if !app.service.store.has_user_with_role("security").await? {
        tracing::info!(
            "no security user yet: create the first with `sessiond users create NAME --role security --data-dir {}` (it prints the password once)",
            data_dir.display()
        );
    }
    app.serve_on(listener, shutdown)
        .await
        .map_err(|e| StartError::Io(e.to_string()))?;
    tracing::info!("sessiond stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = signals;
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait(term.take()) => {},
                _ = wait(int.take()) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

const PAGE: i64 = 1000;

/// An export file, created readable by its owner only (0600); an existing one is truncated and
/// tightened.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// Writes the events `filter` selects. A full export (no filter) is the log up to its latest
/// signed checkpoint, and ends with that checkpoint as its last line, so that a third party
/// can check it is a complete, unaltered prefix (`events verify --export`); a filtered one
/// ends with a line saying it cannot prove that.
async fn export(
    store: &Store,
    mut filter: EventFilter,
    output: Option<PathBuf>,
    key: Option<CheckpointPublicKey>,
    sealed: bool,
) -> Result<ExitCode, StartError> {
    let full = filter.stream_id.is_none()
        && filter.event_types.is_empty()
        && filter.since.is_none()
        && filter.until.is_none();
    let covering = match full {
        true => store.latest_checkpoints(1).await?.pop(),
        false => None,
    };
    if let Some(cp) = &covering {
        filter.before_position = Some(cp.position + 1);
    }
    let io = |e: std::io::Error| StartError::Io(e.to_string());
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(private_file(path).map_err(io)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    filter.limit = Some(PAGE);
    loop {
        let stored = store.raw_events(&filter).await?;
        let Some(last) = stored.last() else { break };
        let opened = match sealed {
            true => Vec::new(),
            false => store.events(&filter).await?,
        };
        filter.after_position = last.position;
        for (i, e) in stored.iter().enumerate() {
            let open = opened.get(i).filter(|o| o.position == e.position);
            if !sealed && open.is_none() {
                return Err(StartError::Io(format!(
                    "position {}: the log moved during the export",
                    e.position
                )));
            }
            let line = crate::service::integrity::export_line(e, open, &[])
                .map_err(|e| StartError::Io(e.to_string()))?;
            out.write_all(line.as_bytes()).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
    }
    let trailer = match &covering {
        Some(cp) => Some(crate::service::integrity::export_trailer(cp, key.as_ref())),
        None if !full => Some(crate::service::integrity::filtered_trailer()),
        None => None,
    };
    if let Some(trailer) = trailer {
        out.write_all(trailer.to_string().as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(ExitCode::SUCCESS)
}
