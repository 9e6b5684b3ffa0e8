//! The auth API end to end: register, login, refresh, logout, logout everywhere, password change,
//! `GET /v1/me`, cookie mode and the JWKS.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn the_whole_lifecycle_is_served_and_logged() {
    let app = spawn_app().await;
    let user_id = app.register("alice").await;
    let t1 = app.login("alice").await;
    assert!(t1.refresh.starts_with("sdrt_"));
    assert!(
        t1.expires_in >= 540 && t1.expires_in <= 600,
        "10 minutes less a small jitter: {}",
        t1.expires_in
    );

    let me: Value = app.me(&t1.access).await.json().await.unwrap();
    assert_eq!(me["user"]["username"], "alice");
    assert_eq!(me["user"]["user_id"], user_id.as_str());
    assert_eq!(me["session"]["session_id"], t1.session_id.as_str());
    assert_eq!(me["session"]["ip"], "127.0.0.1");
    assert_eq!(me["session"]["device"]["browser"], "Firefox");

    let t2 = app.refresh_ok(&t1.refresh).await;
    assert_eq!(
        t2.session_id, t1.session_id,
        "a refresh stays in its family"
    );
    assert_ne!(t2.refresh, t1.refresh, "the refresh token rotates");
    assert_eq!(app.me(&t2.access).await.status(), StatusCode::OK);

    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&t2.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_code(app.refresh(&t2.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    // The access token has not expired, but its session has ended.
    assert_eq!(
        error_code(app.me(&t2.access).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let events = app.session_events(&t1.session_id).await;
    assert_eq!(
        types(&events),
        ["session.started", "session.refreshed", "session.revoked"]
    );
    assert_eq!(data(&events[2])["reason"], "logout");
    let started = data(&events[0]);
    assert_eq!(started["context"]["ip"], "127.0.0.1");
    assert_eq!(started["context"]["user_agent"], FIREFOX);
    let meta: Value = serde_json::from_str(&events[0].metadata).unwrap();
    assert_eq!(meta["actor"]["kind"], "user");
    let positions: Vec<i64> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(positions, [1, 2, 3]);
}

#[tokio::test]
async fn logout_by_refresh_token_ends_that_session() {
    let app = spawn_app().await;
    app.register("bob").await;
    let t = app.login("bob").await;
    let r = app
        .post_json("/v1/auth/logout", json!({ "refresh_token": t.refresh }))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_code(app.me(&t.access).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let r = app.post_json("/v1/auth/logout", json!({})).await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a body without a token is malformed"
    );
    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "unauthorized"
    );
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_only() {
    let app = spawn_app().await;
    app.register("carol").await;
    app.register("dave").await;
    let laptop = app.login("carol").await;
    let phone = app.login("carol").await;
    let other_user = app.login("dave").await;

    let r = app
        .http
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(&phone.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for t in [&laptop, &phone] {
        assert_eq!(
            error_code(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED).await,
            "invalid_grant"
        );
        assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
    }
    app.refresh_ok(&other_user.refresh).await;
    let revoked = app.session_events(&laptop.session_id).await;
    assert_eq!(data(revoked.last().unwrap())["reason"], "logout_everywhere");
}

#[tokio::test]
async fn a_password_change_ends_the_other_sessions_and_keeps_this_one() {
    let app = spawn_app().await;
    app.register("erin").await;
    let here = app.login("erin").await;
    let elsewhere = app.login("erin").await;

    let change = |current: &'static str, new: &'static str| {
        app.http
            .post(app.url("/v1/auth/password"))
            .bearer_auth(&here.access)
            .json(&json!({ "current_password": current, "new_password": new }))
            .send()
    };
    let wrong = change("not the password", "a brand new password")
        .await
        .unwrap();
    assert_eq!(
        error_code(wrong, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    let short = change(PASSWORD, "short").await.unwrap();
    assert_eq!(
        error_code(short, StatusCode::BAD_REQUEST).await,
        "invalid_password"
    );
    assert_eq!(
        app.me(&elsewhere.access).await.status(),
        StatusCode::OK,
        "failed changes end nothing"
    );

    assert_eq!(
        change(PASSWORD, "a brand new password")
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.me(&elsewhere.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        error_code(
            app.refresh(&elsewhere.refresh).await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "invalid_grant"
    );
    assert_eq!(app.me(&here.access).await.status(), StatusCode::OK);
    app.refresh_ok(&here.refresh).await;

    assert_eq!(
        app.login_as("erin", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login_as("erin", "a brand new password").await.status(),
        StatusCode::OK
    );
    let ended = app.session_events(&elsewhere.session_id).await;
    assert_eq!(data(ended.last().unwrap())["reason"], "password_change");
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.register("frank").await;
    let before = app.event_count().await;
    let wrong = app.login_as("frank", "wrong password!").await;
    let unknown = app.login_as("nobody-by-that-name", "wrong password!").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let (a, b): (Value, Value) = (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(a, b);
    assert_eq!(a["error"], "invalid_credentials");
    // Both attempts are recorded for the rules to count.
    let events = app.all_events().await;
    assert_eq!(types(&events[before..]), ["login.failed", "login.failed"]);
    assert_eq!(data(&events[before])["reason"], "bad_password");
    assert_eq!(data(&events[before + 1])["reason"], "unknown_user");
}

#[tokio::test]
async fn usernames_are_unique_regardless_of_case_and_registration_can_be_turned_off() {
    let app = spawn_app().await;
    app.register("Grace").await;
    let r = app
        .post_json(
            "/v1/auth/register",
            json!({ "username": "grace", "password": PASSWORD }),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "username_taken");
    app.login("GRACE").await;

    let closed = spawn_app_with(|c| c.registration_enabled = false).await;
    let r = closed
        .post_json(
            "/v1/auth/register",
            json!({ "username": "heidi", "password": PASSWORD }),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "registration_disabled"
    );
    assert_eq!(
        closed.event_count().await,
        4,
        "only the signing keys' events (created and activated, EdDSA and RS256)"
    );
}

#[tokio::test]
async fn the_access_token_verifies_against_the_jwks_by_kid() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let app = spawn_app().await;
    let user_id = app.register("ivan").await;
    let t = app.login("ivan").await;

    let header = jsonwebtoken::decode_header(&t.access).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid in the header");
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the kid is published");
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["sessiond"]);
    validation.set_issuer(&["sessiond"]);
    let claims: Value = jsonwebtoken::decode(&t.access, &key, &validation)
        .unwrap()
        .claims;
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "sid",
        "scope",
        "auth_time",
    ] {
        assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
    }
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["sid"], t.session_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        t.expires_in
    );
}

#[tokio::test]
async fn cookie_mode_keeps_the_refresh_token_out_of_reach_of_scripts() {
    let app =
        spawn_app_with(|c| c.cookie_allowed_origins = vec!["https://app.example".into()]).await;
    app.register("judy").await;
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({ "username": "judy", "password": PASSWORD, "mode": "cookie" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/v1/auth/refresh",
    ] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing from {cookie}"
        );
    }
    let body: Value = r.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "the token is only in the cookie"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();

    let refresh = |origin: Option<&'static str>, csrf: bool| {
        let mut req = app
            .http
            .post(app.url("/v1/auth/refresh"))
            .header("cookie", pair.clone());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if csrf {
            req = req.header("x-sessiond-csrf", "1");
        }
        req.send()
    };
    let before = app.event_count().await;
    let r = refresh(Some("https://app.example"), false).await.unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_rejected");
    let r = refresh(Some("https://evil.example"), true).await.unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_rejected");
    let r = refresh(None, true).await.unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_rejected");
    assert_eq!(
        app.event_count().await,
        before,
        "refused refreshes change nothing"
    );

    let r = refresh(Some("https://app.example"), true).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rotated = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        rotated.starts_with("__Secure-sessiond_refresh=sdrt_") && !rotated.starts_with(&pair),
        "a new cookie: {rotated}"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["access_token"].is_string() && body.get("refresh_token").is_none());
}
