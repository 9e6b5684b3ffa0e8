//! "Your devices": `/v1/me/sessions` lists, marks and revokes a user's own sessions only.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Mobile Safari/537.36";

/// Behind a trusted local proxy (so X-Forwarded-For names the client), with the generated
/// GeoIP databases: 203.0.113.0/24 is Chantilly, FR; 198.51.100.0/24 is New York, US.
async fn spawn_behind_proxy() -> (TestApp, tempfile::TempDir) {
    let geo = tempfile::tempdir().unwrap();
    let (city, asn) = crate::rules::write_geoip(geo.path());
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.geoip_city = Some(city);
        c.geoip_asn = Some(asn);
    })
    .await;
    (app, geo)
}

async fn devices(app: &TestApp, access: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url("/v1/me/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn revoke(app: &TestApp, access: &str, session_id: &str) -> reqwest::Response {
    app.http
        .delete(app.url(&format!("/v1/me/sessions/{session_id}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

fn by_id<'a>(list: &'a [Value], session_id: &str) -> &'a Value {
    list.iter()
        .find(|d| d["session_id"] == session_id)
        .unwrap_or_else(|| panic!("{session_id} not in {list:?}"))
}

#[tokio::test]
async fn the_device_list_shows_each_device_with_its_address_and_marks_the_current_one() {
    let (app, _geo) = spawn_behind_proxy().await;
    app.register("alice").await;
    let laptop = login_from(&app, "alice", "203.0.113.7", FIREFOX).await;
    app.clock.advance(chrono::Duration::minutes(5));
    let phone = login_from(&app, "alice", "198.51.100.9", CHROME_ANDROID).await;

    let list = devices(&app, &laptop.access).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let l = by_id(&list, &laptop.session_id);
    assert_eq!(l["current"], true);
    assert_eq!(l["ip"], "203.0.113.7");
    assert_eq!(l["device"]["browser"], "Firefox");
    assert_eq!(l["device"]["os"], "Linux");
    assert_eq!(l["device"]["category"], "pc");
    assert_eq!(l["status"], "active");
    assert_eq!(l["location"]["city"], "Chantilly");
    assert_eq!(l["location"]["country"], "FR");
    let p = by_id(&list, &phone.session_id);
    assert_eq!(p["current"], false);
    assert_eq!(p["ip"], "198.51.100.9");
    assert_eq!(p["device"]["browser"], "Chrome");
    assert_eq!(p["device"]["os"], "Android");
    assert_eq!(p["device"]["category"], "smartphone");
    assert_eq!(p["location"]["city"], "New York");
    assert_eq!(p["location"]["country"], "US");
    // Most recently active first.
    assert_eq!(list[0]["session_id"], phone.session_id.as_str());

    // The phone sees the same two, itself as current.
    let from_phone = devices(&app, &phone.access).await;
    assert_eq!(by_id(&from_phone, &phone.session_id)["current"], true);
    assert_eq!(by_id(&from_phone, &laptop.session_id)["current"], false);
}

#[tokio::test]
async fn revoking_a_device_ends_it_and_its_refresh_token_stops_working() {
    let (app, _geo) = spawn_behind_proxy().await;
    app.register("alice").await;
    let laptop = login_from(&app, "alice", "203.0.113.7", FIREFOX).await;
    let phone = login_from(&app, "alice", "198.51.100.9", CHROME_ANDROID).await;

    let r = revoke(&app, &laptop.access, &phone.session_id).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        error_code(app.refresh(&phone.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    assert_eq!(
        error_code(app.me(&phone.access).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let list = devices(&app, &laptop.access).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], laptop.session_id.as_str());
    let ended = app.session_events(&phone.session_id).await;
    let revoked = ended.last().unwrap();
    assert_eq!(revoked.event_type, "session.revoked");
    assert_eq!(data(revoked)["reason"], "user");
    // The laptop goes on.
    app.refresh_ok(&laptop.refresh).await;
}

#[tokio::test]
async fn one_user_can_neither_list_nor_revoke_another_users_sessions() {
    let (app, _geo) = spawn_behind_proxy().await;
    app.register("alice").await;
    app.register("mallory").await;
    let alice = login_from(&app, "alice", "203.0.113.7", FIREFOX).await;
    let mallory = login_from(&app, "mallory", "192.0.2.66", FIREFOX).await;

    let seen = devices(&app, &mallory.access).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["session_id"], mallory.session_id.as_str());

    let before = app.event_count().await;
    let r = revoke(&app, &mallory.access, &alice.session_id).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    // The same answer as for an id that was never issued, or is not an id at all.
    let r = revoke(&app, &mallory.access, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = revoke(&app, &mallory.access, "not-a-session").await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(app.event_count().await, before, "nothing was recorded");
    app.refresh_ok(&alice.refresh).await;

    // Without a token there is nothing to list.
    let r = app
        .http
        .get(app.url("/v1/me/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "unauthorized"
    );
}

#[tokio::test]
async fn signing_out_everywhere_else_keeps_only_the_current_device() {
    let (app, _geo) = spawn_behind_proxy().await;
    app.register("alice").await;
    let laptop = login_from(&app, "alice", "203.0.113.7", FIREFOX).await;
    let phone = login_from(&app, "alice", "198.51.100.9", CHROME_ANDROID).await;
    let tablet = login_from(&app, "alice", "198.51.100.10", CHROME_ANDROID).await;

    let r = app
        .http
        .delete(app.url("/v1/me/sessions"))
        .bearer_auth(&laptop.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked"], 2);

    for gone in [&phone, &tablet] {
        assert_eq!(
            error_code(app.refresh(&gone.refresh).await, StatusCode::UNAUTHORIZED).await,
            "invalid_grant"
        );
    }
    let list = devices(&app, &laptop.access).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["current"], true);
    app.refresh_ok(&laptop.refresh).await;
}
