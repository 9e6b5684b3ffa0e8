//! Signing-key rotation. A key's life: `published` (in the JWKS, not signing yet, so verifiers
//! that cache the JWKS learn it first), `active` (signs), `retired` (still in the JWKS until the
//! last token it signed has expired), `expired` (gone from the JWKS). The store holds the
//! truth; every run ends by reloading the key ring from it, so every node converges on it.

use super::Sessiond;
use crate::commands::RotateSigningKeys;
use crate::domain::Timestamp;
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::keys::{RotationPolicy, SigningKeyStatus, decide_rotation};
use crate::error::Error;
use crate::store::{StoreError, StoredSigningKey};
use crate::tokens::keys::{KeyAlgorithm, KeyError, SigningKey};
use crate::tokens::load_keys;

pub use crate::domain::keys::RotationReport;

/// Margin after a retired key's last possible token expiry before it leaves the JWKS, for
/// clocks that disagree a little.
const RETIRE_MARGIN: crate::domain::Duration = crate::domain::Duration::minutes(1);

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("generating a signing key: {0}")]
    Generate(String),
}

/// Moves every key along its life as far as `now` allows; with `start_now`, publishes the next
/// key even if the active one is not due for rotation (`sessiond keys rotate`). The new key
/// signs once it has been published for `signing_key_publish_ahead`. One command: the plan is
/// decided in the writer's transaction on the keys as stored, and its events, rows and the new
/// key's sealed private half are written in that transaction.
pub async fn rotate(app: &Sessiond, start_now: bool) -> Result<RotationReport, RotationError> {
    let config = &app.config;
    let policy = RotationPolicy {
        rotation_interval: config.signing_key_rotation_interval,
        publish_ahead: config.publish_ahead(),
        retired_for: config.access_token_lifetime + RETIRE_MARGIN,
    };
    // Candidates are generated before the writer decides (an RSA key takes a while, and the
    // writer must not wait for it), but only for the kinds a dry run on the stored keys finds
    // due: a run that finds one due without its candidate (another node rotated in between)
    // publishes nothing for it, and the next run does.
    let stored = app.store.signing_keys().await?;
    let now = app.clock.now();
    let mut candidates = Vec::new();
    for algorithm in KeyAlgorithm::ALL {
        let of_kind: Vec<_> = stored
            .iter()
            .filter(|k| k.algorithm == algorithm.as_str())
            .map(|k| k.record())
            .collect();
        let (_, dry) = decide_rotation(&of_kind, None, now, &policy, start_now);
        if dry.needs_candidate {
            let master = app.master_key.clone();
            let (_, candidate) = tokio::task::spawn_blocking(move || {
                SigningKey::generate_for(algorithm, &master, now)
            })
            .await
            .map_err(|e| RotationError::Generate(e.to_string()))?;
            candidates.push(candidate);
        }
    }
    let command = RotateSigningKeys {
        candidates,
        algorithms: KeyAlgorithm::ALL
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        policy,
        start_now,
    };
    let report = app
        .writer
        .submit(command, EventMetadata::new(Actor::System, None))
        .await?;
    let keys = app.store.signing_keys().await?;
    reload(app, &keys, app.clock.now())?;
    Ok(report)
}

impl Sessiond {
    /// Moves the signing keys along their life (see [`rotate`]).
    pub async fn rotate_signing_keys(&self, start_now: bool) -> Result<RotationReport, Error> {
        rotate(self, start_now)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Reloads this node's key ring from the store: on several nodes only one runs the
    /// rotation, and every other node learns of a published, activated or retired key here
    /// (the reload job).
    pub async fn refresh_key_ring(&self) -> Result<(), Error> {
        let keys = self.store.signing_keys().await?;
        reload(self, &keys, self.clock.now()).map_err(|e| Error::Internal(e.to_string()))
    }
}

/// Rebuilds the in-memory key ring from the stored keys.
fn reload(app: &Sessiond, keys: &[StoredSigningKey], now: Timestamp) -> Result<(), KeyError> {
    let loaded = load_keys(keys, &app.master_key, now)?;
    if !loaded.created.is_empty() {
        // No active key in the store (cannot happen after start): keep the ring as it is.
        return Ok(());
    }
    for status in SigningKeyStatus::ALL {
        let n = keys.iter().filter(|k| k.status == status).count();
        metrics::gauge!(crate::metrics::SIGNING_KEYS, "status" => status.as_str()).set(n as f64);
    }
    app.tokens.replace_keys(loaded.keys);
    Ok(())
}
