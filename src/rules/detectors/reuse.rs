//! Reuse escalation: a spent refresh token came back (the family is already revoked by the
//! session's own decision). When the reuse comes from another country or ASN than the
//! family's last use, someone elsewhere holds the user's tokens: escalate.

use crate::domain::context::RequestContext;
use crate::rules::Verdict;
use serde::Deserialize;
use serde_json::{Map, json};

pub const FIELDS: &[&str] = &[
    "reason",
    "last_country",
    "reuse_country",
    "last_asn",
    "reuse_asn",
    "last_ip",
    "reuse_ip",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// Every reuse.
    Always,
    OtherCountry,
    OtherAsn,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReuse {
    pub when: Vec<Escalation>,
}

impl TokenReuse {
    pub fn validate(&self) -> Result<(), String> {
        if self.when.is_empty() {
            return Err("when must name at least one of always, other_country, other_asn".into());
        }
        Ok(())
    }

    pub fn judge(&self, last: Option<&RequestContext>, now: &RequestContext) -> Verdict {
        let geo = |c: Option<&RequestContext>| c.and_then(|c| c.geo.clone()).unwrap_or_default();
        let (a, b) = (geo(last), geo(Some(now)));
        let mut reason = None;
        let mut known = false;
        for w in &self.when {
            match w {
                Escalation::Always => {
                    known = true;
                    reason = reason.or(Some("reuse"));
                }
                Escalation::OtherCountry => {
                    if let (Some(x), Some(y)) = (&a.country, &b.country) {
                        known = true;
                        if x != y {
                            reason = reason.or(Some("other_country"));
                        }
                    }
                }
                Escalation::OtherAsn => {
                    if let (Some(x), Some(y)) = (a.asn, b.asn) {
                        known = true;
                        if x != y {
                            reason = reason.or(Some("other_asn"));
                        }
                    }
                }
            }
        }
        let Some(reason) = reason else {
            return if known {
                Verdict::Quiet
            } else {
                Verdict::Unknown("no location for the family's last use or the reuse")
            };
        };
        let mut m = Map::new();
        m.insert("reason".into(), json!(reason));
        m.insert("last_country".into(), json!(a.country));
        m.insert("reuse_country".into(), json!(b.country));
        m.insert("last_asn".into(), json!(a.asn));
        m.insert("reuse_asn".into(), json!(b.asn));
        m.insert(
            "last_ip".into(),
            json!(last.and_then(|c| c.ip).map(|i| i.to_string())),
        );
        m.insert("reuse_ip".into(), json!(now.ip.map(|i| i.to_string())));
        Verdict::Fire(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::context::Geo;

    fn from(country: &str, asn: u32) -> RequestContext {
        RequestContext {
            geo: Some(Geo {
                country: Some(country.into()),
                asn: Some(asn),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reuse_from_elsewhere_escalates_from_home_it_does_not() {
        let d = TokenReuse {
            when: vec![Escalation::OtherCountry, Escalation::OtherAsn],
        };
        assert_eq!(
            d.judge(Some(&from("FR", 1)), &from("FR", 1)),
            Verdict::Quiet
        );
        let Verdict::Fire(m) = d.judge(Some(&from("FR", 1)), &from("US", 2)) else {
            panic!()
        };
        assert_eq!(m["reason"], "other_country");
        assert!(d.judge(Some(&from("FR", 1)), &from("FR", 7)).fired());
        assert!(matches!(
            d.judge(None, &RequestContext::default()),
            Verdict::Unknown(_)
        ));
    }
}
