//! The application layer: every state change of the service is a command carried out here.
//!
//! A command is a plain value with its own typed reply ([`Command::Reply`]). Its handler runs
//! inside the group-commit [`writer::Writer`]'s transaction and follows one path: load what it
//! needs through the store's [`UnitOfWork`], let the domain decide, let the rules judge (with the
//! history they asked for loaded here and handed in), plan what to record as data
//! ([`effects::sequence`]), and record it: events appended and inline projections applied in
//! the same transaction. The reply reaches the caller only once the batch is durable, and each
//! command's [`Command::observe`] then turns its committed outcome into metrics.

mod api_keys;
pub mod backtest;
mod dpop;
pub mod effects;
mod judge;
mod keys;
mod login;
mod notices;
mod oauth;
mod privacy;
mod recording;
mod refresh;
mod revocation;
mod roles;
mod verdicts;
mod webhooks;
pub mod writer;

use crate::domain::Timestamp;
use crate::domain::event::EventMetadata;
use crate::domain::session::SessionPolicy;
use crate::domain::token::TokenKey;
use crate::rules::RuleEngine;
use crate::store::{StoreError, UnitOfWork};
use std::future::Future;

pub use api_keys::{CreateApiKey, RevokeApiKey, UnknownApiKey};
pub use dpop::{CheckedProof, ClaimProof, ProofInput, PruneProofs};
pub use keys::{CreateFirstSigningKey, RotateSigningKeys};
pub use login::{RecordLoginFailure, RecordLoginThrottled, Register, StartRefusal, StartSession};
pub use notices::{AnswerRefusal, ConfirmNotice, DenyNotice};
pub use oauth::{DeleteClient, IssueCode, RedeemCode, RegisterClient, SessionGone, UnknownClient};
pub use privacy::{EraseUser, ExpirePersonalData, NoSuchUser, ResealHistory, reseal_history};
pub use refresh::{Reauthenticate, ReauthenticateSession, Refresh, RefreshRefusal, Refreshed};
pub use revocation::{
    ChangePassword, EndSession, EndSessionByToken, ExpireIfDue, LogoutEverywhere,
    PruneEndedSessions, RequireReauth, SetLock, UnknownSession, UnknownToken, UnknownUser,
};
pub use roles::{SetRoles, SetRolesRefusal};
pub use verdicts::RecordVerdict;
pub use webhooks::{
    AdoptUnloggedWebhooks, Subscribe, UnknownSubscription, Unsubscribe, adopt_unlogged_webhooks,
};
pub use writer::{Writer, WriterStats};

/// What a handler is given besides its transaction: this command's reading of the clock, its
/// metadata (actor, request id), the session policy and the rules.
pub struct Context<'a> {
    pub now: Timestamp,
    pub meta: &'a EventMetadata,
    pub policy: &'a SessionPolicy,
    pub rules: &'a RuleEngine,
}

/// One kind of state change and its handler.
pub trait Command: Clone + Send + Sync + 'static {
    /// What the caller gets back once the change is durable.
    type Reply: Send + 'static;

    /// Loads, decides, judges and records, all through `uow`. An `Err` is a fault of the store
    /// (the batch is rolled back and the command decided again alone); a refusal of the request
    /// is part of `Reply`.
    fn handle<U: UnitOfWork>(
        self,
        uow: &mut U,
        cx: &Context<'_>,
    ) -> impl Future<Output = Result<Self::Reply, StoreError>> + Send;

    /// The refresh token the handler will look up, read ahead for the whole batch at BEGIN.
    fn presented_token(&self) -> Option<&TokenKey> {
        None
    }

    /// Sent right after a password check (a login, a failed login): such a command may wait
    /// for company in the writer while other checks queue (see `writer::Linger`).
    const FOLLOWS_PASSWORD: bool = false;

    /// Counts a committed outcome (called once per command, after its batch is durable).
    fn observe(&self, _reply: &Self::Reply) {}
}
