//! `sessiond rules lint|test|backtest`, run as the real binary.

use crate::helpers::*;
use crate::rules::*;
use serde_json::{Value, json};
use sessiond::clock::Clock;
use sessiond::domain::{Duration, format_timestamp};
use std::path::Path;

fn shipped_pack() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
}

#[test]
fn the_shipped_pack_lints_and_passes_its_own_cases() {
    let data = tempfile::tempdir().unwrap();
    let pack = shipped_pack().to_str().unwrap();
    let (ok, out, err) = sessiond_cli(&["rules", "lint", "--rules", pack], data.path());
    assert!(ok, "{out}{err}");
    for id in [
        "impossible_travel",
        "new_country",
        "new_device",
        "session_context_change",
        "brute_force",
        "password_spray",
        "reuse_escalation",
    ] {
        assert!(out.contains(id), "{id} missing from {out}");
    }
    let (ok, out, err) = sessiond_cli(&["rules", "test", "--rules", pack], data.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_broken_rule_file_is_refused_with_file_and_line() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("rules");
    rule_file(&dir, "good.toml", &travel_rule("shadow", "\"flag\""));
    let broken = travel_rule("enforce", "\"flag\"").replace(
        "type = \"impossible_travel\"",
        "type = \"impossible_travel\"\nmax_speed_kmh = \"fast\"",
    );
    rule_file(
        &dir,
        "broken.toml",
        &broken.replace("id = \"impossible_travel\"", "id = \"travel_two\""),
    );
    let (ok, out, _) = sessiond_cli(
        &["rules", "lint", "--rules", dir.to_str().unwrap()],
        data.path(),
    );
    assert!(!ok, "{out}");
    let line = broken
        .lines()
        .position(|l| l.starts_with("[rule.detector]"))
        .unwrap()
        + 1;
    assert!(out.contains(&format!("broken.toml:{line}:")), "{out}");
    assert!(
        out.contains("max_speed_kmh") || out.contains("invalid type"),
        "{out}"
    );
    assert!(!out.contains("good.toml"), "{out}");

    // A failing inline case fails `rules test`.
    let wrong = travel_rule("shadow", "\"flag\"")
        + r#"
[[rule.test]]
name = "a 30 km move claimed to fire"
event = "session.refreshed"
expect = "fire"
history = [{ ip = "192.0.2.10", lat = 48.85, lon = 2.35, radius_km = 20, minutes_ago = 10 }]
current = { ip = "203.0.113.7", lat = 49.12, lon = 2.36, radius_km = 20 }
"#;
    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    rule_file(&dir, "good.toml", &wrong);
    let (ok, out, _) = sessiond_cli(
        &["rules", "test", "--rules", dir.to_str().unwrap()],
        data.path(),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  impossible_travel: a 30 km move claimed to fire: expected Fire"),
        "{out}"
    );
}

#[tokio::test]
async fn backtest_names_the_sessions_each_rule_would_have_hit_and_writes_nothing() {
    // Live: no rules at all. The history has one ocean crossing, one short move and a guessing run.
    let (app, dir) = app_with_rules(&[], true).await;
    let start = app.clock.now();
    for name in ["alice", "bob", "carol"] {
        app.register(name).await;
    }
    let a = login_from(&app, "alice", PARIS, CHROME_120).await;
    let b = login_from(&app, "bob", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(10));
    assert_eq!(
        refresh_from(&app, &a.refresh, NEW_YORK, CHROME_120)
            .await
            .status(),
        200
    );
    assert_eq!(
        refresh_from(&app, &b.refresh, NEAR_PARIS, CHROME_120)
            .await
            .status(),
        200
    );
    for _ in 0..11 {
        post_from(
            &app,
            "/v1/auth/login",
            json!({"username": "carol", "password": "nope nope nope"}),
            NEW_YORK,
            FIREFOX,
        )
        .await;
    }
    let before = app.event_count().await;

    let rules = dir.path().join("candidate");
    rule_file(
        &rules,
        "t.toml",
        &travel_rule("shadow", "\"revoke_session\""),
    );
    rule_file(
        &rules,
        "b.toml",
        r#"
[[rule]]
id = "brute_force"
version = 1
severity = "medium"
mode = "shadow"
on = ["login.failed"]
actions = ["notify"]
explanation = "{count}"
[rule.detector]
type = "threshold"
group_by = "user_ip"
limit = 10
window = "15m"
"#,
    );
    let since = format_timestamp(start - Duration::minutes(1));
    let until = format_timestamp(start + Duration::hours(1));
    let args = [
        "rules",
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--since",
        &since,
        "--until",
        &until,
        "--json",
    ];
    let (ok, out, err) = sessiond_cli(&args, app.data_dir.path());
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let travel = &report["rules"]["impossible_travel"];
    assert_eq!(travel["sessions"], json!([a.session_id]), "{report}");
    assert_eq!(travel["firings"], 1);
    let brute = &report["rules"]["brute_force"];
    assert_eq!(brute["usernames"], json!(["carol"]));
    assert_eq!(brute["firings"], 1);
    assert_eq!(app.event_count().await, before, "a backtest writes nothing");
    assert!(
        app.all_events()
            .await
            .iter()
            .all(|e| e.event_type != "rule.fired")
    );

    // A window after the history reports nothing (the history still replays).
    let later = format_timestamp(start + Duration::minutes(30));
    let args = [
        "rules",
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--since",
        &later,
        "--json",
    ];
    let (ok, out, _) = sessiond_cli(&args, app.data_dir.path());
    assert!(ok);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["rules"]["impossible_travel"]["firings"], 0,
        "{report}"
    );
}

/// The real server: a changed rule file is picked up on SIGHUP, and SIGTERM still stops it.
#[cfg(unix)]
#[test]
fn serve_reloads_rules_on_sighup_and_still_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let data = tempfile::tempdir().unwrap();
    let rules = data.path().join("rules");
    rule_file(&rules, "t.toml", &travel_rule("shadow", "\"flag\""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", "127.0.0.1:0", "--rules"])
        .arg(&rules)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("SESSIOND_CONFIG")
        .env("RUST_LOG", "sessiond=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while let Ok(line) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if line.contains(needle) {
                return true;
            }
        }
        false
    };
    let signal = |name: &str| {
        let ok = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    assert!(wait_for("listening on"), "the server did not start");
    rule_file(
        &rules,
        "t.toml",
        &travel_rule("enforce", "\"require_reauth\""),
    );
    signal("-HUP");
    assert!(wait_for("rules reloaded"), "no reload after SIGHUP");
    signal("-TERM");
    assert!(
        wait_for("sessiond stopped"),
        "the server did not stop after SIGTERM"
    );
    assert!(child.wait().unwrap().success());
}
