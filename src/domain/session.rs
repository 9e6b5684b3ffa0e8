//! A session is one login on one device; its refresh-token family shares its id. This module
//! holds the session's state, the pure decisions over it and `evolve`, which is the only way the
//! state changes: the live projection and a rebuild both run through it.

use super::context::RequestContext;
use super::event::{
    DpopFault, Event, ExpiryKind, ReauthRequired, ReuseClass, RevokeReason, SessionExpired,
    SessionRevoked, SessionStarted,
};
use super::token::{TokenHash, TokenKey};
use super::{Duration, Timestamp};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    Revoked,
    Expired,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Revoked => "revoked",
            SessionStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SessionStatus::Active),
            "revoked" => Some(SessionStatus::Revoked),
            "expired" => Some(SessionStatus::Expired),
            _ => None,
        }
    }
}

/// Lifetimes and the grace rules a refresh is judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionPolicy {
    pub idle_lifetime: Duration,
    pub absolute_lifetime: Duration,
    pub grace_window: Duration,
    /// Retries (early and late) handed out per generation.
    pub max_grace_retries: u32,
    /// How long after a rotation a retry of the replaced token may still get its successor:
    /// past the grace window, a *late* retry (an answer the client lost). Not longer than the
    /// grace window turns late retries off.
    pub late_retry_window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub status: SessionStatus,
    pub scope: String,
    pub roles: Vec<String>,
    pub created_at: Timestamp,
    pub auth_time: Timestamp,
    pub last_seen_at: Timestamp,
    pub idle_expires_at: Timestamp,
    pub absolute_expires_at: Timestamp,
    /// The generation whose tokens are current.
    pub generation: u32,
    /// Retries (early and late) handed out within the current generation.
    pub retries: u32,
    /// When the current generation began, and the token whose use began it.
    pub rotated_at: Option<Timestamp>,
    pub rotated_from: Option<TokenHash>,
    /// The one token of the current generation (issued by the login or the rotation): what a
    /// retry of the token it replaced gets again. The family never has another live token.
    pub current_token: Option<TokenKey>,
    /// The generation whose token a late retry last handed out again: a late retry on the
    /// generation after it is reuse.
    pub late_retry_generation: Option<u32>,
    pub login_context: RequestContext,
    pub last_context: RequestContext,
    pub reauth_required: bool,
    pub ended_at: Option<Timestamp>,
    pub end_reason: Option<String>,
    /// The DPoP key thumbprint (RFC 7638) the family is bound to, from its start.
    pub dpop_jkt: Option<String>,
    /// The OAuth client the session was started for, from its start.
    pub client_id: Option<String>,
    /// Version of the session stream this state reflects.
    pub version: i64,
}

/// The authentication context class of a session whose user proved a password (RFC 9470
/// `acr`; OIDC Core `acr`). Every session starts, and every re-authentication happens, with the
/// password today: the one place to change when another factor arrives.
pub const PASSWORD_ACR: &str = "urn:sessiond:acr:pwd";
/// Its authentication methods (RFC 8176 `pwd`).
pub const PASSWORD_AMR: &[&str] = &["pwd"];

impl Session {
    /// How the session's user last authenticated: `acr` and `amr` for its tokens.
    pub fn authentication(&self) -> (&'static str, &'static [&'static str]) {
        (PASSWORD_ACR, PASSWORD_AMR)
    }
}

/// Why a request on a session is refused. The HTTP layer maps these to codes; the reasons are
/// for logs and tests, never for the client, which only learns `invalid_grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The family is revoked or expired.
    SessionEnded,
    /// The session just ran out of its idle or absolute lifetime.
    Expired(ExpiryKind),
    /// A spent token came back: the family is now revoked.
    Reuse(ReuseClass),
    /// A retry of the previous token, but the generation's retry allowance is used up.
    RetryLimit,
    /// A retry of the previous token whose successor cannot be handed out again (it was
    /// issued before successors were derived from the refresh-token secret).
    SuccessorUnavailable,
    /// The session must prove the password again before it may refresh.
    ReauthRequired,
    /// A security rule refused this request.
    Denied,
    /// A bound family's refresh without a valid proof by its key (recorded as a mismatch), or
    /// any refresh with an invalid proof.
    DpopProof(DpopFault),
    /// DPoP is required (`require_dpop`) and this family is not bound.
    DpopRequired,
}

/// What a request proved about a DPoP key, as the caller checked it (signature, method, URL,
/// time, nonce and, against the store, that its `jti` was never seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Possession {
    /// No proof was sent.
    Absent,
    /// A proof was sent and does not hold.
    Invalid(DpopFault),
    /// A valid proof, never seen before, by the key with this thumbprint.
    Key(String),
}

impl Possession {
    pub fn jkt(&self) -> Option<&str> {
        match self {
            Possession::Key(k) => Some(k),
            _ => None,
        }
    }
}

/// Events to append and the answer for the caller. A refusal can still carry events
/// (reuse revokes the family, a late refresh records the expiry).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<T> {
    pub events: Vec<Event>,
    pub outcome: Result<T, Refusal>,
}

pub struct StartSession {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub scope: String,
    pub roles: Vec<String>,
    pub token: TokenKey,
    pub context: RequestContext,
    /// The thumbprint of the key a DPoP proof of the login was signed with: binds the family.
    pub dpop_jkt: Option<String>,
    pub client_id: Option<String>,
    /// When the user proved who they are, if before now (a sign-in reused for another
    /// client); else now.
    pub auth_time: Option<Timestamp>,
}

pub fn start(cmd: StartSession, now: Timestamp, policy: &SessionPolicy) -> Event {
    let absolute_expires_at = now + policy.absolute_lifetime;
    Event::SessionStarted(SessionStarted {
        session_id: cmd.session_id,
        user_id: cmd.user_id,
        scope: cmd.scope,
        roles: cmd.roles,
        generation: 1,
        token_id: cmd.token.id,
        token_hash: cmd.token.hash,
        auth_time: cmd.auth_time.filter(|t| *t <= now).unwrap_or(now),
        idle_expires_at: (now + policy.idle_lifetime).min(absolute_expires_at),
        absolute_expires_at,
        context: cmd.context,
        dpop_jkt: cmd.dpop_jkt,
        client_id: cmd.client_id,
    })
}

impl Session {
    pub fn is_active(&self) -> bool {
        self.status == SessionStatus::Active
    }

    /// The lifetime that has run out at `now`, if any. Absolute wins when both have.
    pub fn expiry_due(&self, now: Timestamp) -> Option<(ExpiryKind, Timestamp)> {
        if !self.is_active() {
            None
        } else if now >= self.absolute_expires_at {
            Some((ExpiryKind::Absolute, self.absolute_expires_at))
        } else if now >= self.idle_expires_at {
            Some((ExpiryKind::Idle, self.idle_expires_at))
        } else {
            None
        }
    }

    fn next_idle_expiry(&self, now: Timestamp, policy: &SessionPolicy) -> Timestamp {
        (now + policy.idle_lifetime).min(self.absolute_expires_at)
    }

    /// Ends the session for `reason`. Ending an ended session changes nothing.
    pub fn decide_revoke(
        &self,
        reason: RevokeReason,
        context: Option<&RequestContext>,
    ) -> Vec<Event> {
        if !self.is_active() {
            return Vec::new();
        }
        vec![Event::SessionRevoked(SessionRevoked {
            session_id: self.session_id,
            reason,
            context: context.cloned(),
        })]
    }

    /// The password was proven again: the session may refresh again, and its `auth_time`
    /// moves. Through `/v1/auth/reauth` only the holder of the current generation can do it (a
    /// spent token is reuse, judged by refresh): `presented_generation` is its token's. Through
    /// an authorization request (`prompt=login`, `max_age`) the session is named by the caller
    /// that checked the user's password: `None`.
    pub fn decide_reauthenticate(
        &self,
        presented_generation: Option<u32>,
        context: &RequestContext,
        now: Timestamp,
    ) -> Decision<()> {
        if !self.is_active() {
            return refuse(Refusal::SessionEnded);
        }
        if let Some(expired) = self.expire(now) {
            return expired;
        }
        if presented_generation.is_some_and(|g| g != self.generation) {
            return refuse(Refusal::SessionEnded);
        }
        Decision {
            events: vec![Event::SessionReauthenticated(
                super::event::SessionReauthenticated {
                    session_id: self.session_id,
                    context: context.clone(),
                },
            )],
            outcome: Ok(()),
        }
    }

    pub fn decide_require_reauth(&self, reason: &str) -> Vec<Event> {
        if !self.is_active() || self.reauth_required {
            return Vec::new();
        }
        vec![Event::ReauthRequired(ReauthRequired {
            session_id: self.session_id,
            reason: reason.to_owned(),
        })]
    }

    /// The expiry to record if a lifetime has run out, for the refresh path and the sweep alike.
    pub fn expire<T>(&self, now: Timestamp) -> Option<Decision<T>> {
        let (kind, expired_at) = self.expiry_due(now)?;
        Some(Decision {
            events: vec![Event::SessionExpired(SessionExpired {
                session_id: self.session_id,
                kind,
                expired_at,
            })],
            outcome: Err(Refusal::Expired(kind)),
        })
    }
}

fn refuse<T>(refusal: Refusal) -> Decision<T> {
    Decision {
        events: Vec::new(),
        outcome: Err(refusal),
    }
}

/// Applies one event to the session state. Events of other aggregates leave it alone.
pub fn evolve(state: Option<Session>, event: &Event, occurred_at: Timestamp) -> Option<Session> {
    if let Event::SessionStarted(e) = event {
        return Some(Session {
            session_id: e.session_id,
            user_id: e.user_id,
            status: SessionStatus::Active,
            scope: e.scope.clone(),
            roles: e.roles.clone(),
            created_at: occurred_at,
            auth_time: e.auth_time,
            last_seen_at: occurred_at,
            idle_expires_at: e.idle_expires_at,
            absolute_expires_at: e.absolute_expires_at,
            generation: e.generation,
            retries: 0,
            rotated_at: None,
            rotated_from: None,
            current_token: Some(TokenKey {
                id: e.token_id,
                hash: e.token_hash,
            }),
            late_retry_generation: None,
            login_context: e.context.clone(),
            last_context: e.context.clone(),
            reauth_required: false,
            ended_at: None,
            end_reason: None,
            dpop_jkt: e.dpop_jkt.clone(),
            client_id: e.client_id.clone(),
            version: 1,
        });
    }
    let mut s = state?;
    match event {
        Event::SessionRefreshed(e) => {
            s.generation = e.generation;
            s.retries = 0;
            s.rotated_at = Some(occurred_at);
            s.rotated_from = Some(e.presented_hash);
            s.current_token = Some(TokenKey {
                id: e.token_id,
                hash: e.token_hash,
            });
            s.idle_expires_at = e.idle_expires_at;
            s.last_seen_at = occurred_at;
            s.last_context = e.context.clone();
        }
        Event::RefreshRetried(e) => {
            s.retries = e.retry;
            if e.late {
                s.late_retry_generation = Some(e.generation);
            }
            s.idle_expires_at = e.idle_expires_at;
            s.last_seen_at = occurred_at;
            s.last_context = e.context.clone();
        }
        Event::AuthorizationCodeRedeemed(e) => {
            if let Some(jkt) = &e.dpop_jkt {
                s.dpop_jkt = Some(jkt.clone());
            }
        }
        Event::ReuseDetected(_)
        | Event::DpopMismatch(_)
        | Event::AuthorizationCodeIssued(_)
        | Event::AuthorizationCodeReused(_) => {}
        Event::ReauthRequired(_) => s.reauth_required = true,
        Event::SessionReauthenticated(e) => {
            s.reauth_required = false;
            s.auth_time = occurred_at;
            s.last_seen_at = occurred_at;
            s.last_context = e.context.clone();
        }
        Event::SessionRevoked(e) => {
            s.status = SessionStatus::Revoked;
            s.ended_at = Some(occurred_at);
            s.end_reason = Some(e.reason.as_str().to_owned());
        }
        Event::SessionExpired(e) => {
            s.status = SessionStatus::Expired;
            s.ended_at = Some(e.expired_at);
            s.end_reason = Some(match e.kind {
                ExpiryKind::Idle => "idle".to_owned(),
                ExpiryKind::Absolute => "absolute".to_owned(),
            });
        }
        _ => return Some(s),
    }
    s.version += 1;
    Some(s)
}

/// The request context an event leaves as its session's last one (`last_context`, seen at the
/// event's time: `last_seen_at`), for the events whose `evolve` moves it.
pub fn moved_context(event: &Event) -> Option<&RequestContext> {
    match event {
        Event::SessionStarted(e) => Some(&e.context),
        Event::SessionRefreshed(e) => Some(&e.context),
        Event::RefreshRetried(e) => Some(&e.context),
        Event::SessionReauthenticated(e) => Some(&e.context),
        _ => None,
    }
}

/// The refresh token an event hands out, with its generation: what the token index records.
pub fn issued_token(event: &Event) -> Option<(Uuid, TokenKey, u32)> {
    let key = |id, hash| TokenKey { id, hash };
    match event {
        Event::SessionStarted(e) => {
            Some((e.session_id, key(e.token_id, e.token_hash), e.generation))
        }
        Event::SessionRefreshed(e) => {
            Some((e.session_id, key(e.token_id, e.token_hash), e.generation))
        }
        // Only a retry recorded by an older build minted a token (a sibling); a retry now hands
        // out the successor the rotation already issued.
        Event::RefreshRetried(e) if e.sibling => {
            Some((e.session_id, key(e.token_id, e.token_hash), e.generation))
        }
        _ => None,
    }
}

/// The session an event belongs to, if any.
pub fn session_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::SessionStarted(e) => Some(e.session_id),
        Event::SessionRefreshed(e) => Some(e.session_id),
        Event::RefreshRetried(e) => Some(e.session_id),
        Event::ReuseDetected(e) => Some(e.session_id),
        Event::DpopMismatch(e) => Some(e.session_id),
        Event::ReauthRequired(e) => Some(e.session_id),
        Event::SessionReauthenticated(e) => Some(e.session_id),
        Event::SessionRevoked(e) => Some(e.session_id),
        Event::SessionExpired(e) => Some(e.session_id),
        Event::AuthorizationCodeIssued(e) => Some(e.session_id),
        Event::AuthorizationCodeRedeemed(e) => Some(e.session_id),
        Event::AuthorizationCodeReused(e) => Some(e.session_id),
        _ => None,
    }
}

mod refresh;
pub use refresh::{PresentedToken, RefreshGrant, RetryTiming};

#[cfg(test)]
mod tests;
