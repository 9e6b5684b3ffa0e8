//! The analyst in the loop (issue 15, point 5): a verdict on an alert, and per-rule stats,
//! for the security role like the rest of `/v1/admin`.

use super::AppState;
use super::admin::SecurityCaller;
use super::extract::{ApiJson, Context};
use crate::error::Error;
use crate::service::verdicts::{RuleStatsView, VerdictRequest};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/alerts/{id}/verdict", post(verdict))
        .route("/v1/admin/rules/stats", get(stats))
}

/// `{id}` is the alert's `position` in `/v1/admin/alerts`; anything else names no alert.
async fn verdict(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<VerdictRequest>,
) -> Result<Json<Value>, Error> {
    let position: i64 = id.trim().parse().map_err(|_| Error::NotFound)?;
    Ok(Json(
        app.record_verdict(&caller, position, body, &ctx).await?,
    ))
}

async fn stats(
    State(app): State<AppState>,
    _: SecurityCaller,
) -> Result<Json<RuleStatsView>, Error> {
    Ok(Json(app.rule_stats().await?))
}
