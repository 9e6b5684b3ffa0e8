//! Integrity an outsider can check (issue 12, point 5): signed checkpoints of the log's head,
//! `events verify` against the chain, the checkpoints and a replay of the projections, and an
//! export verified without the database (by this build and by an independent Python verifier).
//! Each attack is written out as the raw SQL an attacker with write access to the database
//! would run, on SQLite and, when configured, on PostgreSQL.

use crate::helpers::*;
use crate::pg::{TestDatabase, fresh_database};
use base64::Engine;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::config::{Config, DatabaseUrl};
use sessiond::store::RecordedEvent;
use sessiond::store::chain::event_hash;
use std::sync::Arc;

fn master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

/// A server on SQLite, or on the PostgreSQL database given; its master key is known.
async fn server(db: Option<&TestDatabase>) -> TestApp {
    let url = db.map(|d| d.url.clone());
    let configure = move |c: &mut Config| {
        if let Some(url) = url {
            c.database_url = Some(DatabaseUrl::parse(&url).unwrap());
        }
    };
    spawn_node(
        configure,
        Arc::new(ManualClock::default()),
        Some(master_key()),
    )
    .await
}

/// The command line against the server's database, with its master key in the environment.
fn cli(app: &TestApp, db: Option<&TestDatabase>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .env_remove("SESSIOND_CONFIG")
        .env("SESSIOND_MASTER_KEY", master_key());
    if let Some(db) = db {
        cmd.arg("--database-url").arg(&db.url);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Register, log in, refresh, change the password: a few batches, so a few checkpoints.
async fn history(app: &TestApp) -> Tokens {
    app.register("mallory-target").await;
    let t = app.login("mallory-target").await;
    let t = app.refresh_ok(&t.refresh).await;
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&t.access)
        .json(
            &json!({"current_password": PASSWORD, "new_password": "another correct horse battery"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.login_as("mallory-target", "another correct horse battery")
        .await;
    app.register("mallory-target-2").await;
    app.login("mallory-target-2").await;
    t
}

/// Raw SQL on the server's database, as an attacker with write access would run it.
async fn attack(app: &TestApp, db: Option<&TestDatabase>, sql: &str) {
    use sqlx::{Connection, Executor};
    match db {
        Some(db) => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            c.execute(sql).await.unwrap();
        }
        None => {
            let url = format!("sqlite://{}", app.db_path().display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            c.execute(sql).await.unwrap();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The attacker's edit: event `at` gets another IP address, and its hash and every later hash
/// (and prev_hash) are recomputed the way the public chain does it.
fn rewrite_from(events: &[RecordedEvent], at: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut prev = events[at - 1].hash.clone();
    for e in &events[at..] {
        let mut e = e.clone();
        if out.is_empty() {
            assert!(e.data.contains("127.0.0.1"), "{}", e.data);
            e.data = e.data.replace("127.0.0.1", "203.0.113.9");
        }
        e.prev_hash = prev;
        e.hash = event_hash(&e).to_vec();
        prev = e.hash.clone();
        out.push(e);
    }
    out
}

fn update_sql(db: Option<&TestDatabase>, e: &RecordedEvent) -> String {
    let pg = db.is_some();
    let data = if pg { "data_text" } else { "data" };
    let blob = |h: &[u8]| match pg {
        true => format!("'\\x{}'::bytea", hex(h)),
        false => format!("X'{}'", hex(h)),
    };
    format!(
        "UPDATE events SET {data} = '{}', prev_hash = {}, hash = {} WHERE position = {};",
        e.data.replace('\'', "''"),
        blob(&e.prev_hash),
        blob(&e.hash),
        e.position
    )
}

#[tokio::test]
async fn an_edited_event_with_every_later_hash_recomputed_fails_verify() {
    for db in [None, fresh_database("edited_event_recomputed_chain").await] {
        let db = db.as_ref();
        let backend = if db.is_some() { "postgres" } else { "sqlite" };
        let app = server(db).await;
        history(&app).await;
        let (ok, out) = cli(&app, db, &["events", "verify"]);
        assert!(ok, "{backend}: {out}");
        assert!(
            out.contains("chain ok") && out.contains("projections ok"),
            "{out}"
        );

        // The attacker edits the first login's address and recomputes the chain from there.
        let events = app.all_events().await;
        let at = events
            .iter()
            .position(|e| e.event_type == "session.started")
            .unwrap();
        let forged = rewrite_from(&events, at);
        let sql: String = forged.iter().map(|e| update_sql(db, e)).collect();
        attack(&app, db, &sql).await;

        let (ok, out) = cli(&app, db, &["events", "verify", "--chain-only"]);
        assert!(!ok, "{backend}: a rewritten chain must not verify: {out}");
        assert!(out.contains("does not match the chain"), "{backend}: {out}");

        // Removing the checkpoints that no longer match leaves the head unsigned.
        attack(
            &app,
            db,
            &format!(
                "DELETE FROM checkpoints WHERE position >= {}",
                forged[0].position
            ),
        )
        .await;
        let (ok, out) = cli(&app, db, &["events", "verify", "--chain-only"]);
        assert!(!ok, "{backend}: {out}");
        assert!(
            out.contains("is not covered by a signed checkpoint"),
            "{backend}: {out}"
        );

        // A checkpoint signed with a key of the attacker's own is refused.
        let other = tempfile::tempdir().unwrap();
        let theirs = sessiond::tokens::keys::MasterKey::load(None, other.path()).unwrap();
        let head = forged.last().unwrap();
        let cp = sessiond::tokens::checkpoint::CheckpointKey::derive(&theirs).sign(
            head.position,
            head.hash.clone().try_into().unwrap(),
            chrono::Utc::now(),
        );
        let blob = |b: &[u8]| match db {
            Some(_) => format!("'\\x{}'::bytea", hex(b)),
            None => format!("X'{}'", hex(b)),
        };
        attack(
            &app,
            db,
            &format!(
                "INSERT INTO checkpoints (position, hash, signed_at, key_id, signature) VALUES ({}, {}, '{}', '{}', {})",
                cp.position,
                blob(&cp.hash),
                cp.signed_at,
                cp.key_id,
                blob(&cp.signature)
            ),
        )
        .await;
        let (ok, out) = cli(&app, db, &["events", "verify", "--chain-only"]);
        assert!(!ok, "{backend}: {out}");
        assert!(
            out.contains("is not signed by checkpoint key"),
            "{backend}: {out}"
        );
    }
}

#[tokio::test]
async fn a_session_given_the_security_role_by_sql_is_named_by_verify() {
    for db in [None, fresh_database("session_roles_by_sql").await] {
        let db = db.as_ref();
        let backend = if db.is_some() { "postgres" } else { "sqlite" };
        let app = server(db).await;
        let t = history(&app).await;
        let (ok, out) = cli(&app, db, &["events", "verify"]);
        assert!(ok, "{backend}: {out}");

        let sql = match db {
            Some(_) => format!(
                "UPDATE sessions SET roles = '[\"security\"]'::jsonb WHERE session_id = '{}'",
                t.session_id
            ),
            None => format!(
                "UPDATE sessions SET roles = '[\"security\"]' WHERE session_id = '{}'",
                t.session_id
            ),
        };
        attack(&app, db, &sql).await;
        let (ok, out) = cli(&app, db, &["events", "verify"]);
        assert!(!ok, "{backend}: {out}");
        assert!(
            out.contains("chain ok"),
            "{backend}: the log itself is intact: {out}"
        );
        assert!(
            out.contains("table sessions")
                && out.contains(&t.session_id)
                && out.contains("column roles"),
            "{backend}: verify names the session and the column: {out}"
        );
        // Nothing of the scratch replay is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(app.data_dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".verify-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// The published key, as an outsider reads it from the security API.
async fn published_key(app: &TestApp) -> (String, Value) {
    let (_, key) = app
        .service
        .create_api_key("auditor", vec!["security".into()])
        .await
        .unwrap();
    let r = app
        .http
        .get(app.url("/v1/admin/checkpoints"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    (body["public_key"]["x"].as_str().unwrap().to_owned(), body)
}

fn python_verifier(export: &std::path::Path, x: &str) -> (bool, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/verify_export.py"
    );
    let out = crate::helpers::python3(&["cryptography"])
        .arg(script)
        .arg(export)
        .arg(x)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn an_export_verifies_against_its_signed_checkpoint_and_fails_with_an_event_removed() {
    let app = server(None).await;
    history(&app).await;
    let (x, published) = published_key(&app).await;
    let head = published["head"].as_i64().unwrap();
    assert_eq!(published["checkpoints"][0]["position"], head, "{published}");
    let (noauth, _) = (
        app.http
            .get(app.url("/v1/admin/checkpoints"))
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(noauth, 401);

    let file = app.data_dir.path().join("export.ndjson");
    let (ok, out) = cli(
        &app,
        None,
        &["events", "export", "--output", file.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["checkpoint"]["key_id"], published["key_id"], "{last}");

    // An outsider without the database: by the public key alone.
    let outsider = tempfile::tempdir().unwrap();
    let copy = outsider.path().join("export.ndjson");
    std::fs::copy(&file, &copy).unwrap();
    let verify = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args([
                "events",
                "verify",
                "--export",
                path.to_str().unwrap(),
                "--public-key",
                &x,
            ])
            .arg("--data-dir")
            .arg(outsider.path())
            .env_remove("SESSIOND_MASTER_KEY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = verify(&copy);
    assert!(ok && out.starts_with("export ok"), "{out}");
    let (ok, out) = python_verifier(&copy, &x);
    assert!(ok, "{out}");

    // One event removed from the middle, then the last event removed.
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    for drop in [n / 2, n - 2] {
        let cut: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&copy, cut).unwrap();
        let (ok, out) = verify(&copy);
        assert!(!ok, "line {drop} removed: {out}");
        let (ok, out) = python_verifier(&copy, &x);
        assert!(!ok, "line {drop} removed, python: {out}");
    }

    // The same export under another key: refused.
    let other = tempfile::tempdir().unwrap();
    let theirs = sessiond::tokens::keys::MasterKey::load(None, other.path()).unwrap();
    let their_x = sessiond::tokens::checkpoint::CheckpointKey::derive(&theirs)
        .public()
        .x();
    std::fs::copy(&file, &copy).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args([
            "events",
            "verify",
            "--export",
            copy.to_str().unwrap(),
            "--public-key",
            &their_x,
        ])
        .arg("--data-dir")
        .arg(outsider.path())
        .env_remove("SESSIOND_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not signed by checkpoint key"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _) = python_verifier(&copy, &their_x);
    assert!(!ok);

    // Without a key to trust and no master key, verify refuses rather than trust the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["events", "verify", "--export", copy.to_str().unwrap()])
        .arg("--data-dir")
        .arg(outsider.path())
        .env_remove("SESSIOND_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--public-key"));
}

/// `events verify` compares projected tables page by page by key (keyset), not by OFFSET: read
/// in pages of 3, a table whose key repeats across page boundaries (`login_failures`: several
/// failures under one throttle key at one instant) yields every row once, in key order, as
/// one read of the whole table does, on both backends.
#[tokio::test]
async fn projected_tables_page_by_key_even_where_the_key_repeats() {
    use sessiond::store::integrity::{PROJECTED_TABLES, PageKey};
    use sessiond::store::{Store, UnitOfWork, WriteSession};
    let t = sessiond::domain::parse_timestamp("2026-03-01T12:00:00Z").unwrap();
    for b in crate::store_contract::backends("keyset_paging").await {
        macro_rules! put {
            ($ws:expr) => {{
                let ws = &mut $ws;
                ws.begin(&[]).await.unwrap();
                // Seven identical rows per key straddle the pages of three.
                for _ in 0..7 {
                    ws.put_login_failures(&["acct:a".into(), "net:n".into()], t)
                        .await
                        .unwrap();
                }
                for i in 1..5 {
                    ws.put_login_failures(&["acct:a".into()], t + chrono::Duration::seconds(i))
                        .await
                        .unwrap();
                }
                ws.commit().await.unwrap();
            }};
        }
        match &b.store {
            Store::Sqlite(s) => put!(s.write_session().await.unwrap()),
            Store::Postgres(p) => put!(p.write_session().await.unwrap()),
        }
        let table = PROJECTED_TABLES
            .iter()
            .position(|(name, _)| *name == "login_failures")
            .unwrap();
        let whole = b.store.projection_rows(table, None, 1000).await.unwrap();
        assert_eq!(whole.len(), 18, "{}", b.name);
        let (mut paged, mut from) = (Vec::new(), None);
        loop {
            let page = b
                .store
                .projection_rows(table, from.as_ref(), 3)
                .await
                .unwrap();
            paged.extend(page.iter().map(|r| r.key.clone()));
            if page.len() < 3 {
                break;
            }
            from = PageKey::after(from.as_ref(), &page);
        }
        let whole: Vec<String> = whole.into_iter().map(|r| r.key).collect();
        assert_eq!(paged, whole, "{}", b.name);
    }
}

/// The security API's export, downloaded over HTTP with no filter, ends with its covering
/// signed checkpoint as the CLI's does: `events verify --export` and the independent Python
/// verifier accept it by the published key alone, and refuse it with one event removed. A
/// filtered download says in its last line that it cannot prove completeness, and verify
/// refuses it for that reason.
#[tokio::test]
async fn an_export_downloaded_over_http_verifies_against_its_checkpoint() {
    let app = server(None).await;
    history(&app).await;
    let (x, published) = published_key(&app).await;
    let (_, key) = app
        .service
        .create_api_key("downloader", vec!["security".into()])
        .await
        .unwrap();
    let download = |query: &'static str| {
        let (app, key) = (&app, key.expose().to_owned());
        async move {
            let r = app
                .http
                .get(app.url(&format!("/v1/admin/events/export{query}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let text = download("").await;
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["checkpoint"]["key_id"], published["key_id"], "{last}");
    assert_eq!(last["public_key"]["x"], x.as_str(), "{last}");
    // The lines are the security API's view as well (opened, no password hash).
    let first: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["type"] == "user.registered")
        .expect("a user.registered line");
    assert_eq!(first["data"]["username"], "mallory-target", "{first}");
    assert!(!text.contains("argon2"), "no password hash in the download");

    let outsider = tempfile::tempdir().unwrap();
    let copy = outsider.path().join("download.ndjson");
    let verify = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["events", "verify", "--export", path.to_str().unwrap()])
            .args(["--public-key", &x])
            .arg("--data-dir")
            .arg(outsider.path())
            .env_remove("SESSIOND_MASTER_KEY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    std::fs::write(&copy, &text).unwrap();
    let (ok, out) = verify(&copy);
    assert!(
        ok && out.starts_with("export ok"),
        "{out}: {}",
        &text[..text.len().min(3000)]
    );
    let (ok, out) = python_verifier(&copy, &x);
    assert!(ok, "{out}");

    // The attacker's copy: one event taken out of the middle.
    let lines: Vec<&str> = text.lines().collect();
    let cut: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != lines.len() / 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&copy, cut).unwrap();
    let (ok, out) = verify(&copy);
    assert!(!ok && out.contains("missing"), "{out}");
    let (ok, out) = python_verifier(&copy, &x);
    assert!(!ok, "python: {out}");

    // Filtered: the last line says what it cannot prove, and verify refuses it.
    let filtered = download("?type=session.refreshed").await;
    let last: Value = serde_json::from_str(filtered.lines().last().unwrap()).unwrap();
    assert_eq!(last["filtered"]["complete"], false, "{last}");
    assert!(
        last["filtered"]["note"]
            .as_str()
            .unwrap()
            .contains("cannot prove"),
        "{last}"
    );
    std::fs::write(&copy, &filtered).unwrap();
    let (ok, out) = verify(&copy);
    assert!(!ok && out.contains("filtered"), "{out}");
    let (ok, out) = python_verifier(&copy, &x);
    assert!(!ok && out.contains("filtered"), "python: {out}");
}
