//! Appending a command's events and applying them to the inline projections: the part every
//! handler shares, and the only way events reach the log.

use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, EventMetadata, RevokeReason, session_stream, user_stream};
use crate::domain::session::Session;
use crate::domain::user::User;
use crate::projection;
use crate::store::{NewEvent, RecordedEvent, StoreError, UnitOfWork};
use uuid::Uuid;

pub(super) async fn load_session<U: UnitOfWork>(
    uow: &mut U,
    session_id: Uuid,
) -> Result<Session, StoreError> {
    uow.session(session_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("token of unknown session {session_id}")))
}

/// Revokes every active session of `user_id` but `except`; returns the ids it ended.
pub(super) async fn end_sessions<U: UnitOfWork>(
    uow: &mut U,
    user_id: Uuid,
    except: Option<Uuid>,
    reason: RevokeReason,
    context: Option<&RequestContext>,
    meta: &EventMetadata,
    now: Timestamp,
) -> Result<Vec<Uuid>, StoreError> {
    let mut ended = Vec::new();
    for s in uow.active_sessions_of(user_id).await? {
        if Some(s.session_id) == except {
            continue;
        }
        let id = s.session_id;
        let events = s.decide_revoke(reason, context);
        if !events.is_empty() {
            ended.push(id);
        }
        record_session(uow, Some(s), id, events, meta, now).await?;
    }
    Ok(ended)
}

pub(super) async fn append_all<U: UnitOfWork>(
    uow: &mut U,
    stream_id: &str,
    mut version: i64,
    events: Vec<Event>,
    meta: &EventMetadata,
    now: Timestamp,
) -> Result<(), StoreError> {
    for event in events {
        uow.append(NewEvent {
            stream_id: stream_id.to_owned(),
            expected_version: version,
            event,
            metadata: meta.clone(),
            occurred_at: now,
        })
        .await?;
        version += 1;
    }
    Ok(())
}

/// Appends to a session stream and brings the session projection along.
pub(super) async fn record_session<U: UnitOfWork>(
    uow: &mut U,
    before: Option<Session>,
    session_id: Uuid,
    events: Vec<Event>,
    meta: &EventMetadata,
    now: Timestamp,
) -> Result<Option<Session>, StoreError> {
    if events.is_empty() {
        return Ok(before);
    }
    let version = before.as_ref().map_or(0, |s| s.version);
    append_all(
        uow,
        &session_stream(session_id),
        version,
        events.clone(),
        meta,
        now,
    )
    .await?;
    projection::apply_session(uow, before, &events, now).await
}

/// Appends to a user stream and brings the user projection along.
pub(super) async fn record_user<U: UnitOfWork>(
    uow: &mut U,
    before: Option<User>,
    user_id: Uuid,
    events: Vec<Event>,
    meta: &EventMetadata,
    now: Timestamp,
) -> Result<Option<User>, StoreError> {
    let version = before.as_ref().map_or(0, |u| u.version);
    append_all(
        uow,
        &user_stream(user_id),
        version,
        events.clone(),
        meta,
        now,
    )
    .await?;
    projection::apply_user(uow, before, &events, now).await
}

/// Appends to a signing key's, an API key's or a webhook subscription's stream (at its current
/// version) and brings its row along. `at` is the events' `occurred_at` (the command's `now`,
/// except for history adopted into the log).
pub(super) async fn record_registry<U: UnitOfWork>(
    uow: &mut U,
    stream_id: &str,
    events: Vec<Event>,
    meta: &EventMetadata,
    at: Timestamp,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut version = uow.stream_version(stream_id).await?;
    let mut recorded = Vec::with_capacity(events.len());
    for event in events {
        recorded.push(
            uow.append(NewEvent {
                stream_id: stream_id.to_owned(),
                expected_version: version,
                event: event.clone(),
                metadata: meta.clone(),
                occurred_at: at,
            })
            .await?,
        );
        version += 1;
        projection::apply_registry(uow, &event, at).await?;
    }
    Ok(recorded)
}
