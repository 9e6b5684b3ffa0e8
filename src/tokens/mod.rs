//! Access tokens: EdDSA JWTs with the signing key's `kid` in the header, and the JWKS that
//! publishes the keys to verify them.

pub mod client_token;
pub mod dpop;
pub mod keys;
pub mod refresh;

use crate::domain::keys::SigningKeyStatus;
use crate::domain::{Duration, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, Validation};
use keys::{KeyError, MasterKey, SigningKey};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: Uuid,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Uuid,
    pub sid: Uuid,
    pub scope: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub auth_time: i64,
    /// The DPoP key the token is bound to (RFC 9449 §6): present it with a proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// `cnf` (RFC 7800) with the JWK SHA-256 thumbprint of a DPoP key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jkt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token was not signed by a key of this server")]
    UnknownKey,
    #[error("the access token's signature or claims are invalid")]
    Invalid,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the token is not an access token (typ must be at+jwt)")]
    WrongType,
    #[error("the access token is bound to a DPoP key: send it as Authorization: DPoP with a proof")]
    DpopBound,
    #[error("the access token is not bound to a DPoP key: send it as Authorization: Bearer")]
    NotDpopBound,
}

/// The JWT `typ` of access tokens (RFC 9068 §2.1). Verifiers refuse any other (RFC 8725 §3.11),
/// so a token of another kind signed by the same key (a security event token, say) can never
/// pass as one.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// `at+jwt`, or its media-type form `application/at+jwt`, in any case (RFC 7515 §4.1.9).
fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == ACCESS_TOKEN_TYPE || t.strip_prefix("application/") == Some(ACCESS_TOKEN_TYPE)
    })
}

/// What a fresh access token needs to know about its session.
pub struct AccessGrant<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub scope: &'a str,
    pub roles: &'a [String],
    pub auth_time: Timestamp,
    /// The session's DPoP binding: the token carries `cnf.jkt`.
    pub dpop_jkt: Option<&'a str>,
}

struct KeyRing {
    active: Arc<SigningKey>,
    /// The active key's signer, parsed once: `jsonwebtoken::encode` rebuilds the key pair from
    /// its DER on every call, which costs as much again as the signature.
    signer: ed25519_dalek::SigningKey,
    /// `base64url(header)`: the same for every token the active key signs.
    header_b64: String,
    /// Every key whose tokens may still be alive, by kid.
    published: HashMap<String, Arc<SigningKey>>,
}

impl KeyRing {
    fn new(active: Arc<SigningKey>, published: HashMap<String, Arc<SigningKey>>) -> Self {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let signer = ed25519_dalek::SigningKey::from_pkcs8_der(active.encoding.as_bytes())
            .expect("an active signing key holds a valid Ed25519 PKCS#8 document");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header"));
        KeyRing {
            active,
            signer,
            header_b64,
            published,
        }
    }

    /// A compact JWS, byte for byte what `jsonwebtoken::encode` makes with the same header.
    fn sign<T: Serialize>(&self, claims: &T) -> String {
        use ed25519_dalek::Signer;
        let claims = serde_json::to_vec(claims).expect("claims serialize");
        let mut jwt = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 90);
        jwt.push_str(&self.header_b64);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut jwt);
        let signature = self.signer.sign(jwt.as_bytes());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jwt);
        jwt
    }
}

pub struct TokenService {
    issuer: String,
    audience: String,
    lifetime: Duration,
    keys: RwLock<Arc<KeyRing>>,
    validation: Validation,
}

/// Tokens are valid a little earlier than `iat` to absorb clock skew between servers.
const NBF_SKEW_SECS: i64 = 5;

impl TokenService {
    pub fn new(
        issuer: String,
        audience: String,
        lifetime: Duration,
        active: SigningKey,
        others: Vec<SigningKey>,
    ) -> Self {
        let active = Arc::new(active);
        let mut published: HashMap<String, Arc<SigningKey>> = others
            .into_iter()
            .map(|k| (k.kid.clone(), Arc::new(k)))
            .collect();
        published.insert(active.kid.clone(), active.clone());
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Time claims are checked against the service clock below, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_audience(&[audience.as_str()]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "sub", "aud", "iss"]);
        TokenService {
            issuer,
            audience,
            lifetime,
            keys: RwLock::new(Arc::new(KeyRing::new(active, published))),
            validation,
        }
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.keys.read().expect("key ring lock").clone()
    }

    /// Signs an access token; returns it with its lifetime in seconds. The lifetime is shortened
    /// by a random 0–10% (at most a minute) so clients do not all refresh at the same moment.
    pub fn issue(&self, grant: &AccessGrant<'_>, now: Timestamp) -> (String, i64) {
        let base = self.lifetime.num_seconds();
        let max_jitter = (base / 10).min(60);
        let lifetime = base - rand::thread_rng().gen_range(0..=max_jitter);
        let iat = now.timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.user_id,
            aud: self.audience.clone(),
            exp: iat + lifetime,
            iat,
            nbf: iat - NBF_SKEW_SECS,
            // From the userspace CSPRNG: Uuid::new_v4 makes a getrandom syscall per token.
            jti: uuid::Builder::from_random_bytes(rand::thread_rng().r#gen()).into_uuid(),
            sid: grant.session_id,
            scope: grant.scope.to_owned(),
            roles: grant.roles.to_vec(),
            auth_time: grant.auth_time.timestamp(),
            cnf: grant.dpop_jkt.map(|jkt| Confirmation {
                jkt: jkt.to_owned(),
            }),
        };
        (self.ring().sign(&claims), lifetime)
    }

    /// Checks signature, issuer, audience and times. Whether the session is still alive is the
    /// caller's next question.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<AccessClaims, TokenError> {
        let claims = self.verify_signature_only(token)?;
        let now = now.timestamp();
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Signature, issuer and audience, whatever the token's times say: for revoking the
    /// session of a token that has just expired.
    pub fn verify_signature_only(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        if !is_access_token_type(header.typ.as_deref()) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let ring = self.ring();
        let key = ring.published.get(&kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        Ok(data.claims)
    }

    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring();
        let mut keys: Vec<_> = ring.published.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    pub fn active_kid(&self) -> String {
        self.ring().active.kid.clone()
    }

    /// Every kid in the JWKS, sorted.
    pub fn published_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.ring().published.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Swaps in a new key ring: `active` signs from now on, `active` and `others` verify.
    pub fn replace_keys(&self, active: SigningKey, others: Vec<SigningKey>) {
        let active = Arc::new(active);
        let mut published: HashMap<String, Arc<SigningKey>> = others
            .into_iter()
            .map(|k| (k.kid.clone(), Arc::new(k)))
            .collect();
        published.insert(active.kid.clone(), active.clone());
        *self.keys.write().expect("key ring lock") = Arc::new(KeyRing::new(active, published));
    }

    /// Signs `claims` with the active key under the given JWT `typ` (e.g. `secevent+jwt` for
    /// a security event token, RFC 8417).
    pub fn sign_typed<T: Serialize>(&self, typ: &str, claims: &T) -> String {
        let ring = self.ring();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.active.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &ring.active.encoding)
            .expect("an Ed25519 key signs any serializable claims")
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The longest an access token lives (the jitter only shortens it).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// The keys in the store, unsealed: the active one first. When there is none yet, a new key
/// is generated; the caller records it (`commands::CreateFirstSigningKey`).
pub struct LoadedKeys {
    pub active: SigningKey,
    pub others: Vec<SigningKey>,
    /// Set when `active` was just created and must be recorded.
    pub created: Option<crate::store::StoredSigningKey>,
}

pub fn load_keys(
    stored: &[crate::store::StoredSigningKey],
    master: &MasterKey,
    now: Timestamp,
) -> Result<LoadedKeys, KeyError> {
    let mut active = None;
    let mut others = Vec::new();
    for s in stored
        .iter()
        .filter(|s| s.status != SigningKeyStatus::Expired)
    {
        let key = SigningKey::unseal(s, master)?;
        if s.status == SigningKeyStatus::Active && active.is_none() {
            active = Some(key);
        } else {
            others.push(key);
        }
    }
    if let Some(active) = active {
        return Ok(LoadedKeys {
            active,
            others,
            created: None,
        });
    }
    let (key, stored) = SigningKey::generate(master, now);
    Ok(LoadedKeys {
        active: key,
        others,
        created: Some(stored),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_timestamp;

    fn service() -> TokenService {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(None, dir.path()).unwrap();
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let (key, _) = SigningKey::generate(&master, now);
        TokenService::new(
            "https://issuer.test".into(),
            "api".into(),
            Duration::minutes(10),
            key,
            vec![],
        )
    }

    #[test]
    fn own_signer_matches_jsonwebtoken_and_verifies() {
        let tokens = service();
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let roles = vec!["admin".to_owned()];
        let grant = AccessGrant {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            scope: "openid",
            roles: &roles,
            auth_time: now,
            dpop_jkt: None,
        };
        let (jwt, _) = tokens.issue(&grant, now);

        let claims = tokens.verify(&jwt, now).expect("verifies");
        assert_eq!(claims.sid, grant.session_id);
        assert_eq!(claims.roles, roles);

        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid, Some(tokens.active_kid()));

        // Ed25519 is deterministic: the reference encoder must produce the same bytes.
        let ring = tokens.ring();
        let mut reference = Header::new(Algorithm::EdDSA);
        reference.kid = Some(ring.active.kid.clone());
        reference.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        let expected = jsonwebtoken::encode(&reference, &claims, &ring.active.encoding).unwrap();
        assert_eq!(jwt, expected);
    }

    #[test]
    fn a_token_of_another_type_never_verifies_as_an_access_token() {
        let tokens = service();
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let (jwt, _) = tokens.issue(
            &AccessGrant {
                user_id: Uuid::new_v4(),
                session_id: Uuid::new_v4(),
                scope: "session",
                roles: &[],
                auth_time: now,
                dpop_jkt: None,
            },
            now,
        );
        let claims = tokens.verify(&jwt, now).unwrap();
        for typ in ["secevent+jwt", "JWT", "dpop+jwt"] {
            let other = tokens.sign_typed(typ, &claims);
            assert_eq!(
                tokens.verify(&other, now),
                Err(TokenError::WrongType),
                "{typ}"
            );
        }
        assert!(
            tokens
                .verify(&tokens.sign_typed("application/AT+JWT", &claims), now)
                .is_ok()
        );
    }
}
