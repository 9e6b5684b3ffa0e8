//! DPoP proofs in the writer's transaction: a proof's `jti` is claimed as unseen in the same
//! transaction as whatever the proof was for, so a replay is refused on every node.

use super::{Command, Context};
use crate::domain::Timestamp;
use crate::domain::event::DpopFault;
use crate::domain::session::Possession;
use crate::store::{StoreError, UnitOfWork};

/// A proof that verified on its own (`tokens::dpop`); its `jti` is still to be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    pub jkt: String,
    pub jti_hash: [u8; 32],
    pub expires_at: Timestamp,
}

/// What a request brought in the way of a DPoP proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofInput {
    Absent,
    /// A proof that failed its own checks (the fault is what a mismatch records).
    Invalid,
    Checked(CheckedProof),
}

/// Claims the proof's `jti`: what the request proved, with a replay as an invalid proof.
pub(super) async fn possession<U: UnitOfWork>(
    uow: &mut U,
    input: &ProofInput,
) -> Result<Possession, StoreError> {
    Ok(match input {
        ProofInput::Absent => Possession::Absent,
        ProofInput::Invalid => Possession::Invalid(DpopFault::Invalid),
        ProofInput::Checked(p) => {
            if uow.claim_dpop_jti(&p.jti_hash, p.expires_at).await? {
                Possession::Key(p.jkt.clone())
            } else {
                Possession::Invalid(DpopFault::Replayed)
            }
        }
    })
}

/// Claims a proof that came with a request on a protected resource (`Authorization: DPoP`).
/// Replies `false` for a replay.
#[derive(Debug, Clone)]
pub struct ClaimProof {
    pub proof: CheckedProof,
}

impl Command for ClaimProof {
    type Reply = bool;

    async fn handle<U: UnitOfWork>(self, uow: &mut U, _: &Context<'_>) -> Result<bool, StoreError> {
        uow.claim_dpop_jti(&self.proof.jti_hash, self.proof.expires_at)
            .await
    }
}

/// Forgets proofs whose `iat` window has passed (a stale proof is refused on its time anyway).
#[derive(Debug, Clone)]
pub struct PruneProofs {
    pub before: Timestamp,
}

impl Command for PruneProofs {
    type Reply = u64;

    async fn handle<U: UnitOfWork>(self, uow: &mut U, _: &Context<'_>) -> Result<u64, StoreError> {
        uow.prune_dpop_jtis(self.before).await
    }
}
