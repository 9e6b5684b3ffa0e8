//! Ending sessions (logout, revocation, logout everywhere, a lock, a password change, expiry),
//! stepping one up, and retention.

use super::recording::{append_all, end_sessions, load_session, record_session, record_user};
use super::{Command, Context};
use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, RETENTION_STREAM, RetentionPruned, RevokeReason};
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::metrics::count_revocations;
use crate::store::{PruneCounts, StoreError, UnitOfWork};
use uuid::Uuid;

/// No session has this id (or it is another user's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSession;

/// No refresh token is this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownUser;

/// Records the events that end `session`; true if they did end it (false if it had ended).
async fn end_one<U: UnitOfWork>(
    uow: &mut U,
    session: Session,
    events: Vec<Event>,
    cx: &Context<'_>,
) -> Result<bool, StoreError> {
    let id = session.session_id;
    let ended = !events.is_empty();
    record_session(uow, Some(session), id, events, cx.meta, cx.now).await?;
    Ok(ended)
}

/// Ends one session. With `owner`, only if the session belongs to that user.
#[derive(Debug, Clone)]
pub struct EndSession {
    pub session_id: Uuid,
    pub owner: Option<Uuid>,
    pub reason: RevokeReason,
    pub context: Option<RequestContext>,
}

impl Command for EndSession {
    /// Whether this command ended it (false if it had already ended).
    type Reply = Result<bool, UnknownSession>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(session) = uow.session(self.session_id).await? else {
            return Ok(Err(UnknownSession));
        };
        if self.owner.is_some_and(|o| o != session.user_id) {
            return Ok(Err(UnknownSession));
        }
        let events = session.decide_revoke(self.reason, self.context.as_ref());
        Ok(Ok(end_one(uow, session, events, cx).await?))
    }

    fn observe(&self, reply: &Self::Reply) {
        count_revocations(self.reason, usize::from(*reply == Ok(true)));
    }
}

/// Ends the session a refresh token belongs to (logout by refresh token).
#[derive(Debug, Clone)]
pub struct EndSessionByToken {
    pub presented: TokenKey,
    pub context: RequestContext,
}

impl Command for EndSessionByToken {
    type Reply = Result<bool, UnknownToken>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(token) = uow.token(&self.presented).await? else {
            return Ok(Err(UnknownToken));
        };
        let session = load_session(uow, token.session_id).await?;
        let events = session.decide_revoke(RevokeReason::Logout, Some(&self.context));
        Ok(Ok(end_one(uow, session, events, cx).await?))
    }

    fn presented_token(&self) -> Option<&TokenKey> {
        Some(&self.presented)
    }

    fn observe(&self, reply: &Self::Reply) {
        count_revocations(RevokeReason::Logout, usize::from(*reply == Ok(true)));
    }
}

/// Ends every active session of a user but `except`.
#[derive(Debug, Clone)]
pub struct LogoutEverywhere {
    pub user_id: Uuid,
    pub except: Option<Uuid>,
    pub context: Option<RequestContext>,
}

impl Command for LogoutEverywhere {
    /// The sessions it ended.
    type Reply = Result<Vec<Uuid>, UnknownUser>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(UnknownUser));
        };
        let reason = RevokeReason::LogoutEverywhere;
        let context = self.context.as_ref();
        let ended = end_sessions(
            uow,
            self.user_id,
            self.except,
            reason,
            context,
            cx.meta,
            cx.now,
        )
        .await?;
        let event = user.decide_logout_everywhere(ended.clone(), context);
        record_user(uow, Some(user), self.user_id, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(ended))
    }

    fn observe(&self, reply: &Self::Reply) {
        let n = reply.as_ref().map_or(0, Vec::len);
        count_revocations(RevokeReason::LogoutEverywhere, n);
    }
}

/// Locks a user (every session ends, reason `admin`) or unlocks one.
#[derive(Debug, Clone)]
pub struct SetLock {
    pub user_id: Uuid,
    pub lock: bool,
    pub reason: String,
    pub context: Option<RequestContext>,
}

impl Command for SetLock {
    /// The sessions the lock ended.
    type Reply = Result<Vec<Uuid>, UnknownUser>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(UnknownUser));
        };
        let context = self.context.as_ref();
        let ended = if self.lock {
            let reason = RevokeReason::Admin;
            end_sessions(uow, self.user_id, None, reason, context, cx.meta, cx.now).await?
        } else {
            Vec::new()
        };
        let events = user.decide_lock(self.lock, &self.reason, context);
        record_user(uow, Some(user), self.user_id, events, cx.meta, cx.now).await?;
        Ok(Ok(ended))
    }

    fn observe(&self, reply: &Self::Reply) {
        count_revocations(RevokeReason::Admin, reply.as_ref().map_or(0, Vec::len));
    }
}

/// A new password hash (the caller checked the old password); every other session ends.
#[derive(Debug, Clone)]
pub struct ChangePassword {
    pub user_id: Uuid,
    pub password_hash: String,
    pub keep_session: Option<Uuid>,
    pub context: RequestContext,
}

impl Command for ChangePassword {
    /// The sessions the change ended.
    type Reply = Result<Vec<Uuid>, UnknownUser>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(UnknownUser));
        };
        let keep = self.keep_session;
        let event = user.decide_change_password(self.password_hash, keep, &self.context);
        record_user(uow, Some(user), self.user_id, vec![event], cx.meta, cx.now).await?;
        let reason = RevokeReason::PasswordChange;
        let context = Some(&self.context);
        let ended = end_sessions(uow, self.user_id, keep, reason, context, cx.meta, cx.now).await?;
        Ok(Ok(ended))
    }

    fn observe(&self, reply: &Self::Reply) {
        let n = reply.as_ref().map_or(0, Vec::len);
        count_revocations(RevokeReason::PasswordChange, n);
    }
}

/// Steps a session up: it must re-authenticate before it refreshes again.
#[derive(Debug, Clone)]
pub struct RequireReauth {
    pub session_id: Uuid,
    pub reason: String,
}

impl Command for RequireReauth {
    type Reply = Result<(), UnknownSession>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(session) = uow.session(self.session_id).await? else {
            return Ok(Err(UnknownSession));
        };
        let events = session.decide_require_reauth(&self.reason);
        record_session(uow, Some(session), self.session_id, events, cx.meta, cx.now).await?;
        Ok(Ok(()))
    }
}

/// Records expiry of a session whose lifetime ran out (the sweep).
#[derive(Debug, Clone)]
pub struct ExpireIfDue {
    pub session_id: Uuid,
}

impl Command for ExpireIfDue {
    /// Whether it expired now (false if it was not due or had ended).
    type Reply = Result<bool, UnknownSession>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(session) = uow.session(self.session_id).await? else {
            return Ok(Err(UnknownSession));
        };
        let events = session
            .expire::<()>(cx.now)
            .map(|d| d.events)
            .unwrap_or_default();
        Ok(Ok(end_one(uow, session, events, cx).await?))
    }
}

/// Retention: deletes the projection rows of sessions that ended before `ended_before` and
/// records `retention.pruned` when there were any.
#[derive(Debug, Clone)]
pub struct PruneEndedSessions {
    pub ended_before: Timestamp,
}

impl Command for PruneEndedSessions {
    type Reply = PruneCounts;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let counts = uow.prune_ended_before(self.ended_before).await?;
        if counts != PruneCounts::default() {
            let event = Event::RetentionPruned(RetentionPruned {
                ended_before: self.ended_before,
                sessions: counts.sessions,
                refresh_tokens: counts.refresh_tokens,
            });
            let version = uow.stream_version(RETENTION_STREAM).await?;
            append_all(uow, RETENTION_STREAM, version, vec![event], cx.meta, cx.now).await?;
        }
        Ok(counts)
    }
}
