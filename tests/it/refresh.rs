//! The refresh decision over HTTP: rotation, grace retries, reuse and its classes, and a storm of
//! concurrent refreshes of one token.

use crate::helpers::*;
use reqwest::StatusCode;
use sessiond::commands::RequireReauth;
use sessiond::domain::Duration;
use sessiond::domain::event::{Actor, EventMetadata};

async fn reuse_class(app: &TestApp, session_id: &str) -> Option<String> {
    app.session_events(session_id)
        .await
        .iter()
        .find(|e| e.event_type == "session.reuse_detected")
        .map(|e| data(e)["class"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn reuse_after_the_grace_window_kills_the_family_newest_token_included() {
    let app = spawn_app().await;
    app.register("alice").await;
    let t1 = app.login("alice").await;
    let t2 = app.refresh_ok(&t1.refresh).await;
    app.clock.advance(Duration::seconds(31));

    assert_eq!(
        error_code(app.refresh(&t1.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        error_code(app.refresh(&t2.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(app.me(&t2.access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("previous_after_grace")
    );
    let events = app.session_events(&t1.session_id).await;
    assert_eq!(
        types(&events),
        [
            "session.started",
            "session.refreshed",
            "session.reuse_detected",
            "session.revoked"
        ],
        "the later refusal of the dead family records nothing more"
    );
    assert_eq!(data(&events[3])["reason"], "reuse");
}

#[tokio::test]
async fn reuse_of_an_older_generation_kills_the_family() {
    let app = spawn_app().await;
    app.register("bob").await;
    let t1 = app.login("bob").await;
    let t2 = app.refresh_ok(&t1.refresh).await;
    let t3 = app.refresh_ok(&t2.refresh).await;
    // Still inside the grace window: an old generation is never a retry.
    assert_eq!(
        error_code(app.refresh(&t1.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        error_code(app.refresh(&t3.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("older_generation")
    );
}

#[tokio::test]
async fn a_retry_within_grace_from_the_same_client_gets_a_token_another_device_kills_the_family() {
    let app = spawn_app().await;
    app.register("carol").await;
    let t1 = app.login("carol").await;
    let t2 = app.refresh_ok(&t1.refresh).await;
    let retry = app.refresh_ok(&t1.refresh).await;
    assert_ne!(retry.refresh, t2.refresh);
    let kinds = types(&app.session_events(&t1.session_id).await).join(",");
    assert!(
        kinds.ends_with("session.refreshed,session.refresh_retried"),
        "{kinds}"
    );
    // Both answers are usable; one moves the family on.
    let t3 = app.refresh_ok(&retry.refresh).await;

    // The spent token, within grace, but from another browser: theft.
    let chrome = reqwest::Client::builder()
        .user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
        .build()
        .unwrap();
    let r = chrome
        .post(app.url("/v1/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": retry.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("previous_other_context")
    );
    assert_eq!(
        app.refresh(&t3.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_retry_from_another_network_behind_a_trusted_proxy_is_reuse() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.register("dan").await;
    let from = |ip: &'static str, token: String| {
        app.http
            .post(app.url("/v1/auth/refresh"))
            .header("x-forwarded-for", ip)
            .json(&serde_json::json!({ "refresh_token": token }))
            .send()
    };
    let t1 = app.login("dan").await;
    let r = from("198.51.100.10", t1.refresh.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Same /24: a retry.
    assert_eq!(
        from("198.51.100.99", t1.refresh.clone())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Another network: reuse.
    assert_eq!(
        from("203.0.113.5", t1.refresh.clone())
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let events = app.session_events(&t1.session_id).await;
    let refreshed = events
        .iter()
        .find(|e| e.event_type == "session.refreshed")
        .unwrap();
    assert_eq!(
        data(refreshed)["context"]["ip"],
        "198.51.100.10",
        "the forwarded client is recorded"
    );
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("previous_other_context")
    );
}

#[tokio::test]
async fn fifty_concurrent_refreshes_of_one_token_leave_one_live_family() {
    let app = spawn_app().await;
    app.register("erin").await;
    let t1 = app.login("erin").await;

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let http = app.http.clone();
        let url = app.url("/v1/auth/refresh");
        let token = t1.refresh.clone();
        requests.spawn(async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({ "refresh_token": token }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.json::<serde_json::Value>().await.unwrap())
        });
    }
    let mut granted = Vec::new();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        match status {
            StatusCode::OK => granted.push(Tokens::from_json(&body)),
            StatusCode::UNAUTHORIZED => assert_eq!(body["error"], "invalid_grant", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }

    let events = app.session_events(&t1.session_id).await;
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count("session.refreshed"), 1, "exactly one rotation");
    assert!(count("session.refresh_retried") <= 3, "retries are bounded");
    assert_eq!(
        count("session.reuse_detected") + count("session.revoked"),
        0,
        "a retry storm is not theft"
    );
    assert_eq!(
        granted.len(),
        1 + count("session.refresh_retried"),
        "every 200 is the rotation or a recorded retry"
    );
    assert!(granted.iter().all(|t| t.session_id == t1.session_id));

    let session = app
        .service
        .store
        .session(t1.session_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(session.is_active());
    assert_eq!(session.generation, 2, "one current generation");
    // Any answer the client kept moves the family on.
    app.refresh_ok(&granted.last().unwrap().refresh).await;
}

#[tokio::test]
async fn a_session_that_must_reauthenticate_cannot_refresh() {
    let app = spawn_app().await;
    app.register("faythe").await;
    let t = app.login("faythe").await;
    let command = RequireReauth {
        session_id: t.session_id.parse().unwrap(),
        reason: "test".into(),
    };
    app.service
        .writer
        .submit(command, EventMetadata::new(Actor::System, None))
        .await
        .unwrap()
        .expect("the session exists");
    assert_eq!(
        error_code(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );
    let kinds = types(&app.session_events(&t.session_id).await).join(",");
    assert_eq!(kinds, "session.started,session.reauth_required");
}
