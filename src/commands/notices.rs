//! Sign-in notices (issue 15, point 4): told after a login that is news to its user, and the
//! user's answer: "this was me" (an exception) or "this wasn't me" (every session ends and
//! the password must change).

use super::judge::usual_tags;
use super::recording::{end_sessions, record_user};
use super::{Command, Context};
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, RevokeReason};
use crate::domain::notice::{
    self, ExceptionAdded, ExceptionCause, Known, Login, NoticeAnswered, NoticeStatus, Sighting,
};
use crate::domain::{Duration, Timestamp};
use crate::metrics::count_revocations;
use crate::store::{StoreError, UnitOfWork};
use metrics::counter;
use uuid::Uuid;

/// The tag every login known to its user leaves: the user has a sign-in history.
const SIGNED_IN: &str = "signin";

/// Decides, after a login that stands, whether it is news to the user, and records the
/// notice if so. What the user is known by (device classes and countries of earlier logins
/// that were no news) is kept among the usual networks, as keyed tags.
pub(super) async fn notice_login<U: UnitOfWork>(
    uow: &mut U,
    cx: &Context<'_>,
    user_id: Uuid,
    session_id: Uuid,
    context: &RequestContext,
    window: Duration,
) -> Result<(), StoreError> {
    let networks: Vec<String> = usual_tags(cx.rules, context)
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    let device_tag =
        notice::device_class(context).map(|d| format!("device:{}", cx.rules.tag(&d.key())));
    let place_tag = notice::country(context).map(|c| format!("place:{}", cx.rules.tag(&c)));
    // What the user is known by, in one read; an absent value counts as known: there is
    // nothing new to tell.
    let tags: Vec<&str> = [Some(SIGNED_IN), device_tag.as_deref(), place_tag.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let seen = uow
        .usual_networks_seen(user_id, &tags, Timestamp::UNIX_EPOCH)
        .await?;
    let known_by = |tag: Option<&str>| tag.is_none_or(|t| seen.iter().any(|s| s == t));
    let known = Known {
        any: known_by(Some(SIGNED_IN)),
        device: known_by(device_tag.as_deref()),
        country: known_by(place_tag.as_deref()),
    };
    let recent = uow.recent_notices(user_id, cx.now - window).await?;
    let exceptions = uow.live_exceptions(user_id, cx.now).await?;
    let login = Login {
        user_id,
        session_id,
        notice_id: Uuid::new_v4(),
        context,
        networks,
        now: cx.now,
    };
    match notice::decide_notice(login, known, &recent, &exceptions) {
        Sighting::Known => uow.put_usual_networks(user_id, &tags, cx.now).await?,
        Sighting::Excepted | Sighting::AlreadyNoticed => {}
        Sighting::Notice(n) => {
            let user = uow.user_by_id(user_id).await?;
            record_user(
                uow,
                user,
                user_id,
                vec![Event::NoticeCreated(*n)],
                cx.meta,
                cx.now,
            )
            .await?;
            counter!(crate::metrics::NOTICES, "event" => "created").increment(1);
        }
    }
    Ok(())
}

/// Why an answer to a notice was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerRefusal {
    /// No notice has this id, or it is another user's.
    UnknownNotice,
    /// The notice was answered before.
    AlreadyAnswered,
    /// "This was me" from the session the notice is about: a sign-in cannot vouch for itself
    /// (whoever holds a stolen password would confirm their own login).
    OwnSession,
}

/// "This was me": the notice is confirmed and its device class and networks become an
/// exception for the user until `lifetime` has passed.
#[derive(Debug, Clone)]
pub struct ConfirmNotice {
    pub user_id: Uuid,
    pub notice_id: Uuid,
    /// The session the answer comes from.
    pub from_session: Uuid,
    pub lifetime: Duration,
}

impl Command for ConfirmNotice {
    /// The exception added, if the notice named a network to add it for.
    type Reply = Result<Option<ExceptionAdded>, AnswerRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let n = match open_notice(uow, self.user_id, self.notice_id).await? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if n.session_id == self.from_session {
            return Ok(Err(AnswerRefusal::OwnSession));
        }
        // Without a network the exception would cover every network: none is added.
        let exception = (!n.networks.is_empty()).then(|| ExceptionAdded {
            exception_id: Uuid::new_v4(),
            user_id: n.user_id,
            rule_id: None,
            device: n.device.clone(),
            networks: n.networks.clone(),
            expires_at: cx.now + self.lifetime,
            cause: ExceptionCause::Notice(n.notice_id),
        });
        let mut events = vec![Event::NoticeConfirmed(NoticeAnswered {
            notice_id: n.notice_id,
            user_id: n.user_id,
            session_id: n.session_id,
            exception_id: exception.as_ref().map(|e| e.exception_id),
            sessions: Vec::new(),
        })];
        events.extend(exception.clone().map(Event::ExceptionAdded));
        let user = uow.user_by_id(self.user_id).await?;
        record_user(uow, user, self.user_id, events, cx.meta, cx.now).await?;
        Ok(Ok(exception))
    }

    fn observe(&self, reply: &Self::Reply) {
        if reply.is_ok() {
            counter!(crate::metrics::NOTICES, "event" => "confirmed").increment(1);
        }
    }
}

/// "This wasn't me": every session of the user ends (the noticed one with them), and no login
/// yields a session until the password has changed.
#[derive(Debug, Clone)]
pub struct DenyNotice {
    pub user_id: Uuid,
    pub notice_id: Uuid,
    pub context: Option<RequestContext>,
}

impl Command for DenyNotice {
    /// The sessions it ended.
    type Reply = Result<Vec<Uuid>, AnswerRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let n = match open_notice(uow, self.user_id, self.notice_id).await? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let context = self.context.as_ref();
        let ended = end_sessions(
            uow,
            self.user_id,
            None,
            RevokeReason::LogoutEverywhere,
            context,
            cx.meta,
            cx.now,
        )
        .await?;
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(AnswerRefusal::UnknownNotice));
        };
        let events = vec![
            Event::NoticeDenied(NoticeAnswered {
                notice_id: n.notice_id,
                user_id: n.user_id,
                session_id: n.session_id,
                exception_id: None,
                sessions: ended.clone(),
            }),
            user.decide_logout_everywhere(ended.clone(), context),
        ];
        record_user(uow, Some(user), self.user_id, events, cx.meta, cx.now).await?;
        Ok(Ok(ended))
    }

    fn observe(&self, reply: &Self::Reply) {
        if let Ok(ended) = reply {
            counter!(crate::metrics::NOTICES, "event" => "denied").increment(1);
            count_revocations(RevokeReason::LogoutEverywhere, ended.len());
        }
    }
}

/// The user's own notice, not answered yet.
async fn open_notice<U: UnitOfWork>(
    uow: &mut U,
    user_id: Uuid,
    notice_id: Uuid,
) -> Result<Result<notice::Notice, AnswerRefusal>, StoreError> {
    Ok(match uow.notice(notice_id).await? {
        Some(n) if n.user_id == user_id && n.status == NoticeStatus::Open => Ok(n),
        Some(n) if n.user_id == user_id => Err(AnswerRefusal::AlreadyAnswered),
        _ => Err(AnswerRefusal::UnknownNotice),
    })
}
