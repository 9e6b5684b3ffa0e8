//! OpenID Connect Back-Channel Logout 1.0 (issue 14, point 6) against the real server: a client
//! registered with a `backchannel_logout_uri` signs alice in through the code flow, the session
//! is revoked, and the client's endpoint receives `logout_token=...` that jwcrypto (an
//! independent JOSE library, `tests/support/verify_jwt.py`) verifies against the JWKS; and a
//! client that was down gets it once it is back. On SQLite and on PostgreSQL.

use crate::code_flow::{REDIRECT, Rp, pkce, register_client_with};
use crate::helpers::*;
use crate::pg::{TestDatabase, fresh_database};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::domain::Duration;
use sessiond::service::clients::NewClient;
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A client's back-channel logout endpoint: 500 while `up` is false, 200 (keeping the request's
/// content type and body) once it is true.
#[derive(Default)]
struct Endpoint {
    up: AtomicBool,
    refused: Mutex<usize>,
    accepted: Mutex<Vec<(String, String)>>,
}

fn serve_endpoint(listener: TcpListener, state: Arc<Endpoint>) {
    let app = axum::Router::new().route(
        "/backchannel-logout",
        axum::routing::post(
            |axum::extract::State(s): axum::extract::State<Arc<Endpoint>>,
             headers: HeaderMap,
             body: String| async move {
                if !s.up.load(Ordering::SeqCst) {
                    *s.refused.lock().unwrap() += 1;
                    return AxumStatus::INTERNAL_SERVER_ERROR;
                }
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                s.accepted.lock().unwrap().push((ct, body));
                AxumStatus::OK
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

/// The app on SQLite, then on PostgreSQL, with retries fast enough for a test and loopback
/// receivers allowed.
async fn apps(test: &str) -> Vec<(TestApp, Option<TestDatabase>)> {
    let configure = |url: Option<String>| {
        move |c: &mut sessiond::config::Config| {
            local_webhooks(c);
            c.webhook_retry_initial = Duration::milliseconds(20);
            c.webhook_retry_max = Duration::milliseconds(100);
            c.webhook_poll_interval = Duration::milliseconds(50);
            if let Some(url) = url {
                c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
            }
        }
    };
    let mut all = vec![(spawn_app_with(configure(None)).await, None)];
    if let Some(db) = fresh_database(test).await {
        let app = spawn_node(
            configure(Some(db.url.clone())),
            Arc::new(ManualClock::default()),
            None,
        )
        .await;
        all.push((app, Some(db)));
    }
    all
}

async fn client_with_backchannel(app: &TestApp, port: u16) -> Rp<'_> {
    register_client_with(
        app,
        NewClient {
            name: "Photo App".into(),
            redirect_uris: vec![REDIRECT.into()],
            backchannel_logout_uri: Some(format!("http://127.0.0.1:{port}/backchannel-logout")),
            public: true,
            first_party: true,
            ..Default::default()
        },
    )
    .await
}

/// Signs alice in through the code flow: her session id and refresh token.
async fn code_flow_session(rp: &Rp<'_>) -> (String, String) {
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let r = rp.exchange(&code, &verifier).await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let sid = rp
        .app
        .service
        .tokens
        .verify(access, rp.app.service.now())
        .unwrap()
        .sid;
    (
        sid.to_string(),
        tokens["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// RFC 7009 revocation by the client, as an application's "sign out" does.
async fn revoke(rp: &Rp<'_>, refresh: &str) {
    let r = rp
        .app
        .http
        .post(rp.app.url("/oauth/revoke"))
        .form(&[("token", refresh), ("client_id", &rp.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Verifies `token` against the server's JWKS with jwcrypto: its header and claims.
async fn verified(app: &TestApp, token: &str) -> (Value, Value) {
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut child = crate::helpers::python3(&["jwcrypto"])
        .arg("tests/support/verify_jwt.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (with jwcrypto)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({ "jwks": jwks, "token": token })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the logout token does not verify against the JWKS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["header"].clone(), v["claims"].clone())
}

/// What a relying party checks of a logout token (Back-Channel Logout 1.0 §2.4, §2.6).
async fn assert_logout_token(
    app: &TestApp,
    received: &(String, String),
    client_id: &str,
    sid: &str,
    sub: &str,
) {
    assert_eq!(received.0, "application/x-www-form-urlencoded");
    let token = received
        .1
        .strip_prefix("logout_token=")
        .unwrap_or_else(|| panic!("not a logout_token form: {}", received.1));
    assert!(!token.contains('&'), "one parameter only: {}", received.1);
    let (header, claims) = verified(app, token).await;
    assert_eq!(header["typ"], "logout+jwt");
    assert_eq!(header["alg"], "RS256", "the client registered no other alg");
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claims["iss"], discovery["issuer"]);
    assert_eq!(claims["aud"], client_id);
    assert_eq!(claims["events"][BACKCHANNEL_EVENT], json!({}));
    assert_eq!(claims["sid"], sid);
    assert_eq!(claims["sub"], sub);
    assert!(
        claims["iat"].is_i64() && claims["jti"].is_string(),
        "{claims}"
    );
    assert!(claims.get("nonce").is_none(), "a logout token has no nonce");
}

#[tokio::test]
async fn a_revoked_code_flow_session_sends_its_client_a_logout_token_that_verifies() {
    for (app, _db) in apps("backchannel_delivered").await {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Arc::new(Endpoint::default());
        endpoint.up.store(true, Ordering::SeqCst);
        serve_endpoint(listener, endpoint.clone());

        let alice = app.register("alice").await;
        let rp = client_with_backchannel(&app, port).await;
        // A first-party session of alice's that no client received tokens for: its end is no
        // business of the client's.
        let own = app.login("alice").await;
        let r = app
            .http
            .post(app.url("/v1/auth/logout"))
            .bearer_auth(&own.access)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());

        let (sid, refresh) = code_flow_session(&rp).await;
        revoke(&rp, &refresh).await;

        wait_until("the client's endpoint got a logout token", async || {
            !endpoint.accepted.lock().unwrap().is_empty()
        })
        .await;
        // Delivered in log order: the first-party logout came first and was not sent.
        let got = endpoint.accepted.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_logout_token(&app, &got[0], &rp.client_id, &sid, &alice).await;
    }
}

#[tokio::test]
async fn a_client_that_was_down_gets_the_logout_token_once_it_is_back() {
    for (app, _db) in apps("backchannel_retried").await {
        // A port nobody listens on yet: first the client's endpoint refuses connections.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let alice = app.register("alice").await;
        let rp = client_with_backchannel(&app, port).await;
        let (sid, refresh) = code_flow_session(&rp).await;
        revoke(&rp, &refresh).await;
        let revoked_at = app
            .session_events(&sid)
            .await
            .iter()
            .find(|e| e.event_type == "session.revoked")
            .expect("the session is revoked")
            .position;

        // Then it listens but answers 500.
        let endpoint = Arc::new(Endpoint::default());
        serve_endpoint(
            TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
            endpoint.clone(),
        );
        wait_until("the endpoint has answered 500 twice", async || {
            *endpoint.refused.lock().unwrap() >= 2
        })
        .await;
        let checkpoint = app
            .service
            .store
            .backchannel_checkpoint(&rp.client_id)
            .await
            .unwrap();
        assert!(
            checkpoint.is_none_or(|p| p < revoked_at),
            "the checkpoint stays before an undelivered logout: {checkpoint:?} vs {revoked_at}"
        );

        // Then it is back: the logout is delivered, once, and the checkpoint moves past it.
        endpoint.up.store(true, Ordering::SeqCst);
        wait_until("the checkpoint passed the revocation", async || {
            app.service
                .store
                .backchannel_checkpoint(&rp.client_id)
                .await
                .unwrap()
                .is_some_and(|p| p >= revoked_at)
        })
        .await;
        let got = endpoint.accepted.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_logout_token(&app, &got[0], &rp.client_id, &sid, &alice).await;
    }
}
