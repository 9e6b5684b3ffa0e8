//! The analyst in the loop (issue 15, point 5), against the real server with generated GeoIP
//! (journeys.rs) and the injected clock: an alert marked a false positive with an exception
//! silences that rule, for that user and place, until the exception expires, and no other
//! rule; per-rule stats count alerts and verdicts; the route is the security team's only; bad
//! input changes nothing; a rebuild keeps the verdicts.

use crate::admin::analyst;
use crate::helpers::*;
use crate::journeys::{IPHONE, LONDON_EE, SEATTLE_COMCAST};
use crate::notices::notice_apps;
use crate::rules::receipts;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::domain::Duration;
use std::path::{Path, PathBuf};

/// The rule the analyst judges, and a second opinion: the same detector under another id,
/// so both fire on the same request and only the judged one may go quiet.
const JUDGED: &str = "impossible_travel";
const OTHER: &str = "travel_second_opinion";

/// The shipped travel rules (shadow, as shipped) and a copy of the travel rule under another id.
fn travel_pack(dir: &Path) -> PathBuf {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/travel.toml"))
            .unwrap();
    let pack = dir.join("pack");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(pack.join("travel.toml"), &shipped).unwrap();
    // The first rule of the file is the travel rule; the next `[[rule]]` starts another.
    let first = shipped
        .split("\n[[rule]]")
        .nth(1)
        .expect("travel.toml has the travel rule");
    let copy = format!("[[rule]]{first}\n")
        .replace(&format!("id = \"{JUDGED}\""), &format!("id = \"{OTHER}\""));
    assert!(copy.contains(OTHER));
    std::fs::write(pack.join("second.toml"), copy).unwrap();
    pack
}

async fn verdict(app: &TestApp, bearer: &str, id: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/admin/alerts/{id}/verdict")))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get_json(app: &TestApp, path: &str, bearer: &str) -> Value {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// The rules that fired on a session.
async fn fired_on(app: &TestApp, session_id: &str) -> Vec<String> {
    receipts(app)
        .await
        .into_iter()
        .filter(|r| r["session_id"] == session_id)
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The alert (as the listing shows it) of `rule` on `session_id`.
async fn alert_of(app: &TestApp, analyst: &str, rule: &str, session_id: &str) -> Value {
    let page = get_json(app, &format!("/v1/admin/alerts?rule={rule}"), analyst).await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["data"]["session_id"] == session_id)
        .cloned()
        .unwrap_or_else(|| panic!("no {rule} alert on {session_id}: {page}"))
}

fn stats_of<'a>(stats: &'a Value, rule: &str) -> &'a Value {
    stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == rule)
        .unwrap_or_else(|| panic!("no stats for {rule}: {stats}"))
}

/// Maya signs in at home, then at once from London on the same phone: both travel rules fire.
async fn home_then_london(app: &TestApp) -> Tokens {
    login_from(app, "maya", SEATTLE_COMCAST, IPHONE).await;
    login_from(app, "maya", LONDON_EE, IPHONE).await
}

#[tokio::test]
async fn a_false_positive_with_an_exception_silences_that_rule_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pack = travel_pack(dir.path());
    for (app, _dir, db) in notice_apps("verdicts", move |c| c.rules = Some(pack.clone())).await {
        app.register("maya").await;
        let mut analyst = analyst(&app).await;
        let first = home_then_london(&app).await;
        let fired = fired_on(&app, &first.session_id).await;
        assert!(fired.contains(&JUDGED.to_owned()), "{fired:?}");
        assert!(fired.contains(&OTHER.to_owned()), "{fired:?}");
        let alert = alert_of(&app, &analyst.access, JUDGED, &first.session_id).await;
        assert_eq!(alert["verdict"], Value::Null, "unjudged: {alert}");
        let position = alert["position"].as_i64().unwrap().to_string();

        // The analyst: a false positive (Maya really flew), with an exception for 30 days.
        let r = verdict(
            &app,
            &analyst.access,
            &position,
            json!({"verdict": "false_positive", "exception": {"expires_in": "30d"},
                   "note": "Maya called the help desk from Heathrow"}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["verdict"], "false_positive");
        assert_eq!(body["exception"]["rule_id"], JUDGED);
        let events = app.all_events().await;
        let recorded = events
            .iter()
            .find(|e| e.event_type == "alert.verdict_recorded")
            .expect("alert.verdict_recorded");
        let meta: Value = serde_json::from_str(&recorded.metadata).unwrap();
        assert_eq!(meta["actor"]["kind"], "admin");
        assert_eq!(data(recorded)["verdict"], "false_positive");
        let added = events
            .iter()
            .find(|e| e.event_type == "exception.added")
            .map(data)
            .expect("exception.added");
        assert_eq!(added["rule_id"], JUDGED);
        assert_eq!(added["cause"]["kind"], "verdict");
        assert_eq!(added["exception_id"], body["exception"]["exception_id"]);
        // The note is sealed in the stored bytes, like every personal field.
        let raw = app
            .service
            .store
            .raw_events(&Default::default())
            .await
            .unwrap();
        assert!(raw.iter().all(|e| !e.data.contains("Heathrow")));
        // The listing shows the verdict.
        let listed = alert_of(&app, &analyst.access, JUDGED, &first.session_id).await;
        assert_eq!(listed["verdict"]["verdict"], "false_positive");
        assert_eq!(listed["verdict"]["exception_id"], added["exception_id"]);

        // Two days on, the same jump again: the judged rule is quiet, the other is not.
        app.clock.advance(Duration::days(2));
        let second = home_then_london(&app).await;
        let fired = fired_on(&app, &second.session_id).await;
        assert!(!fired.contains(&JUDGED.to_owned()), "{fired:?}");
        assert!(fired.contains(&OTHER.to_owned()), "{fired:?}");

        // Past the expiry the judged rule fires again; the analyst calls this one true.
        app.clock.advance(Duration::days(29));
        let third = home_then_london(&app).await;
        // Days later the analyst's access token has expired: a new sign-in.
        analyst = app.login("analyst").await;
        let fired = fired_on(&app, &third.session_id).await;
        assert!(fired.contains(&JUDGED.to_owned()), "{fired:?}");
        let alert = alert_of(&app, &analyst.access, JUDGED, &third.session_id).await;
        let position3 = alert["position"].as_i64().unwrap().to_string();
        let r = verdict(
            &app,
            &analyst.access,
            &position3,
            json!({"verdict": "true_positive"}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);

        let stats = get_json(&app, "/v1/admin/rules/stats", &analyst.access).await;
        let judged = stats_of(&stats, JUDGED);
        assert_eq!(judged["alerts"], 2, "{stats}");
        assert_eq!(judged["true_positive"], 1);
        assert_eq!(judged["false_positive"], 1);
        assert_eq!(judged["false_share"], 0.5);
        let other = stats_of(&stats, OTHER);
        assert_eq!(other["alerts"], 3, "{stats}");
        assert_eq!(other["false_share"], Value::Null);

        // A second verdict on the same alert is refused and records nothing.
        let before = app.event_count().await;
        let r = verdict(
            &app,
            &analyst.access,
            &position,
            json!({"verdict": "true_positive"}),
        )
        .await;
        assert_eq!(
            error_code(r, StatusCode::CONFLICT).await,
            "verdict_recorded"
        );
        assert_eq!(app.event_count().await, before);

        // A rebuild from the log keeps the verdicts, and verify finds the tables equal.
        let live = app.service.store.projection_snapshot().await.unwrap();
        assert!(live.iter().any(|r| r.starts_with("alerts|")), "{live:?}");
        sessiond::projection::rebuild_projections(&app.service.store)
            .await
            .unwrap();
        assert_eq!(app.service.store.projection_snapshot().await.unwrap(), live);
        let listed = alert_of(&app, &analyst.access, JUDGED, &first.session_id).await;
        assert_eq!(listed["verdict"]["verdict"], "false_positive");
        let mut args = vec!["events", "verify"];
        let url;
        if let Some(db) = &db {
            url = db.url.clone();
            args.extend(["--database-url", url.as_str()]);
        }
        let (ok, out, err) = sessiond_cli(&args, app.data_dir.path());
        assert!(ok, "verify: {out}{err}");
    }
}

#[tokio::test]
async fn only_the_security_team_judges_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pack = travel_pack(dir.path());
    for (app, _dir, _db) in
        notice_apps("verdicts_refused", move |c| c.rules = Some(pack.clone())).await
    {
        app.register("maya").await;
        let analyst = analyst(&app).await;
        let london = home_then_london(&app).await;
        let alert = alert_of(&app, &analyst.access, JUDGED, &london.session_id).await;
        let position = alert["position"].as_i64().unwrap().to_string();
        let before = app.event_count().await;

        // Maya would like to clear her own alert: she is no analyst.
        let r = verdict(
            &app,
            &london.access,
            &position,
            json!({"verdict": "false_positive", "exception": {"expires_in": "3650d"}}),
        )
        .await;
        assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
        let r = app
            .http
            .get(app.url("/v1/admin/rules/stats"))
            .bearer_auth(&london.access)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");

        for body in [
            json!({"verdict": "maybe"}),
            json!({"verdict": "FALSE_POSITIVE"}),
            json!({"verdict": "true_positive", "exception": {"expires_in": "30d"}}),
            json!({"verdict": "false_positive", "exception": {"expires_in": "0d"}}),
            json!({"verdict": "false_positive", "exception": {"expires_in": "366d"}}),
            json!({"verdict": "false_positive", "exception": {"expires_in": "forever"}}),
            json!({"verdict": "false_positive", "exception": {}}),
            json!({"verdict": "false_positive", "note": "x".repeat(501)}),
            json!({"verdict": "false_positive", "rule_id": "new_device"}),
            json!({"verdict": 1}),
            json!({}),
        ] {
            let r = verdict(&app, &analyst.access, &position, body.clone()).await;
            assert_eq!(
                error_code(r, StatusCode::BAD_REQUEST).await,
                "invalid_request",
                "{body}"
            );
        }
        for id in ["999999", "0", "-1", "abc", "1e3"] {
            let r = verdict(
                &app,
                &analyst.access,
                id,
                json!({"verdict": "true_positive"}),
            )
            .await;
            assert_eq!(
                error_code(r, StatusCode::NOT_FOUND).await,
                "not_found",
                "{id}"
            );
        }
        // A position that is an event but no alert (Maya's registration, position 1).
        let r = verdict(
            &app,
            &analyst.access,
            "1",
            json!({"verdict": "true_positive"}),
        )
        .await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");

        assert_eq!(app.event_count().await, before, "nothing recorded");
        let listed = alert_of(&app, &analyst.access, JUDGED, &london.session_id).await;
        assert_eq!(listed["verdict"], Value::Null);
        let stats = get_json(&app, "/v1/admin/rules/stats", &analyst.access).await;
        assert_eq!(stats_of(&stats, JUDGED)["false_share"], Value::Null);
    }
}
