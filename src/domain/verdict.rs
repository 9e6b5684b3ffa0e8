//! Analyst verdicts on alerts (issue 15, point 5): a rule receipt marked a true or a false
//! positive, once; a false positive can become an exception for that rule and that user.
//!
//! Pure: the caller loads the alert (the `alerts` projection) and records what is decided.

use super::notice::{DeviceClass, ExceptionAdded, ExceptionCause};
use super::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest exception a verdict may ask for: an analyst's exception is a stop-gap, not a
/// rule change.
pub const MAX_EXCEPTION: i64 = 365;
/// The longest note, in characters.
pub const MAX_NOTE: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    TruePositive,
    FalsePositive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::TruePositive => "true_positive",
            Verdict::FalsePositive => "false_positive",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "true_positive" => Some(Verdict::TruePositive),
            "false_positive" => Some(Verdict::FalsePositive),
            _ => None,
        }
    }
}

/// `alert.verdict_recorded`, on the receipt's own stream (`rule-<receipt_id>`); the actor is
/// the analyst. The note is free text, sealed like every personal field (`store/vault.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertVerdictRecorded {
    /// The receipt's position in the log: the alert's id in `/v1/admin/alerts`.
    pub position: i64,
    pub receipt_id: Uuid,
    pub rule_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub verdict: Verdict,
    /// The exception a false positive added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An alert as the `alerts` projection keeps it: one per `rule.fired`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub position: i64,
    pub receipt_id: Uuid,
    pub rule_id: String,
    pub user_id: Option<Uuid>,
    pub judged: Option<Judged>,
}

/// The verdict on an alert, as listed beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub verdict: Verdict,
    #[serde(with = "super::ts_format")]
    pub recorded_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<Uuid>,
}

/// Per rule: how many alerts, how many judged each way, and the share judged false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    pub rule_id: String,
    pub alerts: i64,
    pub true_positive: i64,
    pub false_positive: i64,
    /// false / judged; `None` while none is judged.
    pub false_share: Option<f64>,
}

impl RuleStats {
    pub fn new(rule_id: String, alerts: i64, true_positive: i64, false_positive: i64) -> Self {
        let judged = true_positive + false_positive;
        RuleStats {
            rule_id,
            alerts,
            true_positive,
            false_positive,
            false_share: (judged > 0).then(|| false_positive as f64 / judged as f64),
        }
    }
}

/// Why a verdict was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictRefusal {
    /// No alert at this position.
    UnknownAlert,
    /// The alert was judged before: a verdict is recorded once.
    AlreadyJudged,
    /// An exception was asked for an alert about no user.
    NoUser,
    /// An exception was asked, but the alert's request context names no network (it expired
    /// or was erased): an exception without one would cover every network.
    NoNetwork,
}

/// What to record for a verdict on `alert`: the verdict and, for a false positive with an
/// `exception` lifetime, an exception for that rule and that user, for the alert's device
/// class and networks (as "this was me" does).
#[allow(clippy::too_many_arguments)]
pub fn decide_verdict(
    alert: Option<&Alert>,
    verdict: Verdict,
    exception: Option<Duration>,
    note: Option<String>,
    device: Option<DeviceClass>,
    networks: Vec<String>,
    exception_id: Uuid,
    now: Timestamp,
) -> Result<(AlertVerdictRecorded, Option<ExceptionAdded>), VerdictRefusal> {
    let alert = alert.ok_or(VerdictRefusal::UnknownAlert)?;
    if alert.judged.is_some() {
        return Err(VerdictRefusal::AlreadyJudged);
    }
    let exception = match (verdict, exception) {
        (Verdict::FalsePositive, Some(lifetime)) => {
            let user_id = alert.user_id.ok_or(VerdictRefusal::NoUser)?;
            if networks.is_empty() {
                return Err(VerdictRefusal::NoNetwork);
            }
            Some(ExceptionAdded {
                exception_id,
                user_id,
                rule_id: Some(alert.rule_id.clone()),
                device,
                networks,
                expires_at: now + lifetime,
                cause: ExceptionCause::Verdict(alert.receipt_id),
            })
        }
        _ => None,
    };
    Ok((
        AlertVerdictRecorded {
            position: alert.position,
            receipt_id: alert.receipt_id,
            rule_id: alert.rule_id.clone(),
            user_id: alert.user_id,
            verdict,
            exception_id: exception.as_ref().map(|e| e.exception_id),
            note,
        },
        exception,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            position: 7,
            receipt_id: Uuid::nil(),
            rule_id: "impossible_travel".into(),
            user_id: Some(Uuid::from_u128(1)),
            judged: None,
        }
    }

    #[test]
    fn a_false_positive_with_an_exception_is_scoped_to_its_rule_and_user() {
        let now = Timestamp::UNIX_EPOCH;
        let (v, e) = decide_verdict(
            Some(&alert()),
            Verdict::FalsePositive,
            Some(Duration::days(30)),
            None,
            None,
            vec!["asn:1".into()],
            Uuid::from_u128(9),
            now,
        )
        .unwrap();
        let e = e.unwrap();
        assert_eq!(e.rule_id.as_deref(), Some("impossible_travel"));
        assert_eq!(e.user_id, Uuid::from_u128(1));
        assert_eq!(e.expires_at, now + Duration::days(30));
        assert_eq!(v.exception_id, Some(e.exception_id));
        assert!(e.covers(now, Some("impossible_travel"), None, &["asn:1".into()]));
        assert!(!e.covers(now, Some("other_rule"), None, &["asn:1".into()]));
    }

    #[test]
    fn a_second_verdict_an_unknown_alert_and_a_userless_exception_are_refused() {
        let now = Timestamp::UNIX_EPOCH;
        let judged = Alert {
            judged: Some(Judged {
                verdict: Verdict::TruePositive,
                recorded_at: now,
                exception_id: None,
            }),
            ..alert()
        };
        let go = |a: Option<&Alert>, ex| {
            decide_verdict(
                a,
                Verdict::FalsePositive,
                ex,
                None,
                None,
                vec![],
                Uuid::nil(),
                now,
            )
            .map(|_| ())
        };
        assert_eq!(go(Some(&judged), None), Err(VerdictRefusal::AlreadyJudged));
        assert_eq!(go(None, None), Err(VerdictRefusal::UnknownAlert));
        let userless = Alert {
            user_id: None,
            ..alert()
        };
        assert_eq!(
            go(Some(&userless), Some(Duration::days(1))),
            Err(VerdictRefusal::NoUser)
        );
        // No network to scope it to: it would cover them all.
        assert_eq!(
            go(Some(&alert()), Some(Duration::days(1))),
            Err(VerdictRefusal::NoNetwork)
        );
        // A true positive never adds an exception.
        let (_, e) = decide_verdict(
            Some(&alert()),
            Verdict::TruePositive,
            Some(Duration::days(1)),
            None,
            None,
            vec![],
            Uuid::nil(),
            now,
        )
        .unwrap();
        assert!(e.is_none());
    }

    #[test]
    fn the_false_share_is_over_judged_alerts_and_null_when_none_is_judged() {
        assert_eq!(RuleStats::new("r".into(), 3, 0, 0).false_share, None);
        assert_eq!(RuleStats::new("r".into(), 3, 1, 1).false_share, Some(0.5));
    }
}
