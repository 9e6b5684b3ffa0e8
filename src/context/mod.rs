//! The request context of every request-born event: the client IP (the socket peer, or the
//! forwarded client when the peer is a trusted proxy), the User-Agent and the device it names,
//! and what the GeoIP databases know about the address.

pub mod geoip;

use crate::domain::context::{Device, RequestContext};
use axum::http::HeaderMap;
use geoip::GeoIp;
use ipnet::IpNet;
use std::net::IpAddr;

/// Longer User-Agents are cut: they are for people and device parsing, not for storage abuse.
const USER_AGENT_MAX: usize = 512;

pub fn request_context(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    geoip: &GeoIp,
    request_id: Option<String>,
) -> RequestContext {
    let ip = client_ip(peer, headers, trusted);
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| truncate(ua, USER_AGENT_MAX));
    RequestContext {
        ip: Some(ip),
        device: user_agent.as_deref().and_then(device),
        user_agent,
        geo: geoip.lookup(ip),
        request_id,
    }
}

/// The peer address unless the peer is a trusted proxy; then `X-Forwarded-For` is walked from
/// the right (the entry the nearest proxy wrote) past trusted proxies, and the first address
/// that is not one is the client. Addresses a client wrote on the left cannot be told apart from
/// lies, so they are never used. An entry that is not an address ends the walk: whoever wrote
/// it is unknown, so the client is the last hop known (the trusted proxy on its right, or the
/// peer), never an address further left.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    let mut client = canonical(peer);
    if !is_trusted(&client) {
        return client;
    }
    // A header value that is not text is as unparseable as a bad entry.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("unreadable").split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_ip(entry) else {
            break;
        };
        client = canonical(ip);
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// IPv4-mapped IPv6 addresses are IPv4 clients of a dual-stack socket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn device(user_agent: &str) -> Option<Device> {
    let p = woothee::parser::Parser::new().parse(user_agent)?;
    Some(Device {
        category: p.category.to_owned(),
        os: p.os.to_owned(),
        browser: p.name.to_owned(),
        version: p.version.to_owned(),
        vendor: p.vendor.to_owned(),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let h = headers("1.2.3.4, 203.0.113.9, 10.9.9.9");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            stranger,
            "an untrusted peer cannot claim another address"
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn an_unparseable_forwarded_entry_ends_the_walk() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        // The attacker's chosen address sits left of a garbage entry: it must not be taken.
        let h = headers("203.0.113.66, garbage, 10.9.9.9");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        let h = headers("203.0.113.66, not-an-ip");
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        let h = headers("203.0.113.66, 198.51.100.7:4711, 10.9.9.9");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn devices_are_parsed_from_the_user_agent() {
        let d = device("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36").unwrap();
        assert_eq!(d.category, "pc");
        assert_eq!(d.browser, "Chrome");
        assert!(d.os.starts_with("Windows"));
    }
}
