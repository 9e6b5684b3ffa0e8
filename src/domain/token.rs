//! Refresh tokens: opaque, 256 random bits, base64url with a prefix. Only the SHA-256 of a
//! token is ever stored or logged; the token itself exists in the response and nowhere else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// Lets a leaked token be recognised by secret scanners and by people.
pub const REFRESH_TOKEN_PREFIX: &str = "sdrt_";
const ENTROPY_BYTES: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a sessiond refresh token")]
pub struct MalformedToken;

impl RefreshToken {
    /// Builds a token from fresh randomness supplied by the caller (the domain reads no RNG).
    pub fn from_entropy(bytes: [u8; ENTROPY_BYTES]) -> Self {
        RefreshToken(format!(
            "{REFRESH_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Checks the shape only; whether the token is known is the store's question.
    pub fn parse(s: &str) -> Result<Self, MalformedToken> {
        let body = s.strip_prefix(REFRESH_TOKEN_PREFIX).ok_or(MalformedToken)?;
        if body.len() != 43 {
            return Err(MalformedToken);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| MalformedToken)?;
        if bytes.len() != ENTROPY_BYTES {
            return Err(MalformedToken);
        }
        Ok(RefreshToken(s.to_owned()))
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The secret itself, for the one place that hands it to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefreshToken({})", self.hash().short())
    }
}

/// SHA-256 of a refresh token: how the store knows a token without holding it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
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
        let t = RefreshToken::from_entropy([7u8; 32]);
        assert!(t.expose().starts_with(REFRESH_TOKEN_PREFIX));
        assert_eq!(RefreshToken::parse(t.expose()).unwrap(), t);
        assert!(!format!("{t:?}").contains(t.expose()));
        assert_ne!(
            RefreshToken::from_entropy([8u8; 32]).hash(),
            t.hash(),
            "different randomness, different hash"
        );
    }

    #[test]
    fn garbage_is_refused_before_any_lookup() {
        for bad in [
            "",
            "sdrt_",
            "sdrt_abc",
            "xxxx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sdrt_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert!(RefreshToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let h = RefreshToken::from_entropy([1u8; 32]).hash();
        let json = serde_json::to_string(&h).unwrap();
        let back: TokenHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }
}
