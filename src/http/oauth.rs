//! OAuth 2.0 endpoints for ordinary client libraries: the token endpoint (RFC 6749 §5),
//! revocation (RFC 7009), introspection (RFC 7662) and server metadata (RFC 8414).
//! Bodies are form-encoded and errors use OAuth's codes and shape, not the JSON API's.

use super::AppState;
use super::extract::{Context, DpopHeader, bearer};
use crate::error::Error;
use crate::service::api_keys::{RESOURCE_SERVER_ROLE, SECURITY_ROLE};
use crate::service::{DEFAULT_SCOPE, IssuedTokens};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/oauth/introspect", post(introspect))
        .route("/.well-known/oauth-authorization-server", get(metadata))
}

/// An OAuth error response: `{"error", "error_description"}`, never cached.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    retry_after: Option<u64>,
    /// A fresh `DPoP-Nonce` to send along (`use_dpop_nonce`, RFC 9449 §8).
    nonce: Option<String>,
    /// The RFC 9470 step-up challenge, beside `invalid_grant` for a session that must
    /// re-authenticate.
    step_up: bool,
    /// The client tried HTTP Basic and failed: the challenge is `Basic` (RFC 6749 §5.2).
    basic: bool,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            retry_after: None,
            nonce: None,
            step_up: false,
            basic: false,
        }
    }

    fn retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        let status = super::error::status(&e);
        let code = match &e {
            // RFC 6749 §5.2 has no code for "authenticate again": `invalid_grant` makes any
            // client start a new authorization request; the RFC 9470 challenge says why, so an
            // aware client asks with prompt=login or max_age.
            Error::ReauthRequired => {
                let mut answer = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the session must re-authenticate: send an authorization request with prompt=login or max_age",
                );
                answer.step_up = true;
                return answer;
            }
            Error::InsufficientUserAuthentication { .. } => {
                let mut answer =
                    Self::new(status, "insufficient_user_authentication", e.to_string());
                answer.step_up = true;
                return answer;
            }
            Error::InvalidGrant | Error::InvalidCredentials | Error::AccountLocked => {
                return Self::new(StatusCode::BAD_REQUEST, "invalid_grant", e.to_string());
            }
            Error::InvalidDpopProof(_) | Error::InvalidDpopToken(_) => "invalid_dpop_proof",
            Error::UseDpopNonce(nonce) | Error::ResourceDpopNonce(nonce) => {
                let mut e = Self::new(status, "use_dpop_nonce", e.to_string());
                e.nonce = Some(nonce.clone());
                return e;
            }
            Error::MissingToken | Error::InvalidToken(_) | Error::SessionEnded => "invalid_token",
            Error::Forbidden(..) => "insufficient_scope",
            Error::Unavailable | Error::Overloaded | Error::Timeout => {
                return Self::new(status, "temporarily_unavailable", e.to_string())
                    .retry_after(e.retry_after());
            }
            // Not an RFC 6749 code (it has none for this): the same answer as on every other
            // route that checks a password.
            Error::TooManyAttempts { .. } => {
                return Self::new(status, "too_many_attempts", e.to_string())
                    .retry_after(e.retry_after());
            }
            Error::InvalidClient { basic } => {
                let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid_client", e.to_string());
                e.basic = *basic;
                return e;
            }
            Error::OAuth(code, _) => code,
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error",
                );
            }
            _ => "invalid_request",
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code, "error_description": self.description }));
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(v) = self.nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
            headers.insert(crate::tokens::dpop::NONCE_HEADER, v);
        }
        if self.step_up {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(super::error::STEP_UP_CHALLENGE),
            );
        } else if self.basic {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sessiond\""),
            );
        } else if self.status == StatusCode::UNAUTHORIZED && self.code != "invalid_client" {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// Form parameters as RFC 6749 §3.2 reads them: `application/x-www-form-urlencoded`, an
/// empty value counts as absent, and a parameter may not repeat.
pub(super) struct Params(HashMap<String, String>);

impl Params {
    fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Params, OAuthError> {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let pairs: Vec<(String, String)> = form_pairs(body)
            .ok_or_else(|| OAuthError::invalid_request("the form body is malformed"))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k:?} is repeated"
                )));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing parameter {name:?}")))
    }
}

/// Decodes a form body into its pairs, in order.
pub(super) fn form_pairs(body: &Bytes) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = Vec::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((form_decode(k)?, form_decode(v)?));
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte, UTF-8 overall.
pub(super) fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    // No parameter takes a NUL; refused like malformed UTF-8.
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

async fn token(
    State(app): State<AppState>,
    Context(ctx): Context,
    DpopHeader(dpop): DpopHeader,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = grant(&app, &ctx, &dpop, &headers, &body).await;
    let mut response = result.map(token_response).into_response();
    // RFC 9449 §8: every answer of the token endpoint carries a fresh nonce when they are on.
    if let Some(v) = app
        .dpop_nonce()
        .and_then(|n| HeaderValue::from_str(&n).ok())
    {
        response
            .headers_mut()
            .insert(crate::tokens::dpop::NONCE_HEADER, v);
    }
    response
}

/// `Authorization: Basic` as RFC 6749 §2.3.1 has it: the id and secret form-encoded, then
/// joined by a colon and base64-encoded. `None` without such a header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    use base64::Engine;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::from(Error::InvalidClient { basic: true });
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // A DPoP or Bearer header is no client authentication; the grant decides.
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let id = form_decode(id).ok_or_else(bad)?;
    let secret = form_decode(secret).ok_or_else(bad)?;
    Ok(Some((id, secret)))
}

/// The client a token request names, authenticated; `None` when it names none (a first-party
/// caller, which may send any `client_id`: it used to be ignored, and stays so when it names
/// no registered client and comes without a secret).
async fn client_of(
    app: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Option<crate::domain::client::Client>, OAuthError> {
    let auth = crate::service::clients::ClientAuth {
        basic: basic_credentials(headers)?,
        client_id: params.get("client_id").map(str::to_owned),
        client_secret: params.get("client_secret").map(str::to_owned),
    };
    if auth.is_empty() {
        return Ok(None);
    }
    let without_secret = auth.basic.is_none() && auth.client_secret.is_none();
    match app.authenticate_client(&auth).await {
        Ok(c) => Ok(Some(c)),
        Err(Error::InvalidClient { .. })
            if without_secret
                && app
                    .registered_client(auth.client_id.as_deref().unwrap_or(""))
                    .await?
                    .is_none() =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// What the token endpoint answers.
enum Granted {
    Tokens(IssuedTokens),
    Client(crate::service::code_grant::ClientToken),
}

async fn grant(
    app: &AppState,
    ctx: &crate::domain::context::RequestContext,
    dpop: &crate::service::dpop::Dpop,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Granted, OAuthError> {
    let params = Params::parse(headers, body)?;
    let grant_type = params.required("grant_type")?;
    let client = client_of(app, headers, &params).await?;
    let need_client = || OAuthError::from(Error::InvalidClient { basic: false });
    match (grant_type, &client) {
        ("authorization_code", client) => {
            let client = client.as_ref().ok_or_else(need_client)?;
            let exchange = crate::service::code_grant::CodeExchange {
                code: params.required("code")?,
                redirect_uri: params.get("redirect_uri"),
                code_verifier: params.required("code_verifier")?,
            };
            return Ok(Granted::Tokens(
                app.exchange_code(client, &exchange, ctx, dpop).await?,
            ));
        }
        ("client_credentials", client) => {
            let client = client.as_ref().ok_or_else(need_client)?;
            return Ok(Granted::Client(
                app.client_credentials(client, params.get("scope")).await?,
            ));
        }
        ("refresh_token", Some(client)) => {
            // The scope of a client's session stays what was granted (RFC 6749 §6).
            let refreshed = app
                .refresh_for_client(client, params.required("refresh_token")?, ctx, dpop)
                .await?;
            return Ok(Granted::Tokens(refreshed));
        }
        _ => {}
    }
    let bad_scope = params.get("scope").is_some_and(|scope| {
        scope
            .split(' ')
            .any(|s| !s.is_empty() && s != DEFAULT_SCOPE)
    });
    if bad_scope {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("the only scope is {DEFAULT_SCOPE:?}"),
        ));
    }
    let issued = match grant_type {
        "refresh_token" => {
            app.refresh(params.required("refresh_token")?, ctx, dpop)
                .await?
        }
        "password" if app.config.oauth_password_grant => {
            let username = params.required("username")?;
            let password = params.required("password")?.to_owned();
            app.login(username, password, ctx, dpop).await?
        }
        other => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported here",
                    other.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    Ok(Granted::Tokens(issued))
}

fn token_response(granted: Granted) -> Response {
    let body = match granted {
        Granted::Tokens(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": issued.token_type,
                "expires_in": issued.expires_in,
                "refresh_token": issued.refresh_token.expose(),
                "refresh_token_expires_in": issued.refresh_token_expires_in,
                "scope": issued.scope,
            });
            if let Some(id_token) = issued.id_token {
                body["id_token"] = json!(id_token);
            }
            Json(body)
        }
        Granted::Client(t) => Json(json!({
            "access_token": t.access_token,
            "token_type": "Bearer",
            "expires_in": t.expires_in,
            "scope": t.scope,
        })),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn revoke(
    State(app): State<AppState>,
    Context(ctx): Context,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, OAuthError> {
    let params = Params::parse(&headers, &body)?;
    // token_type_hint only speeds up a search; sessiond tells the two kinds apart by shape.
    app.revoke_token(params.required("token")?, &ctx).await?;
    Ok(StatusCode::OK)
}

async fn introspect(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    // RFC 7662 §2.1: the caller must be authorized; here by an API key (or a security user).
    let credential = bearer(&headers)?.ok_or(Error::MissingToken)?;
    app.caller_with_role(&credential, &[RESOURCE_SERVER_ROLE, SECURITY_ROLE])
        .await?;
    let params = Params::parse(&headers, &body)?;
    let answer = app.introspect(params.required("token")?).await?;
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn metadata(State(app): State<AppState>) -> impl IntoResponse {
    // Links from the configuration only (`public_url`, else the listen address): a request's
    // Host header is the client's to write, and metadata may be cached and served to others.
    Json(crate::service::oauth::authorization_server_metadata(
        &app.config.oidc_issuer(),
        &app.config.base_url(),
        app.config.oauth_password_grant,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_as_rfc_6749_reads_them() {
        let pairs = form_pairs(&Bytes::from_static(
            b"grant_type=refresh_token&refresh_token=sdrt_a%2Bb&scope=a+b&empty=",
        ))
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("grant_type".into(), "refresh_token".into()),
                ("refresh_token".into(), "sdrt_a+b".into()),
                ("scope".into(), "a b".into()),
                ("empty".into(), String::new()),
            ]
        );
        assert!(form_pairs(&Bytes::from_static(b"a=%zz")).is_none());
        assert!(form_pairs(&Bytes::from_static(b"a=%e2%28")).is_none());
        assert!(form_pairs(&Bytes::from_static(b"username=a%00b")).is_none());
    }
}
