//! In-session context change: a refresh from another device class, OS, browser family,
//! country or ASN than the session's login. Versions are not compared: a browser update
//! mid-session is not a different client.

use crate::domain::context::RequestContext;
use crate::rules::Verdict;
use serde::Deserialize;
use serde_json::{Map, json};

pub const FIELDS: &[&str] = &["changed", "before", "after"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aspect {
    DeviceCategory,
    Os,
    Browser,
    Country,
    Asn,
}

impl Aspect {
    fn as_str(self) -> &'static str {
        match self {
            Aspect::DeviceCategory => "device_category",
            Aspect::Os => "os",
            Aspect::Browser => "browser",
            Aspect::Country => "country",
            Aspect::Asn => "asn",
        }
    }

    fn of(self, c: &RequestContext) -> Option<String> {
        let d = c.device.as_ref();
        let g = c.geo.as_ref();
        match self {
            Aspect::DeviceCategory => d.map(|d| d.category.clone()),
            Aspect::Os => d.map(|d| d.os.clone()),
            Aspect::Browser => d.map(|d| d.browser.clone()),
            Aspect::Country => g.and_then(|g| g.country.clone()),
            Aspect::Asn => g.and_then(|g| g.asn).map(|a| a.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionContextChange {
    #[serde(default = "default_compare")]
    pub compare: Vec<Aspect>,
}

fn default_compare() -> Vec<Aspect> {
    vec![
        Aspect::DeviceCategory,
        Aspect::Os,
        Aspect::Browser,
        Aspect::Country,
        Aspect::Asn,
    ]
}

impl SessionContextChange {
    pub fn validate(&self) -> Result<(), String> {
        if self.compare.is_empty() {
            return Err("compare must name at least one aspect".into());
        }
        Ok(())
    }

    pub fn judge(&self, login: Option<&RequestContext>, now: &RequestContext) -> Verdict {
        let Some(login) = login else {
            return Verdict::Unknown("no session to compare with");
        };
        let mut compared = false;
        let mut changed = Vec::new();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for aspect in &self.compare {
            let (Some(a), Some(b)) = (aspect.of(login), aspect.of(now)) else {
                continue;
            };
            compared = true;
            if a != b {
                changed.push(aspect.as_str());
                before.push(format!("{}={a}", aspect.as_str()));
                after.push(format!("{}={b}", aspect.as_str()));
            }
        }
        if changed.is_empty() {
            return if compared {
                Verdict::Quiet
            } else {
                Verdict::Unknown("nothing known on both sides to compare")
            };
        }
        let mut m = Map::new();
        m.insert("changed".into(), json!(changed.join(", ")));
        m.insert("before".into(), json!(before.join(" ")));
        m.insert("after".into(), json!(after.join(" ")));
        Verdict::Fire(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(ua: &str) -> RequestContext {
        RequestContext {
            device: crate::context::device(ua),
            ..Default::default()
        }
    }

    const CHROME_120: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const CHROME_121: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36";
    const FIREFOX: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";

    #[test]
    fn a_browser_switch_fires_a_version_bump_does_not() {
        let d = SessionContextChange {
            compare: default_compare(),
        };
        assert_eq!(
            d.judge(Some(&ctx(CHROME_120)), &ctx(CHROME_121)),
            Verdict::Quiet
        );
        let Verdict::Fire(m) = d.judge(Some(&ctx(CHROME_120)), &ctx(FIREFOX)) else {
            panic!()
        };
        assert_eq!(m["changed"], "browser");
        assert!(matches!(d.judge(None, &ctx(FIREFOX)), Verdict::Unknown(_)));
    }
}
