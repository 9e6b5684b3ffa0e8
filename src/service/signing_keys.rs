//! Signing-key rotation. A key's life: `published` (in the JWKS, not signing yet, so verifiers
//! that cache the JWKS learn it first), `active` (signs), `retired` (still in the JWKS until the
//! last token it signed has expired), `expired` (gone from the JWKS). The store holds the
//! truth; every run ends by reloading the key ring from it, so every node converges on it.

use super::Sessiond;
use crate::commands::Record;
use crate::domain::event::{Actor, Event, EventMetadata, SigningKeyChanged, SigningKeyCreated};
use crate::domain::{Duration, Timestamp};
use crate::error::Error;
use crate::store::{StoreError, StoredSigningKey};
use crate::tokens::keys::{KeyError, SigningKey};
use crate::tokens::{key_stream, load_keys};

pub const PUBLISHED: &str = "published";
pub const ACTIVE: &str = "active";
pub const RETIRED: &str = "retired";
pub const EXPIRED: &str = "expired";

/// Margin after a retired key's last possible token expiry before it leaves the JWKS, for
/// clocks that disagree a little.
const RETIRE_MARGIN: Duration = Duration::minutes(1);

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// What one rotation run changed, by kid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub published: Option<String>,
    pub activated: Option<String>,
    pub retired: Option<String>,
    pub expired: Vec<String>,
}

impl std::fmt::Display for RotationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = &self.published {
            parts.push(format!("published {k}"));
        }
        if let Some(k) = &self.activated {
            parts.push(format!("activated {k}"));
        }
        if let Some(k) = &self.retired {
            parts.push(format!("retired {k}"));
        }
        for k in &self.expired {
            parts.push(format!("expired {k}"));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Moves every key along its life as far as `now` allows; with `start_now`, publishes the next
/// key even if the active one is not due for rotation (`sessiond keys rotate`). The new key
/// signs once it has been published for `signing_key_publish_ahead`.
pub async fn rotate(app: &Sessiond, start_now: bool) -> Result<RotationReport, RotationError> {
    let now = app.clock.now();
    let config = &app.config;
    let ahead = config.publish_ahead();
    let mut keys = app.store.signing_keys().await?;
    let mut report = RotationReport::default();

    // Retired keys whose last token has surely expired leave the JWKS.
    let lifetime = config.access_token_lifetime + RETIRE_MARGIN;
    for k in keys.iter_mut().filter(|k| k.status == RETIRED) {
        if k.retired_at.is_none_or(|at| at + lifetime <= now) {
            k.status = EXPIRED.into();
            app.store.update_signing_key(k).await?;
            record(app, &k.kid, Event::SigningKeyExpired(changed(&k.kid))).await?;
            report.expired.push(k.kid.clone());
        }
    }

    // A key published long enough takes over; the one it replaces retires.
    let due = keys
        .iter()
        .filter(|k| k.status == PUBLISHED && k.created_at + ahead <= now)
        .map(|k| k.kid.clone())
        .next_back();
    if let Some(kid) = due {
        for k in keys.iter_mut() {
            if k.status == ACTIVE {
                k.status = RETIRED.into();
                k.retired_at = Some(now);
                app.store.update_signing_key(k).await?;
                report.retired = Some(k.kid.clone());
            } else if k.kid == kid {
                k.status = ACTIVE.into();
                k.activated_at = Some(now);
                app.store.update_signing_key(k).await?;
            }
        }
        record(app, &kid, Event::SigningKeyActivated(changed(&kid))).await?;
        if let Some(old) = &report.retired {
            record(app, old, Event::SigningKeyRetired(changed(old))).await?;
        }
        report.activated = Some(kid);
    }

    // The next key is published one publish-ahead before the active one is due to hand over.
    let pending = keys.iter().any(|k| k.status == PUBLISHED);
    let active_since = keys
        .iter()
        .filter(|k| k.status == ACTIVE)
        .filter_map(|k| k.activated_at)
        .max();
    let rotation_due = active_since
        .is_none_or(|since| since + config.signing_key_rotation_interval - ahead <= now);
    if !pending && (start_now || rotation_due) {
        let (key, mut stored) = SigningKey::generate(&app.master_key, now);
        stored.status = PUBLISHED.into();
        stored.activated_at = None;
        app.store.insert_signing_key(&stored).await?;
        let created = Event::SigningKeyCreated(SigningKeyCreated {
            kid: key.kid.clone(),
            algorithm: stored.algorithm.clone(),
            public_key: key.public_key_b64(),
        });
        record(app, &key.kid, created).await?;
        report.published = Some(key.kid.clone());
        keys.push(stored);
    }

    reload(app, &keys, now)?;
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
    if loaded.created.is_some() {
        // No active key in the store (cannot happen after start): keep the ring as it is.
        return Ok(());
    }
    for status in [PUBLISHED, ACTIVE, RETIRED, EXPIRED] {
        let n = keys.iter().filter(|k| k.status == status).count();
        metrics::gauge!(crate::metrics::SIGNING_KEYS, "status" => status).set(n as f64);
    }
    app.tokens.replace_keys(loaded.active, loaded.others);
    Ok(())
}

fn changed(kid: &str) -> SigningKeyChanged {
    SigningKeyChanged {
        kid: kid.to_owned(),
    }
}

async fn record(app: &Sessiond, kid: &str, event: Event) -> Result<(), StoreError> {
    app.writer
        .submit(
            Record {
                stream_id: key_stream(kid),
                events: vec![event],
            },
            EventMetadata::new(Actor::System, None),
        )
        .await?;
    Ok(())
}
