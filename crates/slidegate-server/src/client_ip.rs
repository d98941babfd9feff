//! The client's address for keying: the TCP peer, or `X-Forwarded-For` only when the peer is a trusted proxy.
//!
//! A header is just text the sender chose. Only a proxy we trust appends the
//! address it saw, so the client is the rightmost address in the chain that
//! is not one of our proxies; anything left of it may be forged and is
//! ignored. From an untrusted peer the header is ignored entirely.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed, and how IPv6 clients are grouped.
#[derive(Debug, Clone)]
pub struct ClientIpRules {
    trusted: Vec<IpNet>,
    /// IPv6 clients are counted per network of this length: one host gets a /64
    /// and could otherwise rotate addresses to escape its limit.
    ipv6_prefix: u8,
}

impl ClientIpRules {
    pub fn new(trusted: Vec<IpNet>, ipv6_prefix: u8) -> Self {
        Self {
            trusted,
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.trusted.iter().any(|net| net.contains(&address))
    }

    /// The client's address. `forwarded_for` holds every `X-Forwarded-For`
    /// header value in order; it is read only when `peer` is trusted.
    pub fn client_ip<'h>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl DoubleEndedIterator<Item = &'h str>,
    ) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        // Walk from the proxy nearest to us outwards; stop at the first hop we
        // do not trust. An unparsable entry ends the walk too: what is left of
        // it cannot be vouched for, so the last trusted hop is the client.
        let mut client = peer;
        for entry in forwarded_for.rev().flat_map(|value| value.rsplit(',')) {
            let Some(address) = parse_forwarded_address(entry.trim()) else {
                break;
            };
            client = canonical(address);
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    /// The text a policy counts: an IPv4 address as is, an IPv6 one as its
    /// network (`2001:db8:1:2::/64` by default).
    pub fn key_text(&self, address: IpAddr) -> String {
        match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) if self.ipv6_prefix >= 128 => v6.to_string(),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                format!("{}/{}", Ipv6Addr::from(bits & mask), self.ipv6_prefix)
            }
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports) as plain IPv4,
/// so one client has one key and trusted IPv4 ranges match.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `192.0.2.1`, `2001:db8::1`, and the forms proxies also write: `192.0.2.1:4711`, `[2001:db8::1]:4711`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse() {
        return Some(address);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(trusted: &[&str]) -> ClientIpRules {
        ClientIpRules::new(trusted.iter().map(|net| net.parse().unwrap()).collect(), 64)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let rules = rules(&["10.0.0.0/8"]);
        assert_eq!(
            rules.client_ip(ip("198.51.100.9"), ["203.0.113.7"].into_iter()),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_rightmost_untrusted_address() {
        let rules = rules(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged "1.2.3.4"; our proxies appended what they saw.
        let chain = ["1.2.3.4, 203.0.113.7", "10.1.1.1"];
        assert_eq!(
            rules.client_ip(ip("127.0.0.1"), chain.into_iter()),
            ip("203.0.113.7")
        );
        // Only trusted hops: the farthest of them is the client.
        assert_eq!(
            rules.client_ip(ip("10.0.0.2"), ["10.9.9.9"].into_iter()),
            ip("10.9.9.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            rules.client_ip(ip("10.0.0.2"), std::iter::empty()),
            ip("10.0.0.2")
        );
        // Garbage stops the walk at the last address we can vouch for.
        assert_eq!(
            rules.client_ip(ip("10.0.0.2"), ["203.0.113.7, junk, 10.0.0.3"].into_iter()),
            ip("10.0.0.3")
        );
        assert_eq!(
            rules.client_ip(
                ip("10.0.0.2"),
                ["[2001:db8::1]:4711", "192.0.2.1:80"].into_iter()
            ),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network_and_ipv4_by_address() {
        let rules = rules(&[]);
        assert_eq!(
            rules.key_text("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            rules.key_text("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(rules.key_text("192.0.2.1".parse().unwrap()), "192.0.2.1");
        let full = ClientIpRules::new(Vec::new(), 128);
        assert_eq!(full.key_text("2001:db8::1".parse().unwrap()), "2001:db8::1");
        let everything = ClientIpRules::new(Vec::new(), 0);
        assert_eq!(everything.key_text("2001:db8::1".parse().unwrap()), "::/0");
    }

    #[test]
    fn ipv4_mapped_peers_count_as_ipv4() {
        let rules = rules(&["127.0.0.1/32"]);
        assert_eq!(
            rules.client_ip(ip("::ffff:127.0.0.1"), ["192.0.2.5"].into_iter()),
            ip("192.0.2.5")
        );
    }
}
