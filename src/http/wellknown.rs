//! Public discovery documents: the JWKS that resource servers verify access tokens with.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
}

async fn jwks(State(app): State<AppState>) -> impl IntoResponse {
    // Short caching: a key published ahead of rotation must reach verifiers before it signs.
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(app.tokens.jwks()),
    )
}
