//! Sign-in notices (issue 15, point 4), against the real server with generated GeoIP
//! databases (journeys.rs) and the injected clock: a new country is told once, "this wasn't
//! me" ends every session and asks for a new password, "this was me" keeps the same device
//! and network quiet until the exception expires, and the notice is mailed to a local SMTP
//! sink (`tests/support/smtp_sink.py`, aiosmtpd).

use crate::helpers::*;
use crate::journeys::{IPHONE, LONDON_EE, SEATTLE_COMCAST, write_databases};
use crate::pg::fresh_database;
use crate::rules::receipts;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::domain::Duration;
use std::sync::Arc;

const NEW_PASSWORD: &str = "a different horse battery staple 42";

/// Apps with the generated databases behind a trusted 127.0.0.1: on SQLite, and on PostgreSQL
/// when `SESSIOND_TEST_DATABASE_URL` is set. Each with what keeps its files and database.
pub async fn notice_apps(
    test: &str,
    extra: impl Fn(&mut sessiond::config::Config) + Clone,
) -> Vec<(TestApp, tempfile::TempDir, Option<crate::pg::TestDatabase>)> {
    notice_apps_on(test, extra, true).await
}

async fn notice_apps_on(
    test: &str,
    extra: impl Fn(&mut sessiond::config::Config) + Clone,
    postgres: bool,
) -> Vec<(TestApp, tempfile::TempDir, Option<crate::pg::TestDatabase>)> {
    let mut apps = Vec::new();
    let db = if postgres {
        fresh_database(test).await
    } else {
        None
    };
    let urls: Vec<Option<String>> = std::iter::once(None)
        .chain(db.as_ref().map(|d| Some(d.url.clone())))
        .collect();
    let mut db = db;
    for url in urls {
        let dir = tempfile::tempdir().unwrap();
        let [city, asn, anon, conn] = write_databases(dir.path());
        let extra = extra.clone();
        let is_pg = url.is_some();
        let app = spawn_node(
            move |c| {
                c.geoip_city = Some(city);
                c.geoip_asn = Some(asn);
                c.geoip_anonymous_ip = Some(anon);
                c.geoip_connection_type = Some(conn);
                c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
                if let Some(url) = url {
                    c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
                }
                extra(c);
            },
            Arc::new(ManualClock::default()),
            None,
        )
        .await;
        apps.push((app, dir, if is_pg { db.take() } else { None }));
    }
    apps
}

async fn notices(app: &TestApp, access: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url("/v1/me/notices"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn answer(app: &TestApp, access: &str, notice_id: &str, answer: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/me/notices/{notice_id}/{answer}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

async fn notice_events(app: &TestApp) -> Vec<Value> {
    app.all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "notice.created")
        .map(data)
        .collect()
}

/// Maya signs in at home (her history starts), then from London on the same phone.
async fn home_then_london(app: &TestApp) -> (Tokens, Tokens) {
    app.register("maya").await;
    let home = login_from(app, "maya", SEATTLE_COMCAST, IPHONE).await;
    let london = login_from(app, "maya", LONDON_EE, IPHONE).await;
    (home, london)
}

#[tokio::test]
async fn a_new_country_login_gives_one_notice_not_one_per_refresh_nor_per_login() {
    for (app, _dir, _db) in notice_apps("one_notice_per_country", |_| {}).await {
        let (_home, london) = home_then_london(&app).await;
        // The noticed sign-in cannot vouch for itself (a thief would).
        let first = notices(&app, &london.access).await;
        let id = first[0]["notice_id"].as_str().unwrap();
        let r = answer(&app, &london.access, id, "confirm").await;
        assert_eq!(
            error_code(r, StatusCode::FORBIDDEN).await,
            "notice_own_session"
        );
        // The phone refreshes from London, and signs in there again: nothing more to tell.
        let mut t = london.clone();
        for _ in 0..3 {
            app.clock.advance(Duration::minutes(5));
            let r = refresh_from(&app, &t.refresh, LONDON_EE, IPHONE).await;
            assert_eq!(r.status(), StatusCode::OK);
            t = Tokens::from_json(&r.json().await.unwrap());
        }
        app.clock.advance(Duration::hours(1));
        let again = login_from(&app, "maya", LONDON_EE, IPHONE).await;
        // And at home nothing is new.
        login_from(&app, "maya", SEATTLE_COMCAST, IPHONE).await;

        let created = notice_events(&app).await;
        assert_eq!(created.len(), 1, "one notice: {created:?}");
        assert_eq!(created[0]["reasons"], json!(["new_country"]));
        assert_eq!(created[0]["session_id"], london.session_id);
        assert_eq!(created[0]["country"], "GB");

        let listed = notices(&app, &again.access).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        let n = &listed[0];
        assert_eq!(n["status"], "open");
        assert_eq!(n["place"]["country"], "GB");
        assert_eq!(n["device"]["os"], "iPhone");
        assert_eq!(n["device"]["browser"], "Safari");
        assert!(n["created_at"].as_str().is_some());
        // Nobody else sees them.
        app.register("mallory").await;
        let mallory = app.login("mallory").await;
        assert!(notices(&app, &mallory.access).await.is_empty());
        let id = n["notice_id"].as_str().unwrap();
        let r = answer(&app, &mallory.access, id, "confirm").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "another user's notice");
        let r = answer(&app, &mallory.access, "not-an-id", "deny").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn wasnt_me_ends_every_session_and_the_next_login_needs_a_new_password() {
    for (app, _dir, _db) in notice_apps("wasnt_me", |_| {}).await {
        let (home, london) = home_then_london(&app).await;
        let id = notices(&app, &home.access).await[0]["notice_id"]
            .as_str()
            .unwrap()
            .to_owned();
        // From her own phone at home: this wasn't me.
        let r = answer(&app, &home.access, &id, "deny").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["revoked"].as_array().unwrap().len(), 2, "{body}");
        for t in [&home, &london] {
            assert_eq!(app.me(&t.access).await.status(), StatusCode::UNAUTHORIZED);
            let r = refresh_from(&app, &t.refresh, LONDON_EE, IPHONE).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        // The thief still has the password: it yields no session until it is changed.
        let r = post_from(
            &app,
            "/v1/auth/login",
            json!({"username": "maya", "password": PASSWORD}),
            LONDON_EE,
            IPHONE,
        )
        .await;
        assert_eq!(
            error_code(r, StatusCode::FORBIDDEN).await,
            "password_change_required"
        );
        // The way back in: the password changed with the current one, no session needed.
        let r = app
            .post_json(
                "/v1/auth/password",
                json!({"username": "maya", "current_password": "wrong password here",
                       "new_password": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = app
            .post_json(
                "/v1/auth/password",
                json!({"username": "maya", "current_password": PASSWORD,
                       "new_password": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            app.login_as("maya", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let fresh = app.login_as("maya", NEW_PASSWORD).await;
        assert_eq!(fresh.status(), StatusCode::OK);
        let fresh = Tokens::from_json(&fresh.json().await.unwrap());
        let listed = notices(&app, &fresh.access).await;
        let denied = listed
            .iter()
            .find(|n| n["notice_id"] == id.as_str())
            .unwrap();
        assert_eq!(denied["status"], "denied");
        let r = answer(&app, &fresh.access, &id, "confirm").await;
        assert_eq!(error_code(r, StatusCode::CONFLICT).await, "notice_answered");

        // Recorded, with the user as actor.
        let events = app.all_events().await;
        let denied = events
            .iter()
            .find(|e| e.event_type == "notice.denied")
            .expect("notice.denied");
        let meta: Value = serde_json::from_str(&denied.metadata).unwrap();
        assert_eq!(meta["actor"]["kind"], "user");
        let types: Vec<&str> = events
            .iter()
            .filter(|e| e.position > denied.position)
            .map(|e| e.event_type.as_str())
            .collect();
        assert!(types.contains(&"user.logged_out_everywhere"), "{types:?}");
        assert!(types.contains(&"user.password_changed"), "{types:?}");
    }
}

/// The receipts of rules that fired on a session.
async fn fired_on(app: &TestApp, session_id: &str) -> Vec<Value> {
    receipts(app)
        .await
        .into_iter()
        .filter(|r| r["session_id"] == session_id)
        .collect()
}

#[tokio::test]
async fn was_me_keeps_the_same_place_quiet_until_the_exception_expires() {
    // The shipped pack as it ships (shadow): its receipts show what would have fired.
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for (app, _dir, _db) in notice_apps("was_me", move |c| {
        c.notice_exception_lifetime = Duration::days(30);
        c.rules = Some(pack.clone());
    })
    .await
    {
        let (home, london) = home_then_london(&app).await;
        // Seattle to London at once: the travel rule fires on the noticed login.
        assert!(
            fired_on(&app, &london.session_id)
                .await
                .iter()
                .any(|r| r["rule_id"] == "impossible_travel")
        );
        let id = notices(&app, &home.access).await[0]["notice_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = answer(&app, &home.access, &id, "confirm").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert!(body["exception_expires_at"].as_str().is_some(), "{body}");
        let added = app
            .all_events()
            .await
            .into_iter()
            .find(|e| e.event_type == "exception.added")
            .expect("exception.added");
        let meta: Value = serde_json::from_str(&added.metadata).unwrap();
        assert_eq!(meta["actor"]["kind"], "user");
        assert_eq!(notices(&app, &home.access).await[0]["status"], "confirmed");

        // Past the notice window (so only the exception can keep it quiet), the same jump
        // again: home, then London at once.
        app.clock.advance(Duration::days(2));
        login_from(&app, "maya", SEATTLE_COMCAST, IPHONE).await;
        let quiet = login_from(&app, "maya", LONDON_EE, IPHONE).await;
        assert_eq!(notice_events(&app).await.len(), 1, "no new notice");
        let fired = fired_on(&app, &quiet.session_id).await;
        assert!(fired.is_empty(), "no rule fires on it: {fired:?}");

        // The exception has expired: the same place is news again, and the rules speak.
        app.clock.advance(Duration::days(29));
        login_from(&app, "maya", SEATTLE_COMCAST, IPHONE).await;
        let later = login_from(&app, "maya", LONDON_EE, IPHONE).await;
        let created = notice_events(&app).await;
        assert_eq!(created.len(), 2, "{created:?}");
        assert_eq!(created[1]["session_id"], later.session_id);
        assert!(!fired_on(&app, &later.session_id).await.is_empty());
    }
}

/// The local SMTP sink: a child process saving each message it receives into a directory.
struct SmtpSink {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut child = crate::helpers::python3(&["aiosmtpd"])
            .arg(script)
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the SMTP sink (pip install aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the sink prints its port (is aiosmtpd installed?): {line:?}")
        });
        SmtpSink { child, dir, port }
    }

    /// The messages received so far, waiting (a bounded while) for at least `n`.
    async fn messages(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let mut found: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect();
            if found.len() >= n {
                found.sort();
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} messages reached the sink");
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_notice_is_mailed_to_the_local_smtp_sink_with_device_and_place() {
    let sink = SmtpSink::start();
    let port = sink.port;
    let apps = notice_apps("notice_mail", move |c| {
        c.smtp_url = sessiond::config::SmtpUrl::parse(&format!("smtp://127.0.0.1:{port}"));
        c.smtp_from = Some("sessiond@example.com".into());
    })
    .await;
    let mut expected = 0;
    for (i, (app, _dir, _db)) in apps.iter().enumerate() {
        let name = format!("maya{i}");
        let address = format!("{name}@example.org");
        let r = app
            .post_json(
                "/v1/auth/register",
                json!({"username": name, "password": PASSWORD, "email": address}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        login_from(app, &name, SEATTLE_COMCAST, IPHONE).await;
        login_from(app, &name, LONDON_EE, IPHONE).await;
        expected += 1;
        let mails = sink.messages(expected).await;
        let mail = mails
            .iter()
            .find(|m| m.contains(&format!("X-Envelope-To: {address}")))
            .unwrap_or_else(|| panic!("a mail to {address}: {mails:?}"));
        assert!(mail.contains(&format!("To: {address}")), "{mail}");
        assert!(mail.contains("From: sessiond@example.com"), "{mail}");
        assert!(mail.contains("Device: Safari on iPhone"), "{mail}");
        assert!(mail.contains("Place: London, GB"), "{mail}");
        assert!(mail.contains("/account/"), "{mail}");

        // The address is personal data: sealed in the log, never in clear on disk.
        if app.service.config.database_url.is_none() {
            let mut bytes = Vec::new();
            for suffix in ["", "-wal"] {
                let mut p = app.db_path().into_os_string();
                p.push(suffix);
                bytes.extend(std::fs::read(p).unwrap_or_default());
            }
            let clear = bytes
                .windows(address.len())
                .any(|w| w == address.as_bytes());
            assert!(!clear, "the e-mail address is stored in clear");
        }
        let registered = app
            .all_events()
            .await
            .into_iter()
            .find(|e| e.event_type == "user.registered")
            .unwrap();
        assert_eq!(
            data(&registered)["email"],
            address,
            "read through the vault"
        );
    }
    // A bad address is refused at registration.
    let app = &apps[0].0;
    let r = app
        .post_json(
            "/v1/auth/register",
            json!({"username": "zed", "password": PASSWORD, "email": "zed@\r\nBcc: x@y.z"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_email"
    );
}

#[tokio::test]
async fn the_notice_goes_to_webhook_subscribers_as_notice_created() {
    let (app, _dir, _db) = notice_apps_on(
        "notice_webhook",
        |c| {
            local_webhooks(c);
            c.webhook_poll_interval = Duration::milliseconds(50);
        },
        false,
    )
    .await
    .remove(0);
    // A receiver that keeps every body it is sent.
    let received: Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let keep = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    app.service
        .register(
            "sec-officer",
            PASSWORD.into(),
            vec!["security".into()],
            &Default::default(),
        )
        .await
        .unwrap();
    let officer = app.login("sec-officer").await;
    let r = app
        .http
        .post(app.url("/v1/admin/webhooks"))
        .bearer_auth(&officer.access)
        .json(&json!({"url": hook, "event_types": ["notice.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let (_home, london) = home_then_london(&app).await;
    for _ in 0..400 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0].to_string();
    assert!(text.contains("notice.created"), "{text}");
    assert!(text.contains(&london.session_id), "{text}");
}
