//! The store contract, run against every backend: SQLite always, PostgreSQL when
//! `SESSIOND_TEST_DATABASE_URL` is set (see `pg.rs`). Appends and the hash chain, optimistic
//! conflicts, projections and their rebuild, cursor paging, and followers that read by position
//! while slow and fast writers interleave.

use crate::pg::{TestDatabase, fresh_database};
use sessiond::commands::{
    Command, Context, CreateApiKey, CreateFirstSigningKey, LogoutEverywhere, Refresh, Register,
    RevokeApiKey, RotateSigningKeys, SetRoles, StartSession, Subscribe, Unsubscribe,
};
use sessiond::domain::context::{Device, RequestContext};
use sessiond::domain::event::{Actor, Event, EventMetadata, SigningKeyChanged};
use sessiond::domain::keys::{RotationPolicy, SigningKeyStatus};
use sessiond::domain::session::{SessionPolicy, SessionStatus};
use sessiond::domain::token::{ApiKey, RefreshToken, TokenKey};
use sessiond::domain::webhook::WebhookFormat;
use sessiond::domain::{Duration, Timestamp, parse_timestamp};
use sessiond::rules::RuleEngine;
use sessiond::store::chain::ChainVerifier;
use sessiond::store::{
    EventFilter, NewEvent, PostgresStore, RecordedEvent, SqliteStore, Store, StoreError,
    UnitOfWork, WriteSession,
};
use sessiond::tokens::keys::{MasterKey, SigningKey};
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

impl Backend {
    /// The database URL of a PostgreSQL backend.
    pub fn postgres_url(&self) -> Option<&str> {
        self._postgres.as_ref().map(|db| db.url.as_str())
    }
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
pub(crate) use with_write_session;

fn policy() -> SessionPolicy {
    SessionPolicy {
        idle_lifetime: Duration::days(30),
        absolute_lifetime: Duration::days(90),
        grace_window: Duration::seconds(30),
        max_grace_retries: 3,
        late_retry_window: Duration::minutes(10),
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

/// One command of a test script: the commands of one script have different reply types, so a
/// reply is kept as its debug text (equal texts, equal replies).
#[derive(Clone)]
enum Step {
    Register(Register),
    Start(StartSession),
    Refresh(Refresh),
    LogoutEverywhere(LogoutEverywhere),
}

impl Step {
    fn presented_token(&self) -> Option<TokenKey> {
        match self {
            Step::Refresh(r) => r.presented_token().copied(),
            _ => None,
        }
    }

    async fn run<U: UnitOfWork>(self, uow: &mut U, now: Timestamp) -> String {
        let (meta, policy, rules) = (meta(), policy(), RuleEngine::disabled());
        let cx = Context {
            now,
            meta: &meta,
            policy: &policy,
            rules: &rules,
        };
        match self {
            Step::Register(c) => format!("{:?}", c.handle(uow, &cx).await.unwrap()),
            Step::Start(c) => format!("{:?}", c.handle(uow, &cx).await.unwrap()),
            Step::Refresh(c) => format!("{:?}", c.handle(uow, &cx).await.unwrap()),
            Step::LogoutEverywhere(c) => format!("{:?}", c.handle(uow, &cx).await.unwrap()),
        }
    }
}

fn start(session_id: Uuid, token: TokenKey) -> Step {
    Step::Start(StartSession {
        user_id: ALICE,
        session_id,
        scope: "openid".into(),
        roles: vec!["user".into()],
        token,
        context: context(),
        verified_password_hash: "$argon2id$stand-in".into(),
        dpop: None,
        client_id: None,
        auth_time: None,
        notice_window: Duration::hours(24),
    })
}

/// Register, log in twice, rotate, reuse an old token, hit an unknown one, log out everywhere.
fn script() -> Vec<Step> {
    let ctx = context();
    let minter = minter();
    let refresh = |from, to| rotation(token(from), token(to), &minter);
    vec![
        Step::Register(Register {
            user_id: ALICE,
            username: "alice".into(),
            password_hash: "$argon2id$stand-in".into(),
            roles: vec!["user".into()],
            context: ctx.clone(),
            email: None,
        }),
        start(S1, token(1)),
        start(S2, token(2)),
        refresh(1, 3),
        refresh(3, 4),
        refresh(2, 5),
        refresh(1, 6),  // an older generation of S1: reuse, the family is revoked
        refresh(9, 10), // unknown
        Step::LogoutEverywhere(LogoutEverywhere {
            user_id: ALICE,
            except: None,
            context: None,
        }),
    ]
}

fn minter() -> std::sync::Arc<sessiond::tokens::refresh::RefreshTokens> {
    std::sync::Arc::new(sessiond::tokens::refresh::RefreshTokens::from_secret(
        &[0; 32],
    ))
}

/// A refresh presenting `presented` that would rotate to `new_token`.
fn rotation(
    presented: TokenKey,
    new_token: TokenKey,
    minter: &std::sync::Arc<sessiond::tokens::refresh::RefreshTokens>,
) -> Step {
    Step::Refresh(Refresh {
        presented,
        new_token,
        context: context(),
        minter: minter.clone(),
        proof: sessiond::commands::ProofInput::Absent,
        require_dpop: false,
        client_id: None,
    })
}

/// Runs `steps` as one batch (one transaction) at `now`.
async fn run_batch<W: WriteSession>(ws: &mut W, steps: &[Step], now: Timestamp) -> Vec<String> {
    let prefetch: Vec<TokenKey> = steps.iter().filter_map(Step::presented_token).collect();
    ws.begin(&prefetch).await.unwrap();
    let mut replies = Vec::new();
    for step in steps {
        replies.push(step.clone().run(ws, now).await);
    }
    ws.commit().await.unwrap();
    replies
}

async fn rebuild(store: &Store) -> u64 {
    sessiond::projection::rebuild_projections(store)
        .await
        .unwrap()
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
        assert!(replies[4].starts_with("Ok(Refreshed"), "{}", b.name);
        assert!(replies[6].starts_with("Err("), "{}", b.name);
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
        assert_eq!(rebuild(&b.store).await, 10, "{name}");
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
        assert_chain(name, &all_events(&b.store).await);
    }
}

/// A rebuild reads the log in ranges of 2,000 positions, several at once, and applies them in
/// order: on a log of several ranges every event is replayed exactly once, so the rows equal the
/// live ones (a range skipped, read twice or applied out of order would leave the chain's
/// tokens or the session's generation different, or fail on a duplicate token).
#[tokio::test]
async fn a_rebuild_of_a_log_of_many_pages_reproduces_every_row() {
    const ROTATIONS: u32 = 6_500;
    let key = |n: u32| {
        RefreshToken::new(Uuid::from_u128(0x5e55_0000 + u128::from(n)), [n as u8; 32]).key()
    };
    for b in backends("a_rebuild_of_many_pages").await {
        let name = b.name;
        let minter = minter();
        let mut steps = vec![script()[0].clone(), start(S1, key(0))];
        steps.extend((0..ROTATIONS).map(|n| rotation(key(n), key(n + 1), &minter)));
        with_write_session!(&b.store, |ws| for batch in steps.chunks(500) {
            run_batch(&mut ws, batch, t0()).await;
        });
        let s1 = b.store.session(S1).await.unwrap().unwrap();
        assert_eq!(s1.generation, ROTATIONS + 1, "{name}");
        let events = all_events(&b.store).await.len() as u64;
        assert!(
            events > 3 * 2_000,
            "{name}: {events} events, more than three pages"
        );

        let live = b.store.projection_snapshot().await.unwrap();
        with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            ws.clear_projections().await.unwrap();
            ws.commit().await.unwrap();
        });
        assert_eq!(rebuild(&b.store).await, events, "{name}");
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
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
        commands.extend((0..SESSIONS).map(|i| {
            start(
                Uuid::from_u128(1_000 + i),
                RefreshToken::new(Uuid::from_u128((1 << 64) + i), [3; 32]).key(),
            )
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
        rebuild(&b.store).await;
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
    }
}

/// Moved from the SQLite unit tests: every backend, one batch against one transaction per
/// command on a second database.
#[tokio::test]
async fn one_batch_decides_and_records_as_one_transaction_per_command() {
    let batched = backends("one_batch_decides_batched").await;
    let single = backends("one_batch_decides_single").await;
    for (a, b) in batched.iter().zip(&single) {
        let name = a.name;
        let steps = script();
        let in_batch = with_write_session!(&a.store, |ws| run_batch(&mut ws, &steps, t0()).await);
        let one_by_one = with_write_session!(&b.store, |ws| {
            let mut replies = Vec::new();
            for step in &steps {
                replies.extend(run_batch(&mut ws, std::slice::from_ref(step), t0()).await);
            }
            replies
        });
        assert_eq!(in_batch, one_by_one, "{name}");
        let events = all_events(&a.store).await;
        assert_eq!(events, all_events(&b.store).await, "{name}");
        let live = a.store.projection_snapshot().await.unwrap();
        assert_eq!(live, b.store.projection_snapshot().await.unwrap(), "{name}");
        assert_eq!(rebuild(&a.store).await, events.len() as u64, "{name}");
        assert_eq!(a.store.projection_snapshot().await.unwrap(), live, "{name}");
    }
}

#[tokio::test]
async fn a_rollback_forgets_what_the_transaction_read_and_wrote() {
    for b in backends("a_rollback_forgets").await {
        let name = b.name;
        with_write_session!(&b.store, |ws| {
            run_batch(&mut ws, &script()[..1], t0()).await;
            ws.begin(&[]).await.unwrap();
            script()[1].clone().run(&mut ws, t0()).await;
            assert!(ws.token(&token(1)).await.unwrap().is_some(), "{name}");
            ws.rollback().await.unwrap();

            ws.begin(&[token(1)]).await.unwrap();
            assert!(ws.token(&token(1)).await.unwrap().is_none(), "{name}");
            assert!(ws.session(S1).await.unwrap().is_none(), "{name}");
            let stream = sessiond::domain::event::session_stream(S1);
            assert_eq!(ws.stream_version(&stream).await.unwrap(), 0, "{name}");
            ws.commit().await.unwrap();
            assert_eq!(all_events(&b.store).await.len(), 1, "{name}");
            assert_eq!(
                b.store.head().await.unwrap().position,
                ws.committed_position(),
                "{name}"
            );
        });
    }
}

async fn last_seen<U: UnitOfWork>(uow: &mut U, except: Option<Uuid>) -> Option<Uuid> {
    let s = uow.last_seen_session_of(ALICE, except).await.unwrap();
    s.map(|s| s.session_id)
}

/// Where a login's travel is measured from: the session seen last, read with the batch's own
/// uncommitted writes, leaving out the one asked and any waiting for re-authentication.
#[tokio::test]
async fn the_last_seen_session_is_the_newest_trusted_one_the_batch_included() {
    for b in backends("the_last_seen_session").await {
        let name = b.name;
        let steps = script();
        let minutes = |m| t0() + Duration::minutes(m);
        with_write_session!(&b.store, |ws| {
            run_batch(&mut ws, &steps[..2], t0()).await;
            ws.begin(&[]).await.unwrap();
            steps[2].clone().run(&mut ws, minutes(1)).await;
            assert_eq!(
                last_seen(&mut ws, None).await,
                Some(S2),
                "{name}: staged, not committed"
            );
            assert_eq!(last_seen(&mut ws, Some(S2)).await, Some(S1), "{name}");
            ws.commit().await.unwrap();

            run_batch(&mut ws, &steps[3..4], minutes(5)).await;
            ws.begin(&[]).await.unwrap();
            assert_eq!(
                last_seen(&mut ws, None).await,
                Some(S1),
                "{name}: refreshed last"
            );
            let mut s1 = ws.session(S1).await.unwrap().unwrap();
            s1.reauth_required = true;
            ws.put_session(&s1).await.unwrap();
            assert_eq!(
                last_seen(&mut ws, None).await,
                Some(S2),
                "{name}: S1 is not trusted"
            );
            ws.rollback().await.unwrap();

            run_batch(&mut ws, &steps[8..9], minutes(6)).await;
            ws.begin(&[]).await.unwrap();
            assert_eq!(last_seen(&mut ws, None).await, None, "{name}: all ended");
            ws.commit().await.unwrap();
        });
    }
}

/// The id only finds the row; a token with a known id and another body is unknown.
#[tokio::test]
async fn a_known_token_id_with_another_body_is_unknown() {
    for b in backends("a_known_token_id").await {
        let name = b.name;
        let forged = RefreshToken::new(token(1).id, [9; 32]).key();
        with_write_session!(&b.store, |ws| {
            run_batch(&mut ws, &script()[..2], t0()).await;
            ws.begin(&[forged]).await.unwrap();
            assert!(ws.token(&forged).await.unwrap().is_none(), "{name}");
            assert!(ws.token(&token(1)).await.unwrap().is_some(), "{name}");
            ws.rollback().await.unwrap();
        });
        assert!(b.store.token(&forged).await.unwrap().is_none(), "{name}");
        assert!(b.store.token(&token(1)).await.unwrap().is_some(), "{name}");
    }
}

/// Runs one command in a transaction of its own at `now`, as the system.
async fn run_command<W: WriteSession, C: Command>(
    ws: &mut W,
    command: C,
    now: Timestamp,
) -> C::Reply {
    let meta = EventMetadata::new(Actor::System, None);
    sessiond::commands::writer::run_once(ws, command, &meta, now)
        .await
        .unwrap()
}

fn master_key() -> MasterKey {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    MasterKey::load(Some(text), std::path::Path::new("/nonexistent")).unwrap()
}

const ROTATION: RotationPolicy = RotationPolicy {
    rotation_interval: Duration::hours(1),
    publish_ahead: Duration::minutes(10),
    retired_for: Duration::minutes(11),
};

/// What `registry_history` made, to look up afterwards.
struct RegistryHistory {
    kids: Vec<String>,
    kept_key: ApiKey,
    revoked_key: ApiKey,
    kept_hook: Uuid,
    delivered: i64,
}

/// Every kind of registry change through its command: a first signing key and a rotation that
/// publishes, activates, retires and expires; two API keys, one revoked; two subscriptions,
/// one deleted; a user's roles changed. Then delivery moves one subscription's checkpoint.
async fn registry_history(store: &Store) -> RegistryHistory {
    let master = master_key();
    let minutes = |m: i64| t0() + Duration::minutes(m);
    let (_, first) = SigningKey::generate(&master, t0());
    let mut kids = vec![first.kid.clone()];
    let api = |n: u8| ApiKey::new(Uuid::from_u128(500 + u128::from(n)), [n; 32]);
    let (kept_key, revoked_key) = (api(1), api(2));
    let hooks = [Uuid::from_u128(601), Uuid::from_u128(602)];
    with_write_session!(store, |ws| {
        run_batch(&mut ws, &script()[..1], t0()).await;
        assert!(run_command(&mut ws, CreateFirstSigningKey { key: first.clone() }, t0()).await);
        let (_, again) = SigningKey::generate(&master, t0());
        assert!(
            !run_command(&mut ws, CreateFirstSigningKey { key: again }, t0()).await,
            "an active key is there"
        );
        for (at, start_now) in [(1, true), (11, false), (22, false), (23, true)] {
            let (_, candidate) = SigningKey::generate(&master, minutes(at));
            let kid = candidate.kid.clone();
            let rotate = RotateSigningKeys {
                candidates: vec![candidate],
                algorithms: vec!["EdDSA".into()],
                policy: ROTATION,
                start_now,
            };
            let report = run_command(&mut ws, rotate, minutes(at)).await;
            if !report.published.is_empty() {
                kids.push(kid);
            }
        }
        for (key, name) in [(&kept_key, "gateway"), (&revoked_key, "old")] {
            let create = CreateApiKey {
                key_id: key.id(),
                name: name.into(),
                roles: vec!["security".into()],
                key_hash: key.hash().0,
            };
            run_command(&mut ws, create, minutes(30)).await;
        }
        let revoke = RevokeApiKey {
            key_id: revoked_key.id(),
        };
        assert_eq!(
            run_command(&mut ws, revoke.clone(), minutes(31)).await,
            Ok(())
        );
        assert!(run_command(&mut ws, revoke, minutes(31)).await.is_err());
        for (i, id) in hooks.iter().enumerate() {
            let subscribe = Subscribe {
                subscription_id: *id,
                url: format!("https://hooks.example.test/{i}"),
                event_types: vec!["session.revoked".into()],
                format: if i == 0 {
                    WebhookFormat::Caep
                } else {
                    WebhookFormat::Json
                },
                secret_sealed: master.seal(&id.to_string(), b"whsec_test"),
            };
            run_command(&mut ws, subscribe, minutes(32)).await;
        }
        let unsubscribe = Unsubscribe {
            subscription_id: hooks[1],
        };
        assert_eq!(
            run_command(&mut ws, unsubscribe.clone(), minutes(33)).await,
            Ok(())
        );
        assert!(
            run_command(&mut ws, unsubscribe, minutes(33))
                .await
                .is_err()
        );
        let set = SetRoles {
            username: "Alice".into(),
            roles: vec!["security".into(), "user".into()],
        };
        let alice = run_command(&mut ws, set, minutes(34)).await.unwrap();
        assert_eq!(alice.roles, ["security", "user"]);
    });
    // Delivery gets to the head of the log, then fails once.
    let delivered = store.head().await.unwrap().position;
    store
        .record_webhook_attempt(hooks[0], delivered, None, minutes(35))
        .await
        .unwrap();
    store
        .record_webhook_attempt(
            hooks[0],
            delivered,
            Some("the subscriber answered HTTP 500"),
            minutes(36),
        )
        .await
        .unwrap();
    RegistryHistory {
        kids,
        kept_key,
        revoked_key,
        kept_hook: hooks[0],
        delivered,
    }
}

#[tokio::test]
async fn keys_api_keys_subscriptions_and_roles_are_projections_a_rebuild_reproduces() {
    for b in backends("keys_api_keys_subscriptions_and_roles").await {
        let name = b.name;
        let h = registry_history(&b.store).await;

        let keys = b.store.signing_keys().await.unwrap();
        let statuses: Vec<_> = keys.iter().map(|k| (k.kid.as_str(), k.status)).collect();
        assert_eq!(
            statuses,
            [
                (h.kids[0].as_str(), SigningKeyStatus::Expired),
                (h.kids[1].as_str(), SigningKeyStatus::Active),
                (h.kids[2].as_str(), SigningKeyStatus::Published),
            ],
            "{name}"
        );
        let live = b.store.projection_snapshot().await.unwrap();
        for table in ["signing_keys|", "api_keys|", "webhook_subscriptions|"] {
            assert!(live.iter().any(|r| r.starts_with(table)), "{name}: {table}");
        }
        assert_eq!(
            live.iter()
                .filter(|r| r.starts_with("webhook_subscriptions|"))
                .count(),
            1,
            "{name}: the deleted subscription is gone"
        );
        let user = b.store.user_by_id(ALICE).await.unwrap().unwrap();
        assert_eq!(user.roles, ["security", "user"], "{name}");
        let events = all_events(&b.store).await;
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        for t in [
            "signing_key.created",
            "signing_key.activated",
            "signing_key.retired",
            "signing_key.expired",
            "api_key.created",
            "api_key.revoked",
            "webhook.subscribed",
            "webhook.unsubscribed",
            "user.roles_changed",
        ] {
            assert!(types.contains(&t), "{name}: {t} recorded");
        }
        assert!(
            events
                .iter()
                .filter(|e| e.event_type != "user.registered")
                .all(|e| e.metadata.contains("\"system\"")),
            "{name}: the actor is in every event"
        );

        // Damage the rows, then empty every projection: a rebuild must bring back each row.
        let damage = [
            "UPDATE signing_keys SET status = 'active'",
            "UPDATE api_keys SET revoked_at = NULL",
            "DELETE FROM webhook_subscriptions",
        ];
        for sql in damage {
            match &b.store {
                Store::Sqlite(s) => {
                    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", s.path().display()))
                        .await
                        .unwrap();
                    sqlx::query(sql).execute(&pool).await.unwrap();
                    pool.close().await;
                }
                Store::Postgres(_) => {
                    let url = b.postgres_url().unwrap();
                    let pool = sqlx::PgPool::connect(url).await.unwrap();
                    sqlx::query(sql).execute(&pool).await.unwrap();
                    pool.close().await;
                }
            }
        }
        assert_ne!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
        with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            ws.clear_projections().await.unwrap();
            ws.commit().await.unwrap();
        });
        assert!(
            b.store.projection_snapshot().await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(rebuild(&b.store).await, events.len() as u64, "{name}");
        assert_eq!(b.store.projection_snapshot().await.unwrap(), live, "{name}");
        assert_chain(name, &all_events(&b.store).await);
    }
}

#[tokio::test]
async fn secrets_and_delivery_checkpoints_survive_a_rebuild_and_stay_out_of_the_log() {
    for b in backends("secrets_and_delivery_checkpoints_survive").await {
        let name = b.name;
        let h = registry_history(&b.store).await;
        let keys_before = b.store.signing_keys().await.unwrap();
        let hooks_before = b.store.webhooks().await.unwrap();
        assert_eq!(hooks_before.len(), 1, "{name}");
        let hook = &hooks_before[0];
        assert_eq!(hook.subscription_id, h.kept_hook, "{name}");
        assert_eq!(hook.format, WebhookFormat::Caep, "{name}");
        assert_eq!(
            (
                hook.delivered_position,
                hook.failures,
                hook.last_error.as_deref()
            ),
            (h.delivered, 1, Some("the subscriber answered HTTP 500")),
            "{name}"
        );

        rebuild(&b.store).await;

        // The sealed private halves still open, the webhook secret too, and delivery goes on
        // from where it was.
        let master = master_key();
        let keys_after = b.store.signing_keys().await.unwrap();
        assert_eq!(keys_after.len(), keys_before.len(), "{name}");
        for (before, after) in keys_before.iter().zip(&keys_after) {
            assert_eq!(
                before.private_key_sealed, after.private_key_sealed,
                "{name}"
            );
            SigningKey::unseal(after, &master).unwrap();
        }
        let after = &b.store.webhooks().await.unwrap()[0];
        assert_eq!(after.secret_sealed, hook.secret_sealed, "{name}");
        assert_eq!(
            master
                .open(&h.kept_hook.to_string(), &after.secret_sealed)
                .unwrap(),
            b"whsec_test",
            "{name}"
        );
        assert_eq!(
            (
                after.delivered_position,
                after.failures,
                after.last_error.as_deref()
            ),
            (h.delivered, 1, Some("the subscriber answered HTTP 500")),
            "{name}"
        );
        assert_eq!(after.created_at, hook.created_at, "{name}");
        // API keys are found by their hash, which is kept beside the row, not in the log.
        let found = b.store.api_key(&h.kept_key.key()).await.unwrap().unwrap();
        assert!(found.revoked_at.is_none(), "{name}");
        let revoked = b
            .store
            .api_key(&h.revoked_key.key())
            .await
            .unwrap()
            .unwrap();
        assert!(revoked.revoked_at.is_some(), "{name}");
        let forged = ApiKey::new(h.kept_key.id(), [9; 32]);
        assert!(
            b.store.api_key(&forged.key()).await.unwrap().is_none(),
            "{name}"
        );

        let text: String = all_events(&b.store)
            .await
            .iter()
            .map(|e| format!("{}{}", e.data, e.metadata))
            .collect();
        let hex = sessiond::domain::token::hex;
        for k in &keys_after {
            let der = master.open(&k.kid, &k.private_key_sealed).unwrap();
            assert!(
                !text.contains(&hex(&der)),
                "{name}: a private key in the log"
            );
        }
        assert!(!text.contains("whsec_test"), "{name}");
        for key in [&h.kept_key, &h.revoked_key] {
            assert!(
                !text.contains(&hex(&key.hash().0)),
                "{name}: a key hash in the log"
            );
            assert!(!text.contains(key.expose()), "{name}");
        }
    }
}
