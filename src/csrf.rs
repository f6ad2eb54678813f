//! Cross-site request forgery protection per route (`routes[].csrf`):
//! Envoy's `csrf` filter, with the Fetch metadata check browsers now give
//! (Go 1.25's `CrossOriginProtection` reads it the same way).
//!
//! Only requests that can change state are checked: every method but
//! GET, HEAD and OPTIONS. Such a request passes when
//!
//! 1. its source origin (`Origin`, else the scheme and authority of
//!    `Referer`, as Envoy reads them) is one of `trusted_origins`; or
//! 2. the browser says it came from this site's own pages or from no page
//!    at all: `Sec-Fetch-Site: same-origin` or `none` (typed URL,
//!    bookmark); or
//! 3. without `Sec-Fetch-Site` (plain-HTTP pages and older browsers do not
//!    send it), its source origin's authority is the request's own host,
//!    as Envoy compares them; or
//! 4. it carries neither (`curl`, a service, a mobile app: no browser
//!    page made it), unless `require_origin` (Envoy's behaviour: a missing
//!    source origin is invalid).
//!
//! Anything else (`Sec-Fetch-Site: cross-site` or `same-site`, another
//! site's `Origin`, `Origin: null` from a sandboxed frame) is refused with
//! 403 `csrf-denied`, or only counted and logged in `shadow` mode.

use http::Method;
use http::header::{self, HeaderMap};
use serde::Serialize;

use crate::cors::OriginMatch;

/// A route's CSRF policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CsrfSpec {
    /// Refuse (`enforce`), or only count and log (`shadow`).
    pub enforce: bool,
    /// Origins whose pages may send state-changing requests
    /// (`additional_origins` in Envoy).
    pub trusted_origins: Vec<OriginMatch>,
    /// A state-changing request with no `Origin`, `Referer` or
    /// `Sec-Fetch-Site` is refused too.
    pub require_origin: bool,
}

/// What the policy says of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csrf {
    /// GET, HEAD or OPTIONS: not checked.
    Safe,
    /// From this site (`Sec-Fetch-Site`, or the source origin's host).
    SameOrigin,
    /// From one of `trusted_origins`.
    Trusted,
    /// No browser header at all (not a page's request).
    NoOrigin,
    /// Refused, and why.
    Denied(&'static str),
}

/// The `result` labels of `sift_csrf_requests_total`, in the order of
/// [`Csrf::result`].
pub const RESULTS: [&str; 5] = [
    "same_origin",
    "trusted",
    "no_origin",
    "denied",
    "shadow_denied",
];

/// `Sec-Fetch-Site`, parsed once.
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

impl Csrf {
    /// Its index in [`RESULTS`] (`None`: not counted).
    pub fn result(self, enforce: bool) -> Option<usize> {
        match self {
            Csrf::Safe => None,
            Csrf::SameOrigin => Some(0),
            Csrf::Trusted => Some(1),
            Csrf::NoOrigin => Some(2),
            Csrf::Denied(_) if enforce => Some(3),
            Csrf::Denied(_) => Some(4),
        }
    }
}

/// GET, HEAD and OPTIONS are never checked.
pub fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl CsrfSpec {
    /// Check a request by its method, headers and target authority
    /// (`:authority` or `Host`, `host[:port]`).
    pub fn check(&self, method: &Method, headers: &HeaderMap, host: &str) -> Csrf {
        if safe(method) {
            return Csrf::Safe;
        }
        let origin = source_origin(headers);
        if let Some(Ok(o)) = &origin
            && self.trusted_origins.iter().any(|m| m.matches(o))
        {
            return Csrf::Trusted;
        }
        let fetch_site = headers.get(&SEC_FETCH_SITE).map(|v| v.as_bytes());
        match fetch_site {
            Some(b"same-origin" | b"none") => return Csrf::SameOrigin,
            Some(b"cross-site") => return Csrf::Denied("Sec-Fetch-Site: cross-site"),
            Some(b"same-site") => return Csrf::Denied("Sec-Fetch-Site: same-site"),
            // An unknown value: the origin decides.
            Some(_) | None => {}
        }
        match origin {
            None if self.require_origin => Csrf::Denied("no Origin or Referer"),
            None => Csrf::NoOrigin,
            Some(Err(why)) => Csrf::Denied(why),
            Some(Ok(o)) => match authority(&o) {
                Some((scheme, a)) if same_host(scheme, a, host) => Csrf::SameOrigin,
                _ => Csrf::Denied("the Origin is another site's"),
            },
        }
    }
}

/// The request's source origin: its one `Origin`, else its `Referer` cut
/// to `scheme://authority`. `Err`: present but unusable (several `Origin`
/// lines, bytes that are no text).
fn source_origin(headers: &HeaderMap) -> Option<Result<String, &'static str>> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    if let Some(o) = origins.next() {
        if origins.next().is_some() {
            return Some(Err("several Origin headers"));
        }
        return Some(
            o.to_str()
                .map(|s| s.trim().to_ascii_lowercase())
                .map_err(|_| "an Origin that is not text"),
        );
    }
    let r = headers.get(header::REFERER)?;
    let Ok(r) = r.to_str() else {
        return Some(Err("a Referer that is not text"));
    };
    let r = r.trim().to_ascii_lowercase();
    let Some((scheme, rest)) = r.split_once("://") else {
        return Some(Err("a Referer that is not an absolute URL"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(Ok(format!("{scheme}://{}", &rest[..end])))
}

/// `(scheme, authority)` of an origin (`https://app.example.com:8443`);
/// `None` for `null` or anything that is no `scheme://host[:port]`.
fn authority(origin: &str) -> Option<(&str, &str)> {
    let (scheme, a) = origin.split_once("://")?;
    let host = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if host.is_empty() || host != a {
        // Userinfo has no place in an origin.
        return None;
    }
    Some((scheme, a))
}

/// The origin's authority names the request's host: the same name and
/// port, a port that is the scheme's default counting as none.
fn same_host(scheme: &str, origin: &str, host: &str) -> bool {
    let default = match scheme {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => "",
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(default) {
            Some(h) if !default.is_empty() && !h.ends_with(':') => h.to_string(),
            _ => a,
        }
    };
    let host = host.trim_end_matches('.');
    strip(origin.trim_end_matches('.')) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn spec(trusted: &[&str], require_origin: bool) -> CsrfSpec {
        CsrfSpec {
            enforce: true,
            trusted_origins: trusted
                .iter()
                .map(|o| OriginMatch::parse(o).unwrap())
                .collect(),
            require_origin,
        }
    }

    fn check(s: &CsrfSpec, method: &str, headers: &[(&str, &str)], host: &str) -> Csrf {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        s.check(&method.parse().unwrap(), &h, host)
    }

    #[test]
    fn state_changing_requests_from_other_sites_are_refused() {
        let s = spec(
            &["https://admin.example.com", "https://*.partner.test"],
            false,
        );
        let h = "shop.example.com";
        // Safe methods are never checked.
        for m in ["GET", "HEAD", "OPTIONS"] {
            let evil = [
                ("origin", "https://evil.test"),
                ("sec-fetch-site", "cross-site"),
            ];
            assert_eq!(check(&s, m, &evil, h), Csrf::Safe, "{m}");
        }
        // Fetch metadata first.
        for v in ["same-origin", "none"] {
            assert_eq!(
                check(&s, "POST", &[("sec-fetch-site", v)], h),
                Csrf::SameOrigin
            );
        }
        assert!(matches!(
            check(
                &s,
                "POST",
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "https://shop.example.com")
                ],
                h
            ),
            Csrf::Denied(_)
        ));
        assert!(matches!(
            check(&s, "DELETE", &[("sec-fetch-site", "same-site")], h),
            Csrf::Denied(_)
        ));
        // A trusted origin passes whatever the browser says.
        let trusted = [
            ("sec-fetch-site", "same-site"),
            ("origin", "https://admin.example.com"),
        ];
        assert_eq!(check(&s, "PUT", &trusted, h), Csrf::Trusted);
        let sub = [
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://a.b.partner.test"),
        ];
        assert_eq!(check(&s, "PATCH", &sub, h), Csrf::Trusted);
        // No fetch metadata: the origin's host against the request's.
        for o in [
            "https://shop.example.com",
            "http://shop.example.com",
            "https://shop.example.com:443",
            "https://SHOP.example.com",
        ] {
            assert_eq!(
                check(&s, "POST", &[("origin", o)], h),
                Csrf::SameOrigin,
                "{o}"
            );
        }
        assert_eq!(
            check(
                &s,
                "POST",
                &[("origin", "http://localhost:8080")],
                "localhost:8080"
            ),
            Csrf::SameOrigin
        );
        for o in [
            "https://evil.test",
            "https://shop.example.com.evil.test",
            "https://shop.example.com:8443",
            "http://localhost:9000",
            "null",
            "https://user@shop.example.com",
        ] {
            let host = if o.contains("localhost") {
                "localhost:8080"
            } else {
                h
            };
            assert!(
                matches!(check(&s, "POST", &[("origin", o)], host), Csrf::Denied(_)),
                "{o}"
            );
        }
        // Several Origin lines are no browser's.
        assert!(matches!(
            check(
                &s,
                "POST",
                &[
                    ("origin", "https://shop.example.com"),
                    ("origin", "https://evil.test")
                ],
                h
            ),
            Csrf::Denied(_)
        ));
        // Referer stands in for a missing Origin, as in Envoy.
        assert_eq!(
            check(
                &s,
                "POST",
                &[("referer", "https://shop.example.com/cart?x=1")],
                h
            ),
            Csrf::SameOrigin
        );
        assert!(matches!(
            check(
                &s,
                "POST",
                &[("referer", "https://evil.test/shop.example.com")],
                h
            ),
            Csrf::Denied(_)
        ));
        // No browser header at all: a non-browser client.
        assert_eq!(check(&s, "POST", &[], h), Csrf::NoOrigin);
        let strict = spec(&[], true);
        assert!(matches!(check(&strict, "POST", &[], h), Csrf::Denied(_)));
        assert_eq!(
            check(
                &strict,
                "POST",
                &[("origin", "https://shop.example.com")],
                h
            ),
            Csrf::SameOrigin
        );
    }
}
