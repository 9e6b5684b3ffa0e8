//! Operator surfaces: health and readiness, Prometheus metrics, and the Grafana dashboards
//! checked against what `/metrics` really exports.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::domain::Duration;
use sessiond::jobs::JobKind;
use std::collections::{BTreeMap, BTreeSet};

/// One scrape: every series (name and labels, as exposed) with its value.
pub async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap()
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    for check in ["store", "signing_key", "writer"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }
    // With the store gone the service is alive but not ready.
    app.service.store.close().await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_ne!(body["checks"]["store"], "ok");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status() {
    let app = spawn_app().await;
    // HEAD: no other test sends it, so the delta is this test's alone (the recorder is
    // shared by every app in the process).
    let series = r#"sessiond_http_requests_total{route="/healthz",method="HEAD",status="200"}"#;
    let before = scrape(&app).await.get(series).copied().unwrap_or(0.0);
    for _ in 0..3 {
        app.http.head(app.url("/healthz")).send().await.unwrap();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let r = app
        .http
        .delete(app.url(&format!("/v1/admin/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.http
        .get(app.url(&format!("/no/such/{id}")))
        .send()
        .await
        .unwrap();

    let after = scrape(&app).await;
    assert_eq!(after[series], before + 3.0);
    assert!(after.contains_key(
        r#"sessiond_http_requests_total{route="/v1/admin/webhooks/{id}",method="DELETE",status="401"}"#
    ));
    assert!(after.contains_key(
        r#"sessiond_http_requests_total{route="unmatched",method="GET",status="404"}"#
    ));
    assert!(
        after.keys().all(|k| !k.contains(&id)),
        "a raw path made it into a label"
    );
    let count = r#"sessiond_http_request_duration_seconds_count{route="/healthz",method="HEAD",status="200"}"#;
    assert_eq!(after[count], before + 3.0);
}

/// A short run that touches every kind of thing the dashboards show.
async fn scripted_run(app: &TestApp) {
    // A subscriber that accepts everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let receiver = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "ok" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let new = sessiond::service::webhooks::NewSubscription {
        url,
        event_types: vec![],
        format: "json".into(),
    };
    app.service
        .create_webhook(new, sessiond::domain::event::Actor::System)
        .await
        .unwrap();

    app.register("scripted").await;
    assert_eq!(
        app.login_as("scripted", "wrong password").await.status(),
        401
    );
    let t = app.login("scripted").await;
    app.refresh_ok(&t.refresh).await;
    app.refresh_ok(&t.refresh).await; // a concurrent retry within the grace window
    app.clock.advance(Duration::minutes(11));
    assert_eq!(app.refresh(&t.refresh).await.status(), 401); // reuse
    let t = app.login("scripted").await;
    app.http
        .post(app.url("/v1/auth/logout"))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    app.login("scripted").await;
    fire_rules(app).await;
    app.clock.advance(Duration::days(8));
    for job in JobKind::ALL {
        app.jobs.run(job).await.unwrap();
    }
    for _ in 0..2000 {
        if received.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        received.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no webhook delivered"
    );
}

/// A browser that changes mid-session, four times: the rule revokes twice, then the breaker
/// (cap 2) trips and degrades the rest to flags.
const CONTEXT_RULE: &str = r#"
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

async fn fire_rules(app: &TestApp) {
    use crate::rules::{CHROME_120, PARIS};
    for name in ["ann", "ben", "cat", "dan"] {
        app.register(name).await;
        let t = login_from(app, name, PARIS, CHROME_120).await;
        refresh_from(app, &t.refresh, PARIS, FIREFOX).await;
    }
    let trips = app
        .all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "rule.breaker_tripped")
        .count();
    assert_eq!(trips, 1, "the scripted run trips the breaker once");
}

/// Every `sessiond_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sessiond_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    for c in expr.chars() {
        let open = match c {
            ')' => '(',
            ']' => '[',
            '}' => '{',
            '(' | '[' | '{' => {
                stack.push(c);
                continue;
            }
            _ => continue,
        };
        if stack.pop() != Some(open) {
            return false;
        }
    }
    stack.is_empty()
}

#[tokio::test]
async fn the_grafana_dashboards_are_valid_and_query_only_exported_metrics() {
    // GeoIP and a rule that revokes, with a breaker cap of 2: every panel has data.
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = crate::rules::write_geoip(dir.path());
    let rules = dir.path().join("rules");
    crate::rules::rule_file(&rules, "context.toml", CONTEXT_RULE);
    let app = spawn_app_with(|c| {
        local_webhooks(c);
        c.webhook_poll_interval = Duration::milliseconds(50);
        c.geoip_city = Some(city);
        c.geoip_asn = Some(asn);
        c.rules = Some(rules);
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.rules_breaker_floor = 2;
        c.rules_breaker_fraction = 0.0;
    })
    .await;
    scripted_run(&app).await;
    let exported: BTreeSet<String> = scrape(&app)
        .await
        .keys()
        .map(|s| metric_name(s).to_owned())
        .collect();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    let mut missing = Vec::new();
    for file in ["overview.json", "security.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            d["schemaVersion"].as_i64().unwrap() >= 30,
            "{file}: schemaVersion"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        assert!(
            d["uid"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: uid"
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{file}: no panels");
        let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids must be unique");
        for p in panels {
            let title = p["title"].as_str().expect("panel title");
            assert!(p["type"].as_str().is_some(), "{file}/{title}: type");
            assert_eq!(p["datasource"]["type"], "prometheus", "{file}/{title}");
            for k in ["h", "w", "x", "y"] {
                assert!(p["gridPos"][k].is_i64(), "{file}/{title}: gridPos.{k}");
            }
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}/{title}: no targets");
            for t in targets {
                assert!(t["refId"].as_str().is_some(), "{file}/{title}: refId");
                let expr = t["expr"].as_str().expect("expr");
                assert!(balanced(expr), "{file}/{title}: unbalanced {expr}");
                let names = metric_names(expr);
                assert!(
                    !names.is_empty(),
                    "{file}/{title}: no sessiond metric in {expr}"
                );
                for name in names {
                    if !exported.contains(&name) {
                        missing.push(format!("{file}/{title}: {name}"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:#?}\nexported: {exported:#?}"
    );
}
