//! Webhook subscriptions over HTTP, for holders of the `security` role.

use super::AppState;
use super::extract::{ApiJson, Authenticated};
use crate::delivery::subscriptions::{self, FORMAT_JSON, NewSubscription};
use crate::error::Error;
use crate::service::Principal;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub const SECURITY_ROLE: &str = "security";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/webhooks", get(list).post(create))
        .route("/v1/admin/webhooks/{id}", delete(remove))
}

fn require_security(principal: &Principal) -> Result<(), Error> {
    if principal.claims.roles.iter().any(|r| r == SECURITY_ROLE) {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "insufficient_role",
            "this needs the security role".into(),
        ))
    }
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
    Authenticated(principal): Authenticated,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, Error> {
    require_security(&principal)?;
    let new = NewSubscription {
        url: body.url,
        event_types: body.event_types,
        format: body.format.unwrap_or_else(|| FORMAT_JSON.to_owned()),
    };
    let (view, secret) =
        subscriptions::create(&app.store, &app.master_key, app.clock.now(), new).await?;
    let mut body = serde_json::to_value(view).expect("a view serializes");
    body["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(
    State(app): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, Error> {
    require_security(&principal)?;
    let subs = subscriptions::list(&app.store).await?;
    Ok(Json(json!({ "subscriptions": subs })).into_response())
}

async fn remove(
    State(app): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_security(&principal)?;
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| Error::InvalidRequest("the subscription id is not a UUID".into()))?;
    subscriptions::delete(&app.store, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
