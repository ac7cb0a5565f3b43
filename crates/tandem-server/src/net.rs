//! Sockets: accepting them, holding each to its time limits, and knowing
//! who is at the other end.
//!
//! - [`accept`]: the accept loop. It admits a socket only within the caps
//!   (per client address, and over all sockets, from the open-file limit),
//!   refuses the rest at once without stalling the open ones, and backs off
//!   when the process runs out of file descriptors instead of spinning.
//! - [`connection`]: one HTTP/1 connection on hyper, with the timeouts hyper
//!   does not keep apart: a request head must arrive within
//!   `header_timeout_secs`, an idle keep-alive connection goes after
//!   `idle_timeout_secs`; upgrades (WebSockets) leave it for their own task.
//! - [`body`]: a request body that must arrive within `body_timeout_secs`.
//! - [`client`]: the client's address, from the TCP peer or, when the peer
//!   is a trusted proxy, from the header it writes; and `X-Forwarded-Proto`
//!   only from such a proxy.
//! - [`open_files`]: the process's open-file limit, raised at start.

pub mod accept;
pub mod body;
pub mod client;
pub mod connection;
pub mod open_files;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use accept::{bind, serve};
pub use client::Client;

/// A network or a single address, written `10.0.0.0/8`, `::1` or
/// `192.0.2.7` in the configuration.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange(IpNet);

impl AddressRange {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&address.to_canonical())
    }
}

impl FromStr for AddressRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|address| Self(IpNet::from(address.to_canonical())))
            .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR (10.0.0.0/8)"))
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<AddressRange> for String {
    fn from(range: AddressRange) -> Self {
        range.to_string()
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl fmt::Debug for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether any of `ranges` holds `address`.
pub fn in_ranges(ranges: &[AddressRange], address: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(address))
}

/// What per-address limits count by: an IPv4 address, or an IPv6 client's
/// /64 (one subscriber's network: its addresses cost it nothing to change).
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// A warning logged at most once per interval, with the number of times it
/// was held back: an attack must not flood the logs it is seen in.
pub struct Throttled {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(times held back since the last one)` when it is time to log.
    pub fn ready(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_networks_and_single_addresses() {
        let net: AddressRange = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: AddressRange = " 192.0.2.7 ".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7");
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        // An IPv4 peer on a dual-stack socket is seen as ::ffff:a.b.c.d.
        assert!(one.contains("::ffff:192.0.2.7".parse().unwrap()));
        let v6: AddressRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!("localhost".parse::<AddressRange>().is_err());
        assert!("10.0.0.0/33".parse::<AddressRange>().is_err());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            address_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_throttled_warning_counts_what_it_held_back() {
        let warning = Throttled::new(Duration::from_secs(3600));
        assert_eq!(warning.ready(), Some(0));
        assert_eq!(warning.ready(), None);
        assert_eq!(warning.ready(), None);
        let warning = Throttled::new(Duration::ZERO);
        assert_eq!(warning.ready(), Some(0));
        assert_eq!(warning.ready(), Some(0));
    }
}
