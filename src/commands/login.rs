//! Registration, a session's start after a proven password, and a failed login.

use super::dpop::CheckedProof;
use super::effects::{Outcome, OutcomeKind, Target, carry_out};
use super::judge::judge;
use super::notices::notice_login;
use super::recording::{append_all, record_user};
use super::{Command, Context};
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, LoginFailure, LoginThrottled, login_attempt_stream};
use crate::domain::notice;
use crate::domain::session::{self, Session};
use crate::domain::throttle::ThrottleScope;
use crate::domain::token::TokenKey;
use crate::domain::user::{self, User, UserError};
use crate::projection;
use crate::rules::{Facts, Trigger};
use crate::store::{StoreError, UnitOfWork};
use metrics::counter;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Register {
    pub user_id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub context: RequestContext,
    pub email: Option<String>,
}

impl Command for Register {
    type Reply = Result<User, UserError>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let name = match user::normalize_username(&self.username) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let taken = uow.user_by_name(&name).await?.is_some();
        let register = user::Register {
            user_id: self.user_id,
            username: name,
            password_hash: self.password_hash,
            roles: self.roles,
            context: self.context,
            email: self.email,
        };
        let event = match user::decide_register(register, taken) {
            Ok(event) => event,
            Err(e) => return Ok(Err(e)),
        };
        let user = record_user(uow, None, self.user_id, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(user.expect("registration creates the user")))
    }
}

/// Starts a session for a user whose password the caller has checked.
#[derive(Debug, Clone)]
pub struct StartSession {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub scope: String,
    pub roles: Vec<String>,
    pub token: TokenKey,
    pub context: RequestContext,
    /// The stored hash the password was verified against, outside the writer. A password change
    /// that commits between that check and this command makes it stale, and the writer refuses
    /// the start: the change promised to end every session the old password opened.
    pub verified_password_hash: String,
    /// A DPoP proof sent with the login: the family is bound to its key.
    pub dpop: Option<CheckedProof>,
    /// The OAuth client the session is started for (`/oauth/authorize`).
    pub client_id: Option<String>,
    /// When the password was proven, if earlier than now (a browser's sign-in reused for
    /// another client); the session's `auth_time`.
    pub auth_time: Option<crate::domain::Timestamp>,
    /// Sign-in notices: at most one per new device class or country in this window.
    pub notice_window: crate::domain::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefusal {
    UnknownUser,
    Locked,
    /// The password changed after it was checked for this login.
    StalePassword,
    /// A rule refused the login.
    Denied,
    /// The DPoP proof's `jti` was seen before.
    ProofReplayed,
    /// The user said "this wasn't me" to a sign-in notice: the password must change first.
    PasswordChangeRequired,
}

impl Command for StartSession {
    type Reply = Result<Session, StartRefusal>;
    const FOLLOWS_PASSWORD: bool = true;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(user) = uow.user_by_id(self.user_id).await? else {
            return Ok(Err(StartRefusal::UnknownUser));
        };
        if !user.can_log_in() {
            return Ok(Err(StartRefusal::Locked));
        }
        if !user.still_has_password(&self.verified_password_hash) {
            counter!(crate::metrics::LOGINS, "outcome" => "stale_password").increment(1);
            return Ok(Err(StartRefusal::StalePassword));
        }
        if notice::password_change_required(
            uow.last_denial(self.user_id).await?,
            user.password_changed_at,
        ) {
            return Ok(Err(StartRefusal::PasswordChangeRequired));
        }
        if let Some(p) = &self.dpop
            && !uow.claim_dpop_jti(&p.jti_hash, p.expires_at).await?
        {
            return Ok(Err(StartRefusal::ProofReplayed));
        }
        let facts = Facts {
            trigger: Trigger::SessionStarted,
            now: cx.now,
            user_id: Some(self.user_id),
            username: Some(&user.username),
            session_id: Some(self.session_id),
            context: &self.context,
            session_login: None,
            session_last: None,
        };
        let judgement = judge(uow, cx.rules, &facts).await?;
        let session_id = self.session_id;
        let user_id = self.user_id;
        let login_context = self.context.clone();
        let start = session::StartSession {
            session_id,
            user_id,
            scope: self.scope,
            roles: self.roles,
            token: self.token,
            context: self.context,
            dpop_jkt: self.dpop.map(|p| p.jkt),
            client_id: self.client_id,
            auth_time: self.auth_time,
        };
        let outcome = Outcome {
            kind: OutcomeKind::Grant,
            target: Target::Session {
                session_id,
                before: None,
            },
            events: vec![session::start(start, cx.now, cx.policy)],
        };
        let carried = carry_out(uow, outcome, judgement, Some(user_id), cx).await?;
        if carried.refusal.is_some() {
            return Ok(Err(StartRefusal::Denied));
        }
        notice_login(
            uow,
            cx,
            user_id,
            session_id,
            &login_context,
            self.notice_window,
        )
        .await?;
        Ok(Ok(carried.session.expect("a started session exists")))
    }

    fn observe(&self, reply: &Self::Reply) {
        if reply.is_err() {
            return;
        }
        counter!(crate::metrics::LOGINS, "outcome" => "success").increment(1);
        // Countries are a bounded set (ISO codes); anything else would be a new series each.
        let country = self
            .context
            .geo
            .as_ref()
            .and_then(|g| g.country.as_deref())
            .filter(|c| c.len() == 2 && c.chars().all(|c| c.is_ascii_uppercase()))
            .unwrap_or("unknown");
        counter!(crate::metrics::LOGIN_COUNTRIES, "country" => country.to_owned()).increment(1)
    }
}

/// Records a failed login (an unknown name, a wrong password, a locked account).
#[derive(Debug, Clone)]
pub struct RecordLoginFailure {
    pub username: String,
    pub reason: LoginFailure,
    pub context: RequestContext,
}

impl Command for RecordLoginFailure {
    type Reply = ();
    const FOLLOWS_PASSWORD: bool = true;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let user = uow.user_by_name(&self.username).await?;
        let user_id = user.as_ref().map(|u| u.user_id);
        let event = user::login_failed(&self.username, user.as_ref(), self.reason, &self.context);
        // The throttle's counters move in the same transaction as the event.
        projection::apply_throttle(uow, &event, cx.now).await?;
        let facts = Facts {
            trigger: Trigger::LoginFailed,
            now: cx.now,
            user_id,
            username: Some(&self.username),
            session_id: None,
            context: &self.context,
            session_login: None,
            session_last: None,
        };
        let judgement = judge(uow, cx.rules, &facts).await?;
        let target = match user {
            Some(u) => Target::User {
                user_id: u.user_id,
                before: Some(u),
            },
            None => Target::NewStream(login_attempt_stream(Uuid::new_v4())),
        };
        let outcome = Outcome {
            kind: OutcomeKind::Fact,
            target,
            events: vec![event],
        };
        carry_out(uow, outcome, judgement, user_id, cx).await?;
        Ok(())
    }

    fn observe(&self, _reply: &()) {
        let outcome = match self.reason {
            LoginFailure::UnknownUser => "unknown_user",
            LoginFailure::BadPassword => "bad_password",
            LoginFailure::Locked => "locked",
        };
        counter!(crate::metrics::LOGINS, "outcome" => outcome).increment(1)
    }
}

/// Records an attempt the login throttle refused (no password was checked).
#[derive(Debug, Clone)]
pub struct RecordLoginThrottled {
    pub username: String,
    pub scopes: Vec<ThrottleScope>,
    pub retry_after_seconds: u64,
    pub context: RequestContext,
}

impl Command for RecordLoginThrottled {
    type Reply = ();

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let user = uow.user_by_name(&self.username).await?;
        let event = Event::LoginThrottled(LoginThrottled {
            username: self.username,
            user_id: user.as_ref().map(|u| u.user_id),
            scopes: self.scopes,
            retry_after_seconds: self.retry_after_seconds,
            context: self.context,
        });
        match user {
            Some(u) => {
                let user_id = u.user_id;
                record_user(uow, Some(u), user_id, vec![event], cx.meta, cx.now).await?;
            }
            None => {
                let stream = login_attempt_stream(Uuid::new_v4());
                append_all(uow, &stream, 0, vec![event], cx.meta, cx.now).await?;
            }
        }
        Ok(())
    }

    fn observe(&self, _reply: &()) {
        counter!(crate::metrics::LOGINS, "outcome" => "throttled").increment(1);
        for scope in &self.scopes {
            counter!(crate::metrics::LOGIN_THROTTLED, "scope" => scope.as_str()).increment(1);
        }
    }
}
