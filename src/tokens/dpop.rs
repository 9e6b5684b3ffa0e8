//! DPoP proofs (RFC 9449): a JWT the client signs with its own key for each request, carrying
//! the public key (`jwk`) in its header. This checks everything a proof says about itself and
//! the request it came with; whether its `jti` was seen before is the store's question (the
//! caller asks it in the writer's transaction), and what a key binding means is the domain's.

use crate::domain::{Duration, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `alg` values a proof may use (metadata: `dpop_signing_alg_values_supported`).
pub const SIGNING_ALGS: &[&str] = &["EdDSA", "ES256"];

/// The header that carries a proof, and the one that hands out a nonce.
pub const DPOP_HEADER: &str = "dpop";
pub const NONCE_HEADER: &str = "dpop-nonce";

/// A proof longer than this is refused unread.
const MAX_PROOF_LEN: usize = 8 * 1024;
/// How long a server nonce is issued for; one of the step before is still accepted.
const NONCE_STEP_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the DPoP proof is not a compact JWS with a JSON header and claims")]
    Malformed,
    #[error("send at most one DPoP header")]
    Multiple,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    Type,
    #[error("the DPoP proof's alg must be EdDSA or ES256")]
    Algorithm,
    #[error("the DPoP proof's jwk must be a public Ed25519 (EdDSA) or P-256 (ES256) key")]
    Key,
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    #[error("the DPoP proof needs the claims jti, htm, htu and iat")]
    Claims,
    #[error("the DPoP proof's htm is not this request's method")]
    Method,
    #[error("the DPoP proof's htu is not this request's URL")]
    Url,
    #[error("the DPoP proof's iat is outside the accepted window")]
    Time,
    #[error("the DPoP proof's ath is not the hash of the access token")]
    AccessTokenHash,
    /// Answered with `use_dpop_nonce` and a fresh `DPoP-Nonce` (RFC 9449 §8).
    #[error("the DPoP proof must carry the nonce this server provided (DPoP-Nonce)")]
    Nonce,
}

/// What a request's proof must match.
pub struct ProofRequest<'a> {
    pub proof: &'a str,
    pub method: &'a str,
    /// The request's URL as the client addressed it (scheme, host, path).
    pub url: &'a str,
    /// The access token sent with the proof (`Authorization: DPoP`): the proof must carry its
    /// hash (`ath`).
    pub access_token: Option<&'a str>,
}

/// A proof that verified. Its `jti` still has to be claimed as unseen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// SHA-256 of the key's thumbprint and the `jti`: what the replay table keys on.
    pub jti_hash: [u8; 32],
    /// When the proof's `iat` leaves the window: it need not be remembered after that.
    pub expires_at: Timestamp,
}

pub struct DpopVerifier {
    window: Duration,
    /// The secret server nonces are MACed with, when nonces are required.
    nonce_key: Option<[u8; 32]>,
}

impl DpopVerifier {
    /// `window`: how far a proof's `iat` may lie from the server's clock, either way.
    /// `nonce_key`: require server nonces, MACed with this secret (the same on every node).
    pub fn new(window: Duration, nonce_key: Option<[u8; 32]>) -> Self {
        DpopVerifier { window, nonce_key }
    }

    pub fn nonces_required(&self) -> bool {
        self.nonce_key.is_some()
    }

    /// The nonce to hand out now, if nonces are required: the time step and its MAC, so any
    /// node can check it without shared state.
    pub fn nonce(&self, now: Timestamp) -> Option<String> {
        let key = self.nonce_key.as_ref()?;
        let step = now.timestamp().div_euclid(NONCE_STEP_SECS);
        Some(format!(
            "{step}.{}",
            URL_SAFE_NO_PAD.encode(nonce_mac(key, step))
        ))
    }

    fn nonce_ok(&self, key: &[u8; 32], nonce: &str, now: Timestamp) -> bool {
        let Some((step, mac)) = nonce.split_once('.') else {
            return false;
        };
        let (Ok(step), Ok(mac)) = (step.parse::<i64>(), URL_SAFE_NO_PAD.decode(mac)) else {
            return false;
        };
        let current = now.timestamp().div_euclid(NONCE_STEP_SECS);
        if step != current && step != current - 1 {
            return false;
        }
        let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        m.update(&step.to_be_bytes());
        mac.len() == NONCE_MAC_LEN && m.verify_truncated_left(&mac).is_ok()
    }

    /// Checks a proof against its request (RFC 9449 §4.3), all but the `jti` replay check.
    pub fn verify(
        &self,
        req: &ProofRequest<'_>,
        now: Timestamp,
    ) -> Result<VerifiedProof, ProofError> {
        if req.proof.len() > MAX_PROOF_LEN {
            return Err(ProofError::Malformed);
        }
        let segments: Vec<&str> = req.proof.split('.').collect();
        let [header, claims, _signature] = segments[..] else {
            return Err(ProofError::Malformed);
        };
        let header = json_segment(header)?;
        let claims = json_segment(claims)?;
        let typ = header.get("typ").and_then(Value::as_str);
        if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
            return Err(ProofError::Type);
        }
        // Only asymmetric algorithms: `none` and HS* can prove nothing about a key.
        let (alg, kty, crv) = match header.get("alg").and_then(Value::as_str) {
            Some("EdDSA") => (Algorithm::EdDSA, "OKP", "Ed25519"),
            Some("ES256") => (Algorithm::ES256, "EC", "P-256"),
            _ => return Err(ProofError::Algorithm),
        };
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or(ProofError::Key)?;
        // A private key in a header is a client bug that leaks the key: refuse it.
        const PRIVATE: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if PRIVATE.iter().any(|m| jwk.contains_key(*m))
            || jwk.get("kty").and_then(Value::as_str) != Some(kty)
            || jwk.get("crv").and_then(Value::as_str) != Some(crv)
        {
            return Err(ProofError::Key);
        }
        let jwk: Jwk =
            serde_json::from_value(Value::Object(jwk.clone())).map_err(|_| ProofError::Key)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| ProofError::Key)?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(req.proof, &key, &validation)
            .map_err(|_| ProofError::Signature)?;
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| ProofError::Key)?;

        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let (Some(jti), Some(htm), Some(htu)) = (text("jti"), text("htm"), text("htu")) else {
            return Err(ProofError::Claims);
        };
        let iat = claims
            .get("iat")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .ok_or(ProofError::Claims)?;
        if jti.is_empty() || jti.len() > 256 {
            return Err(ProofError::Claims);
        }
        if htm != req.method {
            return Err(ProofError::Method);
        }
        match (normalize_htu(htu), normalize_htu(req.url)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Err(ProofError::Url),
        }
        let window = self.window.num_seconds();
        if (now.timestamp() - iat).abs() > window {
            return Err(ProofError::Time);
        }
        if let Some(token) = req.access_token
            && text("ath") != Some(access_token_hash(token).as_str())
        {
            return Err(ProofError::AccessTokenHash);
        }
        if let Some(key) = &self.nonce_key
            && !text("nonce").is_some_and(|n| self.nonce_ok(key, n, now))
        {
            return Err(ProofError::Nonce);
        }
        let mut h = Sha256::new();
        h.update(jkt.as_bytes());
        h.update(b".");
        h.update(jti.as_bytes());
        let expires_at = chrono::DateTime::from_timestamp(iat.saturating_add(window + 1), 0)
            .unwrap_or(now + self.window);
        Ok(VerifiedProof {
            jkt,
            jti_hash: h.finalize().into(),
            expires_at,
        })
    }
}

const NONCE_MAC_LEN: usize = 16;

fn nonce_mac(key: &[u8; 32], step: i64) -> [u8; NONCE_MAC_LEN] {
    let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(&step.to_be_bytes());
    let full = m.finalize().into_bytes();
    let mut out = [0u8; NONCE_MAC_LEN];
    out.copy_from_slice(&full[..NONCE_MAC_LEN]);
    out
}

fn json_segment(segment: &str) -> Result<serde_json::Map<String, Value>, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| ProofError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ProofError::Malformed),
    }
}

/// `ath`: base64url SHA-256 of the access token's ASCII text.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A URL as `htu` compares it (RFC 9449 §4.3: without query and fragment; RFC 3986 §6
/// syntax- and scheme-based normalisation): scheme and host lowercased, the default port
/// dropped, an empty path as `/`. `None` for anything but an absolute http(s) URL.
pub fn normalize_htu(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_compares_without_query_fragment_case_or_default_port() {
        let n = |u| normalize_htu(u);
        assert_eq!(
            n("HTTPS://Example.COM:443/oauth/token?x=1#f"),
            n("https://example.com/oauth/token")
        );
        assert_eq!(n("http://a.test"), Some("http://a.test/".into()));
        assert_ne!(
            n("https://a.test/oauth/token"),
            n("http://a.test/oauth/token")
        );
        assert_ne!(
            n("https://a.test/oauth/token"),
            n("https://a.test/oauth/Token")
        );
        assert_eq!(n("ftp://a.test/"), None);
        assert_eq!(n("https://user@a.test/"), None);
    }

    #[test]
    fn nonces_verify_for_two_steps_on_any_node_with_the_secret() {
        let now = crate::domain::parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let a = DpopVerifier::new(Duration::seconds(60), Some([7; 32]));
        let b = DpopVerifier::new(Duration::seconds(60), Some([7; 32]));
        let other = DpopVerifier::new(Duration::seconds(60), Some([8; 32]));
        let nonce = a.nonce(now).unwrap();
        assert!(b.nonce_ok(&[7; 32], &nonce, now));
        assert!(b.nonce_ok(&[7; 32], &nonce, now + Duration::seconds(NONCE_STEP_SECS)));
        assert!(!b.nonce_ok(
            &[7; 32],
            &nonce,
            now + Duration::seconds(2 * NONCE_STEP_SECS)
        ));
        assert!(!other.nonce_ok(&[8; 32], &nonce, now));
        assert!(!b.nonce_ok(&[7; 32], "1.AAAA", now));
    }
}
