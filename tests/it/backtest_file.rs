//! `sessiond rules backtest --input` (issue 15 point 7): an exported history replayed through
//! the rules gives the firings the live run recorded, journeys spanning hours and sessions
//! included, because the replay rebuilds the live judge's store-kept memory as it goes.

use crate::helpers::*;
use crate::journeys::{
    IPHONE, LONDON_EE, MAC_CHROME, SEATTLE_AWS, SEATTLE_COMCAST, SEATTLE_TMOBILE,
    shipped_pack_enforced, write_databases,
};
use crate::rules::receipts;
use serde_json::{Value, json};
use sessiond::clock::Clock;
use sessiond::domain::{Duration, format_timestamp};
use std::path::Path;

/// What the live receipts and the backtest's firings are compared on.
fn key(rule: &Value, session: &Value, action: &Value, explanation: &Value) -> String {
    format!("{rule} {session} {action} {explanation}")
}

fn live_keys(receipts: &[Value]) -> Vec<String> {
    receipts
        .iter()
        .map(|r| {
            key(
                &r["rule_id"],
                &r["session_id"],
                &r["action"],
                &r["explanation"],
            )
        })
        .collect()
}

fn firing_keys(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|f| {
            key(
                &f["rule"],
                &f["session_id"],
                &f["action"],
                &f["explanation"],
            )
        })
        .collect()
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `rules backtest` on `input` and returns (success, stdout, stderr, firings).
fn backtest(
    rules: &Path,
    input: &Path,
    extra: &[&str],
    scratch: &Path,
) -> (bool, String, String, Vec<Value>) {
    let firings = scratch.join(format!("firings-{}.ndjson", uuid::Uuid::new_v4()));
    let mut args = vec![
        "rules",
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--firings",
        firings.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = sessiond_cli(&args, scratch);
    let lines = if firings.exists() {
        read_ndjson(&firings)
    } else {
        Vec::new()
    };
    (ok, out, err, lines)
}

/// The journeys' server (generated GeoIP, ASN and network-kind databases, the shipped pack in
/// enforce, requests "from" `X-Forwarded-For`), with the login throttle out of the way of the
/// brute-force rule.
async fn journey_app() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let [city, asn, anon, conn] = write_databases(dir.path());
    let rules = shipped_pack_enforced(dir.path());
    let app = spawn_app_with(|c| {
        c.geoip_city = Some(city);
        c.geoip_asn = Some(asn);
        c.geoip_anonymous_ip = Some(anon);
        c.geoip_connection_type = Some(conn);
        c.rules = Some(rules);
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.login_throttle.account_address.max_failures = 0;
        c.login_throttle.network.max_failures = 0;
        c.login_throttle.account.max_failures = 0;
    })
    .await;
    (app, dir)
}

#[tokio::test]
async fn a_backtest_of_the_http_export_gives_the_live_runs_firings_in_order() {
    let (app, dir) = journey_app().await;
    // The security team's key the export is made with.
    let (_, api_key) = app
        .service
        .create_api_key("export", vec!["security".into()])
        .await
        .unwrap();
    let start = app.clock.now();
    for name in ["maya", "leo", "nina", "carol"] {
        app.register(name).await;
    }
    // A phone between Wi-Fi and cellular in one city: kept, at most a low flag.
    let mut maya = login_from(&app, "maya", SEATTLE_COMCAST, IPHONE).await;
    for ip in [SEATTLE_TMOBILE, SEATTLE_COMCAST, SEATTLE_TMOBILE] {
        app.clock.advance(Duration::minutes(20));
        let r = refresh_from(&app, &maya.refresh, ip, IPHONE).await;
        assert_eq!(r.status(), 200);
        maya = Tokens::from_json(&r.json().await.unwrap());
    }
    // Travel across sessions spanning hours: London, then two hours later a login in Seattle
    // (~7,700 km: 3,850 km/h), in a session of its own.
    let leo_london = login_from(&app, "leo", LONDON_EE, IPHONE).await;
    app.clock.advance(Duration::minutes(30));
    assert_eq!(
        refresh_from(&app, &leo_london.refresh, LONDON_EE, IPHONE)
            .await
            .status(),
        200
    );
    app.clock.advance(Duration::minutes(90));
    let middle = app.clock.now();
    let leo_seattle = login_from(&app, "leo", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(1));
    // A stolen token replayed from a cloud VM in the same city: the refresh is refused and the
    // session revoked; no `session.refreshed` is recorded, only the receipt.
    let nina = login_from(&app, "nina", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(5));
    let replay = refresh_from(&app, &nina.refresh, SEATTLE_AWS, MAC_CHROME).await;
    assert_eq!(replay.status(), 401);
    // A brute-force run: the eleventh failure for one name from one address fires.
    for _ in 0..12 {
        let r = post_from(
            &app,
            "/v1/auth/login",
            json!({"username": "carol", "password": "not the password"}),
            LONDON_EE,
            MAC_CHROME,
        )
        .await;
        assert_eq!(r.status(), 401);
    }

    let live = receipts(&app).await;
    let rules_hit: Vec<&str> = live.iter().filter_map(|r| r["rule_id"].as_str()).collect();
    for rule in ["impossible_travel", "session_context_change", "brute_force"] {
        assert!(
            rules_hit.contains(&rule),
            "{rule} did not fire live: {live:?}"
        );
    }
    assert!(
        live.iter().any(|r| r["rule_id"] == "impossible_travel"
            && r["session_id"] == leo_seattle.session_id.as_str()),
        "the travel across sessions fired on the Seattle login: {live:?}"
    );
    assert!(
        live.iter()
            .any(|r| r["rule_id"] == "session_context_change" && r["action"] == "revoke_session"),
        "{live:?}"
    );

    // Export over HTTP, as an analyst would.
    let r = app
        .http
        .get(app.url("/v1/admin/events/export"))
        .bearer_auth(api_key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let export = dir.path().join("export.ndjson");
    // A trailer line that is no event (as a checkpoint is) is passed over.
    std::fs::write(
        &export,
        format!(
            "{body}{}\n",
            json!({"checkpoint": {"position": 1, "hash": "00"}})
        ),
    )
    .unwrap();

    let rules = shipped_pack_enforced(&dir.path().join("candidate"));
    let (ok, out, err, firings) = backtest(&rules, &export, &[], dir.path());
    assert!(ok, "{out}{err}");
    assert_eq!(firing_keys(&firings), live_keys(&live), "{out}");
    // Each line says where and when, and carries the receipt's figures.
    let travel = firings
        .iter()
        .find(|f| f["rule"] == "impossible_travel")
        .unwrap();
    assert_eq!(travel["session_id"], leo_seattle.session_id.as_str());
    assert_eq!(travel["user_id"], live_user(&live, "impossible_travel"));
    assert!(travel["position"].as_i64().unwrap() > 0);
    assert!(travel["occurred_at"].is_string());
    assert!(travel["inputs"]["speed_kmh"].is_number(), "{travel}");
    let context = firings
        .iter()
        .find(|f| f["rule"] == "session_context_change" && f["action"] == "revoke_session")
        .unwrap();
    assert!(
        context["signals"].as_array().is_some_and(|s| !s.is_empty()),
        "{context}"
    );
    // The table: a line per rule and per action, with the explanations.
    assert!(out.contains("impossible_travel"), "{out}");
    assert!(out.contains("revoke_session"), "{out}");
    assert!(
        out.contains(travel["explanation"].as_str().unwrap()),
        "{out}"
    );

    // --since/--until bound what is reported; the history before still builds the memory, so
    // the Seattle login still fires as travel.
    let since = format_timestamp(middle);
    let until = format_timestamp(middle + Duration::seconds(30));
    let (ok, out, err, bounded) = backtest(
        &rules,
        &export,
        &["--since", &since, "--until", &until, "--json"],
        dir.path(),
    );
    assert!(ok, "{out}{err}");
    let expected: Vec<Value> = live
        .iter()
        .filter(|r| r["session_id"] == leo_seattle.session_id.as_str())
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(firing_keys(&bounded), live_keys(&expected));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["rules"]["impossible_travel"]["firings"], 1,
        "{report}"
    );
    assert_eq!(report["rules"]["brute_force"]["firings"], 0, "{report}");
    assert_eq!(
        report["rules"]["impossible_travel"]["sessions"],
        json!([leo_seattle.session_id])
    );
    // Everything before `start` is nothing at all.
    let (ok, _, err, none) = backtest(
        &rules,
        &export,
        &["--until", &format_timestamp(start)],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(none.is_empty(), "{none:?}");
}

fn live_user(live: &[Value], rule: &str) -> Value {
    live.iter().find(|r| r["rule_id"] == rule).unwrap()["user_id"].clone()
}

#[tokio::test]
async fn the_command_line_export_replays_too_and_a_sealed_one_is_refused_clearly() {
    let (app, dir) = journey_app().await;
    app.register("nina").await;
    let nina = login_from(&app, "nina", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(5));
    let replay = refresh_from(&app, &nina.refresh, SEATTLE_AWS, MAC_CHROME).await;
    assert_eq!(replay.status(), 401);
    let live = receipts(&app).await;
    assert!(!live.is_empty());

    let export = dir.path().join("cli-export.ndjson");
    let (ok, out, err) = sessiond_cli(
        &["events", "export", "-o", export.to_str().unwrap()],
        app.data_dir.path(),
    );
    assert!(ok, "{out}{err}");
    // Its registration lines are marked redacted (no password hash): they replay all the same.
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.contains(r#""redacted":true"#), "{text}");
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l["position"].as_i64())
        .max()
        .unwrap();
    let rules = shipped_pack_enforced(&dir.path().join("candidate"));
    let (ok, out, err, firings) = backtest(&rules, &export, &[], dir.path());
    assert!(ok, "{out}{err}");
    let exported: Vec<Value> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "rule.fired" && e.position <= last)
        .map(data)
        .collect();
    assert!(!exported.is_empty());
    assert_eq!(firing_keys(&firings), live_keys(&exported));

    // A --sealed export holds no personal field in clear: the backtest says so and stops.
    let sealed = dir.path().join("sealed.ndjson");
    let (ok, _, err) = sessiond_cli(
        &[
            "events",
            "export",
            "--sealed",
            "-o",
            sealed.to_str().unwrap(),
        ],
        app.data_dir.path(),
    );
    assert!(ok, "{err}");
    let (ok, _, err, _) = backtest(&rules, &sealed, &[], dir.path());
    assert!(!ok);
    assert!(err.contains("sealed"), "{err}");
}

#[test]
fn a_malformed_line_stops_the_backtest_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = shipped_pack_enforced(dir.path());
    let input = dir.path().join("broken.ndjson");
    let good = json!({
        "position": 1, "stream_id": "login-00000000-0000-0000-0000-000000000001",
        "type": "login.failed", "occurred_at": "2026-01-01T00:00:00.000Z",
        "data": {"username": "carol", "user_id": null, "reason": "unknown_user",
                 "context": {"ip": "192.0.2.1", "user_agent": "curl"}}
    });
    std::fs::write(&input, format!("{good}\n\n{{\"position\": 2, \"type\": \n")).unwrap();
    let (ok, out, err, _) = backtest(&rules, &input, &[], dir.path());
    assert!(!ok, "{out}");
    assert!(err.contains("broken.ndjson: line 3:"), "{err}");

    // An event whose payload is not what its type says is named the same way.
    std::fs::write(
        &input,
        format!(
            "{good}\n{}\n",
            json!({"position": 2, "stream_id": "x", "type": "session.refreshed",
                   "occurred_at": "2026-01-01T00:00:01.000Z", "data": {"session_id": 7}})
        ),
    )
    .unwrap();
    let (ok, _, err, _) = backtest(&rules, &input, &[], dir.path());
    assert!(!ok);
    assert!(err.contains("line 2:"), "{err}");
    // A missing file is an error too, never an empty report.
    let (ok, _, err, _) = backtest(&rules, &dir.path().join("nope.ndjson"), &[], dir.path());
    assert!(!ok);
    assert!(err.contains("nope.ndjson"), "{err}");
}
