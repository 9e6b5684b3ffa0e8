//! What the security API publishes about the log's integrity: the checkpoint public key and the
//! newest signed checkpoints of the head, for a party that keeps them outside the database
//! (README, *Integrity*).

use super::Sessiond;
use crate::domain::checkpoint::Checkpoint;
use crate::domain::token::hex;
use crate::error::Error;
use crate::store::{EventFilter, RecordedEvent};
use crate::tokens::checkpoint::{CheckpointKey, CheckpointPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How many checkpoints the route lists, newest first.
const LISTED: i64 = 100;

#[derive(Debug, serde::Serialize)]
pub struct CheckpointView {
    pub position: i64,
    /// Hex, as in exports.
    pub hash: String,
    pub signed_at: String,
    pub key_id: String,
    /// base64url, no padding.
    pub signature: String,
}

#[derive(Debug, serde::Serialize)]
pub struct CheckpointsView {
    /// The Ed25519 public key as a JWK (`kid` its RFC 7638 thumbprint).
    pub public_key: serde_json::Value,
    pub key_id: String,
    /// The log's last position.
    pub head: i64,
    pub checkpoints: Vec<CheckpointView>,
}

impl Sessiond {
    pub async fn checkpoints(&self) -> Result<CheckpointsView, Error> {
        // Derived on demand (an HMAC and a key expansion): no second copy of the key to keep.
        let key = CheckpointKey::derive(&self.master_key);
        let head = self.store.head().await?.position;
        let checkpoints = self
            .store
            .latest_checkpoints(LISTED)
            .await?
            .into_iter()
            .map(|c| CheckpointView {
                position: c.position,
                hash: hex(&c.hash),
                signed_at: c.signed_at,
                key_id: c.key_id,
                signature: URL_SAFE_NO_PAD.encode(&c.signature),
            })
            .collect();
        Ok(CheckpointsView {
            public_key: key.public().jwk(),
            key_id: key.public().key_id.clone(),
            head,
            checkpoints,
        })
    }
}

/// What the last line of a filtered export says instead of a checkpoint.
pub const FILTERED_NOTE: &str = "a filtered export holds only the events that match: it cannot \
prove that none is missing, and no signed checkpoint covers it. Export with no filter for a \
complete prefix of the log that `sessiond events verify --export` checks";

/// The trailer line of a full export: the checkpoint covering its last event and, when given,
/// the public key it verifies under (for information: a verifier trusts its own copy).
pub fn export_trailer(cp: &Checkpoint, key: Option<&CheckpointPublicKey>) -> serde_json::Value {
    let mut trailer = serde_json::json!({
        "checkpoint": {
            "position": cp.position,
            "hash": hex(&cp.hash),
            "signed_at": cp.signed_at,
            "key_id": cp.key_id,
            "signature": URL_SAFE_NO_PAD.encode(&cp.signature),
        },
    });
    if let Some(key) = key {
        trailer["public_key"] = key.jwk();
    }
    trailer
}

/// The trailer line of a filtered export: it says it proves nothing about completeness.
pub fn filtered_trailer() -> serde_json::Value {
    serde_json::json!({"filtered": {"complete": false, "note": FILTERED_NOTE}})
}

/// An exported event: the row as the chain covers it (`stored`), with its personal fields
/// opened when `opened` is given. A line whose `data` differs from the stored text (opened
/// fields, the password hash removed) is marked `"redacted": true`: its own hash can no longer
/// be recomputed from the line, and `events verify --export` links it by its stored hash.
/// `extra` members (the security API's `type`, `actor`, `request_id`) follow.
pub fn export_line(
    stored: &RecordedEvent,
    opened: Option<&RecordedEvent>,
    extra: &[(&str, serde_json::Value)],
) -> Result<String, serde_json::Error> {
    let mut e = opened.unwrap_or(stored).clone();
    let mut redacted = e.data != stored.data;
    if let Ok(mut data) = serde_json::from_str::<serde_json::Value>(&e.data)
        && data.get("password_hash").is_some_and(|h| h.is_string())
        && crate::domain::event::strip_secrets(&mut data)
    {
        e.data = data.to_string();
        redacted = true;
    }
    let mut line = serde_json::to_string(&e)?;
    line.pop();
    if redacted {
        line.push_str(r#","redacted":true"#);
    }
    for (name, value) in extra {
        line.push(',');
        line.push_str(&serde_json::to_string(name)?);
        line.push(':');
        line.push_str(&serde_json::to_string(value)?);
    }
    line.push('}');
    Ok(line)
}

/// What an export over the security API streams: the events `filter` selects that `query`
/// matches, then `trailer`.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub(super) filter: EventFilter,
    pub(super) query: super::admin::EventQuery,
    /// The last line: the covering checkpoint (full export) or the filtered note.
    pub trailer: Option<Vec<u8>>,
}

impl Sessiond {
    /// Plans an export: a full one (no filter) ends at the newest signed checkpoint, which is
    /// its last line, exactly as `sessiond events export` writes it; a filtered one ends with
    /// [`filtered_trailer`].
    pub async fn export_plan(&self, query: &super::admin::EventQuery) -> Result<ExportPlan, Error> {
        let mut filter = self.export_filter(query).await?;
        let trailer = if query.is_unfiltered() {
            match self.store.latest_checkpoints(1).await?.pop() {
                Some(cp) => {
                    filter.before_position = Some(cp.position + 1);
                    let key = CheckpointKey::derive(&self.master_key);
                    Some(export_trailer(&cp, Some(key.public())))
                }
                // An empty log: nothing to sign, nothing to export.
                None => None,
            }
        } else {
            Some(filtered_trailer())
        };
        let trailer = trailer.map(|t| {
            let mut line = t.to_string().into_bytes();
            line.push(b'\n');
            line
        });
        Ok(ExportPlan {
            filter,
            query: query.clone(),
            trailer,
        })
    }
}
