//! The security team's API: who may call it, timelines, lineage, search, export, the live
//! stream, and actions recorded with the acting admin.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A user with the security role, logged in.
pub async fn analyst(app: &TestApp) -> Tokens {
    app.service
        .register(
            "analyst",
            PASSWORD.into(),
            vec!["security".into()],
            &Default::default(),
        )
        .await
        .unwrap();
    app.login("analyst").await
}

async fn get(app: &TestApp, path: &str, bearer: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn get_json(app: &TestApp, path: &str, bearer: &str) -> Value {
    let r = get(app, path, bearer).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

fn positions(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn an_ordinary_user_gets_403_on_every_admin_route_and_no_token_gets_401() {
    let app = spawn_app().await;
    let user_id = app.register("alice").await;
    let alice = app.login("alice").await;
    let sid = &alice.session_id;
    let routes = [
        ("GET", format!("/v1/admin/users/{user_id}")),
        ("GET", format!("/v1/admin/users/{user_id}/timeline")),
        (
            "POST",
            format!("/v1/admin/users/{user_id}/logout-everywhere"),
        ),
        ("GET", format!("/v1/admin/sessions/{sid}")),
        ("POST", format!("/v1/admin/sessions/{sid}/revoke")),
        ("GET", "/v1/admin/ips/127.0.0.1/timeline".to_owned()),
        ("GET", "/v1/admin/events".to_owned()),
        ("GET", "/v1/admin/events/export".to_owned()),
        ("GET", "/v1/admin/stream".to_owned()),
        ("GET", "/v1/admin/alerts".to_owned()),
        ("GET", "/v1/admin/webhooks".to_owned()),
        ("POST", "/v1/admin/webhooks".to_owned()),
        (
            "DELETE",
            format!("/v1/admin/webhooks/{}", uuid::Uuid::now_v7()),
        ),
    ];
    for (method, path) in &routes {
        let req = |b: Option<&str>| {
            let mut r = app.http.request(method.parse().unwrap(), app.url(path));
            if let Some(b) = b {
                r = r.bearer_auth(b);
            }
            r
        };
        let r = req(Some(&alice.access)).send().await.unwrap();
        assert_eq!(
            error_code(r, StatusCode::FORBIDDEN).await,
            "forbidden",
            "{method} {path}"
        );
        let r = req(None).send().await.unwrap();
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "unauthorized",
            "{method} {path}"
        );
    }
    // Nothing was revoked by all that.
    app.refresh_ok(&alice.refresh).await;
}

#[tokio::test]
async fn a_session_timeline_shows_the_family_lineage_with_retries_and_reuse() {
    let app = spawn_app().await;
    let admin = analyst(&app).await;
    app.register("alice").await;
    let first = app.login("alice").await;
    let second = app.refresh_ok(&first.refresh).await;
    // A concurrent retry of the first token within the grace window...
    let retry = app.refresh_ok(&first.refresh).await;
    let third = app.refresh_ok(&second.refresh).await;
    assert!(!retry.refresh.is_empty() && !third.refresh.is_empty());
    // ...and, after it, the first token again: reuse, the family is revoked.
    app.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(
        app.refresh(&first.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let detail = get_json(
        &app,
        &format!("/v1/admin/sessions/{}", first.session_id),
        &admin.access,
    )
    .await;
    assert_eq!(detail["session"]["status"], "revoked");
    assert_eq!(detail["session"]["end_reason"], "reuse");
    let lineage = detail["lineage"].as_array().unwrap();
    assert_eq!(lineage.len(), 3, "{detail}");
    assert_eq!(lineage[0]["generation"], 1);
    assert!(lineage[0]["rotated_at"].is_string());
    assert_eq!(lineage[0]["retries"].as_array().unwrap().len(), 0);
    assert_eq!(
        lineage[1]["retries"].as_array().unwrap().len(),
        1,
        "the retry belongs to generation 2"
    );
    assert!(lineage[2]["rotated_at"].is_null());
    let reuse = detail["reuse"].as_array().unwrap();
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["class"], "older_generation");
    let timeline: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(timeline[0], "session.started");
    assert!(
        timeline.contains(&"session.refresh_retried")
            && timeline.contains(&"session.reuse_detected")
    );
    assert!(
        !detail.to_string().contains(&first.refresh),
        "no token in a timeline"
    );

    let user = get_json(&app, "/v1/admin/users/Alice", &admin.access).await;
    assert_eq!(user["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(user["sessions"][0]["session_id"], first.session_id.as_str());
    let r = get(&app, "/v1/admin/users/nobody", &admin.access).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = get(&app, "/v1/admin/sessions/not-an-id", &admin.access).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
}

#[tokio::test]
async fn event_search_filters_by_user_type_and_network_and_pages_newest_first() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let admin = analyst(&app).await;
    let alice_id = app.register("alice").await;
    app.register("bob").await;
    for i in 0..3 {
        login_from(&app, "alice", &format!("203.0.113.{}", 10 + i), FIREFOX).await;
    }
    login_from(&app, "bob", "198.51.100.7", FIREFOX).await;
    login_from(&app, "alice", "192.0.2.1", FIREFOX).await;

    let page = get_json(&app, "/v1/admin/events?ip=203.0.113.0/24", &admin.access).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3, "{page}");
    assert!(page["next_cursor"].is_null());
    let ps = positions(&page);
    assert!(ps.windows(2).all(|w| w[0] > w[1]), "newest first: {ps:?}");

    let page = get_json(
        &app,
        &format!("/v1/admin/events?user={alice_id}&type=session.started"),
        &admin.access,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 4);
    let ip = get_json(&app, "/v1/admin/ips/198.51.100.7/timeline", &admin.access).await;
    assert_eq!(ip["events"].as_array().unwrap().len(), 1);
    assert_eq!(ip["events"][0]["data"]["context"]["ip"], "198.51.100.7");

    // Paging: two at a time through alice's timeline, nothing twice, nothing missed.
    let all = positions(
        &get_json(
            &app,
            &format!("/v1/admin/users/{alice_id}/timeline?limit=1000"),
            &admin.access,
        )
        .await,
    );
    let mut seen = Vec::new();
    let mut path = format!("/v1/admin/users/{alice_id}/timeline?limit=2");
    loop {
        let page = get_json(&app, &path, &admin.access).await;
        seen.extend(positions(&page));
        match page["next_cursor"].as_i64() {
            Some(c) => path = format!("/v1/admin/users/{alice_id}/timeline?limit=2&before={c}"),
            None => break,
        }
    }
    assert_eq!(seen, all);
    // The registration is in the timeline, its password hash is not.
    assert!(!serde_json::to_string(&seen).unwrap().is_empty());
    let reg = get_json(
        &app,
        &format!("/v1/admin/events?user={alice_id}&type=user.registered"),
        &admin.access,
    )
    .await;
    assert!(
        reg["events"][0]["data"].get("password_hash").is_none(),
        "{reg}"
    );

    for bad in [
        "type=session.teleported",
        "ip=300.1.2.3",
        "limit=0",
        "since=yesterday",
        "colour=red",
        "before=-1",
    ] {
        let r = get(&app, &format!("/v1/admin/events?{bad}"), &admin.access).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn an_api_key_opens_the_admin_api_and_a_revoked_one_does_not() {
    let app = spawn_app().await;
    let (stored, key) = app
        .service
        .create_api_key("siem", vec!["security".into()])
        .await
        .unwrap();
    let (_, reader) = app
        .service
        .create_api_key("gateway", vec!["resource_server".into()])
        .await
        .unwrap();
    assert_eq!(
        get(&app, "/v1/admin/events", key.expose()).await.status(),
        StatusCode::OK
    );
    let r = get(&app, "/v1/admin/events", reader.expose()).await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
    app.service.revoke_api_key(stored.key_id).await.unwrap();
    let r = get(&app, "/v1/admin/events", key.expose()).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn admin_actions_take_effect_and_name_the_admin_as_actor() {
    let app = spawn_app().await;
    let admin = analyst(&app).await;
    let admin_id = app
        .service
        .store
        .user_by_name("analyst")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let alice_id = app.register("alice").await;
    let laptop = app.login("alice").await;
    let phone = app.login("alice").await;

    let r = app
        .http
        .post(app.url(&format!("/v1/admin/sessions/{}/revoke", laptop.session_id)))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.refresh(&laptop.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let revoked = app.session_events(&laptop.session_id).await.pop().unwrap();
    assert_eq!(data(&revoked)["reason"], "admin");
    let meta: Value = serde_json::from_str(&revoked.metadata).unwrap();
    assert_eq!(meta["actor"], json!({"kind": "admin", "id": admin_id}));

    let r = app
        .http
        .post(app.url(&format!("/v1/admin/users/{alice_id}/logout-everywhere")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], 1);
    assert_eq!(
        app.refresh(&phone.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .http
        .post(app.url(&format!(
            "/v1/admin/sessions/{}/revoke",
            uuid::Uuid::now_v7()
        )))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
}

#[tokio::test]
async fn an_export_streams_every_matching_event_as_ndjson() {
    let app = spawn_app().await;
    let admin = analyst(&app).await;
    app.register("alice").await;
    for _ in 0..5 {
        let t = app.login("alice").await;
        app.refresh_ok(&t.refresh).await;
    }
    let r = get(
        &app,
        "/v1/admin/events/export?type=session.refreshed",
        &admin.access,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    let mut lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A filtered export ends by saying it cannot prove completeness.
    let trailer = lines.pop().unwrap();
    assert_eq!(trailer["filtered"]["complete"], false, "{trailer}");
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["type"] == "session.refreshed"));
    let ps: Vec<i64> = lines
        .iter()
        .map(|l| l["position"].as_i64().unwrap())
        .collect();
    assert!(ps.windows(2).all(|w| w[0] < w[1]), "oldest first");
}

/// Reads SSE frames off a streaming response until `n` events have arrived.
async fn read_events(r: &mut reqwest::Response, buf: &mut String, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|v| v.trim().parse::<i64>().unwrap());
            let kind = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(|v| v.trim().to_owned());
            if let (Some(id), Some(kind)) = (id, kind) {
                out.push((id, kind));
            }
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    out
}

#[tokio::test]
async fn the_live_stream_delivers_new_events_and_resumes_from_last_event_id() {
    let app = spawn_app().await;
    let admin = analyst(&app).await;
    app.register("alice").await;

    let mut stream = get(&app, "/v1/admin/stream", &admin.access).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut buf = String::new();
    let t = app.login("alice").await;
    let got = read_events(&mut stream, &mut buf, 1).await;
    assert_eq!(got[0].1, "session.started");
    let last_seen = got[0].0;
    drop(stream);

    // While disconnected: three more events.
    let t = app.refresh_ok(&t.refresh).await;
    app.refresh_ok(&t.refresh).await;
    app.login("alice").await;
    let expected: Vec<i64> = app
        .all_events()
        .await
        .iter()
        .map(|e| e.position)
        .filter(|p| *p > last_seen)
        .collect();
    assert_eq!(expected.len(), 3);

    let mut resumed = app
        .http
        .get(app.url("/v1/admin/stream"))
        .bearer_auth(&admin.access)
        .header("last-event-id", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let got = read_events(&mut resumed, &mut buf, 3).await;
    assert_eq!(
        got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        expected,
        "nothing missed or repeated"
    );
    // And it goes on live after the catch-up.
    app.login("alice").await;
    let live = read_events(&mut resumed, &mut buf, 1).await;
    assert_eq!(live[0].0, expected[2] + 1);
}

#[tokio::test]
async fn locking_a_user_ends_their_sessions_and_refuses_logins_until_unlocked() {
    let app = spawn_app().await;
    let admin = analyst(&app).await;
    let alice_id = app.register("alice").await;
    let t = app.login("alice").await;
    let post = |path: String, body: Value| {
        let app = &app;
        let token = admin.access.clone();
        async move {
            app.http
                .post(app.url(&path))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let r = post(
        format!("/v1/admin/users/{alice_id}/lock"),
        json!({ "reason": " " }),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_reason"
    );
    let r = post(
        format!("/v1/admin/users/{}/lock", uuid::Uuid::now_v7()),
        json!({ "reason": "x" }),
    )
    .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");

    let r = post(
        format!("/v1/admin/users/{alice_id}/lock"),
        json!({ "reason": "account takeover, ticket 42" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], 1);
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.login_as("alice", PASSWORD).await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "account_locked");
    let locked = app
        .events(sessiond::store::EventFilter {
            stream_id: Some(format!("user-{alice_id}")),
            event_types: vec!["user.locked".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(locked.len(), 1);
    assert_eq!(data(&locked[0])["reason"], "account takeover, ticket 42");
    let meta: Value = serde_json::from_str(&locked[0].metadata).unwrap();
    assert_eq!(meta["actor"]["kind"], "admin");
    // Locking twice records nothing more.
    post(
        format!("/v1/admin/users/{alice_id}/lock"),
        json!({ "reason": "again" }),
    )
    .await;
    let user = get_json(&app, &format!("/v1/admin/users/{alice_id}"), &admin.access).await;
    assert_eq!(user["status"], "locked");

    let r = post(
        format!("/v1/admin/users/{alice_id}/unlock"),
        json!({ "reason": "cleared" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.login("alice").await;
    let kinds: Vec<String> = app
        .events(sessiond::store::EventFilter {
            stream_id: Some(format!("user-{alice_id}")),
            ..Default::default()
        })
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "user.locked").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "user.unlocked").count(), 1);
}

#[tokio::test]
async fn alerts_list_rule_firings_and_a_session_timeline_includes_its_receipts() {
    use crate::rules::{NEW_YORK, PARIS, app_with_rules, travel_rule};
    let (app, _dir) = app_with_rules(
        &[("travel.toml", travel_rule("shadow", "\"revoke_session\""))],
        true,
    )
    .await;
    let admin = analyst(&app).await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, FIREFOX).await;
    app.clock.advance(chrono::Duration::minutes(5));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, FIREFOX).await;
    assert_eq!(r.status(), StatusCode::OK, "shadow mode changes nothing");

    let alerts = get_json(&app, "/v1/admin/alerts", &admin.access).await;
    let list = alerts["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{alerts}");
    assert_eq!(list[0]["data"]["rule_id"], "impossible_travel");
    assert_eq!(list[0]["data"]["mode"], "shadow");
    for (query, n) in [
        ("?mode=shadow", 1),
        ("?mode=enforce", 0),
        ("?rule=impossible_travel", 1),
        ("?rule=brute_force", 0),
        ("?severity=high", 1),
        (&format!("?session={}", t.session_id) as &str, 1),
        (&format!("?session={}", uuid::Uuid::now_v7()), 0),
    ] {
        let page = get_json(&app, &format!("/v1/admin/alerts{query}"), &admin.access).await;
        assert_eq!(page["events"].as_array().unwrap().len(), n, "{query}");
    }
    let r = get(&app, "/v1/admin/alerts?type=session.started", &admin.access).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let detail = get_json(
        &app,
        &format!("/v1/admin/sessions/{}", t.session_id),
        &admin.access,
    )
    .await;
    let kinds: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"rule.fired"), "{kinds:?}");
    let places: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["context"]["geo"]["city"].as_str())
        .collect();
    assert!(
        places.contains(&"Paris") && places.contains(&"New York"),
        "{places:?}"
    );
}
