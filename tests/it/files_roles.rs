//! Files and roles: the database and its WAL and export files are the owner's alone, no password
//! hash leaves in an export or admin view, new API keys get the least role, rules cannot lock
//! or log out on failed logins, and each rule has a circuit-breaker budget of its own.

use crate::helpers::*;
use crate::rules::{CHROME_120, NEW_YORK, PARIS, app_with_rules, receipts, rule_file, travel_rule};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A password no strength check refuses.
const NEW_PASSWORD: &str = "Quartz-Lantern-Orbit-93";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_database_and_its_wal_and_shm_files_are_readable_by_their_owner_only() {
    let app = spawn_app().await;
    app.register("alice").await;
    app.login("alice").await;
    let db = app.db_path();
    for file in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn an_existing_world_readable_database_is_tightened_when_opened() {
    let data = tempfile::tempdir().unwrap();
    let (ok, _, err) = sessiond_cli(&["migrate"], data.path());
    assert!(ok, "{err}");
    let db = data.path().join("sessiond.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = sessiond_cli(&["migrate"], data.path());
    assert!(ok, "{err}");
    assert_eq!(mode(&db), 0o600);
}

/// A user who registered and changed their password: both events carry a hash in the log.
async fn user_with_two_hashes(app: &TestApp) -> String {
    let id = app.register("erin").await;
    let t = app.login("erin").await;
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&t.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let stored: Vec<String> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.data.contains("password_hash"))
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(stored, ["user.registered", "user.password_changed"]);
    id
}

#[tokio::test]
async fn an_events_export_file_is_the_owners_only_and_holds_no_password_hash() {
    let app = spawn_app().await;
    user_with_two_hashes(&app).await;
    let out = app.data_dir.path().join("events.ndjson");
    let (ok, _, err) = sessiond_cli(
        &["events", "export", "--output", out.to_str().unwrap()],
        app.data_dir.path(),
    );
    assert!(ok, "{err}");
    assert_eq!(mode(&out), 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["event_type"] == "user.password_changed"),
        "{text}"
    );
    assert!(!text.contains("password_hash"), "{text}");
    assert!(!text.contains("$argon2"), "{text}");

    // An existing, world-readable file is tightened when the export overwrites it.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = sessiond_cli(
        &["events", "export", "--output", out.to_str().unwrap()],
        app.data_dir.path(),
    );
    assert!(ok, "{err}");
    assert_eq!(mode(&out), 0o600);
}

#[tokio::test]
async fn no_admin_view_shows_a_password_hash() {
    let app = spawn_app().await;
    let (_, key) = app
        .service
        .create_api_key("siem", vec!["security".into()])
        .await
        .unwrap();
    let mut stream = app
        .http
        .get(app.url("/v1/admin/stream?after=0"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    let id = user_with_two_hashes(&app).await;
    let mut bodies = Vec::new();
    for path in [
        "/v1/admin/events".to_owned(),
        "/v1/admin/events/export".to_owned(),
        format!("/v1/admin/users/{id}"),
        format!("/v1/admin/users/{id}/timeline"),
    ] {
        let r = app
            .http
            .get(app.url(&path))
            .bearer_auth(key.expose())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        bodies.push((path, r.text().await.unwrap()));
    }
    // The live stream, until it has shown the password change.
    let mut seen = String::new();
    while !seen.contains("user.password_changed") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await
            .expect("events within 10 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    bodies.push(("/v1/admin/stream".into(), seen));
    for (path, body) in bodies {
        assert!(!body.contains("password_hash"), "{path}: {body}");
        assert!(!body.contains("$argon2"), "{path}: {body}");
    }
}

#[tokio::test]
async fn an_api_key_made_without_a_role_is_a_resource_server_key() {
    let app = spawn_app().await;
    // The CLI opens the same database beside the running server.
    let (ok, out, err) = sessiond_cli(
        &["keys", "create-api-key", "--name", "gateway"],
        app.data_dir.path(),
    );
    assert!(ok, "{err}");
    assert!(out.contains("roles: resource_server"), "{out}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_owned();
    let r = app
        .http
        .get(app.url("/v1/admin/events"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
}

#[test]
fn rule_lint_refuses_locking_or_logging_out_on_failed_logins() {
    let data = tempfile::tempdir().unwrap();
    for action in ["lock_account", "logout_everywhere", "revoke_session"] {
        let dir = tempfile::tempdir().unwrap();
        rule_file(
            dir.path(),
            "lockout.toml",
            &format!(
                r#"
[[rule]]
id = "lockout"
version = 1
severity = "high"
mode = "enforce"
on = ["login.failed"]
actions = ["notify", "{action}"]
explanation = "{{count}} failures"
[rule.detector]
type = "threshold"
group_by = "user"
limit = 5
window = "15m"
"#
            ),
        );
        let (ok, out, err) = sessiond_cli(
            &["rules", "lint", "--rules", dir.path().to_str().unwrap()],
            data.path(),
        );
        assert!(!ok, "{action}: {out}");
        let said = format!("{out}{err}");
        assert!(said.contains("lockout.toml:2:"), "{said}");
        assert!(
            said.contains(&format!("{action} cannot apply to login.failed")),
            "{said}"
        );
    }
}

#[tokio::test]
async fn one_rule_past_its_breaker_cap_does_not_stop_another_from_revoking() {
    // Cap 2 per rule and window. The context-change rule is noisy; travel is not.
    let context_rule = r#"
[[rule]]
id = "session_context_change"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["revoke_session"]
explanation = "changed {changed}"
[rule.detector]
type = "session_context_change"
"#;
    let (app, _dir) = app_with_rules(
        &[
            ("c.toml", context_rule.to_owned()),
            ("t.toml", travel_rule("enforce", "\"revoke_session\"")),
        ],
        true,
    )
    .await;
    for name in ["ann", "ben", "cat"] {
        app.register(name).await;
        let t = login_from(&app, name, PARIS, CHROME_120).await;
        refresh_from(&app, &t.refresh, PARIS, FIREFOX).await;
    }
    let actions: Vec<String> = receipts(&app)
        .await
        .iter()
        .map(|f| f["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["revoke_session", "revoke_session", "flag"]);
    // Paris, then New York a minute later: the travel rule's own budget is untouched.
    app.register("dan").await;
    let t = login_from(&app, "dan", PARIS, CHROME_120).await;
    app.clock.advance(sessiond::domain::Duration::minutes(1));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked by travel");
    let travel: Vec<Value> = receipts(&app)
        .await
        .into_iter()
        .filter(|f| f["rule_id"] == "impossible_travel")
        .collect();
    assert_eq!(travel.len(), 1);
    assert_eq!(travel[0]["action"], "revoke_session", "not degraded");
}
