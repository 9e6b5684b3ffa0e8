//! Signing out by the refresh cookie (`POST /v1/auth/refresh/logout`): works whether or not the
//! access token has expired, always clears the cookie, and is refused across sites.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

/// Logs in in cookie mode; returns the `name=value` pair of the refresh cookie and the session.
async fn cookie_login(app: &TestApp, username: &str) -> (String, String) {
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({ "username": username, "password": PASSWORD, "mode": "cookie" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("Path=/v1/auth/refresh"), "{set}");
    let pair = set.split(';').next().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    (pair, body["session_id"].as_str().unwrap().to_owned())
}

fn origin(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

async fn live(app: &TestApp, session_id: &str) -> bool {
    app.service
        .store
        .session(session_id.parse().unwrap())
        .await
        .unwrap()
        .is_some_and(|s| s.is_active())
}

#[tokio::test]
async fn a_browser_signs_out_by_its_cookie_after_the_access_token_expired() {
    let app = spawn_app().await;
    app.register("alice").await;
    let (cookie, session_id) = cookie_login(&app, "alice").await;
    app.clock.advance(chrono::Duration::minutes(30));

    let r = app
        .http
        .post(app.url("/v1/auth/refresh/logout"))
        .header("cookie", &cookie)
        .header("origin", origin(&app))
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    let name = cookie.split('=').next().unwrap();
    assert!(
        cleared.starts_with(&format!("{name}=;")) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(cleared.contains("Path=/v1/auth/refresh"), "{cleared}");
    assert!(!live(&app, &session_id).await, "the session ended");
    let revoked = app.session_events(&session_id).await;
    assert_eq!(revoked.last().unwrap().event_type, "session.revoked");

    // The cookie no longer refreshes.
    let r = app
        .http
        .post(app.url("/v1/auth/refresh"))
        .header("cookie", &cookie)
        .header("origin", origin(&app))
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Signing out again (a second tab, a double click) still answers 204 and clears the cookie.
    for extra in [Some(cookie.as_str()), None] {
        let mut req = app
            .http
            .post(app.url("/v1/auth/refresh/logout"))
            .header("origin", origin(&app))
            .header("x-sessiond-csrf", "1");
        if let Some(c) = extra {
            req = req.header("cookie", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(
            r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }
}

#[tokio::test]
async fn a_cross_site_sign_out_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    app.register("alice").await;
    let (cookie, session_id) = cookie_login(&app, "alice").await;
    // A form on another site posting to the sign-out route: the browser adds the cookie, but
    // cannot add the custom header; with the header, the Origin gives it away.
    let attempts = [
        vec![("origin", origin(&app))],
        vec![
            ("origin", "https://evil.example".to_owned()),
            ("x-sessiond-csrf", "1".to_owned()),
        ],
        vec![("x-sessiond-csrf", "1".to_owned())],
    ];
    for headers in attempts {
        let mut req = app
            .http
            .post(app.url("/v1/auth/refresh/logout"))
            .header("cookie", &cookie);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{headers:?}");
        assert_eq!(
            error_code(r, StatusCode::FORBIDDEN).await,
            "csrf_rejected",
            "{headers:?}"
        );
        assert!(live(&app, &session_id).await, "{headers:?}");
    }
}
