//! The store contract, run against every backend: SQLite always, PostgreSQL when
//! `SESSIOND_TEST_DATABASE_URL` is set (see `pg.rs`). Appends and the hash chain, optimistic
//! conflicts, projections and their rebuild, cursor paging, and followers that read by position
//! while slow and fast writers interleave.

use crate::pg::{TestDatabase, fresh_database};
use sessiond::domain::context::{Device, RequestContext};
use sessiond::domain::event::{Actor, Event, EventMetadata, SigningKeyChanged};
use sessiond::domain::session::{SessionPolicy, SessionStatus};
use sessiond::domain::token::{RefreshToken, TokenKey};
use sessiond::domain::{Duration, Timestamp, parse_timestamp};
use sessiond::rules::RuleEngine;
use sessiond::store::chain::ChainVerifier;
use sessiond::store::commands::{Command, RegisterUser, Reply, execute};
use sessiond::store::writer::WriteSession;
use sessiond::store::{
    EventFilter, NewEvent, PostgresStore, RecordedEvent, SqliteStore, Store, StoreError,
};
use std::collections::HashMap;
use tempfile::TempDir;
use uuid::Uuid;

/// One backend under test, with what keeps its database alive.
pub struct Backend {
    pub name: &'static str,
    pub store: Store,
    _sqlite_dir: Option<TempDir>,
    _postgres: Option<TestDatabase>,
}

/// A fresh SQLite store and, when configured, a fresh PostgreSQL one.
pub async fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("contract.db"))
        .await
        .unwrap();
    let mut all = vec![Backend {
        name: "sqlite",
        store: Store::Sqlite(sqlite),
        _sqlite_dir: Some(dir),
        _postgres: None,
    }];
    if let Some(db) = fresh_database(test).await {
        let pg = PostgresStore::open(&db.url).await.unwrap();
        all.push(Backend {
            name: "postgres",
            store: Store::Postgres(pg),
            _sqlite_dir: None,
            _postgres: Some(db),
        });
    }
    all
}

/// Runs `$body` with `$ws` bound to a new write session of `$store`, whatever its backend.
macro_rules! with_write_session {
    ($store:expr, |$ws:ident| $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let mut $ws = s.write_session().await.unwrap();
                $body
            }
            Store::Postgres(p) => {
                let mut $ws = p.write_session().await.unwrap();
                $body
            }
        }
    };
}

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
        request_id: Some("req-1".into()),
        causation: None,
    }
}

fn t0() -> Timestamp {
    parse_timestamp("2026-03-01T12:00:00.123Z").unwrap()
}

fn token(n: u8) -> TokenKey {
    RefreshToken::new(Uuid::from_u128(u128::from(n)), [n; 32]).key()
}

/// A context with nested objects and keys out of alphabetical order, so a backend that
/// normalised the JSON it stores would change the hashed text.
fn context() -> RequestContext {
    RequestContext {
        ip: Some("203.0.113.9".parse().unwrap()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into()),
        device: Some(Device {
            category: "pc".into(),
            os: "Linux".into(),
            browser: "Firefox".into(),
            version: "120.0".into(),
            vendor: "Mozilla".into(),
        }),
        geo: None,
        request_id: Some("req-1".into()),
    }
}

const ALICE: Uuid = Uuid::from_u128(1);
const S1: Uuid = Uuid::from_u128(11);
const S2: Uuid = Uuid::from_u128(12);

/// Register, log in twice, rotate, reuse an old token, hit an unknown one, log out everywhere.
fn script() -> Vec<Command> {
    let ctx = context();
    let start = |session_id, token| Command::StartSession {
        user_id: ALICE,
        session_id,
        scope: "openid".into(),
        roles: vec!["user".into()],
        token,
        context: ctx.clone(),
    };
    let refresh = |from, to| Command::Refresh {
        presented: token(from),
        new_token: token(to),
        context: ctx.clone(),
    };
    vec![
        Command::Register(RegisterUser {
            user_id: ALICE,
            username: "alice".into(),
            password_hash: "$argon2id$stand-in".into(),
            roles: vec!["user".into()],
            context: ctx.clone(),
        }),
        start(S1, token(1)),
        start(S2, token(2)),
        refresh(1, 3),
        refresh(3, 4),
        refresh(2, 5),
        refresh(1, 6),  // an older generation of S1: reuse, the family is revoked
        refresh(9, 10), // unknown
        Command::LogoutEverywhere {
            user_id: ALICE,
            except: None,
            context: None,
        },
    ]
}

/// Runs `commands` as one batch (one transaction) at `now`.
async fn run_batch<W: WriteSession>(
    ws: &mut W,
    commands: &[Command],
    now: Timestamp,
) -> Vec<Reply> {
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

async fn all_events(store: &Store) -> Vec<RecordedEvent> {
    store.events(&EventFilter::default()).await.unwrap()
}

fn assert_chain(name: &str, events: &[RecordedEvent]) {
    let mut chain = ChainVerifier::default();
    for e in events {
        chain
            .check(e)
            .unwrap_or_else(|(p, why)| panic!("{name}: chain broken at {p}: {why:?}"));
    }
    let mut versions: HashMap<&str, i64> = HashMap::new();
    for e in events {
        let v = versions.entry(&e.stream_id).or_default();
        *v += 1;
        assert_eq!(
            e.stream_version, *v,
            "{name}: {} skips a version",
            e.stream_id
        );
    }
}

#[tokio::test]
async fn the_same_commands_give_the_same_log_hash_for_hash_on_every_backend() {
    let mut logs = Vec::new();
    for b in backends("the_same_commands_give_the_same_log").await {
        let replies = with_write_session!(&b.store, |ws| run_batch(&mut ws, &script(), t0()).await);
        assert!(matches!(replies[4], Reply::Refreshed { .. }), "{}", b.name);
        assert!(matches!(replies[6], Reply::Rejected(_)), "{}", b.name);
        let events = all_events(&b.store).await;
        assert_eq!(events.len(), 10, "{}: {events:#?}", b.name);
        assert_chain(b.name, &events);
        assert_eq!(
            b.store.head().await.unwrap().position,
            events.len() as i64,
            "{}",
            b.name
        );
        // The stored text is what was written, byte for byte (key order included).
        let started = &events[1];
        assert_eq!(started.event_type, "session.started");
        let data: serde_json::Value = serde_json::from_str(&started.data).unwrap();
        assert_eq!(started.data, data.to_string(), "{}", b.name);
        logs.push((b.name, replies, events));
    }
    let (first, replies, events) = &logs[0];
    for (name, other_replies, other_events) in &logs[1..] {
        assert_eq!(replies, other_replies, "{first} and {name} decide alike");
        assert_eq!(
            events, other_events,
            "{first} and {name} store the same log"
        );
    }
}

#[tokio::test]
async fn an_append_at_a_taken_version_is_a_conflict_and_writes_nothing() {
    for b in backends("an_append_at_a_taken_version_is_a_conflict").await {
        with_write_session!(&b.store, |a| {
            with_write_session!(&b.store, |other| conflict_case(
                b.name, &b.store, &mut a, &mut other
            )
            .await)
        });
    }
}

fn key_event(stream: &str, expected_version: i64, kid: &str) -> NewEvent {
    NewEvent {
        stream_id: stream.into(),
        expected_version,
        event: Event::SigningKeyActivated(SigningKeyChanged { kid: kid.into() }),
        metadata: meta(),
        occurred_at: t0(),
    }
}

/// Appends `e` and commits; a conflict may surface at the append (PostgreSQL checks at once)
/// or at the commit (SQLite's writer flushes its batch there).
async fn append_and_commit<W: WriteSession>(ws: &mut W, e: NewEvent) -> Result<(), StoreError> {
    ws.begin(&[]).await?;
    let result = match ws.append(e).await {
        Ok(_) => ws.commit().await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        ws.rollback().await?;
    }
    result
}

async fn conflict_case<A: WriteSession, B: WriteSession>(
    name: &str,
    store: &Store,
    a: &mut A,
    b: &mut B,
) {
    append_and_commit(a, key_event("signing_key-k", 0, "k"))
        .await
        .unwrap();

    // Another writer that decided on version 0 loses the race.
    let err = append_and_commit(b, key_event("signing_key-k", 0, "k2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { stream_id, expected: 0 } if stream_id == "signing_key-k"),
        "{name}: {err}"
    );

    // Two appends at one version within one transaction: the second conflicts, and the
    // rollback takes the first with it.
    b.begin(&[]).await.unwrap();
    b.append(key_event("signing_key-k", 1, "k3")).await.unwrap();
    let second = b.append(key_event("signing_key-k", 1, "k4")).await;
    let err = match second {
        Err(e) => e,
        Ok(_) => b.commit().await.unwrap_err(),
    };
    assert!(matches!(err, StoreError::Conflict { .. }), "{name}: {err}");
    b.rollback().await.unwrap();
    assert_eq!(all_events(store).await.len(), 1, "{name}: nothing written");

    // The loser reloads and appends at the real version; both writers share one chain.
    append_and_commit(b, key_event("signing_key-k", 1, "k5"))
        .await
        .unwrap();
    append_and_commit(a, key_event("signing_key-other", 0, "o"))
        .await
        .unwrap();
    let events = all_events(store).await;
    assert_eq!(events.len(), 3, "{name}");
    assert_chain(name, &events);
}

#[tokio::test]
async fn projections_follow_the_log_and_a_rebuild_reproduces_them() {
    for b in backends("projections_follow_the_log").await {
        let name = b.name;
        with_write_session!(&b.store, |ws| run_batch(&mut ws, &script(), t0()).await);

        let s1 = b.store.session(S1).await.unwrap().unwrap();
        assert_eq!(s1.status, SessionStatus::Revoked, "{name}");
        assert_eq!(s1.end_reason.as_deref(), Some("reuse"), "{name}");
        assert_eq!(s1.login_context, context(), "{name}");
        let s2 = b.store.session(S2).await.unwrap().unwrap();
        assert_eq!(s2.status, SessionStatus::Revoked, "{name}");
        assert_eq!(s2.generation, 2, "{name}");
        assert_eq!(
            s2.end_reason.as_deref(),
            Some("logout_everywhere"),
            "{name}"
        );
        assert_eq!(
            b.store
                .user_by_name("alice")
                .await
                .unwrap()
                .unwrap()
                .user_id,
            ALICE,
            "{name}"
        );
        let t4 = b.store.token(&token(4)).await.unwrap().unwrap();
        assert_eq!((t4.session_id, t4.generation), (S1, 3), "{name}");
        let forged = RefreshToken::new(token(4).id, [0; 32]).key();
        assert!(b.store.token(&forged).await.unwrap().is_none(), "{name}");
        assert!(b.store.token(&token(9)).await.unwrap().is_none(), "{name}");

        let live = b.store.projection_snapshot().await.unwrap();
        assert!(live.iter().any(|r| r.starts_with("refresh_tokens|")));
        // Empty the tables first, so a rebuild that left them alone could not pass.
        with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            ws.clear_projections().await.unwrap();
            ws.commit().await.unwrap();
        });
        assert!(b.store.projection_snapshot().await.unwrap().is_empty());
        assert_eq!(
            sessiond::projection::rebuild_store(&b.store).await.unwrap(),
            10,
            "{name}"
        );
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
        assert_chain(name, &all_events(&b.store).await);
    }
}

#[tokio::test]
async fn cursor_paging_walks_the_log_in_order_and_filters_narrow_it() {
    for b in backends("cursor_paging_walks_the_log").await {
        let name = b.name;
        let later = t0() + Duration::hours(1);
        with_write_session!(&b.store, |ws| {
            run_batch(&mut ws, &script()[..4], t0()).await;
            run_batch(&mut ws, &script()[4..], later).await;
        });
        let all = all_events(&b.store).await;

        let mut paged = Vec::new();
        let mut filter = EventFilter {
            limit: Some(3),
            ..Default::default()
        };
        loop {
            let page = b.store.events(&filter).await.unwrap();
            assert!(page.len() <= 3, "{name}");
            let Some(last) = page.last() else { break };
            filter.after_position = last.position;
            paged.extend(page);
        }
        assert_eq!(paged, all, "{name}: pages make up the log");

        let stream = format!("session-{S2}");
        let of_s2 = b
            .store
            .events(&EventFilter {
                stream_id: Some(stream.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            of_s2.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            [1, 2, 3],
            "{name}"
        );
        assert!(of_s2.iter().all(|e| e.stream_id == stream), "{name}");

        let types = ["session.refreshed", "session.revoked"];
        let typed = b
            .store
            .events(&EventFilter {
                event_types: types.iter().map(|t| t.to_string()).collect(),
                after_position: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        let expected: Vec<_> = all
            .iter()
            .filter(|e| e.position > 5 && types.contains(&e.event_type.as_str()))
            .cloned()
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(typed, expected, "{name}");

        let since = |since, until| {
            let store = b.store.clone();
            async move {
                store
                    .events(&EventFilter {
                        since,
                        until,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .len()
            }
        };
        let early = all
            .iter()
            .filter(|e| e.occurred_at().unwrap() == t0())
            .count();
        assert!(early > 0 && early < all.len());
        assert_eq!(since(Some(later), None).await, all.len() - early, "{name}");
        assert_eq!(since(None, Some(later)).await, early, "{name}");
        assert_eq!(since(Some(t0()), Some(later)).await, early, "{name}");
        let after_all = later + Duration::milliseconds(1);
        assert_eq!(since(Some(after_all), None).await, 0, "{name}");
    }
}

/// A follower reads "events after my cursor" and moves its cursor to the last one it got. If a
/// position could become visible before a lower one commits, it would skip the lower one for
/// good. Slow writers (holding their transaction open) and fast ones interleave here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_reading_by_position_never_skip_an_event_committed_late() {
    for b in backends("followers_reading_by_position_never_skip").await {
        interleave_writers_under_a_follower(&b).await;
    }
}

/// The same on a PostgreSQL database whose transactions default to REPEATABLE READ: the writer
/// must still read the head after the append lock is granted, not from an older snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_append_lock_holds_when_the_database_defaults_to_repeatable_read() {
    let Some(db) = fresh_database("the_append_lock_holds_under_repeatable_read").await else {
        return;
    };
    db.execute_admin(&format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        db.name()
    ))
    .await;
    let store = Store::Postgres(PostgresStore::open(&db.url).await.unwrap());
    let b = Backend {
        name: "postgres (repeatable read)",
        store,
        _sqlite_dir: None,
        _postgres: Some(db),
    };
    interleave_writers_under_a_follower(&b).await;
}

async fn interleave_writers_under_a_follower(b: &Backend) {
    const WRITERS: usize = 4;
    const APPENDS: usize = 12;
    {
        let name = b.name;
        let total = (WRITERS * APPENDS) as i64;
        let follower = tokio::spawn(follow(b.store.clone(), total));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let store = b.store.clone();
            // Writer 0 dawdles inside every transaction; the others commit at once.
            let pause = if w == 0 { 25 } else { 0 };
            writers.spawn(async move {
                with_write_session!(&store, |ws| interleaved_writer(&mut ws, w, APPENDS, pause)
                    .await)
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
        let seen = follower.await.unwrap();
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "{name}");
        assert_chain(name, &all_events(&b.store).await);
    }
}

async fn interleaved_writer<W: WriteSession>(
    ws: &mut W,
    writer: usize,
    appends: usize,
    pause_ms: u64,
) {
    for i in 0..appends {
        ws.begin(&[]).await.unwrap();
        ws.append(key_event(&format!("order-{writer}-{i}"), 0, "k"))
            .await
            .unwrap();
        if pause_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
        ws.commit().await.unwrap();
    }
}

/// Polls like a naive follower and fails the moment a read starts past the cursor's successor.
async fn follow(store: Store, until: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cursor = 0;
    while cursor < until {
        let page = store
            .events(&EventFilter {
                after_position: cursor,
                ..Default::default()
            })
            .await
            .unwrap();
        for e in &page {
            assert_eq!(
                e.position,
                cursor + 1,
                "position {} became visible before {}",
                e.position,
                cursor + 1
            );
            cursor = e.position;
            seen.push(e.position);
        }
        tokio::task::yield_now().await;
    }
    seen
}

/// A batch bigger than one multi-row statement and than the overlay's early-flush threshold
/// (a rebuild of a long log is one): written in pieces, read back whole, rebuilt alike.
#[tokio::test]
async fn a_batch_larger_than_the_overlay_is_written_in_pieces_and_rebuilt_alike() {
    const SESSIONS: u128 = 1_500;
    for b in backends("a_batch_larger_than_the_overlay").await {
        let name = b.name;
        let mut commands = script()[..1].to_vec();
        commands.extend((0..SESSIONS).map(|i| Command::StartSession {
            user_id: ALICE,
            session_id: Uuid::from_u128(1_000 + i),
            scope: "openid".into(),
            roles: vec!["user".into()],
            token: RefreshToken::new(Uuid::from_u128((1 << 64) + i), [3; 32]).key(),
            context: context(),
        }));
        with_write_session!(&b.store, |ws| run_batch(&mut ws, &commands, t0()).await);
        let events = all_events(&b.store).await;
        assert_eq!(events.len() as u128, 1 + SESSIONS, "{name}");
        assert_chain(name, &events);
        let last = b
            .store
            .session(Uuid::from_u128(1_000 + SESSIONS - 1))
            .await
            .unwrap();
        assert!(last.is_some_and(|s| s.is_active()), "{name}");

        let live = b.store.projection_snapshot().await.unwrap();
        assert_eq!(live.len() as u128, 1 + 2 * SESSIONS, "{name}");
        sessiond::projection::rebuild_store(&b.store).await.unwrap();
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
    }
}
