//! The overlay against SQLite itself: a batch equals one transaction per command, rebuilds
//! match, conflicts surface, rollbacks forget.

use super::*;
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::parse_timestamp;
use crate::domain::session::SessionPolicy;
use crate::domain::token::{RefreshToken, TokenKey};
use crate::rules::RuleEngine;
use crate::store::NewEvent;
use crate::store::Store;
use crate::store::UnitOfWork;
use crate::store::commands::{Command, RegisterUser, Reply, execute};
use crate::store::overlay::OVERLAY_FLUSH_ROWS;
use crate::store::writer::WriteSession;
use chrono::Duration;

fn policy() -> SessionPolicy {
    SessionPolicy {
        idle_lifetime: Duration::days(30),
        absolute_lifetime: Duration::days(90),
        grace_window: Duration::seconds(30),
        max_grace_retries: 3,
    }
}

fn meta() -> EventMetadata {
    EventMetadata {
        actor: Actor::Anonymous,
        request_id: Some("req".into()),
        causation: None,
    }
}

fn hash(n: u8) -> TokenKey {
    RefreshToken::new(Uuid::from_u128(u128::from(n)), [n; 32]).key()
}

fn numbered_token(n: u32) -> TokenKey {
    RefreshToken::new(Uuid::from_u128((1 << 64) + u128::from(n)), [7; 32]).key()
}

/// Register, log in twice, rotate, reuse an old token, log out everywhere: every kind of
/// read the overlay must answer from a write earlier in the same batch.
fn script() -> Vec<Command> {
    let user_id = Uuid::from_u128(1);
    let (s1, s2) = (Uuid::from_u128(11), Uuid::from_u128(12));
    let ctx = RequestContext::default();
    let start = |session_id, token| Command::StartSession {
        user_id,
        session_id,
        scope: "openid".into(),
        roles: vec!["user".into()],
        token,
        context: ctx.clone(),
    };
    let refresh = |from, to| Command::Refresh {
        presented: hash(from),
        new_token: hash(to),
        context: ctx.clone(),
    };
    vec![
        Command::Register(RegisterUser {
            user_id,
            username: "alice".into(),
            password_hash: "x".into(),
            roles: vec!["user".into()],
            context: ctx.clone(),
        }),
        start(s1, hash(1)),
        start(s2, hash(2)),
        refresh(1, 3),
        refresh(3, 4),
        refresh(2, 5),
        refresh(1, 6),  // an older generation: reuse, the family is revoked
        refresh(9, 10), // unknown
        Command::LogoutEverywhere {
            user_id,
            except: None,
            context: None,
        },
    ]
}

async fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.path().join(name)).await.unwrap()
}

async fn run(ws: &mut SqliteWriteSession, commands: &[Command]) -> Vec<Reply> {
    let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
    let prefetch: Vec<TokenKey> = commands
        .iter()
        .filter_map(|c| c.presented_token())
        .copied()
        .collect();
    ws.begin(&prefetch).await.unwrap();
    let mut replies = Vec::new();
    for c in commands {
        replies.push(
            execute(
                ws,
                c.clone(),
                &meta(),
                now,
                &policy(),
                &RuleEngine::disabled(),
            )
            .await
            .unwrap(),
        );
    }
    ws.commit().await.unwrap();
    replies
}

async fn all_events(store: &SqliteStore) -> Vec<RecordedEvent> {
    store.events(&EventFilter::default()).await.unwrap()
}

#[tokio::test]
async fn one_batch_equals_one_transaction_per_command_and_rebuilds_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (batched, single) = (open(&dir, "a.db").await, open(&dir, "b.db").await);
    let commands = script();

    let mut ws = batched.write_session().await.unwrap();
    let batch_replies = run(&mut ws, &commands).await;
    let mut ws1 = single.write_session().await.unwrap();
    let mut single_replies = Vec::new();
    for c in &commands {
        single_replies.extend(run(&mut ws1, std::slice::from_ref(c)).await);
    }
    assert_eq!(batch_replies, single_replies);
    assert!(matches!(batch_replies[4], Reply::Refreshed { .. }));
    assert!(matches!(batch_replies[6], Reply::Rejected(_)));

    let events = all_events(&batched).await;
    assert_eq!(events, all_events(&single).await);
    let mut prev = [0u8; 32];
    for e in &events {
        assert_eq!(e.prev_hash, prev.to_vec());
        prev = crate::store::chain::event_hash(e);
        assert_eq!(e.hash, prev.to_vec());
    }
    let live = batched.projection_snapshot().await.unwrap();
    assert_eq!(live, single.projection_snapshot().await.unwrap());
    assert!(live.iter().any(|r| r.starts_with("refresh_tokens|")));

    let store = Store::Sqlite(batched.clone());
    assert_eq!(
        crate::projection::rebuild_store(&store).await.unwrap(),
        events.len() as u64
    );
    assert_eq!(batched.projection_snapshot().await.unwrap(), live);
}

#[tokio::test]
async fn a_rebuild_larger_than_the_overlay_flushes_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "big.db").await;
    let mut ws = store.write_session().await.unwrap();
    run(&mut ws, &script()[..1]).await;
    let sessions: Vec<Command> = (0..OVERLAY_FLUSH_ROWS as u128)
        .map(|i| Command::StartSession {
            user_id: Uuid::from_u128(1),
            session_id: Uuid::from_u128(1000 + i),
            scope: "openid".into(),
            roles: vec!["user".into()],
            token: numbered_token(i as u32),
            context: RequestContext::default(),
        })
        .collect();
    run(&mut ws, &sessions).await;
    let live = store.projection_snapshot().await.unwrap();
    crate::projection::rebuild_store(&Store::Sqlite(store.clone()))
        .await
        .unwrap();
    assert_eq!(store.projection_snapshot().await.unwrap(), live);
}

#[tokio::test]
async fn appending_twice_at_one_version_is_a_conflict_in_the_batch_and_across_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "c.db").await;
    let mut a = store.write_session().await.unwrap();
    let mut b = store.write_session().await.unwrap();
    let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
    let record = |kid: &str| NewEvent {
        stream_id: "signing-key-k".into(),
        expected_version: 0,
        event: crate::domain::event::Event::SigningKeyActivated(
            crate::domain::event::SigningKeyChanged { kid: kid.into() },
        ),
        metadata: meta(),
        occurred_at: now,
    };

    // Within one batch the overlay is the guard.
    a.begin(&[]).await.unwrap();
    a.append(record("k")).await.unwrap();
    let err = a.append(record("k")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    a.rollback().await.unwrap();

    // Across writers it is SQLite's UNIQUE constraint, met when the overlay is flushed.
    a.begin(&[]).await.unwrap();
    a.append(record("k")).await.unwrap();
    a.commit().await.unwrap();
    b.begin(&[]).await.unwrap();
    b.append(record("k2")).await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { stream_id, expected: 0 } if stream_id == "signing-key-k"),
        "{err}"
    );
    b.rollback().await.unwrap();
    assert_eq!(all_events(&store).await.len(), 1);

    // Writers that take turns on other streams both land, on one unbroken chain.
    let other = |stream: &str| NewEvent {
        stream_id: stream.into(),
        ..record("k3")
    };
    for i in 0..3 {
        let ws = if i % 2 == 0 { &mut a } else { &mut b };
        ws.begin(&[]).await.unwrap();
        ws.append(other(&format!("signing-key-{i}"))).await.unwrap();
        ws.commit().await.unwrap();
    }
    let events = all_events(&store).await;
    assert_eq!(events.len(), 4);
    let mut chain = crate::store::chain::ChainVerifier::default();
    for e in &events {
        chain.check(e).unwrap();
    }
}

#[tokio::test]
async fn rollback_discards_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "d.db").await;
    let mut ws = store.write_session().await.unwrap();
    let commands = script();
    run(&mut ws, &commands[..1]).await;

    let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
    ws.begin(&[]).await.unwrap();
    execute(
        &mut ws,
        commands[1].clone(),
        &meta(),
        now,
        &policy(),
        &RuleEngine::disabled(),
    )
    .await
    .unwrap();
    assert!(ws.token(&hash(1)).await.unwrap().is_some());
    ws.rollback().await.unwrap();

    ws.begin(&[hash(1)]).await.unwrap();
    assert!(ws.token(&hash(1)).await.unwrap().is_none());
    assert!(ws.session(Uuid::from_u128(11)).await.unwrap().is_none());
    assert_eq!(
        ws.stream_version("session-00000000-0000-0000-0000-00000000000b")
            .await
            .unwrap(),
        0
    );
    ws.commit().await.unwrap();
    assert_eq!(all_events(&store).await.len(), 1);
    assert_eq!(
        store.head().await.unwrap().position,
        ws.committed_position()
    );
}

/// The id only finds the row; a token with a known id and another body is unknown.
#[tokio::test]
async fn a_known_id_with_another_body_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "d.db").await;
    let mut ws = store.write_session().await.unwrap();
    run(&mut ws, &script()[..2]).await;
    let forged = RefreshToken::new(hash(1).id, [9; 32]).key();
    ws.begin(&[forged]).await.unwrap();
    assert!(ws.token(&forged).await.unwrap().is_none());
    assert!(ws.token(&hash(1)).await.unwrap().is_some());
    ws.rollback().await.unwrap();
    assert!(store.token(&forged).await.unwrap().is_none());
    assert!(store.token(&hash(1)).await.unwrap().is_some());
}
