//! Pure domain code: no I/O, no clock reads, no async. The clock, randomness and the request
//! context are arguments, so every decision can be replayed and tested synchronously.

pub mod authorization;
pub mod checkpoint;
pub mod client;
pub mod context;
pub mod destination;
pub mod event;
pub mod keys;
pub mod notice;
pub mod parse;
pub mod session;
pub mod throttle;
pub mod token;
pub mod user;
pub mod verdict;
pub mod webhook;

pub use chrono::Duration;

/// Every instant in the domain. Kept at millisecond precision (see [`truncate_to_millis`]) so
/// what is stored, what is projected and what a rebuild recomputes compare equal.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Drops sub-millisecond precision. Clocks call this before handing out `now`.
pub fn truncate_to_millis(t: Timestamp) -> Timestamp {
    use chrono::SubsecRound;
    t.trunc_subsecs(3)
}

/// The fixed textual form of a timestamp in storage: RFC 3339, UTC, milliseconds, `Z`.
/// Fixed width, so text order is time order.
pub fn format_timestamp(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Serde helpers that keep timestamps in the storage form inside event payloads.
pub mod ts_format {
    use super::{Timestamp, format_timestamp, parse_timestamp};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse_timestamp(&s).ok_or_else(|| D::Error::custom(format!("bad timestamp {s:?}")))
    }

    pub mod option {
        use super::super::{Timestamp, format_timestamp, parse_timestamp};
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_timestamp(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => parse_timestamp(&s)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("bad timestamp {s:?}"))),
                None => Ok(None),
            }
        }
    }
}
