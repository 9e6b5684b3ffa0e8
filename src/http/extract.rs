//! Extractors that turn a request into typed, checked input, with our JSON errors for every way
//! a request can be malformed.

use super::{AppState, RequestId};
use crate::domain::context::RequestContext;
use crate::error::Error;
use crate::service::Principal;
use crate::service::dpop::Dpop;
use crate::tokens::dpop::DPOP_HEADER;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// A JSON body: `application/json`, within the size limit, of the expected shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be absent (an empty body, as a cookie-mode refresh sends).
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let json = is_json(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(Error::UnsupportedMediaType);
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge
            } else {
                Error::InvalidRequest("the request body could not be read".into())
            }
        })
}

/// Parses JSON, with a message that says what is wrong but never echoes a submitted value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let message = match e.classify() {
            Category::Data => {
                let text = e.to_string();
                // serde names missing or unknown fields usefully; other data errors quote values.
                if text.starts_with("missing field") || text.starts_with("unknown field") {
                    format!("invalid request body: {text}")
                } else {
                    format!("invalid request body: a field has the wrong type or value (line {}, column {})", e.line(), e.column())
                }
            }
            Category::Syntax | Category::Eof => format!("malformed JSON at line {}, column {}", e.line(), e.column()),
            Category::Io => "the request body could not be read".to_owned(),
        };
        Error::InvalidRequest(message)
    })
}

/// Where the request came from and what sent it, for the events it causes.
pub struct Context(pub RequestContext);

impl FromRequestParts<AppState> for Context {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| Error::Internal("no peer address: serve with connect info".into()))?;
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        Ok(Context(crate::context::request_context(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
            &state.geoip,
            request_id,
        )))
    }
}

/// The caller of a protected route: `Authorization: Bearer <token>`, or `Authorization: DPoP
/// <token>` with a `DPoP` proof for a DPoP-bound token (RFC 9449 §7).
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        authenticate(state, parts)
            .await?
            .map(Authenticated)
            .ok_or(Error::MissingToken)
    }
}

/// The caller of a route where the Authorization header is optional.
pub struct Caller(pub Option<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        authenticate(state, parts).await.map(Caller)
    }
}

/// The caller named by the Authorization header, `None` without one.
pub async fn authenticate(app: &AppState, parts: &Parts) -> Result<Option<Principal>, Error> {
    let Some((scheme, token)) = authorization(&parts.headers)? else {
        return Ok(None);
    };
    if scheme.eq_ignore_ascii_case("dpop") {
        let dpop = dpop_of(app, parts);
        return app.authenticate_dpop(&token, &dpop).await.map(Some);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::InvalidToken(crate::tokens::TokenError::Malformed));
    }
    app.authenticate(&token).await.map(Some)
}

fn authorization(headers: &HeaderMap) -> Result<Option<(String, String)>, Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || Error::InvalidToken(crate::tokens::TokenError::Malformed);
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if token.trim().is_empty() {
        return Err(malformed());
    }
    Ok(Some((scheme.to_owned(), token.trim().to_owned())))
}

/// A request's DPoP proof and what it must match: this request's method and its URL as the
/// client addresses it (see [`public_base`]).
pub struct DpopHeader(pub Dpop);

impl FromRequestParts<AppState> for DpopHeader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(DpopHeader(dpop_of(state, parts)))
    }
}

fn dpop_of(app: &AppState, parts: &Parts) -> Dpop {
    let mut values = parts.headers.get_all(DPOP_HEADER).iter();
    // A value that is not text cannot be a JWS: keep it as one that fails to parse.
    let proof = values
        .next()
        .map(|v| v.to_str().unwrap_or_default().trim().to_owned());
    Dpop {
        proof,
        repeated: values.next().is_some(),
        method: parts.method.as_str().to_owned(),
        url: format!("{}{}", public_base(app, &parts.headers), parts.uri.path()),
    }
}

/// Where clients reach this server: the configured `public_url`, else `http://` and the Host
/// this request was sent to, else the listen address. Absolute links (OAuth metadata) and the
/// URL a DPoP proof's `htu` must name are built on it.
pub fn public_base(app: &AppState, headers: &HeaderMap) -> String {
    match (&app.config.public_url, headers.get(header::HOST)) {
        (Some(url), _) => url.clone(),
        (None, Some(host)) if host.to_str().is_ok_and(is_host) => {
            format!("http://{}", host.to_str().unwrap_or_default())
        }
        _ => app.config.base_url(),
    }
}

/// `host[:port]`, nothing that could smuggle a path or a scheme into a link.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// The Bearer token of the Authorization header: `None` when there is no such header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::InvalidToken(crate::tokens::TokenError::Malformed))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(Error::InvalidToken(crate::tokens::TokenError::Malformed))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::InvalidToken(crate::tokens::TokenError::Malformed));
    }
    Ok(Some(token.trim().to_owned()))
}

/// A Bearer credential that must be present (an access token or an API key); who it names is
/// the handler's question.
pub struct RequiredBearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequiredBearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        bearer(&parts.headers)?
            .map(RequiredBearer)
            .ok_or(Error::MissingToken)
    }
}
