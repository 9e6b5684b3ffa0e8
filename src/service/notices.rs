//! Sign-in notices as their user sees and answers them (`/v1/me/notices`).

use super::{Principal, Sessiond, meta};
use crate::commands::{AnswerRefusal, ConfirmNotice, DenyNotice};
use crate::domain::context::RequestContext;
use crate::domain::event::Actor;
use crate::domain::format_timestamp;
use crate::domain::notice::{DeviceClass, Notice, NoticeReason};
use crate::error::Error;
use serde::Serialize;
use uuid::Uuid;

/// Notices listed at most (the newest).
const LIST_MAX: i64 = 100;

#[derive(Debug, Serialize)]
pub struct NoticeView {
    pub notice_id: Uuid,
    pub session_id: Uuid,
    /// `new_device`, `new_country`.
    pub reasons: Vec<NoticeReason>,
    pub device: Option<DeviceClass>,
    pub place: PlaceView,
    pub created_at: String,
    /// `open`, `confirmed` ("this was me"), `denied` ("this wasn't me").
    pub status: &'static str,
    pub answered_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PlaceView {
    pub country: Option<String>,
}

impl NoticeView {
    fn of(n: Notice) -> Self {
        NoticeView {
            notice_id: n.notice_id,
            session_id: n.session_id,
            reasons: n.reasons,
            device: n.device,
            place: PlaceView { country: n.country },
            created_at: format_timestamp(n.created_at),
            status: n.status.as_str(),
            answered_at: n.answered_at.map(format_timestamp),
        }
    }
}

fn refusal(e: AnswerRefusal) -> Error {
    match e {
        // Someone else's notice is as unknown as no notice.
        AnswerRefusal::UnknownNotice => Error::NotFound,
        AnswerRefusal::AlreadyAnswered => Error::Conflict(
            "notice_answered",
            "this notice has been answered already".into(),
        ),
        AnswerRefusal::OwnSession => Error::Forbidden(
            "notice_own_session",
            "a sign-in cannot vouch for itself: answer \"this was me\" from another signed-in device"
                .into(),
        ),
    }
}

impl Sessiond {
    /// The caller's sign-in notices, newest first.
    pub async fn my_notices(&self, principal: &Principal) -> Result<Vec<NoticeView>, Error> {
        let notices = self.store.notices_of(principal.user_id(), LIST_MAX).await?;
        Ok(notices.into_iter().map(NoticeView::of).collect())
    }

    /// "This was me": returns when the exception added for the notice's device and network
    /// expires (`None` when the notice named no network to except).
    pub async fn confirm_notice(
        &self,
        principal: &Principal,
        notice_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<String>, Error> {
        let cmd = ConfirmNotice {
            user_id: principal.user_id(),
            notice_id,
            from_session: principal.session.session_id,
            lifetime: self.config.notice_exception_lifetime,
        };
        let reply = self
            .writer
            .submit(cmd, meta(Actor::User(principal.user_id()), ctx))
            .await?;
        let exception = reply.map_err(refusal)?;
        Ok(exception.map(|e| format_timestamp(e.expires_at)))
    }

    /// "This wasn't me": every session of the caller ends, this one included, and the next
    /// login needs a new password. Returns the sessions ended.
    pub async fn deny_notice(
        &self,
        principal: &Principal,
        notice_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Vec<Uuid>, Error> {
        let cmd = DenyNotice {
            user_id: principal.user_id(),
            notice_id,
            context: Some(ctx.clone()),
        };
        let reply = self
            .writer
            .submit(cmd, meta(Actor::User(principal.user_id()), ctx))
            .await?;
        reply.map_err(refusal)
    }
}
