//! OAuth clients (applications that sign users in through sessiond) as the log records them,
//! and the checks a registration must pass. A confidential client's secret is not here: only
//! its SHA-256 is kept, in the store's `secrets` table, never in the log.

use super::Timestamp;
use super::event::Event;
use serde::{Deserialize, Serialize};

/// The scopes a client may ask for. `session` is the first-party API scope of `/v1`.
pub const SCOPES: &[&str] = &["openid", "profile", "offline_access", "session"];
/// The grants the token endpoint knows for registered clients.
pub const GRANTS: &[&str] = &["authorization_code", "refresh_token", "client_credentials"];
/// ID token signature algorithms a client may register (`RS256` is OIDC Core's default).
pub const ID_TOKEN_ALGS: &[&str] = &["RS256", "EdDSA"];

pub fn client_stream(client_id: &str) -> String {
    format!("client-{client_id}")
}

/// A registered client, as projected from its stream (`client-{client_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    /// Compared as exact strings: no normalisation, no wildcard, no prefix.
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// No secret: authenticates with nothing but its id, PKCE proves the code's requester.
    pub public: bool,
    /// An application of the operator's own: the user is not asked to consent.
    pub first_party: bool,
    pub scopes: Vec<String>,
    pub grants: Vec<String>,
    pub id_token_signed_response_alg: String,
    #[serde(
        default,
        with = "super::ts_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<Timestamp>,
}

impl Client {
    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grants.iter().any(|g| g == grant)
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Exact string equality (RFC 9700 §4.1.3): one differing character is another URI.
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|u| u == uri)
    }

    pub fn has_post_logout_redirect_uri(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris.iter().any(|u| u == uri)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the name must be 1 to 100 printable characters")]
    InvalidName,
    #[error("{0}")]
    InvalidUri(String),
    #[error("at least one redirect URI is required")]
    NoRedirectUri,
    #[error("unknown scope {0:?}")]
    UnknownScope(String),
    #[error("unknown grant {0:?}")]
    UnknownGrant(String),
    #[error("a public client cannot use client_credentials (it has no secret)")]
    PublicClientCredentials,
    #[error("id_token_signed_response_alg must be RS256 or EdDSA")]
    UnknownAlg,
}

/// Checks one URI of a registration: absolute, no fragment (RFC 6749 §3.1.2), `https`, or
/// `http` only on a loopback host (RFC 8252 §7.3), or a private-use scheme for native apps
/// (RFC 8252 §7.1: reverse domain name, so it contains a dot).
pub fn validate_uri(uri: &str, what: &str) -> Result<(), ClientError> {
    let bad = |why: &str| Err(ClientError::InvalidUri(format!("{what} {uri:?}: {why}")));
    if uri.is_empty() || uri.len() > 2000 || uri.chars().any(|c| c.is_control() || c == ' ') {
        return bad("must be 1 to 2000 characters without spaces or control characters");
    }
    if uri.contains('#') {
        return bad("must not have a fragment");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return bad("must be an absolute URI");
    };
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return bad("must be an absolute URI");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" | "http" => {
            let Some(authority) = rest.strip_prefix("//") else {
                return bad("must be an absolute URI");
            };
            let host_port = authority.split(['/', '?']).next().unwrap_or("");
            if host_port.is_empty() || host_port.contains('@') {
                return bad("must name a host and no user information");
            }
            if scheme.eq_ignore_ascii_case("http") {
                let host = host_port
                    .rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(host_port, |(h, _)| h);
                let loopback = matches!(
                    host.to_ascii_lowercase().as_str(),
                    "127.0.0.1" | "[::1]" | "localhost"
                );
                if !loopback {
                    return bad("http is allowed only on a loopback host; use https");
                }
            }
            Ok(())
        }
        "javascript" | "data" | "file" | "vbscript" => bad("this scheme is not allowed"),
        // A native app's private-use scheme (RFC 8252 §7.1).
        s if s.contains('.') => Ok(()),
        _ => bad("must use https, http on a loopback host, or a reverse-domain private scheme"),
    }
}

/// A registration as given (CLI or API), before it is recorded.
#[derive(Debug, Clone)]
pub struct Registration {
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub public: bool,
    pub first_party: bool,
    /// Empty: the default set (`openid profile offline_access`).
    pub scopes: Vec<String>,
    /// Empty: `authorization_code refresh_token`, with `client_credentials` for a confidential one.
    pub grants: Vec<String>,
    pub id_token_signed_response_alg: Option<String>,
}

/// Checks a registration and makes the event that records it.
pub fn decide_register(r: Registration) -> Result<Event, ClientError> {
    let name = r.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ClientError::InvalidName);
    }
    if r.redirect_uris.is_empty() {
        return Err(ClientError::NoRedirectUri);
    }
    for u in &r.redirect_uris {
        validate_uri(u, "redirect URI")?;
    }
    for u in &r.post_logout_redirect_uris {
        validate_uri(u, "post-logout redirect URI")?;
    }
    if let Some(u) = &r.backchannel_logout_uri {
        validate_uri(u, "back-channel logout URI")?;
    }
    let scopes = if r.scopes.is_empty() {
        vec!["openid".into(), "profile".into(), "offline_access".into()]
    } else {
        r.scopes
    };
    if let Some(s) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ClientError::UnknownScope(s.clone()));
    }
    let grants = if r.grants.is_empty() {
        let mut g = vec!["authorization_code".to_owned(), "refresh_token".to_owned()];
        if !r.public {
            g.push("client_credentials".into());
        }
        g
    } else {
        r.grants
    };
    if let Some(g) = grants.iter().find(|g| !GRANTS.contains(&g.as_str())) {
        return Err(ClientError::UnknownGrant(g.clone()));
    }
    if r.public && grants.iter().any(|g| g == "client_credentials") {
        return Err(ClientError::PublicClientCredentials);
    }
    let alg = r
        .id_token_signed_response_alg
        .unwrap_or_else(|| "RS256".to_owned());
    if !ID_TOKEN_ALGS.contains(&alg.as_str()) {
        return Err(ClientError::UnknownAlg);
    }
    Ok(Event::ClientRegistered(Client {
        client_id: r.client_id,
        name,
        redirect_uris: r.redirect_uris,
        post_logout_redirect_uris: r.post_logout_redirect_uris,
        backchannel_logout_uri: r.backchannel_logout_uri,
        public: r.public,
        first_party: r.first_party,
        scopes,
        grants,
        id_token_signed_response_alg: alg,
        created_at: None,
    }))
}

/// The client an event is about, if it is a client event.
pub fn client_of(event: &Event) -> Option<&str> {
    match event {
        Event::ClientRegistered(c) => Some(&c.client_id),
        Event::ClientDeleted(d) => Some(&d.client_id),
        _ => None,
    }
}

/// Applies one client event; `None` once the client is deleted.
pub fn evolve(state: Option<Client>, event: &Event, at: Timestamp) -> Option<Client> {
    match event {
        Event::ClientRegistered(c) => Some(Client {
            created_at: Some(at),
            ..c.clone()
        }),
        Event::ClientDeleted(_) => None,
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(uris: &[&str]) -> Registration {
        Registration {
            client_id: "c1".into(),
            name: "App".into(),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            public: true,
            first_party: false,
            scopes: vec![],
            grants: vec![],
            id_token_signed_response_alg: None,
        }
    }

    #[test]
    fn redirect_uris_must_be_safe_absolute_uris() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "com.example.app:/cb",
        ] {
            assert!(decide_register(reg(&[ok])).is_ok(), "{ok}");
        }
        for bad in [
            "https://app.example/cb#x",
            "http://app.example/cb",
            "javascript:alert(1)",
            "/relative",
            "https://user@app.example/cb",
            "https://",
            "app:/cb",
        ] {
            assert!(decide_register(reg(&[bad])).is_err(), "{bad}");
        }
        assert_eq!(decide_register(reg(&[])), Err(ClientError::NoRedirectUri));
    }

    #[test]
    fn a_public_client_gets_no_client_credentials_and_exact_matching() {
        let Ok(Event::ClientRegistered(c)) = decide_register(reg(&["https://a.example/cb"])) else {
            panic!()
        };
        assert!(!c.allows_grant("client_credentials"));
        assert_eq!(c.id_token_signed_response_alg, "RS256");
        assert!(c.has_redirect_uri("https://a.example/cb"));
        assert!(!c.has_redirect_uri("https://a.example/cb/"));
        assert!(!c.has_redirect_uri("https://a.example/c"));
        let mut r = reg(&["https://a.example/cb"]);
        r.grants = vec!["client_credentials".into()];
        assert_eq!(
            decide_register(r),
            Err(ClientError::PublicClientCredentials)
        );
    }
}
