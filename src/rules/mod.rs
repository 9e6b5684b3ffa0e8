//! The rule engine (DESIGN §5): rule files, detectors (five, weighed evidence, and all/any of them), actions, receipts, a circuit
//! breaker and a backtest.
//!
//! A rule listens to some request-born events, asks one typed detector about the event and its
//! context, and, when the detector fires, asks for actions. Detectors are pure: facts in,
//! [`Verdict`] out. The [`engine::RuleEngine`] keeps what they need to remember (each user's
//! trusted baseline, sliding-window counters) in bounded memory, and the writer applies its
//! judgement inside the transaction that records the event. The engine never reads the store:
//! what a judgement needs from history is loaded by the caller and handed in (see `judgement`).

pub mod backtest;
pub mod breaker;
pub mod cases;
pub mod detectors;
pub mod engine;
pub mod file;
pub mod judgement;

use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use detectors::Detector;
use ipnet::IpNet;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use engine::RuleEngine;
pub use judgement::{History, Judgement, Needs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

/// Actions, weakest first: when several rules fire on one event the strongest one is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Log,
    Flag,
    /// Recorded in the receipt; webhook subscriptions to `rule.fired` deliver it.
    Notify,
    RequireReauth,
    RevokeSession,
    LogoutEverywhere,
    LockAccount,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::Log,
        Action::Flag,
        Action::Notify,
        Action::RequireReauth,
        Action::RevokeSession,
        Action::LogoutEverywhere,
        Action::LockAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Flag => "flag",
            Action::Notify => "notify",
            Action::RequireReauth => "require_reauth",
            Action::RevokeSession => "revoke_session",
            Action::LogoutEverywhere => "logout_everywhere",
            Action::LockAccount => "lock_account",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    /// Actions that end sessions: the circuit breaker caps these.
    pub fn is_revoking(self) -> bool {
        self >= Action::RevokeSession
    }
}

/// The request-born events a rule can listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    SessionStarted,
    SessionRefreshed,
    /// A retry of the token just replaced (early or late). A rule listening to
    /// `session.refreshed` judges retries too: a retry is a refresh.
    RefreshRetried,
    LoginFailed,
    ReuseDetected,
    /// A DPoP-bound family's refresh without a proof by its key.
    DpopMismatch,
}

impl Trigger {
    pub const ALL: &'static [Trigger] = &[
        Trigger::SessionStarted,
        Trigger::SessionRefreshed,
        Trigger::RefreshRetried,
        Trigger::LoginFailed,
        Trigger::ReuseDetected,
        Trigger::DpopMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::SessionStarted => "session.started",
            Trigger::SessionRefreshed => "session.refreshed",
            Trigger::RefreshRetried => "session.refresh_retried",
            Trigger::LoginFailed => "login.failed",
            Trigger::ReuseDetected => "session.reuse_detected",
            Trigger::DpopMismatch => "session.dpop_mismatch",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.iter().copied().find(|t| t.as_str() == s)
    }

    /// Events whose context may join the user's trusted baseline when no rule flags them.
    pub fn builds_baseline(self) -> bool {
        matches!(
            self,
            Trigger::SessionStarted | Trigger::SessionRefreshed | Trigger::RefreshRetried
        )
    }
}

/// A network or a user a rule does not apply to, until `expires`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    pub network: Option<IpNet>,
    pub user: Option<Uuid>,
    pub expires: Option<Timestamp>,
}

impl Exception {
    fn covers(&self, facts: &Facts) -> bool {
        if self.expires.is_some_and(|e| facts.now >= e) {
            return false;
        }
        let net = self
            .network
            .is_some_and(|n| facts.context.ip.is_some_and(|ip| n.contains(&ip)));
        let user = self.user.is_some_and(|u| facts.user_id == Some(u));
        net || user
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub version: u32,
    pub severity: String,
    pub mode: Mode,
    pub on: Vec<Trigger>,
    pub detector: Detector,
    pub exceptions: Vec<Exception>,
    /// The strongest of the listed actions (`deny` aside).
    pub action: Action,
    /// `deny` was listed: the request at hand (login or refresh) is refused.
    pub deny: bool,
    pub explanation: String,
    pub tests: Vec<cases::TestCase>,
    /// `file:line` of the rule, for messages.
    pub source: String,
}

impl Rule {
    pub fn listens_to(&self, trigger: Trigger) -> bool {
        let refresh_rule =
            trigger == Trigger::RefreshRetried && self.on.contains(&Trigger::SessionRefreshed);
        self.mode != Mode::Off && (self.on.contains(&trigger) || refresh_rule)
    }

    pub fn excepted(&self, facts: &Facts) -> bool {
        self.exceptions.iter().any(|e| e.covers(facts))
    }

    /// The explanation with `{name}` replaced by the finding's figures.
    pub fn explain(&self, inputs: &Map<String, Value>) -> String {
        render(&self.explanation, inputs)
    }
}

fn render(template: &str, inputs: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match inputs.get(name) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Null) | None => out.push_str("unknown"),
                    Some(v) => out.push_str(&v.to_string()),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `{name}` placeholders of a template.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        names.push(&after[..close]);
        rest = &after[close + 1..];
    }
    names
}

/// Everything a detector may look at about one event, besides the user's baseline.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub trigger: Trigger,
    pub now: Timestamp,
    pub user_id: Option<Uuid>,
    pub username: Option<&'a str>,
    pub session_id: Option<Uuid>,
    pub context: &'a RequestContext,
    /// The context the session was started from (in-session change).
    pub session_login: Option<&'a RequestContext>,
    /// The context of the family's last use (reuse escalation).
    pub session_last: Option<&'a RequestContext>,
}

/// A detector's answer. "Unknown" is not "quiet": it says the detector could not tell (no
/// GeoIP database, too little history) and never fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Quiet,
    Unknown(&'static str),
    Fire(Map<String, Value>),
}

impl Verdict {
    pub fn fired(&self) -> bool {
        matches!(self, Verdict::Fire(_))
    }
}

/// The set of rules in force, loaded from one directory.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<std::sync::Arc<Rule>>,
}

impl RuleSet {
    pub fn needs_baseline(&self, trigger: Trigger) -> bool {
        self.rules
            .iter()
            .any(|r| r.listens_to(trigger) && r.detector.needs_baseline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_order_weakest_to_strongest() {
        assert!(Action::Log < Action::Flag);
        assert!(Action::Notify < Action::RequireReauth);
        assert!(Action::RevokeSession < Action::LogoutEverywhere);
        assert!(Action::LogoutEverywhere < Action::LockAccount);
        assert!(Action::RevokeSession.is_revoking() && !Action::RequireReauth.is_revoking());
    }

    #[test]
    fn templates_fill_known_figures_and_mark_unknown_ones() {
        let mut m = Map::new();
        m.insert("city".into(), Value::String("Paris".into()));
        m.insert("speed_kmh".into(), Value::from(4200));
        assert_eq!(
            render("{city} at {speed_kmh} km/h, {nope}", &m),
            "Paris at 4200 km/h, unknown"
        );
        assert_eq!(placeholders("a {x} b {y}"), vec!["x", "y"]);
    }
}
