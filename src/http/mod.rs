//! HTTP surfaces, one router each, merged here with the layers every route shares: request ids,
//! one access-log line per request, a body limit and JSON answers for unknown routes.

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod me;
pub mod oauth;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod revocations;
pub mod webhooks;
pub mod wellknown;

use crate::error::Error;
use crate::service::Sessiond;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub type AppState = Arc<Sessiond>;

/// Bodies larger than this are refused with 413 before they are read to the end.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(auth::router())
        .merge(wellknown::router())
        .merge(ops::router())
        .merge(webhooks::router())
        .merge(me::router())
        .merge(admin::router())
        .merge(oauth::router())
        .merge(openapi::router())
        .merge(pages::router())
        .merge(revocations::router())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(request_log))
        .with_state(state)
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
