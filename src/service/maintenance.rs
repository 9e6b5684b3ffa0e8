//! What the operator surfaces and the scheduled jobs ask of the service: readiness, counts, the
//! expiry sweep, retention, reloads and the cross-node job lock.

use super::Sessiond;
use crate::commands::{ExpireIfDue, PruneEndedSessions};
use crate::domain::event::{Actor, EventMetadata, ExpiryKind};
use crate::domain::session::SessionStatus;
use crate::error::Error;
use crate::store::JobLock;

/// Sessions swept per page; the sweep goes on until no session is due.
const SWEEP_PAGE: i64 = 500;

impl Sessiond {
    /// Each readiness check by name: the store answers with every migration applied, a signing
    /// key is loaded, the writer runs.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), &'static str>)> {
        let store = match self.store.check_ready().await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: store not ready");
                Err("store unreachable or migrations not applied")
            }
        };
        let key = if self.tokens.active_kid().is_empty() {
            Err("no signing key loaded")
        } else {
            Ok(())
        };
        let writer = if self.writer.is_running() {
            Ok(())
        } else {
            Err("the writer has stopped")
        };
        vec![("store", store), ("signing_key", key), ("writer", writer)]
    }

    pub async fn count_active_sessions(&self) -> Result<i64, Error> {
        Ok(self.store.count_active_sessions().await?)
    }

    /// The lock for one run of a shared job, or `None` while another node runs it.
    pub async fn try_job_lock(&self, job: &str) -> Result<Option<JobLock>, Error> {
        Ok(self.store.try_job_lock(job).await?)
    }

    /// Records `session.expired` for every active session past its idle or absolute lifetime;
    /// returns how many expired.
    pub async fn expire_due_sessions(&self) -> Result<usize, Error> {
        let mut expired = 0usize;
        loop {
            let due = self.store.sessions_due(self.now(), SWEEP_PAGE).await?;
            let mut ended_this_page = 0;
            for session_id in &due {
                let cmd = ExpireIfDue {
                    session_id: *session_id,
                };
                let meta = EventMetadata::new(Actor::System, None);
                if self.writer.submit(cmd, meta).await? == Ok(true) {
                    ended_this_page += 1;
                    self.count_expiry(*session_id).await?;
                }
            }
            expired += ended_this_page;
            // A page where nothing ended (all raced to another end) would come back unchanged.
            if (due.len() as i64) < SWEEP_PAGE || ended_this_page == 0 {
                break;
            }
        }
        Ok(expired)
    }

    async fn count_expiry(&self, session_id: uuid::Uuid) -> Result<(), Error> {
        let kind = match self.store.session(session_id).await? {
            Some(s) if s.status == SessionStatus::Expired => s.end_reason,
            _ => None,
        };
        match kind.as_deref() {
            Some("idle") => crate::metrics::observe_expiry(ExpiryKind::Idle),
            Some("absolute") => crate::metrics::observe_expiry(ExpiryKind::Absolute),
            _ => {}
        }
        Ok(())
    }

    /// Prunes the projection rows of sessions that ended more than `retention_period` ago.
    pub async fn prune_ended_sessions(&self) -> Result<String, Error> {
        let ended_before = self.now() - self.config.retention_period;
        let cmd = PruneEndedSessions { ended_before };
        let counts = self
            .writer
            .submit(cmd, EventMetadata::new(Actor::System, None))
            .await?;
        let before = self.now() - self.config.personal_data_retention;
        let keys = self
            .writer
            .submit(
                crate::commands::ExpirePersonalData { before },
                EventMetadata::new(Actor::System, None),
            )
            .await?;
        Ok(format!(
            "pruned {} sessions and {} refresh tokens that ended before {}; destroyed {} data keys of personal data older than {}",
            counts.sessions,
            counts.refresh_tokens,
            crate::domain::format_timestamp(ended_before),
            keys,
            crate::domain::format_timestamp(before)
        ))
    }

    /// Reloads the GeoIP databases and the rule files whose files changed. A broken new file is
    /// reported loudly and the loaded database or rule set stays in force. Called on SIGHUP and
    /// by the scheduled reload job. Returns whether anything was replaced.
    pub fn reload_if_changed(&self) -> bool {
        let geoip = self.geoip.reload_if_changed().unwrap_or_else(|e| {
            tracing::error!(error = %e, "GeoIP reload refused; the loaded database stays in use");
            false
        });
        let rules = self.rules.reload_if_changed().unwrap_or_else(|errors| {
            for e in errors {
                tracing::error!(error = %e, "rule reload refused; the rules in force stay");
            }
            false
        });
        geoip || rules
    }
}
