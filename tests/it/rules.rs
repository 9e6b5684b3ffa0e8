//! The rule engine end to end: a GeoIP database generated here (documentation ranges placed in
//! cities and ASNs), rule files written here, requests whose client address comes from
//! `X-Forwarded-For` behind a trusted 127.0.0.1, and an injected clock.

use crate::helpers::*;
use maxminddb::geoip2;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::domain::Duration;
use std::path::{Path, PathBuf};

pub const PARIS: &str = "192.0.2.10";
/// ~5,800 km from Paris.
pub const NEW_YORK: &str = "198.51.100.7";
/// 30 km north of Paris, another network and ASN.
pub const NEAR_PARIS: &str = "203.0.113.7";
pub const CHROME_120: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
pub const CHROME_121: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36";

/// Writes a city and an ASN database into `dir`; returns their paths.
pub fn write_geoip(dir: &Path) -> (PathBuf, PathBuf) {
    let places: [(&str, &str, &str, f64, f64, u32, &str); 5] = [
        (
            "192.0.2.0/24",
            "FR",
            "Paris",
            48.8566,
            2.3522,
            64501,
            "Paris Telecom",
        ),
        (
            "198.51.100.0/24",
            "US",
            "New York",
            40.7128,
            -74.0060,
            64502,
            "Hudson Net",
        ),
        (
            "203.0.113.0/24",
            "FR",
            "Chantilly",
            49.1266,
            2.3622,
            64503,
            "Oise Fibre",
        ),
        (
            "2001:db8::/32",
            "JP",
            "Tokyo",
            35.6762,
            139.6503,
            64504,
            "Kanto IX",
        ),
        // Loopback has a place too, so the load benchmark's lookups find a record.
        (
            "127.0.0.0/8",
            "FR",
            "Lyon",
            45.7640,
            4.8357,
            64505,
            "Rhone Loop",
        ),
    ];
    let build = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_000_000);
    let mut city_db = mmdb_writer::Writer::builder("GeoIP2-City")
        .build_epoch(build)
        .build();
    let mut asn_db = mmdb_writer::Writer::builder("GeoLite2-ASN")
        .build_epoch(build)
        .build();
    for (net, country, city, lat, lon, asn, org) in places {
        let net: ipnet::IpNet = net.parse().unwrap();
        let mut record = geoip2::City::default();
        record.city.names.english = Some(city);
        record.country.iso_code = Some(country);
        record.location.latitude = Some(lat);
        record.location.longitude = Some(lon);
        record.location.accuracy_radius = Some(20);
        city_db.insert(net, &record).unwrap();
        let a = geoip2::Asn {
            autonomous_system_number: Some(asn),
            autonomous_system_organization: Some(org),
        };
        asn_db.insert(net, &a).unwrap();
    }
    let (city, asn) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    std::fs::write(&city, city_db.to_bytes().unwrap()).unwrap();
    std::fs::write(&asn, asn_db.to_bytes().unwrap()).unwrap();
    (city, asn)
}

pub fn rule_file(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

pub fn travel_rule(mode: &str, actions: &str) -> String {
    format!(
        r#"
[[rule]]
id = "impossible_travel"
version = 3
severity = "high"
mode = "{mode}"
on = ["session.started", "session.refreshed"]
actions = [{actions}]
explanation = "{{from_city}} to {{to_city}} at {{speed_kmh}} km/h"
[rule.detector]
type = "impossible_travel"
"#
    )
}

fn context_rule(actions: &str) -> String {
    format!(
        r#"
[[rule]]
id = "session_context_change"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = [{actions}]
explanation = "changed {{changed}}: {{before}} -> {{after}}"
[rule.detector]
type = "session_context_change"
"#
    )
}

const BRUTE_FORCE: &str = r#"
[[rule]]
id = "brute_force"
version = 1
severity = "medium"
mode = "enforce"
on = ["login.failed"]
actions = ["notify"]
explanation = "{count} failures for {key}"
[rule.detector]
type = "threshold"
group_by = "user_ip"
limit = 10
window = "15m"
"#;

/// An app with the generated GeoIP databases, `rules` as its rule files, and 127.0.0.1 as a
/// trusted proxy.
pub async fn app_with_rules(rules: &[(&str, String)], geo: bool) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = write_geoip(dir.path());
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for (name, text) in rules {
        rule_file(&rules_dir, name, text);
    }
    let app = spawn_app_with(|c| {
        if geo {
            c.geoip_city = Some(city);
            c.geoip_asn = Some(asn);
        }
        c.rules = Some(rules_dir);
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.rules_breaker_floor = 2;
        c.rules_breaker_fraction = 0.0;
        // These tests watch the rules' own failed-login counting; the built-in per-address
        // throttle (5 failures) would refuse the attempts before they reach it.
        c.login_throttle.account_address.max_failures = 0;
    })
    .await;
    (app, dir)
}

pub async fn receipts(app: &TestApp) -> Vec<Value> {
    app.all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "rule.fired")
        .map(data)
        .collect()
}

/// Writes the generated databases for the load benchmark (BENCHMARKS.md):
/// `SESSIOND_BENCH_GEOIP_DIR=/tmp/geo cargo test --test it write_benchmark_geoip -- --ignored`
#[test]
#[ignore = "a tool for BENCHMARKS.md, not a check"]
fn write_benchmark_geoip() {
    let dir = std::env::var("SESSIOND_BENCH_GEOIP_DIR").expect("SESSIOND_BENCH_GEOIP_DIR");
    std::fs::create_dir_all(&dir).unwrap();
    write_geoip(Path::new(&dir));
}

#[tokio::test]
async fn travel_across_an_ocean_in_minutes_steps_up_the_session_until_the_password_is_proven() {
    let (app, _dir) = app_with_rules(
        &[(
            "t.toml",
            travel_rule("enforce", "\"require_reauth\", \"notify\""),
        )],
        true,
    )
    .await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    let login = app.session_events(&t.session_id).await;
    let geo = &data(&login[0])["context"]["geo"];
    assert_eq!(geo["city"], "Paris");
    assert_eq!(geo["asn"], 64501);
    assert_eq!(geo["city_build"], 1_763_000_000);
    assert_eq!(data(&login[0])["context"]["device"]["browser"], "Chrome");

    app.clock.advance(Duration::minutes(10));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    let f = &fired[0];
    assert_eq!(f["rule_id"], "impossible_travel");
    assert_eq!(f["rule_version"], 3);
    assert_eq!(f["mode"], "enforce");
    assert_eq!(f["action"], "require_reauth");
    assert_eq!(f["session_id"], t.session_id.as_str());
    assert_eq!(f["geoip_build"], 1_763_000_000);
    assert_eq!(f["inputs"]["from_city"], "Paris");
    assert_eq!(f["inputs"]["to_city"], "New York");
    assert_eq!(f["inputs"]["from_radius_km"], 20.0);
    let distance = f["inputs"]["distance_km"].as_f64().unwrap();
    assert!((5_800.0..5_900.0).contains(&distance), "{distance}");
    assert_eq!(f["inputs"]["gap_minutes"], 10.0);
    assert!(
        f["explanation"]
            .as_str()
            .unwrap()
            .starts_with("Paris to New York at "),
        "{f}"
    );

    // Still stepped up, from anywhere, with the same token: it was not rotated.
    let r = refresh_from(&app, &t.refresh, PARIS, CHROME_120).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );

    let reauth = |password: &'static str| {
        post_from(
            &app,
            "/v1/auth/reauth",
            json!({"refresh_token": t.refresh, "password": password}),
            NEW_YORK,
            CHROME_120,
        )
    };
    assert_eq!(
        error_code(reauth("wrong password").await, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    assert_eq!(reauth(PASSWORD).await.status(), StatusCode::NO_CONTENT);
    let types_now: Vec<String> = app
        .session_events(&t.session_id)
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        types_now,
        [
            "session.started",
            "session.reauth_required",
            "session.reauthenticated"
        ]
    );
    // Proven from New York, New York is now trusted.
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(receipts(&app).await.len(), 1);
}

#[tokio::test]
async fn a_thirty_km_move_does_not_fire() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"revoke_session\""))],
        true,
    )
    .await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(2));
    let r = refresh_from(&app, &t.refresh, NEAR_PARIS, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(receipts(&app).await.is_empty());
}

#[tokio::test]
async fn a_flagged_event_does_not_join_the_baseline() {
    // Flag only: the refresh from New York goes through but is not trusted, so the next one
    // from New York is judged against Paris again.
    let (app, _dir) = app_with_rules(&[("t.toml", travel_rule("enforce", "\"flag\""))], true).await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(10));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = Tokens::from_json(&r.json().await.unwrap());
    app.clock.advance(Duration::minutes(10));
    let r = refresh_from(&app, &t2.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 2);
    assert_eq!(
        fired[1]["inputs"]["gap_minutes"], 20.0,
        "still measured from Paris"
    );
}

#[tokio::test]
async fn another_browser_mid_session_fires_a_browser_update_does_not() {
    let (app, _dir) = app_with_rules(&[("c.toml", context_rule("\"revoke_session\""))], true).await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    let r = refresh_from(&app, &t.refresh, PARIS, CHROME_121).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a version bump is the same browser"
    );
    assert!(receipts(&app).await.is_empty());
    let t2 = Tokens::from_json(&r.json().await.unwrap());
    let r = refresh_from(&app, &t2.refresh, PARIS, FIREFOX).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["action"], "revoke_session");
    assert!(
        fired[0]["inputs"]["changed"]
            .as_str()
            .unwrap()
            .contains("browser"),
        "{}",
        fired[0]
    );
    let last = app.session_events(&t.session_id).await.pop().unwrap();
    assert_eq!(last.event_type, "session.revoked");
    assert_eq!(data(&last)["reason"], "rule");
    // The family is gone for its rightful owner too.
    assert_eq!(
        refresh_from(&app, &t2.refresh, PARIS, CHROME_121)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn eleven_failed_logins_fire_brute_force() {
    let (app, _dir) = app_with_rules(&[("b.toml", BRUTE_FORCE.to_owned())], true).await;
    app.register("alice").await;
    let fail = || {
        post_from(
            &app,
            "/v1/auth/login",
            json!({"username": "alice", "password": "wrong password"}),
            NEW_YORK,
            FIREFOX,
        )
    };
    for _ in 0..10 {
        assert_eq!(fail().await.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(receipts(&app).await.is_empty(), "ten is within the limit");
    assert_eq!(fail().await.status(), StatusCode::UNAUTHORIZED);
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["rule_id"], "brute_force");
    assert_eq!(fired[0]["trigger"], "login.failed");
    assert_eq!(fired[0]["username"], "alice");
    assert_eq!(fired[0]["inputs"]["count"], 11);
    assert_eq!(fired[0]["action"], "notify");
    assert_eq!(
        fired[0]["explanation"],
        format!("11 failures for alice|{NEW_YORK}")
    );
    // Another address is another key.
    let r = post_from(
        &app,
        "/v1/auth/login",
        json!({"username": "alice", "password": "wrong password"}),
        PARIS,
        FIREFOX,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(receipts(&app).await.len(), 1);
}

#[tokio::test]
async fn a_shadow_rule_records_its_receipt_and_changes_nothing() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("shadow", "\"logout_everywhere\""))],
        true,
    )
    .await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(10));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = Tokens::from_json(&r.json().await.unwrap());
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["mode"], "shadow");
    assert_eq!(fired[0]["wanted"], "logout_everywhere");
    assert_eq!(fired[0]["action"], "none");
    let types_now: Vec<String> = app
        .session_events(&t.session_id)
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(types_now, ["session.started", "session.refreshed"]);
    assert_eq!(
        refresh_from(&app, &t2.refresh, NEW_YORK, CHROME_120)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_breaker_degrades_revocations_past_its_cap_and_says_so() {
    // Cap: the floor of 2 revocations per window (fraction 0).
    let (app, _dir) = app_with_rules(&[("c.toml", context_rule("\"revoke_session\""))], true).await;
    let mut outcomes = Vec::new();
    for name in ["ann", "ben", "cat", "dan"] {
        app.register(name).await;
        let t = login_from(&app, name, PARIS, CHROME_120).await;
        outcomes.push(
            refresh_from(&app, &t.refresh, PARIS, FIREFOX)
                .await
                .status(),
        );
    }
    assert_eq!(
        outcomes,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK,
            StatusCode::OK
        ]
    );
    let actions: Vec<String> = receipts(&app)
        .await
        .iter()
        .map(|f| f["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["revoke_session", "revoke_session", "flag", "flag"]
    );
    let trips: Vec<Value> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "rule.breaker_tripped")
        .map(data)
        .collect();
    assert_eq!(
        trips.len(),
        1,
        "one trip per window, not one per degraded action"
    );
    assert_eq!(trips[0]["rule_id"], "session_context_change");
    assert_eq!(trips[0]["cap"], 2);
    assert!(captured_logs().contains("RULE CIRCUIT BREAKER TRIPPED"));
}

#[tokio::test]
async fn without_a_geoip_database_location_rules_stay_silent() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"revoke_session\""))],
        false,
    )
    .await;
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    let login = app.session_events(&t.session_id).await;
    assert!(data(&login[0])["context"].get("geo").is_none());
    app.clock.advance(Duration::minutes(1));
    assert_eq!(
        refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120)
            .await
            .status(),
        StatusCode::OK
    );
    assert!(receipts(&app).await.is_empty());
}

#[tokio::test]
async fn reauth_refuses_bad_input_and_unknown_tokens() {
    let (app, _dir) = app_with_rules(&[], true).await;
    let r = post_from(
        &app,
        "/v1/auth/reauth",
        json!({"refresh_token": "nonsense", "password": PASSWORD}),
        PARIS,
        FIREFOX,
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let r = post_from(
        &app,
        "/v1/auth/reauth",
        json!({"password": PASSWORD}),
        PARIS,
        FIREFOX,
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );
}

#[tokio::test]
async fn deny_refuses_the_login_at_hand() {
    let (app, _dir) = app_with_rules(
        &[("t.toml", travel_rule("enforce", "\"deny\", \"notify\""))],
        true,
    )
    .await;
    app.register("alice").await;
    login_from(&app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(5));
    let r = post_from(
        &app,
        "/v1/auth/login",
        json!({"username": "alice", "password": PASSWORD}),
        NEW_YORK,
        CHROME_120,
    )
    .await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "request_denied");
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["deny"], true);
    assert_eq!(fired[0]["trigger"], "session.started");
    let started = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "session.started")
        .count();
    assert_eq!(started, 1, "the denied login started no session");
}

#[tokio::test]
async fn changed_rule_files_are_reloaded_and_broken_ones_refused() {
    let (app, dir) = app_with_rules(&[("t.toml", travel_rule("shadow", "\"flag\""))], true).await;
    let rules_dir = dir.path().join("rules");
    assert!(!app.service.reload_if_changed(), "nothing changed");
    rule_file(
        &rules_dir,
        "t.toml",
        &travel_rule("enforce", "\"require_reauth\""),
    );
    assert!(app.service.reload_if_changed());
    assert_eq!(
        app.service.rules.rules().rules[0].mode,
        sessiond::rules::Mode::Enforce
    );
    rule_file(&rules_dir, "t.toml", "[[rule]]\nid = \"broken\"\n");
    assert!(!app.service.reload_if_changed());
    assert!(captured_logs().contains("rule reload refused"));
    assert_eq!(
        app.service.rules.rules().rules[0].id,
        "impossible_travel",
        "the rules in force stay"
    );

    // And they act: the enforced rule steps the session up.
    app.register("alice").await;
    let t = login_from(&app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(10));
    let r = refresh_from(&app, &t.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "reauth_required"
    );
}

#[tokio::test]
async fn the_shipped_reuse_escalation_logs_out_everywhere_when_reuse_comes_from_abroad() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/reuse.toml")).unwrap();
    let (app, _dir) = app_with_rules(&[("reuse.toml", shipped)], true).await;
    app.register("alice").await;
    let a = login_from(&app, "alice", PARIS, CHROME_120).await;
    let other = login_from(&app, "alice", PARIS, FIREFOX).await;
    let r = refresh_from(&app, &a.refresh, PARIS, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Past the late-retry window.
    app.clock.advance(Duration::minutes(11));
    // The spent token comes back from another country: reuse, then escalation.
    let r = refresh_from(&app, &a.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let fired = receipts(&app).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["rule_id"], "reuse_escalation");
    assert_eq!(fired[0]["action"], "logout_everywhere");
    assert_eq!(fired[0]["inputs"]["reason"], "other_country");
    // The user's other session ended too.
    let last = app.session_events(&other.session_id).await.pop().unwrap();
    assert_eq!(last.event_type, "session.revoked");
    assert_eq!(data(&last)["reason"], "rule");
    assert_eq!(
        refresh_from(&app, &other.refresh, PARIS, FIREFOX)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn reuse_from_home_is_not_escalated() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/reuse.toml")).unwrap();
    let (app, _dir) = app_with_rules(&[("reuse.toml", shipped)], true).await;
    app.register("alice").await;
    let a = login_from(&app, "alice", PARIS, CHROME_120).await;
    let other = login_from(&app, "alice", PARIS, FIREFOX).await;
    refresh_from(&app, &a.refresh, PARIS, CHROME_120).await;
    app.clock.advance(Duration::minutes(11));
    let r = refresh_from(&app, &a.refresh, PARIS, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(receipts(&app).await.is_empty());
    assert_eq!(
        refresh_from(&app, &other.refresh, PARIS, FIREFOX)
            .await
            .status(),
        StatusCode::OK
    );
}
