//! The authorization code flow with PKCE (issue 14): registered clients, `/oauth/authorize`
//! with its sign-in and consent pages, the `authorization_code`, `client_credentials` and
//! client-bound `refresh_token` grants, `/oauth/userinfo`; and every refusal the RFCs ask for,
//! each with the attacker's request written out.

use crate::helpers::*;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::domain::event::Actor;
use sessiond::service::clients::NewClient;
use sha2::{Digest, Sha256};

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A registered client and a browser (no redirects followed, cookies kept by hand).
pub struct Rp<'a> {
    pub app: &'a TestApp,
    pub client_id: String,
    pub secret: Option<String>,
    pub browser: reqwest::Client,
}

pub fn pkce() -> (String, String) {
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub async fn register_client<'a>(app: &'a TestApp, public: bool, first_party: bool) -> Rp<'a> {
    register_client_with(
        app,
        NewClient {
            name: "Photo App".into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec!["http://127.0.0.1:9/bye".into()],
            public,
            first_party,
            ..Default::default()
        },
    )
    .await
}

pub async fn register_client_with(app: &TestApp, client: NewClient) -> Rp<'_> {
    let created = app
        .service
        .create_client(client, Actor::System)
        .await
        .unwrap();
    Rp {
        app,
        client_id: created.client.client_id,
        secret: created.client_secret,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::ACCEPT,
                reqwest::header::HeaderValue::from_static("text/html,*/*;q=0.8"),
            )]))
            .user_agent(FIREFOX)
            .build()
            .unwrap(),
    }
}

/// `Set-Cookie` values of a response, by name.
pub fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (k, rest) = v.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap().to_owned())
    })
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// A query parameter of a URL, decoded.
pub fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl Rp<'_> {
    /// The parameters of an authorization request, with extra ones (or replacements).
    pub fn request(&self, challenge: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![
            ("response_type".into(), "code".into()),
            ("client_id".into(), self.client_id.clone()),
            ("redirect_uri".into(), REDIRECT.into()),
            ("scope".into(), "openid profile offline_access".into()),
            ("state".into(), "st&te =/?%".into()),
            ("nonce".into(), "n-0S6_WzA2Mj".into()),
            ("code_challenge".into(), challenge.into()),
            ("code_challenge_method".into(), "S256".into()),
        ];
        for (k, v) in extra {
            p.retain(|(name, _)| name != k);
            if !v.is_empty() {
                p.push((k.to_string(), v.to_string()));
            }
        }
        p
    }

    pub async fn authorize(&self, params: &[(String, String)], cookies: &str) -> reqwest::Response {
        self.browser
            .get(self.app.url("/oauth/authorize"))
            .query(params)
            .header("cookie", cookies)
            .send()
            .await
            .unwrap()
    }

    /// The sign-in page, then the form sent with `password`: the answer to the POST and the
    /// cookies the browser holds by then.
    pub async fn sign_in(
        &self,
        params: &[(String, String)],
        password: &str,
    ) -> (reqwest::Response, String) {
        let page = self.authorize(params, "").await;
        assert_eq!(page.status(), StatusCode::OK);
        let csrf = set_cookie(&page, "__Host-sessiond_csrf").expect("a CSRF cookie");
        let html = page.text().await.unwrap();
        assert!(html.contains("name=\"username\""), "{html}");
        let mut form = params.to_vec();
        form.push(("csrf".into(), csrf.clone()));
        form.push(("username".into(), "alice".into()));
        form.push(("password".into(), password.into()));
        let cookies = format!("__Host-sessiond_csrf={csrf}");
        let r = self.post_form(&form, &cookies).await;
        let cookies = match set_cookie(&r, "__Host-sessiond_signin") {
            Some(s) => format!("{cookies}; __Host-sessiond_signin={s}"),
            None => cookies,
        };
        (r, cookies)
    }

    pub async fn post_form(&self, form: &[(String, String)], cookies: &str) -> reqwest::Response {
        self.browser
            .post(self.app.url("/oauth/authorize"))
            .header("cookie", cookies)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Signs alice in for this client and returns the code from the callback.
    pub async fn code(&self, challenge: &str) -> String {
        let (r, _) = self.sign_in(&self.request(challenge, &[]), PASSWORD).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let loc = location(&r);
        assert!(loc.starts_with(REDIRECT), "{loc}");
        param(&loc, "code").expect("a code")
    }

    /// A token request authenticated as this client (`client_secret_basic` when it has a
    /// secret, else `client_id` in the form).
    pub async fn token(&self, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.app.http.post(self.app.url("/oauth/token"));
        let mut form: Vec<(&str, &str)> = form.to_vec();
        match &self.secret {
            Some(secret) => req = req.basic_auth(&self.client_id, Some(secret)),
            None => form.push(("client_id", &self.client_id)),
        }
        req.form(&form).send().await.unwrap()
    }

    pub async fn exchange(&self, code: &str, verifier: &str) -> reqwest::Response {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .await
    }
}

pub async fn oauth_error(r: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_public_client_signs_a_user_in_with_pkce_and_gets_tokens_of_its_own() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (verifier, challenge) = pkce();
    let params = rp.request(&challenge, &[]);

    let page = rp.authorize(&params, "").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("autocomplete=\"username\""), "{html}");
    assert!(html.contains("autocomplete=\"current-password\""), "{html}");
    assert!(html.contains("Photo App"));
    assert!(!html.contains("<script"), "no script on the sign-in page");

    let (r, _) = rp.sign_in(&params, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let loc = location(&r);
    assert_eq!(
        param(&loc, "state").as_deref(),
        Some("st&te =/?%"),
        "state unchanged: {loc}"
    );
    assert_eq!(
        param(&loc, "iss").as_deref(),
        Some(app.service.oauth_issuer().as_str())
    );
    let code = param(&loc, "code").unwrap();

    let r = rp.exchange(&code, &verifier).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid profile offline_access");
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();

    // The session is the client's: its start names the client, its events the code.
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
    assert_eq!(session.client_id.as_deref(), Some(rp.client_id.as_str()));
    let events = app.session_events(&claims.sid.to_string()).await;
    assert_eq!(
        types(&events),
        [
            "session.started",
            "authorization_code.issued",
            "authorization_code.redeemed"
        ]
    );
    assert_eq!(data(&events[0])["client_id"], rp.client_id.as_str());
    assert!(
        !events.iter().any(|e| e.data.contains(&code)),
        "the code is never logged"
    );

    let info: Value = rp
        .app
        .http
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], claims.sub.to_string());
    assert_eq!(info["preferred_username"], "alice");

    // The user's device list names the application.
    let devices: Value = app
        .http
        .get(app.url("/v1/me/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        devices
            .to_string()
            .contains("\"application\":\"Photo App\""),
        "{devices}"
    );

    // Its refresh token works for it, in the same family machinery.
    let r = rp
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let next: Value = r.json().await.unwrap();
    assert_ne!(next["refresh_token"], refresh);
    assert_eq!(next["scope"], "openid profile offline_access");
}

#[tokio::test]
async fn a_wrong_code_verifier_is_invalid_grant_and_issues_nothing() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let before = app.event_count().await;
    // An attacker who intercepted the code, without the verifier: their own guess.
    let (guess, _) = pkce();
    let r = rp
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &guess),
        ])
        .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    assert_eq!(
        app.event_count().await,
        before,
        "nothing recorded, nothing issued"
    );
    // The rightful client still can.
    assert_eq!(rp.exchange(&code, &verifier).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_plain_or_missing_challenge_is_refused_at_the_authorization_endpoint() {
    let app = spawn_app().await;
    let rp = register_client(&app, true, true).await;
    // GET /oauth/authorize?...&code_challenge=abc&code_challenge_method=plain
    for extra in [
        vec![
            (
                "code_challenge",
                "plain-challenge-that-is-the-verifier-itself-xx",
            ),
            ("code_challenge_method", "plain"),
        ],
        vec![("code_challenge_method", "")],
        vec![("code_challenge", ""), ("code_challenge_method", "")],
    ] {
        let params = rp.request(&pkce().1, &extra);
        let r = rp.authorize(&params, "").await;
        assert_eq!(r.status(), StatusCode::FOUND, "{extra:?}");
        let loc = location(&r);
        assert!(loc.starts_with(REDIRECT), "{loc}");
        assert_eq!(
            param(&loc, "error").as_deref(),
            Some("invalid_request"),
            "{loc}"
        );
        assert_eq!(param(&loc, "state").as_deref(), Some("st&te =/?%"));
        assert!(param(&loc, "iss").is_some());
        assert!(param(&loc, "code").is_none());
    }
    // response_type=token: unsupported_response_type, redirected too.
    let params = rp.request(&pkce().1, &[("response_type", "token")]);
    let loc = location(&rp.authorize(&params, "").await);
    assert_eq!(
        param(&loc, "error").as_deref(),
        Some("unsupported_response_type")
    );
}

#[tokio::test]
async fn a_reused_code_is_refused_and_revokes_the_session_it_started() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let first: Value = rp.exchange(&code, &verifier).await.json().await.unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    // The same code again (a replay from a leaked log or browser history).
    let r = rp.exchange(&code, &verifier).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    // The first exchange's tokens die with the session.
    let r = rp
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(app.me(access).await.status(), StatusCode::UNAUTHORIZED);
    let sid = app
        .service
        .tokens
        .verify(access, app.service.now())
        .unwrap()
        .sid;
    let events = app.session_events(&sid.to_string()).await;
    let t = types(&events);
    assert_eq!(
        &t[t.len() - 2..],
        ["authorization_code.reused", "session.revoked"]
    );
    assert_eq!(data(events.last().unwrap())["reason"], "reuse");
}

#[tokio::test]
async fn a_redirect_uri_differing_in_one_character_gets_an_error_page_and_no_redirect() {
    let app = spawn_app().await;
    let rp = register_client(&app, true, true).await;
    let (_, challenge) = pkce();
    for uri in [
        "http://127.0.0.1:9/callbacK",
        "http://127.0.0.1:9/callback/",
        "http://127.0.0.1:9/callbac",
        "http://127.0.0.1:9/callback?x=1",
        "http://127.0.0.1:99/callback",
        "https://evil.example/callback",
    ] {
        // GET /oauth/authorize?...&redirect_uri=<the attacker's URI>
        let params = rp.request(&challenge, &[("redirect_uri", uri)]);
        let r = rp.authorize(&params, "").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            r.headers().get("location").is_none(),
            "never a redirect: {uri}"
        );
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let text = r.text().await.unwrap();
        assert!(text.contains("not one registered"), "{uri}: {text}");
    }
    // An unknown client: the same.
    let mut params = rp.request(&challenge, &[]);
    params.retain(|(k, _)| k != "client_id");
    params.push(("client_id".into(), "no-such-client".into()));
    let r = rp.authorize(&params, "").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn a_code_a_minute_old_is_refused() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    app.clock.advance(chrono::Duration::seconds(60));
    let r = rp.exchange(&code, &verifier).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_code_presented_by_another_client_is_refused() {
    let app = spawn_app().await;
    app.register("alice").await;
    let victim = register_client(&app, true, true).await;
    let attacker = register_client(&app, false, true).await;
    let (verifier, challenge) = pkce();
    let code = victim.code(&challenge).await;
    // The attacker's own, authenticated client presents the victim's code and verifier.
    let r = attacker.exchange(&code, &verifier).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    // Another redirect_uri than the request's: refused as well.
    let r = victim
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    assert_eq!(
        victim.exchange(&code, &verifier).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn confidential_clients_authenticate_and_get_client_credentials() {
    let app = spawn_app().await;
    let rp = register_client(&app, false, true).await;
    let secret = rp.secret.clone().unwrap();
    assert!(secret.starts_with("sdcs_"));
    // client_secret_basic
    let r = rp.token(&[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    // client_secret_post
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &rp.client_id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A wrong secret over Basic: 401 invalid_client with a Basic challenge.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(&rp.client_id, Some("sdcs_wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(
        oauth_error(r, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );
    // A public client may not.
    let public = register_client(&app, true, true).await;
    let r = public.token(&[("grant_type", "client_credentials")]).await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "unauthorized_client"
    );
    // No secret is ever logged.
    assert!(!captured_logs().contains(&secret));
}

#[tokio::test]
async fn a_refresh_token_is_bound_to_its_client() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let other = register_client(&app, false, true).await;
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let body: Value = rp.exchange(&code, &verifier).await.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    // Another client presents it.
    let r = other
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await;
    assert_eq!(
        oauth_error(r, StatusCode::BAD_REQUEST).await,
        "invalid_grant"
    );
    // And first-party refresh without any client: no.
    let r = app.refresh(refresh).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = rp
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the rightful client still refreshes"
    );
}

#[tokio::test]
async fn a_signed_in_browser_skips_the_password_unless_asked_and_prompt_none_answers() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (_, challenge) = pkce();
    // prompt=none without a sign-in: login_required, back at the client.
    let params = rp.request(&challenge, &[("prompt", "none")]);
    let loc = location(&rp.authorize(&params, "").await);
    assert_eq!(param(&loc, "error").as_deref(), Some("login_required"));

    let (r, cookies) = rp.sign_in(&rp.request(&challenge, &[]), PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(cookies.contains("__Host-sessiond_signin="));
    // The same browser again: straight back with a code.
    let r = rp
        .authorize(&rp.request(&challenge, &[("prompt", "none")]), &cookies)
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(param(&location(&r), "code").is_some());
    // prompt=login and an exceeded max_age ask for the password again.
    let r = rp
        .authorize(&rp.request(&challenge, &[("prompt", "login")]), &cookies)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.clock.advance(chrono::Duration::seconds(120));
    let r = rp
        .authorize(&rp.request(&challenge, &[("max_age", "60")]), &cookies)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = rp
        .authorize(&rp.request(&challenge, &[("max_age", "600")]), &cookies)
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn a_wrong_password_on_the_sign_in_page_is_a_failed_login_and_a_forged_form_is_refused() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (_, challenge) = pkce();
    let (r, _) = rp
        .sign_in(&rp.request(&challenge, &[]), "wrong password!")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("wrong username or password")
    );
    let failed = app
        .all_events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "login.failed")
        .count();
    assert_eq!(failed, 1, "recorded as any failed login");
    // A cross-site form: the right password, no CSRF cookie to match.
    let mut form = rp.request(&challenge, &[]);
    form.push(("csrf".into(), "guessed".into()));
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), PASSWORD.into()));
    let r = rp.post_form(&form, "").await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the sign-in page again, no code"
    );
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn a_third_party_client_asks_for_consent() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, false).await;
    let (_, challenge) = pkce();
    let params = rp.request(&challenge, &[]);
    let (r, cookies) = rp.sign_in(&params, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"allow\""), "{html}");
    let ticket = html
        .split("name=\"ticket\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let csrf = cookies
        .split("__Host-sessiond_csrf=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let mut form = params.clone();
    form.push(("csrf".into(), csrf.into()));
    form.push(("ticket".into(), ticket.clone()));
    form.push(("consent".into(), "deny".into()));
    let loc = location(&rp.post_form(&form, &cookies).await);
    assert_eq!(param(&loc, "error").as_deref(), Some("access_denied"));
    form.pop();
    form.push(("consent".into(), "allow".into()));
    let loc = location(&rp.post_form(&form, &cookies).await);
    assert!(param(&loc, "code").is_some(), "{loc}");
}

#[tokio::test]
async fn clients_are_managed_from_the_cli_and_the_security_api_with_events() {
    let app = spawn_app().await;
    let dir = app.data_dir.path().to_owned();
    let (ok, out, err) = sessiond_cli(
        &[
            "clients",
            "create",
            "--name",
            "CLI App",
            "--redirect-uri",
            "https://app.example/cb",
            "--redirect-uri",
            "https://app.example/cb2",
            "--post-logout-redirect-uri",
            "https://app.example/bye",
        ],
        &dir,
    );
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    let id = created["client_id"].as_str().unwrap().to_owned();
    assert!(
        created["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("sdcs_")
    );
    let (ok, out, _) = sessiond_cli(&["clients", "list"], &dir);
    assert!(ok && out.contains(&id) && !out.contains("sdcs_"), "{out}");
    let (ok, out, err) = sessiond_cli(
        &[
            "clients",
            "create",
            "--name",
            "SPA",
            "--redirect-uri",
            "http://localhost:3000/cb",
            "--public",
        ],
        &dir,
    );
    assert!(ok, "{err}");
    assert!(
        serde_json::from_str::<Value>(out.trim())
            .unwrap()
            .get("client_secret")
            .is_none()
    );
    let (ok, _, err) = sessiond_cli(
        &[
            "clients",
            "create",
            "--name",
            "Bad",
            "--redirect-uri",
            "https://app.example/*",
        ],
        &dir,
    );
    assert!(ok, "a * is a literal character of an exact URI: {err}");
    let (ok, _, _) = sessiond_cli(
        &[
            "clients",
            "create",
            "--name",
            "Bad",
            "--redirect-uri",
            "http://evil.example/cb",
        ],
        &dir,
    );
    assert!(!ok, "plain http off loopback is refused");
    let (ok, _, err) = sessiond_cli(&["clients", "delete", &id], &dir);
    assert!(ok, "{err}");
    let events = app
        .events(sessiond::store::EventFilter {
            stream_id: Some(format!("client-{id}")),
            ..Default::default()
        })
        .await;
    assert_eq!(types(&events), ["client.registered", "client.deleted"]);
    assert!(events[0].metadata.contains("system"));
    assert!(
        !events[0].data.contains("sdcs_"),
        "the secret is not in the log"
    );

    // The security API: 403 without the role, 201 with it.
    let user = {
        app.register("bob").await;
        app.login("bob").await.access
    };
    let body = serde_json::json!({"name": "API App", "redirect_uris": ["https://api.example/cb"]});
    let r = app
        .http
        .post(app.url("/v1/admin/clients"))
        .bearer_auth(&user)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let ctx = sessiond::domain::context::RequestContext::default();
    app.service
        .register("sec", PASSWORD.into(), vec!["security".into()], &ctx)
        .await
        .unwrap();
    let admin = app.login("sec").await.access;
    let r = app
        .http
        .post(app.url("/v1/admin/clients"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let bad = serde_json::json!({"name": "x", "redirect_uris": ["javascript:alert(1)"]});
    let r = app
        .http
        .post(app.url("/v1/admin/clients"))
        .bearer_auth(&admin)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_client_metadata"
    );
    let list: Value = app
        .http
        .get(app.url("/v1/admin/clients"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == made["client_id"])
    );
    let r = app
        .http
        .delete(app.url(&format!(
            "/v1/admin/clients/{}",
            made["client_id"].as_str().unwrap()
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Authlib (a well-known, unmodified relying-party library) runs the whole flow against the
/// real server: discovery, PKCE, the sign-in form, the callback, the code exchange, the ID
/// token checked against the JWKS with its nonce, userinfo, refresh, revocation, logout.
#[tokio::test]
async fn authlib_runs_the_whole_flow_against_the_real_server() {
    let app = spawn_app().await;
    let user_id = app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let base = app.url("");
    let client_id = rp.client_id.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::helpers::python3(&["authlib", "requests"])
            .args([
                "tests/support/oidc_rp.py",
                &base,
                &client_id,
                "alice",
                PASSWORD,
                REDIRECT,
                "http://127.0.0.1:9/bye",
            ])
            .output()
            .expect("python3 runs (this test needs it, with authlib and requests)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "tests/support/oidc_rp.py failed (is authlib installed? pip install authlib requests): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["sub"], user_id.as_str());
    assert_eq!(seen["alg"], "RS256", "OIDC Core's default algorithm");
    assert_eq!(seen["preferred_username"], "alice");
    assert_eq!(seen["userinfo"]["preferred_username"], "alice");
    // RP-initiated logout ended the session through the revocation command.
    let sid = seen["sid"].as_str().unwrap();
    let session = app
        .service
        .store
        .session(sid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!session.is_active());
}

#[tokio::test]
async fn end_session_needs_an_exactly_registered_post_logout_uri_and_ends_the_session() {
    let app = spawn_app().await;
    app.register("alice").await;
    let rp = register_client(&app, true, true).await;
    let (verifier, challenge) = pkce();
    let code = rp.code(&challenge).await;
    let body: Value = rp.exchange(&code, &verifier).await.json().await.unwrap();
    let id_token = body["id_token"]
        .as_str()
        .expect("an id_token with openid")
        .to_owned();
    // An attacker's page sends the browser to logout with its own return address.
    let r = rp
        .browser
        .get(app.url("/oauth/end_session"))
        .query(&[
            ("id_token_hint", id_token.as_str()),
            ("post_logout_redirect_uri", "http://127.0.0.1:9/byE"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.me(access).await.status(),
        StatusCode::OK,
        "nothing ended"
    );
    let r = rp
        .browser
        .get(app.url("/oauth/end_session"))
        .query(&[
            ("id_token_hint", id_token.as_str()),
            ("post_logout_redirect_uri", "http://127.0.0.1:9/bye"),
            ("state", "s 1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(location(&r), "http://127.0.0.1:9/bye?state=s%201");
    assert_eq!(app.me(access).await.status(), StatusCode::UNAUTHORIZED);
    // Without a hint nothing ends before the user confirms.
    let r = rp
        .browser
        .get(app.url("/oauth/end_session"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("id=\"confirm\""));
}
