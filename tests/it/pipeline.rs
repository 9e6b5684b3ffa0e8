//! The pipelined writer (issue 16): a batch is decided while the one before it commits, yet
//! nobody is answered before their own batch is durable, and nothing decided on top of a
//! commit that failed is ever answered as if it had happened.

use crate::helpers::*;
use crate::pg::fresh_database;
use futures_util::future::join_all;
use sessiond::config::Config;
use sqlx::Connection;
use std::sync::atomic::Ordering;

const CLIENTS: usize = 32;

async fn logged_in(app: &TestApp, prefix: &str) -> Vec<Tokens> {
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        let name = format!("{prefix}{i}");
        app.register(&name).await;
        tokens.push(app.login(&name).await);
    }
    tokens
}

/// Every client refreshes its own chain as fast as it can; after each 200 the session row, read
/// by another connection at once, must already hold that rotation: an answer sent before its
/// COMMIT returned would be seen here, some time, as an older generation.
async fn answers_only_what_is_durable(app: &TestApp) {
    let tokens = logged_in(app, "durable").await;
    let rounds = 25;
    let clients = tokens.into_iter().map(|t| async move {
        let mut refresh = t.refresh.clone();
        let session_id = uuid::Uuid::parse_str(&t.session_id).unwrap();
        let mut generation = 1;
        for _ in 0..rounds {
            let next = app.refresh_ok(&refresh).await;
            generation += 1;
            let stored = app
                .service
                .store
                .session(session_id)
                .await
                .unwrap()
                .expect("the session is stored");
            assert!(
                stored.generation >= generation,
                "answered generation {generation} while the store holds {}",
                stored.generation
            );
            refresh = next.refresh;
        }
    });
    join_all(clients).await;
    let stats = &app.service.writer.stats;
    // The load did exercise the pipeline (else this test would prove nothing about it).
    assert!(
        stats.pipelined.load(Ordering::Relaxed) > 0,
        "no batch was decided on top of a commit in flight"
    );
}

#[tokio::test]
async fn no_refresh_is_answered_before_its_batch_is_durable() {
    let app = spawn_app().await;
    answers_only_what_is_durable(&app).await;
}

#[tokio::test]
async fn no_refresh_is_answered_before_its_batch_is_durable_on_postgres() {
    let Some(db) = fresh_database("pipeline_durable").await else {
        return;
    };
    let url = db.url.clone();
    let app = spawn_app_with(move |c: &mut Config| {
        c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap())
    })
    .await;
    answers_only_what_is_durable(&app).await;
}

/// The attack on the pipeline: two requests with the same refresh token at once, so that the
/// second is decided on top of the first's rotation (a grace retry answered with its
/// successor). Here every commit that writes a rotation fails (a trigger injected into the
/// database), while a retry's own event would still commit. Had the writer kept the retry
/// decided on top of the failed rotation, it would answer 200 with a successor that was never
/// stored; decided again, the retry is a rotation, and fails like one.
#[tokio::test]
async fn a_failed_commit_fails_its_batch_and_every_batch_decided_on_top_of_it() {
    let app = spawn_app().await;
    let tokens = logged_in(&app, "fail").await;
    let before = app.event_count().await;
    let url = format!("sqlite://{}", app.db_path().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER injected_commit_failure BEFORE INSERT ON events \
         WHEN NEW.event_type = 'session.refreshed' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let stats = &app.service.writer.stats;
    let mut rounds = 0;
    while stats.redecided.load(Ordering::Relaxed) == 0 && rounds < 40 {
        rounds += 1;
        let app = &app;
        let attempts = tokens
            .iter()
            .flat_map(|t| [t.refresh.clone(), t.refresh.clone()])
            .map(|token| async move { app.refresh(&token).await.status() });
        for status in join_all(attempts).await {
            assert!(
                !status.is_success(),
                "a refresh was answered {status} although no rotation could commit"
            );
        }
    }
    assert!(
        stats.redecided.load(Ordering::Relaxed) > 0,
        "no batch was ever decided on top of a failing commit in {rounds} rounds"
    );
    sqlx::query("DROP TRIGGER injected_commit_failure")
        .execute(&mut db)
        .await
        .unwrap();
    // Nothing of the failed batches stands: no event, and every first token is still the
    // current one (it rotates now, as if none of the attempts had happened).
    assert_eq!(app.event_count().await, before);
    for t in &tokens {
        let next = app.refresh_ok(&t.refresh).await;
        assert_ne!(next.refresh, t.refresh);
    }
}

async fn concurrent_logins(app: &TestApp, prefix: &str, n: usize) -> (u64, u64) {
    for i in 0..n {
        app.register(&format!("{prefix}{i}")).await;
    }
    let stats = &app.service.writer.stats;
    let batches = stats.batches.load(Ordering::Relaxed);
    let commands = stats.commands.load(Ordering::Relaxed);
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let logins = join_all(names.iter().map(|name| app.login(name))).await;
    let sessions: std::collections::HashSet<_> = logins.iter().map(|t| &t.session_id).collect();
    assert_eq!(sessions.len(), n, "every login has a session of its own");
    (
        stats.batches.load(Ordering::Relaxed) - batches,
        stats.commands.load(Ordering::Relaxed) - commands,
    )
}

/// Logins that queue for argon2 share commits: while other password checks wait for their
/// turn, a commit holding only a login waits (up to `writer_login_linger`) for the next one.
/// Eight logins at once on a gate of one thread per core: at least two must have shared.
#[tokio::test]
async fn logins_queued_for_argon2_share_their_commits() {
    let app =
        spawn_app_with(|c| c.writer_login_linger = sessiond::domain::Duration::seconds(1)).await;
    let (batches, commands) = concurrent_logins(&app, "queued", 8).await;
    let lingered = app.service.writer.stats.lingered.load(Ordering::Relaxed);
    assert!(lingered > 0, "no lone login waited for company");
    assert!(
        batches < commands,
        "{commands} logins in {batches} commits: none shared"
    );
}

/// With the linger off, no commit waits: the same logins are not held back.
#[tokio::test]
async fn with_the_linger_off_no_login_waits_for_company() {
    let app = spawn_app_with(|c| c.writer_login_linger = sessiond::domain::Duration::zero()).await;
    concurrent_logins(&app, "alone", 8).await;
    assert_eq!(app.service.writer.stats.lingered.load(Ordering::Relaxed), 0);
}
