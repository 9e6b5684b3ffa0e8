//! `/oauth/authorize` (GET, and POST for its forms) with the sign-in and consent pages, and
//! `/oauth/userinfo`. The decisions are `service::authorize`'s; this module reads parameters
//! and cookies, renders the pages (plain HTML, the shared stylesheet, no script, a strict
//! Content-Security-Policy) and sets the cookies the service asks for.
//!
//! Cookies: `__Host-sessiond_csrf` (random, `SameSite=Strict`) is the double-submit CSRF
//! token of every form here; `__Host-sessiond_signin` (`SameSite=Lax`, so it comes along when
//! an application sends the browser here) names the browser's signed-in session.

use super::AppState;
use super::extract::{Caller, Context};
use super::oauth::form_pairs;
use crate::error::Error;
use crate::service::authorize::{AuthorizationRequest, AuthorizeError, AuthorizeStep, Browser};
use crate::service::end_session::EndSessionStep;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use rand::RngCore;

pub const CSRF_COOKIE: &str = "__Host-sessiond_csrf";
pub const SIGNIN_COOKIE: &str = "__Host-sessiond_signin";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/userinfo", get(userinfo).post(userinfo))
        .route(
            "/oauth/end_session",
            get(end_session_get).post(end_session_post),
        )
}

/// A cookie of the request by name.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = headers.get(header::COOKIE)?.to_str().ok()?;
    raw.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name && !v.is_empty() && v.len() <= 512).then(|| v.to_owned())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The browser's CSRF token: its cookie's, or a new one to set.
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE) {
        Some(v) => (v, false),
        None => {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
                true,
            )
        }
    }
}

fn browser(headers: &HeaderMap, form_csrf: Option<&str>) -> Browser {
    let csrf_ok = match (cookie(headers, CSRF_COOKIE), form_csrf) {
        (Some(c), Some(f)) => constant_time_eq(c.as_bytes(), f.as_bytes()),
        _ => false,
    };
    Browser {
        signin: cookie(headers, SIGNIN_COOKIE),
        csrf_ok,
    }
}

async fn authorize_get(
    State(app): State<AppState>,
    Context(ctx): Context,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(pairs) = form_pairs(&Bytes::from(query.unwrap_or_default())) else {
        return error_page(&headers, "the request's query string is malformed");
    };
    let b = browser(&headers, None);
    let step = app.authorize(pairs, &b, &ctx).await;
    answer(step, &headers, StatusCode::FOUND)
}

async fn authorize_post(
    State(app): State<AppState>,
    Context(ctx): Context,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_form(&headers) {
        return error_page(
            &headers,
            "the form must be sent as application/x-www-form-urlencoded",
        );
    }
    let Some(pairs) = form_pairs(&body) else {
        return error_page(&headers, "the form is malformed");
    };
    let take = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let b = browser(&headers, take("csrf").as_deref());
    let request: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "csrf" | "username" | "password" | "ticket" | "consent"
            )
        })
        .cloned()
        .collect();
    let step = if let Some(username) = take("username") {
        let password = take("password").unwrap_or_default();
        app.authorize_sign_in(request, &username, password, &b, &ctx)
            .await
    } else if let Some(consent) = take("consent") {
        let ticket = take("ticket").unwrap_or_default();
        app.authorize_consent(request, &ticket, consent == "allow", &b, &ctx)
            .await
    } else {
        // OpenID Connect Core §3.1.2.1: the request itself may come as a form POST.
        app.authorize(request, &b, &ctx).await
    };
    answer(step, &headers, StatusCode::SEE_OTHER)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn answer(
    step: Result<AuthorizeStep, AuthorizeError>,
    headers: &HeaderMap,
    redirect_status: StatusCode,
) -> Response {
    let (csrf, new_csrf) = csrf_token(headers);
    let mut response = match step {
        Err(AuthorizeError::Page(message)) => return error_page(headers, &message),
        Err(AuthorizeError::Redirect(location)) => redirect(redirect_status, &location),
        Ok(AuthorizeStep::Redirect { location, signin }) => {
            let mut r = redirect(redirect_status, &location);
            if let Some(s) = signin {
                let c = format!(
                    "{SIGNIN_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
                    s.value, s.max_age_seconds
                );
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Ok(AuthorizeStep::SignIn { request, error }) => html(
            StatusCode::OK,
            &sign_in_page(&request, &csrf, error.as_deref()),
            Some(&request),
        ),
        Ok(AuthorizeStep::Consent {
            request,
            username,
            ticket,
        }) => html(
            StatusCode::OK,
            &consent_page(&request, &csrf, &username, &ticket),
            Some(&request),
        ),
    };
    if new_csrf {
        let c = format!("{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; Secure; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// HTML text with `& < > " '` escaped: every value put into a page goes through this.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The origin a form of this page may end up at (the client's redirect URI's), for
/// `form-action`: browsers apply it to the redirect after a form is sent. Only when it is made
/// of characters that cannot end a CSP directive.
fn redirect_origin(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    let origin = match rest.strip_prefix("//") {
        Some(authority) => format!("{scheme}://{}", authority.split(['/', '?']).next()?),
        None => format!("{scheme}:"),
    };
    origin
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-.:/[]".contains(c))
        .then_some(origin)
}

pub(super) fn html(
    status: StatusCode,
    body: &str,
    request: Option<&AuthorizationRequest>,
) -> Response {
    let form_action = request
        .and_then(|r| redirect_origin(&r.redirect_uri))
        .map_or_else(|| "'self'".to_owned(), |o| format!("'self' {o}"));
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; \
         form-action {form_action}; frame-ancestors 'none'"
    );
    let mut r = (status, body.to_owned()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn layout(title: &str, content: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/shared/style.css\"></head>\
         <body><main class=\"signin\">{content}</main></body></html>\n",
        escape(title)
    )
}

/// An error that must not go back to the client: an unknown client or redirect URI. A page for
/// a browser (it asks for `text/html`); the JSON error shape for any other caller.
pub(super) fn error_page(headers: &HeaderMap, message: &str) -> Response {
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if !browser {
        let mut r = Error::InvalidRequest(message.to_owned()).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    let body = layout(
        "Sign-in error",
        &format!(
            "<h1>This sign-in cannot continue</h1><p id=\"error\">{}</p>",
            escape(message)
        ),
    );
    html(StatusCode::BAD_REQUEST, &body, None)
}

fn hidden_fields(request: &AuthorizationRequest, csrf: &str) -> String {
    let mut out = format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    );
    for (k, v) in &request.params {
        out.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(k),
            escape(v)
        ));
    }
    out
}

fn sign_in_page(request: &AuthorizationRequest, csrf: &str, error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| {
        format!(
            "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>",
            escape(e)
        )
    });
    let hint = request.login_hint.as_deref().unwrap_or("");
    layout(
        "Sign in",
        &format!(
            "<h1>Sign in</h1><p>to continue to <strong>{}</strong></p>{error}\
             <form method=\"post\" action=\"/oauth/authorize\">{}\
             <label for=\"username\">Username</label>\
             <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" \
             autocapitalize=\"none\" spellcheck=\"false\" required value=\"{}\">\
             <label for=\"password\">Password</label>\
             <input id=\"password\" name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required>\
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
            escape(&request.client.name),
            hidden_fields(request, csrf),
            escape(hint),
        ),
    )
}

fn consent_page(
    request: &AuthorizationRequest,
    csrf: &str,
    username: &str,
    ticket: &str,
) -> String {
    let scopes: String = request
        .scopes()
        .map(|s| {
            let what = match s {
                "openid" => "know who you are",
                "profile" => "see your username",
                "offline_access" => "stay signed in when you are away",
                "session" => "use your account's API",
                _ => s,
            };
            format!("<li>{}</li>", escape(what))
        })
        .collect();
    layout(
        "Allow access",
        &format!(
            "<h1>Allow {} to</h1><ul id=\"scopes\">{scopes}</ul><p>Signed in as {}</p>\
             <form method=\"post\" action=\"/oauth/authorize\">{}\
             <input type=\"hidden\" name=\"ticket\" value=\"{}\">\
             <button type=\"submit\" name=\"consent\" value=\"allow\" id=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"consent\" value=\"deny\" id=\"deny\">Deny</button></form>",
            escape(&request.client.name),
            escape(username),
            hidden_fields(request, csrf),
            escape(ticket),
        ),
    )
}

fn clear_signin(mut r: Response) -> Response {
    let c = format!("{SIGNIN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn end_session_get(
    State(app): State<AppState>,
    Context(ctx): Context,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(pairs) = form_pairs(&Bytes::from(query.unwrap_or_default())) else {
        return error_page(&headers, "the request's query string is malformed");
    };
    let step = app
        .end_session(pairs, &browser(&headers, None), false, &ctx)
        .await;
    end_session_answer(step, &headers, StatusCode::FOUND)
}

async fn end_session_post(
    State(app): State<AppState>,
    Context(ctx): Context,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_form(&headers) {
        return error_page(
            &headers,
            "the form must be sent as application/x-www-form-urlencoded",
        );
    }
    let Some(mut pairs) = form_pairs(&body) else {
        return error_page(&headers, "the form is malformed");
    };
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone());
    let confirmed = pairs.iter().any(|(k, v)| k == "confirm" && v == "yes");
    pairs.retain(|(k, _)| k != "csrf" && k != "confirm");
    let b = browser(&headers, csrf.as_deref());
    let step = app.end_session(pairs, &b, confirmed, &ctx).await;
    end_session_answer(step, &headers, StatusCode::SEE_OTHER)
}

fn end_session_answer(
    step: Result<EndSessionStep, AuthorizeError>,
    headers: &HeaderMap,
    redirect_status: StatusCode,
) -> Response {
    match step {
        Err(AuthorizeError::Page(m)) | Err(AuthorizeError::Redirect(m)) => error_page(headers, &m),
        Ok(EndSessionStep::Redirect(location)) => {
            clear_signin(redirect(redirect_status, &location))
        }
        Ok(EndSessionStep::SignedOut) => clear_signin(html(
            StatusCode::OK,
            &layout(
                "Signed out",
                "<h1 id=\"signed-out\">You are signed out</h1><p>You may close this window.</p>",
            ),
            None,
        )),
        Ok(EndSessionStep::Confirm { params }) => {
            let (csrf, new_csrf) = csrf_token(headers);
            let mut fields = format!(
                "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
                escape(&csrf)
            );
            for (k, v) in &params {
                fields.push_str(&format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    escape(k),
                    escape(v)
                ));
            }
            let body = layout(
                "Sign out",
                &format!(
                    "<h1>Sign out?</h1><form method=\"post\" action=\"/oauth/end_session\">\
                     {fields}<button type=\"submit\" name=\"confirm\" value=\"yes\" \
                     id=\"confirm\">Sign out</button></form>"
                ),
            );
            let mut r = html(StatusCode::OK, &body, None);
            // The form may end at the client's post-logout redirect URI.
            if let Some(o) = params
                .iter()
                .find(|(k, _)| k == "post_logout_redirect_uri")
                .and_then(|(_, v)| redirect_origin(v))
            {
                let csp = format!(
                    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; \
                     form-action 'self' {o}; frame-ancestors 'none'"
                );
                if let Ok(v) = HeaderValue::from_str(&csp) {
                    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
                }
            }
            if new_csrf {
                let c = format!("{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; Secure; SameSite=Strict");
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
    }
}

/// `/oauth/userinfo` (GET and POST): the claims of the access token's user (OpenID Connect
/// Core §5.3), for a Bearer or DPoP token with the `openid` scope.
async fn userinfo(
    State(app): State<AppState>,
    Caller(principal): Caller,
) -> Result<Response, Error> {
    let principal = principal.ok_or(Error::MissingToken)?;
    let claims = app.userinfo(&principal).await?;
    let mut r = Json(claims).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
