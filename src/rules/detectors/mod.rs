//! The five detectors. Each is a plain typed value built from a rule's `[rule.detector]` table
//! (validated at load) with a pure `judge` function: facts in, [`Verdict`] out.

pub mod context_change;
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
}

impl Detector {
    pub fn name(&self) -> &'static str {
        match self {
            Detector::ImpossibleTravel(_) => "impossible_travel",
            Detector::NewValue(_) => "new_value",
            Detector::SessionContextChange(_) => "session_context_change",
            Detector::Threshold(_) => "threshold",
            Detector::TokenReuse(_) => "token_reuse",
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
        }
    }

    /// The figures a firing reports, which an explanation may name.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Detector::ImpossibleTravel(_) => travel::FIELDS,
            Detector::NewValue(_) => new_value::FIELDS,
            Detector::SessionContextChange(_) => context_change::FIELDS,
            Detector::Threshold(_) => threshold::FIELDS,
            Detector::TokenReuse(_) => reuse::FIELDS,
        }
    }

    pub fn needs_baseline(&self) -> bool {
        matches!(self, Detector::ImpossibleTravel(_) | Detector::NewValue(_))
    }

    /// Judges one event. `baseline` is the user's trusted history; `window` the rule's counter
    /// for this event's key (threshold only).
    pub fn judge(
        &self,
        facts: &Facts,
        baseline: Option<&Baseline>,
        window: Option<&mut Window>,
    ) -> Verdict {
        let empty = Baseline::default();
        let baseline = baseline.unwrap_or(&empty);
        match self {
            Detector::ImpossibleTravel(d) => {
                d.judge(baseline.last(), &Sighting::of(facts.context, facts.now))
            }
            Detector::NewValue(d) => {
                d.judge(baseline, &Sighting::of(facts.context, facts.now), facts.now)
            }
            Detector::SessionContextChange(d) => d.judge(facts.session_login, facts.context),
            Detector::Threshold(d) => match window {
                Some(w) => d.observe(w, facts),
                None => Verdict::Unknown("nothing to group this event by"),
            },
            Detector::TokenReuse(d) => d.judge(facts.session_last, facts.context),
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
