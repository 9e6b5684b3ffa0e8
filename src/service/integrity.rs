//! What the security API publishes about the log's integrity: the checkpoint public key and the
//! newest signed checkpoints of the head, for a party that keeps them outside the database
//! (README, *Integrity*).

use super::Sessiond;
use crate::domain::token::hex;
use crate::error::Error;
use crate::tokens::checkpoint::CheckpointKey;
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
