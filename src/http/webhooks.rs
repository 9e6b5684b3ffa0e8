//! Webhook subscriptions over HTTP, for holders of the `security` role (user or API key).

use super::AppState;
use super::admin::SecurityCaller;
use super::extract::ApiJson;
use crate::domain::webhook::WebhookFormat;
use crate::error::Error;
use crate::service::webhooks::NewSubscription;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/webhooks", get(list).post(create))
        .route("/v1/admin/webhooks/{id}", delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    format: Option<String>,
}

async fn create(
    State(app): State<AppState>,
    SecurityCaller(caller): SecurityCaller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, Error> {
    let new = NewSubscription {
        url: body.url,
        event_types: body.event_types,
        format: body
            .format
            .unwrap_or_else(|| WebhookFormat::Json.as_str().to_owned()),
    };
    let (view, secret) = app.create_webhook(new, caller.actor()).await?;
    let mut body = serde_json::to_value(view).expect("a view serializes");
    body["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(State(app): State<AppState>, _: SecurityCaller) -> Result<Response, Error> {
    let subs = app.webhooks().await?;
    Ok(Json(json!({ "subscriptions": subs })).into_response())
}

async fn remove(
    State(app): State<AppState>,
    SecurityCaller(caller): SecurityCaller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| Error::InvalidRequest("the subscription id is not a UUID".into()))?;
    app.delete_webhook(id, caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
