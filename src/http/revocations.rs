//! The revocation feed: sessions revoked within an access token's lifetime, for resource servers
//! that verify JWTs locally and keep a small deny list of session ids.

use super::AppState;
use super::extract::RequiredBearer;
use crate::error::Error;
use crate::service::api_keys::{RESOURCE_SERVER_ROLE, SECURITY_ROLE};
use crate::service::oauth::RevocationPage;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;

const DEFAULT_LIMIT: i64 = 500;
const MAX_LIMIT: i64 = 5000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/revocations", get(feed))
}

async fn feed(
    State(app): State<AppState>,
    RequiredBearer(token): RequiredBearer,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RevocationPage>, Error> {
    app.caller_with_role(&token, &[RESOURCE_SERVER_ROLE, SECURITY_ROLE])
        .await?;
    let Query(query) =
        query.map_err(|_| Error::InvalidRequest("the query string is malformed".into()))?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !["after", "limit"].contains(&k.as_str()))
    {
        return Err(Error::InvalidRequest(format!(
            "unknown query parameter {unknown:?} (known: after, limit)"
        )));
    }
    let number = |name: &str, default: i64, max: i64| -> Result<i64, Error> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| {
                    Error::InvalidField(
                        "invalid_query",
                        format!("{name} must be a whole number from 0 to {max}"),
                    )
                }),
        }
    };
    let after = number("after", 0, i64::MAX)?;
    let limit = number("limit", DEFAULT_LIMIT, MAX_LIMIT)?.max(1);
    Ok(Json(app.revocations(after, limit).await?))
}
