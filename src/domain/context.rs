//! What the domain knows about the request that caused an event. Filled in by `crate::context`
//! (client IP behind trusted proxies, User-Agent parsing, GeoIP lookups).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestContext {
    /// Lenient: an erased or expired address (a marker string in the log) reads as none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// Filled by GeoIP lookups when a database is configured and knows the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<Geo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub category: String,
    pub os: String,
    pub browser: String,
    pub version: String,
    pub vendor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Geo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub latitude: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_radius_km: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn_org: Option<String>,
    /// Build time (Unix seconds) of the city database that answered, so a receipt can be
    /// traced to the exact database (a bad update shows up as one build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city_build: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn_build: Option<u64>,
    /// What kind of network the address belongs to, where the anonymous-IP database or the
    /// operator's ASN lists say: coarse and non-identifying (see [`Anonymizer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymizer: Option<Anonymizer>,
    /// The connection-type database's answer, as MaxMind spells it (`Cable/DSL`, `Cellular`,
    /// `Corporate`, `Satellite`, `Dialup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<String>,
}

/// A network that hides where its users are or serves machines rather than people, strongest
/// first when a database gives several flags (a Tor exit is also "anonymous").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymizer {
    TorExit,
    PublicProxy,
    Vpn,
    Hosting,
    Anonymous,
}

impl Anonymizer {
    pub fn as_str(self) -> &'static str {
        match self {
            Anonymizer::TorExit => "tor_exit",
            Anonymizer::PublicProxy => "public_proxy",
            Anonymizer::Vpn => "vpn",
            Anonymizer::Hosting => "hosting",
            Anonymizer::Anonymous => "anonymous",
        }
    }
}

/// An optional field that reads as `None` when the stored value is not one (the `[erased]` or
/// `[expired]` marker of a destroyed data key): history stays decodable after an erasure.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

impl Geo {
    /// Latitude, longitude and accuracy radius, when the database gave all three.
    pub fn position(&self) -> Option<(f64, f64, f64)> {
        Some((
            self.latitude?,
            self.longitude?,
            f64::from(self.accuracy_radius_km.unwrap_or(0)),
        ))
    }
}

impl Geo {
    /// The network's kind in one word for receipts: the anonymizer if any, else the
    /// connection type, else unknown.
    pub fn network_kind(&self) -> &str {
        match (self.anonymizer, self.connection_type.as_deref()) {
            (Some(a), _) => a.as_str(),
            (None, Some(c)) => c,
            (None, None) => "unknown",
        }
    }
}

impl RequestContext {
    /// The network a request came from: the /24 of an IPv4 address, the /64 of an IPv6 one.
    /// Two requests from one household or one mobile carrier cell usually share it.
    pub fn network(&self) -> Option<String> {
        self.ip.map(network_prefix)
    }

    /// The context as it reads once its data key is destroyed (see `store::vault`): every
    /// personal field the marker, or absent where the field is not text. An erasure writes
    /// this into the projections, so they match a rebuild from the log.
    pub fn redacted(&self, marker: &str) -> RequestContext {
        let m = |v: &Option<String>| v.as_ref().map(|_| marker.to_owned());
        RequestContext {
            ip: None,
            user_agent: m(&self.user_agent),
            device: self.device.clone(),
            geo: self.geo.as_ref().map(|g| Geo {
                region: m(&g.region),
                city: m(&g.city),
                latitude: None,
                longitude: None,
                ..g.clone()
            }),
            request_id: m(&self.request_id),
        }
    }

    /// Device class for "is this the same device": category, OS and browser name, never
    /// versions. Unknown on both sides counts as the same: a client that sends no User-Agent
    /// is not a different client on its second request.
    pub fn device_class(&self) -> Option<String> {
        self.device
            .as_ref()
            .map(|d| format!("{}/{}/{}", d.category, d.os, d.browser))
    }
}

pub fn network_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_prefix(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The network a user is "usually on": the /24 of an IPv4 address, the /48 of an IPv6 one (a
/// household's or an office's allocation; /64s change with each router restart at some ISPs).
pub fn usual_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        other => network_prefix(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_group_neighbours_and_ignore_host_bits() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.250".parse().unwrap();
        let c: IpAddr = "203.0.114.7".parse().unwrap();
        assert_eq!(network_prefix(a), network_prefix(b));
        assert_ne!(network_prefix(a), network_prefix(c));
        let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(network_prefix(v6), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(network_prefix(mapped), "203.0.113.0/24");
    }
}
