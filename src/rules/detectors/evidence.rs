//! Combined evidence: a score over weighted signals, with a threshold per action. A refresh
//! is compared with its session's login (and the user's usual networks and last trusted
//! sighting); each signal present adds its weight, and the strongest threshold the score
//! reaches says what to do. So a move between two consumer networks in one place (one weak
//! signal) only flags, two weak ones step up, and one strong one (an anonymising or hosting
//! network, another country no plane could have reached, another device class) revokes.
//! The receipt lists every signal with its weight and what it saw.

use super::Sighting;
use super::travel::haversine_km;
use crate::domain::context::{RequestContext, usual_prefix};
use crate::rules::{Action, Verdict};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const FIELDS: &[&str] = &["score", "signals", "summary", "before", "after", "action"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Another ASN and another /24 (/48) than the login, and neither among the user's usual
    /// networks.
    NewNetwork,
    /// A hosting, VPN, proxy, Tor or otherwise anonymising network that is not among the
    /// user's usual networks.
    AnonymisingNetwork,
    /// Another country than the login's, beyond both accuracy radii, sooner after the user's
    /// last trusted sighting than a plane could fly it.
    OtherCountry,
    /// Another device class (category, OS or browser name; versions never count), or no
    /// recognisable device where the login had one (a script).
    OtherDevice,
}

impl Signal {
    pub const ALL: &'static [Signal] = &[
        Signal::NewNetwork,
        Signal::AnonymisingNetwork,
        Signal::OtherCountry,
        Signal::OtherDevice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::NewNetwork => "new_network",
            Signal::AnonymisingNetwork => "anonymising_network",
            Signal::OtherCountry => "other_country",
            Signal::OtherDevice => "other_device",
        }
    }
}

/// One step of the scale: at `score` or more, `action` with `severity`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub score: u32,
    pub action: String,
    #[serde(default = "default_severity")]
    pub severity: String,
}

fn default_severity() -> String {
    "medium".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Weight of each signal; a signal not listed does not count.
    pub weights: BTreeMap<Signal, u32>,
    /// The scale, any order; the highest step reached is taken.
    #[serde(rename = "threshold")]
    pub thresholds: Vec<Step>,
    /// Airliner speed for "no plane could have made it" (other_country).
    #[serde(default = "default_speed")]
    pub max_speed_kmh: f64,
    /// Gaps shorter than this count as this long.
    #[serde(default = "default_min_gap", deserialize_with = "super::duration")]
    pub min_gap: chrono::Duration,
}

fn default_speed() -> f64 {
    super::travel::AIRLINER_KMH
}
fn default_min_gap() -> chrono::Duration {
    chrono::Duration::minutes(5)
}

/// What the evidence is weighed against besides the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Against<'a> {
    /// The session's login context.
    pub login: Option<&'a RequestContext>,
    /// The user's last trusted sighting (for the speed of a country change).
    pub last: Option<&'a Sighting>,
    /// Whether this event's network (its ASN or /24, /48) is among the user's usual ones;
    /// `None` when nobody looked (the network did not change, or no store was asked).
    pub usual_network: Option<bool>,
}

impl Evidence {
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.is_empty() {
            return Err("weights must give at least one signal a weight".into());
        }
        if self.thresholds.is_empty() {
            return Err("name at least one [[rule.detector.threshold]]".into());
        }
        for s in &self.thresholds {
            if s.score == 0 {
                return Err("a threshold's score must be at least 1".into());
            }
            if Action::parse(&s.action).is_none() {
                return Err(format!("threshold action {:?} is not an action", s.action));
            }
            if !crate::rules::file::SEVERITIES.contains(&s.severity.as_str()) {
                return Err(format!(
                    "threshold severity {:?} is not a severity",
                    s.severity
                ));
            }
        }
        let mut scores: Vec<u32> = self.thresholds.iter().map(|s| s.score).collect();
        scores.sort_unstable();
        if scores.windows(2).any(|w| w[0] == w[1]) {
            return Err("two thresholds have the same score".into());
        }
        if !(self.max_speed_kmh.is_finite() && self.max_speed_kmh > 0.0) {
            return Err("max_speed_kmh must be a positive number".into());
        }
        if self.min_gap <= chrono::Duration::zero() {
            return Err("min_gap must be longer than zero".into());
        }
        Ok(())
    }

    /// The step a score reaches, if any.
    pub fn step(&self, score: u32) -> Option<&Step> {
        self.thresholds
            .iter()
            .filter(|s| s.score <= score)
            .max_by_key(|s| s.score)
    }

    pub fn judge(&self, now: &RequestContext, at: crate::domain::Timestamp, a: Against) -> Verdict {
        let Some(login) = a.login else {
            return Verdict::Unknown("no session to compare with");
        };
        let mut signals: Vec<(Signal, Value)> = Vec::new();
        let (lg, ng) = (login.geo.as_ref(), now.geo.as_ref());
        let usual = a.usual_network == Some(true);
        // Network: another ASN and another prefix, unless the user is often there.
        let same_asn =
            lg.and_then(|g| g.asn).is_some() && lg.and_then(|g| g.asn) == ng.and_then(|g| g.asn);
        let same_prefix =
            login.ip.is_some() && login.ip.map(usual_prefix) == now.ip.map(usual_prefix);
        if !same_asn && !same_prefix && !usual && (login.ip.is_some() || now.ip.is_some()) {
            signals.push((
                Signal::NewNetwork,
                json!(format!(
                    "AS{} ({}) to AS{} ({})",
                    opt(lg.and_then(|g| g.asn)),
                    lg.map_or("unknown", |g| g.network_kind()),
                    opt(ng.and_then(|g| g.asn)),
                    ng.map_or("unknown", |g| g.network_kind()),
                )),
            ));
        }
        let anonymising = ng.and_then(|g| g.anonymizer);
        let login_anonymising = lg.and_then(|g| g.anonymizer);
        if let Some(kind) = anonymising
            && !usual
            && !(same_asn && login_anonymising.is_some())
        {
            signals.push((
                Signal::AnonymisingNetwork,
                json!(format!(
                    "{} network AS{}",
                    kind.as_str(),
                    opt(ng.and_then(|g| g.asn))
                )),
            ));
        }
        if let (Some(lc), Some(nc)) = (
            lg.and_then(|g| g.country.as_ref()),
            ng.and_then(|g| g.country.as_ref()),
        ) && lc != nc
            && let (Some(from), Some(to)) =
                (lg.and_then(|g| g.position()), ng.and_then(|g| g.position()))
        {
            let beyond = (haversine_km((from.0, from.1), (to.0, to.1)) - from.2 - to.2).max(0.0);
            // How fast the user would have had to travel since they were last seen where the
            // login was; with no such sighting, the move counts as instant.
            let speed = a
                .last
                .and_then(|l| {
                    let p = l.position?;
                    let d = (haversine_km((p.0, p.1), (to.0, to.1)) - p.2 - to.2).max(0.0);
                    let hours =
                        (at - l.at).max(self.min_gap).num_milliseconds() as f64 / 3_600_000.0;
                    Some(d / hours)
                })
                .unwrap_or(f64::INFINITY);
            if beyond > 0.0 && speed > self.max_speed_kmh {
                signals.push((
                    Signal::OtherCountry,
                    json!(format!(
                        "{lc} to {nc}: {} km beyond both accuracy radii, {}",
                        beyond.round() as i64,
                        if speed.is_finite() {
                            format!("{} km/h", speed.round() as i64)
                        } else {
                            "no earlier sighting".into()
                        }
                    )),
                ));
            }
        }
        let (ld, nd) = (login.device_class(), now.device_class());
        if ld.is_some() && ld != nd {
            signals.push((
                Signal::OtherDevice,
                json!(format!("{} to {}", opt(ld), opt(nd))),
            ));
        }
        let weighed: Vec<(Signal, u32, Value)> = signals
            .into_iter()
            .filter_map(|(s, d)| self.weights.get(&s).map(|w| (s, *w, d)))
            .filter(|(_, w, _)| *w > 0)
            .collect();
        let score: u32 = weighed.iter().map(|(_, w, _)| w).sum();
        let Some(step) = self.step(score) else {
            return Verdict::Quiet;
        };
        let mut m = Map::new();
        m.insert("score".into(), json!(score));
        m.insert(
            "signals".into(),
            Value::Array(
                weighed
                    .iter()
                    .map(|(s, w, d)| json!({ "signal": s.as_str(), "weight": w, "saw": d }))
                    .collect(),
            ),
        );
        m.insert(
            "summary".into(),
            json!(
                weighed
                    .iter()
                    .map(|(s, w, _)| format!("{} ({w})", s.as_str()))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        );
        m.insert("before".into(), json!(describe(login)));
        m.insert("after".into(), json!(describe(now)));
        m.insert("action".into(), json!(step.action));
        m.insert("severity".into(), json!(step.severity));
        Verdict::Fire(m)
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

/// Coarse and non-identifying: country, ASN, network kind, device class (no IP, no city).
fn describe(c: &RequestContext) -> String {
    let g = c.geo.as_ref();
    format!(
        "{} AS{} {} {}",
        g.and_then(|g| g.country.as_deref()).unwrap_or("unknown"),
        opt(g.and_then(|g| g.asn)),
        g.map_or("unknown", |g| g.network_kind()),
        c.device_class().unwrap_or_else(|| "unknown device".into())
    )
}

#[cfg(test)]
mod tests {
    use crate::rules::file::parse;
    use std::path::Path;

    const RULE: &str = r#"
[[rule]]
id = "w"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["flag", "revoke_session"]
explanation = "{summary}"
[rule.detector]
type = "evidence"
weights = { new_network = 1 }
[[rule.detector.threshold]]
score = 1
action = "flag"
"#;

    #[test]
    fn the_linter_checks_signals_thresholds_and_their_actions() {
        assert!(parse(Path::new("w.toml"), RULE).is_ok());
        for (text, needle) in [
            (
                RULE.replace("new_network = 1", "new_netwrok = 1"),
                "new_netwrok",
            ),
            (
                RULE.replace("action = \"flag\"", "action = \"lock_account\""),
                "not among the rule's actions",
            ),
            (RULE.replace("score = 1", "score = 0"), "at least 1"),
            (RULE.replace("{summary}", "{speed_kmh}"), "speed_kmh"),
        ] {
            let e = parse(Path::new("w.toml"), &text).unwrap_err();
            assert!(e.reason.contains(needle), "{e}");
        }
    }

    #[test]
    fn all_and_any_combine_detectors_and_refuse_thresholds() {
        let combined = r#"
[[rule]]
id = "c"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["require_reauth"]
explanation = "{summary}: {changed} and {speed_kmh}"
[rule.detector]
type = "all"
of = [{ type = "session_context_change", compare = ["asn"] }, { type = "impossible_travel" }]
"#;
        let rules = parse(Path::new("c.toml"), combined).unwrap();
        assert_eq!(rules[0].detector.name(), "all");
        let bad = combined.replace(
            "{ type = \"impossible_travel\" }",
            "{ type = \"threshold\", group_by = \"ip\", limit = 3, window = \"1m\" }",
        );
        let e = parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e.reason.contains("cannot be combined"), "{e}");
    }

    #[test]
    fn all_needs_every_detector_any_needs_one() {
        use crate::domain::context::RequestContext;
        use crate::rules::detectors::{Detector, Memory};
        use crate::rules::{Facts, Trigger, Verdict};
        let of = |aspect: &str| -> Detector {
            toml::from_str(&format!(
                "type = \"session_context_change\"\ncompare = [\"{aspect}\"]"
            ))
            .unwrap()
        };
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let firefox =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
        let login = RequestContext {
            device: crate::context::device(chrome),
            ..Default::default()
        };
        let now = RequestContext {
            device: crate::context::device(firefox),
            ..Default::default()
        };
        let f = Facts {
            trigger: Trigger::SessionRefreshed,
            now: crate::domain::parse_timestamp("2026-01-01T00:00:00Z").unwrap(),
            user_id: None,
            username: None,
            session_id: None,
            context: &now,
            session_login: Some(&login),
            session_last: None,
        };
        // The browser changed; the OS did not; the country is unknown on both sides.
        let all = Detector::All {
            of: vec![of("browser"), of("os")],
        };
        assert_eq!(all.judge(&f, Memory::default()), Verdict::Quiet);
        let any = Detector::Any {
            of: vec![of("browser"), of("os")],
        };
        let Verdict::Fire(m) = any.judge(&f, Memory::default()) else {
            panic!()
        };
        assert_eq!(m["changed"], "browser");
        assert_eq!(m["signals"][1]["outcome"], "quiet");
        let blind = Detector::All {
            of: vec![of("country"), of("asn")],
        };
        assert!(matches!(
            blind.judge(&f, Memory::default()),
            Verdict::Unknown(_)
        ));
    }
}
