//! The console's drawings (issue 15, point 8) against the real server: a session that
//! travelled Paris → Chantilly → New York (the travel rule fires, in shadow) and whose first
//! refresh token came back from Tokyo after it was spent (reuse, family revoked). The places
//! API sends each leg's distance, time and speed and marks the judged one; the lineage API
//! sends generations, parents, presenters, the grace retry and the reuse. Then headless
//! Chromium draws both in the console, under its CSP, and takes screenshots.

use crate::browser::Browser;
use crate::helpers::*;
use crate::rules::{CHROME_120, NEAR_PARIS, NEW_YORK, PARIS, travel_rule, write_geoip};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

/// In the generated databases: Tokyo, ~9,700 km from Chantilly.
const TOKYO: &str = "2001:db8::5";

struct Journey {
    session_id: String,
    /// The access token of a security analyst.
    analyst: Tokens,
}

/// The app: generated GeoIP, the travel rule in shadow, 127.0.0.1 a trusted proxy; PostgreSQL
/// when `database` is given.
async fn app(database: Option<String>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = write_geoip(dir.path());
    let rules = dir.path().join("rules");
    crate::rules::rule_file(
        &rules,
        "travel.toml",
        &travel_rule("shadow", "\"revoke_session\""),
    );
    let app = spawn_node(
        move |c| {
            c.geoip_city = Some(city);
            c.geoip_asn = Some(asn);
            c.rules = Some(rules);
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            if let Some(url) = database {
                c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
            }
        },
        Arc::new(sessiond::clock::ManualClock::default()),
        None,
    )
    .await;
    (app, dir)
}

async fn travel_and_reuse(app: &TestApp) -> Journey {
    app.register("alice").await;
    let first = login_from(app, "alice", PARIS, CHROME_120).await;
    app.clock.advance(chrono::Duration::minutes(60));
    let r = refresh_from(app, &first.refresh, NEAR_PARIS, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second = Tokens::from_json(&r.json().await.unwrap());
    // The answer was lost: the client presents the first token again, and gets the same
    // successor (a grace retry, not theft).
    let r = refresh_from(app, &first.refresh, NEAR_PARIS, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        Tokens::from_json(&r.json().await.unwrap()).refresh,
        second.refresh
    );
    // Chantilly to New York in ten minutes: impossible travel (shadow: nothing changes).
    app.clock.advance(chrono::Duration::minutes(10));
    let r = refresh_from(app, &second.refresh, NEW_YORK, CHROME_120).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Eleven minutes on, the first token (long spent) comes back from Tokyo: reuse.
    app.clock.advance(chrono::Duration::minutes(11));
    let script = "python-requests/2.31.0";
    let r = refresh_from(app, &first.refresh, TOKYO, script).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    Journey {
        session_id: first.session_id,
        // Signed in now, so its access token is fresh on the moved clock.
        analyst: crate::admin::analyst(app).await,
    }
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

fn cities(places: &Value) -> Vec<&str> {
    places["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["city"].as_str().unwrap())
        .collect()
}

/// What an analyst reads from the two APIs for the journey.
async fn assert_places_and_lineage(app: &TestApp, j: &Journey) {
    let bearer = &j.analyst.access;
    let sid = &j.session_id;
    let places = get_json(app, &format!("/v1/admin/sessions/{sid}/places"), bearer).await;
    // The grace retry came from Chantilly too: one stop, two sightings.
    assert_eq!(
        cities(&places),
        ["Paris", "Chantilly", "New York", "Tokyo"],
        "{places}"
    );
    let p = &places["places"];
    assert_eq!(p[1]["sightings"], 2);
    assert_eq!(
        p[1]["events"],
        json!(["session.refreshed", "session.refresh_retried"])
    );
    assert_eq!(p[3]["events"], json!(["session.reuse_detected"]));
    assert_eq!(p[3]["ip"], TOKYO);
    let legs = places["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 3, "{places}");
    for (i, l) in legs.iter().enumerate() {
        assert_eq!(
            (l["from"].as_u64(), l["to"].as_u64()),
            (Some(i as u64), Some(i as u64 + 1))
        );
    }
    let figures = |l: &Value| {
        (
            l["distance_km"].as_f64().unwrap(),
            l["duration_s"].as_i64().unwrap(),
            l["speed_kmh"].as_f64().unwrap(),
        )
    };
    // Paris to Chantilly: ~30 km in an hour.
    let (d, t, v) = figures(&legs[0]);
    assert!((25.0..35.0).contains(&d), "{d}");
    assert_eq!(t, 3600);
    assert!((v - d).abs() < 0.2, "{v} km/h");
    // Chantilly to New York in the ten minutes after the retry: the leg the rule judged.
    let (d, t, v) = figures(&legs[1]);
    assert!((5_800.0..5_900.0).contains(&d), "{d}");
    assert_eq!(t, 600);
    assert!((v - d * 6.0).abs() < 1.0, "{v} km/h");
    let judged = legs[1]["judged_by"].as_array().unwrap();
    assert_eq!(judged.len(), 1, "{places}");
    assert_eq!(judged[0]["rule_id"], "impossible_travel");
    assert_eq!(judged[0]["mode"], "shadow");
    assert!(legs[0]["judged_by"].as_array().unwrap().is_empty());
    assert!(legs[2]["judged_by"].as_array().unwrap().is_empty());
    // The receipt measured the same leg with the same function.
    let receipt = crate::rules::receipts(app)
        .await
        .into_iter()
        .find(|r| r["rule_id"] == "impossible_travel")
        .expect("a travel receipt");
    assert_eq!(receipt["inputs"]["distance_km"].as_f64(), Some(d));
    assert!(receipt["inputs"]["speed_kmh"].as_i64().unwrap() > 30_000);
    // New York to Tokyo: where the stolen token came back from.
    let (d, t, _) = figures(&legs[2]);
    assert!((10_800.0..10_900.0).contains(&d), "{d}");
    assert_eq!(t, 660);

    // The user's map has the same stops (alice had one session).
    let user = get_json(app, "/v1/admin/users/alice/places", bearer).await;
    assert_eq!(cities(&user), cities(&places));
    assert_eq!(
        user["legs"][1]["judged_by"][0]["rule_id"],
        "impossible_travel"
    );

    let family = get_json(app, &format!("/v1/admin/sessions/{sid}/lineage"), bearer).await;
    assert_eq!(family["session_id"], sid.as_str());
    assert_eq!(family["status"], "revoked");
    assert_eq!(family["revoked"]["reason"], "reuse");
    let gens = family["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 3, "{family}");
    let number = |i: usize| gens[i]["generation"].as_u64().unwrap();
    assert_eq!(gens[0]["parent"], Value::Null);
    assert_eq!(gens[1]["parent"].as_u64(), Some(number(0)));
    assert_eq!(gens[2]["parent"].as_u64(), Some(number(1)));
    let presenter = |g: &Value| g["presented"]["context"]["ip"].as_str().unwrap().to_owned();
    assert_eq!(
        gens.iter().map(presenter).collect::<Vec<_>>(),
        [PARIS, NEAR_PARIS, NEW_YORK]
    );
    assert_eq!(gens[2]["presented"]["context"]["geo"]["city"], "New York");
    assert_eq!(
        gens[1]["presented"]["context"]["device"]["browser"],
        "Chrome"
    );
    // The retry is filed under the generation it was answered with.
    let retries = gens[1]["retries"].as_array().unwrap();
    assert_eq!(retries.len(), 1, "{family}");
    assert_eq!(retries[0]["presented"]["context"]["ip"], NEAR_PARIS);
    assert!(gens[0]["retries"].as_array().unwrap().is_empty());
    let reuse = family["reuse"].as_array().unwrap();
    assert_eq!(reuse.len(), 1, "{family}");
    assert_eq!(reuse[0]["presented_generation"].as_u64(), Some(number(0)));
    assert_eq!(reuse[0]["current_generation"].as_u64(), Some(number(2)));
    assert_eq!(reuse[0]["context"]["ip"], TOKYO);
    assert_eq!(reuse[0]["context"]["geo"]["city"], "Tokyo");
    // The session detail reads its lineage from the same code.
    let detail = get_json(app, &format!("/v1/admin/sessions/{sid}"), bearer).await;
    assert_eq!(detail["lineage"], family["generations"]);
    assert_eq!(detail["reuse"], family["reuse"]);
}

#[tokio::test]
async fn places_and_lineage_show_a_session_that_travelled_and_was_reused_on_both_backends() {
    let (app, _dir) = app(None).await;
    let j = travel_and_reuse(&app).await;
    assert_places_and_lineage(&app, &j).await;
    let Some(db) = crate::pg::fresh_database("console_drawings").await else {
        return;
    };
    let (app, _dir) = app_pg(db.url.clone()).await;
    let j = travel_and_reuse(&app).await;
    assert_places_and_lineage(&app, &j).await;
}

async fn app_pg(url: String) -> (TestApp, tempfile::TempDir) {
    app(Some(url)).await
}

#[tokio::test]
async fn the_drawing_routes_are_for_the_security_role_and_answer_404_for_what_does_not_exist() {
    let (app, _dir) = app(None).await;
    let j = travel_and_reuse(&app).await;
    // alice's own access token is not enough to see her map or her family.
    let alice = login_from(&app, "alice", PARIS, CHROME_120).await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/admin/sessions/{}/places", j.session_id),
        format!("/v1/admin/sessions/{}/lineage", j.session_id),
        "/v1/admin/users/alice/places".to_owned(),
    ] {
        let r = app
            .http
            .get(app.url(&path))
            .bearer_auth(&alice.access)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r, StatusCode::FORBIDDEN).await,
            "forbidden",
            "{path}"
        );
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in [
        format!("/v1/admin/sessions/{unknown}/places"),
        format!("/v1/admin/sessions/{unknown}/lineage"),
        "/v1/admin/sessions/not-a-session/places".to_owned(),
        "/v1/admin/sessions/not-a-session/lineage".to_owned(),
        format!("/v1/admin/users/{unknown}/places"),
        "/v1/admin/users/nobody-here/places".to_owned(),
    ] {
        let r = app
            .http
            .get(app.url(&path))
            .bearer_auth(&j.analyst.access)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r, StatusCode::NOT_FOUND).await,
            "not_found",
            "{path}"
        );
    }
    // A user who never signed in has an empty map, not an error.
    app.register("bob").await;
    let bob = get_json(&app, "/v1/admin/users/bob/places", &j.analyst.access).await;
    assert_eq!(bob, json!({ "places": [], "legs": [] }));
}

impl Browser {
    /// The page's console messages at level SEVERE (errors, CSP violations among them).
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self.post("/se/log", json!({ "type": "browser" })).await;
        log.as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["level"] == "SEVERE")
                    .map(|m| m["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of attribute `name` on element `el`.
    pub async fn attribute(&self, el: &str, name: &str) -> Option<String> {
        self.get(&format!("/element/{el}/attribute/{name}"))
            .await
            .as_str()
            .map(str::to_owned)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_draws_the_map_and_the_lineage_of_a_session_that_travelled_and_was_reused() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (app, _dir) = app(None).await;
    let j = travel_and_reuse(&app).await;
    let sid = &j.session_id;

    // The page and its assets come with the strict CSP.
    for path in ["/console/", "/console/draw.js", "/console/world.json"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("style-src 'self'"),
            "{path}: {csp}"
        );
    }

    b.goto(&app.url("/console/")).await;
    b.type_into("#signin input[name=username]", "analyst").await;
    b.type_into("#signin input[name=password]", PASSWORD).await;
    b.click("#signin-button").await;
    b.wait_for("#console:not(.hidden)", 1).await;
    b.type_into("#q", sid).await;
    b.click("#search-button").await;
    b.wait_for_result(sid).await;

    // The map: land outlines, four places, three legs with their figures, one judged.
    b.wait_for("svg#map path.land", 1).await;
    let land = b.all("svg#map path.land").await.remove(0);
    assert!(
        b.attribute(&land, "d").await.unwrap_or_default().len() > 10_000,
        "the world's outlines are drawn"
    );
    let places = b.wait_for("svg#map g.place", 4).await;
    let mut labels = Vec::new();
    for p in &places {
        labels.push(b.text(p).await);
    }
    for city in ["Paris, FR", "Chantilly, FR", "New York, US", "Tokyo, JP"] {
        assert!(
            labels.iter().any(|l| l.contains(city)),
            "{city} in {labels:?}"
        );
    }
    assert_eq!(b.all("svg#map g.place.reuse").await.len(), 1);
    let legs = b.wait_for("svg#map g.leg", 3).await;
    assert_eq!(legs.len(), 3);
    let mut texts = Vec::new();
    for l in &legs {
        texts.push(b.text(l).await);
    }
    assert!(
        texts
            .iter()
            .all(|t| t.contains(" km · ") && t.contains(" km/h")),
        "{texts:?}"
    );
    assert!(
        texts[0].contains("1 h") && texts[1].contains("10 min"),
        "{texts:?}"
    );
    let judged = b.all("svg#map g.leg.judged").await;
    assert_eq!(judged.len(), 1, "one leg is marked judged");
    assert_eq!(
        b.attribute(&judged[0], "data-leg").await.as_deref(),
        Some("1")
    );
    assert!(b.text(&judged[0]).await.contains("impossible_travel"));
    assert_eq!(b.all("table.legs tr.leg-row.judged").await.len(), 1);

    // The lineage: three generations in order, parents, presenters, the retry and the reuse.
    let gens = b.wait_for("svg#lineage g.node.gen", 3).await;
    assert_eq!(gens.len(), 3);
    let mut parents = Vec::new();
    for (g, ip) in gens.iter().zip([PARIS, NEAR_PARIS, NEW_YORK]) {
        let text = b.text(g).await;
        assert!(text.contains(ip), "{ip} presented: {text}");
        parents.push(b.attribute(g, "data-parent").await.unwrap());
    }
    assert_eq!(parents[0], "none");
    assert_eq!(b.all("svg#lineage g.edge.rotate").await.len(), 2);
    let retry = b.wait_for("svg#lineage g.node.retry", 1).await;
    let retry_text = b.text(&retry[0]).await;
    assert!(retry_text.contains(NEAR_PARIS), "{retry_text}");
    let reuse = b.wait_for("svg#lineage g.node.reuse", 1).await;
    let reuse_text = b.text(&reuse[0]).await;
    assert!(
        reuse_text.contains("REUSE")
            && reuse_text.contains("Tokyo, JP")
            && reuse_text.contains(TOKYO),
        "{reuse_text}"
    );
    let ended = b.wait_for("svg#lineage g.node.end", 1).await;
    assert_eq!(
        b.attribute(&ended[0], "data-revoked").await.as_deref(),
        Some("reuse")
    );

    // Nothing was refused by the CSP ("Refused to ... Content Security Policy"), and no script
    // failed. HTTP answers the page expects (the sign-in's first refresh without a cookie, 400;
    // no favicon, 404) are logged as failed loads: those are not faults of the page.
    let errors: Vec<String> = b
        .console_errors()
        .await
        .into_iter()
        .filter(|m| !m.contains("Failed to load resource"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    b.execute("document.getElementById('map').scrollIntoView(); return true;")
        .await;
    b.screenshot("console-map.png").await;
    b.execute("document.getElementById('lineage').scrollIntoView(); return true;")
        .await;
    b.screenshot("console-lineage.png").await;
}
