//! Secure defaults (issue 11, points 3 and 4): weak passwords refused, the password grant off,
//! access tokens typed `at+jwt` and nothing else accepted as one, the `__Secure-` cookie, OAuth
//! links never from the request's Host, and `X-Forwarded-For` walked only to the first bad entry.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::Clock;

#[tokio::test]
async fn weak_and_common_passwords_are_refused_on_register_and_change_with_the_reason() {
    let app = spawn_app().await;
    let events = app.event_count().await;
    for weak in ["password123", "qwertyuiop", "lauralaura1"] {
        let r = app
            .post_json(
                "/v1/auth/register",
                json!({"username": "laura", "password": weak}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{weak}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "weak_password");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("too easy to guess"),
            "{body}"
        );
        assert!(!body["message"].as_str().unwrap().contains(weak));
    }
    assert_eq!(app.event_count().await, events, "nothing was registered");
    // The suite's own passphrase is strong enough.
    app.register("laura").await;
    let tokens = app.login("laura").await;
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&tokens.access)
        .json(&json!({"current_password": PASSWORD, "new_password": "iloveyou2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "weak_password"
    );
    // The old password still works: nothing changed.
    app.login("laura").await;
}

#[tokio::test]
async fn the_password_grant_is_off_unless_configured() {
    let app = spawn_app().await;
    app.register("mallory").await;
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "mallory"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert!(
        !app.all_events()
            .await
            .iter()
            .any(|e| e.event_type.starts_with("login.")),
        "no password was checked"
    );
}

fn jwt_header(jwt: &str) -> Value {
    use base64::Engine;
    let head = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn access_tokens_are_at_jwt_and_a_security_event_token_never_passes_as_one() {
    let app = spawn_app().await;
    app.register("niaj").await;
    let tokens = app.login("niaj").await;
    assert_eq!(jwt_header(&tokens.access)["typ"], "at+jwt");
    assert_eq!(app.me(&tokens.access).await.status(), StatusCode::OK);

    // The attacker's token: the service's own key, the access token's very claims, but the
    // type of a CAEP security event token (what webhook receivers are sent).
    let claims = app
        .service
        .tokens
        .verify(&tokens.access, app.clock.now())
        .unwrap();
    let set = app.service.tokens.sign_typed("secevent+jwt", &claims);
    assert_eq!(jwt_header(&set)["typ"], "secevent+jwt");
    let r = app.me(&set).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    // Nor as anything else that reads access tokens: a plain JWT type is refused too.
    let plain = app.service.tokens.sign_typed("JWT", &claims);
    let r = app.me(&plain).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn the_refresh_cookie_is_secure_prefixed() {
    let app = spawn_app().await;
    app.register("olivia").await;
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({"username": "olivia", "password": PASSWORD, "mode": "cookie"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Secure-sessiond_refresh=sdrt_"),
        "{cookie}"
    );
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"));
}

#[tokio::test]
async fn oauth_metadata_links_never_come_from_the_host_header() {
    let app = spawn_app().await;
    // The attacker's request: a Host of their choosing, hoping for links to their server.
    let r = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains("evil.example"), "{text}");
    let meta: Value = serde_json::from_str(&text).unwrap();
    let listen = app.service.config.listen;
    assert_eq!(
        meta["token_endpoint"],
        format!("http://{listen}/oauth/token")
    );
    assert!(
        captured_logs().contains("public_url is not set"),
        "the start warned that links fall back to the listen address"
    );

    let configured = spawn_app_with(|c| c.public_url = Some("https://id.example.com".into())).await;
    let meta: Value = configured
        .http
        .get(configured.url("/.well-known/oauth-authorization-server"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["token_endpoint"], "https://id.example.com/oauth/token");
}

#[tokio::test]
async fn an_unparseable_forwarded_entry_is_the_client_address_boundary() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.register("peggy").await;
    // The attacker's header: their chosen address left of a garbage entry, hoping the walk
    // skips the garbage and takes the address they wrote.
    let r = post_from(
        &app,
        "/v1/auth/login",
        json!({"username": "peggy", "password": PASSWORD}),
        "192.0.2.77, not-an-address",
        FIREFOX,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens = Tokens::from_json(&r.json().await.unwrap());
    let me: Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(
        me["session"]["ip"], "127.0.0.1",
        "the last known hop, not 192.0.2.77"
    );
}
