//! Authorization codes (RFC 6749 §4.1, OAuth 2.1): single use, short-lived, stored as their
//! SHA-256 only, bound to the client, the redirect URI, the PKCE challenge (RFC 7636, `S256`
//! only), the nonce, the scope and the session the sign-in started. The decision to redeem one
//! is here; the code's rows are the projection of its events on the session stream.

use super::Timestamp;
use super::token::TokenHash;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a code may be exchanged (RFC 6749 §4.1.2 recommends at most 10 minutes).
pub const CODE_LIFETIME_SECONDS: i64 = 60;

/// A code as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationCode {
    pub code_id: Uuid,
    pub code_hash: TokenHash,
    pub session_id: Uuid,
    pub client_id: String,
    pub redirect_uri: String,
    /// `BASE64URL(SHA-256(code_verifier))`.
    pub code_challenge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub scope: String,
    #[serde(with = "super::ts_format")]
    pub expires_at: Timestamp,
    #[serde(
        default,
        with = "super::ts_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub redeemed_at: Option<Timestamp>,
    /// The `dpop_jkt` of the authorization request (RFC 9449 §10): the exchange must carry a
    /// DPoP proof by the key with this thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// Why a code exchange is refused; the client only ever learns `invalid_grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefusal {
    /// No code has this id and hash.
    Unknown,
    /// Exchanged before: the session it started is revoked (RFC 6749 §4.1.2).
    Reused,
    Expired,
    OtherClient,
    OtherRedirectUri,
    WrongVerifier,
    /// The session the code belongs to has ended.
    SessionEnded,
    /// The code is bound to a DPoP key (`dpop_jkt`) and the exchange carries no proof by it
    /// (RFC 9449 §10). The code stays unredeemed: its holder may still exchange it.
    DpopKey,
    /// The exchange's DPoP proof was used before (its `jti`).
    ProofReplayed,
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// An `S256` challenge is the base64url (no padding) of a SHA-256: 43 characters.
pub fn valid_challenge(c: &str) -> bool {
    c.len() == 43 && URL_SAFE_NO_PAD.decode(c).is_ok_and(|b| b.len() == 32)
}

/// `BASE64URL(SHA-256(ASCII(code_verifier)))` (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What an exchange presents besides the code itself.
pub struct Exchange<'a> {
    pub presented: TokenHash,
    pub client_id: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: &'a str,
    /// The thumbprint of the exchange's DPoP proof key, if it carries a valid proof.
    pub dpop_jkt: Option<&'a str>,
    pub now: Timestamp,
}

impl AuthorizationCode {
    /// Whether this exchange may redeem the code. A code presented again is reuse whoever
    /// presents it: whoever holds it could have made the first exchange.
    pub fn decide_redeem(&self, x: &Exchange<'_>) -> Result<(), CodeRefusal> {
        if !x.presented.matches(&self.code_hash.0) {
            return Err(CodeRefusal::Unknown);
        }
        if self.redeemed_at.is_some() {
            return Err(CodeRefusal::Reused);
        }
        if x.now >= self.expires_at {
            return Err(CodeRefusal::Expired);
        }
        if x.client_id != self.client_id {
            return Err(CodeRefusal::OtherClient);
        }
        // RFC 6749 §4.1.3: the redirect_uri of the request, identical, when it was sent there.
        if x.redirect_uri != Some(self.redirect_uri.as_str()) {
            return Err(CodeRefusal::OtherRedirectUri);
        }
        let proof = s256(x.code_verifier);
        let same = proof.len() == self.code_challenge.len()
            && proof
                .bytes()
                .zip(self.code_challenge.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !valid_verifier(x.code_verifier) || !same {
            return Err(CodeRefusal::WrongVerifier);
        }
        if let Some(jkt) = &self.dpop_jkt
            && x.dpop_jkt != Some(jkt.as_str())
        {
            return Err(CodeRefusal::DpopKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_timestamp;

    #[test]
    fn only_the_first_exchange_with_every_binding_right_redeems() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let hash = TokenHash([7; 32]);
        let mut code = AuthorizationCode {
            code_id: Uuid::nil(),
            code_hash: hash,
            session_id: Uuid::nil(),
            client_id: "app".into(),
            redirect_uri: "https://app.example/cb".into(),
            code_challenge: s256(verifier),
            nonce: None,
            scope: "openid".into(),
            expires_at: now + chrono::Duration::seconds(60),
            redeemed_at: None,
            dpop_jkt: None,
        };
        let x = |client, uri, v, t| Exchange {
            presented: hash,
            client_id: client,
            redirect_uri: uri,
            code_verifier: v,
            dpop_jkt: None,
            now: t,
        };
        let uri = Some("https://app.example/cb");
        assert_eq!(code.decide_redeem(&x("app", uri, verifier, now)), Ok(()));
        let other_verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXz";
        assert_eq!(
            code.decide_redeem(&x("app", uri, other_verifier, now)),
            Err(CodeRefusal::WrongVerifier)
        );
        assert_eq!(
            code.decide_redeem(&x("other", uri, verifier, now)),
            Err(CodeRefusal::OtherClient)
        );
        assert_eq!(
            code.decide_redeem(&x("app", Some("https://app.example/cB"), verifier, now)),
            Err(CodeRefusal::OtherRedirectUri)
        );
        let late = now + chrono::Duration::seconds(60);
        assert_eq!(
            code.decide_redeem(&x("app", uri, verifier, late)),
            Err(CodeRefusal::Expired)
        );
        code.redeemed_at = Some(now);
        assert_eq!(
            code.decide_redeem(&x("app", uri, verifier, now)),
            Err(CodeRefusal::Reused)
        );
        assert!(!valid_challenge("plain-challenge"));
        assert!(valid_challenge(&s256(verifier)));
    }
}
