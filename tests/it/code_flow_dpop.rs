//! DPoP on the authorization code exchange (issue 13 "every grant binds"; RFC 9449 §5, §10):
//! a code exchanged with a proof gives a `DPoP` access token with `cnf.jkt` and a refresh
//! token bound to the key; a code whose authorization request named a key (`dpop_jkt`) is
//! exchanged only with a proof by that key. Proofs made by jwcrypto (`jose.rs`).

use crate::code_flow::{REDIRECT, Rp, location, oauth_error, param, pkce, register_client};
use crate::helpers::*;
use crate::jose::DpopKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sessiond::clock::Clock;

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A token request of the (public) client, with a `DPoP` header when given.
async fn token(rp: &Rp<'_>, form: &[(&str, &str)], proof: Option<&str>) -> Response {
    let mut form = form.to_vec();
    form.push(("client_id", &rp.client_id));
    let mut req = rp.app.http.post(rp.app.url("/oauth/token")).form(&form);
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    req.send().await.unwrap()
}

fn proof(rp: &Rp<'_>, key: &DpopKey) -> String {
    key.proof(
        "POST",
        &rp.app.url("/oauth/token"),
        rp.app.clock.now().timestamp(),
    )
}

async fn exchange(rp: &Rp<'_>, code: &str, verifier: &str, proof: Option<&str>) -> Response {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    token(rp, &form, proof).await
}

async fn refresh(rp: &Rp<'_>, refresh_token: &str, proof: Option<&str>) -> Response {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    token(rp, &form, proof).await
}

/// A code for alice, with extra authorization request parameters.
async fn code_with(rp: &Rp<'_>, challenge: &str, extra: &[(&str, &str)]) -> String {
    let (r, _) = rp.sign_in(&rp.request(challenge, extra), PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    param(&location(&r), "code").expect("a code")
}

#[tokio::test]
async fn a_code_exchanged_with_a_proof_gives_tokens_bound_to_that_key() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let key = DpopKey::ed25519();
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let first = proof(&rp, &key);
    let r = exchange(&rp, &code, &verifier, Some(&first)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP", "{t}");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["cnf"]["jkt"], key.jkt.as_str());
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    let session_id = claims(access)["sid"].as_str().unwrap().to_owned();
    let redeemed = app
        .session_events(&session_id)
        .await
        .into_iter()
        .find(|e| e.event_type == "authorization_code.redeemed")
        .expect("the code's redemption");
    assert_eq!(data(&redeemed)["dpop_jkt"], key.jkt.as_str());

    // The access token is no bearer token: sent as one, /v1/me refuses it.
    let r = app.me(access).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // An attacker who copied the refresh token: without a proof, with their own key, or with
    // the client's proof they saw on the wire (its jti is spent).
    let r = refresh(&rp, &rt, None).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let thief = DpopKey::p256();
    let r = refresh(&rp, &rt, Some(&proof(&rp, &thief))).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let mismatches: Vec<Value> = app
        .session_events(&session_id)
        .await
        .iter()
        .filter(|e| e.event_type == "session.dpop_mismatch")
        .map(data)
        .collect();
    assert_eq!(mismatches.len(), 2, "{mismatches:?}");
    assert_eq!(mismatches[0]["fault"], "missing");
    assert_eq!(mismatches[1]["fault"], "other_key");
}

#[tokio::test]
async fn the_holder_of_the_key_refreshes_a_code_grant_family_and_a_spent_proof_is_refused() {
    let app = spawn_app_with(|c| c.rules = None).await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let key = DpopKey::p256();
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let first = proof(&rp, &key);
    let r = exchange(&rp, &code, &verifier, Some(&first)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    // The exchange's own proof again: seen before, refused.
    let r = refresh(&rp, rt, Some(&first)).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let r = refresh(&rp, rt, Some(&proof(&rp, &key))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    assert_eq!(
        claims(t["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt.as_str()
    );
}

#[tokio::test]
async fn a_code_bound_by_dpop_jkt_is_exchanged_only_with_a_proof_by_that_key() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let key = DpopKey::ed25519();
    let (verifier, challenge) = pkce();
    let code = code_with(&rp, &challenge, &[("dpop_jkt", key.jkt.as_str())]).await;
    let before = app.event_count().await;

    // The attacker who intercepted the code and the verifier: without a proof, then with a
    // proof by their own key. Refused, nothing redeemed.
    let r = exchange(&rp, &code, &verifier, None).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let thief = DpopKey::ed25519();
    let r = exchange(&rp, &code, &verifier, Some(&proof(&rp, &thief))).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    assert_eq!(app.event_count().await, before, "nothing recorded");

    // The client that holds the key still exchanges it, bound.
    let r = exchange(&rp, &code, &verifier, Some(&proof(&rp, &key))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    assert_eq!(
        claims(t["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt.as_str()
    );
}

#[tokio::test]
async fn a_malformed_dpop_jkt_is_refused_at_the_authorization_endpoint() {
    let app = spawn_app().await;
    let rp = register_client(&app, true, true).await;
    let (_, challenge) = pkce();
    for bad in ["short", "not base64url!!not base64url!!not base64url!!"] {
        let r = rp
            .authorize(&rp.request(&challenge, &[("dpop_jkt", bad)]), "")
            .await;
        assert_eq!(r.status(), StatusCode::FOUND);
        let loc = location(&r);
        assert!(loc.starts_with(REDIRECT), "{loc}");
        assert_eq!(param(&loc, "error").as_deref(), Some("invalid_request"));
        assert!(param(&loc, "code").is_none());
        assert!(
            param(&loc, "error_description").is_some_and(|d| d.contains("dpop_jkt")),
            "{loc}"
        );
    }
}
