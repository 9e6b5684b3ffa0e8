//! Rule files: `*.toml` in the rules directory, each holding `[[rule]]` tables. Everything is
//! checked at load (types, ranges, known event types and actions, explanation placeholders,
//! unique ids); a broken file is refused with its file, line and reason, and the caller keeps
//! the rule set it had.

use super::cases::TestCase;
use super::detectors::Detector;
use super::{Action, Exception, Mode, Rule, RuleSet, Trigger, placeholders};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

impl std::error::Error for RuleError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    version: u32,
    severity: String,
    mode: String,
    on: Vec<String>,
    detector: Spanned<Detector>,
    #[serde(default)]
    exception: Vec<Spanned<RawException>>,
    actions: Vec<String>,
    explanation: String,
    #[serde(default)]
    test: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    network: Option<String>,
    user: Option<uuid::Uuid>,
    expires: Option<String>,
}

pub const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses and checks one file's text.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Rule>, RuleError> {
    let error = |offset: usize, reason: String| RuleError {
        file: file.to_owned(),
        line: line_of(text, offset),
        reason,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let line = text
            .lines()
            .nth(line_of(text, offset) - 1)
            .unwrap_or("")
            .trim();
        error(offset, format!("{} (at `{line}`)", e.message()))
    })?;
    let mut rules = Vec::new();
    for spanned in raw.rule {
        let at = spanned.span().start;
        let r = spanned.into_inner();
        let fail = |reason: String| error(at, format!("rule {:?}: {reason}", r.id));
        if r.id.is_empty()
            || !r
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(fail("id must be lower-case letters, digits, _ or -".into()));
        }
        if !SEVERITIES.contains(&r.severity.as_str()) {
            return Err(fail(format!(
                "severity must be one of {}",
                SEVERITIES.join(", ")
            )));
        }
        let mode = match r.mode.as_str() {
            "enforce" => Mode::Enforce,
            "shadow" => Mode::Shadow,
            "off" => Mode::Off,
            other => {
                return Err(fail(format!(
                    "mode {other:?}: expected enforce, shadow or off"
                )));
            }
        };
        let mut on = Vec::new();
        for t in &r.on {
            on.push(Trigger::parse(t).ok_or_else(|| {
                let known: Vec<_> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
                fail(format!("on: {t:?} is not one of {}", known.join(", ")))
            })?);
        }
        if on.is_empty() {
            return Err(fail("on must name at least one event type".into()));
        }
        let detector_at = r.detector.span().start;
        let detector = r.detector.into_inner();
        detector.validate().map_err(|e| {
            error(
                detector_at,
                format!("rule {:?}: detector {}: {e}", r.id, detector.name()),
            )
        })?;
        let mut deny = false;
        let mut action = None;
        for a in &r.actions {
            if a == "deny" {
                deny = true;
                continue;
            }
            let parsed = Action::parse(a).ok_or_else(|| {
                fail(format!(
                    "actions: {a:?} is not deny or one of {}",
                    Action::ALL
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            action = action.max(Some(parsed));
        }
        if r.actions.is_empty() {
            return Err(fail("actions must name at least one action".into()));
        }
        if deny
            && on.iter().any(|t| {
                matches!(
                    t,
                    Trigger::LoginFailed | Trigger::ReuseDetected | Trigger::DpopMismatch
                )
            })
        {
            return Err(fail(
                "deny refuses a login or refresh; it cannot apply to login.failed, session.reuse_detected or session.dpop_mismatch"
                    .into(),
            ));
        }
        // Anyone can make a login fail for any username: a rule that ends sessions or locks the
        // account on failures would let them log anyone out or lock anyone out.
        if on.contains(&Trigger::LoginFailed)
            && let Some(a) = action.filter(|a| a.is_revoking())
        {
            return Err(fail(format!(
                "actions: {} cannot apply to login.failed: anyone can make a login fail for any \
                 account, so it would let them lock or log out whom they like (use notify or \
                 flag; login throttling limits guessing)",
                a.as_str()
            )));
        }
        if let Detector::Evidence(ev) = &detector {
            for step in &ev.thresholds {
                if !r.actions.contains(&step.action) {
                    return Err(fail(format!(
                        "detector evidence: threshold {} names {:?}, which is not among the rule's actions",
                        step.score, step.action
                    )));
                }
            }
        }
        for name in placeholders(&r.explanation) {
            if !detector.fields().contains(&name) {
                return Err(fail(format!(
                    "explanation names {{{name}}}, which the {} detector does not report (it has {})",
                    detector.name(),
                    detector.fields().join(", ")
                )));
            }
        }
        let mut exceptions = Vec::new();
        for e in r.exception {
            let e_at = e.span().start;
            let e = e.into_inner();
            let bad = |reason: String| error(e_at, format!("rule {:?}: exception: {reason}", r.id));
            let network = e
                .network
                .as_deref()
                .map(|n| {
                    crate::domain::parse::parse_net(n)
                        .ok_or_else(|| bad(format!("{n:?} is not a CIDR network")))
                })
                .transpose()?;
            let expires = e
                .expires
                .as_deref()
                .map(|t| {
                    crate::domain::parse_timestamp(t)
                        .ok_or_else(|| bad(format!("expires {t:?} is not an RFC 3339 time")))
                })
                .transpose()?;
            if network.is_none() && e.user.is_none() {
                return Err(bad("name a network or a user".into()));
            }
            exceptions.push(Exception {
                network,
                user: e.user,
                expires,
            });
        }
        for (i, case) in r.test.iter().enumerate() {
            case.validate(&on)
                .map_err(|e| fail(format!("test {} ({:?}): {e}", i + 1, case.name)))?;
        }
        rules.push(Rule {
            id: r.id,
            version: r.version,
            severity: r.severity,
            mode,
            on,
            detector,
            exceptions,
            action: action.unwrap_or(Action::Log),
            deny,
            explanation: r.explanation,
            tests: r.test,
            source: format!("{}:{}", file.display(), line_of(text, at)),
        });
    }
    Ok(rules)
}

/// Loads every `*.toml` of `dir`, in name order. Every broken file is reported.
pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
    let io = |reason: String| {
        vec![RuleError {
            file: dir.to_owned(),
            line: 0,
            reason,
        }]
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(format!("cannot read the rules directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut errors = Vec::new();
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let mut ids = HashSet::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(RuleError {
                    file: file.clone(),
                    line: 0,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match parse(file, &text) {
            Ok(parsed) => {
                for r in parsed {
                    if !ids.insert(r.id.clone()) {
                        errors.push(RuleError {
                            file: file.clone(),
                            line: r
                                .source
                                .rsplit(':')
                                .next()
                                .and_then(|l| l.parse().ok())
                                .unwrap_or(0),
                            reason: format!("rule id {:?} is defined twice", r.id),
                        });
                        continue;
                    }
                    rules.push(Arc::new(r));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(RuleSet { rules })
    } else {
        Err(errors)
    }
}

/// What the files of a directory looked like: a change means "load again".
pub fn dir_stamp(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.modified().ok(), m.len()))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[rule]]
id = "travel"
version = 1
severity = "high"
mode = "enforce"
on = ["session.refreshed"]
actions = ["require_reauth", "notify"]
explanation = "{from_city} to {to_city} at {speed_kmh} km/h"

[rule.detector]
type = "impossible_travel"
max_speed_kmh = 800

[[rule.exception]]
network = "10.0.0.0/8"
expires = "2030-01-01T00:00:00Z"
"#;

    #[test]
    fn a_good_rule_loads_with_its_strongest_action() {
        let rules = parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action, Action::RequireReauth);
        assert!(!rules[0].deny);
        assert_eq!(rules[0].exceptions.len(), 1);
        assert_eq!(rules[0].source, "a.toml:2");
    }

    #[test]
    fn broken_rules_are_refused_with_file_line_and_reason() {
        let cases = [
            (
                GOOD.replace("max_speed_kmh = 800", "max_speed_kmh = -1"),
                11,
                "max_speed_kmh",
            ),
            (
                GOOD.replace("max_speed_kmh = 800", "max_sped_kmh = 800"),
                11,
                "max_sped_kmh",
            ),
            (GOOD.replace("\"notify\"", "\"shout\""), 2, "shout"),
            (
                GOOD.replace("session.refreshed", "session.teleported"),
                2,
                "teleported",
            ),
            (GOOD.replace("{speed_kmh}", "{velocity}"), 2, "velocity"),
            (GOOD.replace("10.0.0.0/8", "ten"), 15, "CIDR"),
            (
                GOOD.replace("severity = \"high\"", "severity = 3"),
                5,
                "severity",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse(Path::new("rules/x.toml"), &text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().starts_with("rules/x.toml:"), "{e}");
            assert!(e.reason.contains(needle), "{e}");
        }
    }
}
