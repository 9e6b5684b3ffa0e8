//! The checkpoint key: an Ed25519 key derived from the master key, which signs the log's head
//! (see `domain::checkpoint`). Whoever can write the database but lacks the master key cannot
//! sign a head, so cannot make an edited log verify; an outsider checks the signatures with the
//! published public key alone.

use super::keys::MasterKey;
use crate::domain::checkpoint::Checkpoint;
use crate::domain::{Timestamp, format_timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;

/// The label the seed is derived under (HMAC-SHA256 of the master key).
const LABEL: &[u8] = b"sessiond checkpoint key v1";

pub struct CheckpointKey {
    secret: ed25519_dalek::SigningKey,
    public: CheckpointPublicKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", self.public.key_id)
    }
}

impl CheckpointKey {
    pub fn derive(master: &MasterKey) -> CheckpointKey {
        let secret = ed25519_dalek::SigningKey::from_bytes(&master.derive(LABEL));
        let public = CheckpointPublicKey::new(secret.verifying_key());
        CheckpointKey { secret, public }
    }

    pub fn public(&self) -> &CheckpointPublicKey {
        &self.public
    }

    /// Signs "the event at `position` has chain hash `hash`", as of `at`.
    pub fn sign(&self, position: i64, hash: [u8; 32], at: Timestamp) -> Checkpoint {
        let signed_at = format_timestamp(at);
        let signature = self
            .secret
            .sign(&Checkpoint::message(position, &hash, &signed_at));
        Checkpoint {
            position,
            hash,
            signed_at,
            key_id: self.public.key_id.clone(),
            signature: signature.to_bytes().to_vec(),
        }
    }
}

/// The public half, as published: raw key, JWK and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPublicKey {
    key: ed25519_dalek::VerifyingKey,
    /// RFC 7638 SHA-256 thumbprint of the JWK, base64url.
    pub key_id: String,
}

impl CheckpointPublicKey {
    fn new(key: ed25519_dalek::VerifyingKey) -> Self {
        use sha2::{Digest, Sha256};
        let x = URL_SAFE_NO_PAD.encode(key.to_bytes());
        // RFC 7638 §3.2: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let key_id = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        CheckpointPublicKey { key, key_id }
    }

    /// From the base64url (or standard base64) encoding of the 32-byte public key, or from an
    /// OKP/Ed25519 JWK whose `x` it is.
    pub fn parse(text: &str) -> Option<CheckpointPublicKey> {
        let text = text.trim();
        let x = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(jwk) if jwk["kty"] == "OKP" && jwk["crv"] == "Ed25519" => {
                jwk["x"].as_str()?.to_owned()
            }
            Ok(_) => return None,
            Err(_) => text.to_owned(),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(x.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(&x))
            .ok()?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .ok()
            .map(CheckpointPublicKey::new)
    }

    /// The public key, base64url without padding (the JWK's `x`).
    pub fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x(),
            "kid": self.key_id,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Whether `cp` is signed by this key (its key id named, its signature valid). Strict
    /// verification: no malleable or small-order signatures.
    pub fn verifies(&self, cp: &Checkpoint) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&cp.signature) else {
            return false;
        };
        cp.key_id == self.key_id
            && self
                .key
                .verify_strict(&cp.signed_message(), &signature)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_under_its_key_only_and_only_as_signed() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(None, dir.path()).unwrap();
        let key = CheckpointKey::derive(&master);
        assert_eq!(
            CheckpointKey::derive(&master).public(),
            key.public(),
            "derived, not random"
        );
        let cp = key.sign(7, [3u8; 32], chrono::Utc::now());
        assert!(key.public().verifies(&cp));
        let parsed = CheckpointPublicKey::parse(&key.public().x()).unwrap();
        assert!(parsed.verifies(&cp));
        let from_jwk = CheckpointPublicKey::parse(&key.public().jwk().to_string()).unwrap();
        assert_eq!(from_jwk, parsed);

        let mut moved = cp.clone();
        moved.position = 8;
        assert!(!key.public().verifies(&moved));
        let mut rehashed = cp.clone();
        rehashed.hash[0] ^= 1;
        assert!(!key.public().verifies(&rehashed));

        let other = MasterKey::load(None, tempfile::tempdir().unwrap().path()).unwrap();
        let forged = CheckpointKey::derive(&other).sign(7, [3u8; 32], chrono::Utc::now());
        assert!(!key.public().verifies(&forged));
        assert!(CheckpointPublicKey::parse("not a key").is_none());
    }
}
