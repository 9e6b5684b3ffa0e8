//! Impossible travel: from the user's last trusted sighting to here, faster than a plane.
//! The distance is reduced by both accuracy radii (either point may be anywhere in its
//! circle), and the time gap has a floor so two requests a second apart do not divide by ~0.

use super::Sighting;
use crate::rules::Verdict;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub const FIELDS: &[&str] = &[
    "from_ip",
    "to_ip",
    "from_city",
    "to_city",
    "from_country",
    "to_country",
    "from_radius_km",
    "to_radius_km",
    "distance_km",
    "effective_distance_km",
    "gap_minutes",
    "speed_kmh",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpossibleTravel {
    /// Speeds above this fire (a long-haul flight is ~900 km/h).
    #[serde(default = "default_speed")]
    pub max_speed_kmh: f64,
    /// Gaps shorter than this count as this long.
    #[serde(default = "default_min_gap", deserialize_with = "super::duration")]
    pub min_gap: chrono::Duration,
    /// The same ASN within this distance is one mobile carrier's imprecise geolocation.
    #[serde(default = "default_same_asn_km")]
    pub same_asn_within_km: f64,
}

/// A long-haul airliner's cruising speed, ~900-1000 km/h over the ground: the lower end, so a
/// flight never looks impossible and anything faster is not one.
pub const AIRLINER_KMH: f64 = 900.0;

fn default_speed() -> f64 {
    AIRLINER_KMH
}
fn default_min_gap() -> chrono::Duration {
    chrono::Duration::minutes(5)
}
fn default_same_asn_km() -> f64 {
    500.0
}

impl Default for ImpossibleTravel {
    fn default() -> Self {
        ImpossibleTravel {
            max_speed_kmh: default_speed(),
            min_gap: default_min_gap(),
            same_asn_within_km: default_same_asn_km(),
        }
    }
}

/// Great-circle distance in km.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl ImpossibleTravel {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_speed_kmh.is_finite() && self.max_speed_kmh > 0.0) {
            return Err("max_speed_kmh must be a positive number".into());
        }
        if self.min_gap <= chrono::Duration::zero() {
            return Err("min_gap must be longer than zero".into());
        }
        if self.same_asn_within_km.is_nan() || self.same_asn_within_km < 0.0 {
            return Err("same_asn_within_km must not be negative".into());
        }
        Ok(())
    }

    pub fn judge(&self, last: Option<&Sighting>, now: &Sighting) -> Verdict {
        let Some(last) = last else {
            return Verdict::Unknown("no trusted sighting of this user yet");
        };
        let (Some(from), Some(to)) = (last.position, now.position) else {
            return Verdict::Unknown("no location for one of the two sightings");
        };
        // A VPN's or a hosting provider's location is its exit's: no journey of the user's
        // can be measured from it (the evidence rule weighs such networks instead).
        if last.anonymized || now.anonymized {
            return Verdict::Unknown("one of the two sightings is on an anonymising network");
        }
        if let (Some(a), Some(b)) = (last.ip, now.ip)
            && crate::domain::context::network_prefix(a)
                == crate::domain::context::network_prefix(b)
        {
            return Verdict::Quiet;
        }
        let distance = haversine_km((from.0, from.1), (to.0, to.1));
        if last.asn.is_some() && last.asn == now.asn && distance <= self.same_asn_within_km {
            return Verdict::Quiet;
        }
        let effective = (distance - from.2 - to.2).max(0.0);
        let gap = (now.at - last.at).max(self.min_gap);
        let hours = gap.num_milliseconds() as f64 / 3_600_000.0;
        let speed = effective / hours;
        if speed <= self.max_speed_kmh {
            return Verdict::Quiet;
        }
        let mut m = Map::new();
        m.insert("from_ip".into(), json!(last.ip.map(|i| i.to_string())));
        m.insert("to_ip".into(), json!(now.ip.map(|i| i.to_string())));
        m.insert("from_city".into(), json!(last.city));
        m.insert("to_city".into(), json!(now.city));
        m.insert("from_country".into(), json!(last.country));
        m.insert("to_country".into(), json!(now.country));
        m.insert("from_radius_km".into(), json!(from.2));
        m.insert("to_radius_km".into(), json!(to.2));
        m.insert("distance_km".into(), json!(round1(distance)));
        m.insert("effective_distance_km".into(), json!(round1(effective)));
        m.insert(
            "gap_minutes".into(),
            json!(round1((now.at - last.at).num_seconds() as f64 / 60.0)),
        );
        m.insert("speed_kmh".into(), Value::from(speed.round() as i64));
        Verdict::Fire(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minutes: i64, ip: &str, lat: f64, lon: f64, asn: u32) -> Sighting {
        Sighting {
            at: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
                + chrono::Duration::minutes(minutes),
            ip: Some(ip.parse().unwrap()),
            country: None,
            region: None,
            city: None,
            asn: Some(asn),
            position: Some((lat, lon, 20.0)),
            device: None,
            count: 1,
            anonymized: false,
        }
    }

    #[test]
    fn paris_to_new_york_in_ten_minutes_fires_and_reports_its_figures() {
        let d = ImpossibleTravel::default();
        let v = d.judge(
            Some(&at(0, "192.0.2.1", 48.85, 2.35, 1)),
            &at(10, "198.51.100.1", 40.71, -74.0, 2),
        );
        let Verdict::Fire(m) = v else { panic!("{v:?}") };
        let distance = m["distance_km"].as_f64().unwrap();
        assert!((5800.0..5900.0).contains(&distance), "{distance}");
        assert_eq!(
            m["effective_distance_km"].as_f64().unwrap(),
            round1(distance - 40.0)
        );
        assert!(m["speed_kmh"].as_i64().unwrap() > 30_000);
    }

    #[test]
    fn near_moves_shared_networks_and_slow_journeys_are_quiet() {
        let d = ImpossibleTravel::default();
        let paris = at(0, "192.0.2.1", 48.85, 2.35, 1);
        // 30 km in a minute: inside the two accuracy radii.
        assert_eq!(
            d.judge(Some(&paris), &at(1, "198.51.100.1", 49.1, 2.45, 2)),
            Verdict::Quiet
        );
        // Same /24 anywhere: one network.
        assert_eq!(
            d.judge(Some(&paris), &at(1, "192.0.2.200", 40.71, -74.0, 2)),
            Verdict::Quiet
        );
        // Same ASN 400 km away: a carrier's geolocation.
        assert_eq!(
            d.judge(Some(&paris), &at(10, "198.51.100.1", 45.76, 4.83, 1)),
            Verdict::Quiet
        );
        // Paris to New York in ten hours is a flight.
        assert_eq!(
            d.judge(Some(&paris), &at(600, "198.51.100.1", 40.71, -74.0, 2)),
            Verdict::Quiet
        );
    }

    #[test]
    fn without_locations_the_answer_is_unknown() {
        let d = ImpossibleTravel::default();
        let mut here = at(10, "198.51.100.1", 40.71, -74.0, 2);
        assert!(matches!(d.judge(None, &here), Verdict::Unknown(_)));
        here.position = None;
        assert!(matches!(
            d.judge(Some(&at(0, "192.0.2.1", 48.85, 2.35, 1)), &here),
            Verdict::Unknown(_)
        ));
    }
}
