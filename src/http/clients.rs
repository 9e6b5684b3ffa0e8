//! The OAuth client registry over HTTP, for holders of the `security` role (user or API key).

use super::AppState;
use super::admin::SecurityCaller;
use super::extract::ApiJson;
use crate::error::Error;
use crate::service::clients::NewClient;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/clients", get(list).post(create))
        .route("/v1/admin/clients/{id}", delete(remove))
}

async fn create(
    State(app): State<AppState>,
    SecurityCaller(caller): SecurityCaller,
    ApiJson(body): ApiJson<NewClient>,
) -> Result<Response, Error> {
    let created = app.create_client(body, caller.actor()).await?;
    let mut body = serde_json::to_value(&created.client).expect("a client serializes");
    if let Some(secret) = created.client_secret {
        body["client_secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(State(app): State<AppState>, _: SecurityCaller) -> Result<Response, Error> {
    let clients = app.clients().await?;
    Ok(Json(json!({ "clients": clients })).into_response())
}

async fn remove(
    State(app): State<AppState>,
    SecurityCaller(caller): SecurityCaller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    app.delete_client(&id, caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
