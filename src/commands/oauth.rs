//! OAuth clients (registered and deleted through the log, their secret hash beside the row)
//! and authorization codes (issued for a session its sign-in started, redeemed once; a second
//! presentation revokes that session, RFC 6749 §4.1.2).

use super::recording::{record_registry, record_session};
use super::{Command, Context};
use crate::domain::authorization::{AuthorizationCode, CodeRefusal, Exchange};
use crate::domain::client::{self, Client, ClientError, Registration, client_stream};
use crate::domain::context::RequestContext;
use crate::domain::event::{
    AuthorizationCodeRedeemed, AuthorizationCodeReused, ClientDeleted, Event, RevokeReason,
};
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::store::{StoreError, UnitOfWork};

/// No client has this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownClient;

#[derive(Debug, Clone)]
pub struct RegisterClient {
    pub registration: Registration,
    /// SHA-256 of a confidential client's secret: kept beside the row, never in the event.
    pub secret_hash: Option<[u8; 32]>,
}

impl Command for RegisterClient {
    type Reply = Result<Client, ClientError>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let client_id = self.registration.client_id.clone();
        if uow.client_record(&client_id).await?.is_some() {
            return Err(StoreError::Corrupt("a fresh client id is taken".into()));
        }
        let event = match client::decide_register(self.registration) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let stream = client_stream(&client_id);
        if let Some(hash) = &self.secret_hash {
            uow.put_secret(&stream, hash).await?;
        }
        record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        let client = uow
            .client_record(&client_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a registered client has no row".into()))?;
        Ok(Ok(client))
    }
}

#[derive(Debug, Clone)]
pub struct DeleteClient {
    pub client_id: String,
}

impl Command for DeleteClient {
    type Reply = Result<(), UnknownClient>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        if uow.client_record(&self.client_id).await?.is_none() {
            return Ok(Err(UnknownClient));
        }
        let stream = client_stream(&self.client_id);
        uow.delete_secret(&stream).await?;
        let event = Event::ClientDeleted(ClientDeleted {
            client_id: self.client_id,
        });
        record_registry(uow, &stream, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(()))
    }
}

/// The session a code is for has ended (or never was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionGone;

/// Records a code for a live session (the one its sign-in started).
#[derive(Debug, Clone)]
pub struct IssueCode {
    pub code: AuthorizationCode,
}

impl Command for IssueCode {
    type Reply = Result<(), SessionGone>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(session) = uow.session(self.code.session_id).await? else {
            return Ok(Err(SessionGone));
        };
        if !session.is_active() || session.expiry_due(cx.now).is_some() {
            return Ok(Err(SessionGone));
        }
        let id = session.session_id;
        let event = Event::AuthorizationCodeIssued(self.code);
        record_session(uow, Some(session), id, vec![event], cx.meta, cx.now).await?;
        Ok(Ok(()))
    }
}

/// Exchanges a code (the token endpoint's `authorization_code` grant, the client already
/// authenticated). Success answers the session, whose first refresh token the caller mints
/// again from its id; a refusal records nothing, but reuse, which revokes the session.
#[derive(Debug, Clone)]
pub struct RedeemCode {
    pub code: TokenKey,
    pub client_id: String,
    pub redirect_uri: Option<String>,
    pub code_verifier: String,
    pub context: RequestContext,
    /// The exchange's checked DPoP proof, if any: its `jti` is claimed here, and its key binds
    /// the session (RFC 9449 §5) and must be the code's `dpop_jkt` if it has one (§10).
    pub dpop: Option<super::CheckedProof>,
}

impl Command for RedeemCode {
    type Reply = Result<(Session, AuthorizationCode), CodeRefusal>;

    async fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> Result<Self::Reply, StoreError> {
        let Some(code) = uow.authorization_code(self.code.id).await? else {
            return Ok(Err(CodeRefusal::Unknown));
        };
        let dpop_jkt = self.dpop.as_ref().map(|p| p.jkt.clone());
        let decision = code.decide_redeem(&Exchange {
            presented: self.code.hash,
            client_id: &self.client_id,
            redirect_uri: self.redirect_uri.as_deref(),
            code_verifier: &self.code_verifier,
            dpop_jkt: dpop_jkt.as_deref(),
            now: cx.now,
        });
        // A proof seen before proves nothing about who holds the key, on any grant.
        if decision.is_ok()
            && let Some(p) = &self.dpop
            && !uow.claim_dpop_jti(&p.jti_hash, p.expires_at).await?
        {
            return Ok(Err(CodeRefusal::ProofReplayed));
        }
        let session = uow.session(code.session_id).await?;
        match decision {
            Err(CodeRefusal::Reused) => {
                if let Some(s) = session {
                    let mut events =
                        vec![Event::AuthorizationCodeReused(AuthorizationCodeReused {
                            session_id: s.session_id,
                            code_id: code.code_id,
                            presented_by: self.client_id,
                            context: self.context.clone(),
                        })];
                    events.extend(s.decide_revoke(RevokeReason::Reuse, Some(&self.context)));
                    let id = s.session_id;
                    record_session(uow, Some(s), id, events, cx.meta, cx.now).await?;
                }
                Ok(Err(CodeRefusal::Reused))
            }
            Err(refusal) => Ok(Err(refusal)),
            Ok(()) => {
                let Some(s) = session.filter(|s| {
                    s.is_active() && s.expiry_due(cx.now).is_none() && s.generation == 1
                }) else {
                    return Ok(Err(CodeRefusal::SessionEnded));
                };
                let id = s.session_id;
                let event = Event::AuthorizationCodeRedeemed(AuthorizationCodeRedeemed {
                    session_id: id,
                    code_id: code.code_id,
                    client_id: code.client_id.clone(),
                    dpop_jkt,
                });
                let s = record_session(uow, Some(s), id, vec![event], cx.meta, cx.now)
                    .await?
                    .expect("the session exists");
                Ok(Ok((s, code)))
            }
        }
    }

    fn observe(&self, reply: &Self::Reply) {
        if matches!(reply, Err(CodeRefusal::Reused)) {
            crate::metrics::count_revocations(RevokeReason::Reuse, 1);
        }
    }
}
