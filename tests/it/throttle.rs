//! Login throttling (issue 11, point 1): built in and on by default, counted in the store so
//! every node sees it, the same answer on every route that checks a password, and a locked
//! account refused before any hash is computed.

use crate::helpers::*;
use crate::pg::fresh_database;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::commands::SetLock;
use sessiond::domain::event::{Actor, EventMetadata};
use std::sync::Arc;

const ATTACKER: &str = "203.0.113.66";
const USER_HOME: &str = "198.51.100.7";

fn behind_proxy(c: &mut sessiond::config::Config) {
    // The test client is 127.0.0.1: as a trusted proxy, its X-Forwarded-For says who is asking.
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

async fn login_from_ip(app: &TestApp, user: &str, password: &str, ip: &str) -> reqwest::Response {
    post_from(
        app,
        "/v1/auth/login",
        json!({ "username": user, "password": password }),
        ip,
        FIREFOX,
    )
    .await
}

/// A 429 `too_many_attempts` with a Retry-After of at most the window; returns the seconds.
async fn assert_throttled(r: reqwest::Response) -> u64 {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=15 * 60).contains(&wait), "retry-after {wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts", "{body}");
    wait
}

#[tokio::test]
async fn thirty_wrong_passwords_from_one_address_end_in_429s_and_the_user_still_signs_in_elsewhere()
{
    let app = spawn_app_with(behind_proxy).await;
    app.register("alice").await;
    // The attacker's request, thirty times: a guessed password for alice from one address.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = login_from_ip(&app, "alice", &format!("guess number {i}"), ATTACKER).await;
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_throttled(r).await;
        }
    }
    let first_429 = statuses.iter().position(|s| *s == 429).expect("throttled");
    assert_eq!(
        first_429, 5,
        "five failures are allowed, then 429: {statuses:?}"
    );
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");

    // The right password does not get through an active per-address throttle...
    assert_throttled(login_from_ip(&app, "alice", PASSWORD, ATTACKER).await).await;
    // ...but alice, from her own network, signs in.
    let r = login_from_ip(&app, "alice", PASSWORD, USER_HOME).await;
    assert_eq!(r.status(), StatusCode::OK);

    let events = app.all_events().await;
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(
        count("login.failed"),
        5,
        "a refused attempt checks no password"
    );
    assert_eq!(count("login.throttled"), 26);
    let throttled = events
        .iter()
        .find(|e| e.event_type == "login.throttled")
        .unwrap();
    let d = data(throttled);
    assert_eq!(d["username"], "alice");
    assert_eq!(d["scopes"], json!(["account_address"]));
    assert_eq!(d["context"]["ip"], ATTACKER);
    assert!(d.get("password").is_none());

    // Once the window has passed, the address may try again.
    app.clock.advance(chrono::Duration::minutes(16));
    let r = login_from_ip(&app, "alice", PASSWORD, ATTACKER).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_name_is_throttled_and_answered_exactly_like_a_wrong_password() {
    let app = spawn_app_with(behind_proxy).await;
    app.register("bob").await;
    let mut answers = Vec::new();
    for user in ["bob", "nobody-here"] {
        let mut seen = Vec::new();
        for _ in 0..7 {
            let r = login_from_ip(&app, user, "not the password", ATTACKER).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            seen.push((status, body["error"].clone(), body["message"].clone()));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][0].1, "invalid_credentials");
    assert_eq!(answers[0][6].1, "too_many_attempts");
}

#[tokio::test]
async fn the_network_and_the_account_counters_hold_against_spraying_and_spreading() {
    let app = spawn_app_with(|c| {
        behind_proxy(c);
        c.login_throttle.network.max_failures = 4;
        c.login_throttle.account.max_failures = 6;
    })
    .await;
    app.register("carol").await;
    app.register("dave").await;
    // Spraying: one guess each for many names from one /24 (each from another address).
    for i in 0..4 {
        let r = login_from_ip(
            &app,
            &format!("user{i}"),
            "Winter2026!",
            &format!("203.0.113.{i}"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // The /24 is now closed for every account, the right password included.
    assert_throttled(login_from_ip(&app, "dave", PASSWORD, "203.0.113.200").await).await;
    let r = login_from_ip(&app, "dave", PASSWORD, USER_HOME).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Spreading: guesses for carol from six networks; the seventh network is refused too.
    for i in 0..6 {
        let r = login_from_ip(&app, "carol", "guess", &format!("192.0.{i}.1")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_throttled(login_from_ip(&app, "carol", PASSWORD, "192.0.99.1").await).await;
}

#[tokio::test]
async fn every_route_that_checks_a_password_gives_the_same_throttled_answer() {
    let app = spawn_app_with(|c| {
        behind_proxy(c);
        c.oauth_password_grant = true;
        c.login_throttle.account_address.max_failures = 2;
    })
    .await;
    app.register("erin").await;
    let tokens = login_from(&app, "erin", ATTACKER, FIREFOX).await;
    for _ in 0..2 {
        let r = login_from_ip(&app, "erin", "wrong", ATTACKER).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Each route, with the right password, from the throttled address.
    let reauth = post_from(
        &app,
        "/v1/auth/reauth",
        json!({ "refresh_token": tokens.refresh, "password": PASSWORD }),
        ATTACKER,
        FIREFOX,
    )
    .await;
    assert_throttled(reauth).await;
    let change = app
        .http
        .post(app.url("/v1/auth/password"))
        .header("x-forwarded-for", ATTACKER)
        .bearer_auth(&tokens.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase 42" }))
        .send()
        .await
        .unwrap();
    assert_throttled(change).await;
    let grant = app
        .http
        .post(app.url("/oauth/token"))
        .header("x-forwarded-for", ATTACKER)
        .form(&[
            ("grant_type", "password"),
            ("username", "erin"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_throttled(grant).await;
    // The password was not changed.
    let r = login_from_ip(&app, "erin", PASSWORD, USER_HOME).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_locked_account_answers_the_same_whatever_the_password_before_any_hash() {
    let app = spawn_app_with(behind_proxy).await;
    let user_id = app.register("frank").await;
    let lock = SetLock {
        user_id: user_id.parse().unwrap(),
        lock: true,
        reason: "test".into(),
        context: None,
    };
    app.service
        .writer
        .submit(lock, EventMetadata::new(Actor::System, None))
        .await
        .unwrap()
        .unwrap();
    let before = app.service.passwords.computed();
    let mut answers = Vec::new();
    for password in [PASSWORD, "wrong password"] {
        let r = login_from_ip(&app, "frank", password, USER_HOME).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        answers.push((status, body));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
    assert_eq!(answers[0].1["error"], "account_locked");
    assert_eq!(
        app.service.passwords.computed(),
        before,
        "no password was checked for a locked account"
    );
}

fn master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([9u8; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_round_robin_meet_the_same_limits_and_they_survive_a_restart() {
    let Some(db) = fresh_database("two_nodes_round_robin_meet_the_same_limits").await else {
        return;
    };
    let url = db.url.clone();
    let on = move |c: &mut sessiond::config::Config| {
        behind_proxy(c);
        c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
    };
    let clock = Arc::new(ManualClock::default());
    let a = spawn_node(on.clone(), clock.clone(), Some(master_key())).await;
    let b = spawn_node(on.clone(), clock.clone(), Some(master_key())).await;
    a.register("grace").await;
    // The attacker alternates between the two nodes behind a round-robin balancer.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = login_from_ip(node, "grace", &format!("guess {i}"), ATTACKER).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429, 429, 429, 429, 429, 429, 429],
        "five failures in all, whichever node saw them"
    );
    // A node started afterwards (a restart: no memory of its own) reads the same counters.
    let c = spawn_node(on, clock, Some(master_key())).await;
    assert_throttled(login_from_ip(&c, "grace", PASSWORD, ATTACKER).await).await;
    let r = login_from_ip(&c, "grace", PASSWORD, USER_HOME).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_counters_survive_a_projection_rebuild() {
    let app = spawn_app_with(behind_proxy).await;
    app.register("heidi").await;
    for _ in 0..5 {
        login_from_ip(&app, "heidi", "wrong", ATTACKER).await;
    }
    let live = app.service.store.projection_snapshot().await.unwrap();
    assert!(live.iter().any(|r| r.starts_with("login_failures|")));
    sessiond::projection::rebuild_projections(&app.service.store)
        .await
        .unwrap();
    assert_eq!(app.service.store.projection_snapshot().await.unwrap(), live);
    assert_throttled(login_from_ip(&app, "heidi", PASSWORD, ATTACKER).await).await;
}
