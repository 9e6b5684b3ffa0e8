//! The detectors: five, weighed evidence, and `all`/`any` of others. Each is a plain typed value built from a rule's `[rule.detector]` table
//! (validated at load) with a pure `judge` function: facts in, [`Verdict`] out.

pub mod context_change;
pub mod evidence;
pub mod new_value;
pub mod reuse;
pub mod threshold;
pub mod travel;

use super::{Facts, Verdict};
use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use serde::Deserialize;
use std::collections::VecDeque;
use std::net::IpAddr;

pub use context_change::SessionContextChange;
pub use evidence::{Against, Evidence};
pub use new_value::NewValue;
pub use reuse::TokenReuse;
pub use threshold::{Threshold, Window};
pub use travel::ImpossibleTravel;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Detector {
    ImpossibleTravel(ImpossibleTravel),
    NewValue(NewValue),
    SessionContextChange(SessionContextChange),
    Threshold(Threshold),
    TokenReuse(TokenReuse),
    /// A score over weighted signals with a threshold per action.
    Evidence(Evidence),
    /// Fires when every listed detector fires.
    All {
        of: Vec<Detector>,
    },
    /// Fires when at least one listed detector fires.
    Any {
        of: Vec<Detector>,
    },
}

/// What a judgement is given beyond the event's facts: the user's trusted history, the rule's
/// counter for this event's key (threshold), and whether the event's network is usual.
#[derive(Default)]
pub struct Memory<'a> {
    pub baseline: Option<&'a Baseline>,
    pub window: Option<&'a mut Window>,
    /// Counts from the store, when it keeps this rule's window (they win over `window`).
    pub counts: Option<threshold::Counts>,
    pub usual_network: Option<bool>,
}

impl Detector {
    pub fn name(&self) -> &'static str {
        match self {
            Detector::ImpossibleTravel(_) => "impossible_travel",
            Detector::NewValue(_) => "new_value",
            Detector::SessionContextChange(_) => "session_context_change",
            Detector::Threshold(_) => "threshold",
            Detector::TokenReuse(_) => "token_reuse",
            Detector::Evidence(_) => "evidence",
            Detector::All { .. } => "all",
            Detector::Any { .. } => "any",
        }
    }

    /// Checks parameters a type cannot express (ranges, non-empty lists).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Detector::ImpossibleTravel(d) => d.validate(),
            Detector::NewValue(d) => d.validate(),
            Detector::SessionContextChange(d) => d.validate(),
            Detector::Threshold(d) => d.validate(),
            Detector::TokenReuse(d) => d.validate(),
            Detector::Evidence(d) => d.validate(),
            Detector::All { of } | Detector::Any { of } => {
                if of.len() < 2 {
                    return Err("of must list at least two detectors".into());
                }
                for d in of {
                    if matches!(d, Detector::Threshold(_)) {
                        return Err("a threshold cannot be combined: its window counts every event it sees, so it must be a rule of its own".into());
                    }
                    d.validate().map_err(|e| format!("{}: {e}", d.name()))?;
                }
                Ok(())
            }
        }
    }

    /// The figures a firing reports, which an explanation may name.
    pub fn fields(&self) -> Vec<&'static str> {
        match self {
            Detector::ImpossibleTravel(_) => travel::FIELDS.to_vec(),
            Detector::NewValue(_) => new_value::FIELDS.to_vec(),
            Detector::SessionContextChange(_) => context_change::FIELDS.to_vec(),
            Detector::Threshold(_) => threshold::FIELDS.to_vec(),
            Detector::TokenReuse(_) => reuse::FIELDS.to_vec(),
            Detector::Evidence(_) => evidence::FIELDS.to_vec(),
            Detector::All { of } | Detector::Any { of } => {
                let mut f: Vec<&'static str> = vec!["signals", "summary"];
                for d in of {
                    for name in d.fields() {
                        if !f.contains(&name) {
                            f.push(name);
                        }
                    }
                }
                f
            }
        }
    }

    pub fn needs_baseline(&self) -> bool {
        match self {
            Detector::ImpossibleTravel(_) | Detector::NewValue(_) | Detector::Evidence(_) => true,
            Detector::All { of } | Detector::Any { of } => of.iter().any(Detector::needs_baseline),
            _ => false,
        }
    }

    /// Whether judging wants to know if the event's network is one of the user's usual ones.
    pub fn needs_usual_networks(&self) -> bool {
        match self {
            Detector::Evidence(_) => true,
            Detector::All { of } | Detector::Any { of } => {
                of.iter().any(Detector::needs_usual_networks)
            }
            _ => false,
        }
    }

    /// What a firing asks for and how severe it is, when the detector grades its findings
    /// (evidence's thresholds); `None` means the rule's own actions and severity.
    pub fn graded(
        &self,
        inputs: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<(crate::rules::Action, String)> {
        match self {
            Detector::Evidence(_) => Some((
                crate::rules::Action::parse(inputs.get("action")?.as_str()?)?,
                inputs.get("severity")?.as_str()?.to_owned(),
            )),
            _ => None,
        }
    }

    /// Judges one event against what is remembered (see [`Memory`]).
    pub fn judge(&self, facts: &Facts, memory: Memory<'_>) -> Verdict {
        let empty = Baseline::default();
        let baseline = memory.baseline.unwrap_or(&empty);
        let (window, counts) = (memory.window, memory.counts);
        match self {
            Detector::ImpossibleTravel(d) => {
                d.judge(baseline.last(), &Sighting::of(facts.context, facts.now))
            }
            Detector::NewValue(d) => {
                d.judge(baseline, &Sighting::of(facts.context, facts.now), facts.now)
            }
            Detector::SessionContextChange(d) => d.judge(facts.session_login, facts.context),
            Detector::Threshold(d) => match (counts, window) {
                (Some(c), _) => d.verdict(c, facts),
                (None, Some(w)) => d.observe(w, facts),
                (None, None) => Verdict::Unknown("nothing to group this event by"),
            },
            Detector::TokenReuse(d) => d.judge(facts.session_last, facts.context),
            Detector::Evidence(d) => d.judge(
                facts.context,
                facts.now,
                Against {
                    login: facts.session_login,
                    last: baseline.last(),
                    usual_network: memory.usual_network,
                },
            ),
            Detector::All { of } | Detector::Any { of } => {
                let all = matches!(self, Detector::All { .. });
                let mut inputs = serde_json::Map::new();
                let mut signals = Vec::new();
                let (mut fired, mut unknown) = (0, 0);
                for d in of {
                    let v = d.judge(
                        facts,
                        Memory {
                            baseline: Some(baseline),
                            usual_network: memory.usual_network,
                            ..Default::default()
                        },
                    );
                    let outcome = match v {
                        Verdict::Fire(m) => {
                            fired += 1;
                            for (k, x) in m {
                                inputs.entry(k).or_insert(x);
                            }
                            "fire"
                        }
                        Verdict::Quiet => "quiet",
                        Verdict::Unknown(_) => {
                            unknown += 1;
                            "unknown"
                        }
                    };
                    signals.push(serde_json::json!({ "detector": d.name(), "outcome": outcome }));
                }
                let n = of.len();
                let fires = if all { fired == n } else { fired > 0 };
                if !fires {
                    // Quiet if one detector could tell it is quiet; else nobody could tell.
                    let quiet = n - fired - unknown;
                    return if quiet == 0 {
                        Verdict::Unknown("a combined detector could not tell")
                    } else {
                        Verdict::Quiet
                    };
                }
                let summary: Vec<String> = signals
                    .iter()
                    .filter(|s| s["outcome"] == "fire")
                    .map(|s| s["detector"].as_str().unwrap_or("").to_owned())
                    .collect();
                inputs.insert(
                    "summary".into(),
                    serde_json::json!(summary.join(if all { " and " } else { " or " })),
                );
                inputs.insert("signals".into(), serde_json::Value::Array(signals));
                Verdict::Fire(inputs)
            }
        }
    }
}

/// One trusted context of a user: where and what from, and when it was last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub at: Timestamp,
    pub ip: Option<IpAddr>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    /// Latitude, longitude, accuracy radius in km.
    pub position: Option<(f64, f64, f64)>,
    /// Device category / OS / browser name: versions are not part of a device's identity.
    pub device: Option<String>,
    /// How many consecutive trusted events this sighting stands for.
    pub count: u32,
    /// On a hosting, VPN, proxy or Tor network: its location is the exit's, not the user's.
    pub anonymized: bool,
}

impl Sighting {
    pub fn of(ctx: &RequestContext, at: Timestamp) -> Sighting {
        let geo = ctx.geo.as_ref();
        Sighting {
            at,
            ip: ctx.ip,
            country: geo.and_then(|g| g.country.clone()),
            region: geo.and_then(|g| g.region.clone()),
            city: geo.and_then(|g| g.city.clone()),
            asn: geo.and_then(|g| g.asn),
            position: geo.and_then(|g| g.position()),
            device: ctx.device_class(),
            count: 1,
            anonymized: geo.is_some_and(|g| g.anonymizer.is_some()),
        }
    }

    /// Same place, network and device: a repeat, not news.
    fn same_as(&self, other: &Sighting) -> bool {
        self.ip.map(crate::domain::context::network_prefix)
            == other.ip.map(crate::domain::context::network_prefix)
            && self.country == other.country
            && self.region == other.region
            && self.city == other.city
            && self.asn == other.asn
            && self.device == other.device
    }
}

/// A user's recent trusted sightings, newest last. A run of identical sightings (the usual
/// refresh after refresh from one place) is one entry with a count, so the bounded list spans
/// many distinct contexts rather than the last few minutes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    pub seen: VecDeque<Sighting>,
}

/// Distinct sightings kept per user.
pub const BASELINE_LEN: usize = 32;

impl Baseline {
    pub fn last(&self) -> Option<&Sighting> {
        self.seen.back()
    }

    pub fn events(&self) -> u32 {
        self.seen.iter().map(|s| s.count).sum()
    }

    /// Adds a trusted sighting. Older sightings (a cold load out of order) go in time order.
    pub fn push(&mut self, s: Sighting) {
        if let Some(last) = self.seen.back_mut()
            && last.same_as(&s)
        {
            last.count += s.count;
            last.at = last.at.max(s.at);
            last.position = s.position.or(last.position);
            return;
        }
        let at = self.seen.iter().rposition(|x| x.at <= s.at);
        match at {
            Some(i) => self.seen.insert(i + 1, s),
            None => self.seen.push_front(s),
        }
        while self.seen.len() > BASELINE_LEN {
            self.seen.pop_front();
        }
    }
}

/// `"30s"`, `"10m"`, `"24h"`, `"7d"` in rule files.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<chrono::Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::domain::parse::parse_duration(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\", \"10m\", \"24h\", \"7d\""
        ))
    })
}

pub(crate) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<chrono::Duration>, D::Error> {
    duration(d).map(Some)
}
