//! Judging one request-born event: which rules fire, what the strongest enforced action is once
//! the circuit breaker has had its say, and the receipts to record. Pure over what it is given:
//! the handler asks [`RuleEngine::needs`] what history the judgement wants, loads it, and hands it
//! to [`RuleEngine::judge`]; recording the receipts and carrying out the action is the handler's.

use super::breaker::{Admission, Spent};
use super::detectors::{Detector, Sighting, threshold::Counts};
use super::engine::Firing;
use super::{Action, Facts, Mode, RuleEngine, Trigger};
use crate::domain::Timestamp;
use crate::domain::event::{BreakerTripped, Event, RuleFired};
use std::collections::HashMap;

/// What the rules concluded about one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Judgement {
    /// `rule.fired` receipts (and breaker trips), each for a stream of its own.
    pub receipts: Vec<Event>,
    /// The strongest action of the enforced firings, after the breaker, as it applies to the
    /// trigger (see [`effective`]).
    pub action: Option<Action>,
    pub deny: bool,
    /// The rule behind `action` (or the denial), for reasons and actors.
    pub by: Option<String>,
    /// What the breaker spent or tripped, to be stored in the same transaction.
    pub breaker: Vec<BreakerWrite>,
}

/// A change to a rule's breaker budget in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerWrite {
    /// One revoking action taken at this time.
    Spend { rule_id: String, at: Timestamp },
    /// The budget ran out: revoking actions degrade until `until`.
    Trip {
        rule_id: String,
        at: Timestamp,
        until: Timestamp,
    },
}

/// One threshold rule's window to count in the store: the rule, the event's key (in clear,
/// for the caller to hash), the username it counts (for distinct counts) and the window's
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowQuery {
    pub rule_id: String,
    pub key: String,
    pub username: String,
    pub since: Timestamp,
}

/// What a judgement wants from history before it can be made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The user's trusted sightings: the engine has none in memory and a listening detector
    /// compares against them.
    pub baseline: bool,
    /// How many users have an active session: the breaker's count is stale and an enforced
    /// revoking rule listens to this trigger.
    pub active_users: bool,
    /// Whether the event's network is among the user's usual ones: a listening detector weighs
    /// it and the network differs from the session's login.
    pub usual_network: bool,
    /// The user's other sessions' sightings (travel across sessions, on a login).
    pub other_sessions: bool,
    /// Threshold windows to count in the store (and to add this event to).
    pub windows: Vec<WindowQuery>,
}

/// History loaded for a judgement, as [`Needs`] asked.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub baseline: Option<Vec<Sighting>>,
    pub active_users: Option<u64>,
    pub usual_network: Option<bool>,
    /// Sightings of the user's other trusted sessions; travel compares with the newest, so the
    /// store may give only that one.
    pub other_sessions: Option<Vec<Sighting>>,
    /// The store's counts per threshold rule id, this event included.
    pub counts: HashMap<String, Counts>,
    /// The store's breaker spend per rule id (asked for by [`RuleEngine::revoking`]).
    pub breaker: HashMap<String, Spent>,
}

/// What an action can mean for the trigger: a login proves the password (so re-authentication
/// is moot), and a failed login or a reuse has no live session to step up or revoke.
pub fn effective(trigger: Trigger, action: Action) -> Action {
    match (trigger, action) {
        (Trigger::SessionStarted, Action::RequireReauth) => Action::Flag,
        (
            Trigger::LoginFailed | Trigger::ReuseDetected,
            Action::RequireReauth | Action::RevokeSession,
        ) => Action::Flag,
        (_, a) => a,
    }
}

impl RuleEngine {
    /// What [`RuleEngine::judge`] will want to know about this event's past.
    pub fn needs(&self, facts: &Facts<'_>) -> Needs {
        let set = self.rules();
        let listening = || set.rules.iter().filter(|r| r.listens_to(facts.trigger));
        let baseline = facts.trigger.builds_baseline()
            && facts.user_id.is_some_and(|u| !self.has_baseline(u))
            && set.needs_baseline(facts.trigger);
        let active_users = listening()
            .any(|r| r.mode == Mode::Enforce && effective(facts.trigger, r.action).is_revoking())
            && self
                .state
                .lock()
                .expect("rules state")
                .breaker
                .needs_active_users(facts.now);
        let usual_network = listening().any(|r| r.detector.needs_usual_networks())
            && facts.session_login.is_some_and(|login| {
                let asn =
                    |c: &crate::domain::context::RequestContext| c.geo.as_ref().and_then(|g| g.asn);
                let net = |c: &crate::domain::context::RequestContext| {
                    c.ip.map(crate::domain::context::usual_prefix)
                };
                asn(login) != asn(facts.context) || net(login) != net(facts.context)
            });
        let other_sessions = facts.trigger == Trigger::SessionStarted
            && facts.user_id.is_some()
            && listening().any(|r| matches!(r.detector, Detector::ImpossibleTravel(_)));
        let windows = listening()
            .filter_map(|r| match &r.detector {
                Detector::Threshold(t) => Some(WindowQuery {
                    rule_id: r.id.clone(),
                    key: t.key(facts)?,
                    username: facts.username.unwrap_or("").to_owned(),
                    since: facts.now - t.window,
                }),
                _ => None,
            })
            .collect();
        Needs {
            baseline,
            active_users,
            usual_network,
            other_sessions,
            windows,
        }
    }

    /// The enforced firings whose action would end sessions: the breaker's spend of these
    /// rules is what [`RuleEngine::conclude`] wants to know.
    pub fn revoking(&self, facts: &Facts<'_>, firings: &[Firing]) -> Vec<String> {
        firings
            .iter()
            .filter(|f| {
                f.rule.mode == Mode::Enforce && effective(facts.trigger, f.action).is_revoking()
            })
            .map(|f| f.rule.id.clone())
            .collect()
    }

    /// The rules that fire on this event, judged on what the store said.
    pub fn fire(&self, facts: &Facts<'_>, history: &mut History) -> Vec<Firing> {
        if let (Some(user), Some(seen)) = (facts.user_id, history.baseline.take()) {
            self.seed_baseline(user, seen);
        }
        self.evaluate_with(facts, history)
    }

    /// Drops the firings a live exception of the user covers (same device class and network,
    /// the rule or every rule): the one place an exception silences a detector. The caller
    /// loads the exceptions; `networks` are the event's network tags as the usual networks
    /// store them.
    pub fn except(
        &self,
        facts: &Facts<'_>,
        firings: &mut Vec<Firing>,
        exceptions: &[crate::domain::notice::Exception],
        networks: &[String],
    ) {
        if exceptions.is_empty() {
            return;
        }
        let device = crate::domain::notice::device_class(facts.context);
        firings.retain(|f| {
            !exceptions.iter().any(|e| {
                e.covers(
                    facts.now,
                    Some(f.rule.id.as_str()),
                    device.as_ref(),
                    networks,
                )
            })
        });
    }

    /// Judges one event; `None` when no rule fired (the usual case, which then costs no
    /// allocation here). An event no enforced rule flagged joins the user's baseline.
    pub fn judge(&self, facts: &Facts<'_>, mut history: History) -> Option<Judgement> {
        let firings = self.fire(facts, &mut history);
        self.conclude(facts, firings, &history)
    }

    /// The breaker's say over [`RuleEngine::fire`]'s firings, and the receipts.
    pub fn conclude(
        &self,
        facts: &Facts<'_>,
        firings: Vec<Firing>,
        history: &History,
    ) -> Option<Judgement> {
        if let Some(n) = history.active_users {
            self.state
                .lock()
                .expect("rules state")
                .breaker
                .set_active_users(n, facts.now);
        }
        let mut j = Judgement::default();
        for firing in firings {
            let rule = &firing.rule;
            let wanted = effective(facts.trigger, firing.action);
            let mut taken = match rule.mode {
                Mode::Enforce => Some(wanted),
                Mode::Shadow | Mode::Off => None,
            };
            if taken.is_some_and(Action::is_revoking) {
                let admission = {
                    let mut state = self.state.lock().expect("rules state");
                    match history.breaker.get(&rule.id) {
                        // The store's spend: the same budget on every node and after a restart.
                        Some(spent) => state.breaker.admit_spent(&self.breaker, *spent, facts.now),
                        None => state.breaker.admit(&self.breaker, &rule.id, facts.now),
                    }
                };
                match admission {
                    Admission::Allow if history.breaker.contains_key(&rule.id) => {
                        j.breaker.push(BreakerWrite::Spend {
                            rule_id: rule.id.clone(),
                            at: facts.now,
                        })
                    }
                    Admission::Degrade {
                        newly_tripped: true,
                        ..
                    } if history.breaker.contains_key(&rule.id) => {
                        j.breaker.push(BreakerWrite::Trip {
                            rule_id: rule.id.clone(),
                            at: facts.now,
                            until: facts.now + self.breaker.window,
                        })
                    }
                    _ => {}
                }
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
                            window_seconds: self.breaker.window.num_seconds(),
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
                severity: firing.severity.clone(),
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
                context: Some(facts.context.clone()),
            }));
        }
        // Shadow firings change nothing, including the baseline; an enforced firing keeps the
        // event out of it.
        let flagged = j.action.is_some() || j.deny;
        if !flagged && facts.trigger.builds_baseline() && facts.user_id.is_some() {
            self.remember(facts);
        }
        (!j.receipts.is_empty()).then_some(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::context::RequestContext;
    use crate::domain::parse_timestamp;
    use crate::rules::breaker::BreakerConfig;
    use crate::rules::file::parse;
    use crate::rules::{RuleSet, Trigger};
    use std::path::Path;
    use std::sync::Arc;
    use uuid::Uuid;

    fn engine(toml: &str) -> RuleEngine {
        let rules = parse(Path::new("t.toml"), toml).unwrap();
        let set = RuleSet {
            rules: rules.into_iter().map(Arc::new).collect(),
        };
        RuleEngine::new(set, BreakerConfig::default())
    }

    const LOCK_ON_REFRESH: &str = r#"
[[rule]]
id = "lock"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["lock_account"]
explanation = "a new {attribute}: {value}"

[rule.detector]
type = "new_value"
attribute = "country"
min_history = 1
"#;

    fn facts<'a>(ctx: &'a RequestContext, user: Uuid) -> Facts<'a> {
        Facts {
            trigger: Trigger::SessionRefreshed,
            now: parse_timestamp("2026-01-01T00:00:00.000Z").unwrap(),
            user_id: Some(user),
            username: None,
            session_id: None,
            context: ctx,
            session_login: None,
            session_last: None,
        }
    }

    #[test]
    fn the_engine_asks_for_history_once_and_judges_on_what_it_was_given() {
        let e = engine(LOCK_ON_REFRESH);
        let (ctx, user) = (RequestContext::default(), Uuid::from_u128(7));
        let f = facts(&ctx, user);
        assert_eq!(
            e.needs(&f),
            Needs {
                baseline: true,
                active_users: true,
                ..Default::default()
            }
        );
        let given = History {
            baseline: Some(Vec::new()),
            active_users: Some(1_000),
            ..Default::default()
        };
        // No GeoIP in the context: the detector cannot tell, so nothing fires.
        assert_eq!(e.judge(&f, given), None);
        // The baseline is in memory now and the count is fresh: nothing more to load.
        assert_eq!(e.needs(&f), Needs::default());
    }

    #[test]
    fn revoking_actions_only_matter_where_the_trigger_has_something_to_revoke() {
        assert_eq!(
            effective(Trigger::LoginFailed, Action::RevokeSession),
            Action::Flag
        );
        assert_eq!(
            effective(Trigger::SessionStarted, Action::RequireReauth),
            Action::Flag
        );
        assert_eq!(
            effective(Trigger::SessionRefreshed, Action::RequireReauth),
            Action::RequireReauth
        );
        assert_eq!(
            effective(Trigger::ReuseDetected, Action::LogoutEverywhere),
            Action::LogoutEverywhere
        );
    }

    const WEIGHED: &str = r#"
[[rule]]
id = "weighed"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["flag", "require_reauth", "revoke_session"]
explanation = "{summary} = {score}"

[rule.detector]
type = "evidence"
weights = { new_network = 1, other_device = 3 }

[[rule.detector.threshold]]
score = 1
action = "flag"
severity = "low"

[[rule.detector.threshold]]
score = 3
action = "revoke_session"
severity = "high"
"#;

    #[test]
    fn an_evidence_score_picks_the_action_and_severity_and_the_store_spends_the_breaker() {
        let e = engine(WEIGHED);
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let login = RequestContext {
            ip: Some("192.0.2.1".parse().unwrap()),
            device: crate::context::device(chrome),
            ..Default::default()
        };
        let weak = RequestContext {
            ip: Some("198.51.100.1".parse().unwrap()),
            ..login.clone()
        };
        let user = Uuid::from_u128(9);
        let mut f = facts(&weak, user);
        f.session_login = Some(&login);
        // One weak signal: a low flag, no breaker involved.
        let j = e.judge(&f, History::default()).unwrap();
        assert_eq!(j.action, Some(Action::Flag));
        let Event::RuleFired(r) = &j.receipts[0] else {
            panic!()
        };
        assert_eq!(r.severity, "low");
        assert_eq!(r.explanation, "new_network (1) = 1");
        assert_eq!(r.inputs["signals"][0]["weight"], 1);
        // Known as usual: nothing at all.
        let usual = History {
            usual_network: Some(true),
            ..Default::default()
        };
        assert_eq!(e.judge(&f, usual), None);
        // A script on another network: revoke, spent from the store's budget.
        let script = RequestContext {
            device: crate::context::device("python-requests/2.31.0"),
            ..weak.clone()
        };
        let mut f = facts(&script, user);
        f.session_login = Some(&login);
        let mut h = History::default();
        let firings = e.fire(&f, &mut h);
        assert_eq!(e.revoking(&f, &firings), vec!["weighed".to_owned()]);
        h.breaker.insert("weighed".into(), Spent::default());
        let j = e.conclude(&f, firings, &h).unwrap();
        assert_eq!(j.action, Some(Action::RevokeSession));
        assert!(matches!(&j.breaker[..], [BreakerWrite::Spend { .. }]));
        // The store says the budget is spent (by another node): degrade, and record the trip.
        let firings = e.fire(&f, &mut h);
        h.breaker.insert(
            "weighed".into(),
            Spent {
                taken: 20,
                tripped_until: None,
            },
        );
        let j = e.conclude(&f, firings, &h).unwrap();
        assert_eq!(j.action, Some(Action::Flag));
        assert!(matches!(&j.breaker[..], [BreakerWrite::Trip { .. }]));
    }

    #[test]
    fn a_login_is_compared_with_the_users_other_sessions_from_the_store() {
        let e = engine(
            r#"
[[rule]]
id = "travel"
version = 1
severity = "high"
mode = "shadow"
on = ["session.started"]
actions = ["notify"]
explanation = "{speed_kmh}"
[rule.detector]
type = "impossible_travel"
"#,
        );
        let at = |lat: f64, lon: f64, ip: &str| RequestContext {
            ip: Some(ip.parse().unwrap()),
            geo: Some(crate::domain::context::Geo {
                latitude: Some(lat),
                longitude: Some(lon),
                accuracy_radius_km: Some(20),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (london, new_york) = (
            at(51.5, -0.12, "192.0.2.1"),
            at(40.7, -74.0, "198.51.100.1"),
        );
        let user = Uuid::from_u128(11);
        let mut f = facts(&new_york, user);
        f.trigger = Trigger::SessionStarted;
        assert!(e.needs(&f).other_sessions);
        // Another session was in London two hours ago (this node never saw it).
        let other = Sighting::of(&london, f.now - chrono::Duration::hours(2));
        let h = History {
            baseline: Some(Vec::new()),
            other_sessions: Some(vec![other]),
            ..Default::default()
        };
        let j = e
            .judge(&f, h)
            .expect("London to New York in two hours is no flight");
        let Event::RuleFired(r) = &j.receipts[0] else {
            panic!()
        };
        assert!(r.inputs["speed_kmh"].as_i64().unwrap() > 2_000);
        // Eight hours is.
        let mut later = facts(&new_york, Uuid::from_u128(12));
        later.trigger = Trigger::SessionStarted;
        let h = History {
            baseline: Some(Vec::new()),
            other_sessions: Some(vec![Sighting::of(
                &london,
                later.now - chrono::Duration::hours(8),
            )]),
            ..Default::default()
        };
        assert_eq!(e.judge(&later, h), None);
    }
}
