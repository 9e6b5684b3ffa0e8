//! What is recorded for a request-born event once the domain has decided and the rules have
//! judged, and in which order. [`sequence`] is the policy, the same for every trigger (a login,
//! a failed login, a refresh, a reuse); [`carry_out`] records what it planned.

use super::Context;
use super::recording::{append_all, end_sessions, record_session, record_user};
use crate::domain::event::{
    Actor, Event, EventMetadata, RevokeReason, UserLockChanged, rule_stream,
};
use crate::domain::session::{Refusal, Session};
use crate::domain::user::User;
use crate::projection;
use crate::rules::{Action, Judgement};
use crate::store::{NewEvent, StoreError, UnitOfWork};
use uuid::Uuid;

/// Whether the domain's decision gives way to a refusing verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Something the client asked for (a session started, a rotation): a verdict that refuses
    /// the request replaces it, and the client keeps what it had.
    Grant,
    /// Something that happened whatever the rules say (a failed login, a reuse): always
    /// recorded.
    Fact,
}

/// What the rules' action does beyond the receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The session must prove the password again before it refreshes.
    RequireReauth,
    /// The session ends (reason `rule`).
    RevokeSession,
    /// Every session of the user ends (`user.logged_out_everywhere`), and with `lock` the
    /// account is locked too.
    EndUserSessions { lock: bool },
}

/// One step of recording, in the order it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The decision's own events.
    Outcome,
    /// The rules' receipts (`rule.fired`, breaker trips), each in a stream of its own.
    Receipts,
    Act(Effect),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// What the request gets instead of its grant, when the verdict refuses it.
    pub refusal: Option<Refusal>,
}

/// The order of recording: the decision's events if they stand, then the receipts, then the
/// action's events. A grant stands unless the verdict refuses the request; a fact always
/// stands. `has_session` says whether the event has a live session to step up or revoke.
pub fn sequence(kind: OutcomeKind, judgement: Option<&Judgement>, has_session: bool) -> Plan {
    let Some(j) = judgement else {
        return Plan {
            steps: vec![Step::Outcome],
            refusal: None,
        };
    };
    let effect = match j.action {
        None | Some(Action::Log | Action::Flag | Action::Notify) => None,
        Some(Action::RequireReauth) => has_session.then_some(Effect::RequireReauth),
        Some(Action::RevokeSession) => has_session.then_some(Effect::RevokeSession),
        Some(Action::LogoutEverywhere) => Some(Effect::EndUserSessions { lock: false }),
        Some(Action::LockAccount) => Some(Effect::EndUserSessions { lock: true }),
    };
    let refused = match j.action {
        None | Some(Action::Log | Action::Flag | Action::Notify) => None,
        Some(Action::RequireReauth) => has_session.then_some(Refusal::ReauthRequired),
        Some(Action::RevokeSession | Action::LogoutEverywhere | Action::LockAccount) => {
            Some(Refusal::SessionEnded)
        }
    }
    .or(j.deny.then_some(Refusal::Denied));
    let refusal = match kind {
        OutcomeKind::Grant => refused,
        // A fact answers the request itself (a reuse is refused as a reuse).
        OutcomeKind::Fact => None,
    };
    let mut steps = Vec::with_capacity(3);
    if refusal.is_none() {
        steps.push(Step::Outcome);
    }
    steps.push(Step::Receipts);
    steps.extend(effect.map(Step::Act));
    Plan { steps, refusal }
}

/// Where a decision's events go.
// Lives for one handler call: boxing the session would cost an allocation per refresh.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Session {
        session_id: Uuid,
        before: Option<Session>,
    },
    User {
        user_id: Uuid,
        before: Option<User>,
    },
    /// A stream of its own, new (a failed login of an unknown name).
    NewStream(String),
}

/// A decision, as data: its events and where they go.
pub struct Outcome {
    pub kind: OutcomeKind,
    pub target: Target,
    pub events: Vec<Event>,
}

/// What [`carry_out`] recorded.
pub struct Carried {
    pub refusal: Option<Refusal>,
    /// The session the decision's events were applied to (after them if they stood).
    pub session: Option<Session>,
}

/// Records `outcome` and the judgement of it as [`sequence`] plans.
pub async fn carry_out<U: UnitOfWork>(
    uow: &mut U,
    outcome: Outcome,
    judgement: Option<Judgement>,
    user_id: Option<Uuid>,
    cx: &Context<'_>,
) -> Result<Carried, StoreError> {
    let has_session = matches!(
        &outcome.target,
        Target::Session {
            before: Some(_),
            ..
        }
    );
    let plan = sequence(outcome.kind, judgement.as_ref(), has_session);
    let Outcome { target, events, .. } = outcome;
    let mut session = match &target {
        Target::Session { before, .. } => before.clone(),
        _ => None,
    };
    let mut target = Some((target, events));
    let judgement = judgement.unwrap_or_default();
    let by = judgement.by.clone().unwrap_or_default();
    let rule_meta = EventMetadata {
        actor: Actor::Rule(by.clone()),
        ..cx.meta.clone()
    };
    let reason = format!("rule:{by}");
    for step in &plan.steps {
        match step {
            Step::Outcome => {
                let Some((target, events)) = target.take() else {
                    continue;
                };
                match target {
                    Target::Session { session_id, before } => {
                        session = record_session(uow, before, session_id, events, cx.meta, cx.now)
                            .await?;
                    }
                    Target::User { user_id, before } => {
                        record_user(uow, before, user_id, events, cx.meta, cx.now).await?;
                    }
                    Target::NewStream(stream) => {
                        append_all(uow, &stream, 0, events, cx.meta, cx.now).await?;
                    }
                }
            }
            Step::Receipts => {
                for receipt in &judgement.receipts {
                    let rule = match receipt {
                        Event::RuleFired(r) => r.rule_id.clone(),
                        Event::RuleBreakerTripped(b) => b.rule_id.clone(),
                        _ => String::new(),
                    };
                    let m = EventMetadata {
                        actor: Actor::Rule(rule),
                        ..cx.meta.clone()
                    };
                    let stream = rule_stream(Uuid::new_v4());
                    let recorded = uow
                        .append(NewEvent {
                            stream_id: stream.clone(),
                            expected_version: 0,
                            event: receipt.clone(),
                            metadata: m,
                            occurred_at: cx.now,
                        })
                        .await?;
                    // Each receipt is an alert an analyst can judge.
                    projection::apply_alert(uow, recorded.position, &stream, receipt, cx.now)
                        .await?;
                }
            }
            Step::Act(Effect::RequireReauth) => {
                if let Some(s) = session.take() {
                    let id = s.session_id;
                    let events = s.decide_require_reauth(&reason);
                    session = record_session(uow, Some(s), id, events, &rule_meta, cx.now).await?;
                }
            }
            Step::Act(Effect::RevokeSession) => {
                if let Some(s) = session.take() {
                    let id = s.session_id;
                    let events = s.decide_revoke(RevokeReason::Rule, None);
                    session = record_session(uow, Some(s), id, events, &rule_meta, cx.now).await?;
                }
            }
            Step::Act(Effect::EndUserSessions { lock }) => {
                let Some(user_id) = user_id else { continue };
                let Some(user) = uow.user_by_id(user_id).await? else {
                    continue;
                };
                let ended = end_sessions(
                    uow,
                    user_id,
                    None,
                    RevokeReason::Rule,
                    None,
                    &rule_meta,
                    cx.now,
                )
                .await?;
                let mut events = vec![user.decide_logout_everywhere(ended, None)];
                if *lock && user.can_log_in() {
                    events.push(Event::UserLocked(UserLockChanged {
                        user_id,
                        reason: reason.clone(),
                        context: None,
                    }));
                }
                record_user(uow, Some(user), user_id, events, &rule_meta, cx.now).await?;
            }
        }
    }
    Ok(Carried {
        refusal: plan.refusal,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(action: Option<Action>, deny: bool) -> Judgement {
        Judgement {
            receipts: Vec::new(),
            action,
            deny,
            by: Some("r".into()),
            breaker: Vec::new(),
        }
    }

    #[test]
    fn without_a_judgement_only_the_decision_is_recorded() {
        for kind in [OutcomeKind::Grant, OutcomeKind::Fact] {
            let plan = sequence(kind, None, true);
            assert_eq!(plan.steps, vec![Step::Outcome]);
            assert_eq!(plan.refusal, None);
        }
    }

    #[test]
    fn a_grant_stands_before_its_receipts_when_the_rules_only_observe() {
        for action in [
            None,
            Some(Action::Log),
            Some(Action::Flag),
            Some(Action::Notify),
        ] {
            let plan = sequence(OutcomeKind::Grant, Some(&verdict(action, false)), true);
            assert_eq!(
                plan.steps,
                vec![Step::Outcome, Step::Receipts],
                "{action:?}"
            );
            assert_eq!(plan.refusal, None);
        }
    }

    #[test]
    fn a_refusing_verdict_replaces_the_grant() {
        let cases = [
            (
                Action::RequireReauth,
                Refusal::ReauthRequired,
                Effect::RequireReauth,
            ),
            (
                Action::RevokeSession,
                Refusal::SessionEnded,
                Effect::RevokeSession,
            ),
            (
                Action::LogoutEverywhere,
                Refusal::SessionEnded,
                Effect::EndUserSessions { lock: false },
            ),
            (
                Action::LockAccount,
                Refusal::SessionEnded,
                Effect::EndUserSessions { lock: true },
            ),
        ];
        for (action, refusal, effect) in cases {
            let plan = sequence(
                OutcomeKind::Grant,
                Some(&verdict(Some(action), false)),
                true,
            );
            assert_eq!(
                plan.steps,
                vec![Step::Receipts, Step::Act(effect)],
                "{action:?}"
            );
            assert_eq!(plan.refusal, Some(refusal), "{action:?}");
        }
        let denied = sequence(
            OutcomeKind::Grant,
            Some(&verdict(Some(Action::Flag), true)),
            true,
        );
        assert_eq!(denied.steps, vec![Step::Receipts]);
        assert_eq!(denied.refusal, Some(Refusal::Denied));
    }

    #[test]
    fn a_fact_always_stands_and_the_action_follows_its_receipts() {
        let j = verdict(Some(Action::LogoutEverywhere), true);
        let plan = sequence(OutcomeKind::Fact, Some(&j), true);
        assert_eq!(
            plan.steps,
            vec![
                Step::Outcome,
                Step::Receipts,
                Step::Act(Effect::EndUserSessions { lock: false })
            ]
        );
        assert_eq!(plan.refusal, None, "a fact answers the request itself");
    }

    #[test]
    fn without_a_live_session_there_is_nothing_to_step_up_or_revoke() {
        // A login: the session does not exist yet.
        let reauth = sequence(
            OutcomeKind::Grant,
            Some(&verdict(Some(Action::RequireReauth), false)),
            false,
        );
        assert_eq!(reauth.steps, vec![Step::Outcome, Step::Receipts]);
        assert_eq!(reauth.refusal, None);
        let revoke = sequence(
            OutcomeKind::Grant,
            Some(&verdict(Some(Action::RevokeSession), false)),
            false,
        );
        assert_eq!(revoke.steps, vec![Step::Receipts]);
        assert_eq!(revoke.refusal, Some(Refusal::SessionEnded));
    }
}
