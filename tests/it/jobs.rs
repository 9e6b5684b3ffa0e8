//! The scheduled jobs, run by hand against the injected clock: the expiry sweep, signing-key
//! rotation (and `sessiond keys rotate`), and retention.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::domain::Duration;
use sessiond::jobs::{JobKind, JobOutcome};

async fn run(app: &TestApp, job: JobKind) -> String {
    match app.jobs.run(job).await.expect("the job runs") {
        JobOutcome::Done(summary) => summary,
        JobOutcome::Skipped => panic!("{} was skipped", job.name()),
    }
}

async fn last_event(app: &TestApp, session_id: &str) -> sessiond::store::RecordedEvent {
    app.session_events(session_id).await.pop().unwrap()
}

#[tokio::test]
async fn the_sweep_records_idle_and_absolute_expiry() {
    let app = spawn_app().await;
    app.register("idler").await;
    app.register("keeper").await;
    let idler = app.login("idler").await;
    let mut keeper = app.login("keeper").await;

    app.clock.advance(Duration::days(6));
    keeper = app.refresh_ok(&keeper.refresh).await;
    assert_eq!(
        run(&app, JobKind::ExpirySweep).await,
        "0 sessions expired, 0 DPoP proofs forgotten"
    );
    let active = || async { app.service.store.count_active_sessions().await.unwrap() };
    assert_eq!(active().await, 2);

    // The idler's seven idle days are up; the keeper refreshed a day ago.
    app.clock.advance(Duration::days(1) + Duration::minutes(1));
    assert_eq!(
        run(&app, JobKind::ExpirySweep).await,
        "1 sessions expired, 0 DPoP proofs forgotten"
    );
    let e = last_event(&app, &idler.session_id).await;
    assert_eq!(e.event_type, "session.expired");
    assert_eq!(data(&e)["kind"], "idle");
    assert_eq!(active().await, 1);
    assert_eq!(
        last_event(&app, &keeper.session_id).await.event_type,
        "session.refreshed"
    );
    assert_eq!(
        error_code(app.refresh(&idler.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );

    // However active, the keeper's session ends 30 days after login.
    app.clock.advance(Duration::days(5));
    keeper = app.refresh_ok(&keeper.refresh).await;
    for _ in 0..2 {
        app.clock.advance(Duration::days(6));
        keeper = app.refresh_ok(&keeper.refresh).await;
    }
    // Day 30 and a minute: the idle expiry was capped at the absolute one.
    app.clock.advance(Duration::days(6));
    assert_eq!(
        run(&app, JobKind::ExpirySweep).await,
        "1 sessions expired, 0 DPoP proofs forgotten"
    );
    let e = last_event(&app, &keeper.session_id).await;
    assert_eq!(e.event_type, "session.expired");
    assert_eq!(data(&e)["kind"], "absolute");
    assert_eq!(active().await, 0);

    // Recorded once: a second sweep finds nothing.
    let before = app.event_count().await;
    assert_eq!(
        run(&app, JobKind::ExpirySweep).await,
        "0 sessions expired, 0 DPoP proofs forgotten"
    );
    assert_eq!(app.event_count().await, before);
    assert_eq!(
        app.me(&keeper.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// The JWKS as a verifier would fetch it.
async fn jwks(app: &TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The Ed25519 kids (the access-token keys) in the JWKS; `rsa_kids` the RS256 ones.
fn kids(jwks: &Value) -> Vec<String> {
    kids_of(jwks, "EdDSA")
}

fn rsa_kids(jwks: &Value) -> Vec<String> {
    kids_of(jwks, "RS256")
}

fn kids_of(jwks: &Value, alg: &str) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["alg"] == alg)
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

fn kid_of(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

/// Verifies a token the way a resource server does: the key named by its `kid`, from the JWKS.
pub fn verify_with_jwks(jwks: &Value, jwt: &str, audience: Option<&str>) -> Value {
    let kid = kid_of(jwt);
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    match audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .expect("the signature verifies with the published key")
        .claims
}

/// A run that publishes the next key of each kind says `published ED, published RSA`.
fn published_pair(summary: &str) -> (String, String) {
    let parts: Vec<&str> = summary.split(", ").collect();
    match parts.as_slice() {
        [ed, rsa] => (
            ed.strip_prefix("published ").expect(summary).to_owned(),
            rsa.strip_prefix("published ").expect(summary).to_owned(),
        ),
        _ => panic!("{summary}"),
    }
}

/// The signing-key events about the given keys, in order.
fn signing_key_events(
    events: &[sessiond::store::RecordedEvent],
    of: &[&String],
) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.event_type.starts_with("signing_key."))
        .filter(|e| of.iter().any(|k| data(e)["kid"] == k.as_str()))
        .map(|e| {
            (
                e.event_type.clone(),
                data(e)["kid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rotation_publishes_ahead_switches_signers_and_keeps_the_old_key_until_its_tokens_expire() {
    let app = spawn_app_with(|c| {
        c.access_token_lifetime = Duration::minutes(20);
        c.signing_key_rotation_interval = Duration::hours(1);
        c.signing_key_publish_ahead = Some(Duration::minutes(10));
    })
    .await;
    let first = app.service.tokens.active_kid();
    let rsa_first = app.service.tokens.active_rsa_kid();
    app.register("alice").await;
    assert_eq!(run(&app, JobKind::KeyRotation).await, "no change");

    // Ten minutes before the hand-over the next key of each kind is published, not yet signing.
    app.clock.advance(Duration::minutes(50));
    let summary = run(&app, JobKind::KeyRotation).await;
    let (second, rsa_second) = published_pair(&summary);
    assert_eq!(kids(&jwks(&app).await), {
        let mut k = vec![first.clone(), second.clone()];
        k.sort();
        k
    });
    assert_eq!(rsa_kids(&jwks(&app).await), {
        let mut k = vec![rsa_first.clone(), rsa_second.clone()];
        k.sort();
        k
    });
    let before = app.login("alice").await;
    assert_eq!(kid_of(&before.access), first);

    // The hand-over: the new key signs, the old one retires but stays published.
    app.clock.advance(Duration::minutes(10));
    assert_eq!(
        run(&app, JobKind::KeyRotation).await,
        format!("activated {second}, activated {rsa_second}, retired {first}, retired {rsa_first}")
    );
    assert_eq!(app.service.tokens.active_rsa_kid(), rsa_second);
    let published = jwks(&app).await;
    assert_eq!(kids(&published).len(), 2);
    let claims = verify_with_jwks(&published, &before.access, Some("sessiond"));
    assert_eq!(claims["sid"], before.session_id.as_str());
    assert_eq!(app.me(&before.access).await.status(), StatusCode::OK);
    let after = app.refresh_ok(&before.refresh).await;
    assert_eq!(kid_of(&after.access), second);
    verify_with_jwks(&published, &after.access, Some("sessiond"));
    assert_eq!(app.me(&after.access).await.status(), StatusCode::OK);

    // Once every token the old key signed has expired, it leaves the JWKS.
    app.clock.advance(Duration::minutes(20));
    assert_eq!(run(&app, JobKind::KeyRotation).await, "no change");
    app.clock.advance(Duration::minutes(2));
    assert_eq!(
        run(&app, JobKind::KeyRotation).await,
        format!("expired {first}, expired {rsa_first}")
    );
    assert_eq!(kids(&jwks(&app).await), vec![second.clone()]);
    assert_eq!(rsa_kids(&jwks(&app).await), vec![rsa_second.clone()]);
    let later = app.refresh_ok(&after.refresh).await;
    assert_eq!(kid_of(&later.access), second);
    assert_eq!(app.me(&later.access).await.status(), StatusCode::OK);

    let e = |t: &str, k: &String| (t.to_owned(), k.clone());
    assert_eq!(
        signing_key_events(&app.all_events().await, &[&first, &second]),
        vec![
            e("signing_key.created", &first),
            e("signing_key.activated", &first),
            e("signing_key.created", &second),
            e("signing_key.activated", &second),
            e("signing_key.retired", &first),
            e("signing_key.expired", &first),
        ]
    );
}

#[tokio::test]
async fn keys_rotate_by_hand_publishes_a_key_the_server_then_activates() {
    let app = spawn_app().await;
    let first = app.service.tokens.active_kid();
    let rsa_first = app.service.tokens.active_rsa_kid();
    let (ok, out, err) = sessiond_cli(&["keys", "rotate"], app.data_dir.path());
    assert!(ok, "{out}{err}");
    let (second, rsa_second) = published_pair(out.trim());
    let (ok, out, _) = sessiond_cli(&["keys", "list"], app.data_dir.path());
    assert!(ok);
    assert!(out.contains(&format!("{second}\tpublished")), "{out}");
    assert!(out.contains(&format!("{first}\tactive")), "{out}");

    // The server picks it up on its next rotation run and publishes it...
    assert_eq!(run(&app, JobKind::KeyRotation).await, "no change");
    assert!(kids(&jwks(&app).await).contains(&second));
    assert!(rsa_kids(&jwks(&app).await).contains(&rsa_second));
    assert_eq!(app.service.tokens.active_kid(), first);
    // ...and signs with it one access-token lifetime later.
    app.clock.advance(Duration::minutes(11));
    assert_eq!(
        run(&app, JobKind::KeyRotation).await,
        format!("activated {second}, activated {rsa_second}, retired {first}, retired {rsa_first}")
    );
    app.register("bob").await;
    assert_eq!(kid_of(&app.login("bob").await.access), second);
}

#[tokio::test]
async fn retention_prunes_rows_of_long_ended_sessions_and_records_it() {
    let app = spawn_app_with(|c| c.retention_period = Duration::days(10)).await;
    app.register("carol").await;
    let ended = app.login("carol").await;
    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&ended.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.clock.advance(Duration::days(5));
    let live = app.login("carol").await;
    let ended_id = ended.session_id.parse().unwrap();
    let live_id = live.session_id.parse().unwrap();

    assert_eq!(
        run(&app, JobKind::Retention).await.split(" that ").next(),
        Some("pruned 0 sessions and 0 refresh tokens")
    );
    app.clock.advance(Duration::days(6));
    let live = app.refresh_ok(&live.refresh).await;
    assert_eq!(
        run(&app, JobKind::Retention).await.split(" that ").next(),
        Some("pruned 1 sessions and 1 refresh tokens")
    );
    let store = &app.service.store;
    assert!(store.session(ended_id).await.unwrap().is_none());
    assert!(store.session(live_id).await.unwrap().is_some());
    assert_eq!(app.me(&live.access).await.status(), StatusCode::OK);
    // The ended session's history stays; its refresh token is simply unknown now.
    assert_eq!(
        types(&app.session_events(&ended.session_id).await),
        ["session.started", "session.revoked"]
    );
    assert_eq!(
        error_code(app.refresh(&ended.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let pruned: Vec<_> = app
        .all_events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "retention.pruned")
        .collect();
    assert_eq!(pruned.len(), 1);
    assert_eq!(data(&pruned[0])["sessions"], 1);
    assert_eq!(data(&pruned[0])["refresh_tokens"], 1);

    // A rebuild from the log replays the prune where it happened.
    let live_rows = store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(store)
        .await
        .unwrap();
    assert_eq!(store.projection_snapshot().await.unwrap(), live_rows);
}

#[tokio::test]
async fn the_scheduler_runs_the_sweep_on_its_schedule() {
    let app = spawn_app_scheduled(|c| {
        c.expiry_sweep_schedule = Some("* * * * * *".into());
        c.key_rotation_schedule = None;
        c.retention_schedule = None;
    })
    .await;
    app.register("sleeper").await;
    let t = app.login("sleeper").await;
    app.clock.advance(Duration::days(8));
    // Nothing here runs the job: the scheduler does, within a second or two.
    for _ in 0..2000 {
        if last_event(&app, &t.session_id).await.event_type == "session.expired" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the scheduled sweep never expired the session");
}
