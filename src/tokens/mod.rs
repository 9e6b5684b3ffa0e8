//! Access tokens: EdDSA JWTs with the signing key's `kid` in the header, and the JWKS that
//! publishes the keys to verify them.

pub mod checkpoint;
pub mod client_token;
pub mod dpop;
pub mod keys;
pub mod oidc;
pub mod refresh;

use crate::domain::keys::SigningKeyStatus;
use crate::domain::{Duration, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, Validation};
use keys::{KeyAlgorithm, KeyError, MasterKey, SigningKey};
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
    /// How the user authenticated (RFC 9470 §3): the session's class and methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
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
    /// The session's authentication context class and methods (RFC 9470).
    pub acr: &'a str,
    pub amr: &'a [&'a str],
    /// The session's DPoP binding: the token carries `cnf.jkt`.
    pub dpop_jkt: Option<&'a str>,
}

struct KeyRing {
    /// The active Ed25519 key: access tokens and security events.
    active: Arc<SigningKey>,
    /// The active RSA key: RS256 ID and logout tokens.
    rsa: Arc<SigningKey>,
    /// The active key's signer, parsed once: `jsonwebtoken::encode` rebuilds the key pair from
    /// its DER on every call, which costs as much again as the signature.
    signer: ed25519_dalek::SigningKey,
    /// `base64url(header)`: the same for every token the active key signs.
    header_b64: String,
    /// Every key whose tokens may still be alive, by kid.
    published: HashMap<String, Arc<SigningKey>>,
}

impl KeyRing {
    fn new(keys: Keys) -> Self {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        assert_eq!(keys.active.algorithm, KeyAlgorithm::EdDsa);
        assert_eq!(keys.active_rsa.algorithm, KeyAlgorithm::Rs256);
        let active = Arc::new(keys.active);
        let rsa = Arc::new(keys.active_rsa);
        let mut published: HashMap<String, Arc<SigningKey>> = keys
            .others
            .into_iter()
            .map(|k| (k.kid.clone(), Arc::new(k)))
            .collect();
        published.insert(active.kid.clone(), active.clone());
        published.insert(rsa.kid.clone(), rsa.clone());
        let signer = ed25519_dalek::SigningKey::from_pkcs8_der(active.encoding.as_bytes())
            .expect("an active signing key holds a valid Ed25519 PKCS#8 document");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header"));
        KeyRing {
            active,
            rsa,
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

/// The keys a ring is built from: the active key of each kind and every other published one.
pub struct Keys {
    pub active: SigningKey,
    pub active_rsa: SigningKey,
    pub others: Vec<SigningKey>,
}

/// What ID and logout tokens need beside the keys.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The OpenID Provider's issuer: `public_url` when set (what discovery says, exactly).
    pub issuer: String,
    pub id_token_lifetime: Duration,
}

pub struct TokenService {
    issuer: String,
    oidc: OidcSettings,
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
        oidc: OidcSettings,
        keys: Keys,
    ) -> Self {
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
            oidc,
            audience,
            lifetime,
            keys: RwLock::new(Arc::new(KeyRing::new(keys))),
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
            acr: Some(grant.acr.to_owned()),
            amr: grant.amr.iter().map(|m| (*m).to_owned()).collect(),
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

    /// The kid of the active Ed25519 key (access tokens).
    pub fn active_kid(&self) -> String {
        self.ring().active.kid.clone()
    }

    /// The kid of the active RSA key (RS256 ID and logout tokens).
    pub fn active_rsa_kid(&self) -> String {
        self.ring().rsa.kid.clone()
    }

    /// Every kid in the JWKS, sorted.
    pub fn published_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.ring().published.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Swaps in a new key ring: the active keys sign from now on, every key verifies.
    pub fn replace_keys(&self, keys: Keys) {
        *self.keys.write().expect("key ring lock") = Arc::new(KeyRing::new(keys));
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

/// The keys in the store, unsealed. For a kind with no active key yet (a new database, or one
/// from before RS256 keys), a new key is generated; the caller records each
/// (`commands::CreateFirstSigningKey`).
pub struct LoadedKeys {
    pub keys: Keys,
    /// The keys just created, which must be recorded.
    pub created: Vec<crate::store::StoredSigningKey>,
}

pub fn load_keys(
    stored: &[crate::store::StoredSigningKey],
    master: &MasterKey,
    now: Timestamp,
) -> Result<LoadedKeys, KeyError> {
    let mut active: HashMap<KeyAlgorithm, SigningKey> = HashMap::new();
    let mut others = Vec::new();
    for s in stored
        .iter()
        .filter(|s| s.status != SigningKeyStatus::Expired)
    {
        let key = SigningKey::unseal(s, master)?;
        if s.status == SigningKeyStatus::Active && !active.contains_key(&key.algorithm) {
            active.insert(key.algorithm, key);
        } else {
            others.push(key);
        }
    }
    let mut created = Vec::new();
    for algorithm in KeyAlgorithm::ALL {
        if let std::collections::hash_map::Entry::Vacant(slot) = active.entry(algorithm) {
            let (key, stored) = SigningKey::generate_for(algorithm, master, now);
            slot.insert(key);
            created.push(stored);
        }
    }
    let mut take = |a| active.remove(&a).expect("one active key of each kind");
    Ok(LoadedKeys {
        keys: Keys {
            active: take(KeyAlgorithm::EdDsa),
            active_rsa: take(KeyAlgorithm::Rs256),
            others,
        },
        created,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::parse_timestamp;

    pub(crate) fn service() -> TokenService {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(None, dir.path()).unwrap();
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let loaded = load_keys(&[], &master, now).unwrap();
        TokenService::new(
            "https://issuer.test".into(),
            "api".into(),
            Duration::minutes(10),
            OidcSettings {
                issuer: "https://op.test".into(),
                id_token_lifetime: Duration::minutes(10),
            },
            loaded.keys,
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
            acr: "urn:sessiond:acr:pwd",
            amr: &[],
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
                acr: "urn:sessiond:acr:pwd",
                amr: &[],
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
