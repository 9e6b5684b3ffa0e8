//! What a backtest reports: per rule, the firings, sessions and users hit, by action, with the
//! most frequent explanations; and each firing as a line (`--firings`). The replay itself is
//! `commands::backtest` (it judges with the live writer's code); this is plain data.

use crate::domain::event::RuleFired;
use crate::domain::{Timestamp, format_timestamp};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// How many explanations a rule's report lists.
const TOP_EXPLANATIONS: usize = 5;
/// Distinct explanations counted per rule (they carry figures); past it new ones are not.
const EXPLANATIONS_KEPT: usize = 10_000;

#[derive(Debug, Default, Serialize)]
pub struct Hits {
    pub firings: u32,
    pub sessions: BTreeSet<Uuid>,
    pub users: BTreeSet<Uuid>,
}

impl Hits {
    fn add(&mut self, f: &FiringLine) {
        self.firings += 1;
        self.sessions.extend(f.session_id);
        self.users.extend(f.user_id);
    }
}

#[derive(Debug, Serialize)]
pub struct Explained {
    pub explanation: String,
    pub firings: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct RuleHits {
    pub firings: u32,
    pub sessions: BTreeSet<Uuid>,
    pub users: BTreeSet<Uuid>,
    /// Usernames of failed logins (which may name no user).
    pub usernames: BTreeSet<String>,
    /// By what the firing would have done (`none` in shadow mode, `flag` past the breaker).
    pub by_action: BTreeMap<String, Hits>,
    pub top_explanations: Vec<Explained>,
    #[serde(skip)]
    explanations: HashMap<String, u32>,
}

#[derive(Debug, Default, Serialize)]
pub struct BacktestReport {
    pub events_replayed: u64,
    /// Requests the rules were asked about.
    pub events_judged: u64,
    pub rules: BTreeMap<String, RuleHits>,
}

impl BacktestReport {
    /// A report with a (so far empty) line for each of these rules.
    pub fn for_rules(ids: impl Iterator<Item = String>) -> BacktestReport {
        BacktestReport {
            rules: ids.map(|id| (id, RuleHits::default())).collect(),
            ..Default::default()
        }
    }

    pub fn count(&mut self, f: &FiringLine) {
        let hits = self.rules.entry(f.rule.clone()).or_default();
        hits.firings += 1;
        hits.sessions.extend(f.session_id);
        hits.users.extend(f.user_id);
        if f.trigger == "login.failed" {
            hits.usernames.extend(f.username.clone());
        }
        hits.by_action.entry(f.action.clone()).or_default().add(f);
        let kept = hits.explanations.len();
        match hits.explanations.get_mut(&f.explanation) {
            Some(n) => *n += 1,
            None if kept < EXPLANATIONS_KEPT => {
                hits.explanations.insert(f.explanation.clone(), 1);
            }
            None => {}
        }
    }

    /// Fills in each rule's top explanations (most frequent first, then by text).
    pub fn finish(mut self) -> BacktestReport {
        for hits in self.rules.values_mut() {
            let mut all: Vec<(String, u32)> = hits.explanations.drain().collect();
            all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            hits.top_explanations = all
                .into_iter()
                .take(TOP_EXPLANATIONS)
                .map(|(explanation, firings)| Explained {
                    explanation,
                    firings,
                })
                .collect();
        }
        self
    }
}

/// One firing as `--firings` writes it: the receipt the live writer would have recorded, where
/// in the log (the position of the event judged) and when.
#[derive(Debug, Clone, Serialize)]
pub struct FiringLine {
    pub rule: String,
    pub rule_version: u32,
    pub mode: String,
    pub trigger: String,
    /// What would have been done: `none` in shadow mode, `flag` when the breaker degraded it.
    pub action: String,
    pub wanted: String,
    pub deny: bool,
    pub severity: String,
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub position: i64,
    pub occurred_at: String,
    pub explanation: String,
    /// The detector's figures, as in `rule.fired`.
    pub inputs: Value,
    /// The weighed signals of a combined-evidence rule (empty for other detectors).
    pub signals: Value,
}

impl FiringLine {
    pub fn of(f: &RuleFired, position: i64, at: Timestamp) -> FiringLine {
        FiringLine {
            rule: f.rule_id.clone(),
            rule_version: f.rule_version,
            mode: f.mode.clone(),
            trigger: f.trigger.clone(),
            action: f.action.clone(),
            wanted: f.wanted.clone(),
            deny: f.deny,
            severity: f.severity.clone(),
            session_id: f.session_id,
            user_id: f.user_id,
            username: f.username.clone(),
            position,
            occurred_at: format_timestamp(at),
            explanation: f.explanation.clone(),
            inputs: f.inputs.clone(),
            signals: f
                .inputs
                .get("signals")
                .cloned()
                .unwrap_or_else(|| Value::Array(Vec::new())),
        }
    }
}
