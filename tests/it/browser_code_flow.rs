//! The code flow's sign-in page in headless Chromium (issue 14): a public client whose redirect
//! URI is a small listener on loopback, the authorization request with PKCE opened in the
//! browser, `username` and `password` typed into the page, and the callback received by the
//! listener with the code and the unchanged `state`; the code is then exchanged like any
//! application would. Skipped like the other browser tests without chromedriver (not in CI).

use crate::browser::Browser;
use crate::code_flow::{param, pkce};
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::domain::event::Actor;
use sessiond::service::clients::NewClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The application's callback: answers every request with a small page and hands the request
/// target of each `/callback` to the test.
async fn callback_listener() -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/callback", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let body =
                    "<!doctype html><title>Photo App</title><h1>Back at the application</h1>";
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                             connection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                if target.starts_with("/callback") {
                    let _ = tx.send(target);
                }
            });
        }
    });
    (uri, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_flow_sign_in_page_works_in_a_real_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    app.register("alice").await;
    let (redirect_uri, mut callbacks) = callback_listener().await;
    let client = app
        .service
        .create_client(
            NewClient {
                name: "Photo App".into(),
                redirect_uris: vec![redirect_uri.clone()],
                public: true,
                first_party: true,
                ..Default::default()
            },
            Actor::System,
        )
        .await
        .unwrap()
        .client;
    let (verifier, challenge) = pkce();
    let state = "xyz ABC/+=&?";
    let request = reqwest::Url::parse_with_params(
        &app.url("/oauth/authorize"),
        &[
            ("response_type", "code"),
            ("client_id", client.client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", "openid profile offline_access"),
            ("state", state),
            ("nonce", "n-browser-1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();

    b.goto(request.as_str()).await;
    b.wait_for("form input[name=username][autocomplete=username]", 1)
        .await;
    b.wait_for(
        "form input[name=password][autocomplete=current-password]",
        1,
    )
    .await;
    assert!(b.text_of_page().await.contains("Photo App"));
    b.screenshot("code-flow-sign-in.png").await;
    b.type_into("input[name=username]", "alice").await;
    b.type_into("input[name=password]", PASSWORD).await;
    b.click("#sign-in").await;

    let target = tokio::time::timeout(std::time::Duration::from_secs(10), callbacks.recv())
        .await
        .expect("the browser came back to the application")
        .unwrap();
    let callback = format!("http://x{target}");
    assert_eq!(
        param(&callback, "state").as_deref(),
        Some(state),
        "{callback}"
    );
    assert_eq!(param(&callback, "error"), None, "{callback}");
    assert_eq!(
        param(&callback, "iss").as_deref(),
        Some(app.service.oauth_issuer().as_str())
    );
    let code = param(&callback, "code").expect("a code in the callback");
    b.wait_for("h1", 1).await;
    assert!(b.text_of_page().await.contains("Back at the application"));
    b.screenshot("code-flow-callback.png").await;

    // The application exchanges the code with its verifier.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", client.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let claims = app
        .service
        .tokens
        .verify(access, app.service.now())
        .unwrap();
    let session = app
        .service
        .store
        .session(claims.sid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        session.client_id.as_deref(),
        Some(client.client_id.as_str())
    );
    let id_token = tokens["id_token"].as_str().expect("an ID token");
    let payload = id_token.split('.').nth(1).unwrap();
    let id: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(id["nonce"], "n-browser-1");
    assert_eq!(id["aud"], client.client_id.as_str());
    assert_eq!(id["sid"], claims.sid.to_string());
    let info: Value = app
        .http
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["preferred_username"], "alice");

    // The code was single use: the browser's back button and a replay get nothing.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", client.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
