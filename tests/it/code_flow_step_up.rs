//! Step-up (RFC 9470) on a code-flow session: a rule steps the client's session up, its
//! refresh is refused with the re-authentication signal, the browser cannot sign in again
//! without the password, and an authorization request with `prompt=login` and the password
//! clears the requirement of the browser's session and moves `auth_time` in its tokens.

use crate::code_flow::{location, param, pkce, register_client, set_cookie};
use crate::helpers::*;
use crate::rules::{NEW_YORK, app_with_rules, travel_rule};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::Clock;
use sessiond::domain::Duration;

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

#[tokio::test]
async fn a_rules_step_up_on_a_code_flow_session_is_cleared_by_prompt_login_and_the_password() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"require_reauth\""))],
        true,
    )
    .await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;

    // Signed in through the code flow from the browser (loopback, placed in Lyon).
    let (verifier, ch) = pkce();
    let (r, cookies) = rp.sign_in(&rp.request(&ch, &[]), PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(cookies.contains("__Host-sessiond_signin="), "{cookies}");
    let code = param(&location(&r), "code").unwrap();
    let r = rp.exchange(&code, &verifier).await;
    assert_eq!(r.status(), StatusCode::OK);
    let first: Value = r.json().await.unwrap();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let first_id = claims_of(first["id_token"].as_str().unwrap());
    let login_time = app.clock.now().timestamp();
    assert_eq!(first_id["auth_time"], login_time);
    let session_id = first_id["sid"].as_str().unwrap().to_owned();

    // Five minutes later its refresh comes "from New York": the travel rule steps it up, and
    // the refresh is refused with the re-authentication signal.
    app.clock.advance(Duration::minutes(5));
    let refresh_from_new_york = |token: String| {
        rp.app
            .http
            .post(rp.app.url("/oauth/token"))
            .header("x-forwarded-for", NEW_YORK)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
                ("client_id", rp.client_id.as_str()),
            ])
            .send()
    };
    let r = refresh_from_new_york(refresh.clone()).await.unwrap();
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

    // The attacker's request: the same browser (its live sign-in cookie) asks for a new code
    // without the password, silently or not. The stepped-up session does not sign it in.
    let (_, ch2) = pkce();
    let silent = rp.request(&ch2, &[("prompt", "none")]);
    let r = rp.authorize(&silent, &cookies).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = location(&r);
    assert_eq!(
        param(&loc, "error").as_deref(),
        Some("login_required"),
        "{loc}"
    );
    assert_eq!(param(&loc, "code"), None);
    let r = rp.authorize(&rp.request(&ch2, &[]), &cookies).await;
    assert_eq!(r.status(), StatusCode::OK, "the sign-in page, not a code");
    assert!(r.text().await.unwrap().contains("name=\"password\""));
    let r = refresh_from_new_york(refresh.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "still stepped up");

    // A minute later, in New York: prompt=login, the sign-in page, alice's password.
    app.clock.advance(Duration::minutes(1));
    let (verifier3, ch3) = pkce();
    let params = rp.request(&ch3, &[("prompt", "login")]);
    let page = rp
        .browser
        .get(app.url("/oauth/authorize"))
        .query(&params)
        .header("cookie", &cookies)
        .header("x-forwarded-for", NEW_YORK)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // The browser keeps its CSRF cookie (the page sets one only when it has none).
    let csrf = set_cookie(&page, "__Host-sessiond_csrf").unwrap_or_else(|| {
        let c = cookies
            .split("; ")
            .find_map(|c| c.strip_prefix("__Host-sessiond_csrf="));
        c.expect("a CSRF cookie").to_owned()
    });
    assert!(page.text().await.unwrap().contains("name=\"password\""));
    let mut form = params.clone();
    form.push(("csrf".into(), csrf.clone()));
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let r = rp
        .browser
        .post(app.url("/oauth/authorize"))
        .header("cookie", &cookies)
        .header("x-forwarded-for", NEW_YORK)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let loc = location(&r);
    assert_eq!(param(&loc, "state").as_deref(), Some("st&te =/?%"));
    let r = rp.exchange(&param(&loc, "code").unwrap(), &verifier3).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    let second_id = claims_of(second["id_token"].as_str().unwrap());
    let step_up_time = app.clock.now().timestamp();
    assert_eq!(second_id["auth_time"], step_up_time);
    assert_eq!(step_up_time - login_time, 6 * 60, "auth_time moved");
    assert_eq!(
        claims_of(second["access_token"].as_str().unwrap())["auth_time"],
        step_up_time
    );

    // The stepped-up session was cleared: its refresh works again, with the new auth_time.
    let r = refresh_from_new_york(refresh.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    let access = claims_of(refreshed["access_token"].as_str().unwrap());
    assert_eq!(access["sid"], session_id.as_str());
    assert_eq!(access["auth_time"], step_up_time);
    let r = app.me(refreshed["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Recorded as the user's own re-authentication of that session.
    let events = app.session_events(&session_id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session.started",
            "authorization_code.issued",
            "authorization_code.redeemed",
            "session.reauth_required",
            "session.reauthenticated",
            "session.refreshed"
        ]
    );
    let reauth = events
        .iter()
        .find(|e| e.event_type == "session.reauthenticated")
        .unwrap();
    let meta: Value = serde_json::from_str(&reauth.metadata).unwrap();
    let user_id = first_id["sub"].as_str().unwrap();
    assert_eq!(
        meta["actor"],
        json!({"kind": "user", "id": user_id}),
        "{meta}"
    );
}
