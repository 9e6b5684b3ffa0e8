//! Login throttling: which counters a failed password check feeds, and what an attempt over a
//! limit is told. Pure: the counts come from the store (the `login_failures` projection of
//! `login.failed`), the time from the caller.

use super::context::network_prefix;
use super::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The three counters, strictest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleScope {
    /// One account from one address.
    AccountAddress,
    /// Every account from one /24 (IPv4) or /64 (IPv6): password spraying.
    Network,
    /// One account from anywhere: looser, so that strangers' failures do not easily lock the
    /// real user out.
    Account,
}

impl ThrottleScope {
    pub const ALL: [ThrottleScope; 3] = [
        ThrottleScope::AccountAddress,
        ThrottleScope::Network,
        ThrottleScope::Account,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleScope::AccountAddress => "account_address",
            ThrottleScope::Network => "network",
            ThrottleScope::Account => "account",
        }
    }
}

/// At most `max_failures` failed checks per `window`; 0 turns the counter off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max_failures: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub account_address: Limit,
    pub network: Limit,
    pub account: Limit,
}

impl ThrottlePolicy {
    pub fn limit(&self, scope: ThrottleScope) -> Limit {
        match scope {
            ThrottleScope::AccountAddress => self.account_address,
            ThrottleScope::Network => self.network,
            ThrottleScope::Account => self.account,
        }
    }
}

/// The counter keys an attempt for `username` from `ip` is judged by and, when it fails, feeds.
/// Without an address only the account counter applies.
pub fn throttle_keys(username: &str, ip: Option<IpAddr>) -> Vec<(ThrottleScope, String)> {
    let mut keys = Vec::with_capacity(3);
    if let Some(ip) = ip {
        keys.push((
            ThrottleScope::AccountAddress,
            format!("acct_addr:{username}|{ip}"),
        ));
        keys.push((
            ThrottleScope::Network,
            format!("net:{}", network_prefix(ip)),
        ));
    }
    keys.push((ThrottleScope::Account, format!("acct:{username}")));
    keys
}

/// Whole seconds until the limit's `max_failures`-th newest failure, at `nth_newest`, leaves
/// the window (at least 1): then the counter is under its limit again.
pub fn retry_after(nth_newest: Timestamp, window: Duration, now: Timestamp) -> u64 {
    let millis = (nth_newest + window - now).num_milliseconds();
    (millis.max(0) as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_timestamp;

    #[test]
    fn keys_separate_address_network_and_account() {
        let keys = throttle_keys("alice", Some("203.0.113.9".parse().unwrap()));
        let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "acct_addr:alice|203.0.113.9",
                "net:203.0.113.0/24",
                "acct:alice"
            ]
        );
        assert_eq!(throttle_keys("alice", None).len(), 1);
    }

    #[test]
    fn retry_after_counts_until_the_failure_leaves_the_window() {
        let t = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let w = Duration::minutes(15);
        assert_eq!(retry_after(t, w, t), 900);
        assert_eq!(retry_after(t, w, t + Duration::milliseconds(899_500)), 1);
        assert_eq!(retry_after(t, w, t + Duration::minutes(20)), 1);
    }
}
