//! Keeps the page fetcher off private networks.
//!
//! Search results are chosen by strangers: a page can point us at
//! `http://169.254.169.254/` (cloud metadata), `http://127.0.0.1:8222/` (our
//! own NATS monitor) or a name that resolves to a LAN address. Unless
//! `--allow-private-addresses` is set, every address we would connect to —
//! IP literals in URLs and redirects, and every address DNS returns — must be
//! globally routable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public, unicast, globally routable address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (seg0 == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64 (embeds v4)
                || v6 == Ipv6Addr::from(1u128)) // ::1 spelled out
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || a >= 240) // reserved
}

/// Checks a URL's host when it is an IP literal (names are checked at DNS time).
///
/// # Errors
/// A reason, when the host is a non-public address.
pub fn check_url(url: &Url) -> Result<(), String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err(format!("{ip} is not a public address"))
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err(format!("{ip} is not a public address"))
        }
        Some(url::Host::Domain(d))
            if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
        {
            Err(format!("{d} is a loopback name"))
        }
        None => Err("the URL has no host".into()),
        _ => Ok(()),
    }
}

/// A resolver that drops non-public addresses and fails when none are left.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublicOnlyResolver;

/// Every address a name resolved to was private.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to non-public addresses")]
pub struct PrivateOnly(String);

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(PrivateOnly(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} passed");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} refused");
        }
    }

    #[test]
    fn urls_with_private_literals_are_refused() {
        let bad = [
            "http://127.0.0.1:8222/",
            "http://[::1]/",
            "http://localhost/",
            "http://a.localhost/",
        ];
        for u in bad {
            assert!(check_url(&Url::parse(u).unwrap()).is_err(), "{u}");
        }
        assert!(check_url(&Url::parse("https://example.com/").unwrap()).is_ok());
    }
}
