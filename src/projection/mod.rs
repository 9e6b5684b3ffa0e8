//! Inline projections: the users, sessions and refresh_tokens tables, and the signing keys, API
//! keys and webhook subscriptions. They change only here, through the domain's `evolve`, both
//! live (in the transaction that appends the events) and in a rebuild from position 0, so the
//! two cannot drift apart. (What must not enter the log, secrets and delivery checkpoints, is
//! written by the commands beside their events and is no projection: a rebuild leaves it.)

use crate::domain::Timestamp;
use crate::domain::client;
use crate::domain::event::Event;
use crate::domain::keys;
use crate::domain::notice;
use crate::domain::session::{self, Session};
use crate::domain::throttle::throttle_keys;
use crate::domain::user::{self, User};
use crate::domain::verdict;
use crate::domain::webhook;
use crate::store::{ReplayedEvent, Store, StoreError, TokenRecord, UnitOfWork, WriteSession};

/// Applies events just appended to one session stream.
pub async fn apply_session<U: UnitOfWork>(
    uow: &mut U,
    before: Option<Session>,
    events: &[Event],
    at: Timestamp,
) -> Result<Option<Session>, StoreError> {
    let mut state = before;
    for event in events {
        state = session::evolve(state, event, at);
        apply_code(uow, event, at).await?;
        if let Some((session_id, key, generation)) = session::issued_token(event) {
            uow.put_token(
                &key,
                TokenRecord {
                    session_id,
                    generation,
                },
                at,
            )
            .await?;
        }
    }
    if let Some(s) = &state {
        uow.put_session(s).await?;
    }
    Ok(state)
}

/// The authorization-code projection: a code's row from its issue, marked when redeemed.
async fn apply_code<U: UnitOfWork>(
    uow: &mut U,
    event: &Event,
    at: Timestamp,
) -> Result<(), StoreError> {
    match event {
        Event::AuthorizationCodeIssued(code) => uow.put_authorization_code(code).await,
        Event::AuthorizationCodeRedeemed(r) => {
            if let Some(mut code) = uow.authorization_code(r.code_id).await? {
                code.redeemed_at.get_or_insert(at);
                uow.put_authorization_code(&code).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Applies events just appended to one user stream.
pub async fn apply_user<U: UnitOfWork>(
    uow: &mut U,
    before: Option<User>,
    events: &[Event],
    at: Timestamp,
) -> Result<Option<User>, StoreError> {
    let state = events.iter().fold(before, |s, e| user::evolve(s, e, at));
    if let Some(u) = &state {
        uow.put_user(u).await?;
    }
    for event in events {
        apply_notice(uow, event, at).await?;
    }
    Ok(state)
}

/// The notices and exceptions projections: a notice's row from its creation, changed by the
/// user's answer; an exception's row from `exception.added`.
async fn apply_notice<U: UnitOfWork>(
    uow: &mut U,
    event: &Event,
    at: Timestamp,
) -> Result<(), StoreError> {
    if let Event::ExceptionAdded(e) = event {
        return uow.put_exception(e).await;
    }
    let Some(id) = notice::notice_of(event) else {
        return Ok(());
    };
    let before = match event {
        Event::NoticeCreated(_) => None,
        _ => uow.notice(id).await?,
    };
    if let Some(n) = notice::evolve_notice(before, event, at) {
        uow.put_notice(&n).await?;
    }
    Ok(())
}

/// The alerts projection (migration 0019): a row per rule receipt, keyed by its position (how
/// `/v1/admin/alerts` names an alert), and the analyst's verdict on it. Live and in a rebuild.
pub async fn apply_alert<U: UnitOfWork>(
    uow: &mut U,
    position: i64,
    stream_id: &str,
    event: &Event,
    at: Timestamp,
) -> Result<(), StoreError> {
    match event {
        Event::RuleFired(r) => {
            let Some(receipt_id) = crate::domain::event::receipt_of(stream_id) else {
                return Ok(());
            };
            let alert = verdict::Alert {
                position,
                receipt_id,
                rule_id: r.rule_id.clone(),
                user_id: r.user_id,
                judged: None,
            };
            uow.put_alert(&alert).await
        }
        Event::AlertVerdictRecorded(v) => {
            if let Some(mut alert) = uow.alert_at(v.position).await? {
                alert.judged = Some(verdict::Judged {
                    verdict: v.verdict,
                    recorded_at: at,
                    exception_id: v.exception_id,
                });
                uow.put_alert(&alert).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The login-throttle projection: a `login.failed` counts once under each throttle key of its
/// name and address (nothing for any other event). Live and in a rebuild.
pub async fn apply_throttle<U: UnitOfWork>(
    uow: &mut U,
    event: &Event,
    at: Timestamp,
) -> Result<(), StoreError> {
    // A failure whose name was erased or expired counts no more (an erasure deletes its rows).
    if let Event::LoginFailed(f) = event
        && f.username != crate::domain::event::ERASED_MARKER
        && f.username != crate::domain::event::EXPIRED_MARKER
    {
        let keys: Vec<String> = throttle_keys(&f.username, f.context.ip)
            .into_iter()
            .map(|(_, key)| key)
            .collect();
        uow.put_login_failures(&keys, at).await?;
    }
    Ok(())
}

/// Applies an event of a signing key's, an API key's or a webhook subscription's stream to its
/// row; false (and nothing done) for any other event.
pub async fn apply_registry<U: UnitOfWork>(
    uow: &mut U,
    event: &Event,
    at: Timestamp,
) -> Result<bool, StoreError> {
    if let Some(kid) = keys::signing_key_of(event) {
        let before = uow
            .signing_key_records()
            .await?
            .into_iter()
            .find(|k| k.kid == kid);
        if let Some(k) = keys::evolve_signing_key(before, event, at) {
            uow.put_signing_key(&k).await?;
        }
    } else if let Some(id) = keys::api_key_of(event) {
        let before = uow.api_key_record(id).await?;
        if let Some(k) = keys::evolve_api_key(before, event, at) {
            uow.put_api_key(&k).await?;
        }
    } else if let Some(id) = client::client_of(event) {
        let before = uow.client_record(id).await?;
        match client::evolve(before, event, at) {
            Some(c) => uow.put_client(&c, at).await?,
            None => uow.delete_client(id).await?,
        }
    } else if let Some(id) = webhook::subscription_of(event) {
        let before = uow.webhook_record(id).await?;
        match webhook::evolve(before, event, at) {
            Some(w) => uow.put_webhook(&w).await?,
            None => uow.delete_webhook(id).await?,
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// `sessiond projections rebuild`: empties every inline projection of `store` and replays the
/// whole log into them, in one transaction, on a write connection of its own. Returns the
/// number of events replayed.
pub async fn rebuild_projections(store: &Store) -> Result<u64, StoreError> {
    match store {
        Store::Sqlite(s) => rebuild(&mut s.write_session().await?, store).await,
        Store::Postgres(p) => rebuild(&mut p.write_session().await?, store).await,
    }
}

/// Empties the projections and replays the log into them, in one transaction. Returns the
/// number of events replayed.
pub async fn rebuild<W: WriteSession>(ws: &mut W, store: &Store) -> Result<u64, StoreError> {
    ws.begin(&[]).await?;
    match replay_all(ws, store).await {
        Ok(n) => {
            ws.commit().await?;
            Ok(n)
        }
        Err(e) => {
            ws.rollback().await?;
            Err(e)
        }
    }
}

/// Replays the whole log of `source` into the projections of `scratch`, an empty store of the
/// same backend, committing after every page: a scratch copy needs no single transaction, and
/// on PostgreSQL each commit lets the live writers (whose append lock it shares) go on.
pub async fn replay_into<W: WriteSession>(
    scratch: &mut W,
    source: &Store,
) -> Result<u64, StoreError> {
    scratch.begin(&[]).await?;
    match replay_pages(scratch, source, true).await {
        Ok(n) => {
            scratch.commit().await?;
            Ok(n)
        }
        Err(e) => {
            scratch.rollback().await?;
            Err(e)
        }
    }
}

async fn replay_all<W: WriteSession>(ws: &mut W, store: &Store) -> Result<u64, StoreError> {
    replay_pages(ws, store, false).await
}

/// Events per page of a replay.
const REPLAY_PAGE: i64 = 2000;
/// Pages of a replay read at once, each read, opened and decoded on a task of its own: the
/// opening (AEAD and JSON) costs more than applying, so a rebuild keeps both cores on it while
/// the pages are applied in order.
const PAGES_AHEAD: usize = 3;

/// The events after position `after` (and before `before`, if given), at most a page, read and
/// decoded on a task of its own.
fn read_page(
    store: &Store,
    after: i64,
    before: Option<i64>,
) -> tokio::task::JoinHandle<Result<Vec<ReplayedEvent>, StoreError>> {
    let store = store.clone();
    tokio::spawn(async move { store.replay_page(after, before, REPLAY_PAGE).await })
}

async fn joined(
    page: tokio::task::JoinHandle<Result<Vec<ReplayedEvent>, StoreError>>,
) -> Result<Vec<ReplayedEvent>, StoreError> {
    match page.await {
        Ok(page) => page,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn replay_pages<W: WriteSession>(
    ws: &mut W,
    store: &Store,
    commit_each_page: bool,
) -> Result<u64, StoreError> {
    ws.clear_projections().await?;
    // Up to the head known now, the log is read as ranges of positions, several at once (a
    // range may hold fewer events than a page where positions have gaps); after it, page by
    // page until one comes back empty, so a source that grew meanwhile is replayed whole.
    let head = store.head().await?.position;
    let mut planned = 0;
    let mut ahead = std::collections::VecDeque::new();
    let mut replayed = 0;
    loop {
        while ahead.len() < PAGES_AHEAD && planned < head {
            let to = (planned + REPLAY_PAGE).min(head);
            ahead.push_back(read_page(store, planned, Some(to + 1)));
            planned = to;
        }
        let page = match ahead.pop_front() {
            Some(range) => joined(range).await?,
            None => {
                let page = joined(read_page(store, planned, None)).await?;
                let Some(last) = page.last() else { break };
                planned = last.position;
                page
            }
        };
        for r in &page {
            let (event, at) = (&r.event, r.at);
            apply_throttle(ws, event, at).await?;
            apply_alert(ws, r.position, &r.stream_id, event, at).await?;
            ws.index_address(r).await?;
            // Each event lands on exactly one stream: a session's, a user's, a key's or a
            // subscription's (or none of them); a retention prune is replayed where it happened,
            // so pruned rows stay pruned.
            if let Event::RetentionPruned(p) = event {
                ws.prune_ended_before(p.ended_before).await?;
            } else if let Some(id) = session::session_of(event) {
                let before = ws.session(id).await?;
                apply_session(ws, before, std::slice::from_ref(event), at).await?;
            } else if let Some(id) = user::user_of(event) {
                let before = ws.user_by_id(id).await?;
                apply_user(ws, before, std::slice::from_ref(event), at).await?;
            } else {
                apply_registry(ws, event, at).await?;
            }
            replayed += 1;
        }
        if commit_each_page {
            ws.commit().await?;
            ws.begin(&[]).await?;
        }
    }
    Ok(replayed)
}
