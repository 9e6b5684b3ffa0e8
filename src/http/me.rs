//! The end user's devices (`/v1/me/sessions`) and sign-in notices (`/v1/me/notices`).

use super::AppState;
use super::extract::{Authenticated, Context};
use crate::error::Error;
use crate::service::devices::DeviceSession;
use crate::service::notices::NoticeView;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/me/sessions", get(list).delete(revoke_others))
        .route("/v1/me/sessions/{session_id}", delete(revoke_one))
        .route("/v1/me/notices", get(notices))
        .route("/v1/me/notices/{notice_id}/confirm", post(confirm_notice))
        .route("/v1/me/notices/{notice_id}/deny", post(deny_notice))
}

async fn notices(
    State(app): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<NoticeView>>, Error> {
    Ok(Json(app.my_notices(&principal).await?))
}

/// "This was me".
async fn confirm_notice(
    State(app): State<AppState>,
    Context(ctx): Context,
    Authenticated(principal): Authenticated,
    Path(notice_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let notice_id = Uuid::parse_str(&notice_id).map_err(|_| Error::NotFound)?;
    let expires = app.confirm_notice(&principal, notice_id, &ctx).await?;
    Ok(Json(
        json!({ "status": "confirmed", "exception_expires_at": expires }),
    ))
}

/// "This wasn't me".
async fn deny_notice(
    State(app): State<AppState>,
    Context(ctx): Context,
    Authenticated(principal): Authenticated,
    Path(notice_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let notice_id = Uuid::parse_str(&notice_id).map_err(|_| Error::NotFound)?;
    let ended = app.deny_notice(&principal, notice_id, &ctx).await?;
    Ok(Json(json!({
        "status": "denied",
        "revoked": ended,
        "password_change_required": true,
    })))
}

async fn list(
    State(app): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<DeviceSession>>, Error> {
    Ok(Json(app.my_sessions(&principal).await?))
}

async fn revoke_one(
    State(app): State<AppState>,
    Context(ctx): Context,
    Authenticated(principal): Authenticated,
    Path(session_id): Path<String>,
) -> Result<StatusCode, Error> {
    // Not an id at all is as unknown as someone else's id.
    let session_id = Uuid::parse_str(&session_id).map_err(|_| Error::NotFound)?;
    app.revoke_my_session(&principal, session_id, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_others(
    State(app): State<AppState>,
    Context(ctx): Context,
    Authenticated(principal): Authenticated,
) -> Result<Json<Value>, Error> {
    let revoked = app.revoke_my_other_sessions(&principal, &ctx).await?;
    Ok(Json(json!({ "revoked": revoked })))
}
