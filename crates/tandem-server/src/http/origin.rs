//! The `Origin` a browser sends, and whether it may do what it asks.

use axum::http::{HeaderMap, header};

/// What a request's `Origin` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// No header: not a browser, or a same-origin GET.
    Absent,
    /// `null` (sandboxed frames, files) or unreadable: never trusted.
    Opaque,
    Named(&'a str),
}

impl<'a> Origin<'a> {
    pub fn of(headers: &'a HeaderMap) -> Self {
        let Some(value) = headers.get(header::ORIGIN) else {
            return Self::Absent;
        };
        match value.to_str().map(str::trim) {
            Ok(origin) if !origin.eq_ignore_ascii_case("null") => Self::Named(origin),
            _ => Self::Opaque,
        }
    }

    /// Whether a request from here may go on: no `Origin` (not a browser),
    /// this server's own host, or one of `allowed`.
    pub fn permits(&self, headers: &HeaderMap, allowed: &[String]) -> bool {
        match self {
            Self::Absent => true,
            Self::Opaque => false,
            Self::Named(_) => self.is_own(headers) || self.is_listed(allowed),
        }
    }

    /// Whether the origin is this server's own host (the request's `Host`,
    /// by either scheme, since a TLS proxy may stand in front).
    pub fn is_own(&self, headers: &HeaderMap) -> bool {
        let Self::Named(origin) = self else {
            return false;
        };
        let own = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((own, host), (Some(own), Some(host)) if own.eq_ignore_ascii_case(host))
    }

    /// Whether the origin is one of `allowed`, compared exactly (scheme,
    /// host and port; a trailing slash in the list is ignored).
    pub fn is_listed(&self, allowed: &[String]) -> bool {
        let Self::Named(origin) = self else {
            return false;
        };
        allowed.iter().any(|allowed| {
            allowed
                .trim()
                .trim_end_matches('/')
                .eq_ignore_ascii_case(origin)
        })
    }
}

/// Whether `origin` is an origin as a browser writes it: `http(s)://host`
/// with an optional port, and nothing else.
pub fn is_well_formed(origin: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.origin().ascii_serialization() == origin.trim_end_matches('/')
}
