//! OpenID Connect Discovery 1.0 and the keys relying parties verify ID tokens with: the
//! issuer is exactly `public_url`, the document agrees with the RFC 8414 one, and the JWKS
//! publishes an RS256 key beside the Ed25519 one.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = app
        .http
        .get(app.url(path))
        // The attacker's header: a Host of their choosing, hoping for links to their server.
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let text = r.text().await.unwrap();
    assert!(!text.contains("evil.example"), "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn discovery_names_the_public_url_as_issuer_exactly_and_agrees_with_rfc_8414() {
    let public = "https://id.example.com/tenant-a";
    let app = spawn_app_with(|c| c.public_url = Some(public.into())).await;
    let doc = get_json(&app, "/.well-known/openid-configuration").await;
    assert_eq!(
        doc["issuer"], public,
        "exactly public_url, no trailing slash"
    );
    for (field, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("end_session_endpoint", "/oauth/end_session"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("introspection_endpoint", "/oauth/introspect"),
    ] {
        assert_eq!(doc[field], format!("{public}{path}"), "{field}");
    }
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256", "EdDSA"])
    );
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["acr_values_supported"], json!(["urn:sessiond:acr:pwd"]));
    assert_eq!(doc["backchannel_logout_supported"], true);
    assert_eq!(doc["backchannel_logout_session_supported"], true);
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["EdDSA", "ES256"])
    );
    for claim in ["sub", "auth_time", "nonce", "acr", "amr", "sid", "at_hash"] {
        assert!(
            doc["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(claim)),
            "{claim}"
        );
    }
    assert!(
        doc["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("openid"))
    );
    let methods = doc["token_endpoint_auth_methods_supported"].clone();
    for m in ["none", "client_secret_basic", "client_secret_post"] {
        assert!(methods.as_array().unwrap().contains(&json!(m)), "{m}");
    }

    // Every member the RFC 8414 document has, discovery has with the same value.
    let oauth = get_json(&app, "/.well-known/oauth-authorization-server").await;
    for (k, v) in oauth.as_object().unwrap() {
        assert_eq!(&doc[k], v, "{k}");
    }
}

#[tokio::test]
async fn without_public_url_the_issuer_is_the_listen_address() {
    let app = spawn_app().await;
    let doc = get_json(&app, "/.well-known/openid-configuration").await;
    let listen = app.service.config.listen;
    assert_eq!(doc["issuer"], format!("http://{listen}"));
    assert_eq!(
        doc["jwks_uri"],
        format!("http://{listen}/.well-known/jwks.json")
    );
}

#[tokio::test]
async fn the_jwks_publishes_an_rs256_key_beside_the_ed25519_one() {
    let app = spawn_app().await;
    let jwks = get_json(&app, "/.well-known/jwks.json").await;
    let keys = jwks["keys"].as_array().unwrap();
    let rsa: Vec<&Value> = keys.iter().filter(|k| k["kty"] == "RSA").collect();
    assert_eq!(rsa.len(), 1, "{jwks}");
    let rsa = rsa[0];
    assert_eq!(rsa["alg"], "RS256");
    assert_eq!(rsa["use"], "sig");
    assert_eq!(rsa["kid"], app.service.tokens.active_rsa_kid().as_str());
    assert_eq!(rsa["e"], "AQAB");
    // A 2048-bit modulus: 256 bytes.
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        rsa["n"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(n.len(), 256);
    assert!(
        n[0] & 0x80 != 0,
        "the top bit is set: a full 2048-bit modulus"
    );
    for k in keys {
        assert!(
            k.get("d").is_none() && k.get("p").is_none(),
            "no private member: {k}"
        );
    }
    assert!(
        keys.iter()
            .any(|k| k["kty"] == "OKP" && k["alg"] == "EdDSA")
    );
}
