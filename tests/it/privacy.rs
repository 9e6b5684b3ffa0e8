//! Personal data in the log (issue 12): sealed per subject in the stored bytes, read through
//! by the service, erased on request, expired past retention.

use crate::admin::analyst;
use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::domain::Duration;
use sessiond::jobs::JobKind;
use sessiond::store::EventFilter;
use sessiond::store::chain::ChainVerifier;
use std::sync::Arc;

const IP: &str = "198.51.100.23";
const UA: &str = "PrivacyProbe/7.3 (X11; Linux x86_64)";

fn proxied(c: &mut sessiond::config::Config) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// The whole stored text of the events table, read with a connection of its own.
async fn events_table_text(app: &TestApp, pg_url: Option<&str>) -> String {
    use sqlx::Row;
    let sql = "SELECT stream_id, data, metadata FROM events ORDER BY position";
    let rows: Vec<String> = match pg_url {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let sql = "SELECT stream_id, data::text, metadata::text FROM events ORDER BY position";
            sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{}{}{}",
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<String, _>(2)
                    )
                })
                .collect()
        }
        None => {
            let url = format!("sqlite:{}", app.db_path().display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{}{}{}",
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<String, _>(2)
                    )
                })
                .collect()
        }
    };
    rows.join("\n")
}

/// Register, log in, refresh and change the password from `IP` with `UA`; returns the two
/// password hashes the user had.
async fn a_users_history(app: &TestApp, name: &str) -> (String, String) {
    let r = post_from(
        app,
        "/v1/auth/register",
        json!({"username": name, "password": PASSWORD}),
        IP,
        UA,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let first = app.service.store.user_by_name(name).await.unwrap().unwrap();
    let t = login_from(app, name, IP, UA).await;
    let r = refresh_from(app, &t.refresh, IP, UA).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t = Tokens::from_json(&r.json().await.unwrap());
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .header("x-forwarded-for", IP)
        .header("user-agent", UA)
        .bearer_auth(&t.access)
        .json(&json!({"current_password": PASSWORD, "new_password": "another long passphrase 9"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let second = app.service.store.user_by_name(name).await.unwrap().unwrap();
    assert_ne!(first.password_hash, second.password_hash);
    (first.password_hash, second.password_hash)
}

fn assert_absent(haystack: &str, needles: &[&str], what: &str) {
    for n in needles {
        if let Some(at) = haystack.find(n) {
            let from = haystack[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            let to = (at + 100).min(haystack.len());
            panic!("{what} holds {n:?}: …{}…", &haystack[from..to]);
        }
    }
}

async fn sealed_on(app: &TestApp, pg_url: Option<&str>) {
    let (h1, h2) = a_users_history(app, "zelda").await;
    let stored = events_table_text(app, pg_url).await;
    assert!(stored.contains("\"sealed\""), "nothing sealed: {stored}");
    // The hashes, the name, the address (and its network) and the User-Agent: none in clear.
    let secrets = [
        h1.as_str(),
        h2.as_str(),
        "argon2",
        "zelda",
        IP,
        "198.51.100.",
        UA,
        "PrivacyProbe",
    ];
    assert_absent(&stored, &secrets, "the events table");

    // The service reads through: the log as the store hands it out shows the values.
    let opened: Vec<Value> = app.all_events().await.iter().map(data).collect();
    let started = opened
        .iter()
        .find(|d| d["token_id"].is_string() && d["user_id"].is_string())
        .expect("a session.started");
    assert_eq!(started["context"]["ip"], IP);
    assert_eq!(started["context"]["user_agent"], UA);
    let registered = opened
        .iter()
        .find(|d| d["username"] == "zelda")
        .expect("user.registered reads back");
    assert_eq!(registered["password_hash"], h1.as_str());
}

#[tokio::test]
async fn names_hashes_addresses_and_user_agents_are_sealed_in_the_events_table_on_sqlite() {
    let app = spawn_app_with(proxied).await;
    sealed_on(&app, None).await;
    // An export made without the master key (the stored form): nothing in clear either.
    let (ok, out, err) = sessiond_cli(&["events", "export", "--sealed"], app.data_dir.path());
    assert!(ok, "{err}");
    assert!(out.lines().count() >= 5);
    assert_absent(&out, &["zelda", IP, UA, "argon2"], "the sealed export");
    // The chain covers the sealed bytes.
    let (ok, out, err) = sessiond_cli(&["events", "verify"], app.data_dir.path());
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn names_hashes_addresses_and_user_agents_are_sealed_in_the_events_table_on_postgres() {
    let Some(db) = fresh_database("privacy_sealed").await else {
        return;
    };
    let url = db.url.clone();
    let app = spawn_node(
        move |c| {
            c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
            proxied(c);
        },
        Arc::new(ManualClock::default()),
        None,
    )
    .await;
    sealed_on(&app, Some(&db.url)).await;
    let raw = app
        .service
        .store
        .raw_events(&EventFilter::default())
        .await
        .unwrap();
    let mut chain = ChainVerifier::default();
    for e in &raw {
        chain.check(e).unwrap();
    }
}

#[tokio::test]
async fn the_security_api_shows_the_opened_values() {
    let app = spawn_app_with(proxied).await;
    let id = app.register("yusuf").await;
    login_from(&app, "yusuf", IP, UA).await;
    let admin = analyst(&app).await;
    let r = app
        .http
        .get(app.url(&format!("/v1/admin/users/{id}/timeline")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    assert!(body.contains(IP) && body.contains(UA), "{body}");
    // Search by network keeps working.
    let r = app
        .http
        .get(app.url("/v1/admin/events?ip=198.51.100.0/24"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert!(!page["events"].as_array().unwrap().is_empty(), "{page}");
}

#[tokio::test]
async fn an_erased_user_is_gone_from_every_view_and_the_name_is_free() {
    let app = spawn_app_with(proxied).await;
    let (h1, h2) = a_users_history(&app, "mallory").await;
    let id = app
        .service
        .store
        .user_by_name("mallory")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let r = post_from(
        &app,
        "/v1/auth/login",
        json!({"username": "mallory", "password": "another long passphrase 9"}),
        IP,
        UA,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t = Tokens::from_json(&r.json().await.unwrap());
    // A failed login of the name, so the throttle keeps a row of it.
    let r = post_from(
        &app,
        "/v1/auth/login",
        json!({"username": "mallory", "password": "not the password at all"}),
        IP,
        UA,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let admin = analyst(&app).await;

    // The attacker's request: the user itself (no security role) tries to erase.
    let r = app
        .http
        .post(app.url(&format!("/v1/admin/users/{id}/erase")))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = app
        .http
        .post(app.url(&format!("/v1/admin/users/{id}/erase")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["erased"], true);
    assert!(body["revoked"].as_u64().unwrap() >= 1);
    // Twice: the user is no longer there.
    let again = app
        .http
        .post(app.url(&format!("/v1/admin/users/{id}/erase")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    // The erasure is recorded with its actor.
    let events = app.all_events().await;
    let erased = events
        .iter()
        .find(|e| e.event_type == "user.erased")
        .unwrap();
    assert!(erased.metadata.contains("admin"), "{}", erased.metadata);

    // Every view: the log read through, the sealed export, the projection rows.
    let personal = ["mallory", IP, UA, h1.as_str(), h2.as_str()];
    let opened: String = events.iter().map(|e| e.data.clone()).collect();
    assert_absent(&opened, &personal, "the log read through");
    assert!(opened.contains("[erased]"));
    let (ok, out, _) = sessiond_cli(&["events", "export"], app.data_dir.path());
    assert!(ok);
    assert_absent(&out, &personal, "the export with the key");
    let stored = events_table_text(&app, None).await;
    assert_absent(&stored, &personal, "the events table");
    let snapshot = app
        .service
        .store
        .projection_snapshot()
        .await
        .unwrap()
        .join("\n");
    assert_absent(&snapshot, &personal, "the projections");
    let r = app
        .http
        .get(app.url(&format!("/v1/admin/users/{id}/timeline")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    let timeline = r.text().await.unwrap();
    assert_absent(&timeline, &personal, "the admin timeline");
    let r = app
        .http
        .get(app.url("/v1/admin/events?ip=198.51.100.0/24"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        page["events"],
        json!([]),
        "search by the erased address finds nothing"
    );

    // The chain still verifies; a rebuild yields the same (erased) projections.
    let (ok, out, err) = sessiond_cli(&["events", "verify"], app.data_dir.path());
    assert!(ok, "{out}{err}");
    let live = app.service.store.projection_snapshot().await.unwrap();
    let (ok, out, err) = sessiond_cli(&["projections", "rebuild"], app.data_dir.path());
    assert!(ok, "{out}{err}");
    assert_eq!(app.service.store.projection_snapshot().await.unwrap(), live);

    // Its sessions ended; its old name logs in as an unknown user does.
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let old = app.login_as("mallory", "another long passphrase 9").await;
    let unknown = app
        .login_as("nobody-by-that-name", "another long passphrase 9")
        .await;
    assert_eq!(old.status(), unknown.status());
    let (a, b): (Value, Value) = (old.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(a, b);

    // The name can be registered again, by someone else.
    let new_id = app.register("mallory").await;
    assert_ne!(new_id, id.to_string());
    app.login("mallory").await;
}

#[tokio::test]
async fn erasure_from_the_command_line() {
    let app = spawn_app_with(proxied).await;
    let id = app.register("quentin").await;
    login_from(&app, "quentin", IP, UA).await;
    let (ok, out, err) = sessiond_cli(&["users", "erase", &id], app.data_dir.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("erased user"), "{out}");
    let opened: String = app
        .all_events()
        .await
        .iter()
        .map(|e| e.data.clone())
        .collect();
    assert_absent(&opened, &["quentin", IP, UA], "the log after a CLI erasure");
    let (ok, _, err) = sessiond_cli(&["users", "erase", &id], app.data_dir.path());
    assert!(!ok);
    assert!(err.contains("no user"), "{err}");
}

#[tokio::test]
async fn request_context_past_retention_reads_as_expired() {
    let app = spawn_app_with(|c| {
        proxied(c);
        c.personal_data_retention = Duration::days(90);
    })
    .await;
    app.register("rosa").await;
    let old = login_from(&app, "rosa", IP, UA).await;
    // Past the retention period and a whole key period beyond it.
    app.clock.advance(Duration::days(125));
    let new = login_from(&app, "rosa", "203.0.113.77", "Fresh/1.0").await;
    let before = app.event_count().await;
    let outcome = app.jobs.run(JobKind::Retention).await.unwrap();
    assert!(format!("{outcome:?}").contains("data keys"), "{outcome:?}");

    let events = app.all_events().await;
    let context_of = |sid: &str| {
        events
            .iter()
            .find(|e| e.stream_id == format!("session-{sid}"))
            .map(data)
            .unwrap()["context"]
            .clone()
    };
    let old_ctx = context_of(&old.session_id);
    assert_eq!(old_ctx["ip"], "[expired]");
    assert_eq!(old_ctx["user_agent"], "[expired]");
    let new_ctx = context_of(&new.session_id);
    assert_eq!(new_ctx["ip"], "203.0.113.77");
    // The events, their order and the chain remain; the name and the login still work.
    assert_eq!(events.len(), before + 1);
    assert_eq!(events.last().unwrap().event_type, "personal_data.expired");
    let raw = app
        .service
        .store
        .raw_events(&EventFilter::default())
        .await
        .unwrap();
    let mut chain = ChainVerifier::default();
    for e in &raw {
        chain.check(e).unwrap();
    }
    assert!(events.iter().any(|e| data(e)["username"] == "rosa"));
    app.login("rosa").await;
    // A second run finds nothing more to destroy.
    let before = app.event_count().await;
    app.jobs.run(JobKind::Retention).await.unwrap();
    assert_eq!(app.event_count().await, before);
}
