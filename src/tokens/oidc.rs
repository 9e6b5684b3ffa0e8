//! OpenID Connect tokens: ID tokens (OIDC Core §2), the `id_token_hint` of RP-initiated logout,
//! and logout tokens (Back-Channel Logout 1.0 §2.4). RS256 by default, OIDC Core's algorithm
//! that every relying party supports; EdDSA for clients that registered it.

use super::keys::{KeyAlgorithm, SigningKey};
use super::{TokenError, TokenService};
use crate::domain::Timestamp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The algorithm a client's ID tokens are signed with (`id_token_signed_response_alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum IdTokenAlg {
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl IdTokenAlg {
    pub const ALL: [IdTokenAlg; 2] = [IdTokenAlg::Rs256, IdTokenAlg::EdDsa];

    /// The registration value: `RS256` or `EdDSA` (case as JOSE spells them).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        self.key_algorithm().as_str()
    }

    fn key_algorithm(self) -> KeyAlgorithm {
        match self {
            IdTokenAlg::Rs256 => KeyAlgorithm::Rs256,
            IdTokenAlg::EdDsa => KeyAlgorithm::EdDsa,
        }
    }
}

impl std::fmt::Display for IdTokenAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an ID token says about the authentication it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTokenClaims {
    pub sub: String,
    /// The client id.
    pub aud: String,
    pub nonce: Option<String>,
    pub auth_time: Timestamp,
    pub acr: String,
    pub amr: Vec<String>,
    /// The session id (OIDC Front/Back-Channel Logout `sid`).
    pub sid: Uuid,
    /// The access token issued with it, for `at_hash`.
    pub access_token: Option<String>,
    /// More claims (e.g. `preferred_username`); never overrides the ones above.
    pub extra: Map<String, Value>,
}

/// What an `id_token_hint` names, once its signature and issuer are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenHint {
    pub sub: String,
    pub aud: String,
    pub sid: Uuid,
}

/// The JWT `typ` of ID tokens (what most OpenID Providers send).
pub const ID_TOKEN_TYPE: &str = "JWT";
/// The JWT `typ` of logout tokens (Back-Channel Logout 1.0 §2.4, RFC 8725 §3.11).
pub const LOGOUT_TOKEN_TYPE: &str = "logout+jwt";
/// The one member of a logout token's `events` claim.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout token is valid: long enough for a receiver's clock skew, short enough
/// that a captured one is soon useless. (Retried deliveries are signed again.)
pub const LOGOUT_TOKEN_LIFETIME_SECS: i64 = 120;

/// `at_hash` (OIDC Core §3.1.3.6): the left half of the hash of the access token's ASCII bytes,
/// base64url. The hash is the one of the ID token's `alg`: SHA-256 for RS256; for EdDSA with
/// Ed25519, SHA-512 (OIDC Core 1.0 errata set 2).
pub fn at_hash(access_token: &str, alg: IdTokenAlg) -> String {
    use sha2::Digest;
    let digest: Vec<u8> = match alg {
        IdTokenAlg::Rs256 => sha2::Sha256::digest(access_token.as_bytes()).to_vec(),
        IdTokenAlg::EdDsa => sha2::Sha512::digest(access_token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// Claims nobody may set through `extra`.
const RESERVED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "auth_time",
    "acr",
    "amr",
    "sid",
    "at_hash",
    "c_hash",
    "azp",
    "events",
];

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct HintClaims {
    sub: String,
    aud: Audience,
    sid: Option<Uuid>,
    #[serde(default)]
    events: Option<Value>,
}

impl TokenService {
    /// The OpenID Provider's issuer identifier (`public_url` when set).
    pub fn oidc_issuer(&self) -> &str {
        &self.oidc.issuer
    }

    /// The active key of a kind.
    fn active_key(&self, algorithm: KeyAlgorithm) -> std::sync::Arc<SigningKey> {
        let ring = self.ring();
        match algorithm {
            KeyAlgorithm::EdDsa => ring.active.clone(),
            KeyAlgorithm::Rs256 => ring.rsa.clone(),
        }
    }

    /// Signs `claims` with the active key of `alg` under the JWT `typ`, `kid` in the header.
    fn sign_oidc(&self, alg: IdTokenAlg, typ: &str, claims: &Value) -> String {
        let key = self.active_key(alg.key_algorithm());
        let mut header = Header::new(key.algorithm.jwt());
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .expect("an active key signs any JSON claims")
    }

    /// An ID token for `c`, signed with `alg`: `iss` is the OpenID Provider's issuer, `exp`
    /// `iat` + `id_token_lifetime`, `at_hash` when an access token is given.
    pub fn issue_id_token(&self, c: &IdTokenClaims, alg: IdTokenAlg, now: Timestamp) -> String {
        let iat = now.timestamp();
        let mut claims: Map<String, Value> = c
            .extra
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let standard = json!({
            "iss": self.oidc.issuer,
            "sub": c.sub,
            "aud": c.aud,
            "iat": iat,
            "exp": iat + self.oidc.id_token_lifetime.num_seconds(),
            "auth_time": c.auth_time.timestamp(),
            "acr": c.acr,
            "amr": c.amr,
            "sid": c.sid,
        });
        if let Value::Object(standard) = standard {
            claims.extend(standard);
        }
        if let Some(nonce) = &c.nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        if let Some(access_token) = &c.access_token {
            claims.insert("at_hash".into(), json!(at_hash(access_token, alg)));
        }
        self.sign_oidc(alg, ID_TOKEN_TYPE, &Value::Object(claims))
    }

    /// A logout token (Back-Channel Logout 1.0 §2.4) telling client `aud` that session `sid` of
    /// user `sub` has ended: `events` with the back-channel logout member, a fresh `jti`, and
    /// never a `nonce` (§2.6 makes receivers refuse one).
    pub fn issue_logout_token(
        &self,
        aud: &str,
        sub: &str,
        sid: Uuid,
        alg: IdTokenAlg,
        now: Timestamp,
    ) -> String {
        let iat = now.timestamp();
        let claims = json!({
            "iss": self.oidc.issuer,
            "aud": aud,
            "iat": iat,
            "exp": iat + LOGOUT_TOKEN_LIFETIME_SECS,
            "jti": Uuid::new_v4(),
            "sub": sub,
            "sid": sid,
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        });
        self.sign_oidc(alg, LOGOUT_TOKEN_TYPE, &claims)
    }

    /// Checks an `id_token_hint` (OIDC RP-Initiated Logout §2): signed by a key this server
    /// publishes (of the `alg` the header names, RS256 or EdDSA), issued by this provider, an
    /// ID token (not an access or logout token). An expired hint is accepted, as the
    /// specification asks; the caller checks `aud` and `sid` against the request.
    pub fn verify_id_token_hint(
        &self,
        token: &str,
        _now: Timestamp,
    ) -> Result<IdTokenHint, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let algorithm = KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.jwt() == header.alg)
            .ok_or(TokenError::Invalid)?;
        if !header
            .typ
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case(ID_TOKEN_TYPE))
        {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let ring = self.ring();
        let key = ring.published.get(&kid).ok_or(TokenError::UnknownKey)?;
        if key.algorithm != algorithm {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(algorithm.jwt());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_issuer(&[self.oidc.issuer.as_str()]);
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<HintClaims>(token, &key.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        if claims.events.is_some() {
            // A logout token is no ID token, whatever its header says.
            return Err(TokenError::WrongType);
        }
        let aud = match claims.aud {
            Audience::One(a) => a,
            Audience::Many(mut many) if many.len() == 1 => many.remove(0),
            Audience::Many(_) => return Err(TokenError::Invalid),
        };
        Ok(IdTokenHint {
            sub: claims.sub,
            aud,
            sid: claims.sid.ok_or(TokenError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_timestamp;
    use crate::tokens::AccessGrant;
    use crate::tokens::tests::service;

    fn now() -> Timestamp {
        parse_timestamp("2026-01-01T00:00:00.000Z").unwrap()
    }

    fn claims() -> IdTokenClaims {
        let mut extra = Map::new();
        extra.insert("preferred_username".into(), json!("alice"));
        extra.insert("iss".into(), json!("https://evil.test"));
        IdTokenClaims {
            sub: Uuid::new_v4().to_string(),
            aud: "client-1".into(),
            nonce: Some("n-0S6_WzA2Mj".into()),
            auth_time: now() - crate::domain::Duration::minutes(3),
            acr: "urn:sessiond:acr:pwd".into(),
            amr: vec!["pwd".into()],
            sid: Uuid::new_v4(),
            access_token: Some("jHkWEdUXMU1BwAsC4vtUsZwnNgG7jzzkyrwDxcNhfH".into()),
            extra,
        }
    }

    fn decode(tokens: &TokenService, jwt: &str) -> (Header, Value) {
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        let ring = tokens.ring();
        let key = ring.published.get(header.kid.as_ref().unwrap()).unwrap();
        let mut v = Validation::new(header.alg);
        v.validate_aud = false;
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(jwt, &key.decoding, &v).unwrap();
        (header, data.claims)
    }

    #[test]
    fn id_tokens_are_rs256_by_default_and_eddsa_on_request() {
        let tokens = service();
        let c = claims();
        for (alg, jose, kid) in [
            (
                IdTokenAlg::Rs256,
                jsonwebtoken::Algorithm::RS256,
                tokens.active_rsa_kid(),
            ),
            (
                IdTokenAlg::EdDsa,
                jsonwebtoken::Algorithm::EdDSA,
                tokens.active_kid(),
            ),
        ] {
            let jwt = tokens.issue_id_token(&c, alg, now());
            let (header, body) = decode(&tokens, &jwt);
            assert_eq!(header.alg, jose);
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            assert_eq!(header.kid, Some(kid));
            assert_eq!(body["iss"], "https://op.test", "the extra iss is ignored");
            assert_eq!(body["aud"], "client-1");
            assert_eq!(body["nonce"], "n-0S6_WzA2Mj");
            assert_eq!(body["sid"], c.sid.to_string());
            assert_eq!(body["auth_time"], c.auth_time.timestamp());
            assert_eq!(body["exp"], now().timestamp() + 600);
            assert_eq!(body["amr"], json!(["pwd"]));
            assert_eq!(body["preferred_username"], "alice");
            assert_eq!(
                body["at_hash"],
                at_hash(c.access_token.as_ref().unwrap(), alg)
            );
        }
        assert_eq!(IdTokenAlg::default(), IdTokenAlg::Rs256);
        assert_eq!(IdTokenAlg::parse("EdDSA"), Some(IdTokenAlg::EdDsa));
        assert_eq!(IdTokenAlg::parse("RS256"), Some(IdTokenAlg::Rs256));
        assert_eq!(IdTokenAlg::parse("none"), None);
        assert_eq!(IdTokenAlg::parse("HS256"), None);
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_algorithms_hash() {
        // Known answers computed independently (Python hashlib): SHA-256 for RS256, SHA-512
        // for Ed25519, left half, base64url without padding.
        let token = "jHkWEdUXMU1BwAsC4vtUsZwnNgG7jzzkyrwDxcNhfH";
        assert_eq!(at_hash(token, IdTokenAlg::Rs256), "-GHbGXVp2CbkkDXCT38f5Q");
        assert_eq!(
            at_hash(token, IdTokenAlg::EdDsa),
            "II75IKpREDYXVUHWwnMoQCnXj2xMw5LfTNrfitW35d0"
        );
    }

    #[test]
    fn a_hint_is_accepted_expired_but_not_forged_or_of_another_kind() {
        let tokens = service();
        let c = claims();
        let jwt = tokens.issue_id_token(&c, IdTokenAlg::Rs256, now());
        let much_later = now() + crate::domain::Duration::days(30);
        let hint = tokens.verify_id_token_hint(&jwt, much_later).unwrap();
        assert_eq!(
            hint,
            IdTokenHint {
                sub: c.sub.clone(),
                aud: "client-1".into(),
                sid: c.sid
            }
        );
        let ed = tokens.issue_id_token(&c, IdTokenAlg::EdDsa, now());
        assert!(tokens.verify_id_token_hint(&ed, now()).is_ok());

        // One flipped character of the signature.
        let mut forged = jwt.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(tokens.verify_id_token_hint(&forged, now()).is_err());

        // Another provider's token signed by a key this server never published.
        let other = service();
        let foreign = other.issue_id_token(&c, IdTokenAlg::Rs256, now());
        assert_eq!(
            tokens.verify_id_token_hint(&foreign, now()),
            Err(TokenError::UnknownKey)
        );

        // A logout token or an access token is not an ID token.
        let logout = tokens.issue_logout_token("client-1", &c.sub, c.sid, IdTokenAlg::Rs256, now());
        assert_eq!(
            tokens.verify_id_token_hint(&logout, now()),
            Err(TokenError::WrongType)
        );
        let (access, _) = tokens.issue(
            &AccessGrant {
                user_id: Uuid::new_v4(),
                session_id: c.sid,
                scope: "openid",
                roles: &[],
                auth_time: now(),
                acr: "urn:sessiond:acr:pwd",
                amr: &["pwd"],
                dpop_jkt: None,
            },
            now(),
        );
        assert_eq!(
            tokens.verify_id_token_hint(&access, now()),
            Err(TokenError::WrongType)
        );
        assert_eq!(
            tokens.verify_id_token_hint("not.a.jwt", now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn logout_tokens_carry_the_event_and_no_nonce() {
        let tokens = service();
        let sid = Uuid::new_v4();
        let jwt = tokens.issue_logout_token("client-1", "user-1", sid, IdTokenAlg::Rs256, now());
        let (header, body) = decode(&tokens, &jwt);
        assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(body["events"], json!({ BACKCHANNEL_LOGOUT_EVENT: {} }));
        assert_eq!(body["sid"], sid.to_string());
        assert_eq!(body["sub"], "user-1");
        assert_eq!(body["aud"], "client-1");
        assert!(body.get("nonce").is_none());
        assert!(body["jti"].is_string());
        assert_eq!(body["exp"], now().timestamp() + LOGOUT_TOKEN_LIFETIME_SECS);
    }

    #[test]
    fn the_jwks_lists_both_kinds() {
        let tokens = service();
        let jwks = tokens.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
        assert_eq!(rsa["alg"], "RS256");
        assert_eq!(rsa["use"], "sig");
        assert_eq!(rsa["kid"], tokens.active_rsa_kid());
        assert_eq!(rsa["e"], "AQAB");
        // 2048 bits: 256 bytes of modulus, 342 characters of base64url.
        assert_eq!(rsa["n"].as_str().unwrap().len(), 342);
        assert!(
            keys.iter()
                .any(|k| k["kty"] == "OKP" && k["alg"] == "EdDSA")
        );
    }
}
