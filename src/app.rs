//! Assembling the service: open the store, start the writer, load or create the signing key,
//! and serve HTTP until told to stop.

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::context::geoip::GeoIp;
use crate::domain::event::{Actor, EventMetadata};
use crate::rules::RuleEngine;
use crate::service::Sessiond;
use crate::store::commands::Command;
use crate::store::writer::Writer;
use crate::store::{SqliteStore, Store, StoreError};
use crate::tokens::keys::{KeyError, MASTER_KEY_ENV, MasterKey};
use crate::tokens::{TokenService, key_stream, load_keys};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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

/// What [`App::build_with`] may be given instead of the real thing.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// The master key as `SESSIOND_MASTER_KEY` would give it; `None` uses the key file.
    pub master_key: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            master_key: std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty()),
        }
    }
}

pub struct App {
    pub service: Arc<Sessiond>,
    writer_task: Option<JoinHandle<()>>,
    checkpointer: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        // The checkpoint loop would otherwise keep the store open for the life of the runtime.
        self.checkpointer.abort();
    }
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        App::build_with(config, Options::default()).await
    }

    pub async fn build_with(config: Config, options: Options) -> Result<App, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Io(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let geoip = Arc::new(GeoIp::open(
            config.geoip_city.as_deref(),
            config.geoip_asn.as_deref(),
        )?);
        let rules = Arc::new(match &config.rules {
            Some(dir) => RuleEngine::load(dir, config.breaker()).map_err(StartError::Rules)?,
            None => RuleEngine::disabled(),
        });
        let sqlite = SqliteStore::open(&config.database_path()).await?;
        let store = Store::Sqlite(sqlite.clone());
        let (writer, writer_task) = Writer::spawn(
            sqlite.write_session().await?,
            options.clock.clone(),
            config.session_policy(),
            rules.clone(),
            config.writer_max_batch,
        );
        let checkpointer = tokio::spawn(checkpoint_loop(sqlite));

        let master = MasterKey::load(options.master_key, &config.data_dir)?;
        let loaded = load_keys(&store.signing_keys().await?, &master, options.clock.now())?;
        if let Some((stored, events)) = loaded.created {
            store.insert_signing_key(&stored).await?;
            let meta = EventMetadata::new(Actor::System, None);
            writer
                .submit(
                    Command::Record {
                        stream_id: key_stream(&stored.kid),
                        events,
                    },
                    meta,
                )
                .await?;
            tracing::info!(kid = %stored.kid, "created the first signing key");
        }
        let tokens = TokenService::new(
            config.issuer.clone(),
            config.audience.clone(),
            config.access_token_lifetime,
            loaded.active,
            loaded.others,
        );
        crate::passwords::warm_up();
        let service = Arc::new(Sessiond {
            config: Arc::new(config),
            store,
            writer,
            tokens,
            clock: options.clock,
            geoip,
            rules,
        });
        Ok(App {
            service,
            writer_task: Some(writer_task),
            checkpointer,
        })
    }

    pub fn router(&self) -> axum::Router {
        crate::http::router(self.service.clone())
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests, lets the writer
    /// commit what it holds, and closes the store.
    pub async fn serve_on(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let writer_task = self.writer_task.take();
        let store = self.service.store.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await?;
        // The writer ends when its last handle is gone and its queue is empty.
        drop(self);
        if let Some(task) = writer_task {
            let _ = task.await;
        }
        store.close().await;
        Ok(())
    }
}

/// Reloads the GeoIP databases and the rule files whose files changed. A broken new file is
/// reported loudly and the loaded database or rule set stays in force. Called on SIGHUP and by
/// the scheduled reload job. Returns whether anything was replaced.
pub fn reload_if_changed(service: &Sessiond) -> bool {
    let geoip = service.geoip.reload_if_changed().unwrap_or_else(|e| {
        tracing::error!(error = %e, "GeoIP reload refused; the loaded database stays in use");
        false
    });
    let rules = service.rules.reload_if_changed().unwrap_or_else(|errors| {
        for e in errors {
            tracing::error!(error = %e, "rule reload refused; the rules in force stay");
        }
        false
    });
    geoip || rules
}

/// Reloads on every SIGHUP while the service lives. It holds the service weakly: a strong
/// handle would keep the writer alive and a graceful stop would wait for it forever.
#[cfg(unix)]
pub async fn reload_on_hangup(service: std::sync::Weak<Sessiond>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload only by the scheduled job");
        return;
    };
    while hangups.recv().await.is_some() {
        let Some(service) = service.upgrade() else {
            return;
        };
        tracing::info!("SIGHUP: reloading GeoIP databases and rules");
        reload_if_changed(&service);
    }
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
