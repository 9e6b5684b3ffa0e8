//! The surfaces and jobs built over the store, run once more on PostgreSQL (skipped with a
//! notice when `SESSIOND_TEST_DATABASE_URL` is not set): each reaches the queries that exist
//! twice, once per backend.

use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::jobs::JobKind;
use std::sync::Arc;

#[tokio::test]
async fn devices_api_keys_search_feed_webhooks_and_the_sweep_work_on_postgres() {
    let Some(db) = fresh_database("surfaces_on_postgres").await else {
        return;
    };
    let url = db.url.clone();
    let app = spawn_node(
        move |c| {
            c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            local_webhooks(c);
        },
        Arc::new(ManualClock::default()),
        None,
    )
    .await;
    let alice_id = app.register("alice").await;
    assert!(
        !app.service
            .store
            .has_user_with_role("security")
            .await
            .unwrap()
    );
    app.service
        .register(
            "analyst",
            PASSWORD.into(),
            vec!["security".into()],
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(
        app.service
            .store
            .has_user_with_role("security")
            .await
            .unwrap()
    );
    let admin = app.login("analyst").await;

    let login_from = |ip: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/v1/auth/login"))
                .header("x-forwarded-for", ip)
                .json(&json!({ "username": "alice", "password": PASSWORD }))
                .send()
                .await
                .unwrap();
            Tokens::from_json(&r.json().await.unwrap())
        }
    };
    let laptop = login_from("203.0.113.7").await;
    let phone = login_from("198.51.100.9").await;

    // Devices: list and revoke.
    let list: Vec<Value> = app
        .http
        .get(app.url("/v1/me/sessions"))
        .bearer_auth(&laptop.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    let r = app
        .http
        .delete(app.url(&format!("/v1/me/sessions/{}", phone.session_id)))
        .bearer_auth(&laptop.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.refresh(&phone.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Search by user and network, newest first, paged.
    let get = |path: String| {
        let app = &app;
        let token = admin.access.clone();
        async move {
            let r = app
                .http
                .get(app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let page = get("/v1/admin/events?ip=203.0.113.0/24".into()).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let first = get(format!("/v1/admin/users/{alice_id}/timeline?limit=2")).await;
    let cursor = first["next_cursor"].as_i64().unwrap();
    let rest = get(format!(
        "/v1/admin/users/{alice_id}/timeline?before={cursor}"
    ))
    .await;
    let all = get(format!("/v1/admin/users/{alice_id}/timeline")).await;
    assert_eq!(
        first["events"].as_array().unwrap().len() + rest["events"].as_array().unwrap().len(),
        all["events"].as_array().unwrap().len()
    );
    let detail = get(format!("/v1/admin/users/{alice_id}")).await;
    assert_eq!(detail["sessions"].as_array().unwrap().len(), 2);

    // API keys and the revocation feed.
    let (stored, key) = app
        .service
        .create_api_key("gateway", vec!["resource_server".into()])
        .await
        .unwrap();
    let feed: Value = app
        .http
        .get(app.url("/v1/revocations"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        feed["revocations"][0]["session_id"],
        phone.session_id.as_str()
    );
    assert_eq!(app.service.api_keys().await.unwrap().len(), 1);
    app.service.revoke_api_key(stored.key_id).await.unwrap();
    let r = app
        .http
        .get(app.url("/v1/revocations"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Webhook subscriptions are stored and listed.
    let r = app
        .http
        .post(app.url("/v1/admin/webhooks"))
        .bearer_auth(&admin.access)
        .json(&json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["session.revoked"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let subs = get("/v1/admin/webhooks".into()).await;
    assert_eq!(subs["subscriptions"].as_array().unwrap().len(), 1);

    // The sweep finds the idle session and records its expiry.
    app.clock.advance(chrono::Duration::days(8));
    app.jobs.run(JobKind::ExpirySweep).await.unwrap();
    let ended = app.session_events(&laptop.session_id).await.pop().unwrap();
    assert_eq!(ended.event_type, "session.expired");
    assert_eq!(app.service.store.count_active_sessions().await.unwrap(), 0);
}
