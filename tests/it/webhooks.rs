//! Event delivery: a subscriber that is down, then up, gets every subscribed event once, in
//! order, signed; session revocations as CAEP security event tokens; the CLI and admin API.

use crate::helpers::*;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::domain::Duration;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    up: AtomicBool,
    refused: Mutex<usize>,
    accepted: Mutex<Vec<Received>>,
}

/// Serves on `listener`: 503 while `up` is false, 200 (and keeps the delivery) once it is true.
fn serve_receiver(listener: TcpListener, state: Arc<Receiver>) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            |axum::extract::State(s): axum::extract::State<Arc<Receiver>>,
             headers: HeaderMap,
             body: axum::body::Bytes| async move {
                if s.up.load(Ordering::SeqCst) {
                    s.accepted.lock().unwrap().push(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    AxumStatus::OK
                } else {
                    *s.refused.lock().unwrap() += 1;
                    AxumStatus::SERVICE_UNAVAILABLE
                }
            },
        ),
    );
    tokio::spawn(async move {
        axum::serve(listener, app.with_state(state)).await.unwrap();
    });
}

/// Waits (up to a generous deadline, so a broken build fails instead of hanging) for `done`.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..2000 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Checks the signature the way a subscriber would, with the secret it was given.
fn assert_signed(r: &Received, secret: &str) {
    let timestamp = header(r, "sessiond-timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&r.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header(r, "sessiond-signature"), format!("v1={expected}"));
}

async fn fast_retries_app() -> TestApp {
    spawn_app_with(|c| {
        local_webhooks(c);
        c.webhook_retry_initial = Duration::milliseconds(20);
        c.webhook_retry_max = Duration::milliseconds(100);
        c.webhook_poll_interval = Duration::milliseconds(50);
    })
    .await
}

async fn security_token(app: &TestApp) -> String {
    let ctx = sessiond::domain::context::RequestContext::default();
    app.service
        .register(
            "sec-officer",
            PASSWORD.into(),
            vec!["security".into()],
            &ctx,
        )
        .await
        .unwrap();
    app.login("sec-officer").await.access
}

async fn subscribe(app: &TestApp, access: &str, body: Value) -> Value {
    let r = app
        .http
        .post(app.url("/v1/admin/webhooks"))
        .bearer_auth(access)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_subscriber_that_was_down_gets_every_event_once_in_order_and_signed() {
    let app = fast_retries_app().await;
    let admin = security_token(&app).await;

    // A port nobody listens on yet: first the subscriber refuses connections.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sub = subscribe(
        &app,
        &admin,
        json!({
            "url": format!("http://127.0.0.1:{port}/hook"),
            "event_types": ["session.started", "session.revoked"],
        }),
    )
    .await;
    let secret = sub["secret"].as_str().unwrap().to_owned();
    let sub_id = sub["subscription_id"].as_str().unwrap().to_owned();
    let from = sub["delivered_position"].as_i64().unwrap();

    app.register("alice").await;
    let a = app.login("alice").await;
    app.refresh_ok(&a.refresh).await;
    let b = app.login("alice").await;
    app.http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&b.access)
        .send()
        .await
        .unwrap();

    let failures = || async {
        let subs = app.service.webhooks().await.unwrap();
        let s = subs
            .iter()
            .find(|s| s.subscription_id.to_string() == sub_id)
            .unwrap()
            .clone();
        (s.failures, s.last_error)
    };
    wait_until("a refused connection is recorded", async || {
        failures().await.0 >= 2
    })
    .await;
    assert_eq!(
        failures().await.1.as_deref(),
        Some("cannot connect to the subscriber")
    );

    // Then it answers, but 503.
    let receiver = Arc::new(Receiver::default());
    serve_receiver(
        TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
        receiver.clone(),
    );
    wait_until("the subscriber has refused twice", async || {
        *receiver.refused.lock().unwrap() >= 2
    })
    .await;
    assert_eq!(
        failures().await.1.as_deref(),
        Some("the subscriber answered HTTP 503")
    );
    assert!(receiver.accepted.lock().unwrap().is_empty());

    // Then it is back.
    receiver.up.store(true, Ordering::SeqCst);
    let expected: Vec<i64> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.position > from)
        .filter(|e| ["session.started", "session.revoked"].contains(&e.event_type.as_str()))
        .map(|e| e.position)
        .collect();
    assert_eq!(expected.len(), 3, "two logins and a logout");
    wait_until("everything is delivered", async || {
        receiver.accepted.lock().unwrap().len() >= expected.len()
    })
    .await;
    // One more event after recovery: anything delivered twice would arrive before it.
    app.login("alice").await;
    wait_until("the next event is delivered", async || {
        receiver.accepted.lock().unwrap().len() > expected.len()
    })
    .await;

    let accepted = receiver.accepted.lock().unwrap().clone();
    let positions: Vec<i64> = accepted
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        &positions[..expected.len()],
        &expected[..],
        "in order, once each"
    );
    assert_eq!(positions.len(), expected.len() + 1);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    for r in &accepted {
        assert_signed(r, &secret);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(header(r, "sessiond-event-type"), body["type"]);
        assert!(!String::from_utf8_lossy(&r.body).contains("password_hash"));
    }
    let first: Value = serde_json::from_slice(&accepted[0].body).unwrap();
    assert_eq!(first["type"], "session.started");
    assert_eq!(first["data"]["session_id"], a.session_id.as_str());
    assert_eq!(failures().await.0, 0, "a success clears the failure count");
    assert!(
        !captured_logs().contains(&secret),
        "the webhook secret reached the logs"
    );
}

#[tokio::test]
async fn revocations_go_out_as_caep_security_event_tokens() {
    let app = fast_retries_app().await;
    let admin = security_token(&app).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Arc::new(Receiver::default());
    receiver.up.store(true, Ordering::SeqCst);
    serve_receiver(listener, receiver.clone());
    let sub = subscribe(&app, &admin, json!({ "url": url, "format": "caep" })).await;
    assert_eq!(sub["event_types"], json!(["session.revoked"]));
    let secret = sub["secret"].as_str().unwrap().to_owned();

    let user_id = app.register("bob").await;
    let t = app.login("bob").await;
    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    wait_until("the revocation is delivered", async || {
        !receiver.accepted.lock().unwrap().is_empty()
    })
    .await;

    let got = receiver.accepted.lock().unwrap()[0].clone();
    assert_eq!(header(&got, "content-type"), "application/secevent+jwt");
    assert_signed(&got, &secret);
    let jwt = String::from_utf8(got.body.clone()).unwrap();
    let h = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(h.typ.as_deref(), Some("secevent+jwt"));
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = crate::jobs::verify_with_jwks(&jwks, &jwt, Some(&url));
    assert_eq!(claims["iss"], "sessiond");
    assert_eq!(claims["sub_id"]["session"]["id"], t.session_id.as_str());
    assert_eq!(claims["sub_id"]["user"]["id"], user_id.as_str());
    let event =
        &claims["events"]["https://schemas.openid.net/secevent/caep/event-type/session-revoked"];
    assert_eq!(event["initiating_entity"], "user");
    assert_eq!(event["reason_admin"]["en"], "logout");
    assert!(event["event_timestamp"].is_i64());
}

#[tokio::test]
async fn the_admin_api_is_for_the_security_role_and_checks_its_input() {
    let app = fast_retries_app().await;
    app.register("mallory").await;
    let user = app.login("mallory").await.access;
    let r = app
        .http
        .get(app.url("/v1/admin/webhooks"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
    let r = app
        .http
        .get(app.url("/v1/admin/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let admin = security_token(&app).await;
    let post = |body: Value| {
        app.http
            .post(app.url("/v1/admin/webhooks"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    for (body, code) in [
        (json!({ "url": "ftp://example.test/x" }), "invalid_url"),
        (json!({ "url": "not a url" }), "invalid_url"),
        (json!({ "url": "http://u:p@example.test/" }), "invalid_url"),
        (
            json!({ "url": "http://example.test/", "event_types": ["session.teleported"] }),
            "invalid_event_type",
        ),
        (
            json!({ "url": "http://example.test/", "format": "xml" }),
            "invalid_format",
        ),
    ] {
        assert_eq!(
            error_code(post(body).await.unwrap(), StatusCode::BAD_REQUEST).await,
            code
        );
    }
    assert!(app.service.webhooks().await.unwrap().is_empty());

    let created = subscribe(&app, &admin, json!({ "url": "http://127.0.0.1:9/hook" })).await;
    let id = created["subscription_id"].as_str().unwrap();
    let listed: Value = app
        .http
        .get(app.url("/v1/admin/webhooks"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["subscriptions"][0]["subscription_id"], id);
    assert!(listed["subscriptions"][0].get("secret").is_none());
    let del = |id: String| {
        app.http
            .delete(app.url(&format!("/v1/admin/webhooks/{id}")))
            .bearer_auth(&admin)
            .send()
    };
    assert_eq!(
        del(id.to_owned()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        error_code(del(id.to_owned()).await.unwrap(), StatusCode::NOT_FOUND).await,
        "not_found"
    );
    assert_eq!(
        error_code(del("nope".into()).await.unwrap(), StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
}

#[tokio::test]
async fn the_cli_creates_lists_and_deletes_subscriptions() {
    let app = spawn_app().await;
    let dir = app.data_dir.path();
    let (ok, out, err) = sessiond_cli(
        &[
            "webhooks",
            "create",
            "--url",
            "https://siem.example.test/in",
            "--event-type",
            "session.revoked,session.reuse_detected",
        ],
        dir,
    );
    assert!(ok, "{out}{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("subscription "))
        .unwrap()
        .to_owned();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret "))
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("whsec_"));

    let (ok, out, _) = sessiond_cli(&["webhooks", "list"], dir);
    assert!(ok);
    let listed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["subscription_id"], id.as_str());
    assert_eq!(
        listed["event_types"],
        json!(["session.revoked", "session.reuse_detected"])
    );
    assert!(!out.contains(&secret), "list must not show the secret");

    let (ok, _, err) = sessiond_cli(
        &[
            "webhooks",
            "create",
            "--url",
            "https://x.test/",
            "--event-type",
            "nope",
        ],
        dir,
    );
    assert!(!ok);
    assert!(err.contains("unknown event type"), "{err}");

    let (ok, out, _) = sessiond_cli(&["webhooks", "delete", &id], dir);
    assert!(ok, "{out}");
    let (ok, out, _) = sessiond_cli(&["webhooks", "list"], dir);
    assert!(ok);
    assert!(out.trim().is_empty(), "{out}");
    let (ok, _, err) = sessiond_cli(&["webhooks", "delete", &id], dir);
    assert!(!ok);
    assert!(err.contains("no subscription"), "{err}");
}

#[tokio::test]
async fn subscriptions_are_in_the_log_with_the_caller_as_actor_and_without_their_secret() {
    let app = fast_retries_app().await;
    let admin = security_token(&app).await;
    let officer = app
        .service
        .store
        .user_by_name("sec-officer")
        .await
        .unwrap()
        .unwrap();
    let created = subscribe(
        &app,
        &admin,
        json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["session.revoked"] }),
    )
    .await;
    let id = created["subscription_id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let r = app
        .http
        .delete(app.url(&format!("/v1/admin/webhooks/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let events = app
        .events(sessiond::store::EventFilter {
            stream_id: Some(format!("webhook-{id}")),
            ..Default::default()
        })
        .await;
    assert_eq!(
        types(&events),
        ["webhook.subscribed", "webhook.unsubscribed"]
    );
    let subscribed = data(&events[0]);
    assert_eq!(subscribed["url"], "http://127.0.0.1:9/hook");
    assert_eq!(subscribed["event_types"], json!(["session.revoked"]));
    assert_eq!(subscribed["format"], "json");
    for e in &events {
        let meta: Value = serde_json::from_str(&e.metadata).unwrap();
        assert_eq!(
            meta["actor"],
            json!({ "kind": "admin", "id": officer.user_id })
        );
        assert!(!e.data.contains(&secret), "the secret stays out of the log");
    }
}
