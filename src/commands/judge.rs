//! Asking the rules about an event: the history their judgement needs is read here, from the
//! transaction, and handed to the engine, which never reads the store itself.

use crate::domain::Timestamp;
use crate::domain::context::{RequestContext, usual_prefix};
use crate::domain::notice::Exception;
use crate::domain::session::Session;
use crate::rules::breaker::Spent;
use crate::rules::detectors::Sighting;
use crate::rules::detectors::threshold::Counts;
use crate::rules::judgement::BreakerWrite;
use crate::rules::{Action, Facts, History, Judgement, RuleEngine, Trigger};
use crate::store::{StoreError, UnitOfWork};
use std::future::Future;
use uuid::Uuid;

/// How long a network stays among a user's usual ones after it was last seen on a trusted
/// event.
pub const USUAL_NETWORK_DAYS: i64 = 28;

/// Judges one event with whatever history the engine asks for; `None` when no rule fired.
/// The detector memory the store keeps (threshold windows, the breaker's spend, usual
/// networks) is read here and written back here, in the transaction that records the event.
pub(super) async fn judge<M: JudgeMemory>(
    uow: &mut M,
    rules: &RuleEngine,
    facts: &Facts<'_>,
) -> Result<Option<Judgement>, StoreError> {
    let needs = rules.needs(facts);
    let mut history = History::default();
    if needs.baseline
        && let Some(user) = facts.user_id
    {
        let seen = trusted_sightings(uow, user).await?;
        if needs.other_sessions {
            history.other_sessions = Some(
                seen.iter()
                    .filter(|s| facts.session_id != Some(s.session))
                    .map(|s| s.sighting.clone())
                    .collect(),
            );
        }
        history.baseline = Some(seen.into_iter().map(|s| s.sighting).collect());
    } else if needs.other_sessions
        && let Some(user) = facts.user_id
    {
        // Travel wants only the newest sighting elsewhere: one row, not every open session
        // (a user who keeps many open would make each login read them all).
        let last = uow.last_seen_session_of(user, facts.session_id).await?;
        history.other_sessions = Some(
            last.map(|s| Sighting::of(&s.last_context, s.last_seen_at))
                .into_iter()
                .collect(),
        );
    }
    if needs.active_users {
        history.active_users = Some(uow.active_user_count().await?);
    }
    let networks = usual_tags(rules, facts.context);
    if needs.usual_network
        && let Some(user) = facts.user_id
    {
        let since = facts.now - chrono::Duration::days(USUAL_NETWORK_DAYS);
        let [a, b] = &networks;
        let seen = uow.usual_networks_seen(user, &[a, b], since).await?;
        history.usual_network = Some(!seen.is_empty());
    }
    let name_tag = rules.tag(facts.username.unwrap_or(""));
    for w in &needs.windows {
        let key_tag = rules.tag(&w.key);
        let (n, d, mine) = uow
            .window_counts(&w.rule_id, &key_tag, &name_tag, w.since)
            .await?;
        history.counts.insert(
            w.rule_id.clone(),
            Counts {
                events: n as u32 + 1,
                distinct_usernames: d as u32 + u32::from(mine == 0),
            },
        );
        uow.put_window_count(&w.rule_id, &key_tag, &name_tag, facts.now)
            .await?;
    }
    let mut firings = rules.fire(facts, &mut history);
    // The user's exceptions ("this was me", an analyst's false positive) are read only when
    // something fired: most events fire nothing and pay no read for them.
    if !firings.is_empty()
        && let Some(user) = facts.user_id
    {
        let exceptions = uow.live_exceptions(user, facts.now).await?;
        rules.except(facts, &mut firings, &exceptions, &networks);
    }
    for rule_id in rules.revoking(facts, &firings) {
        let (taken, tripped_until) = uow
            .breaker_spent(&rule_id, facts.now - rules.breaker.window)
            .await?;
        history.breaker.insert(
            rule_id,
            Spent {
                taken: taken as u32,
                tripped_until,
            },
        );
    }
    let judgement = rules.conclude(facts, firings, &history);
    for w in judgement.iter().flat_map(|j| &j.breaker) {
        match w {
            BreakerWrite::Spend { rule_id, at } => {
                uow.put_breaker_spend(rule_id, *at, None).await?
            }
            BreakerWrite::Trip { rule_id, at, until } => {
                uow.put_breaker_spend(rule_id, *at, Some(*until)).await?
            }
        }
    }
    // A trusted event (nothing stronger than a notice) makes its network usual: on a login,
    // and on a refresh whose network was looked up (it differs from the login's).
    let trusted = judgement
        .as_ref()
        .is_none_or(|j| !j.deny && j.action.is_none_or(|a| a <= Action::Notify));
    if trusted
        && facts.trigger.builds_baseline()
        && (facts.trigger == Trigger::SessionStarted || history.usual_network.is_some())
        && let Some(user) = facts.user_id
    {
        let usual: Vec<&str> = networks
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .collect();
        uow.put_usual_networks(user, &usual, facts.now).await?;
    }
    Ok(judgement)
}

/// What a judgement reads and writes besides the engine's own memory: the writer's transaction
/// live (any [`UnitOfWork`]), an in-process replica in a backtest (`commands::backtest`), so a
/// replay judges with the same code over the same memory as the live run.
pub trait JudgeMemory: Send {
    fn active_sessions_of(
        &mut self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Session>, StoreError>> + Send;
    fn last_seen_session_of(
        &mut self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
    fn active_user_count(&mut self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn window_counts(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, i64, i64), StoreError>> + Send;
    fn put_window_count(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn breaker_spent(
        &mut self,
        rule_id: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, Option<Timestamp>), StoreError>> + Send;
    fn put_breaker_spend(
        &mut self,
        rule_id: &str,
        at: Timestamp,
        tripped_until: Option<Timestamp>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn usual_networks_seen(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        since: Timestamp,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    fn put_usual_networks(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A user's exceptions still live at `now` ("this was me", an analyst's false positive).
    fn live_exceptions(
        &mut self,
        user_id: Uuid,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Exception>, StoreError>> + Send;
}

impl<U: UnitOfWork> JudgeMemory for U {
    fn active_sessions_of(
        &mut self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Session>, StoreError>> + Send {
        UnitOfWork::active_sessions_of(self, user_id)
    }
    fn last_seen_session_of(
        &mut self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send {
        UnitOfWork::last_seen_session_of(self, user_id, except)
    }
    fn active_user_count(&mut self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        UnitOfWork::active_user_count(self)
    }
    fn window_counts(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, i64, i64), StoreError>> + Send {
        UnitOfWork::window_counts(self, rule_id, key_tag, name_tag, since)
    }
    fn put_window_count(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        UnitOfWork::put_window_count(self, rule_id, key_tag, name_tag, at)
    }
    fn breaker_spent(
        &mut self,
        rule_id: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, Option<Timestamp>), StoreError>> + Send {
        UnitOfWork::breaker_spent(self, rule_id, since)
    }
    fn put_breaker_spend(
        &mut self,
        rule_id: &str,
        at: Timestamp,
        tripped_until: Option<Timestamp>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        UnitOfWork::put_breaker_spend(self, rule_id, at, tripped_until)
    }
    fn usual_networks_seen(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        since: Timestamp,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        UnitOfWork::usual_networks_seen(self, user_id, networks, since)
    }
    fn put_usual_networks(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        UnitOfWork::put_usual_networks(self, user_id, networks, at)
    }
    fn live_exceptions(
        &mut self,
        user_id: Uuid,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Exception>, StoreError>> + Send {
        UnitOfWork::live_exceptions(self, user_id, now)
    }
}

/// The event's networks as stored among usual ones: `asn:N` and `net:<keyed hash of the /24
/// or /48>` ("" where unknown).
pub(super) fn usual_tags(rules: &RuleEngine, ctx: &RequestContext) -> [String; 2] {
    [
        ctx.geo
            .as_ref()
            .and_then(|g| g.asn)
            .map_or_else(String::new, |a| format!("asn:{a}")),
        ctx.ip.map_or_else(String::new, |ip| {
            format!("net:{}", rules.tag(&usual_prefix(ip)))
        }),
    ]
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

/// A sighting and the session it belongs to.
struct SessionSighting {
    session: Uuid,
    sighting: Sighting,
}

/// A user's trusted sightings as the store knows them: where each active session started and
/// was last seen. Sessions waiting for re-authentication are not trusted.
async fn trusted_sightings<M: JudgeMemory>(
    uow: &mut M,
    user: Uuid,
) -> Result<Vec<SessionSighting>, StoreError> {
    let mut seen = Vec::new();
    for s in uow.active_sessions_of(user).await? {
        if s.reauth_required {
            continue;
        }
        for (ctx, at) in [
            (&s.login_context, s.created_at),
            (&s.last_context, s.last_seen_at),
        ] {
            seen.push(SessionSighting {
                session: s.session_id,
                sighting: Sighting::of(ctx, at),
            });
        }
    }
    seen.sort_by_key(|s| s.sighting.at);
    Ok(seen)
}
