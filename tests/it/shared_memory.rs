//! Detector memory shared by every node and kept across restarts (issue 15): two nodes on one
//! PostgreSQL database behind a round-robin client reach the shipped brute-force and spray
//! limits exactly where one node does, and a node started afresh (empty process memory) still
//! counts on from there. The breaker's budget is shared the same way.

use crate::helpers::*;
use crate::journeys::shipped_pack_enforced;
use crate::pg::{TestDatabase, fresh_database};
use crate::rules::receipts;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::config::Config;
use std::path::Path;
use std::sync::Arc;

fn master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([9u8; 32])
}

/// A node of `db` with the shipped pack in enforce, the attacker's address believed through
/// `X-Forwarded-For`, and the built-in login throttle out of the way (it would refuse the
/// guesses before the rules count them).
async fn node(db: &TestDatabase, rules: &Path, clock: &Arc<ManualClock>) -> TestApp {
    let url = db.url.clone();
    let rules = rules.to_path_buf();
    spawn_node(
        move |c: &mut Config| {
            c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
            c.rules = Some(rules);
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            c.login_throttle.account_address.max_failures = 0;
            c.login_throttle.network.max_failures = 0;
            c.login_throttle.account.max_failures = 0;
            // A small breaker budget (two revocations per rule per window), to see it shared.
            c.rules_breaker_floor = 2;
            c.rules_breaker_fraction = 0.0;
        },
        clock.clone(),
        Some(master_key()),
    )
    .await
}

/// One wrong password for `user` from `ip`, on `app`.
async fn guess(app: &TestApp, user: &str, ip: &str) {
    let r = post_from(
        app,
        "/v1/auth/login",
        json!({"username": user, "password": "not the password"}),
        ip,
        FIREFOX,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

fn fired<'a>(all: &'a [Value], rule: &str) -> Vec<&'a Value> {
    all.iter().filter(|r| r["rule_id"] == rule).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_reach_the_brute_force_and_spray_limits_as_one_does_and_a_restart_remembers() {
    let Some(db) = fresh_database("shared_detector_memory").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = shipped_pack_enforced(dir.path());
    let clock = Arc::new(ManualClock::default());
    let (a, b) = (
        node(&db, &rules, &clock).await,
        node(&db, &rules, &clock).await,
    );
    a.register("victim").await;
    let nodes = [&a, &b];

    // Brute force: more than 10 failures for one user from one address in 15 minutes. Ten
    // round-robin guesses, five on each node: neither node alone has seen more than five.
    for i in 0..10 {
        guess(nodes[i % 2], "victim", "198.51.100.66").await;
        clock.advance(sessiond::domain::Duration::seconds(20));
    }
    assert!(fired(&receipts(&a).await, "brute_force").is_empty());
    guess(&b, "victim", "198.51.100.66").await;
    let all = receipts(&a).await;
    let brute = fired(&all, "brute_force");
    assert_eq!(
        brute.len(),
        1,
        "the eleventh guess fires, on whichever node"
    );
    assert_eq!(brute[0]["inputs"]["count"], 11);

    // Spray: failures for more than 20 usernames from one /24 in 10 minutes.
    for i in 0..20 {
        guess(nodes[i % 2], &format!("user{i}"), "203.0.113.50").await;
    }
    assert!(fired(&receipts(&a).await, "password_spray").is_empty());

    // Restart: a node with nothing in memory, on the same database.
    let c = node(&db, &rules, &clock).await;
    guess(&c, "user20", "203.0.113.51").await;
    let all = receipts(&c).await;
    let spray = fired(&all, "password_spray");
    assert_eq!(spray.len(), 1, "the 21st username fires after the restart");
    assert_eq!(spray[0]["inputs"]["count"], 21);
    guess(&c, "victim", "198.51.100.66").await;
    let all = receipts(&c).await;
    let brute = fired(&all, "brute_force");
    assert_eq!(brute.len(), 2);
    assert_eq!(
        brute[1]["inputs"]["count"], 12,
        "the restarted node counts on"
    );

    // Past the window, the counts have gone: the next guess is the first again.
    clock.advance(sessiond::domain::Duration::minutes(20));
    guess(&a, "victim", "198.51.100.66").await;
    assert_eq!(fired(&receipts(&a).await, "brute_force").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breakers_budget_is_one_for_every_node_and_survives_a_restart() {
    let Some(db) = fresh_database("shared_breaker_budget").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = shipped_pack_enforced(dir.path());
    let clock = Arc::new(ManualClock::default());
    let (a, b) = (
        node(&db, &rules, &clock).await,
        node(&db, &rules, &clock).await,
    );
    let chrome = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let mut sessions = Vec::new();
    for i in 0..4 {
        let user = format!("u{i}");
        a.register(&user).await;
        sessions.push(login_from(&a, &user, "192.0.2.10", chrome).await);
    }
    // Each stolen token replayed by a script on another network: the rule wants a revocation.
    async fn replay(app: &TestApp, t: &Tokens) -> StatusCode {
        refresh_from(app, &t.refresh, "198.51.100.9", "python-requests/2.31.0")
            .await
            .status()
    }
    assert_eq!(replay(&a, &sessions[0]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(replay(&b, &sessions[1]).await, StatusCode::UNAUTHORIZED);
    // The budget of two is spent across both nodes: the third degrades to a flag, loudly.
    assert_eq!(replay(&a, &sessions[2]).await, StatusCode::OK);
    async fn trips(app: &TestApp) -> usize {
        app.all_events()
            .await
            .into_iter()
            .filter(|e| e.event_type == "rule.breaker_tripped")
            .count()
    }
    assert_eq!(trips(&a).await, 1);
    // A restarted node knows the budget is spent, and the trip is not reported twice.
    let c = node(&db, &rules, &clock).await;
    assert_eq!(replay(&c, &sessions[3]).await, StatusCode::OK);
    assert_eq!(trips(&c).await, 1);
}
