//! A refresh (rotation, retry of the replaced token or reuse) and a re-authentication, decided on the session's
//! own state in the writer's transaction.

use super::dpop::{ProofInput, possession};
use super::effects::{Outcome, OutcomeKind, Target, carry_out};
use super::judge::{judge, session_facts};
use super::recording::{load_session, record_session};
use super::{Command, Context};
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, RevokeReason};
use crate::domain::session::{PresentedToken, RefreshGrant, Refusal, Session};
use crate::domain::token::TokenKey;
use crate::metrics::{GRACE_RETRIES, REFRESHES, REUSE, count_revocations, observe_expiry};
use crate::rules::Trigger;
use crate::store::{StoreError, UnitOfWork};
use crate::tokens::refresh::RefreshTokens;
use metrics::counter;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Refresh {
    pub presented: TokenKey,
    /// The token the family rotates to, if it rotates.
    pub new_token: TokenKey,
    pub context: RequestContext,
    /// Tells whether the current token can be handed out again to a retry.
    pub minter: Arc<RefreshTokens>,
    /// The DPoP proof of the request, if any; its `jti` is claimed here.
    pub proof: ProofInput,
    /// `require_dpop`: a family that is not bound may not refresh.
    pub require_dpop: bool,
    /// The registered client presenting the token (`None`: a first-party refresh). A family
    /// is refreshed only by the client it was issued to, decided here, before anything else.
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refreshed {
    pub session: Session,
    pub grant: RefreshGrant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRefusal {
    /// No such token (or a known id with another body).
    UnknownToken,
    /// The token's family belongs to another client (or to none, or this is a first-party
    /// refresh of a client's family): refused as if unknown, and nothing is recorded.
    OtherClient,
    Refused(Refusal),
}

impl Command for Refresh {
    type Reply = Result<Refreshed, RefreshRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(token) = uow.token(&self.presented).await? else {
            return Ok(Err(RefreshRefusal::UnknownToken));
        };
        let session = load_session(uow, token.session_id).await?;
        if session.client_id != self.client_id {
            return Ok(Err(RefreshRefusal::OtherClient));
        }
        let presented = PresentedToken {
            hash: self.presented.hash,
            generation: token.generation,
        };
        // Only a retry of the previous generation needs to know (one HMAC).
        let reissuable = token.generation + 1 == session.generation
            && session
                .current_token
                .is_some_and(|k| self.minter.reissues(&k));
        let possession = possession(uow, &self.proof).await?;
        let decision = session.decide_bound_refresh(
            presented,
            self.new_token,
            &self.context,
            &possession,
            self.require_dpop,
            cx.now,
            cx.policy,
            reissuable,
        );
        let mismatch = decision
            .events
            .iter()
            .any(|e| matches!(e, Event::DpopMismatch(_)));
        let trigger = match decision.outcome {
            Ok(RefreshGrant::Rotated { .. }) => Some(Trigger::SessionRefreshed),
            // A retry is a refresh: the rules judge it like one.
            Ok(RefreshGrant::Retried { .. }) => Some(Trigger::RefreshRetried),
            Err(Refusal::Reuse(_)) => Some(Trigger::ReuseDetected),
            Err(Refusal::DpopProof(_)) if mismatch => Some(Trigger::DpopMismatch),
            _ => None,
        };
        let judgement = match trigger {
            Some(t) => {
                let facts = session_facts(t, &session, &self.context, cx.now);
                judge(uow, cx.rules, &facts).await?
            }
            None => None,
        };
        let user_id = session.user_id;
        let outcome = Outcome {
            kind: match decision.outcome {
                Ok(_) => OutcomeKind::Grant,
                Err(_) => OutcomeKind::Fact,
            },
            target: Target::Session {
                session_id: token.session_id,
                before: Some(session),
            },
            events: decision.events,
        };
        let carried = carry_out(uow, outcome, judgement, Some(user_id), cx).await?;
        if let Some(refusal) = carried.refusal {
            return Ok(Err(RefreshRefusal::Refused(refusal)));
        }
        Ok(match decision.outcome {
            Ok(grant) => Ok(Refreshed {
                session: carried.session.expect("refreshed session exists"),
                grant,
            }),
            Err(refusal) => Err(RefreshRefusal::Refused(refusal)),
        })
    }

    fn presented_token(&self) -> Option<&TokenKey> {
        Some(&self.presented)
    }

    fn observe(&self, reply: &Self::Reply) {
        let outcome = match reply {
            Ok(Refreshed {
                grant: RefreshGrant::Rotated { .. },
                ..
            }) => "rotated",
            Ok(Refreshed {
                grant: RefreshGrant::Retried { late, .. },
                ..
            }) => {
                let kind = if *late { "late" } else { "early" };
                counter!(GRACE_RETRIES, "kind" => kind).increment(1);
                if *late { "late_retry" } else { "grace_retry" }
            }
            Err(RefreshRefusal::Refused(Refusal::Reuse(class))) => {
                counter!(REUSE, "class" => class.as_str()).increment(1);
                count_revocations(RevokeReason::Reuse, 1);
                "reuse"
            }
            Err(RefreshRefusal::Refused(Refusal::Expired(kind))) => {
                observe_expiry(*kind);
                "expired"
            }
            Err(RefreshRefusal::Refused(Refusal::RetryLimit)) => "retry_limit",
            Err(RefreshRefusal::Refused(Refusal::SuccessorUnavailable)) => "successor_unavailable",
            Err(RefreshRefusal::Refused(Refusal::ReauthRequired)) => "reauth_required",
            Err(RefreshRefusal::Refused(Refusal::SessionEnded)) => "session_ended",
            Err(RefreshRefusal::Refused(Refusal::Denied)) => "denied",
            Err(RefreshRefusal::Refused(Refusal::DpopProof(_))) => "dpop_invalid",
            Err(RefreshRefusal::Refused(Refusal::DpopRequired)) => "dpop_required",
            Err(RefreshRefusal::UnknownToken) => "unknown_token",
            Err(RefreshRefusal::OtherClient) => "other_client",
        };
        counter!(REFRESHES, "outcome" => outcome).increment(1)
    }
}

/// The holder of the current refresh token proved the password again (checked by the caller):
/// the session may refresh again.
#[derive(Debug, Clone)]
pub struct Reauthenticate {
    pub presented: TokenKey,
    pub context: RequestContext,
}

impl Command for Reauthenticate {
    type Reply = Result<(), RefreshRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(token) = uow.token(&self.presented).await? else {
            return Ok(Err(RefreshRefusal::UnknownToken));
        };
        let session = load_session(uow, token.session_id).await?;
        let decision = session.decide_reauthenticate(Some(token.generation), &self.context, cx.now);
        if decision.outcome.is_ok() {
            // The password was proven from here: this context is trusted from now on.
            let facts = session_facts(Trigger::SessionRefreshed, &session, &self.context, cx.now);
            cx.rules.remember(&facts);
        }
        let id = session.session_id;
        record_session(uow, Some(session), id, decision.events, cx.meta, cx.now).await?;
        Ok(decision.outcome.map_err(RefreshRefusal::Refused))
    }

    fn presented_token(&self) -> Option<&TokenKey> {
        Some(&self.presented)
    }
}

/// The user proved the password again through an authorization request (`prompt=login` or
/// `max_age`, checked by the caller): session `session_id` of that user no longer needs to
/// step up and its `auth_time` moves (`session.reauthenticated`).
#[derive(Debug, Clone)]
pub struct ReauthenticateSession {
    pub session_id: Uuid,
    /// The user whose password was checked: a session of anyone else is refused.
    pub user_id: Uuid,
    pub context: RequestContext,
}

impl Command for ReauthenticateSession {
    type Reply = Result<(), Refusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(session) = uow.session(self.session_id).await? else {
            return Ok(Err(Refusal::SessionEnded));
        };
        if session.user_id != self.user_id {
            return Ok(Err(Refusal::SessionEnded));
        }
        let decision = session.decide_reauthenticate(None, &self.context, cx.now);
        if decision.outcome.is_ok() {
            let facts = session_facts(Trigger::SessionRefreshed, &session, &self.context, cx.now);
            cx.rules.remember(&facts);
        }
        let id = session.session_id;
        record_session(uow, Some(session), id, decision.events, cx.meta, cx.now).await?;
        Ok(decision.outcome)
    }
}
