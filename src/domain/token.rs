//! Refresh tokens: opaque, 256 random bits, base64url with a prefix. Only the SHA-256 of a
//! token is ever stored or logged; the token itself exists in the response and nowhere else.
//!
//! The body is `id ‖ entropy`: a 16-byte UUIDv7 id, then 32 random bytes. The id is not a
//! secret; it is the token index's key, so a new token is appended at the right edge of the
//! b-tree instead of dirtying a random page per refresh (the SHA-256 is random by nature).
//! A lookup finds the row by id and accepts it only if the stored hash matches.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// Lets a leaked token be recognised by secret scanners and by people.
pub const REFRESH_TOKEN_PREFIX: &str = "sdrt_";
/// API keys for the security API and resource servers: the same format, another prefix.
pub const API_KEY_PREFIX: &str = "sdak_";
const ID_BYTES: usize = 16;
const ENTROPY_BYTES: usize = 32;
/// base64url without padding of `ID_BYTES + ENTROPY_BYTES` (48) bytes.
const BODY_CHARS: usize = 64;

/// What an opaque secret is for: its prefix and the name its `Debug` form shows.
pub trait SecretKind {
    const PREFIX: &'static str;
    const NAME: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh;
impl SecretKind for Refresh {
    const PREFIX: &'static str = REFRESH_TOKEN_PREFIX;
    const NAME: &'static str = "RefreshToken";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyKind;
impl SecretKind for ApiKeyKind {
    const PREFIX: &'static str = API_KEY_PREFIX;
    const NAME: &'static str = "ApiKey";
}

/// An opaque secret: `prefix ‖ base64url(id ‖ entropy)`.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueSecret<K> {
    text: String,
    id: Uuid,
    kind: std::marker::PhantomData<K>,
}

pub type RefreshToken = OpaqueSecret<Refresh>;
pub type ApiKey = OpaqueSecret<ApiKeyKind>;

/// Authorization codes (`/oauth/authorize`): the same format, another prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthCodeKind;
impl SecretKind for AuthCodeKind {
    const PREFIX: &'static str = "sdac_";
    const NAME: &'static str = "AuthorizationCode";
}
pub type AuthCode = OpaqueSecret<AuthCodeKind>;

/// A confidential OAuth client's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSecretKind;
impl SecretKind for ClientSecretKind {
    const PREFIX: &'static str = "sdcs_";
    const NAME: &'static str = "ClientSecret";
}
pub type ClientSecret = OpaqueSecret<ClientSecretKind>;

/// How the store finds a token: its public id, and the hash that proves the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub id: Uuid,
    pub hash: TokenHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a sessiond token")]
pub struct MalformedToken;

impl<K: SecretKind> OpaqueSecret<K> {
    /// Builds a secret from an id (a UUIDv7, for index locality) and fresh randomness, both
    /// supplied by the caller (the domain reads no clock or RNG).
    pub fn new(id: Uuid, entropy: [u8; ENTROPY_BYTES]) -> Self {
        let mut bytes = [0u8; ID_BYTES + ENTROPY_BYTES];
        bytes[..ID_BYTES].copy_from_slice(id.as_bytes());
        bytes[ID_BYTES..].copy_from_slice(&entropy);
        let mut text = String::with_capacity(K::PREFIX.len() + BODY_CHARS);
        text.push_str(K::PREFIX);
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        OpaqueSecret {
            text,
            id,
            kind: std::marker::PhantomData,
        }
    }

    /// Checks the shape only; whether the secret is known is the store's question.
    pub fn parse(s: &str) -> Result<Self, MalformedToken> {
        let body = s.strip_prefix(K::PREFIX).ok_or(MalformedToken)?;
        if body.len() != BODY_CHARS {
            return Err(MalformedToken);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| MalformedToken)?;
        if bytes.len() != ID_BYTES + ENTROPY_BYTES {
            return Err(MalformedToken);
        }
        let id = Uuid::from_slice(&bytes[..ID_BYTES]).map_err(|_| MalformedToken)?;
        Ok(OpaqueSecret {
            text: s.to_owned(),
            id,
            kind: std::marker::PhantomData,
        })
    }

    /// SHA-256 of the whole text, id included.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.text.as_bytes()).into())
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn key(&self) -> TokenKey {
        TokenKey {
            id: self.id,
            hash: self.hash(),
        }
    }

    /// The secret itself, for the one place that hands it to its owner.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl<K: SecretKind> fmt::Debug for OpaqueSecret<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", K::NAME, self.hash().short())
    }
}

/// SHA-256 of a refresh token: how the store knows a token without holding it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
    }

    /// Compares with a stored hash without an early exit, so a lookup by the (public) id does
    /// not tell a guesser how much of the hash matched.
    pub fn matches(&self, stored: &[u8]) -> bool {
        if stored.len() != self.0.len() {
            return false;
        }
        let diff = self
            .0
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Enough to tell tokens apart in a log line or a timeline.
    pub fn short(&self) -> String {
        hex(&self.0[..6])
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.short())
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        unhex(&s)
            .and_then(|b| TokenHash::from_slice(&b))
            .ok_or_else(|| serde::de::Error::custom("token hash must be 64 hex digits"))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_its_debug_form_hides_it() {
        let id = Uuid::now_v7();
        let t = RefreshToken::new(id, [7u8; 32]);
        assert!(t.expose().starts_with(REFRESH_TOKEN_PREFIX));
        assert_eq!(t.expose().len(), REFRESH_TOKEN_PREFIX.len() + BODY_CHARS);
        let back = RefreshToken::parse(t.expose()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.id(), id);
        assert_eq!(back.key(), t.key());
        assert!(!format!("{t:?}").contains(t.expose()));
        assert_ne!(
            RefreshToken::new(id, [8u8; 32]).hash(),
            t.hash(),
            "different randomness, different hash"
        );
    }

    #[test]
    fn a_hash_matches_only_itself() {
        let h = RefreshToken::new(Uuid::now_v7(), [3u8; 32]).hash();
        assert!(h.matches(&h.0));
        let mut other = h.0;
        other[31] ^= 1;
        assert!(!h.matches(&other));
        assert!(!h.matches(&h.0[..31]));
    }

    #[test]
    fn garbage_is_refused_before_any_lookup() {
        for bad in [
            "",
            "sdrt_",
            "sdrt_abc",
            "xxxx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sdrt_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            // The old shape (32 bytes, no id) is no longer a token.
            "sdrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(RefreshToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_api_key_is_not_a_refresh_token() {
        let key = ApiKey::new(Uuid::now_v7(), [5u8; 32]);
        assert!(key.expose().starts_with(API_KEY_PREFIX));
        assert!(RefreshToken::parse(key.expose()).is_err());
        assert_eq!(ApiKey::parse(key.expose()).unwrap().key(), key.key());
        assert!(format!("{key:?}").starts_with("ApiKey("));
    }

    #[test]
    fn hex_round_trips() {
        let h = RefreshToken::new(Uuid::nil(), [1u8; 32]).hash();
        let json = serde_json::to_string(&h).unwrap();
        let back: TokenHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }
}
