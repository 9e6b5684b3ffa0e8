//! The rule engine's memory and its one evaluation path, shared by the live writer, the inline
//! test cases and the backtest.
//!
//! Why memory and not history reads: a refresh must stay cheap (DESIGN §8: the writer is the
//! serial path). What the detectors need per user is small — a bounded list of distinct trusted
//! sightings ([`Baseline`]) and per-key sliding windows — so it lives here, bounded, and is
//! seeded on a miss with what the caller loaded ([`RuleEngine::needs`] says when): a user's
//! baseline from the contexts of their active sessions (one indexed read the first time a user
//! is seen after a start). The writer is the only live caller, so the locks are uncontended.
//!
//! What must be the same on every node and survive a restart (issue 15) is not kept here but
//! handed in from the store by the caller, and written back in the writer's transaction: the
//! threshold detectors' counts ([`Needs::windows`]), the breaker's spend per rule and each
//! user's usual networks. The in-memory windows remain for the backtest and inline tests,
//! which have no store.

use super::breaker::{Breaker, BreakerConfig};
use super::detectors::{Baseline, Detector, Memory, Sighting, Window};
use super::file::{RuleError, dir_stamp, load_dir};
use super::judgement::History;
use super::{Action, Facts, Rule, RuleSet, Verdict};
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
    /// What this firing asks for (the rule's strongest action, or the step its evidence
    /// reached) and how severe it is.
    pub action: Action,
    pub severity: String,
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
    /// Key of the keyed hashes under which networks, usernames and counter keys are stored
    /// (derived from the master key at start), so the store never holds them in clear.
    tag_key: std::sync::OnceLock<[u8; 32]>,
}

impl RuleEngine {
    pub fn new(set: RuleSet, breaker: BreakerConfig) -> RuleEngine {
        RuleEngine {
            dir: None,
            set: RwLock::new(Arc::new(set)),
            stamp: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            breaker,
            tag_key: std::sync::OnceLock::new(),
        }
    }

    /// Sets the key of [`RuleEngine::tag`] (once, at start).
    pub fn set_tag_key(&self, key: [u8; 32]) {
        let _ = self.tag_key.set(key);
    }

    /// A keyed hash of `text` (HMAC-SHA256, 128 bits in hex): how counter keys, usernames and
    /// networks are stored. Without a key set (tests, the backtest) an all-zero key.
    pub fn tag(&self, text: &str) -> String {
        use hmac::{Hmac, Mac};
        let key = self.tag_key.get().copied().unwrap_or([0; 32]);
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        let out = mac.finalize().into_bytes();
        out[..16].iter().map(|b| format!("{b:02x}")).collect()
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
        self.evaluate_with(facts, &History::default())
    }

    /// [`RuleEngine::evaluate`] with what the store said (counts, usual networks, other
    /// sessions' sightings).
    pub fn evaluate_with(&self, facts: &Facts, history: &History) -> Vec<Firing> {
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
            let verdict = judge(rule, facts, state, history);
            if let Verdict::Fire(inputs) = verdict {
                let (action, severity) = rule
                    .detector
                    .graded(&inputs)
                    .unwrap_or((rule.action, rule.severity.clone()));
                firings.push(Firing {
                    rule: rule.clone(),
                    inputs,
                    action,
                    severity,
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

fn judge(rule: &Rule, facts: &Facts, state: &mut State, history: &History) -> Verdict {
    let baseline = facts.user_id.and_then(|u| state.baselines.get(&u));
    match &rule.detector {
        Detector::Threshold(t) => {
            if let Some(counts) = history.counts.get(&rule.id) {
                return rule.detector.judge(
                    facts,
                    Memory {
                        counts: Some(*counts),
                        ..Default::default()
                    },
                );
            }
            let Some(key) = t.key(facts) else {
                return Verdict::Unknown("nothing to group this event by");
            };
            if state.windows.len() >= WINDOW_KEYS {
                prune_windows(&mut state.windows, facts.now);
            }
            let window = state.windows.entry((rule.id.clone(), key)).or_default();
            rule.detector.judge(
                facts,
                Memory {
                    window: Some(window),
                    ..Default::default()
                },
            )
        }
        d => {
            // Travel across sessions: the newest of the remembered baseline and the other
            // sessions' sightings the store gave is the point the user was last seen at.
            let mut merged;
            let mut baseline = baseline;
            if let Some(others) = history.other_sessions.as_deref()
                && let Some(newest) = others.iter().max_by_key(|s| s.at)
                && baseline
                    .and_then(|b| b.last())
                    .is_none_or(|l| l.at < newest.at)
            {
                merged = baseline.cloned().unwrap_or_default();
                merged.push(newest.clone());
                baseline = Some(&merged);
            }
            d.judge(
                facts,
                Memory {
                    baseline,
                    usual_network: history.usual_network,
                    ..Default::default()
                },
            )
        }
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
