//! OpenID Connect Discovery 1.0: the provider metadata at `/.well-known/openid-configuration`.
//! It is the RFC 8414 document (`oauth::authorization_server_metadata`) with the OpenID
//! Provider's fields added, so the two never disagree; its `issuer` is exactly `public_url`
//! when that is set, and every link is built from the configuration, never from a request.

use super::Sessiond;
use crate::domain::session::PASSWORD_ACR;
use crate::tokens::oidc::IdTokenAlg;
use serde_json::{Value, json};

pub const AUTHORIZATION_PATH: &str = "/oauth/authorize";
pub const USERINFO_PATH: &str = "/oauth/userinfo";
pub const END_SESSION_PATH: &str = "/oauth/end_session";

/// The scopes clients may ask for: `openid` (an ID token), `profile` (`preferred_username`),
/// and `session`, the first-party default.
pub const SCOPES: &[&str] = &["openid", "profile", super::DEFAULT_SCOPE];

/// The claims ID tokens and userinfo may carry.
const CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "sid",
    "at_hash",
    "preferred_username",
];

/// The provider metadata (OIDC Discovery §3) for issuer `issuer` with links under `base`.
pub fn openid_configuration(issuer: &str, base: &str, password_grant: bool) -> Value {
    let mut doc = super::oauth::authorization_server_metadata(issuer, base, password_grant);
    let id_token_algs: Vec<&str> = IdTokenAlg::ALL.iter().map(|a| a.as_str()).collect();
    let more = json!({
        "userinfo_endpoint": format!("{base}{USERINFO_PATH}"),
        "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": id_token_algs,
        "claims_supported": CLAIMS,
        "acr_values_supported": [PASSWORD_ACR],
        "prompt_values_supported": ["none", "login", "consent"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        // Back-Channel Logout 1.0 §2.1: logout tokens, with `sid`.
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    });
    if let (Value::Object(doc), Value::Object(more)) = (&mut doc, more) {
        doc.extend(more);
    }
    doc
}

impl Sessiond {
    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        openid_configuration(
            &self.config.oidc_issuer(),
            &self.config.base_url(),
            self.config.oauth_password_grant,
        )
    }
}
