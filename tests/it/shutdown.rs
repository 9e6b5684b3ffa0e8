//! SIGTERM under load, against the real binary: it stops accepting, finishes what it was
//! doing, flushes the writer and exits 0; after a restart every refresh it answered 200 to
//! left a token that works.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Server {
    pub child: Child,
    pub base: String,
}

pub async fn start(data_dir: &Path, log: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_MASTER_KEY")
        .env("SESSIOND_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        // A file, not a pipe: a full pipe would block the server's logging.
        .stderr(std::fs::File::create(data_dir.join(log)).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..1000 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return Server { child, base };
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not become ready");
}

/// Sends SIGTERM and returns whether the process exited with status 0.
pub async fn terminate(server: &mut Server) -> bool {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..3000 {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.success();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = server.child.kill();
    panic!("the server did not stop after SIGTERM");
}

async fn refresh(http: &reqwest::Client, base: &str, token: &str) -> Option<(String, String)> {
    let r = http
        .post(format!("{base}/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let body: serde_json::Value = r.json().await.ok()?;
    let t = Tokens::from_json(&body);
    Some((t.refresh, t.access))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "first.log").await;
    let http = reqwest::Client::builder()
        .user_agent(FIREFOX)
        .build()
        .unwrap();
    const CLIENTS: usize = 12;
    let mut chains = Vec::new();
    for i in 0..CLIENTS {
        let name = format!("load{i}");
        let body = json!({ "username": name, "password": PASSWORD });
        let r = http
            .post(format!("{}/v1/auth/register", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = http
            .post(format!("{}/v1/auth/login", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        chains.push(Tokens::from_json(&r.json().await.unwrap()).refresh);
    }

    // Each client refreshes its own chain as fast as it can until the server stops answering;
    // it keeps the token of the last refresh answered 200.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for token in chains {
        let http = http.clone();
        let base = server.base.clone();
        let acknowledged = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            let mut last = token;
            while let Some((next, _)) = refresh(&http, &base, &last).await {
                last = next;
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            last
        }));
    }
    // Load for a while (a deadline only so that a broken server fails the test, not hangs it).
    for _ in 0..6000 {
        if acknowledged.load(Ordering::SeqCst) >= 200 || clients.iter().all(|c| c.is_finished()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        clients.iter().all(|c| !c.is_finished()),
        "every client should still be refreshing when SIGTERM is sent"
    );
    assert!(terminate(&mut server).await, "exit status after SIGTERM");
    let mut last_tokens = Vec::new();
    for c in clients {
        last_tokens.push(c.await.unwrap());
    }
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(log.contains("writer flushed"), "{log}");
    // Structured logs: every line JSON, every request's lines carrying its id, no token.
    let mut requests = 0;
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if entry["target"] == "sessiond::access" {
            requests += 1;
            assert!(entry["span"]["request_id"].is_string(), "{line}");
        }
    }
    assert!(requests >= 200, "{requests} access lines");
    assert!(!log.contains("sdrt_"), "a refresh token reached the log");

    let mut server = start(dir.path(), "second.log").await;
    for token in &last_tokens {
        let (_, access) = refresh(&http, &server.base, token)
            .await
            .expect("the last acknowledged refresh token works after the restart");
        let r = http
            .get(format!("{}/v1/me", server.base))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(terminate(&mut server).await);
}
