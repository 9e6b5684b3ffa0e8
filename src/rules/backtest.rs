//! Backtest: replay stored history through a rule set and report what would have fired, by
//! rule, without writing anything. History before `since` is replayed too (it builds the
//! baselines and windows the detectors need) but only firings in `[since, until)` are reported.
//! The replay runs the same [`RuleEngine::evaluate`] and baseline rule as the live writer. It
//! is fed events one by one, in log order, by whoever reads them (the store, an export).

use super::breaker::BreakerConfig;
use super::{Facts, Mode, RuleEngine, RuleSet, Trigger};
use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::event::Event;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

#[derive(Debug, Default, Serialize)]
pub struct RuleHits {
    pub firings: u32,
    pub sessions: BTreeSet<Uuid>,
    pub users: BTreeSet<Uuid>,
    /// Usernames of failed logins (which may name no user).
    pub usernames: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct BacktestReport {
    pub events_replayed: u64,
    pub rules: BTreeMap<String, RuleHits>,
}

struct SessionSeen {
    user_id: Uuid,
    login: RequestContext,
    last: RequestContext,
}

/// A replay in progress.
pub struct Backtest {
    engine: RuleEngine,
    sessions: HashMap<Uuid, SessionSeen>,
    since: Option<Timestamp>,
    report: BacktestReport,
}

impl Backtest {
    /// Reports firings at or after `since` (earlier events still build baselines).
    pub fn new(set: RuleSet, since: Option<Timestamp>) -> Backtest {
        let mut report = BacktestReport::default();
        for r in set.rules.iter().filter(|r| r.mode != Mode::Off) {
            report.rules.insert(r.id.clone(), RuleHits::default());
        }
        Backtest {
            engine: RuleEngine::new(set, BreakerConfig::default()),
            sessions: HashMap::new(),
            since,
            report,
        }
    }

    pub fn finish(self) -> BacktestReport {
        self.report
    }

    /// Replays the next event of the log, which occurred at `at`.
    pub fn replay(&mut self, event: &Event, at: Timestamp) {
        let (engine, sessions, report) = (&self.engine, &mut self.sessions, &mut self.report);
        report.events_replayed += 1;
        let in_range = self.since.is_none_or(|s| at >= s);
        let (trigger, user_id, username, session_id, context) = match event {
            Event::SessionStarted(e) => {
                sessions.insert(
                    e.session_id,
                    SessionSeen {
                        user_id: e.user_id,
                        login: e.context.clone(),
                        last: e.context.clone(),
                    },
                );
                (
                    Trigger::SessionStarted,
                    Some(e.user_id),
                    None,
                    Some(e.session_id),
                    e.context.clone(),
                )
            }
            Event::SessionRefreshed(e) => {
                let user = sessions.get(&e.session_id).map(|s| s.user_id);
                (
                    Trigger::SessionRefreshed,
                    user,
                    None,
                    Some(e.session_id),
                    e.context.clone(),
                )
            }
            Event::RefreshRetried(e) => {
                let user = sessions.get(&e.session_id).map(|s| s.user_id);
                (
                    Trigger::RefreshRetried,
                    user,
                    None,
                    Some(e.session_id),
                    e.context.clone(),
                )
            }
            Event::LoginFailed(e) => (
                Trigger::LoginFailed,
                e.user_id,
                Some(e.username.clone()),
                None,
                e.context.clone(),
            ),
            Event::DpopMismatch(e) => {
                let user = sessions.get(&e.session_id).map(|s| s.user_id);
                (
                    Trigger::DpopMismatch,
                    user,
                    None,
                    Some(e.session_id),
                    e.context.clone(),
                )
            }
            Event::ReuseDetected(e) => {
                let user = sessions.get(&e.session_id).map(|s| s.user_id);
                (
                    Trigger::ReuseDetected,
                    user,
                    None,
                    Some(e.session_id),
                    e.context.clone(),
                )
            }
            _ => return,
        };
        let seen = session_id.and_then(|id| sessions.get(&id));
        let facts = Facts {
            trigger,
            now: at,
            user_id,
            username: username.as_deref(),
            session_id,
            context: &context,
            session_login: seen.map(|s| &s.login),
            session_last: seen.map(|s| &s.last),
        };
        let firings = engine.evaluate(&facts);
        let enforced = firings.iter().any(|f| f.rule.mode == Mode::Enforce);
        if !enforced && trigger.builds_baseline() {
            engine.remember(&facts);
        }
        if in_range {
            for f in &firings {
                let hits = report.rules.entry(f.rule.id.clone()).or_default();
                hits.firings += 1;
                hits.sessions.extend(session_id);
                hits.users.extend(user_id);
                hits.usernames.extend(username.clone());
            }
        }
        let last = match event {
            Event::SessionRefreshed(e) => Some(&e.context),
            Event::RefreshRetried(e) => Some(&e.context),
            _ => None,
        };
        if let (Some(context), Some(id)) = (last, session_id)
            && let Some(s) = sessions.get_mut(&id)
        {
            s.last = context.clone();
        }
    }
}
