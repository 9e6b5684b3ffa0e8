//! The rule engine's memory and its one evaluation path, shared by the live writer, the inline
//! test cases and the backtest.
//!
//! Why memory and not history reads: a refresh must stay cheap (DESIGN §8: the writer is the
//! serial path). What the detectors need per user is small — a bounded list of distinct trusted
//! sightings ([`Baseline`]) and per-key sliding windows — so it lives here, bounded, and is
//! seeded on a miss with what the caller loaded ([`RuleEngine::needs`] says when): a user's
//! baseline from the contexts of their active sessions (one indexed read the first time a user
//! is seen after a start). The writer is the only live caller, so the locks are uncontended. Trade-offs, written down: counters start
//! empty after a restart, and with several nodes each keeps its own memory.

use super::breaker::{Breaker, BreakerConfig};
use super::detectors::{Baseline, Detector, Sighting, Window};
use super::file::{RuleError, dir_stamp, load_dir};
use super::{Facts, Rule, RuleSet, Verdict};
use crate::domain::Timestamp;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// Users whose baselines are kept; past it a tenth is dropped (and reloaded on their next
/// event).
const BASELINE_USERS: usize = 200_000;
/// Threshold keys kept; past it idle ones are dropped.
const WINDOW_KEYS: usize = 100_000;

pub struct Firing {
    pub rule: Arc<Rule>,
    pub inputs: Map<String, Value>,
}

#[derive(Default)]
pub struct State {
    baselines: HashMap<Uuid, Baseline>,
    windows: HashMap<(String, String), Window>,
    pub breaker: Breaker,
}

pub struct RuleEngine {
    dir: Option<PathBuf>,
    set: RwLock<Arc<RuleSet>>,
    stamp: Mutex<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>>,
    pub state: Mutex<State>,
    pub breaker: BreakerConfig,
}

impl RuleEngine {
    pub fn new(set: RuleSet, breaker: BreakerConfig) -> RuleEngine {
        RuleEngine {
            dir: None,
            set: RwLock::new(Arc::new(set)),
            stamp: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            breaker,
        }
    }

    /// No rules at all.
    pub fn disabled() -> RuleEngine {
        RuleEngine::new(RuleSet::default(), BreakerConfig::default())
    }

    /// Loads the rule files of `dir`; they are reloaded by [`RuleEngine::reload_if_changed`].
    pub fn load(dir: &Path, breaker: BreakerConfig) -> Result<RuleEngine, Vec<RuleError>> {
        let stamp = dir_stamp(dir);
        let set = load_dir(dir)?;
        let mut engine = RuleEngine::new(set, breaker);
        engine.dir = Some(dir.to_owned());
        *engine.stamp.get_mut().expect("stamp lock") = stamp;
        Ok(engine)
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.set.read().expect("rule set lock").clone()
    }

    /// Loads the directory again if a file changed. A broken set is refused (and returned);
    /// the rules in force stay.
    pub fn reload_if_changed(&self) -> Result<bool, Vec<RuleError>> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let now = dir_stamp(dir);
        let mut stamp = self.stamp.lock().expect("stamp lock");
        if *stamp == now {
            return Ok(false);
        }
        *stamp = now;
        let set = load_dir(dir)?;
        tracing::info!(rules = set.rules.len(), dir = %dir.display(), "rules reloaded");
        *self.set.write().expect("rule set lock") = Arc::new(set);
        Ok(true)
    }

    pub fn has_baseline(&self, user: Uuid) -> bool {
        self.state
            .lock()
            .expect("rules state")
            .baselines
            .contains_key(&user)
    }

    /// Installs a user's baseline loaded from the store (a cache miss).
    pub fn seed_baseline(&self, user: Uuid, sightings: Vec<Sighting>) {
        let mut state = self.state.lock().expect("rules state");
        evict_if_full(&mut state.baselines);
        let b = state.baselines.entry(user).or_default();
        for s in sightings {
            b.push(s);
        }
    }

    /// Runs every rule listening to this event (exceptions first) and returns those that fire.
    /// Threshold windows count the event as they look at it.
    pub fn evaluate(&self, facts: &Facts) -> Vec<Firing> {
        let set = self.rules();
        let mut firings = Vec::new();
        if !set.rules.iter().any(|r| r.listens_to(facts.trigger)) {
            return firings;
        }
        let mut guard = self.state.lock().expect("rules state");
        let state = &mut *guard;
        for rule in &set.rules {
            if !rule.listens_to(facts.trigger) || rule.excepted(facts) {
                continue;
            }
            let verdict = judge(rule, facts, state);
            if let Verdict::Fire(inputs) = verdict {
                firings.push(Firing {
                    rule: rule.clone(),
                    inputs,
                });
            }
        }
        firings
    }

    /// Adds the event's context to the user's trusted baseline (call only when no enforced
    /// rule flagged it).
    pub fn remember(&self, facts: &Facts) {
        let Some(user) = facts.user_id else { return };
        let mut state = self.state.lock().expect("rules state");
        if !state.baselines.contains_key(&user) {
            evict_if_full(&mut state.baselines);
        }
        state
            .baselines
            .entry(user)
            .or_default()
            .push(Sighting::of(facts.context, facts.now));
    }
}

fn judge(rule: &Rule, facts: &Facts, state: &mut State) -> Verdict {
    let baseline = facts.user_id.and_then(|u| state.baselines.get(&u));
    match &rule.detector {
        Detector::Threshold(t) => {
            let Some(key) = t.key(facts) else {
                return Verdict::Unknown("nothing to group this event by");
            };
            if state.windows.len() >= WINDOW_KEYS {
                prune_windows(&mut state.windows, facts.now);
            }
            let window = state.windows.entry((rule.id.clone(), key)).or_default();
            rule.detector.judge(facts, None, Some(window))
        }
        d => d.judge(facts, baseline, None),
    }
}

fn evict_if_full(baselines: &mut HashMap<Uuid, Baseline>) {
    if baselines.len() < BASELINE_USERS {
        return;
    }
    let victims: Vec<Uuid> = baselines
        .keys()
        .take(BASELINE_USERS / 10)
        .copied()
        .collect();
    for v in victims {
        baselines.remove(&v);
    }
}

fn prune_windows(windows: &mut HashMap<(String, String), Window>, now: Timestamp) {
    windows.retain(|_, w| !w.is_idle(now, chrono::Duration::days(1)));
    if windows.len() >= WINDOW_KEYS {
        windows.clear();
    }
}
