//! The rule engine inside the writer: judge a request-born event in the transaction that
//! records it, append the receipts, and carry out the strongest enforced action there too, so
//! the decision and its consequences commit (or fail) together.

use super::breaker::Admission;
use super::detectors::Sighting;
use super::{Action, Facts, Mode, RuleEngine, Trigger};
use crate::domain::Timestamp;
use crate::domain::event::{
    Actor, BreakerTripped, Event, EventMetadata, RevokeReason, RuleFired, UserLockChanged,
    rule_stream,
};
use crate::domain::session::{Refusal, Session};
use crate::store::commands::{append_all, end_sessions, record_session, record_user};
use crate::store::{StoreError, UnitOfWork};
use uuid::Uuid;

/// What the rules concluded about one event.
#[derive(Debug, Default)]
pub struct Judgement {
    /// `rule.fired` receipts (and breaker trips), each for a stream of its own.
    pub receipts: Vec<Event>,
    /// The strongest action of the enforced firings, after the breaker.
    pub action: Option<Action>,
    pub deny: bool,
    /// The rule behind `action` (or the denial), for reasons and actors.
    pub by: Option<String>,
}

/// What an action can mean for the trigger: a login proves the password (so re-authentication
/// is moot), and a failed login or a reuse has no live session to step up or revoke.
fn effective(trigger: Trigger, action: Action) -> Action {
    match (trigger, action) {
        (Trigger::SessionStarted, Action::RequireReauth) => Action::Flag,
        (
            Trigger::LoginFailed | Trigger::ReuseDetected,
            Action::RequireReauth | Action::RevokeSession,
        ) => Action::Flag,
        (_, a) => a,
    }
}

/// The facts of an event on a session's own state (a refresh, a reuse).
pub fn session_facts<'a>(
    trigger: Trigger,
    session: &'a Session,
    context: &'a crate::domain::context::RequestContext,
    now: Timestamp,
) -> Facts<'a> {
    Facts {
        trigger,
        now,
        user_id: Some(session.user_id),
        username: None,
        session_id: Some(session.session_id),
        context,
        session_login: Some(&session.login_context),
        session_last: Some(&session.last_context),
    }
}

/// Judges one event; `None` when no rule fired (the usual case, which then costs no
/// allocation here). Reads the store only on a cold baseline and for the breaker's count of
/// active users (at most once a minute, and only when a revoking action is wanted).
pub async fn judge<U: UnitOfWork>(
    uow: &mut U,
    engine: &RuleEngine,
    facts: &Facts<'_>,
) -> Result<Option<Judgement>, StoreError> {
    let set = engine.rules();
    let mut j = Judgement::default();
    if let Some(user) = facts.user_id
        && facts.trigger.builds_baseline()
        && set.needs_baseline(facts.trigger)
        && !engine.has_baseline(user)
    {
        engine.seed_baseline(user, cold_baseline(uow, user).await?);
    }
    for firing in engine.evaluate(facts) {
        let rule = &firing.rule;
        let wanted = effective(facts.trigger, rule.action);
        let mut taken = match rule.mode {
            Mode::Enforce => Some(wanted),
            Mode::Shadow | Mode::Off => None,
        };
        if let Some(a) = taken
            && a.is_revoking()
        {
            let needs_count = engine
                .state
                .lock()
                .expect("rules state")
                .breaker
                .needs_active_users(facts.now);
            if needs_count {
                let n = uow.active_user_count().await?;
                engine
                    .state
                    .lock()
                    .expect("rules state")
                    .breaker
                    .set_active_users(n, facts.now);
            }
            let admission = engine
                .state
                .lock()
                .expect("rules state")
                .breaker
                .admit(&engine.breaker, facts.now);
            if let Admission::Degrade {
                newly_tripped,
                count,
                cap,
                active_users,
            } = admission
            {
                taken = Some(Action::Flag);
                if newly_tripped {
                    tracing::error!(rule = %rule.id, wanted = wanted.as_str(), count, cap, active_users,
                        "RULE CIRCUIT BREAKER TRIPPED: revoking actions degrade to flag until the window passes");
                    metrics::counter!("sessiond_rule_breaker_trips_total", "rule" => rule.id.clone()).increment(1);
                    j.receipts.push(Event::RuleBreakerTripped(BreakerTripped {
                        rule_id: rule.id.clone(),
                        wanted: wanted.as_str().to_owned(),
                        count,
                        cap,
                        window_seconds: engine.breaker.window.num_seconds(),
                        active_users,
                    }));
                }
            }
        }
        let enforced = rule.mode == Mode::Enforce;
        if enforced && (taken > j.action || (rule.deny && !j.deny)) {
            j.by = Some(rule.id.clone());
        }
        j.action = j.action.max(taken);
        j.deny |= enforced && rule.deny;
        let action_name = taken.map_or("none", Action::as_str);
        metrics::counter!("sessiond_rule_firings_total",
            "rule" => rule.id.clone(), "mode" => rule.mode.as_str(), "action" => action_name)
        .increment(1);
        tracing::info!(rule = %rule.id, mode = rule.mode.as_str(), action = action_name, trigger = facts.trigger.as_str(), "rule fired");
        j.receipts.push(Event::RuleFired(RuleFired {
            rule_id: rule.id.clone(),
            rule_version: rule.version,
            mode: rule.mode.as_str().to_owned(),
            severity: rule.severity.clone(),
            trigger: facts.trigger.as_str().to_owned(),
            user_id: facts.user_id,
            session_id: facts.session_id,
            username: facts.username.map(str::to_owned),
            explanation: rule.explain(&firing.inputs),
            inputs: serde_json::Value::Object(firing.inputs),
            geoip_build: facts.context.geo.as_ref().and_then(|g| g.city_build),
            wanted: wanted.as_str().to_owned(),
            deny: rule.deny,
            action: action_name.to_owned(),
        }));
    }
    // Shadow firings change nothing, including the baseline; an enforced firing keeps the
    // event out of it.
    let flagged = j.action.is_some() || j.deny;
    if !flagged && facts.trigger.builds_baseline() && facts.user_id.is_some() {
        engine.remember(facts);
    }
    Ok((!j.receipts.is_empty()).then_some(j))
}

/// A user's trusted sightings as the store knows them: where each active session started and
/// was last seen. Sessions waiting for re-authentication are not trusted.
async fn cold_baseline<U: UnitOfWork>(
    uow: &mut U,
    user: Uuid,
) -> Result<Vec<Sighting>, StoreError> {
    let mut seen = Vec::new();
    for s in uow.active_sessions_of(user).await? {
        if s.reauth_required {
            continue;
        }
        seen.push(Sighting::of(&s.login_context, s.created_at));
        seen.push(Sighting::of(&s.last_context, s.last_seen_at));
    }
    seen.sort_by_key(|s| s.at);
    Ok(seen)
}

/// Appends the receipts and carries out the judgement. Returns the refusal the request at
/// hand gets, if any (the caller then records nothing else for it).
pub async fn carry_out<U: UnitOfWork>(
    uow: &mut U,
    j: Judgement,
    user_id: Option<Uuid>,
    session: Option<Session>,
    meta: &EventMetadata,
    now: Timestamp,
) -> Result<Option<Refusal>, StoreError> {
    for receipt in j.receipts {
        let rule = match &receipt {
            Event::RuleFired(r) => r.rule_id.clone(),
            Event::RuleBreakerTripped(b) => b.rule_id.clone(),
            _ => String::new(),
        };
        let m = EventMetadata {
            actor: Actor::Rule(rule),
            ..meta.clone()
        };
        append_all(uow, &rule_stream(Uuid::new_v4()), 0, vec![receipt], &m, now).await?;
    }
    let by = j.by.unwrap_or_default();
    let reason = format!("rule:{by}");
    let meta = EventMetadata {
        actor: Actor::Rule(by),
        ..meta.clone()
    };
    let refusal = match j.action {
        None | Some(Action::Log | Action::Flag | Action::Notify) => None,
        Some(Action::RequireReauth) => match session {
            Some(s) => {
                let id = s.session_id;
                let events = s.decide_require_reauth(&reason);
                record_session(uow, Some(s), id, events, &meta, now).await?;
                Some(Refusal::ReauthRequired)
            }
            None => None,
        },
        Some(Action::RevokeSession) => {
            if let Some(s) = session {
                let id = s.session_id;
                let events = s.decide_revoke(RevokeReason::Rule, None);
                record_session(uow, Some(s), id, events, &meta, now).await?;
            }
            Some(Refusal::SessionEnded)
        }
        Some(a @ (Action::LogoutEverywhere | Action::LockAccount)) => {
            if let Some(user_id) = user_id
                && let Some(user) = uow.user_by_id(user_id).await?
            {
                let ended =
                    end_sessions(uow, user_id, None, RevokeReason::Rule, None, &meta, now).await?;
                let mut events = vec![user.decide_logout_everywhere(ended, None)];
                if a == Action::LockAccount && user.can_log_in() {
                    events.push(Event::UserLocked(UserLockChanged {
                        user_id,
                        reason: reason.clone(),
                        context: None,
                    }));
                }
                record_user(uow, Some(user), user_id, events, &meta, now).await?;
            }
            Some(Refusal::SessionEnded)
        }
    };
    Ok(refusal.or(j.deny.then_some(Refusal::Denied)))
}
