//! The command line against a real data directory: chain verification, export, rebuild, and a
//! start refused for a bad configuration value.

use crate::helpers::*;
use sqlx::Connection;

/// Some history with every kind of session event in it.
async fn busy_history(app: &TestApp) {
    app.register("alice").await;
    app.register("bob").await;
    let a = app.login("alice").await;
    let a2 = app.refresh_ok(&a.refresh).await;
    app.refresh_ok(&a.refresh).await; // retry
    app.clock.advance(sessiond::domain::Duration::minutes(3));
    app.refresh_ok(&a.refresh).await; // a late retry: a2 was never used
    let b = app.login("bob").await;
    app.refresh_ok(&b.refresh).await;
    app.clock.advance(sessiond::domain::Duration::minutes(11));
    app.refresh(&b.refresh).await; // reuse
    assert_eq!(app.login_as("alice", "wrong password").await.status(), 401);
    app.login("alice").await;
    let a3 = app.refresh_ok(&a2.refresh).await;
    app.http
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(&a3.access)
        .send()
        .await
        .unwrap();
    app.login("bob").await;
}

async fn raw(app: &TestApp) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db_path().display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn verify_names_the_first_tampered_position() {
    let app = spawn_app().await;
    busy_history(&app).await;
    let (ok, out, _) = sessiond_cli(&["events", "verify"], app.data_dir.path());
    assert!(ok, "{out}");
    let total = app.event_count().await;
    assert!(out.contains(&format!("{total} events")), "{out}");

    let target = 7;
    let mut conn = raw(&app).await;
    // Addresses are sealed in the stored data (issue 12): tamper with the clear JSON itself.
    sqlx::query(
        "UPDATE events SET data = substr(data, 1, length(data) - 1) || ',\"tampered\":true}' \
         WHERE position = ?",
    )
    .bind(target)
    .execute(&mut conn)
    .await
    .unwrap();
    let (ok, out, _) = sessiond_cli(&["events", "verify"], app.data_dir.path());
    assert!(!ok, "a tampered log must fail verification");
    assert!(out.contains(&format!("position {target}:")), "{out}");

    // Re-hashing the edited row does not help: the next row no longer chains onto it.
    // The stored bytes (not the read-through form) are what the chain hashes.
    let row = app
        .service
        .store
        .raw_events(&sessiond::store::EventFilter {
            after_position: target - 1,
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let rehashed = sessiond::store::chain::event_hash(&row[0]);
    sqlx::query("UPDATE events SET hash = ? WHERE position = ?")
        .bind(rehashed.to_vec())
        .bind(target)
        .execute(&mut conn)
        .await
        .unwrap();
    let (ok, out, _) = sessiond_cli(&["events", "verify"], app.data_dir.path());
    assert!(!ok);
    assert!(out.contains(&format!("position {}:", target + 1)), "{out}");
}

#[tokio::test]
async fn a_rebuild_reproduces_the_live_projections() {
    let app = spawn_app().await;
    busy_history(&app).await;
    let live = app.service.store.projection_snapshot().await.unwrap();
    assert!(
        live.iter()
            .any(|r| r.starts_with("sessions|") && r.contains("'revoked'"))
    );
    assert!(
        live.iter()
            .filter(|r| r.starts_with("refresh_tokens|"))
            .count()
            >= 7
    );

    // Damage the read models so that a rebuild that did nothing would be caught.
    let mut conn = raw(&app).await;
    sqlx::query("UPDATE sessions SET status = 'active', end_reason = NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM refresh_tokens WHERE generation = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET password_hash = 'x'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_ne!(app.service.store.projection_snapshot().await.unwrap(), live);

    let (ok, out, err) = sessiond_cli(&["projections", "rebuild"], app.data_dir.path());
    assert!(ok, "{out}{err}");
    let rebuilt = app.service.store.projection_snapshot().await.unwrap();
    assert_eq!(rebuilt, live);
}

#[tokio::test]
async fn export_writes_filtered_ndjson() {
    let app = spawn_app().await;
    busy_history(&app).await;
    let (ok, out, _) = sessiond_cli(
        &[
            "events",
            "export",
            "--type",
            "session.refreshed,session.reuse_detected",
        ],
        app.data_dir.path(),
    );
    assert!(ok);
    let mut lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The last line says a filtered export cannot prove completeness.
    assert_eq!(lines.pop().unwrap()["filtered"]["complete"], false);
    assert_eq!(lines.len(), 4);
    assert!(
        lines.iter().all(|l| l["event_type"] == "session.refreshed"
            || l["event_type"] == "session.reuse_detected")
    );
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64())
    );
    assert!(
        lines[0]["data"]["context"]["ip"].is_string(),
        "data is exported as JSON, not as a string"
    );

    let stream = lines[0]["stream_id"].as_str().unwrap();
    let (_, out, _) = sessiond_cli(
        &["events", "export", "--stream", stream],
        app.data_dir.path(),
    );
    // A filtered export's last line says it cannot prove completeness.
    let (trailer, events) = out
        .trim_end()
        .rsplit_once('\n')
        .map(|(e, t)| (t, e))
        .unwrap();
    assert!(trailer.starts_with("{\"filtered\""), "{trailer}");
    assert!(events.lines().all(|l| l.contains(stream)));
    assert!(events.lines().count() >= 2);

    let (_, all, _) = sessiond_cli(&["events", "export"], app.data_dir.path());
    let (_, future, _) = sessiond_cli(
        &["events", "export", "--since", "2999-01-01T00:00:00Z"],
        app.data_dir.path(),
    );
    // A full export ends with the checkpoint that signs its last event.
    assert_eq!(all.lines().count(), app.event_count().await + 1);
    assert!(all.lines().last().unwrap().starts_with("{\"checkpoint\""));
    assert_eq!(
        future.lines().count(),
        1,
        "only the filtered trailer: {future}"
    );
    let (ok, _, err) = sessiond_cli(
        &["events", "export", "--since", "yesterday"],
        app.data_dir.path(),
    );
    assert!(!ok && err.contains("--since"), "{err}");
}

#[test]
fn a_bad_configuration_value_stops_the_start_and_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiond.toml");
    std::fs::write(&config, "refresh_grace_window = \"half a minute\"\n").unwrap();
    let (ok, _, err) = sessiond_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("refresh_grace_window"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SESSIOND_ACCESS_TOKEN_LIFETIME", "0s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access_token_lifetime"));
}

/// Runs the CLI off the test's runtime, so the server it shares the data directory with goes on.
async fn cli(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sessiond_cli(&args, &dir)
    })
    .await
    .unwrap()
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in {out}"))
        .trim()
}

#[tokio::test]
async fn the_first_security_user_and_api_keys_are_made_from_the_command_line() {
    let app = spawn_app().await;
    let dir = app.data_dir.path();

    let (ok, out, err) = cli(&["users", "create", "Analyst", "--role", "security"], dir).await;
    assert!(ok, "{err}");
    let password = field(&out, "password:").to_owned();
    let r = app.login_as("analyst", &password).await;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let analyst = Tokens::from_json(&r.json().await.unwrap());
    let r = app
        .http
        .get(app.url("/v1/revocations"))
        .bearer_auth(&analyst.access)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::OK,
        "the security role reads the feed"
    );
    let (ok, _, err) = cli(&["users", "create", "someone", "--role", "root"], dir).await;
    assert!(!ok && err.contains("role"), "{err}");

    let (ok, out, err) = cli(
        &[
            "keys",
            "create-api-key",
            "--name",
            "gateway",
            "--role",
            "resource_server",
        ],
        dir,
    )
    .await;
    assert!(ok, "{err}");
    let key = field(&out, "key:").to_owned();
    assert!(key.starts_with("sdak_"));
    let introspect = |credential: String| {
        let app = &app;
        let token = analyst.access.clone();
        async move {
            app.http
                .post(app.url("/oauth/introspect"))
                .bearer_auth(credential)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(introspect(key.clone()).await, reqwest::StatusCode::OK);

    let (ok, listing, _) = cli(&["keys", "list-api-keys"], dir).await;
    assert!(ok && listing.contains("gateway") && listing.contains("active"));
    assert!(!listing.contains(&key), "a listing never shows the key");
    let key_id = listing.split('\t').next().unwrap().trim().to_owned();
    let (ok, _, err) = cli(&["keys", "revoke-api-key", &key_id], dir).await;
    assert!(ok, "{err}");
    assert_eq!(introspect(key).await, reqwest::StatusCode::UNAUTHORIZED);
    let (ok, _, err) = cli(&["keys", "revoke-api-key", &key_id], dir).await;
    assert!(!ok && err.contains("no active API key"), "{err}");
}

#[tokio::test]
async fn roles_change_from_the_command_line_through_the_log() {
    use base64::Engine;
    let app = spawn_app().await;
    let dir = app.data_dir.path();
    app.register("carol").await;
    let roles_of = |access: &str| -> serde_json::Value {
        let payload = access.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["roles"].clone()
    };
    let before = app.login("carol").await;
    assert_eq!(roles_of(&before.access), serde_json::json!(["user"]));

    let (ok, out, err) = cli(
        &["users", "set-roles", "Carol", "--role", "user,security"],
        dir,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(field(&out, "roles:"), "user, security");
    let changed = app
        .events(sessiond::store::EventFilter {
            event_types: vec!["user.roles_changed".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(changed.len(), 1);
    assert_eq!(
        data(&changed[0])["roles"],
        serde_json::json!(["user", "security"])
    );
    assert_eq!(data(&changed[0])["previous"], serde_json::json!(["user"]));
    assert!(changed[0].metadata.contains(r#""kind":"system""#));

    // The session keeps the roles of its login; the next login has the new ones.
    let refreshed = app.refresh_ok(&before.refresh).await;
    assert_eq!(roles_of(&refreshed.access), serde_json::json!(["user"]));
    let after = app.login("carol").await;
    assert_eq!(
        roles_of(&after.access),
        serde_json::json!(["user", "security"])
    );

    // The same roles (in any order) record nothing; bad input is refused and records nothing.
    let (ok, _, err) = cli(
        &["users", "set-roles", "carol", "--role", "security,user"],
        dir,
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["users", "set-roles", "carol", "--role", "root"], dir).await;
    assert!(!ok && err.contains("role"), "{err}");
    let (ok, _, err) = cli(&["users", "set-roles", "nobody", "--role", "user"], dir).await;
    assert!(!ok && err.contains("no user"), "{err}");
    let user = app
        .service
        .store
        .user_by_name("carol")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.roles, ["user", "security"]);
    assert_eq!(
        app.events(sessiond::store::EventFilter {
            event_types: vec!["user.roles_changed".into()],
            ..Default::default()
        })
        .await
        .len(),
        1
    );

    let (ok, out, err) = sessiond_cli(&["projections", "rebuild"], dir);
    assert!(ok, "{out}{err}");
    let user = app
        .service
        .store
        .user_by_name("carol")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.roles, ["user", "security"]);
}
