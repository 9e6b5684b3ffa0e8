//! HTTP surfaces, one router each, merged here with the layers every route shares: request ids,
//! one access-log line per request, a body limit, a header guard and JSON answers for unknown
//! routes and for every other client error.

pub mod admin;
pub mod auth;
pub mod authorize;
pub mod clients;
pub mod error;
pub mod extract;
pub mod me;
pub mod oauth;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod revocations;
pub mod server;
pub mod verdicts;
pub mod webhooks;
pub mod wellknown;

use crate::error::Error;
use crate::service::Sessiond;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub type AppState = Arc<Sessiond>;

/// Bodies larger than this are refused with 413 before they are read to the end.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let limits = Arc::new(Limits {
        in_flight: Arc::new(Semaphore::new(state.config.http_max_in_flight)),
        request_timeout: state
            .config
            .http_request_timeout
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(30)),
    });
    // `/metrics` is on the main listener unless it has one of its own.
    let metrics = if state.config.metrics_listen.is_none() {
        ops::metrics_router()
    } else {
        Router::new()
    };
    Router::new()
        .merge(metrics)
        .merge(auth::router())
        .merge(wellknown::router())
        .merge(ops::router())
        .merge(webhooks::router())
        .merge(me::router())
        .merge(admin::router())
        .merge(verdicts::router())
        .merge(oauth::router())
        .merge(authorize::router())
        .merge(clients::router())
        .merge(openapi::router())
        .merge(pages::router())
        .merge(revocations::router())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(request_guard))
        .layer(middleware::from_fn_with_state(limits, guard))
        .layer(middleware::from_fn(request_log))
        .with_state(state)
}

/// Request headers larger than this in total are refused with 431 before any handler runs.
pub const HEADER_LIMIT: usize = 32 * 1024;

/// Headers that carry one value: a second copy makes the request ambiguous (a proxy may have
/// checked one copy and a handler read the other), so it is refused.
const SINGLE_VALUED: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "cookie",
    "host",
    "origin",
    "dpop",
    "x-request-id",
    auth::CSRF_HEADER,
];

/// Refuses oversized and ambiguous headers and URLs with bytes no route takes, and turns any
/// client error that is not JSON yet (an extractor's plain-text rejection) into our JSON shape.
async fn request_guard(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > HEADER_LIMIT {
        return error::client_error_as_json(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        );
    }
    if let Some(name) = SINGLE_VALUED
        .iter()
        .find(|name| headers.get_all(**name).iter().nth(1).is_some())
    {
        let message = format!("the {name} header may be sent only once");
        // RFC 9449 §4.3 counts a second DPoP header as an invalid proof, with its own code (§5).
        return if *name == crate::tokens::dpop::DPOP_HEADER {
            Error::InvalidDpopProof(message)
        } else {
            Error::InvalidRequest(message)
        }
        .into_response();
    }
    if !url_is_clean(req.uri()) {
        return Error::InvalidRequest(
            "the URL must be UTF-8 without NUL characters once percent-decoded".into(),
        )
        .into_response();
    }
    let response = next.run(req).await;
    // Ours are JSON, or the HTML error pages of the browser routes (`/oauth/authorize`):
    // axum's own rejections are plain text.
    let ours = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if response.status().is_client_error() && !ours {
        return error::client_error_as_json(response.status());
    }
    response
}

/// Whether the path and query, percent-decoded, are UTF-8 without NUL: no route takes such
/// bytes, and decoders downstream differ on what they make of them (lossy or refused).
fn url_is_clean(uri: &axum::http::Uri) -> bool {
    let raw = uri.path_and_query().map_or("", |p| p.as_str()).as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    !decoded.contains(&0) && std::str::from_utf8(&decoded).is_ok()
}

/// `/metrics` alone, for `metrics_listen`.
pub fn metrics_only_router(state: AppState) -> Router {
    ops::metrics_router()
        .fallback(|| async { Error::NotFound })
        .layer(middleware::from_fn(request_log))
        .with_state(state)
}

struct Limits {
    in_flight: Arc<Semaphore>,
    request_timeout: std::time::Duration,
}

/// The global in-flight limit and the request timeout. Past the limit a request is answered
/// 503 `overloaded` at once, instead of waiting behind the others; liveness stays outside it,
/// so a flooded server is not taken for a dead one. The timeout covers the time until the
/// answer starts (a stream's body may go on).
async fn guard(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        return Error::Overloaded.into_response();
    };
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout.into_response(),
    }
}

/// The request's id: the caller's `X-Request-Id` when it is sane, otherwise a fresh one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

async fn request_log(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    // The path only: query strings may carry things that do not belong in logs.
    let path = req.uri().path().to_owned();
    // The route template, not the raw path: ids in paths would make a series per request.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let started = Instant::now();
    // Every line logged while the request runs carries its id.
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    span.in_scope(|| {
        tracing::info!(target: "sessiond::access", %method, %path, %route, status, micros, "request");
    });
    crate::metrics::observe_request(&route, method.as_str(), status, elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
