//! Assembling the service: open the store, start the writer, load or create the signing key,
//! and serve HTTP until told to stop.

use crate::clock::{Clock, SystemClock};
use crate::commands::writer::Linger;
use crate::commands::{CreateFirstSigningKey, Writer, adopt_unlogged_webhooks};
use crate::config::{Config, ConfigError};
use crate::context::geoip::GeoIp;
use crate::delivery::{Deliverer, DeliverySettings};
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::session::SessionPolicy;
use crate::jobs::Jobs;
use crate::rules::RuleEngine;
use crate::rules::breaker::BreakerConfig;
use crate::service::Sessiond;
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};
use crate::tokens::checkpoint::CheckpointKey;
use crate::tokens::keys::{KeyError, MASTER_KEY_ENV, MasterKey};
use crate::tokens::{TokenService, load_keys};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::JobScheduler;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    GeoIp(#[from] crate::context::geoip::GeoIpError),
    #[error("rules refused:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<crate::rules::file::RuleError>),
    #[error("{0}")]
    Io(String),
}

/// The rules' circuit breaker as configured (the server's and a backtest's).
pub fn breaker_config(config: &Config) -> BreakerConfig {
    BreakerConfig {
        max_fraction: config.rules_breaker_fraction,
        floor: config.rules_breaker_floor,
        window: config.rules_breaker_window,
    }
}

/// What [`App::build_with`] may be given instead of the real thing.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// The master key as `SESSIOND_MASTER_KEY` would give it; `None` uses the key file.
    pub master_key: Option<String>,
    /// Run the scheduled jobs on their schedules (tests run them by hand instead).
    pub start_jobs: bool,
    /// Deliver events to webhook subscribers (not from one-off CLI commands).
    pub start_delivery: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            master_key: std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty()),
            start_jobs: true,
            start_delivery: true,
        }
    }
}

pub struct App {
    pub service: Arc<Sessiond>,
    jobs: Arc<Jobs>,
    writer_task: Option<JoinHandle<()>>,
    /// SQLite's WAL checkpoint loop (PostgreSQL checkpoints by itself).
    checkpointer: Option<JoinHandle<()>>,
    scheduler: Option<JobScheduler>,
    delivery: Option<JoinHandle<()>>,
    stop_delivery: watch::Sender<bool>,
}

impl Drop for App {
    fn drop(&mut self) {
        // The checkpoint loop would otherwise keep the store open for the life of the runtime.
        if let Some(task) = &self.checkpointer {
            task.abort();
        }
        let _ = self.stop_delivery.send(true);
    }
}

/// The store the configuration names: PostgreSQL for a `database_url`, otherwise SQLite in the
/// data directory (created if `create`, else it must exist).
pub async fn open_store(config: &Config, create: bool) -> Result<Store, StartError> {
    let store = open_migrated(config, create).await?;
    // Subscriptions from before they were in the log are recorded in it first, so that nothing
    // (a rebuild included) ever sees a subscription the log does not name.
    adopt_unlogged_webhooks(&store, SystemClock.now()).await?;
    Ok(store)
}

/// [`open_store`] for the command-line tools: with the master key (from the environment or an
/// existing key file in the data directory) the store reads personal data through; without it
/// events read as stored, sealed.
pub async fn open_store_keyed(config: &Config, create: bool) -> Result<Store, StartError> {
    let store = open_store(config, create).await?;
    let env = std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty());
    if env.is_some()
        || config
            .data_dir
            .join(crate::tokens::keys::MASTER_KEY_FILE)
            .exists()
    {
        let master = MasterKey::load(env, &config.data_dir)?;
        store.install_vault(vault_of(&master));
    }
    Ok(store)
}

/// The personal-data vault: its key-wrapping key is derived from the master key.
pub fn vault_of(master: &MasterKey) -> Arc<crate::store::vault::Vault> {
    Arc::new(crate::store::vault::Vault::new(
        master.derive(b"sessiond personal data keys v1"),
        master.derive(b"sessiond personal data tags v1"),
    ))
}

async fn open_migrated(config: &Config, create: bool) -> Result<Store, StartError> {
    if let Some(url) = &config.database_url {
        return Ok(Store::Postgres(PostgresStore::open(url.as_str()).await?));
    }
    let path = config.database_path();
    if create {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Io(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
    } else if !path.exists() {
        return Err(StartError::Io(format!(
            "no database at {} (wrong --data-dir?)",
            path.display()
        )));
    }
    Ok(Store::Sqlite(SqliteStore::open(&path).await?))
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        App::build_with(config, Options::default()).await
    }

    pub async fn build_with(config: Config, options: Options) -> Result<App, StartError> {
        crate::metrics::install();
        // The data directory holds the SQLite file and, unless given in the environment, the
        // master key: PostgreSQL nodes need it too.
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Io(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let geoip = Arc::new(
            GeoIp::open(config.geoip_city.as_deref(), config.geoip_asn.as_deref())?.with_networks(
                &crate::context::geoip::NetworkSources {
                    anonymous_ip: config.geoip_anonymous_ip.as_deref(),
                    connection_type: config.geoip_connection_type.as_deref(),
                    hosting_asns: &config.hosting_asns,
                    vpn_asns: &config.vpn_asns,
                },
            )?,
        );
        let breaker = breaker_config(&config);
        let rules = Arc::new(match &config.rules {
            Some(dir) => RuleEngine::load(dir, breaker).map_err(StartError::Rules)?,
            None => RuleEngine::disabled(),
        });
        let loaded_rules: Vec<(String, &'static str)> = rules
            .rules()
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.mode.as_str()))
            .collect();
        let job_names = crate::jobs::JobKind::ALL.map(|j| j.name());
        crate::metrics::seed(&loaded_rules, &job_names);
        let master = MasterKey::load(options.master_key, &config.data_dir)?;
        let store = open_store(&config, true).await?;
        // Detector memory stores networks, usernames and counter keys as keyed hashes: the
        // same key on every node (all share the master key), none in the database.
        rules.set_tag_key(master.derive(b"sessiond detector memory v1"));
        let checkpoint_key = Arc::new(CheckpointKey::derive(&master));
        // Before the writer starts: every append from here on seals personal data.
        store.install_vault(vault_of(&master));
        let passwords = Arc::new(crate::passwords::PasswordGate::new(config.password_queue));
        let linger = (config.writer_login_linger > chrono::Duration::zero()).then(|| {
            let gate = passwords.clone();
            Linger {
                max: config.writer_login_linger.to_std().unwrap_or_default(),
                checks_queued: Arc::new(move || gate.queued() > 0),
            }
        });
        let (writer, writer_task) = spawn_writer(
            &store,
            options.clock.clone(),
            config.session_policy(),
            rules.clone(),
            config.writer_max_batch,
            checkpoint_key.clone(),
            linger,
        )
        .await?;
        let commits = store.follow_commits(writer.committed()).await?;
        let checkpointer = match &store {
            Store::Sqlite(sqlite) => Some(tokio::spawn(checkpoint_loop(sqlite.clone()))),
            Store::Postgres(_) => None,
        };

        let mut loaded = load_keys(&store.signing_keys().await?, &master, options.clock.now())?;
        if !loaded.created.is_empty() {
            // One command per new key: the check for an active key of its kind, the events, the
            // row and the sealed private half in one transaction (under the append lock on
            // PostgreSQL).
            let mut all_ours = true;
            for stored in std::mem::take(&mut loaded.created) {
                let kid = stored.kid.clone();
                let algorithm = stored.algorithm.clone();
                let meta = EventMetadata::new(Actor::System, None);
                let command = CreateFirstSigningKey { key: stored };
                if writer.submit(command, meta).await? {
                    tracing::info!(%kid, %algorithm, "created the first signing key of its kind");
                } else {
                    all_ours = false;
                }
            }
            if !all_ours {
                // Another node created one while we were starting: use that one.
                loaded = load_keys(&store.signing_keys().await?, &master, options.clock.now())?;
                if !loaded.created.is_empty() {
                    return Err(StartError::Io(
                        "another node created a signing key, but no active key is stored".into(),
                    ));
                }
            }
        }
        let tokens = Arc::new(TokenService::new(
            config.issuer.clone(),
            config.audience.clone(),
            config.access_token_lifetime,
            crate::tokens::OidcSettings {
                issuer: config.oidc_issuer(),
                id_token_lifetime: config.id_token_lifetime,
            },
            loaded.keys,
        ));
        crate::passwords::warm_up();
        let refresh_tokens = Arc::new(crate::tokens::refresh::RefreshTokens::new(&master));
        if config.public_url.is_none() {
            // Links in the OAuth metadata are never taken from a request's Host header.
            tracing::warn!(
                base = %config.base_url(),
                "public_url is not set: the OAuth metadata links to the listen address; set public_url to the URL clients use"
            );
        }
        let master_key = Arc::new(master);
        let policy = Arc::new(config.destination_policy());
        let http = crate::delivery::transport::client(
            config
                .webhook_timeout
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(10)),
            policy.clone(),
            config.webhook_ca_file.as_deref(),
        )
        .map_err(StartError::Io)?;
        let dpop = crate::tokens::dpop::DpopVerifier::new(
            config.dpop_proof_window,
            config
                .dpop_nonce
                .then(|| crate::service::dpop::nonce_key(&master_key)),
        );
        let mailer = match (&config.smtp_url, &config.smtp_from) {
            (Some(url), Some(from)) => Some(Arc::new(
                crate::delivery::mail::Mailer::new(
                    url.as_str(),
                    from,
                    config
                        .webhook_timeout
                        .to_std()
                        .unwrap_or(std::time::Duration::from_secs(10)),
                    config.notice_window,
                    format!("{}/account/", config.base_url()),
                )
                .map_err(StartError::Io)?,
            )),
            _ => None,
        };
        let deliverer = Deliverer {
            store: store.clone(),
            master_key: master_key.clone(),
            tokens: tokens.clone(),
            clock: options.clock.clone(),
            commits: commits.clone(),
            config: DeliverySettings {
                webhook_poll_interval: config.webhook_poll_interval,
                webhook_timeout: config.webhook_timeout,
                webhook_retry_initial: config.webhook_retry_initial,
                webhook_retry_max: config.webhook_retry_max,
            },
            policy,
            http,
            mailer,
        };
        let config = Arc::new(config);
        let service = Arc::new(Sessiond {
            config: config.clone(),
            store,
            writer,
            tokens,
            refresh_tokens,
            clock: options.clock,
            master_key,
            commits,
            geoip,
            rules,
            streams: Default::default(),
            passwords,
            dpop,
        });
        // The key-status gauges and the log head, exported from the start.
        if let Err(e) = service.refresh_key_ring().await {
            tracing::warn!(error = %e, "cannot read the signing keys for their metrics");
        }
        if let Ok(head) = service.store.head().await {
            metrics::gauge!(crate::metrics::LOG_HEAD).set(head.position as f64);
        }
        let jobs = Jobs::new(&service);
        let scheduler = if options.start_jobs {
            Some(
                jobs.start_scheduler(&config)
                    .await
                    .map_err(|e| StartError::Io(format!("job scheduler: {e}")))?,
            )
        } else {
            None
        };
        let (stop_delivery, stop) = watch::channel(false);
        let delivery = options
            .start_delivery
            .then(|| crate::delivery::spawn(deliverer, stop));
        Ok(App {
            service,
            jobs,
            writer_task: Some(writer_task),
            checkpointer,
            scheduler,
            delivery,
            stop_delivery,
        })
    }

    /// The service's scheduled jobs, to run one by hand.
    pub fn jobs(&self) -> Arc<Jobs> {
        self.jobs.clone()
    }

    pub fn router(&self) -> axum::Router {
        crate::http::router(self.service.clone())
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests, lets the writer
    /// commit what it holds, and closes the store.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let config = self.service.config.clone();
        let header_timeout = config
            .http_header_read_timeout
            .to_std()
            .unwrap_or(Duration::from_secs(10));
        // One shutdown signal for the main listener and the metrics listener.
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let metrics_listener = TcpListener::bind(addr).await?;
                tracing::info!(%addr, "serving /metrics on its own address");
                let router = crate::http::metrics_only_router(self.service.clone());
                Some(tokio::spawn(crate::http::server::serve(
                    metrics_listener,
                    router,
                    header_timeout,
                    wait(stopping.clone()),
                )))
            }
            None => None,
        };
        crate::http::server::serve(listener, router, header_timeout, wait(stopping)).await?;
        if let Some(task) = metrics {
            let _ = task.await;
        }
        tracing::info!("no longer accepting requests; in-flight requests finished");
        self.shutdown().await;
        Ok(())
    }

    /// Stops the jobs and delivery, lets the writer commit everything it was given, and
    /// closes the store.
    pub async fn shutdown(mut self) {
        // Nothing may hold the service (and so the writer) past this point: the scheduled
        // jobs hold it weakly and stop here, delivery stops between attempts.
        if let Some(mut scheduler) = self.scheduler.take() {
            let _ = scheduler.shutdown().await;
        }
        let _ = self.stop_delivery.send(true);
        if let Some(delivery) = self.delivery.take() {
            let _ = delivery.await;
        }
        let writer_task = self.writer_task.take();
        let store = self.service.store.clone();
        // The writer ends when its last handle is gone and its queue is empty.
        drop(self);
        if let Some(task) = writer_task {
            let _ = task.await;
            tracing::info!("writer flushed");
        }
        store.close().await;
    }
}

/// Reloads on every SIGHUP while the service lives. It holds the service weakly: a strong
/// handle would keep the writer alive and a graceful stop would wait for it forever.
#[cfg(unix)]
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    service: std::sync::Weak<Sessiond>,
) {
    while hangups.recv().await.is_some() {
        let Some(service) = service.upgrade() else {
            return;
        };
        tracing::info!("SIGHUP: reloading GeoIP databases and rules");
        service.reload_if_changed();
    }
}

/// Starts the group-commit writer on a write connection of its own.
async fn spawn_writer(
    store: &Store,
    clock: Arc<dyn Clock>,
    policy: SessionPolicy,
    rules: Arc<RuleEngine>,
    max_batch: usize,
    checkpoint_key: Arc<CheckpointKey>,
    linger: Option<Linger>,
) -> Result<(Writer, JoinHandle<()>), StoreError> {
    let key = Some(checkpoint_key);
    Ok(match store {
        Store::Sqlite(s) => Writer::spawn(
            s.write_session().await?,
            clock,
            policy,
            rules,
            max_batch,
            key,
            linger,
        ),
        Store::Postgres(p) => Writer::spawn(
            p.write_session().await?,
            clock,
            policy,
            rules,
            max_batch,
            key,
            linger,
        ),
    })
}

/// Checkpoints the WAL from a pool connection, off the writer's path.
async fn checkpoint_loop(store: SqliteStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.checkpoint().await {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}
