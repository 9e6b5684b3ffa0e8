//! The OAuth endpoints, driven by a real OAuth client library where one applies, plus API keys
//! and the revocation feed that resource servers use.

use crate::helpers::*;
use oauth2::basic::BasicClient;
use oauth2::{
    AsyncHttpClient, ClientId, RevocationUrl, StandardRevocableToken, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use serde_json::Value;

/// An API key made the way an operator makes one: through the service, shown once.
async fn api_key(app: &TestApp, role: &str) -> String {
    let (_, key) = app
        .service
        .create_api_key("resource server", vec![role.to_owned()])
        .await
        .unwrap();
    key.expose().to_owned()
}

async fn form(
    app: &TestApp,
    path: &str,
    pairs: &[(&str, &str)],
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).form(pairs);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap()
}

async fn introspect(app: &TestApp, key: &str, token: &str) -> Value {
    let r = form(app, "/oauth/introspect", &[("token", token)], Some(key)).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// An OAuth error: status, `no-store`, and `{error, error_description}`; returns the code.
async fn oauth_error(r: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_oauth2_client_library_refreshes_and_revokes_without_custom_code() {
    let app = spawn_app().await;
    app.register("alice").await;
    let tokens = app.login("alice").await;

    let client = BasicClient::new(ClientId::new("first-party-app".into()))
        .set_token_uri(TokenUrl::new(app.url("/oauth/token")).unwrap())
        // The library insists on an https revocation URL (RFC 7009 §2)...
        .set_revocation_url(
            RevocationUrl::new(app.url("/oauth/revoke").replacen("http://", "https://", 1))
                .unwrap(),
        );
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // ...so this client plays the TLS-terminating proxy in front of the loopback server.
    let http = |mut request: oauth2::HttpRequest| {
        let plain = plain.clone();
        async move {
            let uri = request.uri().to_string().replacen("https://", "http://", 1);
            *request.uri_mut() = uri.parse().unwrap();
            plain.call(request).await
        }
    };

    let refreshed = client
        .exchange_refresh_token(&oauth2::RefreshToken::new(tokens.refresh.clone()))
        .request_async(&http)
        .await
        .expect("the refresh grant works");
    let new_refresh = refreshed.refresh_token().expect("a rotated refresh token");
    assert_ne!(new_refresh.secret(), &tokens.refresh, "rotated");
    assert!(refreshed.expires_in().is_some());
    let access = refreshed.access_token().secret().clone();
    assert_eq!(app.me(&access).await.status(), StatusCode::OK);

    // Past the late-retry window the spent token is reuse, which the library sees as an OAuth
    // error.
    app.clock.advance(chrono::Duration::minutes(11));
    let reused = client
        .exchange_refresh_token(&oauth2::RefreshToken::new(tokens.refresh.clone()))
        .request_async(&http)
        .await;
    assert!(reused.is_err());

    let fresh = app.login("alice").await;
    client
        .revoke_token(StandardRevocableToken::RefreshToken(
            oauth2::RefreshToken::new(fresh.refresh.clone()),
        ))
        .unwrap()
        .request_async(&http)
        .await
        .expect("revocation succeeds");
    assert_eq!(
        error_code(app.refresh(&fresh.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        error_code(app.me(&fresh.access).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn introspection_reports_a_revoked_sessions_unexpired_access_token_inactive() {
    let app = spawn_app().await;
    app.register("alice").await;
    let tokens = app.login("alice").await;
    let key = api_key(&app, "resource_server").await;

    let live = introspect(&app, &key, &tokens.access).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sid"], tokens.session_id.as_str());
    assert_eq!(live["token_type"], "Bearer");
    let refresh = introspect(&app, &key, &tokens.refresh).await;
    assert_eq!(refresh["active"], true, "{refresh}");

    // Revoke by access token (RFC 7009): the session ends, the JWT itself has not expired.
    let r = form(
        &app,
        "/oauth/revoke",
        &[
            ("token", &tokens.access),
            ("token_type_hint", "access_token"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        introspect(&app, &key, &tokens.access).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        introspect(&app, &key, &tokens.refresh).await["active"],
        false
    );
    // Garbage and unknown tokens look the same as revoked ones.
    assert_eq!(introspect(&app, &key, "not-a-token").await["active"], false);
    // Revoking an unknown token is not an error (RFC 7009 §2.2).
    let r = form(&app, "/oauth/revoke", &[("token", "sdrt_unknown")], None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn introspection_needs_a_key_with_the_right_role_and_a_revoked_key_stops_working() {
    let app = spawn_app().await;
    app.register("alice").await;
    let tokens = app.login("alice").await;

    let r = form(
        &app,
        "/oauth/introspect",
        &[("token", &tokens.access)],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    // An ordinary user's access token is not enough.
    let r = form(
        &app,
        "/oauth/introspect",
        &[("token", &tokens.access)],
        Some(&tokens.access),
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::FORBIDDEN).await,
        "insufficient_scope"
    );

    let (stored, key) = app
        .service
        .create_api_key("gateway", vec!["resource_server".into()])
        .await
        .unwrap();
    assert_eq!(
        introspect(&app, key.expose(), &tokens.access).await["active"],
        true
    );
    app.service.revoke_api_key(stored.key_id).await.unwrap();
    let r = form(
        &app,
        "/oauth/introspect",
        &[("token", &tokens.access)],
        Some(key.expose()),
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    // The log records both, and never the key or its hash.
    let events = app.all_events().await;
    let kinds = types(&events);
    assert!(kinds.contains(&"api_key.created") && kinds.contains(&"api_key.revoked"));
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(key.expose()));
    assert!(!all.contains(&key.hash().to_hex()));
}

#[tokio::test]
async fn the_token_endpoint_speaks_oauth_errors_and_the_password_grant_can_be_turned_off() {
    // The password grant is off unless configured (RFC 9700 §2.4): this server turns it on.
    let app = spawn_app_with(|c| c.oauth_password_grant = true).await;
    app.register("alice").await;

    let r = app
        .post_json(
            "/oauth/token",
            serde_json::json!({"grant_type": "refresh_token"}),
        )
        .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    let r = form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
    let r = form(
        &app,
        "/oauth/token",
        &[("grant_type", "authorization_code"), ("code", "x")],
        None,
    )
    .await;
    // The code grant exists now (issue 14); without client authentication it is refused.
    assert_eq!(
        oauth_error(r, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );
    let r = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "sdrt_nope"),
        ],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    let r = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wrong password!"),
        ],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    let r = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
            ("scope", "admin"),
        ],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_scope"
    );

    let r = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "session");
    assert!(body["refresh_token"].as_str().unwrap().starts_with("sdrt_"));

    let closed = spawn_app_with(|c| c.oauth_password_grant = false).await;
    closed.register("alice").await;
    let r = form(
        &closed,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
        None,
    )
    .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn server_metadata_names_every_endpoint_and_they_answer() {
    let app = spawn_app_with(|c| c.public_url = Some("https://sso.example".into())).await;
    let r = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let meta: Value = r.json().await.unwrap();
    // The issuer is the public URL, exactly as OIDC discovery says (issue 14).
    assert_eq!(meta["issuer"], "https://sso.example");
    for (field, path) in [
        ("token_endpoint", "/oauth/token"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("introspection_endpoint", "/oauth/introspect"),
        ("jwks_uri", "/.well-known/jwks.json"),
    ] {
        assert_eq!(meta[field], format!("https://sso.example{path}"), "{field}");
    }
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["refresh_token", "authorization_code", "client_credentials"]),
        "the password grant is off by default"
    );
    let jwks_path = meta["jwks_uri"]
        .as_str()
        .unwrap()
        .strip_prefix("https://sso.example")
        .unwrap()
        .to_owned();
    let jwks: Value = app
        .http
        .get(app.url(&jwks_path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_revocation_feed_lists_sessions_revoked_within_an_access_token_lifetime() {
    let app = spawn_app().await;
    app.register("alice").await;
    let key = api_key(&app, "resource_server").await;
    let feed = |after: i64| {
        let app = &app;
        let key = key.clone();
        async move {
            let r = app
                .http
                .get(app.url(&format!("/v1/revocations?after={after}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };

    let kept = app.login("alice").await;
    let gone = app.login("alice").await;
    let empty = feed(0).await;
    assert_eq!(empty["revocations"], serde_json::json!([]));

    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&gone.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let page = feed(0).await;
    let list = page["revocations"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{page}");
    assert_eq!(list[0]["session_id"], gone.session_id.as_str());
    assert_eq!(list[0]["reason"], "logout");
    assert_eq!(page["window_seconds"], 660);
    // From the cursor on there is nothing new.
    let cursor = page["next_cursor"].as_i64().unwrap();
    assert_eq!(feed(cursor).await["revocations"], serde_json::json!([]));
    assert_eq!(feed(cursor).await["next_cursor"], cursor);

    // Once every access token of that session has expired, it drops out of the feed.
    app.clock.advance(chrono::Duration::minutes(12));
    assert_eq!(feed(0).await["revocations"], serde_json::json!([]));
    let kept = app.refresh_ok(&kept.refresh).await;

    // Who may read it, and what bad input gets.
    let r = app
        .http
        .get(app.url("/v1/revocations"))
        .bearer_auth(&kept.access)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
    let r = app
        .http
        .get(app.url("/v1/revocations?after=-3"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_query"
    );
    let r = app
        .http
        .get(app.url("/v1/revocations?since=yesterday"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
}
