//! The circuit breaker on revoking actions (revoke, log out everywhere, lock). A bad GeoIP
//! update can make every user "travel" at once; past a cap of revocations in a window the
//! breaker degrades them to `flag`, records its trip as an event and says so loudly.
//!
//! The cap is `max(floor, ceil(max_fraction × active users))` over `window`, per rule: each rule
//! has a budget of its own, so one noisy rule that trips cannot exhaust the others'.

use crate::domain::{Duration, Timestamp};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub max_fraction: f64,
    pub floor: u32,
    pub window: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_fraction: 0.005,
            floor: 20,
            window: Duration::minutes(10),
        }
    }
}

/// How long a count of active users is trusted before it is asked again.
const ACTIVE_USERS_TTL_SECONDS: i64 = 60;

#[derive(Debug, Default)]
pub struct Breaker {
    budgets: HashMap<String, Budget>,
    active_users: Option<(u64, Timestamp)>,
}

/// One rule's revocations in the window, and its trip.
#[derive(Debug, Default)]
struct Budget {
    taken: VecDeque<Timestamp>,
    tripped_until: Option<Timestamp>,
}

/// A rule's budget as the store counts it: revoking actions taken in the window, and the end
/// of a trip still in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub taken: u32,
    pub tripped_until: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Over the cap: degrade to `flag`. `newly_tripped` for the first refusal of a trip.
    Degrade {
        newly_tripped: bool,
        count: u32,
        cap: u32,
        active_users: u64,
    },
}

impl Breaker {
    /// Whether the active-user count must be fetched before [`Breaker::admit`].
    pub fn needs_active_users(&self, now: Timestamp) -> bool {
        self.active_users
            .is_none_or(|(_, at)| (now - at).num_seconds() >= ACTIVE_USERS_TTL_SECONDS)
    }

    pub fn set_active_users(&mut self, n: u64, now: Timestamp) {
        self.active_users = Some((n, now));
    }

    pub fn cap(&self, config: &BreakerConfig) -> u32 {
        let active = self.active_users.map_or(0, |(n, _)| n) as f64;
        ((active * config.max_fraction).ceil() as u32).max(config.floor)
    }

    /// [`Breaker::admit`] on the store's count of a rule's spend (the caller records the spend
    /// or the trip in the same transaction).
    pub fn admit_spent(&self, config: &BreakerConfig, spent: Spent, now: Timestamp) -> Admission {
        let cap = self.cap(config);
        if spent.taken < cap {
            return Admission::Allow;
        }
        let tripped = spent.tripped_until.is_some_and(|until| now < until);
        Admission::Degrade {
            newly_tripped: !tripped,
            count: spent.taken,
            cap,
            active_users: self.active_users.map_or(0, |(n, _)| n),
        }
    }

    /// One revoking action of rule `rule` wants to happen at `now`.
    pub fn admit(&mut self, config: &BreakerConfig, rule: &str, now: Timestamp) -> Admission {
        let cap = self.cap(config);
        // Budgets idle for a whole window hold nothing: drop them (rules come and go on reload).
        self.budgets.retain(|_, b| {
            b.taken.back().is_some_and(|t| now - *t < config.window)
                || b.tripped_until.is_some_and(|until| now < until)
        });
        let budget = self.budgets.entry(rule.to_owned()).or_default();
        while budget
            .taken
            .front()
            .is_some_and(|t| now - *t >= config.window)
        {
            budget.taken.pop_front();
        }
        let count = budget.taken.len() as u32;
        if count < cap {
            budget.taken.push_back(now);
            return Admission::Allow;
        }
        let newly_tripped = budget.tripped_until.is_none_or(|until| now >= until);
        if newly_tripped {
            budget.tripped_until = Some(now + config.window);
        }
        Admission::Degrade {
            newly_tripped,
            count,
            cap,
            active_users: self.active_users.map_or(0, |(n, _)| n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn past_the_cap_actions_degrade_and_the_trip_is_reported_once_per_window() {
        let config = BreakerConfig {
            max_fraction: 0.01,
            floor: 2,
            window: Duration::minutes(10),
        };
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let mut b = Breaker::default();
        b.set_active_users(300, t0);
        assert_eq!(b.cap(&config), 3);
        for _ in 0..3 {
            assert_eq!(b.admit(&config, "r", t0), Admission::Allow);
        }
        assert!(matches!(
            b.admit(&config, "r", t0),
            Admission::Degrade {
                newly_tripped: true,
                count: 3,
                cap: 3,
                ..
            }
        ));
        assert!(matches!(
            b.admit(&config, "r", t0 + Duration::minutes(1)),
            Admission::Degrade {
                newly_tripped: false,
                ..
            }
        ));
        // The window rolls on: revocations flow again.
        assert_eq!(
            b.admit(&config, "r", t0 + Duration::minutes(11)),
            Admission::Allow
        );
    }

    #[test]
    fn each_rule_has_a_budget_of_its_own() {
        let config = BreakerConfig {
            max_fraction: 0.0,
            floor: 2,
            window: Duration::minutes(10),
        };
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let mut b = Breaker::default();
        b.set_active_users(1000, t0);
        // A noisy rule spends its budget and trips.
        for _ in 0..2 {
            assert_eq!(b.admit(&config, "noisy", t0), Admission::Allow);
        }
        for _ in 0..50 {
            assert!(matches!(
                b.admit(&config, "noisy", t0),
                Admission::Degrade { .. }
            ));
        }
        // Another rule still revokes, up to its own cap.
        assert_eq!(b.admit(&config, "quiet", t0), Admission::Allow);
        assert_eq!(b.admit(&config, "quiet", t0), Admission::Allow);
        assert!(matches!(
            b.admit(&config, "quiet", t0),
            Admission::Degrade {
                newly_tripped: true,
                ..
            }
        ));
    }
}
