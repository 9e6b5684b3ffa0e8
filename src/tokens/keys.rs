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

    /// A key for another purpose, named by `label`: HMAC-SHA256(master key, label).
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC takes any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new((&self.0).into())
    }

    /// nonce || ciphertext, bound to `kid` so a sealed key cannot be swapped onto another id.
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

/// The two kinds of signing key the ring holds: Ed25519 signs access tokens and security
/// events; RSA (RS256, OIDC Core's default) signs ID tokens and logout tokens for relying
/// parties that registered no other algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EdDsa,
    Rs256,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 2] = [KeyAlgorithm::EdDsa, KeyAlgorithm::Rs256];

    /// The JOSE `alg` name, also the `algorithm` column of stored keys.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDsa => "EdDSA",
            KeyAlgorithm::Rs256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            KeyAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

/// RSA modulus size: 2048 bits, the floor RFC 7518 §3.3 and most relying parties require.
pub const RSA_BITS: usize = 2048;

/// A key ready to sign and verify.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    /// Ed25519: the 32-byte public key; RSA: the PKCS#1 DER public key.
    pub public_key: Vec<u8>,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public JWK, computed once.
    jwk: serde_json::Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({} {})", self.algorithm.as_str(), self.kid)
    }
}

impl SigningKey {
    /// A fresh Ed25519 key and its stored form (private half sealed).
    pub fn generate(master: &MasterKey, now: Timestamp) -> (SigningKey, StoredSigningKey) {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let secret = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public_key = secret.verifying_key().to_bytes().to_vec();
        let der = secret
            .to_pkcs8_der()
            .expect("PKCS#8 encoding of an Ed25519 key");
        Self::sealed(master, now, KeyAlgorithm::EdDsa, public_key, der.as_bytes())
    }

    /// A fresh 2048-bit RSA key (RS256) and its stored form. Takes tens to hundreds of
    /// milliseconds: call it off the async runtime, and only when a key is due.
    pub fn generate_rsa(master: &MasterKey, now: Timestamp) -> (SigningKey, StoredSigningKey) {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        let secret = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
            .expect("RSA key generation with the OS RNG");
        let public_key = secret
            .to_public_key()
            .to_pkcs1_der()
            .expect("PKCS#1 encoding of an RSA public key")
            .as_bytes()
            .to_vec();
        let der = secret
            .to_pkcs1_der()
            .expect("PKCS#1 encoding of an RSA private key");
        Self::sealed(master, now, KeyAlgorithm::Rs256, public_key, der.as_bytes())
    }

    /// A fresh key of either kind.
    pub fn generate_for(
        algorithm: KeyAlgorithm,
        master: &MasterKey,
        now: Timestamp,
    ) -> (SigningKey, StoredSigningKey) {
        match algorithm {
            KeyAlgorithm::EdDsa => Self::generate(master, now),
            KeyAlgorithm::Rs256 => Self::generate_rsa(master, now),
        }
    }

    fn sealed(
        master: &MasterKey,
        now: Timestamp,
        algorithm: KeyAlgorithm,
        public_key: Vec<u8>,
        private_der: &[u8],
    ) -> (SigningKey, StoredSigningKey) {
        let kid = kid_for(&public_key);
        let stored = StoredSigningKey {
            kid: kid.clone(),
            algorithm: algorithm.as_str().into(),
            public_key: public_key.clone(),
            private_key_sealed: master.seal(&kid, private_der),
            status: SigningKeyStatus::Active,
            created_at: now,
            activated_at: Some(now),
            retired_at: None,
        };
        let key = SigningKey::from_parts(kid.clone(), algorithm, public_key, private_der)
            .expect("a freshly generated key is well formed");
        (key, stored)
    }

    fn from_parts(
        kid: String,
        algorithm: KeyAlgorithm,
        public_key: Vec<u8>,
        private_der: &[u8],
    ) -> Result<SigningKey, KeyError> {
        let damaged = || KeyError::Damaged { kid: kid.clone() };
        let (encoding, decoding, jwk) = match algorithm {
            KeyAlgorithm::EdDsa => {
                if public_key.len() != 32 {
                    return Err(damaged());
                }
                let jwk = serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&public_key),
                    "kid": kid,
                    "alg": "EdDSA",
                    "use": "sig",
                });
                (
                    EncodingKey::from_ed_der(private_der),
                    DecodingKey::from_ed_der(&public_key),
                    jwk,
                )
            }
            KeyAlgorithm::Rs256 => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                use rsa::traits::PublicKeyParts;
                let public =
                    rsa::RsaPublicKey::from_pkcs1_der(&public_key).map_err(|_| damaged())?;
                let jwk = serde_json::json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                    "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
                    "kid": kid,
                    "alg": "RS256",
                    "use": "sig",
                });
                (
                    EncodingKey::from_rsa_der(private_der),
                    DecodingKey::from_rsa_der(&public_key),
                    jwk,
                )
            }
        };
        Ok(SigningKey {
            kid,
            algorithm,
            public_key,
            encoding,
            decoding,
            jwk,
        })
    }

    pub fn unseal(stored: &StoredSigningKey, master: &MasterKey) -> Result<SigningKey, KeyError> {
        let algorithm = KeyAlgorithm::parse(&stored.algorithm).ok_or(KeyError::Damaged {
            kid: stored.kid.clone(),
        })?;
        let der = master.open(&stored.kid, &stored.private_key_sealed)?;
        SigningKey::from_parts(
            stored.kid.clone(),
            algorithm,
            stored.public_key.clone(),
            &der,
        )
    }

    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public_key)
    }

    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }
}

/// A short, stable id derived from the public key (a truncated RFC 7638-style thumbprint).
fn kid_for(public_key: &[u8]) -> String {
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
