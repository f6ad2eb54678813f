//! CORS per route, with Envoy's meaning (its `cors` policy) and the Fetch
//! standard's rules:
//!
//! - a **preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) from an allowed origin is answered by
//!   sift (204) before admission and never reaches the app;
//! - any other request from an allowed origin is handled as usual, and its
//!   answer (the app's, or sift's own: a 429 or 503 too, so a browser app
//!   can read why) gets `Access-Control-Allow-Origin` and the rest;
//! - a request from another origin is left as it is (a preflight goes on
//!   to the app, as in Envoy), so the browser enforces the policy.

use http::header::{self, HeaderMap, HeaderValue};
use serde::Serialize;

/// One entry of `allow_origins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginMatch {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com` (compared case-insensitively).
    Exact(String),
    /// `https://*.example.com[:port]`: any subdomain, at any depth.
    Subdomains {
        scheme: String,
        /// `.example.com`
        suffix: String,
        port: Option<u16>,
    },
}

impl OriginMatch {
    /// Parse one `allow_origins` entry.
    pub fn parse(s: &str) -> Result<OriginMatch, String> {
        if s == "*" {
            return Ok(OriginMatch::Any);
        }
        let bad = || {
            format!(
                "{s:?} is not an origin (\"https://app.example.com\", \"https://*.example.com\", \"http://localhost:3000\" or \"*\")"
            )
        };
        let lower = s.to_ascii_lowercase();
        if lower == "null" {
            return Ok(OriginMatch::Exact(lower));
        }
        let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad());
        }
        let (host, port) = host_port(rest).ok_or_else(bad)?;
        let host_ok = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        };
        if let Some(suffix) = host.strip_prefix("*.") {
            if !host_ok(suffix) || suffix.contains('*') {
                return Err(bad());
            }
            return Ok(OriginMatch::Subdomains {
                scheme: scheme.to_string(),
                suffix: format!(".{suffix}"),
                port,
            });
        }
        if !host_ok(host) {
            return Err(bad());
        }
        Ok(OriginMatch::Exact(lower))
    }

    pub(crate) fn matches(&self, origin: &str) -> bool {
        match self {
            OriginMatch::Any => true,
            OriginMatch::Exact(e) => e.eq_ignore_ascii_case(origin),
            OriginMatch::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let origin = origin.to_ascii_lowercase();
                let Some((s, rest)) = origin.split_once("://") else {
                    return false;
                };
                let Some((host, p)) = host_port(rest) else {
                    return false;
                };
                // An origin is scheme://host[:port]: a path, userinfo or
                // other bytes (`https://evil.test/.example.org`,
                // `https://x@a.example.org`) make it no subdomain.
                if !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return false;
                }
                s == scheme
                    && p == *port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// `host[:port]` (`[v6]` literals too); `None` for a bad port.
fn host_port(rest: &str) -> Option<(&str, Option<u16>)> {
    let split = match rest.strip_prefix('[') {
        Some(v6) => {
            let end = v6.find(']')? + 1;
            match &rest[end + 1..] {
                "" => None,
                p => Some((&rest[..=end], p.strip_prefix(':')?)),
            }
        }
        None => rest.rsplit_once(':'),
    };
    match split {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((rest, None)),
    }
}

/// A route's CORS policy, with its header values ready.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CorsSpec {
    pub allow_origins: Vec<OriginMatch>,
    /// `Access-Control-Allow-Methods` of a preflight answer.
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers`; `None`: `["*"]`, the request's
    /// `Access-Control-Request-Headers` are allowed (echoed).
    pub allow_headers: Option<String>,
    /// `Access-Control-Expose-Headers` (empty: none).
    pub expose_headers: String,
    /// `Access-Control-Max-Age`, seconds.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

/// What the policy says of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin`: nothing to do.
    None,
    /// An `Origin` the policy does not allow (or several): nothing to do.
    Denied,
    /// A preflight from an allowed origin: answer it.
    Preflight(HeaderValue),
    /// Another request from an allowed origin: decorate the answer.
    Actual(HeaderValue),
}

impl CorsSpec {
    /// Classify a request by its method and headers.
    pub fn check(&self, method: &http::Method, headers: &HeaderMap) -> Cors {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Cors::None;
        };
        // One Origin line: a request with several is not a browser's.
        if headers.get_all(header::ORIGIN).iter().nth(1).is_some() {
            return Cors::Denied;
        }
        let Ok(o) = origin.to_str() else {
            return Cors::Denied;
        };
        if !self.allow_origins.iter().any(|m| m.matches(o)) {
            return Cors::Denied;
        }
        if method == http::Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            Cors::Preflight(origin.clone())
        } else {
            Cors::Actual(origin.clone())
        }
    }

    fn allow_origin(&self, h: &mut HeaderMap, origin: &HeaderValue) {
        let any = !self.allow_credentials && self.allow_origins.contains(&OriginMatch::Any);
        if any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            // The answer depends on the Origin: caches must key on it.
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else {
            // The policy allows no credentials: the app's own
            // `Access-Control-Allow-Credentials: true` would grant them
            // with the origin echoed, and makes an invalid answer with `*`.
            h.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
    }

    /// The headers of a preflight answer for `origin`, given the
    /// preflight's own headers.
    pub fn preflight(&self, origin: &HeaderValue, req: &HeaderMap) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.allow_origin(&mut h, origin);
        if let Ok(v) = HeaderValue::from_str(&self.allow_methods) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        match &self.allow_headers {
            Some(list) if !list.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(list) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
                }
            }
            Some(_) => {}
            None => {
                if let Some(v) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
            }
        }
        if let Some(s) = self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(s));
        }
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "access-control-request-method, access-control-request-headers",
            ),
        );
        h
    }

    /// Decorate the answer to an allowed origin's request (the app's
    /// answer or sift's own). Replaces the app's own CORS headers of the
    /// same names: the route's policy is the one in force.
    pub fn actual(&self, h: &mut HeaderMap, origin: &HeaderValue) {
        self.allow_origin(h, origin);
        if !self.expose_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.expose_headers)
        {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(origins: &[&str], credentials: bool) -> CorsSpec {
        CorsSpec {
            allow_origins: origins
                .iter()
                .map(|o| OriginMatch::parse(o).unwrap())
                .collect(),
            allow_methods: "GET, POST, PUT".into(),
            allow_headers: Some("content-type, authorization".into()),
            expose_headers: "x-request-id".into(),
            max_age: Some(600),
            allow_credentials: credentials,
        }
    }

    fn req(method: &str, origin: Option<&str>, acrm: bool) -> (http::Method, HeaderMap) {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if acrm {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("PUT"),
            );
        }
        (method.parse().unwrap(), h)
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let s = spec(
            &[
                "https://app.example.com",
                "https://*.example.org",
                "http://localhost:3000",
            ],
            false,
        );
        let allowed = |o: &str| {
            let (m, h) = req("GET", Some(o), false);
            s.check(&m, &h) != Cors::Denied
        };
        assert!(allowed("https://app.example.com"));
        assert!(allowed("HTTPS://APP.example.com"));
        assert!(!allowed("http://app.example.com"), "scheme");
        assert!(!allowed("https://app.example.com:8443"), "port");
        assert!(!allowed("https://app.example.com.evil.net"));
        assert!(!allowed("https://evilapp.example.com"));
        assert!(allowed("https://a.example.org"));
        assert!(allowed("https://a.b.example.org"));
        assert!(
            !allowed("https://example.org"),
            "the parent is not a subdomain"
        );
        assert!(!allowed("https://a.example.org:444"));
        assert!(!allowed("https://aexample.org"));
        assert!(!allowed("https://evil.test/.example.org"));
        assert!(!allowed("https://x@a.example.org"));
        assert!(!allowed("https://a b.example.org"));
        assert!(allowed("http://localhost:3000"));
        assert!(!allowed("http://localhost:3001"));
        assert!(!allowed("null"));
        let (m, h) = req("GET", None, false);
        assert_eq!(s.check(&m, &h), Cors::None, "no Origin");
        let mut h2 = h.clone();
        h2.append(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        h2.append(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        assert_eq!(s.check(&m, &h2), Cors::Denied, "two Origin lines");
    }

    #[test]
    fn bad_origin_entries_are_refused() {
        for bad in [
            "app.example.com",
            "https://",
            "https://a b",
            "https://*.*.x",
            "https://a:port",
            "://a",
        ] {
            assert!(OriginMatch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(OriginMatch::parse("*"), Ok(OriginMatch::Any));
        assert!(OriginMatch::parse("http://[::1]:8080").is_ok());
    }

    #[test]
    fn the_apps_credentials_do_not_outlive_a_policy_without_them() {
        // Found by the http_head fuzz target: an app answering with its own
        // `Access-Control-Allow-Credentials: true` on a route whose policy
        // allows any origin got `*` with credentials (an answer the Fetch
        // standard refuses), and on a route with listed origins, the
        // echoed origin with credentials the policy does not allow.
        let app = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("https://app.example.com"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h
        };
        let origin = HeaderValue::from_static("https://app.example.com");
        for (s, acao) in [
            (spec(&["*"], false), "*"),
            (
                spec(&["https://app.example.com"], false),
                "https://app.example.com",
            ),
        ] {
            let mut out = app();
            s.actual(&mut out, &origin);
            assert_eq!(out["access-control-allow-origin"], acao);
            assert!(out.get("access-control-allow-credentials").is_none());
        }
        // With credentials allowed, the policy's own "true" stays.
        let mut out = app();
        spec(&["https://app.example.com"], true).actual(&mut out, &origin);
        assert_eq!(out["access-control-allow-credentials"], "true");
        assert_eq!(
            out.get_all("access-control-allow-credentials")
                .iter()
                .count(),
            1
        );
    }

    #[test]
    fn preflight_and_actual_headers() {
        let s = spec(&["https://app.example.com"], true);
        let (m, h) = req("OPTIONS", Some("https://app.example.com"), true);
        let Cors::Preflight(o) = s.check(&m, &h) else {
            panic!("a preflight")
        };
        let p = s.preflight(&o, &h);
        assert_eq!(p["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(p["access-control-allow-credentials"], "true");
        assert_eq!(p["access-control-allow-methods"], "GET, POST, PUT");
        assert_eq!(
            p["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(p["access-control-max-age"], "600");
        let vary: Vec<_> = p.get_all("vary").iter().collect();
        assert_eq!(vary.len(), 2);
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        let (m, h) = req("OPTIONS", Some("https://app.example.com"), false);
        assert!(matches!(s.check(&m, &h), Cors::Actual(_)));
        let mut out = HeaderMap::new();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        s.actual(
            &mut out,
            &HeaderValue::from_static("https://app.example.com"),
        );
        assert_eq!(
            out["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(out["access-control-expose-headers"], "x-request-id");
        assert_eq!(out["vary"], "origin");
        // Any origin without credentials: "*", no Vary.
        let any = spec(&["*"], false);
        let mut out = HeaderMap::new();
        any.actual(&mut out, &HeaderValue::from_static("https://x.test"));
        assert_eq!(out["access-control-allow-origin"], "*");
        assert!(out.get("vary").is_none());
        assert!(out.get("access-control-allow-credentials").is_none());
        // allow_headers ["*"]: the requested headers are echoed.
        let mut echo = spec(&["*"], false);
        echo.allow_headers = None;
        let (_, mut h) = req("OPTIONS", Some("https://x.test"), true);
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-custom, content-type"),
        );
        let p = echo.preflight(&HeaderValue::from_static("https://x.test"), &h);
        assert_eq!(p["access-control-allow-headers"], "x-custom, content-type");
    }
}
