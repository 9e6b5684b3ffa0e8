//! The OpenAPI 3.1 description of every route, served at `/openapi.json`. One table below lists
//! each operation; a test checks that every route the router serves is in it.

use super::AppState;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Auth {
    Public,
    /// An access token of a live session.
    User,
    /// The `security` role: an access token carrying it, or an API key with it.
    Security,
    /// An API key with the `resource_server` (or `security`) role.
    ResourceServer,
}

/// What an operation takes in its body.
#[derive(Clone, Copy)]
enum Body {
    None,
    Json(&'static str),
    Form(&'static str),
}

struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    body: Body,
    /// The success status and what it returns (a schema name, or "" for no body).
    ok: (u16, &'static str),
    /// Query parameters, each `name: description`.
    query: &'static [(&'static str, &'static str)],
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    body: Body,
    ok: (u16, &'static str),
) -> Op {
    Op {
        method,
        path,
        tag,
        summary,
        auth,
        body,
        ok,
        query: &[],
    }
}

const SEARCH: &[(&str, &str)] = &[
    (
        "user",
        "a user id: that user's own stream and every one of their sessions",
    ),
    ("session", "a session id"),
    ("type", "event types, repeated or comma-separated"),
    ("ip", "an address or a CIDR prefix"),
    (
        "country",
        "ISO country code of the request's GeoIP location",
    ),
    ("rule", "a rule id (rule.fired events)"),
    ("since", "RFC 3339; events at or after"),
    ("until", "RFC 3339; events before"),
    ("before", "a position: the cursor of the previous page"),
    ("limit", "1 to 1000, default 50"),
];
const PAGE: &[(&str, &str)] = &[
    ("type", "event types, repeated or comma-separated"),
    ("since", "RFC 3339"),
    ("until", "RFC 3339"),
    ("before", "a position: the cursor of the previous page"),
    ("limit", "1 to 1000, default 50"),
];

const AUTHORIZE: &[(&str, &str)] = &[
    ("response_type", "code (the only one)"),
    ("client_id", "a registered client"),
    ("redirect_uri", "exactly one the client registered"),
    ("scope", "openid, profile, offline_access, session"),
    ("state", "echoed back unchanged"),
    ("nonce", "copied into the ID token"),
    ("code_challenge", "BASE64URL(SHA-256(code_verifier))"),
    ("code_challenge_method", "S256 (plain is refused)"),
    ("prompt", "none, login or consent"),
    ("max_age", "seconds since the last password sign-in"),
    ("acr_values", "accepted; one class today"),
    ("login_hint", "prefills the username"),
    (
        "dpop_jkt",
        "RFC 9449 §10: the DPoP key's thumbprint the code is bound to",
    ),
];
const END_SESSION: &[(&str, &str)] = &[
    (
        "id_token_hint",
        "an ID token this server issued (expired is fine)",
    ),
    ("client_id", "the client, when there is no hint"),
    (
        "post_logout_redirect_uri",
        "exactly one the client registered",
    ),
    ("state", "echoed back on the redirect"),
];

fn operations() -> Vec<Op> {
    use Auth::*;
    use Body::*;
    vec![
        op(
            "post",
            "/v1/auth/register",
            "auth",
            "Register a user (when enabled), with an optional e-mail address for sign-in notices",
            Public,
            Json("Registration"),
            (201, "UserId"),
        ),
        op(
            "post",
            "/v1/auth/login",
            "auth",
            "Log in: a session, an access token and a refresh token",
            Public,
            Json("Credentials"),
            (200, "Tokens"),
        ),
        op(
            "post",
            "/v1/auth/refresh",
            "auth",
            "Rotate a refresh token (JSON body, or the cookie with X-Sessiond-CSRF)",
            Public,
            Json("RefreshRequest"),
            (200, "Tokens"),
        ),
        op(
            "post",
            "/v1/auth/reauth",
            "auth",
            "Prove the password again to clear reauth_required",
            User,
            Json("Reauth"),
            (204, ""),
        ),
        op(
            "post",
            "/v1/auth/logout",
            "auth",
            "End the session of the Bearer token or of a refresh token",
            Public,
            Json("RefreshRequest"),
            (204, ""),
        ),
        op(
            "post",
            "/v1/auth/refresh/logout",
            "auth",
            "Sign a browser out by its refresh cookie (with X-Sessiond-CSRF and an allowed Origin), expired access token or not; always clears the cookie",
            Public,
            None,
            (204, ""),
        ),
        op(
            "post",
            "/v1/auth/logout-all",
            "auth",
            "End every session of the caller",
            User,
            None,
            (204, ""),
        ),
        op(
            "post",
            "/v1/auth/password",
            "auth",
            "Change the password; every other session ends (without a token: username and the current password, e.g. after \"this wasn't me\")",
            User,
            Json("PasswordChange"),
            (204, ""),
        ),
        op(
            "get",
            "/v1/me",
            "auth",
            "The caller and the current session",
            User,
            None,
            (200, "Me"),
        ),
        op(
            "get",
            "/v1/me/sessions",
            "devices",
            "The caller's live sessions, the current one marked",
            User,
            None,
            (200, "DeviceList"),
        ),
        op(
            "delete",
            "/v1/me/sessions",
            "devices",
            "Revoke every session but the current one",
            User,
            None,
            (200, "Revoked"),
        ),
        op(
            "delete",
            "/v1/me/sessions/{session_id}",
            "devices",
            "Revoke one of the caller's sessions (404 for anyone else's)",
            User,
            None,
            (204, ""),
        ),
        op(
            "get",
            "/v1/me/notices",
            "devices",
            "The caller's sign-in notices (new device or country), newest first",
            User,
            None,
            (200, "NoticeList"),
        ),
        op(
            "post",
            "/v1/me/notices/{notice_id}/confirm",
            "devices",
            "\"This was me\": the notice's device and network stay quiet until the exception expires",
            User,
            None,
            (200, "NoticeConfirmed"),
        ),
        op(
            "post",
            "/v1/me/notices/{notice_id}/deny",
            "devices",
            "\"This wasn't me\": every session ends and the next login needs a new password",
            User,
            None,
            (200, "NoticeDenied"),
        ),
        op(
            "post",
            "/oauth/token",
            "oauth",
            "Token endpoint (RFC 6749): authorization_code (PKCE), client_credentials, refresh_token (password only when enabled)",
            Public,
            Form("TokenRequest"),
            (200, "OAuthTokens"),
        ),
        op(
            "post",
            "/oauth/revoke",
            "oauth",
            "Revoke a refresh or access token (RFC 7009)",
            Public,
            Form("TokenParam"),
            (200, ""),
        ),
        op(
            "post",
            "/oauth/introspect",
            "oauth",
            "Introspect a token (RFC 7662)",
            ResourceServer,
            Form("TokenParam"),
            (200, "Introspection"),
        ),
        op(
            "get",
            "/.well-known/oauth-authorization-server",
            "oauth",
            "Authorization server metadata (RFC 8414)",
            Public,
            None,
            (200, "Object"),
        ),
        op(
            "get",
            "/.well-known/openid-configuration",
            "oauth",
            "OpenID Provider metadata (OpenID Connect Discovery 1.0); issuer is public_url",
            Public,
            None,
            (200, "Object"),
        ),
        op(
            "get",
            "/.well-known/jwks.json",
            "oauth",
            "The public keys access tokens (EdDSA) and ID and logout tokens (RS256, EdDSA) are signed with",
            Public,
            None,
            (200, "Object"),
        ),
        Op {
            query: &[
                ("after", "a position: the next_cursor of the last page"),
                ("limit", "1 to 5000, default 500"),
            ],
            ..op(
                "get",
                "/v1/revocations",
                "resource servers",
                "Sessions revoked within an access-token lifetime",
                ResourceServer,
                None,
                (200, "RevocationPage"),
            )
        },
        op(
            "get",
            "/v1/admin/users/{user}",
            "security",
            "A user (by id or name) with every session",
            Security,
            None,
            (200, "UserDetail"),
        ),
        Op {
            query: PAGE,
            ..op(
                "get",
                "/v1/admin/users/{user}/timeline",
                "security",
                "A user's timeline, newest first",
                Security,
                None,
                (200, "EventPage"),
            )
        },
        op(
            "get",
            "/v1/admin/users/{user}/places",
            "security",
            "Where a user was seen over all their sessions: places and the legs between them, with distance, time, speed and the rules that judged them",
            Security,
            None,
            (200, "Places"),
        ),
        op(
            "post",
            "/v1/admin/users/{user}/logout-everywhere",
            "security",
            "End every session of a user",
            Security,
            None,
            (200, "Revoked"),
        ),
        op(
            "post",
            "/v1/admin/users/{user}/erase",
            "security",
            "Erase a user: sessions end, personal data in the log reads as erased, the name is free",
            Security,
            None,
            (200, "Erased"),
        ),
        op(
            "post",
            "/v1/admin/users/{user}/lock",
            "security",
            "Lock a user: no login, every session ends",
            Security,
            Json("Reason"),
            (204, ""),
        ),
        op(
            "post",
            "/v1/admin/users/{user}/unlock",
            "security",
            "Unlock a user",
            Security,
            Json("Reason"),
            (204, ""),
        ),
        op(
            "get",
            "/v1/admin/sessions/{session_id}",
            "security",
            "A session with its timeline and refresh-family lineage",
            Security,
            None,
            (200, "SessionDetail"),
        ),
        op(
            "get",
            "/v1/admin/sessions/{session_id}/places",
            "security",
            "Where a session was seen: places and the legs between them, with distance, time, speed and the rules that judged them",
            Security,
            None,
            (200, "Places"),
        ),
        op(
            "get",
            "/v1/admin/sessions/{session_id}/lineage",
            "security",
            "A session's refresh family: generations and parents, who presented each, grace retries, reuse, the revocation",
            Security,
            None,
            (200, "Lineage"),
        ),
        op(
            "post",
            "/v1/admin/sessions/{session_id}/revoke",
            "security",
            "Revoke a session",
            Security,
            None,
            (204, ""),
        ),
        Op {
            query: PAGE,
            ..op(
                "get",
                "/v1/admin/ips/{ip}/timeline",
                "security",
                "Events from an address or prefix (/ as %2F), newest first",
                Security,
                None,
                (200, "EventPage"),
            )
        },
        Op {
            query: SEARCH,
            ..op(
                "get",
                "/v1/admin/events",
                "security",
                "Search events, newest first, with cursor paging",
                Security,
                None,
                (200, "EventPage"),
            )
        },
        Op {
            query: SEARCH,
            ..op(
                "get",
                "/v1/admin/events/export",
                "security",
                "The search's events as NDJSON, oldest first, streamed; with no filter it ends with the covering signed checkpoint (verifiable with `sessiond events verify --export`), with a filter with a line saying it cannot prove completeness",
                Security,
                None,
                (200, "NDJSON"),
            )
        },
        Op {
            query: &[("after", "a position to start after (or send Last-Event-ID)")],
            ..op(
                "get",
                "/v1/admin/stream",
                "security",
                "New events as Server-Sent Events; each id is the event's position",
                Security,
                None,
                (200, "SSE"),
            )
        },
        Op {
            query: &[
                ("rule", "a rule id"),
                ("severity", "low, medium, high, critical"),
                ("mode", "enforce or shadow"),
                ("before", "cursor"),
                ("limit", "1 to 1000"),
            ],
            ..op(
                "get",
                "/v1/admin/alerts",
                "security",
                "Rule firings with their receipts and verdicts (null while unjudged), newest first",
                Security,
                None,
                (200, "AlertPage"),
            )
        },
        op(
            "post",
            "/v1/admin/alerts/{id}/verdict",
            "security",
            "An analyst's verdict on the alert at position {id}, once; a false positive may add an exception for that rule and user",
            Security,
            Json("VerdictRequest"),
            (200, "VerdictRecorded"),
        ),
        op(
            "get",
            "/v1/admin/rules/stats",
            "security",
            "Per rule that fired: alerts, true and false positives, and the share judged false",
            Security,
            None,
            (200, "RuleStats"),
        ),
        op(
            "get",
            "/v1/admin/checkpoints",
            "security",
            "The checkpoint public key and the newest signed checkpoints of the log's head",
            Security,
            None,
            (200, "Checkpoints"),
        ),
        op(
            "get",
            "/v1/admin/webhooks",
            "security",
            "Webhook subscriptions and their delivery state",
            Security,
            None,
            (200, "Object"),
        ),
        op(
            "post",
            "/v1/admin/webhooks",
            "security",
            "Subscribe a URL to events (the secret is shown once)",
            Security,
            Json("WebhookRequest"),
            (201, "Object"),
        ),
        op(
            "delete",
            "/v1/admin/webhooks/{id}",
            "security",
            "Delete a subscription",
            Security,
            None,
            (204, ""),
        ),
        op(
            "get",
            "/v1/admin/clients",
            "security",
            "Registered OAuth clients (never their secrets)",
            Security,
            None,
            (200, "Object"),
        ),
        op(
            "post",
            "/v1/admin/clients",
            "security",
            "Register an OAuth client (a confidential client's secret is shown once)",
            Security,
            Json("ClientRequest"),
            (201, "Object"),
        ),
        op(
            "delete",
            "/v1/admin/clients/{id}",
            "security",
            "Delete an OAuth client",
            Security,
            None,
            (204, ""),
        ),
        Op {
            query: AUTHORIZE,
            ..op(
                "get",
                "/oauth/authorize",
                "oauth",
                "Authorization endpoint (code + PKCE S256): the sign-in or consent page (HTML), or a redirect to the client",
                Public,
                None,
                (200, "Text"),
            )
        },
        op(
            "post",
            "/oauth/authorize",
            "oauth",
            "The sign-in and consent forms (CSRF-protected), or an authorization request sent as a form",
            Public,
            Form("AuthorizeForm"),
            (200, "Text"),
        ),
        op(
            "get",
            "/oauth/userinfo",
            "oauth",
            "OpenID Connect UserInfo: sub, and preferred_username with the profile scope",
            User,
            None,
            (200, "Object"),
        ),
        op(
            "post",
            "/oauth/userinfo",
            "oauth",
            "OpenID Connect UserInfo (POST)",
            User,
            None,
            (200, "Object"),
        ),
        Op {
            query: END_SESSION,
            ..op(
                "get",
                "/oauth/end_session",
                "oauth",
                "RP-initiated logout: id_token_hint, client_id, post_logout_redirect_uri (exactly registered), state",
                Public,
                None,
                (200, "Text"),
            )
        },
        op(
            "post",
            "/oauth/end_session",
            "oauth",
            "RP-initiated logout (form, or the confirmation form)",
            Public,
            Form("EndSessionForm"),
            (200, "Text"),
        ),
        op(
            "get",
            "/healthz",
            "operations",
            "The process is up",
            Public,
            None,
            (200, "Object"),
        ),
        op(
            "get",
            "/readyz",
            "operations",
            "Store reachable, migrations applied, signing key loaded",
            Public,
            None,
            (200, "Object"),
        ),
        op(
            "get",
            "/metrics",
            "operations",
            "Prometheus metrics",
            Public,
            None,
            (200, "Text"),
        ),
        op(
            "get",
            "/openapi.json",
            "operations",
            "This document",
            Public,
            None,
            (200, "Object"),
        ),
    ]
}

fn schema_ref(name: &str) -> Value {
    match name {
        "Object" => json!({ "type": "object" }),
        other => json!({ "$ref": format!("#/components/schemas/{other}") }),
    }
}

fn content(name: &str) -> Value {
    match name {
        "NDJSON" => json!({ "application/x-ndjson": { "schema": { "type": "string" } } }),
        "SSE" => json!({ "text/event-stream": { "schema": { "type": "string" } } }),
        "Text" => json!({ "text/plain": { "schema": { "type": "string" } } }),
        other => json!({ "application/json": { "schema": schema_ref(other) } }),
    }
}

fn operation(o: &Op) -> Value {
    let mut parameters: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    parameters.extend(o.query.iter().map(|(name, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": { "type": "string" } })
    }));
    let error = if o.path.starts_with("/oauth/") {
        "OAuthError"
    } else {
        "Error"
    };
    let mut responses = Map::new();
    let (status, returns) = o.ok;
    let mut ok = json!({ "description": "success" });
    if !returns.is_empty() {
        ok["content"] = content(returns);
    }
    responses.insert(status.to_string(), ok);
    let mut errors = vec![("400", "malformed input")];
    match o.auth {
        Auth::Public => {}
        Auth::User => errors.push(("401", "no valid access token")),
        Auth::Security | Auth::ResourceServer => {
            errors.push(("401", "no valid access token or API key"));
            errors.push(("403", "the credential lacks the role"));
        }
    }
    if o.path.contains('{') {
        errors.push(("404", "no such resource"));
    }
    for (code, text) in errors {
        responses.insert(
            code.into(),
            json!({ "description": text, "content": content(error) }),
        );
    }
    let mut v = json!({
        "tags": [o.tag],
        "summary": o.summary,
        "operationId": format!("{}_{}", o.method, o.path.trim_matches('/').replace(['/', '{', '}', '.', '-'], "_")),
        "responses": responses,
    });
    if !parameters.is_empty() {
        v["parameters"] = Value::Array(parameters);
    }
    match o.body {
        Body::None => {}
        Body::Json(s) => v["requestBody"] = json!({ "required": true, "content": content(s) }),
        Body::Form(s) => {
            v["requestBody"] = json!({ "required": true, "content": {
                "application/x-www-form-urlencoded": { "schema": schema_ref(s) } } })
        }
    }
    match o.auth {
        Auth::Public => {}
        Auth::User => v["security"] = json!([{ "bearer": [] }]),
        Auth::Security | Auth::ResourceServer => {
            v["security"] = json!([{ "bearer": [] }, { "apiKey": [] }])
        }
    }
    v
}

fn object(props: &[(&str, &str)]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, t)| ((*k).to_owned(), json!({ "type": t })))
        .collect();
    json!({ "type": "object", "properties": properties })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in operations() {
        let item = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        item[o.method] = operation(&o);
    }
    let s = |props: &[(&str, &str)]| object(props);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sessiond",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sessions, rotating refresh tokens, reuse detection and an event log. Errors are {error, message} (OAuth routes: {error, error_description}).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "apiKey": { "type": "http", "scheme": "bearer", "description": "an sdak_ API key" },
            },
            "schemas": {
                "Error": s(&[("error", "string"), ("message", "string")]),
                "OAuthError": s(&[("error", "string"), ("error_description", "string")]),
                "Credentials": s(&[("username", "string"), ("password", "string"), ("mode", "string")]),
                "RefreshRequest": s(&[("refresh_token", "string")]),
                "Reauth": s(&[("password", "string")]),
                "Registration": s(&[("username", "string"), ("password", "string"), ("email", "string"), ("mode", "string")]),
                "PasswordChange": s(&[("username", "string"), ("current_password", "string"), ("new_password", "string")]),
                "Reason": s(&[("reason", "string")]),
                "UserId": s(&[("user_id", "string")]),
                "Tokens": s(&[("access_token", "string"), ("token_type", "string"), ("expires_in", "integer"), ("refresh_token", "string"), ("refresh_token_expires_in", "integer"), ("session_id", "string")]),
                "OAuthTokens": s(&[("access_token", "string"), ("token_type", "string"), ("expires_in", "integer"), ("refresh_token", "string"), ("refresh_token_expires_in", "integer"), ("scope", "string")]),
                "TokenRequest": s(&[("grant_type", "string"), ("refresh_token", "string"), ("username", "string"), ("password", "string"), ("scope", "string"), ("code", "string"), ("code_verifier", "string"), ("redirect_uri", "string"), ("client_id", "string"), ("client_secret", "string")]),
                "ClientRequest": s(&[("name", "string"), ("redirect_uris", "array"), ("post_logout_redirect_uris", "array"), ("backchannel_logout_uri", "string"), ("public", "boolean"), ("first_party", "boolean"), ("scopes", "array"), ("grants", "array"), ("id_token_signed_response_alg", "string")]),
                "AuthorizeForm": s(&[("csrf", "string"), ("username", "string"), ("password", "string"), ("ticket", "string"), ("consent", "string"), ("client_id", "string"), ("redirect_uri", "string"), ("code_challenge", "string")]),
                "EndSessionForm": s(&[("csrf", "string"), ("confirm", "string"), ("id_token_hint", "string"), ("client_id", "string"), ("post_logout_redirect_uri", "string"), ("state", "string")]),
                "TokenParam": s(&[("token", "string"), ("token_type_hint", "string")]),
                "Introspection": s(&[("active", "boolean"), ("sub", "string"), ("sid", "string"), ("scope", "string"), ("exp", "integer")]),
                "Me": s(&[("user", "object"), ("session", "object")]),
                "DeviceList": { "type": "array", "items": s(&[("session_id", "string"), ("current", "boolean"), ("device", "object"), ("location", "object"), ("ip", "string"), ("created_at", "string"), ("last_seen_at", "string"), ("status", "string")]) },
                "Revoked": s(&[("revoked", "integer")]),
                "NoticeList": { "type": "array", "items": s(&[("notice_id", "string"), ("session_id", "string"), ("reasons", "array"), ("device", "object"), ("place", "object"), ("created_at", "string"), ("status", "string"), ("answered_at", "string")]) },
                "NoticeConfirmed": s(&[("status", "string"), ("exception_expires_at", "string")]),
                "NoticeDenied": s(&[("status", "string"), ("revoked", "array"), ("password_change_required", "boolean")]),
                "Erased": s(&[("erased", "boolean"), ("revoked", "integer")]),
                "RevocationPage": s(&[("revocations", "array"), ("next_cursor", "integer"), ("window_seconds", "integer")]),
                "EventPage": s(&[("events", "array"), ("next_cursor", "integer")]),
                "Checkpoints": s(&[("public_key", "object"), ("key_id", "string"), ("head", "integer"), ("checkpoints", "array")]),
                "UserDetail": s(&[("user_id", "string"), ("username", "string"), ("roles", "array"), ("status", "string"), ("sessions", "array")]),
                "SessionDetail": s(&[("session", "object"), ("lineage", "array"), ("reuse", "array"), ("timeline", "array")]),
                "Places": s(&[("places", "array"), ("legs", "array")]),
                "Lineage": s(&[("session_id", "string"), ("status", "string"), ("generations", "array"), ("reuse", "array"), ("revoked", "object")]),
                "WebhookRequest": s(&[("url", "string"), ("event_types", "array"), ("format", "string")]),
            },
        },
    });
    // Added apart: one more entry in the literal above passes json!'s recursion limit.
    let schemas = &mut doc["components"]["schemas"];
    schemas["AlertPage"] = s(&[("events", "array"), ("next_cursor", "integer")]);
    schemas["VerdictRequest"] = s(&[
        ("verdict", "string"),
        ("exception", "object"),
        ("note", "string"),
    ]);
    schemas["VerdictRecorded"] = s(&[
        ("position", "integer"),
        ("verdict", "string"),
        ("exception", "object"),
    ]);
    schemas["RuleStats"] = s(&[("rules", "array")]);
    doc
}
