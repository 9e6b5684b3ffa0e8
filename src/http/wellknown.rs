//! Public discovery documents: the JWKS that resource servers verify access tokens (and
//! relying parties ID tokens) with, and the OpenID Provider metadata.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

async fn openid_configuration(State(app): State<AppState>) -> impl IntoResponse {
    // Built from the configuration only (`public_url`), never from the request's Host.
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(app.openid_configuration()),
    )
}

async fn jwks(State(app): State<AppState>) -> impl IntoResponse {
    // Short caching: a key published ahead of rotation must reach verifiers before it signs.
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(app.tokens.jwks()),
    )
}
