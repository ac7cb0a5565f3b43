//! Who is at the other end of a request.
//!
//! The TCP peer, unless it is one of `connections.trusted_proxies`: then the
//! header that proxy writes (`X-Forwarded-For`, or `Forwarded` when
//! configured) is read **from the right**, where each proxy appends the
//! address it saw, skipping the hops that are trusted proxies themselves.
//! The first hop that is not is the client. Whatever stands to the left of
//! it was written by the client and counts for nothing, so a forged header
//! changes no bucket. A peer that is not trusted is the client whatever it
//! sends. `X-Forwarded-Proto` (or `proto=`) is believed on the same terms.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;

use super::AddressRange;
use crate::AppState;
use crate::config::ClientAddressHeader;

/// Most hops of a forwarding header read, so a long header costs little.
const MAX_HOPS: usize = 32;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client of a request, as [`resolve`] found it; a request extension
/// and an extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address (the TCP peer's, unless a trusted proxy says).
    pub address: IpAddr,
    /// A trusted proxy says the client reached it over HTTPS.
    pub https: bool,
}

impl Client {
    /// The client of a request whose TCP peer is `peer`.
    pub fn of(
        peer: IpAddr,
        headers: &HeaderMap,
        trusted: &[AddressRange],
        header: ClientAddressHeader,
    ) -> Self {
        let peer = peer.to_canonical();
        if !super::in_ranges(trusted, peer) {
            return Self {
                address: peer,
                https: false,
            };
        }
        let (hops, proto) = match header {
            ClientAddressHeader::XForwardedFor => (
                x_forwarded_for(headers),
                last_value(headers, &X_FORWARDED_PROTO),
            ),
            ClientAddressHeader::Forwarded => forwarded(headers),
        };
        Self {
            address: rightmost_untrusted(peer, &hops, trusted),
            https: proto.is_some_and(|p| p.eq_ignore_ascii_case("https")),
        }
    }

    /// The client of a request: what [`resolve`] left in it, else its TCP
    /// peer, else the unspecified address.
    pub fn from_parts(extensions: &axum::http::Extensions) -> Self {
        if let Some(client) = extensions.get::<Client>() {
            return *client;
        }
        let address = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Self {
            address,
            https: false,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::from_parts(&parts.extensions))
    }
}

impl aide::operation::OperationInput for Client {}

/// Middleware: finds the request's [`Client`] once, for the rate limits,
/// the request span and the cookies.
pub async fn resolve(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let connections = &state.config.connections;
    let client = match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => Client::of(
            peer.ip(),
            request.headers(),
            &connections.trusted_proxies,
            connections.client_address_header,
        ),
        None => Client::from_parts(request.extensions()),
    };
    request.extensions_mut().insert(client);
    next.run(request).await
}

/// The hop to believe: walking from the proxy nearest to us outwards, the
/// first address that is not a trusted proxy. A hop that is not an address
/// (`unknown`, an obfuscated name, garbage) ends the walk: the client is
/// then the last trusted hop, since nothing further out can be told apart.
/// If every hop is trusted, the outermost one is the client.
fn rightmost_untrusted(peer: IpAddr, hops: &[Hop], trusted: &[AddressRange]) -> IpAddr {
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Hop::Address(address) => {
                client = *address;
                if !super::in_ranges(trusted, *address) {
                    break;
                }
            }
            Hop::Unknown => break,
        }
    }
    client
}

/// One entry of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Address(IpAddr),
    Unknown,
}

/// The hops of every `X-Forwarded-For` line, in order, the last
/// [`MAX_HOPS`] of them (an unreadable line is one unknown hop).
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Hop> {
    let mut hops = Vec::new();
    for line in headers.get_all(&X_FORWARDED_FOR) {
        match line.to_str() {
            Ok(line) => hops.extend(line.split(',').map(|hop| parse_hop(hop.trim()))),
            Err(_) => hops.push(Hop::Unknown),
        }
    }
    keep_last(hops)
}

/// The `for=` hops of every `Forwarded` line, in order, and the `proto=`
/// of the last element that has one.
fn forwarded(headers: &HeaderMap) -> (Vec<Hop>, Option<String>) {
    let mut hops = Vec::new();
    let mut proto = None;
    for line in headers.get_all(&FORWARDED) {
        let Ok(line) = line.to_str() else {
            hops.push(Hop::Unknown);
            continue;
        };
        for element in split_unquoted(line, ',') {
            let mut hop = Hop::Unknown;
            for pair in split_unquoted(element, ';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = unquote(value.trim());
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => hop = parse_hop(value),
                    "proto" => proto = Some(value.to_owned()),
                    _ => {}
                }
            }
            hops.push(hop);
        }
    }
    (keep_last(hops), proto)
}

/// The value of the last line of `name`, after its last comma: what the
/// nearest proxy wrote.
fn last_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let line = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    line.rsplit(',').next().map(|v| v.trim().to_owned())
}

fn keep_last(mut hops: Vec<Hop>) -> Vec<Hop> {
    if hops.len() > MAX_HOPS {
        hops.drain(..hops.len() - MAX_HOPS);
    }
    hops
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_hop(text: &str) -> Hop {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Hop::Address(address.to_canonical());
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Hop::Address(socket.ip().to_canonical());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(address) = inner.parse::<IpAddr>()
    {
        return Hop::Address(address.to_canonical());
    }
    Hop::Unknown
}

/// `"…"` without its quotes (and its `\` escapes).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Splits on `separator` outside double quotes.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(text[start..at].trim());
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ranges(list: &[&str]) -> Vec<AddressRange> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(peer: &str, trusted: &[&str], lines: &[(&'static str, &str)]) -> Client {
        Client::of(
            ip(peer),
            &headers(lines),
            &ranges(trusted),
            ClientAddressHeader::XForwardedFor,
        )
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let client = xff(
            "198.51.100.7",
            &[],
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(client.address, ip("198.51.100.7"));
        assert!(!client.https, "an untrusted peer's proto is not believed");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let client = xff(
            "198.51.100.7",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", "10.0.0.1, 203.0.113.9")],
        );
        assert_eq!(client.address, ip("198.51.100.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_on_the_right() {
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(client.address, ip("203.0.113.9"));
        assert!(client.https);
    }

    #[test]
    fn forged_hops_on_the_left_count_for_nothing() {
        // The client sent "1.2.3.4, 10.0.0.9" itself; the proxy appended the
        // address it saw.
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", "1.2.3.4, 10.0.0.9, 203.0.113.9")],
        );
        assert_eq!(client.address, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_hops_are_skipped_and_lines_are_joined_in_order() {
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8", "192.0.2.0/24"],
            &[
                ("x-forwarded-for", "1.2.3.4, 203.0.113.9"),
                ("x-forwarded-for", "192.0.2.10:4711, 10.1.1.1"),
            ],
        );
        assert_eq!(client.address, ip("203.0.113.9"));
    }

    #[test]
    fn a_chain_of_trusted_hops_ends_at_its_outermost() {
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", "10.0.0.5, 10.0.0.3")],
        );
        assert_eq!(client.address, ip("10.0.0.5"));
        let client = xff("10.0.0.2", &["10.0.0.0/8"], &[]);
        assert_eq!(client.address, ip("10.0.0.2"), "no header: the peer");
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_last_trusted_one() {
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.3")],
        );
        assert_eq!(client.address, ip("10.0.0.3"));
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", "203.0.113.9, not-an-address")],
        );
        assert_eq!(client.address, ip("10.0.0.2"));
    }

    #[test]
    fn addresses_take_every_form_proxies_write() {
        assert_eq!(parse_hop("192.0.2.1"), Hop::Address(ip("192.0.2.1")));
        assert_eq!(parse_hop("192.0.2.1:4711"), Hop::Address(ip("192.0.2.1")));
        assert_eq!(parse_hop("2001:db8::1"), Hop::Address(ip("2001:db8::1")));
        assert_eq!(parse_hop("[2001:db8::1]"), Hop::Address(ip("2001:db8::1")));
        assert_eq!(
            parse_hop("[2001:db8::1]:4711"),
            Hop::Address(ip("2001:db8::1"))
        );
        assert_eq!(parse_hop("::ffff:192.0.2.1"), Hop::Address(ip("192.0.2.1")));
        assert_eq!(parse_hop("unknown"), Hop::Unknown);
        assert_eq!(parse_hop("_hidden"), Hop::Unknown);
        assert_eq!(parse_hop(""), Hop::Unknown);
    }

    #[test]
    fn the_forwarded_header_is_read_when_configured_and_only_then() {
        let lines = [
            (
                "forwarded",
                r#"for=1.2.3.4;proto=http, For="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.2"#,
            ),
            ("x-forwarded-for", "198.51.100.99"),
        ];
        let client = Client::of(
            ip("10.0.0.2"),
            &headers(&lines),
            &ranges(&["10.0.0.0/8"]),
            ClientAddressHeader::Forwarded,
        );
        assert_eq!(client.address, ip("2001:db8:cafe::17"));
        assert!(client.https);
        // Configured for X-Forwarded-For, a Forwarded header is ignored.
        let client = Client::of(
            ip("10.0.0.2"),
            &headers(&lines),
            &ranges(&["10.0.0.0/8"]),
            ClientAddressHeader::XForwardedFor,
        );
        assert_eq!(client.address, ip("198.51.100.99"));
        assert!(!client.https);
    }

    #[test]
    fn forwarded_values_may_be_quoted_with_separators_inside() {
        assert_eq!(
            split_unquoted(r#"for="a,b";proto=https, for=c"#, ','),
            vec![r#"for="a,b";proto=https"#, "for=c"]
        );
        let (hops, _) = forwarded(&headers(&[(
            "forwarded",
            r#"for="_gazonk", for=unknown, for=192.0.2.60"#,
        )]));
        assert_eq!(
            hops,
            vec![Hop::Unknown, Hop::Unknown, Hop::Address(ip("192.0.2.60"))]
        );
    }

    #[test]
    fn the_nearest_proxys_proto_counts() {
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https, http"),
            ],
        );
        assert!(!client.https);
    }

    #[test]
    fn a_long_header_is_read_from_its_end() {
        let mut line = vec!["10.0.0.1"; 1000];
        line.push("203.0.113.9");
        let client = xff(
            "10.0.0.2",
            &["10.0.0.0/8"],
            &[("x-forwarded-for", &line.join(","))],
        );
        assert_eq!(client.address, ip("203.0.113.9"));
    }
}
