//! Inline test cases (`[[rule.test]]`): a rule's own examples, run by `sessiond rules test`.
//! A case describes the user's trusted history, the session's login, the event's context and
//! how many earlier events share its key, and says whether the rule should fire, stay quiet,
//! or answer "unknown". Cases run the detector itself, in enforce mode, at a fixed time.

use super::detectors::{Baseline, Detector, Memory, Sighting, Window};
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
    /// `hosting`, `vpn`, `public_proxy`, `tor_exit` or `anonymous` (the anonymous-IP database).
    pub network: Option<crate::domain::context::Anonymizer>,
    /// The connection-type database's answer (`Cable/DSL`, `Cellular`, ...).
    pub connection: Option<String>,
    pub ua: Option<String>,
    #[serde(default)]
    pub minutes_ago: i64,
}

impl CaseContext {
    pub fn context(&self) -> RequestContext {
        let has_geo = self.country.is_some()
            || self.lat.is_some()
            || self.asn.is_some()
            || self.network.is_some()
            || self.connection.is_some();
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
                anonymizer: self.network,
                connection_type: self.connection.clone(),
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
    /// Whether the event's network is among the user's usual networks (evidence).
    pub usual_network: Option<bool>,
    /// The action a firing asks for (the step an evidence score reaches, else the rule's
    /// strongest action).
    pub action: Option<String>,
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
        if let Some(a) = &self.action
            && super::Action::parse(a).is_none()
        {
            return Err(format!("action {a:?} is not an action"));
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
                rule.detector.judge(
                    &facts(&current, at, Some(name)),
                    Memory {
                        window: Some(&mut window),
                        ..Default::default()
                    },
                );
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
            rule.detector.judge(
                &f,
                Memory {
                    baseline: Some(&baseline),
                    window: Some(&mut window),
                    counts: None,
                    usual_network: self.usual_network,
                },
            )
        };
        let got = match &verdict {
            Verdict::Fire(_) => Expect::Fire,
            Verdict::Quiet => Expect::Quiet,
            Verdict::Unknown(_) => Expect::Unknown,
        };
        if got != self.expect {
            return Err(format!("expected {:?}, got {verdict:?}", self.expect));
        }
        if let (Some(want), Verdict::Fire(inputs)) = (&self.action, &verdict) {
            let action = rule.detector.graded(inputs).map_or(rule.action, |(a, _)| a);
            if action.as_str() != want {
                return Err(format!(
                    "expected action {want}, got {} ({verdict:?})",
                    action.as_str()
                ));
            }
        }
        Ok(())
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
