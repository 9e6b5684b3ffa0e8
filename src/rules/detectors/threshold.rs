//! Count threshold in a sliding window: events per user, user+IP, IP or network prefix
//! (brute force), or distinct usernames per key (password spray). Fires on every event past
//! the limit while the window holds more than `limit`.

use crate::domain::Timestamp;
use crate::rules::{Facts, Verdict};
use serde::Deserialize;
use serde_json::{Map, json};
use std::collections::VecDeque;

pub const FIELDS: &[&str] = &["count", "limit", "window_minutes", "key", "group_by"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    User,
    UserIp,
    Ip,
    Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    #[default]
    Events,
    DistinctUsernames,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub group_by: GroupBy,
    #[serde(default)]
    pub count: Counting,
    /// Fires when the window holds more than this many.
    pub limit: u32,
    #[serde(deserialize_with = "super::duration")]
    pub window: chrono::Duration,
}

/// A key's window as counted by the store, this event included: events, distinct usernames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u32,
    pub distinct_usernames: u32,
}

/// One key's recent events: when, and a hash of the username (for distinct counts).
#[derive(Debug, Clone, Default)]
pub struct Window {
    seen: VecDeque<(Timestamp, u64)>,
}

impl Window {
    pub fn is_idle(&self, now: Timestamp, window: chrono::Duration) -> bool {
        self.seen.back().is_none_or(|(t, _)| now - *t > window)
    }
}

/// Bound on remembered events per key: a flood cannot grow memory without limit.
const WINDOW_CAP: usize = 4096;

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Threshold {
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 || self.limit as usize >= WINDOW_CAP {
            return Err(format!("limit must be between 1 and {}", WINDOW_CAP - 1));
        }
        if self.window <= chrono::Duration::zero() {
            return Err("window must be longer than zero".into());
        }
        Ok(())
    }

    /// What this event is counted under; `None` when the event lacks it.
    pub fn key(&self, facts: &Facts) -> Option<String> {
        let user = facts
            .username
            .map(str::to_owned)
            .or_else(|| facts.user_id.map(|u| u.to_string()));
        let ip = facts.context.ip;
        match self.group_by {
            GroupBy::User => user,
            GroupBy::UserIp => Some(format!("{}|{}", user?, ip?)),
            GroupBy::Ip => ip.map(|i| i.to_string()),
            GroupBy::Network => facts.context.network(),
        }
    }

    pub fn observe(&self, w: &mut Window, facts: &Facts) -> Verdict {
        let now = facts.now;
        while w.seen.front().is_some_and(|(t, _)| now - *t > self.window) {
            w.seen.pop_front();
        }
        if w.seen.len() >= WINDOW_CAP {
            w.seen.pop_front();
        }
        w.seen
            .push_back((now, name_hash(facts.username.unwrap_or(""))));
        let mut names: Vec<u64> = w.seen.iter().map(|(_, h)| *h).collect();
        names.sort_unstable();
        names.dedup();
        let counts = Counts {
            events: w.seen.len() as u32,
            distinct_usernames: names.len() as u32,
        };
        self.verdict(counts, facts)
    }

    /// The verdict on a window's counts (this event included), however they were counted.
    pub fn verdict(&self, counts: Counts, facts: &Facts) -> Verdict {
        let count = match self.count {
            Counting::Events => counts.events,
            Counting::DistinctUsernames => counts.distinct_usernames,
        };
        if count <= self.limit {
            return Verdict::Quiet;
        }
        let mut m = Map::new();
        m.insert("count".into(), json!(count));
        m.insert("limit".into(), json!(self.limit));
        m.insert(
            "window_minutes".into(),
            json!(self.window.num_seconds() as f64 / 60.0),
        );
        m.insert("key".into(), json!(self.key(facts)));
        m.insert(
            "group_by".into(),
            json!(match self.group_by {
                GroupBy::User => "user",
                GroupBy::UserIp => "user_ip",
                GroupBy::Ip => "ip",
                GroupBy::Network => "network",
            }),
        );
        Verdict::Fire(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::context::RequestContext;
    use crate::rules::Trigger;
    use chrono::TimeZone;

    fn facts<'a>(ctx: &'a RequestContext, name: &'a str, minute: i64) -> Facts<'a> {
        Facts {
            trigger: Trigger::LoginFailed,
            now: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
                + chrono::Duration::minutes(minute),
            user_id: None,
            username: Some(name),
            session_id: None,
            context: ctx,
            session_login: None,
            session_last: None,
        }
    }

    #[test]
    fn the_eleventh_failure_in_the_window_fires_and_old_ones_fall_out() {
        let t = Threshold {
            group_by: GroupBy::UserIp,
            count: Counting::Events,
            limit: 10,
            window: chrono::Duration::minutes(15),
        };
        let ctx = RequestContext {
            ip: Some("203.0.113.5".parse().unwrap()),
            ..Default::default()
        };
        let mut w = Window::default();
        for i in 0..10 {
            assert_eq!(t.observe(&mut w, &facts(&ctx, "alice", i)), Verdict::Quiet);
        }
        let Verdict::Fire(m) = t.observe(&mut w, &facts(&ctx, "alice", 10)) else {
            panic!()
        };
        assert_eq!(m["count"], 11);
        assert_eq!(m["key"], "alice|203.0.113.5");
        // Half an hour later the window has emptied.
        assert_eq!(t.observe(&mut w, &facts(&ctx, "alice", 40)), Verdict::Quiet);
    }

    #[test]
    fn spray_counts_distinct_usernames() {
        let t = Threshold {
            group_by: GroupBy::Network,
            count: Counting::DistinctUsernames,
            limit: 3,
            window: chrono::Duration::minutes(10),
        };
        let ctx = RequestContext {
            ip: Some("203.0.113.5".parse().unwrap()),
            ..Default::default()
        };
        let mut w = Window::default();
        for _ in 0..10 {
            assert_eq!(t.observe(&mut w, &facts(&ctx, "alice", 0)), Verdict::Quiet);
        }
        for name in ["bob", "carol"] {
            assert_eq!(t.observe(&mut w, &facts(&ctx, name, 1)), Verdict::Quiet);
        }
        assert!(t.observe(&mut w, &facts(&ctx, "dave", 2)).fired());
    }
}
