//! The circuit breaker on revoking actions (revoke, log out everywhere, lock). A bad GeoIP
//! update can make every user "travel" at once; past a cap of revocations in a window the
//! breaker degrades them to `flag`, records its trip as an event and says so loudly.
//!
//! The cap is `max(floor, ceil(max_fraction × active users))` over `window`.

use crate::domain::{Duration, Timestamp};
use std::collections::VecDeque;

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
    taken: VecDeque<Timestamp>,
    tripped_until: Option<Timestamp>,
    active_users: Option<(u64, Timestamp)>,
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

    /// One revoking action wants to happen at `now`.
    pub fn admit(&mut self, config: &BreakerConfig, now: Timestamp) -> Admission {
        while self
            .taken
            .front()
            .is_some_and(|t| now - *t >= config.window)
        {
            self.taken.pop_front();
        }
        let cap = self.cap(config);
        let count = self.taken.len() as u32;
        if count < cap {
            self.taken.push_back(now);
            return Admission::Allow;
        }
        let newly_tripped = self.tripped_until.is_none_or(|until| now >= until);
        if newly_tripped {
            self.tripped_until = Some(now + config.window);
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
            assert_eq!(b.admit(&config, t0), Admission::Allow);
        }
        assert!(matches!(
            b.admit(&config, t0),
            Admission::Degrade {
                newly_tripped: true,
                count: 3,
                cap: 3,
                ..
            }
        ));
        assert!(matches!(
            b.admit(&config, t0 + Duration::minutes(1)),
            Admission::Degrade {
                newly_tripped: false,
                ..
            }
        ));
        // The window rolls on: revocations flow again.
        assert_eq!(
            b.admit(&config, t0 + Duration::minutes(11)),
            Admission::Allow
        );
    }
}
