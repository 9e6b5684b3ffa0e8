//! The live admin stream re-checks its caller's authority while it runs: it ends once the
//! caller's session is revoked, the user locked, the security role removed or the API key
//! revoked, and one caller may hold only so many streams at once.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

async fn analyst(app: &TestApp, name: &str) -> Tokens {
    app.service
        .register(
            name,
            PASSWORD.into(),
            vec!["security".into()],
            &Default::default(),
        )
        .await
        .unwrap();
    app.login(name).await
}

/// A stream checking every second (the default is five), so the tests end quickly.
async fn quick_app() -> TestApp {
    spawn_app_with(|c| {
        c.admin_stream_recheck_interval = sessiond::domain::Duration::seconds(1);
    })
    .await
}

async fn open(app: &TestApp, bearer: &str) -> reqwest::Response {
    let r = app
        .http
        .get(app.url("/v1/admin/stream"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the stream opens");
    r
}

/// Reads the stream until the server ends it; panics if it is still open after `limit`.
async fn ends_within(mut r: reqwest::Response, limit: Duration) {
    let done = tokio::time::timeout(limit, async {
        loop {
            match r.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the stream was still open after {limit:?}");
}

/// The stream is open and delivering: an event committed now arrives on it.
async fn delivers(app: &TestApp, r: &mut reqwest::Response) {
    app.register(&format!(
        "probe-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
    .await;
    let mut seen = String::new();
    while !seen.contains("user.registered") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_stream_whose_api_key_is_revoked_is_closed_within_ten_seconds() {
    // The default recheck interval: the acceptance bound holds as shipped.
    let app = spawn_app().await;
    let (stored, key) = app
        .service
        .create_api_key("siem", vec!["security".into()])
        .await
        .unwrap();
    // GET /v1/admin/stream with Authorization: Bearer sdak_…, then the key is revoked.
    let mut stream = open(&app, key.expose()).await;
    delivers(&app, &mut stream).await;
    app.service.revoke_api_key(stored.key_id).await.unwrap();
    ends_within(stream, Duration::from_secs(10)).await;
    // And it cannot be reopened.
    let r = app
        .http
        .get(app.url("/v1/admin/stream"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn a_stream_ends_when_its_callers_session_is_revoked() {
    let app = quick_app().await;
    let admin = analyst(&app, "analyst").await;
    let mut stream = open(&app, &admin.access).await;
    delivers(&app, &mut stream).await;
    // The analyst signs out: the access token is still unexpired, the session is not.
    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    ends_within(stream, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_stream_ends_when_its_user_is_locked() {
    let app = quick_app().await;
    let admin = analyst(&app, "analyst").await;
    let other = analyst(&app, "lead").await;
    let admin_id = app
        .service
        .store
        .user_by_name("analyst")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let mut stream = open(&app, &admin.access).await;
    delivers(&app, &mut stream).await;
    let r = app
        .http
        .post(app.url(&format!("/v1/admin/users/{admin_id}/lock")))
        .bearer_auth(&other.access)
        .json(&json!({ "reason": "left the company" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    ends_within(stream, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_stream_ends_when_the_security_role_is_removed_and_the_old_token_no_longer_opens_one() {
    let app = quick_app().await;
    let admin = analyst(&app, "analyst").await;
    let mut stream = open(&app, &admin.access).await;
    delivers(&app, &mut stream).await;
    app.service
        .set_roles("analyst", vec!["user".into()])
        .await
        .unwrap();
    ends_within(stream, Duration::from_secs(10)).await;
    // The access token minted while the role was held still carries it: it is not enough.
    let r = app
        .http
        .get(app.url("/v1/admin/stream"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
}

#[tokio::test]
async fn one_caller_may_hold_only_so_many_streams() {
    let app = spawn_app_with(|c| c.admin_stream_max_per_caller = 2).await;
    let (_, key) = app
        .service
        .create_api_key("siem", vec!["security".into()])
        .await
        .unwrap();
    let first = open(&app, key.expose()).await;
    let _second = open(&app, key.expose()).await;
    // The third concurrent GET /v1/admin/stream with the same key.
    let r = app
        .http
        .get(app.url("/v1/admin/stream"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    assert!(body["message"].as_str().unwrap().contains('2'));
    // Another caller is not affected.
    let admin = analyst(&app, "analyst").await;
    let _theirs = open(&app, &admin.access).await;
    drop(first);
    // A slot is given back once the server notices the client left (at its next write).
    app.register("someone").await;
    let mut reopened = None;
    for _ in 0..50 {
        let r = app
            .http
            .get(app.url("/v1/admin/stream"))
            .bearer_auth(key.expose())
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its slot");
}
