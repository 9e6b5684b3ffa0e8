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

/// Parses a JSON object, with a message that says what is wrong but never echoes a submitted
/// value. The document is checked first by [`Strict`]: a key given twice or a NUL character is
/// refused, and so is any other top-level value (serde reads a struct from an array too, so
/// `["sdrt_…"]` would pass as a refresh body), whatever the target type would have made of it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let Strict { object } = serde_json::from_slice(bytes).map_err(json_error)?;
    if !object {
        return Err(Error::InvalidRequest(
            "invalid request body: expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

fn json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let message = match e.classify() {
        Category::Data => {
            let text = e.to_string();
            if text.starts_with(DUPLICATE_KEY) || text.starts_with(NUL_CHARACTER) {
                let what = text.split(" at line ").next().unwrap_or_default();
                format!(
                    "invalid request body: {what} (line {}, column {})",
                    e.line(),
                    e.column()
                )
            // serde names missing or unknown fields usefully; other data errors quote values.
            } else if text.starts_with("missing field") || text.starts_with("unknown field") {
                format!("invalid request body: {text}")
            } else {
                format!(
                    "invalid request body: a field has the wrong type or value (line {}, column {})",
                    e.line(),
                    e.column()
                )
            }
        }
        Category::Syntax | Category::Eof => {
            format!("malformed JSON at line {}, column {}", e.line(), e.column())
        }
        Category::Io => "the request body could not be read".to_owned(),
    };
    Error::InvalidRequest(message)
}

const DUPLICATE_KEY: &str = "an object has the same key twice";
const NUL_CHARACTER: &str = "a string contains a NUL character";

/// Any JSON document, walked to refuse what a typed parse would let through: a key given twice
/// in one object (serde_json keeps the last one, while a proxy or a log in front may have read
/// the first) and NUL characters in strings or keys (no field takes one, and C-string code
/// downstream would cut the value there). Nesting is bounded by serde_json's recursion limit.
/// `object` says whether the value is an object.
struct Strict {
    object: bool,
}

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict { object: false })
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict { object: false })
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict { object: false })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict { object: false })
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict { object: false })
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Strict, E> {
        if s.contains('\0') {
            return Err(E::custom(NUL_CHARACTER));
        }
        Ok(Strict { object: false })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict { object: false })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        use serde::de::Error as _;
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key.contains('\0') {
                return Err(A::Error::custom(NUL_CHARACTER));
            }
            if !seen.insert(key) {
                return Err(A::Error::custom(DUPLICATE_KEY));
            }
            map.next_value::<Strict>()?;
        }
        Ok(Strict { object: true })
    }
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
/// client addresses it: this server's configured base (`Config::base_url`).
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
        // The base the OAuth metadata names (`public_url`, else the listen address), never the
        // request's Host: a client-written Host must not choose the URL a proof is checked for.
        url: format!("{}{}", app.config.base_url(), parts.uri.path()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn refusal(body: &str) -> String {
        match parse_json::<Value>(body.as_bytes()) {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_key_twice_or_a_nul_is_refused_even_where_the_target_would_take_it() {
        // serde_json alone reads these as `{"a": 2}`, last-wins.
        assert!(refusal(r#"{"a":1,"a":2}"#).contains("same key twice"));
        assert!(refusal(r#"{"x":[{"b":"s","b":"secret"}]}"#).contains("same key twice"));
        assert!(refusal(r#"{"a":"x\u0000y"}"#).contains("NUL"));
        assert!(refusal(r#"{"a\u0000":1}"#).contains("NUL"));
        // The message says where, never what.
        assert!(!refusal(r#"{"x":[{"b":"s","b":"secret"}]}"#).contains("secret"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(refusal(&deep).contains("malformed JSON"));
        // A struct would read itself from an array: only an object is a body.
        assert!(refusal(r#"["sdrt_x"]"#).contains("expected a JSON object"));
        assert!(refusal("null").contains("expected a JSON object"));
        let ok: Value = parse_json(br#"{"a":{"a":1},"b":["a","a"],"c":"\u0001"}"#).unwrap();
        assert_eq!(ok["a"]["a"], 1);
    }
}
