//! Where a session or a user was seen, for the console's map: the sightings of their events
//! (logins, refreshes, grace retries, reuse detections) that GeoIP placed, consecutive
//! sightings from one address merged into one place, and each leg between two places with its
//! distance, time and speed computed here, once, with the travel rule's own great-circle
//! distance. A rule receipt that judged a sighting (a travel or context rule comparing two
//! places or contexts) marks the leg that ends there; any receipt marks the place.

use super::Sessiond;
use crate::domain::event::{Event, RuleFired};
use crate::domain::parse_timestamp;
use crate::error::Error;
use crate::rules::detectors::travel::haversine_km;
use crate::store::{EventFilter, RecordedEvent};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use uuid::Uuid;

/// The events whose context is a sighting of the session's holder (or of its token's thief).
const SIGHTINGS: &[&str] = &[
    "session.started",
    "session.refreshed",
    "session.refresh_retried",
    "session.reuse_detected",
    "session.reauthenticated",
];

/// A user's map reads at most this many of their newest sightings.
const MAX_SIGHTINGS: i64 = 5_000;

#[derive(Debug, Serialize)]
pub struct Places {
    pub places: Vec<Place>,
    pub legs: Vec<Leg>,
}

/// One stop: consecutive sightings from one address.
#[derive(Debug, Serialize)]
pub struct Place {
    pub ip: Option<IpAddr>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_radius_km: Option<u32>,
    pub asn: Option<u32>,
    pub first_seen: String,
    pub last_seen: String,
    pub sightings: u32,
    /// The event types seen here, first occurrence order (`session.reuse_detected` marks a
    /// place a spent token came back from).
    pub events: Vec<String>,
    pub session_ids: Vec<Uuid>,
    pub judged_by: Vec<Judged>,
}

/// From one place to the next: great-circle distance, the time between leaving the first
/// (its last sighting) and reaching the second (its first), and the speed that needs.
#[derive(Debug, Serialize)]
pub struct Leg {
    /// Indexes into `places`.
    pub from: usize,
    pub to: usize,
    pub distance_km: f64,
    pub duration_s: i64,
    /// `null` when both sightings are at the same instant.
    pub speed_kmh: Option<f64>,
    pub judged_by: Vec<Judged>,
}

/// A rule receipt (`rule.fired`) about a sighting.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub position: i64,
    pub rule_id: String,
    pub mode: String,
    pub severity: String,
    pub action: String,
    pub explanation: String,
}

struct Sighting {
    at: String,
    event_type: String,
    session_id: Uuid,
    ip: Option<IpAddr>,
    geo: crate::domain::context::Geo,
    lat: f64,
    lon: f64,
}

fn sighting(e: &RecordedEvent) -> Result<Option<Sighting>, Error> {
    let (session_id, context) = match e.decode()? {
        Event::SessionStarted(s) => (s.session_id, s.context),
        Event::SessionRefreshed(s) => (s.session_id, s.context),
        Event::RefreshRetried(s) => (s.session_id, s.context),
        Event::ReuseDetected(s) => (s.session_id, s.context),
        Event::SessionReauthenticated(s) => (s.session_id, s.context),
        _ => return Ok(None),
    };
    // Without coordinates (no GeoIP, or erased) a sighting has no place on a map.
    let Some(geo) = context.geo else {
        return Ok(None);
    };
    let (Some(lat), Some(lon)) = (geo.latitude, geo.longitude) else {
        return Ok(None);
    };
    Ok(Some(Sighting {
        at: e.occurred_at.clone(),
        event_type: e.event_type.clone(),
        session_id,
        ip: context.ip,
        geo,
        lat,
        lon,
    }))
}

/// Whether a receipt's detector compared two places or contexts (travel, context change,
/// weighed evidence): then it judged the leg, not only the place.
fn judges_a_leg(r: &RuleFired) -> bool {
    ["distance_km", "before", "after"]
        .iter()
        .any(|k| r.inputs.get(k).is_some())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn seconds_between(from: &str, to: &str) -> i64 {
    match (parse_timestamp(from), parse_timestamp(to)) {
        (Some(a), Some(b)) => (b - a).num_seconds().max(0),
        _ => 0,
    }
}

/// Places and legs from `events` (sightings and receipts, in log order).
fn draw(events: &[RecordedEvent]) -> Result<Places, Error> {
    let mut places: Vec<Place> = Vec::new();
    let mut legs: Vec<Leg> = Vec::new();
    // Per session and event type, the newest sighting: (place index, whether it opened the
    // place, its time). A receipt follows its trigger in the same transaction.
    let mut latest: HashMap<(Uuid, String), (usize, bool, String)> = HashMap::new();
    for e in events {
        if e.event_type == "rule.fired" {
            let Event::RuleFired(r) = e.decode()? else {
                continue;
            };
            let Some(sid) = r.session_id else { continue };
            let Some((place, opened, at)) = latest.get(&(sid, r.trigger.clone())) else {
                continue;
            };
            // Same command, same instant: otherwise the trigger's own event did not stand
            // (a refused request) and the newest sighting is an older one.
            if *at != e.occurred_at {
                continue;
            }
            let judged = Judged {
                position: e.position,
                rule_id: r.rule_id.clone(),
                mode: r.mode.clone(),
                severity: r.severity.clone(),
                action: r.action.clone(),
                explanation: r.explanation.clone(),
            };
            if *opened
                && judges_a_leg(&r)
                && let Some(leg) = legs.iter_mut().rfind(|l| l.to == *place)
            {
                leg.judged_by.push(judged.clone());
            }
            places[*place].judged_by.push(judged);
            continue;
        }
        let Some(s) = sighting(e)? else { continue };
        let same = places
            .last()
            .is_some_and(|p| p.ip == s.ip && p.latitude == s.lat && p.longitude == s.lon);
        if !same {
            if let Some(prev) = places.last() {
                let distance = haversine_km((prev.latitude, prev.longitude), (s.lat, s.lon));
                let duration_s = seconds_between(&prev.last_seen, &s.at);
                legs.push(Leg {
                    from: places.len() - 1,
                    to: places.len(),
                    distance_km: round1(distance),
                    duration_s,
                    speed_kmh: (duration_s > 0)
                        .then(|| round1(distance / (duration_s as f64 / 3600.0))),
                    judged_by: Vec::new(),
                });
            }
            places.push(Place {
                ip: s.ip,
                country: s.geo.country.clone(),
                city: s.geo.city.clone(),
                latitude: s.lat,
                longitude: s.lon,
                accuracy_radius_km: s.geo.accuracy_radius_km,
                asn: s.geo.asn,
                first_seen: s.at.clone(),
                last_seen: s.at.clone(),
                sightings: 0,
                events: Vec::new(),
                session_ids: Vec::new(),
                judged_by: Vec::new(),
            });
        }
        let index = places.len() - 1;
        let p = &mut places[index];
        p.last_seen = s.at.clone();
        p.sightings += 1;
        if !p.events.contains(&s.event_type) {
            p.events.push(s.event_type.clone());
        }
        if !p.session_ids.contains(&s.session_id) {
            p.session_ids.push(s.session_id);
        }
        latest.insert((s.session_id, s.event_type), (index, !same, s.at));
    }
    Ok(Places { places, legs })
}

impl Sessiond {
    /// A session's places and legs.
    pub async fn session_places(&self, session_id: Uuid) -> Result<Places, Error> {
        self.store
            .session(session_id)
            .await?
            .ok_or(Error::NotFound)?;
        self.places_of(vec![format!("session-{session_id}")], session_id)
            .await
    }

    /// A user's places and legs over all their sessions, by id or name.
    pub async fn user_places(&self, id_or_name: &str) -> Result<Places, Error> {
        let user = self.user_detail(id_or_name).await?;
        let streams = user
            .sessions
            .iter()
            .map(|s| format!("session-{}", s.session_id))
            .collect::<Vec<_>>();
        if streams.is_empty() {
            return Ok(Places {
                places: Vec::new(),
                legs: Vec::new(),
            });
        }
        self.places_of(streams, user.user_id).await
    }

    /// The newest sightings of `streams` and the receipts about `subject`, in log order.
    async fn places_of(&self, streams: Vec<String>, subject: Uuid) -> Result<Places, Error> {
        let mut events = self
            .store
            .events(&EventFilter {
                stream_ids: streams,
                event_types: SIGHTINGS.iter().map(|t| (*t).to_owned()).collect(),
                newest_first: true,
                limit: Some(MAX_SIGHTINGS),
                ..Default::default()
            })
            .await?;
        events.reverse();
        let Some(first) = events.first().map(|e| e.position) else {
            return Ok(Places {
                places: Vec::new(),
                legs: Vec::new(),
            });
        };
        let receipts = self
            .store
            .events(&EventFilter {
                event_types: vec!["rule.fired".into()],
                subject: Some(subject),
                after_position: first - 1,
                ..Default::default()
            })
            .await?;
        events.extend(receipts);
        events.sort_by_key(|e| e.position);
        draw(&events)
    }
}
