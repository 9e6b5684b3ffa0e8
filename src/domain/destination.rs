//! Where outbound requests (webhook deliveries) may go. Addresses inside the host or its private
//! networks — loopback, private, link-local, CGNAT, unique-local IPv6, cloud metadata and the
//! other special-purpose ranges — are refused unless an operator allow-lists their network:
//! otherwise anyone allowed to create a subscription could make the service call its own
//! admin ports, a database, or the cloud's credential endpoint (SSRF). The check applies to
//! every address a name resolves to, at subscription and again at connect time.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The outbound policy: the networks allowed although restricted, and whether `http://` is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    pub allow_networks: Vec<IpNet>,
    pub allow_http: bool,
}

impl DestinationPolicy {
    /// Why `ip` may not be reached (the kind of range), or `None` when it may.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let kind = restricted(ip)?;
        let mapped = embedded_v4(ip).map(IpAddr::V4);
        let allowed = self
            .allow_networks
            .iter()
            .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)));
        (!allowed).then_some(kind)
    }
}

impl DestinationPolicy {
    /// Why a URL's host may not be reached, judged without DNS: an IP literal (`[v6]` too) by
    /// its range. A name (`localhost` included) is judged by every address it resolves to.
    pub fn refuses_host(&self, host: &str) -> Option<&'static str> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        bare.parse::<IpAddr>().ok().and_then(|ip| self.refuses(ip))
    }
}

/// The kind of special-purpose range `ip` is in, if any: such addresses are not "the internet".
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address carried inside IPv6 is judged as the IPv4 address it reaches.
            if let Some(v4) = embedded_v4(ip) {
                return restricted_v4(v4);
            }
            restricted_v6(v6)
        }
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    Some(match ip.octets() {
        [169, 254, 169, 254] | [100, 100, 100, 200] => "a cloud metadata address",
        [0, ..] => "a \"this network\" address",
        [127, ..] => "a loopback address",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "a private address",
        [100, 64..=127, ..] => "a shared (CGNAT) address",
        [169, 254, ..] => "a link-local address",
        [192, 0, 0, _] => "an IETF protocol address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        [198, 18..=19, ..] => "a benchmarking address",
        [224..=239, ..] => "a multicast address",
        [240..=255, ..] => "a reserved or broadcast address",
        _ => return None,
    })
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        // AWS's IPv6 instance metadata endpoint (inside fc00::/7, named for the message).
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => "a cloud metadata address",
        _ if ip.is_unspecified() => "the unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if s[0] & 0xfe00 == 0xfc00 => "a unique-local address",
        _ if s[0] & 0xffc0 == 0xfe80 => "a link-local address",
        _ if s[0] & 0xffc0 == 0xfec0 => "a site-local address",
        _ if s[0] & 0xff00 == 0xff00 => "a multicast address",
        _ if s[0] == 0x2001 && s[1] == 0x0db8 => "a documentation address",
        // Discard-only (RFC 6666).
        [0x0100, 0, 0, 0, ..] => "a discard address",
        _ => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) IPv6 address.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        // ::1 and :: are IPv6's own loopback and unspecified addresses, not IPv4-compatible.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => Some(low(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &DestinationPolicy, ip: &str) -> bool {
        p.refuses(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn internal_and_special_ranges_are_refused_and_public_addresses_are_not() {
        let p = DestinationPolicy::default();
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(refused(&p, ip), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
        ] {
            assert!(!refused(&p, ip), "{ip} is public");
        }
        assert_eq!(
            p.refuses("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn an_allow_listed_network_is_reachable_in_either_notation() {
        let p = DestinationPolicy {
            allow_networks: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            allow_http: false,
        };
        assert!(!refused(&p, "127.0.0.1"));
        assert!(!refused(&p, "::ffff:127.0.0.1"));
        assert!(!refused(&p, "fd12::1"));
        assert!(refused(&p, "10.0.0.1"));
        assert!(refused(&p, "::1"));
    }

    #[test]
    fn hosts_are_judged_as_literals_and_names_are_left_to_resolution() {
        let p = DestinationPolicy::default();
        for host in ["127.0.0.1", "[::1]", "[::ffff:10.0.0.1]", "169.254.169.254"] {
            assert!(p.refuses_host(host).is_some(), "{host}");
        }
        assert_eq!(p.refuses_host("hooks.example.com"), None);
        assert_eq!(p.refuses_host("localhost"), None);
        assert_eq!(p.refuses_host("93.184.216.34"), None);
    }
}
