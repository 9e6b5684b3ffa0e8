//! The refresh decision (DESIGN §4): rotate the current token, answer a retry of the token
//! just replaced with the same successor, treat any other known token as reuse. The README's
//! decision table describes it row by row.

use super::{Decision, Possession, Refusal, Session, SessionPolicy, refuse};
use crate::domain::context::RequestContext;
use crate::domain::event::{
    DpopFault, DpopMismatch, Event, RefreshRetried, ReuseClass, ReuseDetected, RevokeReason,
    SessionRefreshed, SessionRevoked,
};
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::{Duration, Timestamp};

/// What the store knows about a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedToken {
    pub hash: TokenHash,
    pub generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshGrant {
    /// The family moved to a new generation, whose token is the command's new token.
    Rotated { generation: u32 },
    /// A retry of the token just replaced: the answer is `successor`, the token the rotation
    /// issued (never a new one). `late` when it came after the grace window.
    Retried {
        generation: u32,
        retry: u32,
        late: bool,
        successor: TokenKey,
    },
}

/// When a retry of the token just replaced came, measured from the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryTiming {
    /// Within the grace window: a concurrent retry or a quick resend.
    Early,
    /// After the grace window, within the late-retry window: a lost answer.
    Late,
}

impl Session {
    /// The refresh decision with sender constraint (RFC 9449): a bound family refreshes only
    /// with a valid proof by its key; anything else is refused and recorded as a mismatch
    /// (`session.dpop_mismatch`), with nothing rotated. An invalid proof on an unbound family
    /// is refused without a record; with `require_dpop` an unbound family is refused. Once the
    /// key holds, `decide_refresh` decides as for any family.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_bound_refresh(
        &self,
        presented: PresentedToken,
        new_token: TokenKey,
        context: &RequestContext,
        possession: &Possession,
        require_dpop: bool,
        now: Timestamp,
        policy: &SessionPolicy,
        reissuable: bool,
    ) -> Decision<RefreshGrant> {
        if !self.is_active() || self.expiry_due(now).is_some() {
            return self.decide_refresh(presented, new_token, context, now, policy, reissuable);
        }
        match (&self.dpop_jkt, possession) {
            (Some(bound), Possession::Key(k)) if k == bound => {}
            (Some(_), p) => {
                let fault = match p {
                    Possession::Absent => DpopFault::Missing,
                    Possession::Invalid(f) => *f,
                    Possession::Key(_) => DpopFault::OtherKey,
                };
                return Decision {
                    events: vec![Event::DpopMismatch(DpopMismatch {
                        session_id: self.session_id,
                        fault,
                        presented_jkt: possession.jkt().map(str::to_owned),
                        presented_generation: presented.generation,
                        context: context.clone(),
                    })],
                    outcome: Err(Refusal::DpopProof(fault)),
                };
            }
            (None, Possession::Invalid(f)) => return refuse(Refusal::DpopProof(*f)),
            (None, _) if require_dpop => return refuse(Refusal::DpopRequired),
            (None, _) => {}
        }
        self.decide_refresh(presented, new_token, context, now, policy, reissuable)
    }

    /// The refresh decision (DESIGN §4): rotate the current token; answer a retry of the token
    /// just replaced, early or late, with the *same* successor; treat any other known token as
    /// reuse. `reissuable` says whether the current token can be handed out again (the caller
    /// re-derives it from its id); the family never gets a second live token.
    pub fn decide_refresh(
        &self,
        presented: PresentedToken,
        new_token: TokenKey,
        context: &RequestContext,
        now: Timestamp,
        policy: &SessionPolicy,
        reissuable: bool,
    ) -> Decision<RefreshGrant> {
        if !self.is_active() {
            return refuse(Refusal::SessionEnded);
        }
        if let Some(expired) = self.expire(now) {
            return expired;
        }
        let since_rotation = self.rotated_at.map(|at| now - at);

        if presented.generation == self.generation {
            if self.reauth_required {
                return refuse(Refusal::ReauthRequired);
            }
            let generation = self.generation + 1;
            return Decision {
                events: vec![Event::SessionRefreshed(SessionRefreshed {
                    session_id: self.session_id,
                    generation,
                    token_id: new_token.id,
                    token_hash: new_token.hash,
                    presented_hash: presented.hash,
                    idle_expires_at: self.next_idle_expiry(now, policy),
                    context: context.clone(),
                })],
                outcome: Ok(RefreshGrant::Rotated { generation }),
            };
        }

        let previous = presented.generation + 1 == self.generation;
        // The token whose use began this generation; a sibling of it (left by a build that
        // minted retry siblings) is a displaced branch.
        let replaced = previous && self.rotated_from == Some(presented.hash);
        let timing = since_rotation.and_then(|d| retry_timing(d, policy));
        let class = if !previous {
            ReuseClass::OlderGeneration
        } else if !replaced {
            ReuseClass::DisplacedBranch
        } else if timing.is_none() {
            ReuseClass::PreviousAfterGrace
        } else if !self.retry_by_same_device(context) {
            ReuseClass::PreviousOtherContext
        } else if timing == Some(RetryTiming::Late)
            && self.late_retry_generation == Some(self.generation - 1)
        {
            // A real client loses an answer rarely; a thief and a victim sharing one family
            // alternate, each presenting a token the other already replaced.
            ReuseClass::RepeatedLateRetry
        } else {
            return self.decide_retry(
                presented,
                timing == Some(RetryTiming::Late),
                context,
                now,
                policy,
                reissuable,
            );
        };
        Decision {
            events: vec![
                Event::ReuseDetected(ReuseDetected {
                    session_id: self.session_id,
                    class,
                    presented_hash: presented.hash,
                    presented_generation: presented.generation,
                    current_generation: self.generation,
                    since_rotation_ms: since_rotation.map(|d| d.num_milliseconds()),
                    context: context.clone(),
                }),
                Event::SessionRevoked(SessionRevoked {
                    session_id: self.session_id,
                    reason: RevokeReason::Reuse,
                    context: Some(context.clone()),
                }),
            ],
            outcome: Err(Refusal::Reuse(class)),
        }
    }

    /// Whether a retry of the replaced token comes from the device the rotation answered: the
    /// same device class (woothee category, OS and browser name; versions ignored). The network
    /// is not compared: a phone that leaves Wi-Fi for cellular is the same device, and the
    /// retry gets no branch of its own, only the successor the rotation issued. The one place
    /// this is decided. A key-bound family is judged by the key, not the device: reaching here,
    /// `decide_bound_refresh` already checked the proof is by the family's key.
    pub fn retry_by_same_device(&self, context: &RequestContext) -> bool {
        self.dpop_jkt.is_some() || context.device_class() == self.last_context.device_class()
    }

    /// A retry of the token just replaced, by the same device: the same successor again, within
    /// the generation's bound.
    fn decide_retry(
        &self,
        presented: PresentedToken,
        late: bool,
        context: &RequestContext,
        now: Timestamp,
        policy: &SessionPolicy,
        reissuable: bool,
    ) -> Decision<RefreshGrant> {
        if self.reauth_required {
            return refuse(Refusal::ReauthRequired);
        }
        if self.retries >= policy.max_grace_retries {
            // A client hammering the same token is broken, not stolen: refuse, keep the family.
            return refuse(Refusal::RetryLimit);
        }
        let Some(successor) = self.current_token.filter(|_| reissuable) else {
            return refuse(Refusal::SuccessorUnavailable);
        };
        let retry = self.retries + 1;
        Decision {
            events: vec![Event::RefreshRetried(RefreshRetried {
                session_id: self.session_id,
                generation: self.generation,
                token_id: successor.id,
                token_hash: successor.hash,
                presented_hash: presented.hash,
                retry,
                late,
                sibling: false,
                idle_expires_at: self.next_idle_expiry(now, policy),
                context: context.clone(),
            })],
            outcome: Ok(RefreshGrant::Retried {
                generation: self.generation,
                retry,
                late,
                successor,
            }),
        }
    }
}

/// Early within the grace window, late within the late-retry window, else no retry at all.
fn retry_timing(since_rotation: Duration, policy: &SessionPolicy) -> Option<RetryTiming> {
    if since_rotation <= policy.grace_window {
        Some(RetryTiming::Early)
    } else if since_rotation <= policy.late_retry_window {
        Some(RetryTiming::Late)
    } else {
        None
    }
}
