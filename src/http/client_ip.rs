//! Who the client is, by address (contract section 6 and 12): the socket peer, or, when the
//! peer is a trusted proxy, the right-most address of `X-Forwarded-For` that is not itself
//! trusted. A client cannot pick its rate-limit bucket by sending the header.

use std::net::IpAddr;

use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are compared as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parses an `X-Forwarded-For` chain; `None` when any hop is not an address.
fn parse_chain(header: &str) -> Option<Vec<IpAddr>> {
    header
        .split(',')
        .map(|hop| {
            let hop = hop.trim();
            // Some proxies write `[v6]:port` or `v4:port`; accept the address part.
            hop.parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .map(canonical)
        })
        .collect()
}

/// The client address for rate limiting and logging.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let Some(chain) = forwarded_for.and_then(parse_chain) else {
        return Some(peer);
    };
    if chain.is_empty() {
        return Some(peer);
    }
    // Walk from the right: each trusted hop vouches for the one before it.
    let client = chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip, trusted))
        .or_else(|| chain.first());
    Some(client.copied().unwrap_or(peer))
}

/// The chain to send to .NET: what arrived (when it parsed) with our peer appended.
pub fn forwarded_chain(peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<String> {
    let peer = peer.map(canonical)?;
    match forwarded_for.filter(|h| parse_chain(h).is_some_and(|c| !c.is_empty())) {
        Some(existing) => Some(format!("{}, {peer}", existing.trim())),
        None => Some(peer.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let t = nets(&["10.0.0.0/8"]);
        // The client forged "1.2.3.4"; the real client is 198.51.100.7, added by our proxy.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("1.2.3.4, 198.51.100.7, 10.1.1.1"), &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_means_leftmost() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("10.9.9.9, 10.1.1.1"), &t),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn unparsable_header_is_ignored() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("1.2.3.4, garbage"), &t),
            ip("10.0.0.5")
        );
        assert_eq!(
            forwarded_chain(ip("10.0.0.5"), Some("garbage")),
            Some("10.0.0.5".into())
        );
    }

    #[test]
    fn mapped_ipv6_peer_matches_ipv4_cidr() {
        let t = nets(&["127.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), Some("192.0.2.1"), &t),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn chain_gets_peer_appended() {
        assert_eq!(
            forwarded_chain(ip("10.0.0.5"), Some("1.2.3.4")),
            Some("1.2.3.4, 10.0.0.5".into())
        );
        assert_eq!(
            forwarded_chain(ip("10.0.0.5"), None),
            Some("10.0.0.5".into())
        );
    }
}
