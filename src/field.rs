//! One request header as a single value, for the decisions sift takes on
//! it (route header conditions, rate-limit keys, canary keys).
//!
//! A client may send a name on several lines (`x-tenant: a`,
//! `x-tenant: b`). Reading only the first line decides on `a` while the
//! upstream may read `b` (the last) or `a, b` (the list): Envoy's
//! CVE-2020-25017. As Envoy does since, sift decides on all the lines
//! joined by "," (`a,b`), a combination RFC 9110 §5.3 allows.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::AsHeaderName;

/// The value of header `name`: one line as it is (borrowed, no
/// allocation), several lines joined by "," in order (allocated only
/// then), `None` without any line.
///
/// Not for headers with their own rules: Host (several lines are a 400),
/// Content-Length, Transfer-Encoding, Connection, X-Forwarded-For (a list
/// read across lines), Cookie (`; `-joined).
pub fn joined<K: AsHeaderName>(h: &HeaderMap, name: K) -> Option<Cow<'_, [u8]>> {
    let all = h.get_all(name);
    let mut lines = all.iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let len = all.iter().map(|v| v.len() + 1).sum::<usize>();
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(first.as_bytes());
    for line in std::iter::once(second).chain(lines) {
        v.push(b',');
        v.extend_from_slice(line.as_bytes());
    }
    Some(Cow::Owned(v))
}

/// Fields kept out of trailers (RFC 9110 §6.5.1: framing, routing,
/// authentication, caching; and hop-by-hop ones).
pub const NEVER_IN_TRAILERS: [http::header::HeaderName; 16] = [
    http::header::AUTHORIZATION,
    http::header::CACHE_CONTROL,
    http::header::CONNECTION,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_RANGE,
    http::header::CONTENT_TYPE,
    http::header::HOST,
    http::header::MAX_FORWARDS,
    http::header::PROXY_AUTHORIZATION,
    http::header::SET_COOKIE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::UPGRADE,
    http::header::COOKIE,
];

/// Fields no trailer may carry past sift, in either direction: sift's own
/// `x-sift-*` (only sift sets them, as in the head), hop-by-hop fields,
/// and those RFC 9110 §6.5.1 keeps out of trailers (framing, routing,
/// authentication, caching: a server that merges trailers into its
/// headers must not get a second `Content-Length` or `Host` from them).
/// Envoy's HTTP/1 codec drops request trailers unless told otherwise;
/// these are the ones that are never safe. Trailers are rare: this runs
/// only when a body has them.
pub fn clean_trailers(t: &mut HeaderMap) {
    use http::header;
    let gone: Vec<header::HeaderName> = t
        .keys()
        .filter(|k| {
            NEVER_IN_TRAILERS.contains(k)
                || k.as_str().starts_with("x-sift-")
                || matches!(k.as_str(), "keep-alive" | "proxy-connection")
        })
        .cloned()
        .collect();
    for k in gone {
        t.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn one_line_is_borrowed_several_are_joined_in_order() {
        let mut h = HeaderMap::new();
        assert!(joined(&h, "x-tenant").is_none());
        h.append("x-tenant", HeaderValue::from_static("a"));
        assert!(matches!(joined(&h, "x-tenant"), Some(Cow::Borrowed(b"a"))));
        h.append("x-tenant", HeaderValue::from_static("b"));
        h.append("x-tenant", HeaderValue::from_static(""));
        h.append("x-tenant", HeaderValue::from_static("c d"));
        assert_eq!(joined(&h, "x-tenant").as_deref(), Some(&b"a,b,,c d"[..]));
        // Names are case-insensitive; other names do not mix in.
        h.append("x-other", HeaderValue::from_static("z"));
        assert_eq!(joined(&h, "X-Tenant").as_deref(), Some(&b"a,b,,c d"[..]));
    }
}
