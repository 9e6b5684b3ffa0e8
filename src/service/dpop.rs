//! DPoP (RFC 9449) as the auth surfaces ask for it: a request's proof checked on its own
//! (`tokens::dpop`) and turned into what the commands take, the server nonce, and what is
//! required of whom.

use super::Sessiond;
use crate::commands::{CheckedProof, ClaimProof, ProofInput};
use crate::domain::event::{Actor, DpopFault, EventMetadata};
use crate::error::Error;
use crate::tokens::dpop::{ProofError, ProofRequest, VerifiedProof};

/// A request's DPoP header (if any) and what its proof must match: the method and the URL the
/// client addressed (the public URL of the route).
#[derive(Debug, Clone)]
pub struct Dpop {
    pub proof: Option<String>,
    /// More than one `DPoP` header: refused (RFC 9449 §4.3).
    pub repeated: bool,
    pub method: String,
    pub url: String,
}

impl Dpop {
    /// A request without a proof (callers that have no HTTP request).
    pub fn none() -> Dpop {
        Dpop {
            proof: None,
            repeated: false,
            method: String::new(),
            url: String::new(),
        }
    }
}

/// The label the nonce secret is derived from the master key under.
const NONCE_LABEL: &str = "sessiond dpop nonce v1";

pub fn nonce_key(master: &crate::tokens::keys::MasterKey) -> [u8; 32] {
    master.derive(NONCE_LABEL.as_bytes())
}

impl Sessiond {
    /// Whether a session must be DPoP-bound. Today only the server-wide `require_dpop`; when
    /// registered OAuth clients exist, a client's own requirement is added here.
    pub fn dpop_required(&self) -> bool {
        self.config.require_dpop
    }

    /// The nonce every response of a DPoP route carries, when nonces are required.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.dpop.nonce(self.now())
    }

    /// Forgets the seen proofs whose `iat` window has passed (the expiry sweep runs this).
    pub async fn prune_dpop_proofs(&self) -> Result<u64, Error> {
        let cmd = crate::commands::PruneProofs { before: self.now() };
        let meta = EventMetadata::new(Actor::System, None);
        Ok(self.writer.submit(cmd, meta).await?)
    }

    fn verify_proof(
        &self,
        dpop: &Dpop,
        access_token: Option<&str>,
    ) -> Option<Result<VerifiedProof, ProofError>> {
        if dpop.repeated {
            return Some(Err(ProofError::Multiple));
        }
        let proof = dpop.proof.as_deref()?;
        let request = ProofRequest {
            proof,
            method: &dpop.method,
            url: &dpop.url,
            access_token,
        };
        Some(self.dpop.verify(&request, self.now()))
    }

    /// The proof of a login or token request: `None` without one (refused when DPoP is
    /// required), an error for a proof that does not hold.
    pub(super) fn login_proof(&self, dpop: &Dpop) -> Result<Option<CheckedProof>, Error> {
        match self.verify_proof(dpop, None) {
            None if self.dpop_required() => Err(Error::InvalidDpopProof(
                "this server requires DPoP: send a DPoP proof with the request".into(),
            )),
            None => Ok(None),
            Some(Ok(p)) => Ok(Some(checked(p))),
            Some(Err(e)) => Err(token_route_error(e, self)),
        }
    }

    /// The proof of a refresh, as the refresh command judges it against the family's binding.
    /// A missing nonce is answered at once (the client retries with it; that is no mismatch).
    pub(super) fn refresh_proof(
        &self,
        dpop: &Dpop,
    ) -> Result<(ProofInput, Option<ProofError>), Error> {
        Ok(match self.verify_proof(dpop, None) {
            None => (ProofInput::Absent, None),
            Some(Ok(p)) => (ProofInput::Checked(checked(p)), None),
            Some(Err(ProofError::Nonce)) => return Err(token_route_error(ProofError::Nonce, self)),
            Some(Err(e)) => (ProofInput::Invalid, Some(e)),
        })
    }

    /// A protected resource's check of `Authorization: DPoP <token>`: the proof must be by the
    /// key the token is bound to (`cnf.jkt`), carry the token's hash, and be unseen.
    pub(super) async fn resource_proof(
        &self,
        dpop: &Dpop,
        access_token: &str,
        jkt: &str,
    ) -> Result<(), Error> {
        let proof = match self.verify_proof(dpop, Some(access_token)) {
            None => {
                return Err(Error::InvalidDpopToken(
                    "a DPoP-bound access token needs a DPoP proof".into(),
                ));
            }
            Some(Err(ProofError::Nonce)) => {
                return Err(Error::ResourceDpopNonce(
                    self.dpop_nonce().unwrap_or_default(),
                ));
            }
            Some(Err(e)) => return Err(Error::InvalidDpopToken(e.to_string())),
            Some(Ok(p)) => p,
        };
        if proof.jkt != jkt {
            return Err(Error::InvalidDpopToken(
                "the DPoP proof is signed by another key than the token is bound to".into(),
            ));
        }
        let claim = ClaimProof {
            proof: checked(proof),
        };
        let meta = EventMetadata::new(Actor::Anonymous, None);
        if !self.writer.submit(claim, meta).await? {
            return Err(Error::InvalidDpopToken(
                fault_message(DpopFault::Replayed).into(),
            ));
        }
        Ok(())
    }
}

fn checked(p: VerifiedProof) -> CheckedProof {
    CheckedProof {
        jkt: p.jkt,
        jti_hash: p.jti_hash,
        expires_at: p.expires_at,
    }
}

fn token_route_error(e: ProofError, app: &Sessiond) -> Error {
    match e {
        ProofError::Nonce => Error::UseDpopNonce(app.dpop_nonce().unwrap_or_default()),
        other => Error::InvalidDpopProof(other.to_string()),
    }
}

/// What a refused refresh tells the client about its proof.
pub(super) fn fault_message(fault: DpopFault) -> &'static str {
    match fault {
        DpopFault::Missing => "this refresh token is bound to a DPoP key: send a DPoP proof by it",
        DpopFault::OtherKey => "the DPoP proof is signed by another key than the token is bound to",
        DpopFault::Replayed => "this DPoP proof was already used (its jti was seen before)",
        DpopFault::Invalid => "the DPoP proof is invalid",
    }
}
