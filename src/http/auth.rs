//! The auth API: register, login, refresh, logout, logout everywhere, change password, me.
//! JSON in and out; in cookie mode the refresh token travels in an HttpOnly cookie instead.

use super::AppState;
use super::extract::{ApiJson, Authenticated, Caller, Context, DpopHeader, OptionalJson};
use crate::domain::format_timestamp;
use crate::error::Error;
use crate::service::IssuedTokens;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// `__Secure-`: browsers accept it only with `Secure` from a secure origin, so a network
/// attacker on plain HTTP cannot plant or overwrite it.
pub const REFRESH_COOKIE: &str = "__Secure-sessiond_refresh";
pub const REFRESH_PATH: &str = "/v1/auth/refresh";
/// Sign-out by the refresh cookie: under the cookie's path, so the browser sends the cookie
/// there (and nowhere else but the refresh route).
pub const COOKIE_LOGOUT_PATH: &str = "/v1/auth/refresh/logout";
/// The header a cookie-mode refresh must carry; a cross-site form or image cannot set it.
pub const CSRF_HEADER: &str = "x-sessiond-csrf";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route(REFRESH_PATH, post(refresh))
        .route(COOKIE_LOGOUT_PATH, post(logout_by_cookie))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/logout-all", post(logout_all))
        .route("/v1/auth/password", post(change_password))
        .route("/v1/auth/reauth", post(reauth))
        .route("/v1/me", get(me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    mode: Mode,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Json,
    Cookie,
}

/// Registration: credentials and, optionally, where sign-in notices are mailed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default, rename = "mode")]
    _mode: Mode,
}

async fn register(
    State(app): State<AppState>,
    Context(ctx): Context,
    ApiJson(body): ApiJson<Registration>,
) -> Result<Response, Error> {
    if !app.config.registration_enabled {
        return Err(Error::Forbidden(
            "registration_disabled",
            "registration is turned off on this server".into(),
        ));
    }
    let user = app
        .register_with_email(
            &body.username,
            body.password,
            body.email.as_deref(),
            vec!["user".into()],
            &ctx,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_id": user.user_id })),
    )
        .into_response())
}

async fn login(
    State(app): State<AppState>,
    Context(ctx): Context,
    DpopHeader(dpop): DpopHeader,
    ApiJson(body): ApiJson<Credentials>,
) -> Response {
    let result = app.login(&body.username, body.password, &ctx, &dpop).await;
    with_nonce(
        &app,
        result.map(|issued| token_response(&app, issued, body.mode)),
    )
}

/// RFC 9449 §8: when nonces are on, every answer of a token route carries a fresh one.
fn with_nonce(app: &AppState, result: Result<Response, Error>) -> Response {
    let mut response = result.into_response();
    if let Some(v) = app
        .dpop_nonce()
        .and_then(|n| HeaderValue::from_str(&n).ok())
    {
        response
            .headers_mut()
            .insert(crate::tokens::dpop::NONCE_HEADER, v);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(app): State<AppState>,
    Context(ctx): Context,
    DpopHeader(dpop): DpopHeader,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<RefreshBody>,
) -> Response {
    let result = refresh_by(&app, &ctx, &dpop, &headers, body).await;
    with_nonce(&app, result)
}

async fn refresh_by(
    app: &AppState,
    ctx: &crate::domain::context::RequestContext,
    dpop: &crate::service::dpop::Dpop,
    headers: &HeaderMap,
    body: Option<RefreshBody>,
) -> Result<Response, Error> {
    if let Some(body) = body {
        let issued = app.refresh(&body.refresh_token, ctx, dpop).await?;
        return Ok(token_response(app, issued, Mode::Json));
    }
    let token = cookie(headers, REFRESH_COOKIE).ok_or_else(|| {
        Error::InvalidRequest("send {\"refresh_token\": ...} or the refresh cookie".into())
    })?;
    check_csrf(app, headers)?;
    match app.refresh(&token, ctx, dpop).await {
        Ok(issued) => Ok(token_response(app, issued, Mode::Cookie)),
        Err(e) => {
            // A dead cookie is useless to the browser: clear it along with the error.
            let mut response = e.into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, clear_cookie());
            Ok(response)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReauthBody {
    refresh_token: String,
    password: String,
}

/// Proves the password again for a session a rule stepped up; then refresh works again.
async fn reauth(
    State(app): State<AppState>,
    Context(ctx): Context,
    ApiJson(body): ApiJson<ReauthBody>,
) -> Result<Response, Error> {
    app.reauthenticate(&body.refresh_token, body.password, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    refresh_token: String,
}

async fn logout(
    State(app): State<AppState>,
    Context(ctx): Context,
    Caller(caller): Caller,
    OptionalJson(body): OptionalJson<LogoutBody>,
) -> Result<Response, Error> {
    if let Some(principal) = caller {
        app.logout(&principal, &ctx).await?;
    } else if let Some(body) = body {
        app.logout_by_refresh_token(&body.refresh_token, &ctx)
            .await?;
    } else {
        return Err(Error::MissingToken);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie());
    Ok(response)
}

/// Signs a browser out by its refresh cookie, whether or not its access token has expired:
/// ends the cookie's session and always clears the cookie. The same CSRF defence as a cookie
/// refresh (a cross-site page must not sign the user out). An unknown or already ended token
/// is a sign-out that has already happened: 204 too.
async fn logout_by_cookie(
    State(app): State<AppState>,
    Context(ctx): Context,
    headers: HeaderMap,
) -> Result<Response, Error> {
    check_csrf(&app, &headers)?;
    let ended = match cookie(&headers, REFRESH_COOKIE) {
        Some(token) => match app.logout_by_refresh_token(&token, &ctx).await {
            Ok(()) | Err(Error::InvalidGrant) => Ok(()),
            Err(e) => Err(e),
        },
        None => Ok(()),
    };
    let mut response = match ended {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie());
    Ok(response)
}

async fn logout_all(
    State(app): State<AppState>,
    Context(ctx): Context,
    Authenticated(principal): Authenticated,
) -> Result<StatusCode, Error> {
    app.logout_everywhere(&principal, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    /// Without an access token (after "this wasn't me" ended every session), the account.
    #[serde(default)]
    username: Option<String>,
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(app): State<AppState>,
    Context(ctx): Context,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, Error> {
    match (caller, body.username) {
        (Some(principal), None) => {
            app.change_password(&principal, body.current_password, body.new_password, &ctx)
                .await?
        }
        (None, Some(username)) => {
            app.change_password_with_credentials(
                &username,
                body.current_password,
                body.new_password,
                &ctx,
            )
            .await?
        }
        (None, None) => return Err(Error::MissingToken),
        (Some(_), Some(_)) => {
            return Err(Error::InvalidRequest(
                "give either an access token or a username, not both".into(),
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn me(
    State(app): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<serde_json::Value>, Error> {
    let user = app.current_user(&principal).await?;
    let s = &principal.session;
    Ok(Json(json!({
        "user": {
            "user_id": user.user_id,
            "username": user.username,
            "roles": user.roles,
            "created_at": format_timestamp(user.created_at),
        },
        "session": {
            "session_id": s.session_id,
            "status": s.status.as_str(),
            "created_at": format_timestamp(s.created_at),
            "auth_time": format_timestamp(s.auth_time),
            "last_seen_at": format_timestamp(s.last_seen_at),
            "idle_expires_at": format_timestamp(s.idle_expires_at),
            "absolute_expires_at": format_timestamp(s.absolute_expires_at),
            "ip": s.last_context.ip,
            "user_agent": s.last_context.user_agent,
            "device": s.last_context.device,
        },
    })))
}

fn token_response(app: &AppState, issued: IssuedTokens, mode: Mode) -> Response {
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": issued.token_type,
        "expires_in": issued.expires_in,
        "refresh_token_expires_in": issued.refresh_token_expires_in,
        "session_id": issued.session_id,
    });
    let mut response = if mode == Mode::Json {
        body["refresh_token"] = issued.refresh_token.expose().into();
        Json(body).into_response()
    } else {
        let max_age = (issued.absolute_expires_at - app.clock.now())
            .num_seconds()
            .max(0);
        let cookie = format!(
            "{REFRESH_COOKIE}={}; Path={REFRESH_PATH}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
            issued.refresh_token.expose()
        );
        let mut r = Json(body).into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("token cookies are ASCII"),
        );
        r
    };
    // Token responses must never be cached (RFC 6749 §5.1).
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Secure-sessiond_refresh=; Path=/v1/auth/refresh; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
    )
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Cookie-mode refresh: the Origin must be allowed and the custom header present. Browsers
/// attach cookies to cross-site requests; they do not let another site set this header.
fn check_csrf(app: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::Forbidden("csrf_rejected", why.to_owned()));
    if !headers.contains_key(CSRF_HEADER) {
        return refuse("a cookie request needs the X-Sessiond-CSRF header");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return refuse("a cookie request needs an Origin header");
    };
    let allowed = if app.config.cookie_allowed_origins.is_empty() {
        // Same origin: the Origin's host[:port] is the Host this request was sent to.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        host.is_some() && origin_host == host
    } else {
        app.config
            .cookie_allowed_origins
            .iter()
            .any(|o| o == origin)
    };
    if allowed {
        Ok(())
    } else {
        refuse("this Origin may not use the refresh cookie")
    }
}
