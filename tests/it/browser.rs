//! The pages in a real browser: headless Chromium driven over WebDriver (chromedriver), against
//! a real server. Signs in on the account page, sees two devices, revokes the other; opens the
//! console as a security analyst, finds the user, opens a session timeline, sees its flags; and
//! checks that markup in a username or User-Agent renders as text. Screenshots are saved under
//! the test target's tmp directory. Without chromedriver the test is skipped with a notice,
//! except in CI (`CI` set), where it must run.

use crate::helpers::*;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const XSS: &str = "<img src=x onerror=alert(1)>";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Option<Browser> {
        let driver =
            std::env::var("SESSIOND_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
        let chromium = std::env::var("SESSIOND_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        if !std::path::Path::new(&driver).exists() || !std::path::Path::new(&chromium).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have {driver} and {chromium}"
            );
            eprintln!("skipping the browser test: {driver} or {chromium} is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            driver,
            _profile: profile,
        };
        for _ in 0..100 {
            if b.http
                .get(format!("{}/status", b.base))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session = b
            .post("/session", json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                // The page's console (CSP violations are reported there), for `console_errors`.
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-quic", "--no-first-run", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                             format!("--user-data-dir={}", b._profile.path().display())],
                },
            }}}))
            .await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"));
        b.base = format!("{}/session/{id}", b.base);
        Some(b)
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["value"].take()
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["value"].take()
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn all(&self, css: &str) -> Vec<String> {
        let v = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits up to 10 s for at least `n` elements matching `css`.
    pub async fn wait_for(&self, css: &str, n: usize) -> Vec<String> {
        for _ in 0..100 {
            let found = self.all(css).await;
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no {n} of {css:?} within 10 s; page text: {}",
            self.text_of_page().await
        );
    }

    /// Waits until exactly `n` elements match `css`.
    pub async fn wait_for_exactly(&self, css: &str, n: usize) {
        for _ in 0..100 {
            if self.all(css).await.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css:?} never came to {n}");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_for(css, 1).await.remove(0);
        self.post(&format!("/element/{el}/clear"), json!({})).await;
        self.post(&format!("/element/{el}/value"), json!({ "text": text }))
            .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.wait_for(css, 1).await.remove(0);
        self.post(&format!("/element/{el}/click"), json!({})).await;
    }

    pub async fn text(&self, el: &str) -> String {
        self.get(&format!("/element/{el}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn text_of_page(&self) -> String {
        match self.all("body").await.first() {
            Some(body) => self.text(body).await,
            None => String::new(),
        }
    }

    /// Waits up to 10 s for the result panel's title to mention `what`.
    pub async fn wait_for_result(&self, what: &str) {
        for _ in 0..100 {
            if let Some(title) = self.all("#result-title").await.first()
                && self.text(title).await.contains(what)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the result never showed {what:?}");
    }

    /// The open alert or confirm dialog's text, if one is open.
    pub async fn dialog(&self) -> Option<String> {
        let v = self.get("/alert/text").await;
        v.as_str().map(str::to_owned)
    }

    pub async fn accept_dialog(&self) {
        for _ in 0..50 {
            if self.dialog().await.is_some() {
                self.post("/alert/accept", json!({})).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no confirmation dialog appeared");
    }

    pub async fn screenshot(&self, name: &str) {
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // WebDriver's DELETE /session closes Chromium; killing only chromedriver left every
        // browser of the run behind (50 processes after one full run), loading the machine.
        if let Some(rest) = self.base.strip_prefix("http://")
            && let Some((addr, path)) = rest.split_once('/')
            && let Ok(mut conn) = std::net::TcpStream::connect(addr)
        {
            use std::io::{Read, Write};
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if conn.write_all(request.as_bytes()).is_ok() {
                let _ = conn.read(&mut [0u8; 512]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn sign_in(b: &Browser, username: &str) {
    b.type_into("#signin input[name=username]", username).await;
    b.type_into("#signin input[name=password]", PASSWORD).await;
    b.click("#signin-button").await;
}

/// No markup from the API became an element, and no script ran.
async fn assert_rendered_as_text(b: &Browser) {
    assert!(b.all("main img").await.is_empty(), "an <img> was injected");
    assert_eq!(b.dialog().await, None, "a script opened a dialog");
    assert!(
        b.text_of_page().await.contains(XSS),
        "the markup shows as text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_real_browser_and_render_markup_as_text() {
    let Some(b) = Browser::start().await else {
        return;
    };
    // Generated GeoIP databases (loopback is in Lyon) and a shadow travel rule.
    let (app, _dir) = crate::rules::app_with_rules(
        &[(
            "travel.toml",
            crate::rules::travel_rule("shadow", "\"revoke_session\""),
        )],
        true,
    )
    .await;
    // The page signs DPoP proofs with the browser's clock: start five minutes back, so that the
    // server's clock is the browser's again when the page signs in.
    app.clock.advance(chrono::Duration::minutes(-5));
    app.register("alice").await;
    let ua = format!("Mozilla/5.0 {XSS}");
    let first = login_from(&app, "alice", crate::rules::PARIS, &ua).await;
    app.clock.advance(chrono::Duration::minutes(5));
    // Paris to New York in five minutes: the rule fires (in shadow, so nothing changes).
    let other = Tokens::from_json(
        &refresh_from(&app, &first.refresh, crate::rules::NEW_YORK, &ua)
            .await
            .json()
            .await
            .unwrap(),
    );

    // The account page: sign in, two devices, revoke the other one.
    b.goto(&app.url("/account/")).await;
    sign_in(&b, "alice").await;
    b.wait_for("#devices tr", 2).await;
    assert_eq!(b.all("#devices tr.current").await.len(), 1);
    assert_rendered_as_text(&b).await;
    let page = b.text_of_page().await;
    assert!(
        page.contains("New York, US") && page.contains("Lyon, FR"),
        "places: {page}"
    );
    b.screenshot("account.png").await;
    b.click("#devices button.revoke").await;
    b.accept_dialog().await;
    b.wait_for_exactly("#devices tr", 1).await;
    assert_eq!(
        app.refresh(&other.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Material for the console: a reused refresh token and a failed login whose name is markup.
    app.service
        .register(
            "analyst",
            PASSWORD.into(),
            vec!["security".into()],
            &Default::default(),
        )
        .await
        .unwrap();
    let stolen = login_from(
        &app,
        "alice",
        "203.0.113.9",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    )
    .await;
    app.refresh_ok(&stolen.refresh).await;
    // Past the late-retry window: reuse.
    app.clock.advance(chrono::Duration::minutes(11));
    assert_eq!(
        app.refresh(&stolen.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .http
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({ "username": XSS, "password": "not the password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The console: a fresh browser profile signs in as the analyst and finds alice.
    b.goto(&app.url("/console/")).await;
    b.wait_for("#signin", 1).await;
    sign_in(&b, "analyst").await;
    b.wait_for("#console:not(.hidden)", 1).await;
    b.type_into("#q", "alice").await;
    b.click("#search-button").await;
    b.wait_for("#result-body tr[data-session]", 1).await;
    b.click(&format!(
        "tr[data-session='{}'] a.open-session",
        stolen.session_id
    ))
    .await;
    b.wait_for_result(&stolen.session_id).await;
    b.wait_for("#result-body tr.event", 3).await;
    let reuse = b
        .wait_for("tr[data-type='session.reuse_detected'] .tag.reuse", 1)
        .await;
    assert!(
        b.text(&reuse[0]).await.contains("older_generation")
            || b.text(&reuse[0]).await.contains("previous_after_grace")
    );
    let page = b.text_of_page().await;
    assert!(
        page.contains("203.0.113.9"),
        "the timeline shows the address"
    );

    // The session that jumped the Atlantic: its timeline flags the rule firing.
    b.type_into("#q", &other.session_id).await;
    b.click("#search-button").await;
    b.wait_for_result(&other.session_id).await;
    let flag = b.wait_for("tr[data-type='rule.fired'] .tag.rule", 1).await;
    assert!(b.text(&flag[0]).await.contains("impossible_travel"));
    let page = b.text_of_page().await;
    assert!(
        page.contains("Paris, FR") && page.contains("New York, US"),
        "places: {page}"
    );
    b.screenshot("console-session.png").await;

    // The address's timeline shows the failed login with its name as text.
    b.type_into("#q", "203.0.113.9").await;
    b.click("#search-button").await;
    b.wait_for_result("203.0.113.9").await;
    b.wait_for("tr[data-type='login.failed']", 1).await;
    assert_rendered_as_text(&b).await;
    b.screenshot("console-address.png").await;

    // Log alice out everywhere, confirmed in the page; the API agrees.
    b.type_into("#q", "alice").await;
    b.click("#search-button").await;
    b.wait_for_result("User alice").await;
    b.click("#logout-everywhere").await;
    b.accept_dialog().await;
    b.wait_for("#result-title", 1).await;
    for _ in 0..50 {
        if sessions_left(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sessions_left(&app).await, 0);
}

/// The account page binds its session to a non-extractable WebCrypto key kept in IndexedDB:
/// it signs in and refreshes with DPoP, and its refresh cookie, copied out of the browser, is
/// refused without the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_binds_its_session_to_the_browsers_key() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    app.register("pia").await;
    b.goto(&app.url("/account/")).await;
    sign_in(&b, "pia").await;
    b.wait_for("#devices tr", 1).await;
    let started = app
        .events(sessiond::store::EventFilter {
            event_types: vec!["session.started".into()],
            ..Default::default()
        })
        .await;
    let sid = data(&started[0])["session_id"].as_str().unwrap().to_owned();
    assert!(
        data(&started[0])["dpop_jkt"].is_string(),
        "the page's login carried a proof: {}",
        started[0].data
    );
    // The key in IndexedDB: its private half cannot be exported.
    let extractable = b
        .post(
            "/execute/async",
            json!({ "script": "const done = arguments[0]; const o = indexedDB.open('sessiond-dpop');
                o.onsuccess = () => { const g = o.result.transaction('keys').objectStore('keys').get('device');
                g.onsuccess = () => done([g.result.privateKey.extractable, g.result.privateKey.algorithm.name]); };",
                "args": [] }),
        )
        .await;
    assert_eq!(extractable, json!([false, "ECDSA"]));

    // A reload refreshes by cookie, with a proof by the same key.
    b.goto(&app.url("/account/")).await;
    b.wait_for("#devices tr", 1).await;
    let refreshed = app.session_events(&sid).await;
    assert_eq!(
        types(&refreshed)
            .iter()
            .filter(|t| **t == "session.refreshed")
            .count(),
        1
    );

    // The refresh cookie, taken out of the browser (it is scoped to the refresh path).
    b.goto(&app.url("/v1/auth/refresh")).await;
    let cookie = b.get("/cookie/__Secure-sessiond_refresh").await;
    let cookie = cookie["value"]
        .as_str()
        .expect("the refresh cookie")
        .to_owned();
    let r = app
        .http
        .post(app.url("/v1/auth/refresh"))
        .header("cookie", format!("__Secure-sessiond_refresh={cookie}"))
        .header("origin", app.url(""))
        .header("x-sessiond-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_dpop_proof"
    );
    let after = app.session_events(&sid).await;
    assert!(types(&after).contains(&"session.dpop_mismatch"));
    assert_eq!(
        types(&after)
            .iter()
            .filter(|t| **t == "session.refreshed")
            .count(),
        1,
        "nothing rotated"
    );
    b.screenshot("account-dpop.png").await;
}

async fn sessions_left(app: &TestApp) -> usize {
    let alice = app
        .service
        .store
        .user_by_name("alice")
        .await
        .unwrap()
        .unwrap();
    app.service
        .store
        .active_sessions_of(alice.user_id)
        .await
        .unwrap()
        .len()
}

impl Browser {
    /// Runs `script` in the page (WebDriver "execute script") and returns its value.
    pub async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// The names of the cookies the browser holds for the current page's site (HttpOnly ones
    /// included: WebDriver sees the whole jar).
    pub async fn cookie_names(&self) -> Vec<String> {
        self.get("/cookie")
            .await
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_with_an_expired_access_token_ends_the_session_and_the_reload_stays_out() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    app.register("alice").await;
    b.goto(&app.url("/account/")).await;
    sign_in(&b, "alice").await;
    b.wait_for("#devices tr", 1).await;
    b.wait_for("#signout:not(.hidden)", 1).await;
    assert_eq!(sessions_left(&app).await, 1);
    // The page holds the refresh cookie (its path is the refresh route's).
    b.goto(&app.url("/v1/auth/refresh")).await;
    assert!(
        b.cookie_names()
            .await
            .iter()
            .any(|n| n.contains("sessiond_refresh")),
        "signed in with the refresh cookie"
    );
    b.goto(&app.url("/account/")).await;
    b.wait_for("#signout:not(.hidden)", 1).await;

    // Half an hour later (the server's clock) the access token in the page has expired.
    app.clock.advance(chrono::Duration::minutes(30));
    b.execute("window.beforeSignOut = true; return true;").await;
    b.click("#signout").await;
    // The page reloads after signing out: wait for the new document.
    let mut reloaded = false;
    for _ in 0..100 {
        let v = b
            .execute("return window.beforeSignOut === undefined && document.readyState === 'complete' && typeof Api !== 'undefined';")
            .await;
        if v == Value::Bool(true) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the page reloaded after signing out");
    assert_eq!(sessions_left(&app).await, 0, "the session ended");
    // What the reload tries to sign back in with: the page's own refresh, which now fails.
    let back_in = b
        .post(
            "/execute/async",
            json!({ "script": "const done = arguments[arguments.length - 1]; Api.refresh().then(done, () => done('error'));", "args": [] }),
        )
        .await;
    assert_eq!(
        back_in,
        Value::Bool(false),
        "the reload does not sign back in"
    );
    assert!(b.all("#devices-section.hidden").await.len() == 1);
    assert!(b.all("#signin-section:not(.hidden)").await.len() == 1);
    b.screenshot("signed-out.png").await;
    b.goto(&app.url("/v1/auth/refresh")).await;
    assert!(
        !b.cookie_names()
            .await
            .iter()
            .any(|n| n.contains("sessiond_refresh")),
        "the refresh cookie is gone"
    );
}
