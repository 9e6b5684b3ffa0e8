//! Late retries (an answer the client lost): after the grace window, within
//! `refresh_late_retry_window`, the token just replaced gets its successor again if nobody has
//! used the successor and the same device asks, whatever network it is on now. Requests come
//! through a trusted 127.0.0.1 with `X-Forwarded-For`, time from the injected clock.

use crate::helpers::*;
use crate::rules::{NEW_YORK, PARIS, app_with_rules, receipts, travel_rule};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::domain::Duration;

const WIFI: &str = "198.51.100.10";
const CELLULAR: &str = "203.0.113.50";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

async fn app() -> TestApp {
    spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await
}

async fn ok(r: reqwest::Response) -> Tokens {
    assert_eq!(r.status(), StatusCode::OK);
    Tokens::from_json(&r.json().await.unwrap())
}

async fn reuse_class(app: &TestApp, session_id: &str) -> Option<String> {
    app.session_events(session_id)
        .await
        .iter()
        .find(|e| e.event_type == "session.reuse_detected")
        .map(|e| data(e)["class"].as_str().unwrap().to_owned())
}

async fn assert_revoked(app: &TestApp, session_id: &str, newest: &Tokens) {
    let events = app.session_events(session_id).await;
    assert_eq!(events.last().unwrap().event_type, "session.revoked");
    assert_eq!(data(events.last().unwrap())["reason"], "reuse");
    assert_eq!(
        refresh_from(app, &newest.refresh, WIFI, FIREFOX)
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "the family's newest token is dead too"
    );
    assert_eq!(
        app.me(&newest.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_late_retry_from_cellular_after_wifi_gets_the_successor_nobody_used() {
    let app = app().await;
    app.register("mia").await;
    let t1 = login_from(&app, "mia", WIFI, FIREFOX).await;
    // The rotation commits, but its answer never reaches the phone.
    let lost = ok(refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));

    // The phone is on cellular now and tries again with the token it has.
    let retry = ok(refresh_from(&app, &t1.refresh, CELLULAR, FIREFOX).await).await;
    assert_eq!(
        retry.refresh, lost.refresh,
        "the successor that was never used"
    );
    assert_ne!(retry.access, lost.access, "with a fresh access token");
    assert_eq!(app.me(&retry.access).await.status(), StatusCode::OK);

    let events = app.session_events(&t1.session_id).await;
    assert_eq!(
        types(&events),
        [
            "session.started",
            "session.refreshed",
            "session.refresh_retried"
        ]
    );
    let retried = data(&events[2]);
    assert_eq!(retried["late"], true, "{retried}");
    assert_eq!(retried["context"]["ip"], CELLULAR);
    assert!(
        !events[2].data.contains(&lost.refresh),
        "only hashes in the log"
    );

    // The timeline shows it, marked late.
    let analyst = crate::admin::analyst(&app).await;
    let detail: Value = app
        .http
        .get(app.url(&format!("/v1/admin/sessions/{}", t1.session_id)))
        .bearer_auth(&analyst.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["lineage"][1]["retries"][0]["late"], true, "{detail}");

    // The successor carries on, and the family is alive.
    let next = ok(refresh_from(&app, &retry.refresh, CELLULAR, FIREFOX).await).await;
    assert_eq!(app.me(&next.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_late_retry_after_the_successor_was_used_revokes_the_family() {
    let app = app().await;
    app.register("noa").await;
    let t1 = login_from(&app, "noa", WIFI, FIREFOX).await;
    let t2 = ok(refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await).await;
    let t3 = ok(refresh_from(&app, &t2.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));
    // The attacker's request: the spent first token, from the cellular network, with the
    // victim's browser string.
    let r = refresh_from(&app, &t1.refresh, CELLULAR, FIREFOX).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("older_generation")
    );
    assert_revoked(&app, &t1.session_id, &t3).await;

    // The same with the successor used once, and the retry of the token it replaced.
    app.register("ola").await;
    let u1 = login_from(&app, "ola", WIFI, FIREFOX).await;
    let u2 = ok(refresh_from(&app, &u1.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));
    let u3 = ok(refresh_from(&app, &u2.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));
    let r = refresh_from(&app, &u1.refresh, CELLULAR, FIREFOX).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_revoked(&app, &u1.session_id, &u3).await;
}

#[tokio::test]
async fn late_retries_on_two_consecutive_generations_revoke_the_family() {
    let app = app().await;
    app.register("pia").await;
    let t1 = login_from(&app, "pia", WIFI, FIREFOX).await;
    let t2 = ok(refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(2));
    let again = ok(refresh_from(&app, &t1.refresh, CELLULAR, FIREFOX).await).await;
    assert_eq!(again.refresh, t2.refresh);
    // The successor is used; that answer is "lost" too, and its token comes back late.
    let t3 = ok(refresh_from(&app, &t2.refresh, CELLULAR, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(2));
    let r = refresh_from(&app, &t2.refresh, WIFI, FIREFOX).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("repeated_late_retry")
    );
    assert_revoked(&app, &t1.session_id, &t3).await;
}

#[tokio::test]
async fn a_late_retry_from_another_device_or_past_the_window_is_reuse() {
    let app = app().await;
    app.register("quin").await;
    let t1 = login_from(&app, "quin", WIFI, FIREFOX).await;
    let t2 = ok(refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));
    let r = refresh_from(&app, &t1.refresh, WIFI, CHROME).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("previous_other_context")
    );
    assert_revoked(&app, &t1.session_id, &t2).await;

    // A shorter window, configured.
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.refresh_late_retry_window = Duration::minutes(2);
    })
    .await;
    app.register("quin").await;
    let t1 = login_from(&app, "quin", WIFI, FIREFOX).await;
    let t2 = ok(refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(3));
    let r = refresh_from(&app, &t1.refresh, WIFI, FIREFOX).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        reuse_class(&app, &t1.session_id).await.as_deref(),
        Some("previous_after_grace")
    );
    assert_revoked(&app, &t1.session_id, &t2).await;
}

#[tokio::test]
async fn a_retry_is_judged_by_the_rules_like_any_refresh() {
    let rule = travel_rule("enforce", "\"require_reauth\"");
    let (app, _dir) = app_with_rules(&[("travel.toml", rule)], true).await;
    app.register("rex").await;
    let t1 = login_from(&app, "rex", PARIS, FIREFOX).await;
    let t2 = ok(refresh_from(&app, &t1.refresh, PARIS, FIREFOX).await).await;
    app.clock.advance(Duration::minutes(2));
    // The spent token, late, from New York with the same browser string: a lost answer by
    // the device class, but an impossible journey.
    let r = refresh_from(&app, &t1.refresh, NEW_YORK, FIREFOX).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["rule_id"], "impossible_travel");
    assert_eq!(fired[0]["trigger"], "session.refresh_retried");
    let kinds = types(&app.session_events(&t1.session_id).await).join(",");
    assert_eq!(
        kinds, "session.started,session.refreshed,session.reauth_required",
        "the refused retry is not recorded as handed out"
    );
    // The successor is held back until the password is proven again.
    let r = refresh_from(&app, &t2.refresh, PARIS, FIREFOX).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );
}

#[tokio::test]
async fn every_token_answer_says_when_its_refresh_token_expires() {
    let app = app().await;
    app.register("sam").await;
    let week = Duration::days(7).num_seconds();
    let r = app.login_as("sam", PASSWORD).await;
    let login: Value = r.json().await.unwrap();
    assert_eq!(login["refresh_token_expires_in"], week, "{login}");
    app.clock.advance(Duration::days(1));
    let r = app.refresh(login["refresh_token"].as_str().unwrap()).await;
    let refreshed: Value = r.json().await.unwrap();
    assert_eq!(
        refreshed["refresh_token_expires_in"], week,
        "idle expiry moved"
    );

    // Refreshed every 6 days up to day 25, then on day 28: the absolute lifetime (30 days)
    // bounds it.
    let mut token = refreshed["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        app.clock.advance(Duration::days(6));
        token = app.refresh_ok(&token).await.refresh;
    }
    app.clock.advance(Duration::days(3));
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let oauth: Value = r.json().await.unwrap();
    assert_eq!(
        oauth["refresh_token_expires_in"],
        Duration::days(2).num_seconds(),
        "{oauth}"
    );
    // Cookie mode carries it in the body too (the token is in the cookie).
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({"username": "sam", "password": PASSWORD, "mode": "cookie"}),
        )
        .await;
    let cookie: Value = r.json().await.unwrap();
    assert_eq!(cookie["refresh_token_expires_in"], week);
    assert!(cookie.get("refresh_token").is_none());
}
