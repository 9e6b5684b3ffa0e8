//! Where webhooks may go and how: https by default, verified with the built-in roots or an
//! extra CA file; loopback, private, link-local and metadata destinations refused at
//! subscription (400) and again at connect time after DNS resolution, unless allow-listed.
//! No test here sends a packet anywhere but 127.0.0.1: refused destinations are refused
//! before any connection, and the allow-listed private ones get subscriptions to an event
//! type the tests never cause.

use crate::helpers::*;
use crate::tls::{https_receiver, make_pki};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::commands::Subscribe;
use sessiond::domain::event::{Actor, EventMetadata};
use sessiond::domain::webhook::WebhookFormat;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

async fn api_key(app: &TestApp) -> String {
    let (_, key) = app
        .service
        .create_api_key("siem", vec!["security".into()])
        .await
        .unwrap();
    key.expose().to_owned()
}

async fn create(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/admin/webhooks"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn subscriptions(app: &TestApp, key: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url("/v1/admin/webhooks"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["subscriptions"].as_array().unwrap().clone()
}

/// Waits (a generous bound, so a broken build fails rather than hangs) for `done`.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..1500 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

const NEVER: &str = "user.locked";

#[tokio::test]
async fn a_webhook_to_loopback_private_or_metadata_addresses_is_refused_with_400_unless_allow_listed()
 {
    let app = spawn_app().await;
    let key = api_key(&app).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/iam/",
        "https://[::1]:8443/hook",
        "https://[fd00:ec2::254]/",
        "https://100.64.1.1/",
        "https://192.168.0.10/",
        "https://[::ffff:10.0.0.1]/",
        // A name is judged by what it resolves to.
        "https://localhost:9443/hook",
    ] {
        // POST /v1/admin/webhooks {"url": url}
        let r = create(&app, &key, json!({ "url": url, "event_types": [NEVER] })).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "destination_not_allowed", "{url}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("webhook_allow_networks"),
            "{body}"
        );
    }
    let r = create(&app, &key, json!({ "url": "http://hooks.example.com/in" })).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_url");
    assert!(
        body["message"].as_str().unwrap().contains("http://"),
        "{body}"
    );
    assert!(
        subscriptions(&app, &key).await.is_empty(),
        "nothing was stored"
    );

    // The operator allows the private networks it means to reach.
    let app = spawn_app_with(|c| {
        c.webhook_allow_networks = vec![
            "10.0.0.0/8".parse().unwrap(),
            "169.254.169.254/32".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    let key = api_key(&app).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/hook",
    ] {
        let r = create(&app, &key, json!({ "url": url, "event_types": [NEVER] })).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{url}");
        let id = r.json::<Value>().await.unwrap()["subscription_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = app
            .http
            .delete(app.url(&format!("/v1/admin/webhooks/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Still not the rest of the private space.
    let r = create(
        &app,
        &key,
        json!({ "url": "https://192.168.0.10/", "event_types": [NEVER] }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// A TCP listener on 127.0.0.1 that counts connections (and answers nothing).
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

/// Records a subscription the way the writer would have when the check at subscription passed
/// (the name resolved elsewhere then, or an allow-list has since been removed).
async fn subscribe_directly(app: &TestApp, url: &str) -> Uuid {
    let id = Uuid::new_v4();
    let command = Subscribe {
        subscription_id: id,
        url: url.to_owned(),
        event_types: vec![],
        format: WebhookFormat::Json,
        secret_sealed: app.service.master_key.seal(&id.to_string(), b"whsec_test"),
    };
    app.service
        .writer
        .submit(command, EventMetadata::new(Actor::System, None))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn at_connect_time_a_name_resolving_to_loopback_and_a_loopback_literal_are_refused() {
    let app = spawn_app_with(|c| {
        c.webhook_allow_http = true;
        c.webhook_retry_initial = sessiond::domain::Duration::milliseconds(20);
        c.webhook_retry_max = sessiond::domain::Duration::milliseconds(100);
        c.webhook_poll_interval = sessiond::domain::Duration::milliseconds(50);
    })
    .await;
    let key = api_key(&app).await;
    let (port, connections) = counting_listener().await;
    // DNS rebinding: the name now resolves to 127.0.0.1; and an address given literally.
    let by_name = subscribe_directly(&app, &format!("http://localhost:{port}/hook")).await;
    let by_ip = subscribe_directly(&app, &format!("http://127.0.0.1:{port}/hook")).await;
    app.register("alice").await;
    wait_until("both deliveries to fail", async || {
        let subs = subscriptions(&app, &key).await;
        subs.len() == 2 && subs.iter().all(|s| s["failures"].as_i64().unwrap() >= 2)
    })
    .await;
    for s in subscriptions(&app, &key).await {
        // Nothing about the refused address or its range leaks into what the API shows.
        assert_eq!(s["last_error"], "destination not allowed", "{s}");
        assert!(
            [by_name, by_ip].contains(&s["subscription_id"].as_str().unwrap().parse().unwrap())
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "no connection was made to the refused address"
    );
}

#[tokio::test]
async fn https_webhooks_are_verified_against_the_extra_ca_file_and_refused_without_it() {
    let pki = make_pki();
    let (port, seen) = https_receiver(&pki).await;
    let fast = |c: &mut sessiond::config::Config| {
        c.webhook_allow_networks = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        c.webhook_retry_initial = sessiond::domain::Duration::milliseconds(20);
        c.webhook_retry_max = sessiond::domain::Duration::milliseconds(200);
        c.webhook_poll_interval = sessiond::domain::Duration::milliseconds(50);
    };

    // Without the private CA: the certificate is not trusted, nothing is delivered.
    let untrusting = spawn_app_with(fast).await;
    let key = api_key(&untrusting).await;
    let url = format!("https://localhost:{port}/hook");
    let r = create(
        &untrusting,
        &key,
        json!({ "url": url, "event_types": ["user.registered"] }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    untrusting.register("alice").await;
    wait_until("the untrusted delivery to fail", async || {
        let subs = subscriptions(&untrusting, &key).await;
        subs[0]["failures"].as_i64().unwrap() >= 1
            && seen.handshakes_failed.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "no request got through"
    );
    drop(untrusting);

    // With it (webhook_ca_file): delivered over TLS, signed as ever.
    let ca = pki.ca.clone();
    let app = spawn_app_with(move |c| {
        fast(c);
        c.webhook_ca_file = Some(ca);
    })
    .await;
    let key = api_key(&app).await;
    let r = create(
        &app,
        &key,
        json!({ "url": url, "event_types": ["user.registered"] }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.register("bob").await;
    wait_until("the delivery over TLS", async || {
        !seen.requests.lock().unwrap().is_empty()
    })
    .await;
    let request = seen.requests.lock().unwrap()[0].clone();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    assert!(request.contains("sessiond-signature: v1="), "{request}");
    assert!(request.contains("user.registered"), "{request}");
}

#[tokio::test]
async fn a_missing_or_empty_ca_file_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [dir.path().join("missing.pem"), empty] {
        let config = sessiond::config::Config {
            data_dir: dir.path().join("data"),
            webhook_ca_file: Some(path.clone()),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        let e = sessiond::App::build(config)
            .await
            .err()
            .expect("the start fails");
        assert!(
            e.to_string().contains("webhook_ca_file")
                && e.to_string().contains(path.to_str().unwrap()),
            "{e}"
        );
    }
}
