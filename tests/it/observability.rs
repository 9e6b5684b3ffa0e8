//! Observability that cannot be abused (issue 11, point 5): bounded method labels, `/metrics`
//! behind a token or on its own address, and every family the dashboards query exported from
//! the start.

use crate::helpers::*;
use rand::Rng;
use reqwest::{Method, StatusCode};
use std::collections::BTreeSet;

async fn scrape(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// The label sets of the request counter's series.
fn request_series(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("sessiond_http_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

/// The `method` label values of the request counter.
fn request_methods(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("sessiond_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_thousand_made_up_methods_add_at_most_one_series() {
    let app = spawn_app().await;
    scrape(&app).await; // the scrape's own series exists from here on
    let before = request_series(&scrape(&app).await);
    // The attacker's requests: 1,000 methods of their own invention.
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let name: String = (0..rng.gen_range(3..12))
            .map(|_| rng.gen_range(b'A'..=b'Z') as char)
            .collect();
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let r = app
            .http
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let text = scrape(&app).await;
    // Other tests in this process add series of their own (other routes, GET): the made-up
    // methods on /healthz add one at most.
    let new: Vec<_> = request_series(&text)
        .difference(&before)
        .filter(|s| s.contains("route=\"/healthz\"") && !s.contains("method=\"GET\""))
        .cloned()
        .collect();
    assert!(new.len() <= 1, "new series: {new:?}");
    let after = request_methods(&text);
    assert!(after.contains("other"));
    // Every method label is a standard one, or `other`.
    let standard = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    assert!(
        after.iter().all(|m| standard.contains(&m.as_str())),
        "{after:?}"
    );
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let token = "metrics-scraper-secret-0123456789";
    let app = spawn_app_with(|c| c.metrics_token = Some(token.into())).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "unauthorized"
    );
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("metrics-scraper-secret-0123456780")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("sessiond_logins_total"));
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    // A free port for the metrics listener.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = probe.local_addr().unwrap();
    drop(probe);
    let app = spawn_app_with(|c| c.metrics_listen = Some(metrics_addr)).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
    let mut body = None;
    for _ in 0..50 {
        match app
            .http
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
        {
            Ok(r) => {
                body = Some((r.status(), r.text().await.unwrap()));
                break;
            }
            // The listener starts with the server task.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let (status, text) = body.expect("the metrics listener answers");
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("sessiond_http_requests_total"));
    let r = app
        .http
        .get(format!("http://{metrics_addr}/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "only /metrics there");
}

#[tokio::test]
async fn every_family_the_dashboards_query_is_exported_from_the_start() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let app = spawn_app_with(|c| c.rules = Some(rules)).await;
    let text = scrape(&app).await;
    let mut wanted = BTreeSet::new();
    for file in ["overview.json", "security.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dashboards/grafana")
            .join(file);
        let json = std::fs::read_to_string(path).unwrap();
        for part in json.split("sessiond_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            wanted.insert(format!("sessiond_{name}"));
        }
    }
    // Absent by design: a build time without a GeoIP database, a last success before any job
    // ran (a 0 would claim one in 1970), a lag without subscriptions.
    let absent_by_design = [
        "sessiond_geoip_build_timestamp_seconds",
        "sessiond_job_last_success_timestamp_seconds",
        "sessiond_webhook_lag_events",
    ];
    for name in &wanted {
        if absent_by_design.contains(&name.as_str()) {
            continue;
        }
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "{name} is not exported"
        );
    }
    for rule in [
        "impossible_travel",
        "new_country",
        "new_device",
        "session_context_change",
        "brute_force",
        "password_spray",
        "reuse_escalation",
    ] {
        assert!(
            text.contains(&format!("sessiond_rule_firings_total{{rule=\"{rule}\"")),
            "no series for rule {rule}"
        );
    }
    for reason in ["logout", "admin", "reuse", "rule", "password_change"] {
        assert!(text.contains(&format!(
            "sessiond_session_revocations_total{{reason=\"{reason}\"}}"
        )));
    }
}
