//! Signing keys: Ed25519, created on first start, the private half sealed with the master key
//! (ChaCha20-Poly1305, the key id as associated data) before it touches the store.

use crate::domain::Timestamp;
use crate::domain::keys::SigningKeyStatus;
use crate::store::StoredSigningKey;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;
use std::fmt;
use std::io::Write;
use std::path::Path;

pub const MASTER_KEY_ENV: &str = "SESSIOND_MASTER_KEY";
pub const MASTER_KEY_FILE: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{MASTER_KEY_ENV} must be 32 bytes, base64 encoded")]
    BadMasterKey,
    #[error("master key file {path}: {reason}")]
    MasterKeyFile { path: String, reason: String },
    #[error(
        "the master key does not open signing key {kid}: wrong {MASTER_KEY_ENV} or master.key?"
    )]
    CannotUnseal { kid: String },
    #[error("signing key {kid} is damaged")]
    Damaged { kid: String },
}

/// The key that seals signing keys at rest. Its bytes never leave this type.
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From the environment value when given, otherwise from `master.key` in the data
    /// directory, which is created (mode 0600) on first use.
    pub fn load(env_value: Option<String>, data_dir: &Path) -> Result<MasterKey, KeyError> {
        if let Some(v) = env_value {
            return MasterKey::parse(&v).ok_or(KeyError::BadMasterKey);
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let file_err = |reason: String| KeyError::MasterKeyFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                MasterKey::parse(&text).ok_or_else(|| file_err("not 32 bytes of base64".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                write_private_file(&path, STANDARD.encode(bytes).as_bytes())
                    .map_err(|e| file_err(e.to_string()))?;
                Ok(MasterKey(bytes))
            }
            Err(e) => Err(file_err(e.to_string())),
        }
    }

    fn parse(text: &str) -> Option<MasterKey> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(MasterKey)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new((&self.0).into())
    }

    /// nonce || ciphertext, bound to `kid` so a sealed key cannot be swapped onto another id.
    /// A secret for another purpose, derived from the master key (HMAC-SHA256 over `label`):
    /// every node holding the master key derives the same one.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: kid.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short message cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < 12 {
            return Err(KeyError::Damaged {
                kid: kid.to_owned(),
            });
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| KeyError::CannotUnseal {
                kid: kid.to_owned(),
            })
    }
}

/// Creates a file readable by its owner only, failing if it already exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// A key ready to sign and verify.
pub struct SigningKey {
    pub kid: String,
    pub public_key: [u8; 32],
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// A fresh Ed25519 key and its stored form (private half sealed).
    pub fn generate(master: &MasterKey, now: Timestamp) -> (SigningKey, StoredSigningKey) {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let secret = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public_key = secret.verifying_key().to_bytes();
        let kid = kid_for(&public_key);
        let der = secret
            .to_pkcs8_der()
            .expect("PKCS#8 encoding of an Ed25519 key");
        let stored = StoredSigningKey {
            kid: kid.clone(),
            algorithm: "EdDSA".into(),
            public_key: public_key.to_vec(),
            private_key_sealed: master.seal(&kid, der.as_bytes()),
            status: SigningKeyStatus::Active,
            created_at: now,
            activated_at: Some(now),
            retired_at: None,
        };
        let key = SigningKey {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public_key),
            kid,
            public_key,
        };
        (key, stored)
    }

    pub fn unseal(stored: &StoredSigningKey, master: &MasterKey) -> Result<SigningKey, KeyError> {
        let der = master.open(&stored.kid, &stored.private_key_sealed)?;
        let public_key =
            <[u8; 32]>::try_from(stored.public_key.as_slice()).map_err(|_| KeyError::Damaged {
                kid: stored.kid.clone(),
            })?;
        Ok(SigningKey {
            kid: stored.kid.clone(),
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_der(&public_key),
            public_key,
        })
    }

    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key)
    }

    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_key_b64(),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// A short, stable id derived from the public key (a truncated RFC 7638-style thumbprint).
fn kid_for(public_key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(public_key);
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_master_and_kid() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(None, dir.path()).unwrap();
        let again = MasterKey::load(None, dir.path()).unwrap();
        let (_, stored) = SigningKey::generate(&master, chrono::Utc::now());
        assert!(
            SigningKey::unseal(&stored, &again).is_ok(),
            "the key file is reused"
        );
        let other = MasterKey::parse(&STANDARD.encode([9u8; 32])).unwrap();
        assert!(matches!(
            SigningKey::unseal(&stored, &other),
            Err(KeyError::CannotUnseal { .. })
        ));
        let mut moved = stored.clone();
        moved.kid = "another".into();
        assert!(SigningKey::unseal(&moved, &master).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
