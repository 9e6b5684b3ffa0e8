//! Refresh tokens, passwords and private keys never reach logs, events or error messages.

use crate::helpers::*;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::json;
use sessiond::tokens::keys::{MasterKey, SigningKey};

#[tokio::test]
async fn secrets_stay_out_of_logs_events_and_errors() {
    let app = spawn_app().await;
    let password = format!("pw-{}", uuid::Uuid::new_v4());
    let new_password = format!("pw2-{}", uuid::Uuid::new_v4());
    let r = app
        .post_json(
            "/v1/auth/register",
            json!({ "username": "zed", "password": password }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut errors = Vec::new();
    let r = app.login_as("zed", &password).await;
    let t1 = Tokens::from_json(&r.json().await.unwrap());
    let r = app.login_as("zed", &format!("{password}-wrong")).await;
    errors.push(r.text().await.unwrap());
    let t2 = app.refresh_ok(&t1.refresh).await;
    let t3 = app.refresh_ok(&t1.refresh).await; // a grace retry: t2 again
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&t2.access)
        .json(&json!({ "current_password": password, "new_password": new_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.clock.advance(sessiond::domain::Duration::minutes(11));
    let r = app.refresh(&t1.refresh).await; // reuse
    errors.push(r.text().await.unwrap());
    let r = app
        .post_json("/v1/auth/logout", json!({ "refresh_token": t3.refresh }))
        .await;
    errors.push(r.text().await.unwrap());
    let r = app
        .post_json(
            "/v1/auth/login",
            json!({ "username": "zed", "password": 12345 }),
        )
        .await;
    errors.push(r.text().await.unwrap());

    // The signing key's private half, as bytes and as the encodings a leak would take.
    let master = MasterKey::load(None, app.data_dir.path()).unwrap();
    let stored = app.service.store.signing_keys().await.unwrap();
    // Every private half (Ed25519 for access tokens, RSA for ID tokens): the DER, and for the
    // Ed25519 key its seed in the encodings a leak would take.
    let mut key_forms = Vec::new();
    for key in &stored {
        let der = master.open(&key.kid, &key.private_key_sealed).unwrap();
        SigningKey::unseal(key, &master).unwrap();
        key_forms.push(base64::engine::general_purpose::STANDARD.encode(&der));
        if key.algorithm == "EdDSA" {
            let secret =
                <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_der(
                    &der,
                )
                .unwrap();
            let seed = secret.to_bytes();
            key_forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed));
            key_forms.push(base64::engine::general_purpose::STANDARD.encode(seed));
            key_forms.push(sessiond::domain::token::hex(&seed));
        }
    }
    assert!(
        stored.iter().any(|k| k.algorithm == "EdDSA"),
        "an Ed25519 key is checked"
    );
    let master_text = std::fs::read_to_string(app.data_dir.path().join("master.key")).unwrap();
    // The refresh-token secret every token is minted from.
    let refresh_secret = master.derive(sessiond::tokens::refresh::SECRET_LABEL);
    let key_forms: Vec<String> = key_forms
        .into_iter()
        .chain([
            sessiond::domain::token::hex(&refresh_secret),
            base64::engine::general_purpose::STANDARD.encode(refresh_secret),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(refresh_secret),
        ])
        .collect();

    let events = app.all_events().await;
    let stored_text: String = events
        .iter()
        .map(|e| format!("{}\n{}\n", e.data, e.metadata))
        .collect();
    let logs = captured_logs();
    let haystacks = [
        ("events", stored_text),
        ("logs", logs),
        ("error bodies", errors.join("\n")),
    ];
    let mut secrets = vec![
        password.clone(),
        new_password.clone(),
        master_text.trim().to_owned(),
    ];
    secrets.extend([&t1, &t2, &t3].iter().map(|t| t.refresh.clone()));
    secrets.extend(key_forms);
    for (name, text) in &haystacks {
        assert!(!text.is_empty() || *name != "events");
        for s in &secrets {
            let which = secrets.iter().position(|x| x == s).unwrap();
            assert!(
                !text.contains(s.as_str()),
                "secret #{which} leaked into {name}"
            );
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e.event_type == "session.reuse_detected"),
        "the scenario reached reuse"
    );
}
