//! Several sessiond nodes on one PostgreSQL database (skipped with a notice when
//! `SESSIOND_TEST_DATABASE_URL` is not set): races between nodes settle as they do on one node,
//! reuse seen by one node revokes the family for all, nodes share one signing key, a commit on
//! one node wakes followers on another, and a job runs on one node at a time.

use crate::helpers::*;
use crate::pg::{TestDatabase, fresh_database};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::app::Options;
use sessiond::clock::ManualClock;
use sessiond::store::chain::ChainVerifier;
use sessiond::store::{EventFilter, PostgresStore, Store};
use sessiond::{App, config::Config};
use std::collections::HashSet;
use std::sync::Arc;

fn master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

fn on(db: &TestDatabase) -> impl FnOnce(&mut Config) + use<> {
    let url = db.url.clone();
    move |c: &mut Config| c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap())
}

/// Two servers on one database, one clock, one master key.
async fn two_nodes(db: &TestDatabase) -> (TestApp, TestApp) {
    let clock = Arc::new(ManualClock::default());
    let a = spawn_node(on(db), clock.clone(), Some(master_key())).await;
    let b = spawn_node(on(db), clock, Some(master_key())).await;
    (a, b)
}

/// The whole log: gap-free, one event per (stream, version), hash chain intact.
async fn assert_sound_log(app: &TestApp) {
    // As stored: the chain hashes the sealed bytes, not the read-through form (issue 12).
    let events = app
        .service
        .store
        .raw_events(&Default::default())
        .await
        .unwrap();
    let mut chain = ChainVerifier::default();
    let mut versions = HashSet::new();
    for e in &events {
        chain
            .check(e)
            .unwrap_or_else(|(p, why)| panic!("chain broken at {p}: {why:?}"));
        assert!(
            versions.insert((e.stream_id.clone(), e.stream_version)),
            "duplicate version {} of {}",
            e.stream_version,
            e.stream_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_refreshes_across_two_nodes_get_one_successor() {
    let Some(db) = fresh_database("thousand_concurrent_refreshes_across_two_nodes").await else {
        return;
    };
    let (a, b) = two_nodes(&db).await;
    a.register("erin").await;
    let t1 = a.login("erin").await;
    // Half on each node: the loser of each race for the session reloads and sees a retry.
    let granted = crate::refresh::race(&[&a, &b], &t1.refresh, 1000).await;
    crate::refresh::assert_one_successor(&[&a, &b], &t1, &granted).await;
    assert_sound_log(&a).await;
    let live = a.service.store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(&a.service.store)
        .await
        .unwrap();
    assert_eq!(a.service.store.projection_snapshot().await.unwrap(), live);

    // The CLI walks the same chain; the nodes' master key came from the environment, so it is
    // told the published checkpoint key.
    let master =
        sessiond::tokens::keys::MasterKey::load(Some(master_key()), a.data_dir.path()).unwrap();
    let x = sessiond::tokens::checkpoint::CheckpointKey::derive(&master)
        .public()
        .x();
    let (ok, out, err) = sessiond_cli(
        &[
            "events",
            "verify",
            "--database-url",
            &db.url,
            "--public-key",
            &x,
        ],
        a.data_dir.path(),
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("chain ok"), "{out}");
}

#[tokio::test]
async fn reuse_on_one_node_of_a_token_rotated_on_the_other_revokes_the_family_for_both() {
    let Some(db) = fresh_database("reuse_on_one_node_revokes_for_both").await else {
        return;
    };
    let (a, b) = two_nodes(&db).await;
    a.register("mallory").await;
    let t1 = a.login("mallory").await;
    let t2 = a.refresh_ok(&t1.refresh).await;
    let t3 = a.refresh_ok(&t2.refresh).await;
    assert_eq!(b.me(&t3.access).await.status(), StatusCode::OK);

    // t1 is two generations old: reuse, whichever node sees it.
    assert_eq!(
        error_code(b.refresh(&t1.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    for node in [&a, &b] {
        assert_eq!(
            error_code(node.refresh(&t3.refresh).await, StatusCode::UNAUTHORIZED).await,
            "invalid_grant"
        );
        assert_eq!(node.me(&t3.access).await.status(), StatusCode::UNAUTHORIZED);
    }
    let events = a.session_events(&t1.session_id).await;
    assert_eq!(
        types(&events),
        [
            "session.started",
            "session.refreshed",
            "session.refreshed",
            "session.reuse_detected",
            "session.revoked"
        ]
    );
    assert_eq!(data(&events[3])["class"], "older_generation");
    assert_sound_log(&b).await;
}

/// A node remembers the sightings it served; where the user was seen last may be a session
/// another node served. Paris, New York a day later on the other node, then Paris again ten
/// minutes after that on the first: the first node must measure from New York.
#[tokio::test]
async fn a_login_is_measured_from_where_another_node_saw_the_user_last() {
    use crate::rules::{
        CHROME_120, NEW_YORK, PARIS, receipts, rule_file, travel_rule, write_geoip,
    };
    let Some(db) = fresh_database("travel_measured_across_nodes").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = write_geoip(dir.path());
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    rule_file(
        &rules,
        "t.toml",
        &travel_rule("enforce", "\"require_reauth\""),
    );
    let node = || {
        let (on_db, city, asn, rules) = (on(&db), city.clone(), asn.clone(), rules.clone());
        move |c: &mut Config| {
            on_db(c);
            c.geoip_city = Some(city);
            c.geoip_asn = Some(asn);
            c.rules = Some(rules);
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        }
    };
    let clock = Arc::new(ManualClock::default());
    let a = spawn_node(node(), clock.clone(), Some(master_key())).await;
    let b = spawn_node(node(), clock.clone(), Some(master_key())).await;
    a.register("alice").await;
    login_from(&a, "alice", PARIS, CHROME_120).await;
    clock.advance(sessiond::domain::Duration::hours(24));
    login_from(&b, "alice", NEW_YORK, CHROME_120).await;
    assert!(receipts(&a).await.is_empty(), "a day is time enough");

    clock.advance(sessiond::domain::Duration::minutes(10));
    let t = login_from(&a, "alice", PARIS, CHROME_120).await;
    let fired = receipts(&a).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["rule_id"], "impossible_travel");
    assert_eq!(fired[0]["session_id"], t.session_id.as_str());
    assert_eq!(fired[0]["inputs"]["from_city"], "New York");
    assert_eq!(fired[0]["inputs"]["to_city"], "Paris");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_an_empty_database_share_one_signing_key() {
    let Some(db) = fresh_database("nodes_starting_together_share_one_key").await else {
        return;
    };
    capture_logs();
    let build = |dir: &tempfile::TempDir| {
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        on(&db)(&mut config);
        App::build_with(
            config,
            Options {
                clock: Arc::new(ManualClock::default()),
                master_key: Some(master_key()),
                start_jobs: false,
                start_delivery: false,
            },
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = tokio::join!(build(&dir_a), build(&dir_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.service.tokens.active_kid(), b.service.tokens.active_kid());
    assert_eq!(
        a.service.tokens.active_rsa_kid(),
        b.service.tokens.active_rsa_kid()
    );
    let keys = a.service.store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2, "one key of each kind (EdDSA, RS256) stored");
    let created = a
        .service
        .store
        .events(&EventFilter {
            event_types: vec!["signing_key.created".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.len(), 2, "one creation of each kind recorded");

    // A token signed on one node is accepted by the other.
    let clock = Arc::new(ManualClock::default());
    let (a, b) = (
        serve(a, clock.clone(), dir_a).await,
        serve(b, clock, dir_b).await,
    );
    a.register("peggy").await;
    let t = a.login("peggy").await;
    assert_eq!(b.me(&t.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_commit_on_one_node_wakes_followers_on_the_other() {
    let Some(db) = fresh_database("a_commit_on_one_node_wakes_followers").await else {
        return;
    };
    let (a, b) = two_nodes(&db).await;
    let mut wake = b
        .service
        .store
        .follow_commits(b.service.writer.committed())
        .await
        .unwrap();
    let before = *wake.borrow_and_update();
    a.register("walter").await;
    let head = a.service.store.head().await.unwrap().position;
    assert!(head > before);
    // Only node A wrote: B learns of it through the notification alone. (The timeout only
    // keeps a broken build from hanging; it is not a latency assertion.)
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        wake.wait_for(|p| *p >= head),
    )
    .await
    .expect("node B was woken")
    .unwrap();
    assert_eq!(*b.service.writer.committed().borrow(), before);
}

#[tokio::test]
async fn a_job_lock_is_held_by_one_node_at_a_time() {
    let Some(db) = fresh_database("a_job_lock_is_held_by_one_node").await else {
        return;
    };
    let a = Store::Postgres(PostgresStore::open(&db.url).await.unwrap());
    let b = Store::Postgres(PostgresStore::open(&db.url).await.unwrap());

    let held = a.try_job_lock("expiry-sweep").await.unwrap().expect("free");
    assert!(b.try_job_lock("expiry-sweep").await.unwrap().is_none());
    let other = b
        .try_job_lock("key-rotation")
        .await
        .unwrap()
        .expect("other job");
    held.release().await;
    let taken = b
        .try_job_lock("expiry-sweep")
        .await
        .unwrap()
        .expect("released");
    // A holder that goes away without releasing (a node dying) frees the lock too.
    drop(taken);
    let mut again = None;
    for _ in 0..100 {
        again = a.try_job_lock("expiry-sweep").await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a dropped holder's lock is freed");
    other.release().await;
}

#[tokio::test]
async fn on_sqlite_a_job_lock_is_always_granted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(
        sessiond::store::SqliteStore::open(&dir.path().join("j.db"))
            .await
            .unwrap(),
    );
    let first = store.try_job_lock("expiry-sweep").await.unwrap();
    assert!(first.is_some());
    assert!(store.try_job_lock("expiry-sweep").await.unwrap().is_some());
}

#[tokio::test]
async fn the_command_line_works_on_postgres() {
    let Some(db) = fresh_database("the_command_line_works_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The nodes' master key: the command line opens the sealed personal data with it.
    std::fs::write(dir.path().join("master.key"), master_key()).unwrap();
    let url = ["--database-url", db.url.as_str()];
    let cli = |args: &[&str]| sessiond_cli(&[args, &url[..]].concat(), dir.path());
    let (ok, out, err) = cli(&["migrate"]);
    assert!(ok, "{out}{err}");
    assert!(
        !out.contains(&db.url) && !err.contains(&db.url),
        "the URL is not printed"
    );

    let (a, _b) = two_nodes(&db).await;
    a.register("trent").await;
    let t = a.login("trent").await;
    let t2 = a.refresh_ok(&t.refresh).await;
    // An early and a late retry: the projections carry the successor and the late mark.
    assert_eq!(a.refresh_ok(&t.refresh).await.refresh, t2.refresh);
    a.clock.advance(chrono::Duration::minutes(3));
    assert_eq!(a.refresh_ok(&t.refresh).await.refresh, t2.refresh);
    let live = a.service.store.projection_snapshot().await.unwrap();

    let (ok, out, err) = cli(&["projections", "rebuild"]);
    assert!(ok, "{out}{err}");
    assert_eq!(a.service.store.projection_snapshot().await.unwrap(), live);
    let (ok, out, err) = cli(&["events", "export", "--type", "session.refreshed"]);
    assert!(ok, "{err}");
    let exported: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The event, and the line saying a filtered export cannot prove completeness.
    assert_eq!(exported.len(), 2);
    assert_eq!(exported[1]["filtered"]["complete"], false);
    assert_eq!(
        exported[0]["stream_id"],
        format!("session-{}", t.session_id)
    );
    // This data directory has no master key: verify is told the published checkpoint key.
    let master = sessiond::tokens::keys::MasterKey::load(Some(master_key()), dir.path()).unwrap();
    let x = sessiond::tokens::checkpoint::CheckpointKey::derive(&master)
        .public()
        .x();
    let (ok, out, _) = cli(&["events", "verify", "--public-key", &x]);
    assert!(ok && out.starts_with("chain ok"), "{out}");
}

/// A database restart or failover cuts every connection: the writer opens a new one for its
/// next batch and the pool replaces its own, so the node carries on without a restart.
#[tokio::test]
async fn a_node_carries_on_after_its_database_connections_are_cut() {
    let Some(db) = fresh_database("a_node_carries_on_after_its_connections_are_cut").await else {
        return;
    };
    use sqlx::Connection;
    let app = spawn_node(on(&db), Arc::new(ManualClock::default()), None).await;
    app.register("victor").await;
    let t1 = app.login("victor").await;

    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        cut.len() >= 2,
        "the writer's and the pool's connections were cut"
    );

    let t2 = app.refresh_ok(&t1.refresh).await;
    assert_eq!(app.me(&t2.access).await.status(), StatusCode::OK);
    assert_eq!(
        types(&app.session_events(&t1.session_id).await),
        ["session.started", "session.refreshed"]
    );
    assert_sound_log(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_on_one_node_reaches_the_other_through_the_reload_job() {
    use sessiond::jobs::JobKind;
    let Some(db) = fresh_database("a_key_rotated_on_one_node").await else {
        return;
    };
    let (a, b) = two_nodes(&db).await;
    let old_kid = a.service.tokens.active_kid();
    // Node A publishes the next key, and a publish-ahead later makes it the signer.
    a.jobs.rotate_keys_now().await.unwrap();
    a.clock.advance(chrono::Duration::minutes(11));
    a.jobs.run(JobKind::KeyRotation).await.unwrap();
    let new_kid = a.service.tokens.active_kid();
    assert_ne!(new_kid, old_kid);
    a.register("quinn").await;
    let t = a.login("quinn").await;

    // Node B learns of it at its next reload, and then verifies and signs with it too.
    b.jobs.run(JobKind::Reload).await.unwrap();
    assert_eq!(b.service.tokens.active_kid(), new_kid);
    let jwks: serde_json::Value = b
        .http
        .get(b.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(kids.contains(&new_kid.as_str()) && kids.contains(&old_kid.as_str()));
    assert_eq!(b.me(&t.access).await.status(), StatusCode::OK);
}
