//! Asking the rules about an event: the history their judgement needs is read here, from the
//! transaction, and handed to the engine, which never reads the store itself.

use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::session::Session;
use crate::rules::detectors::Sighting;
use crate::rules::{Facts, History, Judgement, RuleEngine, Trigger};
use crate::store::{StoreError, UnitOfWork};
use uuid::Uuid;

/// Judges one event with whatever history the engine asks for; `None` when no rule fired.
pub(super) async fn judge<U: UnitOfWork>(
    uow: &mut U,
    rules: &RuleEngine,
    facts: &Facts<'_>,
) -> Result<Option<Judgement>, StoreError> {
    let needs = rules.needs(facts);
    let mut history = History::default();
    if needs.baseline
        && let Some(user) = facts.user_id
    {
        history.baseline = Some(trusted_sightings(uow, user).await?);
    }
    if needs.active_users {
        history.active_users = Some(uow.active_user_count().await?);
    }
    Ok(rules.judge(facts, history))
}

/// The facts of an event on a session's own state (a refresh, a reuse, a re-authentication).
pub(super) fn session_facts<'a>(
    trigger: Trigger,
    session: &'a Session,
    context: &'a RequestContext,
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

/// A user's trusted sightings as the store knows them: where each active session started and
/// was last seen. Sessions waiting for re-authentication are not trusted.
async fn trusted_sightings<U: UnitOfWork>(
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
