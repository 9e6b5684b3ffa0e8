//! Step-up (RFC 9470): access tokens carry `acr`, `amr` and `auth_time`; a session a rule
//! stepped up is refused by its refresh routes and by `/v1/me` with the
//! `insufficient_user_authentication` challenge, until the password is proven again — by
//! `/v1/auth/reauth` or by an authorization request (`Sessiond::reauthenticate_session`, what
//! `/oauth/authorize` calls for `prompt=login` / `max_age`), which moves `auth_time`.

use crate::helpers::*;
use crate::rules::{CHROME_120, NEW_YORK, PARIS, app_with_rules, travel_rule};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::Clock;
use sessiond::domain::Duration;
use sessiond::domain::context::RequestContext;
use uuid::Uuid;

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn stepped_up_session(app: &TestApp) -> Tokens {
    app.register("alice").await;
    let t = login_from(app, "alice", PARIS, CHROME_120).await;
    let claims = claims_of(&t.access);
    assert_eq!(claims["acr"], "urn:sessiond:acr:pwd");
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["auth_time"], app.clock.now().timestamp());
    // Five minutes later "from New York": the travel rule steps the session up.
    app.clock.advance(Duration::minutes(5));
    let r = refresh_from(app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&r).starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{}",
        challenge(&r)
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "reauth_required");
    t
}

#[tokio::test]
async fn a_stepped_up_session_is_refused_with_the_rfc_9470_challenge_everywhere_it_counts() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"require_reauth\""))],
        true,
    )
    .await;
    let t = stepped_up_session(&app).await;

    // The access token has not expired, but its session must step up.
    let r = app.me(&t.access).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert!(
        c.starts_with("Bearer error=\"insufficient_user_authentication\", error_description=\""),
        "{c}"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "insufficient_user_authentication"
    );
    let r = app
        .http
        .get(app.url("/v1/me/sessions"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The OAuth refresh grant: invalid_grant (RFC 6749 §5.2), with the step-up challenge.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &t.refresh),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        challenge(&r).starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{}",
        challenge(&r)
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("prompt=login"),
        "{body}"
    );

    // Signing out still works for a stepped-up session.
    let r = app
        .http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_authorization_request_with_the_password_clears_the_step_up_and_moves_auth_time() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"require_reauth\""))],
        true,
    )
    .await;
    let t = stepped_up_session(&app).await;
    let session_id: Uuid = t.session_id.parse().unwrap();
    let user_id = app
        .service
        .store
        .session(session_id)
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let login_time = claims_of(&t.access)["auth_time"].as_i64().unwrap();
    let ctx = RequestContext {
        ip: Some(NEW_YORK.parse().unwrap()),
        user_agent: Some(CHROME_120.into()),
        ..Default::default()
    };

    // The attacker's call: someone else's password proven, this session named.
    app.register("mallory").await;
    let mallory = app
        .service
        .store
        .user_by_name("mallory")
        .await
        .unwrap()
        .unwrap();
    let e = app
        .service
        .reauthenticate_session(session_id, mallory.user_id, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, sessiond::error::Error::SessionEnded), "{e:?}");
    let e = app
        .service
        .reauthenticate_session(Uuid::new_v4(), user_id, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, sessiond::error::Error::SessionEnded), "{e:?}");
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "still stepped up");

    // What /oauth/authorize does after prompt=login and alice's password.
    app.clock.advance(Duration::minutes(1));
    app.service
        .reauthenticate_session(session_id, user_id, &ctx)
        .await
        .unwrap();
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    let fresh = Tokens::from_json(&r.json().await.unwrap());
    let auth_time = claims_of(&fresh.access)["auth_time"].as_i64().unwrap();
    assert_eq!(auth_time, app.clock.now().timestamp());
    assert_eq!(
        auth_time - login_time,
        6 * 60,
        "auth_time moved to the step-up"
    );
    let r = app.me(&fresh.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(
        me["session"]["auth_time"],
        sessiond::domain::format_timestamp(app.clock.now())
    );
    let kinds: Vec<String> = app
        .session_events(&t.session_id)
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.started",
            "session.reauth_required",
            "session.reauthenticated",
            "session.refreshed"
        ]
    );
    let reauth = app
        .session_events(&t.session_id)
        .await
        .into_iter()
        .find(|e| e.event_type == "session.reauthenticated")
        .unwrap();
    let meta: Value = serde_json::from_str(&reauth.metadata).unwrap();
    assert_eq!(
        meta["actor"],
        json!({"kind": "user", "id": user_id}),
        "{meta}"
    );
}
