//! Upgrading a database from before migration 0008 (refresh tokens were random, a retry minted
//! a sibling): each session learns its current token, the first one its generation issued, as a
//! rebuild from the log would set it. Such a token cannot be minted again, so a retry of the
//! token it replaced is refused (401) and the family is kept.

use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use sessiond::domain::token::{RefreshToken, hex};
use sessiond::domain::{Timestamp, format_timestamp};
use sessiond::store::{PostgresStore, SqliteStore, Store};
use std::path::Path;
use uuid::Uuid;

async fn migrator_before_0008(backend: &str, dir: &Path) -> sqlx::migrate::Migrator {
    let old = dir.join(format!("before-0008-{backend}"));
    std::fs::create_dir_all(&old).unwrap();
    for entry in std::fs::read_dir(format!("migrations/{backend}")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0008" {
            std::fs::copy(&path, old.join(name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap()
}

struct Legacy {
    session: Uuid,
    /// Generation 1 (rotated away), generation 2 (the rotation's) and its retry sibling.
    first: RefreshToken,
    current: RefreshToken,
    sibling: RefreshToken,
}

fn legacy() -> Legacy {
    let id = |n: u128| Uuid::from_u128(0x1000 + n);
    Legacy {
        session: Uuid::new_v4(),
        first: RefreshToken::new(id(1), [1; 32]),
        current: RefreshToken::new(id(2), [2; 32]),
        sibling: RefreshToken::new(id(3), [3; 32]),
    }
}

/// The rows the build before wrote: a session rotated `rotated_at`, and its three tokens.
fn legacy_rows(
    l: &Legacy,
    rotated_at: Timestamp,
    id: impl Fn(&Uuid) -> String,
    blob: impl Fn(&[u8]) -> String,
) -> Vec<String> {
    let at = format_timestamp(rotated_at);
    let later = format_timestamp(rotated_at + chrono::Duration::milliseconds(5));
    let device = serde_json::json!({ "device": sessiond::context::device(FIREFOX) }).to_string();
    let mut rows = vec![format!(
        "INSERT INTO sessions (session_id, user_id, status, scope, roles, created_at, auth_time, \
         last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, rotated_at, \
         rotated_from, login_context, last_context, reauth_required, ended_at, end_reason, \
         version) VALUES ('{s}', '{u}', 'active', 'session', '[\"user\"]', '{at}', '{at}', \
         '{later}', '2999-01-01T00:00:00.000Z', '2999-01-01T00:00:00.000Z', 2, 1, '{at}', {from}, \
         '{device}', '{device}', false, NULL, NULL, 4)",
        s = l.session,
        u = Uuid::new_v4(),
        from = blob(&l.first.hash().0),
    )];
    for (token, generation, issued) in [
        (&l.first, 1, &at),
        (&l.current, 2, &at),
        (&l.sibling, 2, &later),
    ] {
        rows.push(format!(
            "INSERT INTO refresh_tokens (token_id, token_hash, session_id, generation, issued_at) \
             VALUES ({}, {}, '{}', {generation}, '{issued}')",
            id(&token.id()),
            blob(&token.hash().0),
            l.session
        ));
    }
    rows
}

async fn assert_backfilled(name: &str, store: &Store, l: &Legacy) {
    let s = store.session(l.session).await.unwrap().unwrap();
    assert_eq!(
        s.current_token,
        Some(l.current.key()),
        "{name}: the rotation's token"
    );
    assert_eq!(s.late_retry_generation, None, "{name}");
}

#[tokio::test]
async fn an_older_database_learns_each_sessions_token_and_refuses_retries_it_cannot_answer() {
    let l = legacy();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=rwc", path.display()))
        .await
        .unwrap();
    migrator_before_0008("sqlite", dir.path())
        .await
        .run(&pool)
        .await
        .unwrap();
    let rotated_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let rows = legacy_rows(
        &l,
        rotated_at,
        |id| format!("X'{}'", hex(id.as_bytes())),
        |b| format!("X'{}'", hex(b)),
    );
    for sql in rows {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::Sqlite(SqliteStore::open(&path).await.unwrap());
    assert_backfilled("sqlite", &store, &l).await;
    drop(store);

    // A server on that database: the spent token comes back within grace from the same
    // device, but its successor was random and cannot be minted again.
    let data_dir = dir.path().to_owned();
    let app = spawn_app_with(move |c| c.data_dir = data_dir).await;
    let r = app.refresh(l.first.expose()).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let s = app.service.store.session(l.session).await.unwrap().unwrap();
    assert!(s.is_active(), "the family is kept");
    // Its one current token still refreshes.
    let next = app.refresh_ok(l.current.expose()).await;
    assert_ne!(
        next.refresh,
        l.current.expose(),
        "rotated to a minted token"
    );
    app.refresh_ok(&next.refresh).await;

    let Some(db) = fresh_database("an_older_database_learns_each_sessions_token").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    migrator_before_0008("postgres", dir.path())
        .await
        .run(&pool)
        .await
        .unwrap();
    let rows = legacy_rows(
        &l,
        rotated_at,
        |id| format!("'{id}'"),
        |b| format!("'\\x{}'::bytea", hex(b)),
    );
    for sql in rows {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::Postgres(PostgresStore::open(&db.url).await.unwrap());
    assert_backfilled("postgres", &store, &l).await;
}
