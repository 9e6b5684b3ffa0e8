//! DPoP (RFC 9449) against the real server, with keys and proofs from jwcrypto (`jose.rs`):
//! a login with a proof binds the family to the key; a bound refresh token refreshes only with
//! a proof by that key; everything else is refused as `invalid_dpop_proof`, with nothing
//! rotated and the mismatch recorded; bound access tokens are only good as `DPoP` with `ath`.

use crate::helpers::*;
use crate::jose::{Claims, DpopKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sessiond::clock::Clock;
use sessiond::store::EventFilter;

fn now(app: &TestApp) -> i64 {
    app.clock.now().timestamp()
}

fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn post_with_proof(app: &TestApp, path: &str, body: Value, proof: Option<&str>) -> Response {
    let mut r = app.http.post(app.url(path)).json(&body);
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    r.send().await.unwrap()
}

async fn login_bound(app: &TestApp, user: &str, key: &DpopKey) -> Value {
    let proof = key.proof("POST", &app.url("/v1/auth/login"), now(app));
    let r = post_with_proof(
        app,
        "/v1/auth/login",
        json!({"username": user, "password": PASSWORD}),
        Some(&proof),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn refresh_with(app: &TestApp, token: &str, proof: Option<&str>) -> Response {
    post_with_proof(
        app,
        "/v1/auth/refresh",
        json!({ "refresh_token": token }),
        proof,
    )
    .await
}

fn refresh_proof(app: &TestApp, key: &DpopKey) -> String {
    key.proof("POST", &app.url("/v1/auth/refresh"), now(app))
}

async fn mismatches(app: &TestApp, session_id: &str) -> Vec<Value> {
    app.session_events(session_id)
        .await
        .iter()
        .filter(|e| e.event_type == "session.dpop_mismatch")
        .map(data)
        .collect()
}

async fn rotations(app: &TestApp, session_id: &str) -> usize {
    let events = app.session_events(session_id).await;
    types(&events)
        .iter()
        .filter(|t| **t == "session.refreshed")
        .count()
}

#[tokio::test]
async fn a_bound_refresh_token_refreshes_only_with_a_proof_by_its_key() {
    let app = spawn_app().await;
    app.register("dora").await;
    let key = DpopKey::ed25519();
    let login = login_bound(&app, "dora", &key).await;
    assert_eq!(login["token_type"], "DPoP");
    let sid = login["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        jwt_claims(login["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt
    );
    let started = app.session_events(&sid).await;
    assert_eq!(
        data(&started[0])["dpop_jkt"],
        key.jkt,
        "the binding is in the log"
    );

    // The owner of the key refreshes.
    let good = refresh_proof(&app, &key);
    let r = refresh_with(&app, login["refresh_token"].as_str().unwrap(), Some(&good)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let fresh: Value = r.json().await.unwrap();
    assert_eq!(fresh["token_type"], "DPoP");
    assert_eq!(
        jwt_claims(fresh["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt
    );
    let token = fresh["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(rotations(&app, &sid).await, 1);

    // Whoever holds the token without the key: each attempt refused, nothing rotated.
    let url = app.url("/v1/auth/refresh");
    let t = now(&app);
    let other = DpopKey::p256();
    let attacks: Vec<(&str, Option<String>, &str)> = vec![
        ("no proof", None, "missing"),
        (
            "another key",
            Some(other.proof("POST", &url, t)),
            "other_key",
        ),
        (
            "the proof of the last refresh again",
            Some(good.clone()),
            "replayed",
        ),
        (
            "a proof for another server",
            Some(key.proof("POST", "https://elsewhere.example/v1/auth/refresh", t)),
            "invalid",
        ),
        (
            "a proof for another method",
            Some(key.proof("GET", &url, t)),
            "invalid",
        ),
        (
            "a stale proof",
            Some(key.proof("POST", &url, t - 3600)),
            "invalid",
        ),
        (
            "a proof from the future",
            Some(key.proof("POST", &url, t + 3600)),
            "invalid",
        ),
    ];
    for (i, (what, proof, fault)) in attacks.iter().enumerate() {
        let r = refresh_with(&app, &token, proof.as_deref()).await;
        assert_eq!(
            error_code(r, StatusCode::BAD_REQUEST).await,
            "invalid_dpop_proof",
            "{what}"
        );
        let recorded = mismatches(&app, &sid).await;
        assert_eq!(recorded.len(), i + 1, "{what}: the mismatch is recorded");
        assert_eq!(recorded[i]["fault"], *fault, "{what}");
        assert_eq!(rotations(&app, &sid).await, 1, "{what}: nothing rotated");
    }
    let other_key = &mismatches(&app, &sid).await[1];
    assert_eq!(other_key["presented_jkt"], other.jkt);

    // Without the rule pack nothing revoked the family: the key's owner still refreshes.
    let r = refresh_with(&app, &token, Some(&refresh_proof(&app, &key))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(rotations(&app, &sid).await, 2);
}

#[tokio::test]
async fn proofs_that_prove_nothing_about_a_key_are_refused() {
    let app = spawn_app().await;
    app.register("ezra").await;
    let url = app.url("/v1/auth/login");
    let body = json!({"username": "ezra", "password": PASSWORD});
    let key = DpopKey::ed25519();
    let t = now(&app);
    // An attacker's hand-made proofs: alg none, and HS256 "signed" with a key of its choosing.
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = b64(json!({"jti": "x1", "htm": "POST", "htu": url, "iat": t}));
    let none = format!(
        "{}.{claims}.",
        b64(json!({"typ": "dpop+jwt", "alg": "none",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}))
    );
    let hs = format!(
        "{}.{claims}.c2lnbmF0dXJl",
        b64(json!({"typ": "dpop+jwt", "alg": "HS256",
        "jwk": {"kty": "oct", "k": "c2VjcmV0"}}))
    );
    let mut wrong_typ = Claims::new("POST", &url, t);
    wrong_typ.typ = Some("JWT".into());
    let mut private = Claims::new("POST", &url, t);
    private.embed_private = true;
    let forged = {
        // A valid proof whose claims were changed after signing.
        let p = key.proof("POST", &url, t);
        let parts: Vec<&str> = p.split('.').collect();
        let claims = b64(json!({"jti": "x2", "htm": "POST", "htu": url, "iat": t}));
        format!("{}.{claims}.{}", parts[0], parts[2])
    };
    for (what, proof) in [
        ("alg none", none),
        ("HS256", hs),
        ("typ JWT", key.sign(&wrong_typ)),
        ("a private key in the header", key.sign(&private)),
        ("claims changed after signing", forged),
        ("not a JWS", "garbage".to_owned()),
    ] {
        let r = post_with_proof(&app, "/v1/auth/login", body.clone(), Some(&proof)).await;
        assert_eq!(
            error_code(r, StatusCode::BAD_REQUEST).await,
            "invalid_dpop_proof",
            "{what}"
        );
    }
    // Two DPoP headers are refused too.
    let r = app
        .http
        .post(&url)
        .header("DPoP", key.proof("POST", &url, t))
        .header("DPoP", key.proof("POST", &url, t))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    // No session was started by any of them; an ES256 key binds as well as an Ed25519 one.
    let started = app
        .events(EventFilter {
            event_types: vec!["session.started".into()],
            ..Default::default()
        })
        .await;
    assert!(started.is_empty());
    let p256 = DpopKey::p256();
    let login = login_bound(&app, "ezra", &p256).await;
    assert_eq!(
        jwt_claims(login["access_token"].as_str().unwrap())["cnf"]["jkt"],
        p256.jkt
    );
}

#[tokio::test]
async fn the_shipped_rule_pack_revokes_the_family_on_a_binding_mismatch() {
    let app = spawn_app_with(|c| c.rules = Some("rules".into())).await;
    app.register("fern").await;
    let key = DpopKey::ed25519();
    let login = login_bound(&app, "fern", &key).await;
    let sid = login["session_id"].as_str().unwrap();
    let token = login["refresh_token"].as_str().unwrap();

    // The cookie or token was copied off the device: presented without the device's key.
    let r = refresh_with(&app, token, None).await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let events = app.session_events(sid).await;
    assert!(types(&events).contains(&"session.dpop_mismatch"));
    let revoked = events
        .iter()
        .find(|e| e.event_type == "session.revoked")
        .expect("the rule revoked the family");
    assert_eq!(data(revoked)["reason"], "rule");
    let fired = app
        .events(EventFilter {
            event_types: vec!["rule.fired".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(data(&fired[0])["rule_id"], "dpop_binding_mismatch");
    assert_eq!(data(&fired[0])["trigger"], "session.dpop_mismatch");

    // Now even the key's owner is out: the family is gone.
    let r = refresh_with(&app, token, Some(&refresh_proof(&app, &key))).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
}

async fn me_with(app: &TestApp, auth: &str, proof: Option<&str>) -> Response {
    let mut r = app
        .http
        .get(app.url("/v1/me"))
        .header("Authorization", auth);
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_bound_access_token_is_only_good_as_dpop_with_the_tokens_hash() {
    let app = spawn_app().await;
    app.register("gus").await;
    let key = DpopKey::ed25519();
    let login = login_bound(&app, "gus", &key).await;
    let at = login["access_token"].as_str().unwrap();
    let url = app.url("/v1/me");
    let t = now(&app);
    let mut with_ath = Claims::new("GET", &url, t);
    with_ath.ath_of = Some(at.to_owned());
    let proof = key.sign(&with_ath);

    let r = me_with(&app, &format!("DPoP {at}"), Some(&proof)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["user"]["username"], "gus");

    // A stolen bound token presented as a bearer token.
    let r = me_with(&app, &format!("Bearer {at}"), None).await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("DPoP"), "{challenge}");
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let mut other_ath = Claims::new("GET", &url, t);
    other_ath.ath_of = Some("another.access.token".into());
    let other = DpopKey::ed25519();
    let mut other_key = Claims::new("GET", &url, t);
    other_key.ath_of = Some(at.to_owned());
    for (what, proof) in [
        ("no proof", None),
        ("the same proof again", Some(proof.clone())),
        ("a proof without ath", Some(key.proof("GET", &url, t))),
        ("a proof for another token", Some(key.sign(&other_ath))),
        ("a proof by another key", Some(other.sign(&other_key))),
    ] {
        let r = me_with(&app, &format!("DPoP {at}"), proof.as_deref()).await;
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_dpop_proof"),
            "{what}"
        );
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_dpop_proof",
            "{what}"
        );
    }

    // A bearer session's token is not DPoP-bound: the DPoP scheme is refused for it.
    app.register("hal").await;
    let bearer = app.login("hal").await;
    let mut c = Claims::new("GET", &url, t);
    c.ath_of = Some(bearer.access.clone());
    let r = me_with(
        &app,
        &format!("DPoP {}", bearer.access),
        Some(&key.sign(&c)),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    assert_eq!(app.me(&bearer.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_nonces_on_a_proof_without_the_servers_nonce_gets_one() {
    let app = spawn_app_with(|c| c.dpop_nonce = true).await;
    app.register("ivy").await;
    let key = DpopKey::ed25519();
    let url = app.url("/v1/auth/login");
    let body = json!({"username": "ivy", "password": PASSWORD});
    let r = post_with_proof(
        &app,
        "/v1/auth/login",
        body.clone(),
        Some(&key.proof("POST", &url, now(&app))),
    )
    .await;
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "use_dpop_nonce"
    );

    let mut c = Claims::new("POST", &url, now(&app));
    c.nonce = Some(nonce.clone());
    let r = post_with_proof(&app, "/v1/auth/login", body.clone(), Some(&key.sign(&c))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("dpop-nonce"));
    let login: Value = r.json().await.unwrap();

    // A made-up nonce is no nonce.
    let mut c = Claims::new("POST", &app.url("/v1/auth/refresh"), now(&app));
    c.nonce = Some("123.AAAAAAAAAAAAAAAAAAAAAA".into());
    let token = login["refresh_token"].as_str().unwrap();
    let r = refresh_with(&app, token, Some(&key.sign(&c))).await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "use_dpop_nonce"
    );
    c.nonce = Some(nonce.clone());
    c.jti = Some("refresh-with-nonce".into());
    let r = refresh_with(&app, token, Some(&key.sign(&c))).await;
    assert_eq!(r.status(), StatusCode::OK);

    // A protected resource asks for the nonce the same way (RFC 9449 §9), with 401.
    let at: Value = r.json().await.unwrap();
    let at = at["access_token"].as_str().unwrap();
    let mut c = Claims::new("GET", &app.url("/v1/me"), now(&app));
    c.ath_of = Some(at.to_owned());
    let r = me_with(&app, &format!("DPoP {at}"), Some(&key.sign(&c))).await;
    assert!(r.headers().contains_key("dpop-nonce"));
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("use_dpop_nonce")
    );
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "use_dpop_nonce"
    );
    c.nonce = Some(nonce);
    let r = me_with(&app, &format!("DPoP {at}"), Some(&key.sign(&c))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn form(app: &TestApp, path: &str, pairs: &[(&str, &str)], proof: Option<&str>) -> Response {
    let mut r = app.http.post(app.url(path)).form(pairs);
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn the_token_endpoint_binds_every_grant_and_says_so_in_oauth_terms() {
    let app = spawn_app_with(|c| c.oauth_password_grant = true).await;
    app.register("jo").await;
    let key = DpopKey::p256();
    let token_url = app.url("/oauth/token");
    let r = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "jo"),
            ("password", PASSWORD),
        ],
        Some(&key.proof("POST", &token_url, now(&app))),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    let rt = t["refresh_token"].as_str().unwrap();

    // RFC 9449 §5: a bound refresh token without a proof is invalid_dpop_proof, OAuth-shaped.
    let r = form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_dpop_proof");
    assert!(e["error_description"].is_string());

    let r = form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        Some(&key.proof("POST", &token_url, now(&app))),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");

    // Introspection states the binding; the metadata lists the proof algorithms.
    let (_, api_key) = app
        .service
        .create_api_key("resource server", vec!["resource_server".into()])
        .await
        .unwrap();
    for token in [
        t["access_token"].as_str().unwrap(),
        t["refresh_token"].as_str().unwrap(),
    ] {
        let r = app
            .http
            .post(app.url("/oauth/introspect"))
            .bearer_auth(api_key.expose())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let i: Value = r.json().await.unwrap();
        assert_eq!(i["active"], true);
        assert_eq!(i["cnf"]["jkt"], key.jkt, "{i}");
    }
    let meta: Value = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        json!(["EdDSA", "ES256"])
    );
}

#[tokio::test]
async fn require_dpop_refuses_bearer_logins_and_unbound_families() {
    let app = spawn_app().await;
    app.register("kit").await;
    let unbound = app.login("kit").await;
    // The operator turns the switch on: the same service, restarted with require_dpop.
    let strict = spawn_app_with(|c| {
        c.require_dpop = true;
        c.oauth_password_grant = true;
    })
    .await;
    strict.register("kit").await;
    let r = strict.login_as("kit", PASSWORD).await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let r = form(
        &strict,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "kit"),
            ("password", PASSWORD),
        ],
        None,
    )
    .await;
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_dpop_proof");
    let key = DpopKey::ed25519();
    let login = login_bound(&strict, "kit", &key).await;
    let r = refresh_with(
        &strict,
        login["refresh_token"].as_str().unwrap(),
        Some(&refresh_proof(&strict, &key)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Off by default: a bearer session refreshes without a proof.
    assert_eq!(app.refresh(&unbound.refresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_retry_of_a_bound_family_is_judged_by_the_key_not_the_network_or_device() {
    let app = spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.register("lou").await;
    let key = DpopKey::ed25519();
    let login = login_bound(&app, "lou", &key).await;
    let sid = login["session_id"].as_str().unwrap();
    let token = login["refresh_token"].as_str().unwrap();
    let r = refresh_with(&app, token, Some(&refresh_proof(&app, &key))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The answer was lost; the client retries from another network with another user agent
    // (an unbound family would call that another device), with its key.
    let r = app
        .http
        .post(app.url("/v1/auth/refresh"))
        .header("x-forwarded-for", "198.51.100.77")
        .header("user-agent", CHROME_ANDROID)
        .header("DPoP", refresh_proof(&app, &key))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a retry with the key is no theft"
    );
    let events = app.session_events(sid).await;
    assert!(!types(&events).contains(&"session.reuse_detected"));
    assert!(!types(&events).contains(&"session.revoked"));

    // The same retry of an unbound family is another device's: reuse.
    let plain = app.login("lou").await;
    assert_eq!(app.refresh(&plain.refresh).await.status(), StatusCode::OK);
    let r = app
        .http
        .post(app.url("/v1/auth/refresh"))
        .header("x-forwarded-for", "198.51.100.77")
        .header("user-agent", CHROME_ANDROID)
        .json(&json!({ "refresh_token": plain.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

#[tokio::test]
async fn a_bound_family_rebuilds_to_the_same_rows() {
    let app = spawn_app().await;
    app.register("max").await;
    let key = DpopKey::ed25519();
    let login = login_bound(&app, "max", &key).await;
    let sid: uuid::Uuid = login["session_id"].as_str().unwrap().parse().unwrap();
    let store = &app.service.store;
    assert_eq!(
        store
            .session(sid)
            .await
            .unwrap()
            .unwrap()
            .dpop_jkt
            .as_deref(),
        Some(key.jkt.as_str())
    );
    let live = store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(store)
        .await
        .unwrap();
    assert_eq!(store.projection_snapshot().await.unwrap(), live);
    assert_eq!(
        store
            .session(sid)
            .await
            .unwrap()
            .unwrap()
            .dpop_jkt
            .as_deref(),
        Some(key.jkt.as_str())
    );
}

/// On PostgreSQL, a proof seen by one node is refused by the other (the replay table's
/// primary key), and nothing rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_replayed_on_another_node_is_refused() {
    let Some(db) = crate::pg::fresh_database("dpop_replay_across_nodes").await else {
        return;
    };
    let clock = std::sync::Arc::new(sessiond::clock::ManualClock::default());
    let master = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    // Both nodes answer at one public URL (behind one load balancer): a proof names it.
    let on = |c: &mut sessiond::config::Config| {
        c.database_url = Some(sessiond::config::DatabaseUrl::parse(&db.url).unwrap());
        c.public_url = Some("https://sessiond.test".into());
    };
    let a = spawn_node(on, clock.clone(), Some(master.clone())).await;
    let b = spawn_node(on, clock, Some(master)).await;
    a.register("nia").await;
    let key = DpopKey::ed25519();
    let t = now(&a);
    let proof = key.proof("POST", "https://sessiond.test/v1/auth/login", t);
    let r = post_with_proof(
        &a,
        "/v1/auth/login",
        json!({"username": "nia", "password": PASSWORD}),
        Some(&proof),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let login: Value = r.json().await.unwrap();
    let sid = login["session_id"].as_str().unwrap();

    let refresh_proof = key.proof("POST", "https://sessiond.test/v1/auth/refresh", t);
    let r = refresh_with(
        &a,
        login["refresh_token"].as_str().unwrap(),
        Some(&refresh_proof),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let token: Value = r.json().await.unwrap();
    let token = token["refresh_token"].as_str().unwrap();

    // The proof, captured on the way to node A, replayed to node B with the new token.
    let r = refresh_with(&b, token, Some(&refresh_proof)).await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let recorded = mismatches(&b, sid).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["fault"], "replayed");
    assert_eq!(rotations(&b, sid).await, 1, "nothing rotated");
    // The login's proof is spent on node B too.
    let r = post_with_proof(
        &b,
        "/v1/auth/login",
        json!({"username": "nia", "password": PASSWORD}),
        Some(&proof),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    // A fresh proof by the key works on node B.
    let fresh = key.proof("POST", "https://sessiond.test/v1/auth/refresh", t);
    assert_eq!(
        refresh_with(&b, token, Some(&fresh)).await.status(),
        StatusCode::OK
    );
}
