//! Load shedding (issue 11, point 2): the argon2 queue is bounded and sheds at once, the HTTP
//! server has header-read (idle), request and in-flight limits, `/healthz` and refreshes answer
//! through a login flood, and an unreachable database is a 503 `unavailable`, not a 500.

use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_answered_while_refresh_and_healthz_keep_answering() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.password_queue = 4;
    })
    .await;
    app.register("ivan").await;
    let tokens = app.login("ivan").await;

    // The attacker's flood: 300 logins at once, each another name from another network, so
    // that no throttle answers them and every one wants argon2.
    let mut flood = Vec::new();
    for i in 0..300u32 {
        let http = app.http.clone();
        let url = app.url("/v1/auth/login");
        flood.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header(
                    "x-forwarded-for",
                    format!("198.{}.{}.1", 18 + i / 250, i % 250),
                )
                .json(&json!({ "username": format!("flood{i}"), "password": "guess" }))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or("").to_owned(),
                retry,
            )
        }));
    }
    // Meanwhile the real user refreshes and the orchestrator probes liveness.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let refreshed = app.refresh_ok(&tokens.refresh).await;

    let mut shed = 0;
    for task in flood {
        let (status, code, retry) = task.await.unwrap();
        match status {
            401 => assert_eq!(code, "invalid_credentials"),
            429 => assert_eq!(code, "too_many_attempts"),
            503 => {
                assert_eq!(code, "overloaded");
                assert!(retry, "a shed request says when to come back");
                shed += 1;
            }
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert!(shed > 0, "with a queue of 4, a flood of 300 is partly shed");
    // After the flood the service is whole.
    app.refresh_ok(&refreshed.refresh).await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn past_the_in_flight_limit_a_request_is_refused_at_once_but_healthz_answers() {
    let app = spawn_app_with(|c| c.http_max_in_flight = 1).await;
    // One request holds the only slot: its body never arrives in full.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app
        .post_json("/v1/auth/login", json!({"username": "a", "password": "b"}))
        .await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "overloaded"
    );
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    drop(slow);
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_answered_503() {
    let app = spawn_app_with(|c| c.http_request_timeout = chrono::Duration::milliseconds(1)).await;
    // A registration spends ~15 ms in argon2, far past the limit.
    let r = app
        .post_json(
            "/v1/auth/register",
            json!({"username": "judy", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "request_timeout"
    );
}

/// Reads until the server closes the connection; what it sent, or None if it never closed.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_by_the_header_read_timeout() {
    let app =
        spawn_app_with(|c| c.http_header_read_timeout = chrono::Duration::milliseconds(300)).await;
    // Slowloris: the head of a request, never finished.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut slow)
        .await
        .expect("the server closes it");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // A kept-alive connection that sends nothing after its first request.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle)
        .await
        .expect("the server closes it");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"));
}

/// A TCP relay to PostgreSQL that can be cut, as a lost database would be.
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

async fn relay_to(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, mut is_cut) = watch::channel(false);
    let cut_rx = cut.subscribe();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                accepted = listener.accept() => accepted.unwrap(),
                _ = is_cut.wait_for(|c| *c) => return, // the listener closes: refused
            };
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    Relay { addr, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_unreachable_requests_get_503_unavailable_and_readyz_says_so() {
    let Some(db) = fresh_database("while_the_database_is_unreachable").await else {
        return;
    };
    // postgres://user@host:port/name -> the same through the relay.
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (userinfo, hostpath) = rest.split_once('@').unwrap();
    let (hostport, path) = hostpath.split_once('/').unwrap();
    let target: SocketAddr = hostport.replace("localhost", "127.0.0.1").parse().unwrap();
    let relay = relay_to(target).await;
    let url = format!("{scheme}://{userinfo}@{}/{path}", relay.addr);
    let app = spawn_app_with(move |c| {
        c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
    })
    .await;
    app.register("kate").await;
    let tokens = app.login("kate").await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    relay.cut.send(true).unwrap();

    let r = app.refresh(&tokens.refresh).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({"username": "kate", "password": PASSWORD}),
        )
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    let r = app.me(&tokens.access).await;
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );

    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_ne!(body["checks"]["store"], "ok", "{body}");
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the process itself is alive");
    assert!(!captured_logs().contains(PASSWORD));
}
