//! Operator endpoints: liveness, readiness and Prometheus metrics.

use super::AppState;
use crate::domain::token::TokenHash;
use crate::error::Error;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`, on the main listener or on `metrics_listen`.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The process is up and answering.
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Ready for traffic: the store answers with every migration applied, a signing key is loaded,
/// and the writer is running.
async fn readyz(State(app): State<AppState>) -> Response {
    let checks = app.readiness().await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks.iter().map(|(name, r)| (name.to_string(), json!(match r {
            Ok(()) => "ok",
            Err(why) => why,
        }))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &app.config.metrics_token {
        let presented = super::extract::bearer(&headers).ok().flatten();
        // Digests compared without an early exit: the token is a secret.
        let digest = |t: &str| -> [u8; 32] {
            use sha2::Digest;
            sha2::Sha256::digest(t.as_bytes()).into()
        };
        let ok = presented.is_some_and(|p| TokenHash(digest(&p)).matches(&digest(expected)));
        if !ok {
            return Error::MissingToken.into_response();
        }
    }
    match app.count_active_sessions().await {
        Ok(n) => metrics::gauge!(crate::metrics::ACTIVE_SESSIONS).set(n as f64),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count active sessions"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}
