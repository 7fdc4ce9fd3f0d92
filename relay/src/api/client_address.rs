//! The address a request comes from, for rate limits and the audit log: the connection's peer,
//! or, when the peer is a trusted proxy (`api.limits.trusted_proxies`), the address that proxy
//! names in the one header it is configured to write (`X-Forwarded-For` or `Forwarded`).
//!
//! The header is read from the right: each trusted proxy appends the address it received the
//! request from, so the first address from the right that is not a trusted proxy is the client.
//! Anything left of it was written by the client and is ignored. A hop that cannot be read stops
//! the walk at the last trusted proxy, which is then limited as one client.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::limits::ForwardedHeader;

/// The resolved client address of a request (a request extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client address of a request that arrived from `peer` with `headers`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], header: ForwardedHeader) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return canonical(peer);
    }
    let hops: Vec<Option<IpAddr>> = match header {
        ForwardedHeader::XForwardedFor => values(headers, "x-forwarded-for").map(parse_hop).collect(),
        ForwardedHeader::Forwarded => values(headers, "forwarded").map(forwarded_for).collect(),
    };
    let mut client = canonical(peer);
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(&client) => client = canonical(ip),
            _ => break,
        }
    }
    client
}

/// The comma-separated elements of every `name` header, in order.
fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().flat_map(|v| v.to_str().unwrap_or("").split(',')).map(str::trim)
}

/// The `for=` parameter of one `Forwarded` element (`for=192.0.2.60;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| parse_hop(value.trim()))?
    })
}

/// One hop: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, quoted or not.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bracketed = text.strip_prefix('[')?.split_once(']')?.0;
    bracketed.parse().ok()
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    const PROXIES: &str = "10.0.0.0/8";

    fn trusted() -> Vec<IpNet> {
        vec![PROXIES.parse().expect("net")]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let sent = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(resolve(ip("203.0.113.9"), &sent, &trusted(), ForwardedHeader::XForwardedFor), ip("203.0.113.9"));
        assert_eq!(resolve(ip("10.0.0.2"), &sent, &[], ForwardedHeader::XForwardedFor), ip("10.0.0.2"));
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        // The client forged the leftmost entry; the proxies appended the rest.
        let sent = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9"), ("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(resolve(ip("10.0.0.2"), &sent, &trusted(), ForwardedHeader::XForwardedFor), ip("203.0.113.9"));
        let only_proxies = headers(&[("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(resolve(ip("10.0.0.2"), &only_proxies, &trusted(), ForwardedHeader::XForwardedFor), ip("10.1.2.3"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, not-an-address")]);
        assert_eq!(resolve(ip("10.0.0.2"), &garbage, &trusted(), ForwardedHeader::XForwardedFor), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_elements_are_read_with_ports_brackets_and_quotes() {
        let sent = headers(&[("forwarded", "for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https, For=10.9.9.9")]);
        assert_eq!(resolve(ip("10.0.0.2"), &sent, &trusted(), ForwardedHeader::Forwarded), ip("2001:db8::7"));
        // Only the configured header counts: a client-sent X-Forwarded-For is ignored here.
        let spoofed = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(resolve(ip("10.0.0.2"), &spoofed, &trusted(), ForwardedHeader::Forwarded), ip("10.0.0.2"));
        assert_eq!(parse_hop("192.0.2.60:4711"), Some(ip("192.0.2.60")));
        assert_eq!(forwarded_for("for=unknown"), None);
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        assert_eq!(
            resolve(ip("::ffff:10.0.0.2"), &HeaderMap::new(), &trusted(), ForwardedHeader::Forwarded),
            ip("10.0.0.2")
        );
    }
}
