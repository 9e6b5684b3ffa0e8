//! The refresh decision over HTTP: rotation, retries that get the same successor, reuse and its
//! classes, and a 1,000-way race on one token.

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
async fn reuse_after_the_late_retry_window_kills_the_family_newest_token_included() {
    let app = spawn_app().await;
    app.register("alice").await;
    let t1 = app.login("alice").await;
    let t2 = app.refresh_ok(&t1.refresh).await;
    // Past the grace window (30 s) and the late-retry window (10 min) from the rotation.
    app.clock
        .advance(Duration::minutes(10) + Duration::seconds(1));

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

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

#[tokio::test]
async fn a_retry_within_grace_gets_the_same_successor_another_device_kills_the_family() {
    let app = spawn_app().await;
    app.register("carol").await;
    let t1 = app.login("carol").await;
    let t2 = app.refresh_ok(&t1.refresh).await;
    let retry = app.refresh_ok(&t1.refresh).await;
    assert_eq!(
        retry.refresh, t2.refresh,
        "the same successor, never a sibling"
    );
    assert_ne!(retry.access, t2.access, "a fresh access token");
    assert_eq!(app.me(&retry.access).await.status(), StatusCode::OK);
    let events = app.session_events(&t1.session_id).await;
    let kinds = types(&events).join(",");
    assert!(
        kinds.ends_with("session.refreshed,session.refresh_retried"),
        "{kinds}"
    );
    let retried = data(events.last().unwrap());
    assert_eq!(retried["late"], false);
    assert_eq!(retried["token_hash"], data(&events[1])["token_hash"]);

    // The spent token, within grace, but from another browser: theft.
    let chrome = reqwest::Client::builder()
        .user_agent(CHROME)
        .build()
        .unwrap();
    let r = chrome
        .post(app.url("/v1/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": t1.refresh }))
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
        app.refresh(&t2.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_retry_from_another_network_by_the_same_device_gets_the_same_successor() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.register("dan").await;
    let t1 = app.login("dan").await;
    let r = refresh_from(&app, &t1.refresh, "198.51.100.10", FIREFOX).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = Tokens::from_json(&r.json().await.unwrap());
    // The phone left Wi-Fi for cellular: another network, the same device.
    let r = refresh_from(&app, &t1.refresh, "203.0.113.5", FIREFOX).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        Tokens::from_json(&r.json().await.unwrap()).refresh,
        t2.refresh
    );
    let events = app.session_events(&t1.session_id).await;
    assert_eq!(
        data(&events[1])["context"]["ip"],
        "198.51.100.10",
        "the forwarded client is recorded"
    );
    assert_eq!(data(&events[2])["context"]["ip"], "203.0.113.5");
    // The one live token moves the family on.
    app.refresh_ok(&t2.refresh).await;
}

/// `n` refreshes of `token` at once, spread over `nodes`; the answers with status 200.
pub async fn race(nodes: &[&TestApp], token: &str, n: usize) -> Vec<Tokens> {
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let (http, url, token) = (
            node.http.clone(),
            node.url("/v1/auth/refresh"),
            token.to_owned(),
        );
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
    granted
}

/// After a race on `t1`: every 200 carried one successor, the log has one rotation and no
/// reuse, the family is alive, `t1` no longer refreshes (its retries are used up) and the
/// successor is the one token that does.
pub async fn assert_one_successor(nodes: &[&TestApp], t1: &Tokens, granted: &[Tokens]) {
    let successor = &granted.first().expect("the rotation answered 200").refresh;
    assert!(
        granted.iter().all(|t| &t.refresh == successor),
        "every 200 carries the same refresh token"
    );
    assert!(granted.iter().all(|t| t.session_id == t1.session_id));
    let events = nodes[0].session_events(&t1.session_id).await;
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count("session.refreshed"), 1, "exactly one rotation");
    assert!(count("session.refresh_retried") <= 3, "retries are bounded");
    assert_eq!(
        granted.len(),
        1 + count("session.refresh_retried"),
        "every 200 is the rotation or a recorded retry"
    );
    assert_eq!(
        count("session.reuse_detected") + count("session.revoked"),
        0,
        "a race is not theft"
    );
    // The spent token: its retries are used up (or get the successor again), never a token
    // of its own, and the family survives.
    for node in nodes {
        for _ in 0..4 {
            let r = node.refresh(&t1.refresh).await;
            if r.status() == StatusCode::OK {
                assert_eq!(
                    &Tokens::from_json(&r.json().await.unwrap()).refresh,
                    successor
                );
            } else {
                assert_eq!(
                    error_code(r, StatusCode::UNAUTHORIZED).await,
                    "invalid_grant"
                );
            }
        }
        let session = node
            .service
            .store
            .session(t1.session_id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(session.is_active(), "the family is alive");
        assert_eq!(session.generation, 2, "one current generation");
    }
    // The successor works, from any node, and moves the family on.
    let next = nodes[nodes.len() - 1].refresh_ok(successor).await;
    assert_eq!(nodes[0].me(&next.access).await.status(), StatusCode::OK);
    let events = nodes[0].session_events(&t1.session_id).await;
    assert!(!types(&events).contains(&"session.reuse_detected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_refreshes_of_one_token_get_one_successor() {
    let app = spawn_app().await;
    app.register("erin").await;
    let t1 = app.login("erin").await;
    let granted = race(&[&app], &t1.refresh, 1000).await;
    assert_one_successor(&[&app], &t1, &granted).await;
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
