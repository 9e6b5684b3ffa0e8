//! New value: a country, region, city, ASN or device (category + OS + browser name) that the
//! user's recent trusted history does not contain. With too little history, or no value to
//! compare (no GeoIP database), the answer is "unknown", never "new".

use super::{Baseline, Sighting};
use crate::domain::Timestamp;
use crate::rules::Verdict;
use serde::Deserialize;
use serde_json::{Map, json};

pub const FIELDS: &[&str] = &["attribute", "value", "known_values", "history"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Country,
    Region,
    City,
    Asn,
    Device,
}

impl Attribute {
    fn as_str(self) -> &'static str {
        match self {
            Attribute::Country => "country",
            Attribute::Region => "region",
            Attribute::City => "city",
            Attribute::Asn => "asn",
            Attribute::Device => "device",
        }
    }

    fn of(self, s: &Sighting) -> Option<String> {
        match self {
            Attribute::Country => s.country.clone(),
            Attribute::Region => s.region.clone(),
            Attribute::City => s.city.clone(),
            Attribute::Asn => s.asn.map(|a| a.to_string()),
            Attribute::Device => s.device.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewValue {
    pub attribute: Attribute,
    /// Compare against this many most recent distinct trusted sightings.
    #[serde(default = "default_last")]
    pub last: usize,
    /// And only those seen within this window, when given.
    #[serde(default, deserialize_with = "super::optional_duration")]
    pub window: Option<chrono::Duration>,
    /// Fewer trusted events than this: "unknown".
    #[serde(default = "default_min_history")]
    pub min_history: u32,
}

fn default_last() -> usize {
    20
}
fn default_min_history() -> u32 {
    3
}

impl NewValue {
    pub fn validate(&self) -> Result<(), String> {
        if self.last == 0 || self.last > super::BASELINE_LEN {
            return Err(format!(
                "last must be between 1 and {}",
                super::BASELINE_LEN
            ));
        }
        if self.window.is_some_and(|w| w <= chrono::Duration::zero()) {
            return Err("window must be longer than zero".into());
        }
        Ok(())
    }

    pub fn judge(&self, baseline: &Baseline, now: &Sighting, at: Timestamp) -> Verdict {
        let Some(value) = self.attribute.of(now) else {
            return Verdict::Unknown("the event has no value for this attribute");
        };
        let recent: Vec<&Sighting> = baseline
            .seen
            .iter()
            .rev()
            .take(self.last)
            .filter(|s| self.window.is_none_or(|w| at - s.at <= w))
            .collect();
        let history: u32 = recent.iter().map(|s| s.count).sum();
        let known: Vec<String> = recent.iter().filter_map(|s| self.attribute.of(s)).collect();
        if known.contains(&value) {
            return Verdict::Quiet;
        }
        if history < self.min_history || known.is_empty() {
            return Verdict::Unknown("too little trusted history");
        }
        let mut distinct = known;
        distinct.sort();
        distinct.dedup();
        let mut m = Map::new();
        m.insert("attribute".into(), json!(self.attribute.as_str()));
        m.insert("value".into(), json!(value));
        m.insert("known_values".into(), json!(distinct.join(", ")));
        m.insert("history".into(), json!(history));
        Verdict::Fire(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn seen(country: Option<&str>, minutes: i64, count: u32) -> Sighting {
        Sighting {
            at: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
                + chrono::Duration::minutes(minutes),
            ip: None,
            country: country.map(str::to_owned),
            region: None,
            city: None,
            asn: None,
            position: None,
            device: None,
            count,
            anonymized: false,
        }
    }

    fn rule() -> NewValue {
        NewValue {
            attribute: Attribute::Country,
            last: 20,
            window: None,
            min_history: 3,
        }
    }

    #[test]
    fn a_country_outside_the_history_fires_a_known_one_does_not() {
        let mut b = Baseline::default();
        b.push(seen(Some("FR"), 0, 5));
        let now = seen(Some("US"), 60, 1);
        assert!(rule().judge(&b, &now, now.at).fired());
        let home = seen(Some("FR"), 60, 1);
        assert_eq!(rule().judge(&b, &home, home.at), Verdict::Quiet);
    }

    #[test]
    fn thin_history_or_no_value_is_unknown_not_new() {
        let mut b = Baseline::default();
        b.push(seen(Some("FR"), 0, 2));
        let now = seen(Some("US"), 60, 1);
        assert!(matches!(
            rule().judge(&b, &now, now.at),
            Verdict::Unknown(_)
        ));
        b.push(seen(Some("FR"), 1, 5));
        let nowhere = seen(None, 60, 1);
        assert!(matches!(
            rule().judge(&b, &nowhere, nowhere.at),
            Verdict::Unknown(_)
        ));
        // History without locations (no GeoIP database then) is no history for countries.
        let mut blind = Baseline::default();
        blind.push(seen(None, 0, 10));
        assert!(matches!(
            rule().judge(&blind, &now, now.at),
            Verdict::Unknown(_)
        ));
    }
}
