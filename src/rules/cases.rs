//! Inline test cases (`[[rule.test]]`): a rule's own examples, run by `sessiond rules test`.
//! A case describes the user's trusted history, the session's login, the event's context and
//! how many earlier events share its key, and says whether the rule should fire, stay quiet,
//! or answer "unknown". Cases run the detector itself, in enforce mode, at a fixed time.

use super::detectors::{Baseline, Detector, Sighting, Window};
use super::{Facts, Rule, Trigger, Verdict};
use crate::domain::Timestamp;
use crate::domain::context::{Geo, RequestContext};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Fire,
    Quiet,
    Unknown,
}

/// A request context in a case; `minutes_ago` places it before the event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseContext {
    pub ip: Option<std::net::IpAddr>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub radius_km: Option<u32>,
    pub asn: Option<u32>,
    pub ua: Option<String>,
    #[serde(default)]
    pub minutes_ago: i64,
}

impl CaseContext {
    pub fn context(&self) -> RequestContext {
        let has_geo = self.country.is_some() || self.lat.is_some() || self.asn.is_some();
        RequestContext {
            ip: self.ip,
            user_agent: self.ua.clone(),
            device: self.ua.as_deref().and_then(crate::context::device),
            geo: has_geo.then(|| Geo {
                country: self.country.clone(),
                region: self.region.clone(),
                city: self.city.clone(),
                latitude: self.lat,
                longitude: self.lon,
                accuracy_radius_km: self.radius_km,
                asn: self.asn,
                ..Default::default()
            }),
            request_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// The event type judged; one the rule listens to.
    pub event: String,
    pub expect: Expect,
    #[serde(default)]
    pub history: Vec<CaseContext>,
    /// The session's login context (and the family's last use, for reuse).
    pub login: Option<CaseContext>,
    pub current: CaseContext,
    pub username: Option<String>,
    /// Earlier events with the same key, one a second before this one.
    #[serde(default)]
    pub prior: u32,
    /// The earlier events each name another user (password spray).
    #[serde(default)]
    pub prior_distinct_users: bool,
}

fn case_time() -> Timestamp {
    crate::domain::parse_timestamp("2026-01-01T12:00:00Z").expect("literal time")
}

impl TestCase {
    pub fn validate(&self, on: &[Trigger]) -> Result<(), String> {
        let t =
            Trigger::parse(&self.event).ok_or_else(|| format!("unknown event {:?}", self.event))?;
        if !on.contains(&t) {
            return Err(format!("the rule does not listen to {:?}", self.event));
        }
        Ok(())
    }

    /// Runs the case against `rule`; `Err` says how the outcome differed.
    pub fn run(&self, rule: &Rule) -> Result<(), String> {
        let trigger = Trigger::parse(&self.event).ok_or("unknown event")?;
        let now = case_time();
        let user = uuid::Uuid::nil();
        let mut baseline = Baseline::default();
        for h in &self.history {
            baseline.push(Sighting::of(
                &h.context(),
                now - chrono::Duration::minutes(h.minutes_ago),
            ));
        }
        let login = self.login.as_ref().map(CaseContext::context);
        let current = self.current.context();
        let facts = |ctx, at, name| Facts {
            trigger,
            now: at,
            user_id: Some(user),
            username: name,
            session_id: None,
            context: ctx,
            session_login: login.as_ref(),
            session_last: login.as_ref(),
        };
        let username = self.username.as_deref().unwrap_or("alice");
        let mut window = Window::default();
        let names: Vec<String> = (0..self.prior)
            .map(|i| {
                if self.prior_distinct_users {
                    format!("user{i}")
                } else {
                    username.to_owned()
                }
            })
            .collect();
        if let Detector::Threshold(_) = rule.detector {
            for (i, name) in names.iter().enumerate() {
                let at = now - chrono::Duration::seconds(i64::from(self.prior) - i as i64);
                rule.detector
                    .judge(&facts(&current, at, Some(name)), None, Some(&mut window));
            }
        }
        let f = facts(
            &current,
            now - chrono::Duration::minutes(self.current.minutes_ago),
            Some(username),
        );
        let verdict = if rule.excepted(&f) {
            Verdict::Quiet
        } else {
            rule.detector.judge(&f, Some(&baseline), Some(&mut window))
        };
        let got = match &verdict {
            Verdict::Fire(_) => Expect::Fire,
            Verdict::Quiet => Expect::Quiet,
            Verdict::Unknown(_) => Expect::Unknown,
        };
        if got == self.expect {
            Ok(())
        } else {
            Err(format!("expected {:?}, got {verdict:?}", self.expect))
        }
    }
}

/// Runs every case of every rule: (rule id, case name, outcome).
pub fn run_all(rules: &[std::sync::Arc<Rule>]) -> Vec<(String, String, Result<(), String>)> {
    rules
        .iter()
        .flat_map(|r| {
            r.tests
                .iter()
                .map(move |c| (r.id.clone(), c.name.clone(), c.run(r)))
        })
        .collect()
}
