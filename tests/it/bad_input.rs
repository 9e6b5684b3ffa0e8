//! Malformed requests get a 4xx JSON error and change nothing.

mod corpus;

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn malformed_requests_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    app.register("alice").await;
    let t = app.login("alice").await;
    let before = app.event_count().await;
    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/v1/auth/login",
            json,
            b"{\"username\": \"alice\",".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/auth/login",
            "text/plain",
            br#"{"username":"alice","password":"x"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/v1/auth/register",
            json,
            vec![b' '; 10 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "/v1/auth/login",
            json,
            br#"{"username":"alice"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/auth/login",
            json,
            br#"{"username":["alice"],"password":"x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/auth/refresh",
            json,
            br#"{"refresh_token":42}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/auth/register",
            json,
            br#"{"username":"bad name!","password":"long enough"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_username",
        ),
        (
            "/v1/auth/register",
            json,
            br#"{"username":"shorty","password":"short"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_password",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r, status).await, code, "{path} {content_type}");
    }

    // The real token's public id with another random part: found by id, refused by hash.
    let forged = {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut body = URL_SAFE_NO_PAD
            .decode(t.refresh.strip_prefix("sdrt_").unwrap())
            .unwrap();
        body[16..].fill(0);
        format!("sdrt_{}", URL_SAFE_NO_PAD.encode(body))
    };
    for garbage in [
        "",
        "garbage",
        "sdrt_",
        "sdrt_AAAA",
        &format!("sdrt_{}", "A".repeat(43)),
        &format!("sdrt_{}", "A".repeat(64)),
        &forged,
    ] {
        let r = app.refresh(garbage).await;
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_grant",
            "{garbage:?}"
        );
    }
    let r = app
        .http
        .get(app.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app
        .http
        .delete(app.url("/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );

    assert_eq!(
        app.event_count().await,
        before,
        "no malformed request wrote an event"
    );
    app.refresh_ok(&t.refresh).await;
}

#[tokio::test]
async fn forged_access_tokens_are_refused() {
    let app = spawn_app().await;
    app.register("bob").await;
    let t = app.login("bob").await;
    let before = app.event_count().await;
    let (header, rest) = t.access.split_once('.').unwrap();
    let (claims, _signature) = rest.split_once('.').unwrap();

    // alg: none, with the real claims.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{claims}.");
    // Signed by another Ed25519 key that claims the real kid.
    let kid = jsonwebtoken::decode_header(&t.access).unwrap().kid.unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&other).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid);
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    let foreign = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    // The real token with its claims edited (a longer lifetime).
    let mut edited = payload.clone();
    edited["exp"] = json!(edited["exp"].as_i64().unwrap() + 86_400);
    let tampered = format!(
        "{header}.{}.{_signature}",
        URL_SAFE_NO_PAD.encode(edited.to_string())
    );

    for (what, token) in [
        ("alg none", unsigned),
        ("another key", foreign),
        ("edited claims", tampered),
        ("garbage", "not.a.jwt".into()),
    ] {
        let r = app.me(&token).await;
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_token",
            "{what}"
        );
    }
    let r = app
        .http
        .get(app.url("/v1/me"))
        .header("authorization", "Basic Ym9iOmh1bnRlcjI=")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    assert_eq!(app.event_count().await, before);
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
}
