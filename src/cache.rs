//! A route's HTTP cache (`routes[].cache`): nginx's `proxy_cache`, Envoy's
//! cache filter, by the rules of RFC 9111 for a shared cache.
//!
//! What is kept: answers to `GET` that HTTP lets a shared cache keep (a
//! cacheable status, no `no-store`, `private` or `no-cache`, no
//! `Set-Cookie`, not `Vary: *`), fresh for their `s-maxage`, `max-age`,
//! `Expires`, or the route's `default_ttl`, and whole bodies of at most
//! `max_object_bytes`. The body is recorded as it streams to the client that
//! asked (nothing is held back), and stored when it ends.
//!
//! What answers: a fresh entry whose variant matches (the cluster the
//! request goes to, the route's `key_headers`, the answer's `Vary`). A
//! stale one with a validator is revalidated (`If-None-Match` /
//! `If-Modified-Since` upstream; a 304 refreshes it); within
//! `stale_if_error` of its expiry it answers when the upstream fails. A
//! client's own conditional request is answered 304 from a fresh entry.
//! Concurrent misses on one key wait (at most `lock_timeout`) for the
//! first one's answer (nginx's `proxy_cache_lock`).
//!
//! Memory is bounded by `max_bytes`: entries are evicted by CLOCK (a
//! second chance for one used since the hand last passed). Time is a
//! parameter: `now` is the clock's nanoseconds, `wall` the system time
//! `Expires` and `Date` compare with.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use prometheus::IntCounter;
use serde::Serialize;

use crate::clock::NANOS_PER_SEC;

/// A route's `cache` settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheSpec {
    /// Memory for entries (bodies, heads, keys).
    pub max_bytes: u64,
    /// Largest body kept; a larger answer streams through, not kept.
    pub max_object_bytes: u64,
    /// Freshness of a cacheable answer that names none.
    pub default_ttl: Option<Duration>,
    /// How long past its expiry an entry answers when the upstream fails.
    pub stale_if_error: Duration,
    /// How long past its expiry an entry answers while another request
    /// revalidates it.
    pub stale_while_revalidate: Duration,
    /// Request headers whose values are part of the key (lower case).
    pub key_headers: Vec<String>,
    /// How long a miss waits for another request's answer on the same key
    /// (zero: no waiting).
    pub lock_timeout: Duration,
    /// The client's `Cache-Control` / `Pragma` are not read.
    pub ignore_client_cache_control: bool,
    /// Within stale_while_revalidate the revalidating request is answered
    /// from the entry too; its upstream request runs in the background.
    pub background_update: bool,
}

/// How a request fared with the cache: the `x-sift-cache` header, the
/// access log, `sift_cache_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A fresh entry answered.
    Hit,
    /// No entry: the upstream answered.
    Miss,
    /// A stale entry, and the upstream sent a new answer.
    Expired,
    /// A stale entry the upstream confirmed (304): it answered.
    Revalidated,
    /// A stale entry answered because the upstream failed.
    Stale,
    /// The request is not one the cache answers (method, body,
    /// `Authorization`, `Range`, `no-store`).
    Bypass,
    /// A stale entry answered while another request revalidates it
    /// (`stale_while_revalidate`).
    Updating,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Hit,
        Status::Miss,
        Status::Expired,
        Status::Revalidated,
        Status::Stale,
        Status::Bypass,
        Status::Updating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Expired => "expired",
            Status::Revalidated => "revalidated",
            Status::Stale => "stale",
            Status::Bypass => "bypass",
            Status::Updating => "updating",
        }
    }

    /// The `x-sift-cache` value (nginx's `$upstream_cache_status` words).
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Expired => "EXPIRED",
            Status::Revalidated => "REVALIDATED",
            Status::Stale => "STALE",
            Status::Bypass => "BYPASS",
            Status::Updating => "UPDATING",
        })
    }
}

/// Why an answer was not stored (`sift_cache_stores_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Stored,
    NotStorable,
    TooLarge,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Stored, Store::NotStorable, Store::TooLarge];
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Stored => "stored",
            Store::NotStorable => "not_storable",
            Store::TooLarge => "too_large",
        }
    }
}

/// A route cache's counters.
pub struct CacheMetrics {
    pub requests: [IntCounter; 7],
    pub stores: [IntCounter; 3],
    pub evictions: IntCounter,
    /// Background updates: revalidated (304), replaced, failed.
    pub refreshes: [IntCounter; 3],
}

impl CacheMetrics {
    pub fn new(m: &crate::metrics::Metrics, route: &str) -> Self {
        CacheMetrics {
            requests: Status::ALL.map(|s| m.cache_requests.with_label_values(&[route, s.as_str()])),
            stores: Store::ALL.map(|s| m.cache_stores.with_label_values(&[route, s.as_str()])),
            evictions: m.cache_evictions.with_label_values(&[route]),
            refreshes: ["revalidated", "replaced", "failed"]
                .map(|r| m.cache_refreshes.with_label_values(&[route, r])),
        }
    }

    pub fn count(&self, s: Status) {
        self.requests[s as usize].inc();
    }

    fn store(&self, s: Store) {
        self.stores[s as usize].inc();
    }
}

/// One stored answer.
pub struct Entry {
    id: u64,
    /// The cluster it came from (part of its key).
    cluster: Arc<str>,
    /// The values of the route's `key_headers` in the request that stored it.
    keyed: Vec<Option<String>>,
    /// The answer's `Vary` names and the storing request's values of them.
    vary: Vec<(HeaderName, Option<String>)>,
    pub status: StatusCode,
    /// The upstream's head as sift would forward it (hop-by-hop and
    /// `x-sift-*` removed), without `Age`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored (clock nanoseconds).
    stored_at: u64,
    /// Its age when stored, seconds (the upstream's `Age`).
    initial_age: u64,
    /// Fresh until then (clock nanoseconds).
    fresh_until: u64,
    /// `must-revalidate` / `proxy-revalidate` / `s-maxage`: never served
    /// stale.
    must_revalidate: bool,
    /// The answer's own `stale-while-revalidate` and `stale-if-error`
    /// (RFC 5861), seconds.
    own_stale: StaleWindows,
    size: u64,
    /// Used since the CLOCK hand last passed.
    referenced: AtomicBool,
}

impl Entry {
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// Seconds old at `now` (RFC 9111 §4.2.3, the upstream's delay left out).
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.stored_at) / NANOS_PER_SEC
    }

    /// Within `window` (or the answer's own, if longer) past its expiry,
    /// and allowed to be served stale at all.
    fn usable_stale(&self, now: u64, window: Duration, own: Option<u64>) -> bool {
        let window = own.map_or(window, |s| window.max(Duration::from_secs(s)));
        !self.must_revalidate && now < self.fresh_until.saturating_add(window.as_nanos() as u64)
    }

    fn usable_on_error(&self, now: u64, spec: &CacheSpec) -> bool {
        self.usable_stale(now, spec.stale_if_error, self.own_stale.if_error)
    }

    fn usable_while_revalidating(&self, now: u64, spec: &CacheSpec) -> bool {
        self.usable_stale(
            now,
            spec.stale_while_revalidate,
            self.own_stale.while_revalidate,
        )
    }

    fn validators(&self) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
        (
            self.headers.get(header::ETAG),
            self.headers.get(header::LAST_MODIFIED),
        )
    }

    fn has_validator(&self) -> bool {
        let (e, l) = self.validators();
        e.is_some() || l.is_some()
    }

    fn same_variant(&self, other: &Entry) -> bool {
        self.cluster == other.cluster && self.keyed == other.keyed && self.vary == other.vary
    }

    fn matches(&self, cluster: &str, keyed: &[Option<String>], req: &HeaderMap) -> bool {
        *self.cluster == *cluster
            && self.keyed == keyed
            && self.vary.iter().all(|(n, v)| joined(req, n) == *v)
    }
}

/// A header's lines joined by `, ` (absent: `None`).
fn joined(h: &HeaderMap, name: impl http::header::AsHeaderName + Copy) -> Option<String> {
    let mut out: Option<String> = None;
    for v in h.get_all(name) {
        let s = String::from_utf8_lossy(v.as_bytes());
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s.trim());
            }
            None => out = Some(s.trim().to_string()),
        }
    }
    out
}

/// An answer's own `stale-while-revalidate` and `stale-if-error`
/// (RFC 5861), seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StaleWindows {
    pub while_revalidate: Option<u64>,
    pub if_error: Option<u64>,
}

/// The directives of `Cache-Control` that matter here.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale: StaleWindows,
}

impl Directives {
    /// Every `Cache-Control` line of `h`. A malformed number counts as 0
    /// (RFC 9111 §1.2.2: a cache treats an invalid delta as stale).
    pub fn of(h: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for v in h.get_all(header::CACHE_CONTROL) {
            let Ok(s) = v.to_str() else {
                d.no_store = true;
                continue;
            };
            for part in s.split(',') {
                let part = part.trim();
                let (k, arg) = match part.split_once('=') {
                    Some((k, a)) => (k.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
                match k.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "max-age" => d.max_age = Some(d.max_age.map_or(secs(), |m| m.min(secs()))),
                    "s-maxage" => {
                        d.s_maxage = Some(d.s_maxage.map_or(secs(), |m| m.min(secs())));
                    }
                    "stale-while-revalidate" => d.stale.while_revalidate = Some(secs()),
                    "stale-if-error" => d.stale.if_error = Some(secs()),
                    _ => {}
                }
            }
        }
        d
    }
}

/// HTTP's statuses a cache may keep on a heuristic (RFC 9110 §15.1): the
/// ones `default_ttl` applies to.
fn heuristic(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How long an answer is fresh for, and whether it may be stored at all.
/// `Err` says why not.
pub fn freshness(
    status: StatusCode,
    h: &HeaderMap,
    default_ttl: Option<Duration>,
    wall: SystemTime,
) -> Result<(Duration, bool), &'static str> {
    let explicit_ok = heuristic(status) || matches!(status.as_u16(), 302 | 307);
    if !explicit_ok {
        return Err("status");
    }
    let d = Directives::of(h);
    if d.no_store || d.private || d.no_cache {
        return Err("cache-control");
    }
    if h.contains_key(header::SET_COOKIE) {
        return Err("set-cookie");
    }
    if h.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    }) {
        return Err("vary");
    }
    if h.contains_key(header::CONTENT_RANGE) {
        return Err("content-range");
    }
    let must_revalidate = d.must_revalidate || d.s_maxage.is_some();
    let lifetime = if let Some(s) = d.s_maxage.or(d.max_age) {
        Duration::from_secs(s)
    } else if let Some(exp) = h.get(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        let exp = exp
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let date = h
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(wall);
        exp.and_then(|e| e.duration_since(date).ok())
            .unwrap_or(Duration::ZERO)
    } else if let (Some(t), true) = (default_ttl, heuristic(status)) {
        t
    } else {
        return Err("no-freshness");
    };
    Ok((lifetime, must_revalidate))
}

/// A copy of `h` whose values live in one buffer of their own. Values
/// parsed by hyper are slices of its connection's read buffer: an entry
/// that kept them would keep those buffers (kilobytes each) alive for as
/// long as it lives. Measured (bench/cache-memory.sh): 3.1 × the counted
/// bytes of resident memory with shared values.
fn compact(h: &HeaderMap) -> HeaderMap {
    let total: usize = h.values().map(HeaderValue::len).sum();
    let mut buf = BytesMut::with_capacity(total);
    for v in h.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    let mut out = HeaderMap::with_capacity(h.len());
    let mut at = 0;
    for (k, v) in h {
        let end = at + v.len();
        let mut value =
            HeaderValue::from_maybe_shared(buf.slice(at..end)).unwrap_or_else(|_| v.clone());
        value.set_sensitive(v.is_sensitive());
        out.append(k.clone(), value);
        at = end;
    }
    out
}

/// The upstream's `Age`, seconds.
fn age_header(h: &HeaderMap) -> u64 {
    h.get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A request's conditional headers, answered from an entry.
#[derive(Default, Clone)]
pub struct Conditional {
    if_none_match: Option<String>,
    if_modified_since: Option<SystemTime>,
    /// `Range` (one header line), and `If-Range`.
    range: Option<String>,
    if_range: Option<String>,
}

/// What a `Range` asks of an entry's body (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// The whole body (no range, a range sift does not serve from the
    /// cache, or If-Range no longer matching): a 200.
    Whole,
    /// Bytes `start..=end`: a 206.
    Part(usize, usize),
    /// A range past the end: a 416.
    Unsatisfiable,
}

impl Conditional {
    pub fn of(h: &HeaderMap) -> Self {
        let one = |n: &HeaderName| {
            let mut all = h.get_all(n).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => v.to_str().ok().map(str::to_owned),
                _ => None,
            }
        };
        Conditional {
            if_none_match: joined(h, &header::IF_NONE_MATCH),
            if_modified_since: h
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok()),
            range: one(&header::RANGE),
            if_range: one(&header::IF_RANGE),
        }
    }

    /// The part of `e`'s body the request's `Range` asks for. One byte
    /// range of a 200 answer is served (`bytes=a-b`, `a-`, `-n`); several
    /// ranges, other units or a malformed value get the whole body, which
    /// RFC 9110 §14.2 allows. An `If-Range` that does not match the entry
    /// (a strong ETag compared strongly, or its exact Last-Modified) also
    /// gets the whole body.
    fn ranged(&self, e: &Entry) -> Ranged {
        let Some(range) = self.range.as_deref() else {
            return Ranged::Whole;
        };
        if e.status != StatusCode::OK {
            return Ranged::Whole;
        }
        if let Some(cond) = self.if_range.as_deref().map(str::trim) {
            let (etag, lm) = e.validators();
            let same = if cond.starts_with('"') {
                etag.and_then(|t| t.to_str().ok())
                    .is_some_and(|t| t.trim() == cond)
            } else if cond.starts_with("W/") {
                false
            } else {
                match (
                    httpdate::parse_http_date(cond),
                    lm.and_then(|v| v.to_str().ok()),
                ) {
                    (Ok(at), Some(lm)) => httpdate::parse_http_date(lm).is_ok_and(|lm| lm == at),
                    _ => false,
                }
            };
            if !same {
                return Ranged::Whole;
            }
        }
        let Some((unit, spec)) = range.trim().split_once('=') else {
            return Ranged::Whole;
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
            return Ranged::Whole;
        }
        let Some((a, b)) = spec.trim().split_once('-') else {
            return Ranged::Whole;
        };
        let num = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let len = e.body.len() as u64;
        let (start, end) = match (num(a), num(b), a.trim().is_empty(), b.trim().is_empty()) {
            (Some(a), Some(b), _, _) if a <= b => (a, b.min(len.saturating_sub(1))),
            (Some(a), None, _, true) => (a, len.saturating_sub(1)),
            (None, Some(n), true, _) => {
                if n == 0 || len == 0 {
                    return Ranged::Unsatisfiable;
                }
                (len.saturating_sub(n), len - 1)
            }
            _ => return Ranged::Whole,
        };
        if start >= len {
            return Ranged::Unsatisfiable;
        }
        Ranged::Part(start as usize, end as usize)
    }

    /// Would the entry be answered 304 (RFC 9110 §13.2.2: If-None-Match
    /// first, weak comparison; If-Modified-Since only without it)?
    fn not_modified(&self, e: &Entry) -> bool {
        if e.status != StatusCode::OK {
            return false;
        }
        if let Some(inm) = &self.if_none_match {
            let Some(etag) = e.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            let etag = weak(etag);
            return inm.split(',').any(|t| t.trim() == "*" || weak(t) == etag);
        }
        match (self.if_modified_since, e.headers.get(header::LAST_MODIFIED)) {
            (Some(since), Some(lm)) => lm
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|lm| lm <= since),
            _ => false,
        }
    }
}

/// The headers a 304 repeats (RFC 9110 §15.4.5).
const NOT_MODIFIED_KEEPS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// The answer an entry makes to a request (`head`: a HEAD request).
pub fn respond(
    e: &Entry,
    head: bool,
    cond: &Conditional,
    now: u64,
) -> http::Response<crate::body::Body> {
    let mut r = http::Response::new(crate::body::empty());
    if cond.not_modified(e) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let h = r.headers_mut();
        for n in NOT_MODIFIED_KEEPS.iter().chain([&header::LAST_MODIFIED]) {
            for v in e.headers.get_all(n) {
                h.append(n.clone(), v.clone());
            }
        }
    } else {
        let ranged = if head { Ranged::Whole } else { cond.ranged(e) };
        let len = e.body.len();
        match ranged {
            Ranged::Unsatisfiable => {
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            }
            Ranged::Part(start, end) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                *r.headers_mut() = e.headers.clone();
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
                *r.body_mut() = crate::body::full(e.body.slice(start..=end));
            }
            Ranged::Whole => {
                *r.status_mut() = e.status;
                *r.headers_mut() = e.headers.clone();
                // A 204 has no Content-Length (RFC 9110 §8.6).
                if e.status != StatusCode::NO_CONTENT {
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
                // What a cached 200 serves, it says (as nginx does).
                if e.status == StatusCode::OK && !e.headers.contains_key(header::ACCEPT_RANGES) {
                    r.headers_mut()
                        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                }
                if !head && !e.body.is_empty() {
                    *r.body_mut() = crate::body::full(e.body.clone());
                }
            }
        }
    }
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age(now)));
    r
}

/// Where entries are found: the request's host and path with its query.
type UriKey = Arc<str>;

struct Inner {
    map: HashMap<UriKey, Vec<Arc<Entry>>>,
    /// The CLOCK's ring: entries in the order stored (ids of removed ones
    /// are skipped when the hand reaches them).
    ring: VecDeque<(UriKey, u64)>,
    bytes: u64,
    entries: usize,
    next_id: u64,
    /// Misses being fetched: their key, and a receiver that wakes when the
    /// fetch ends (its sender dropped).
    pending: HashMap<String, tokio::sync::watch::Receiver<()>>,
}

/// A route's cache.
pub struct Cache {
    pub spec: CacheSpec,
    inner: Mutex<Inner>,
    pub metrics: CacheMetrics,
}

/// What a request is, as far as the cache goes.
pub struct Request<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub cluster: &'a str,
    /// The request has no body and is not an upgrade.
    pub plain: bool,
}

/// What the cache does with a request.
pub enum Plan {
    /// Not the cache's: forwarded as is. An unsafe method's answer (other
    /// than an error) removes the entries of its URI (RFC 9111 §4.4).
    Bypass { invalidate: Option<UriKey> },
    /// A fresh entry answers (`Hit`), or a stale one while another
    /// request revalidates it (`Updating`).
    Hit(Arc<Entry>, Conditional, Status),
    /// Upstream; what comes back may be stored.
    Fetch(Box<Fetch>),
}

/// A request that goes upstream with what the cache knows.
pub struct Fetch {
    uri: UriKey,
    cluster: Arc<str>,
    keyed: Vec<Option<String>>,
    /// The request's headers, for the answer's `Vary`.
    request_headers: HeaderMap,
    /// GET: the answer may be stored (a HEAD's has no body).
    pub store: bool,
    /// An entry past its freshness (or one the client asked to check).
    pub stale: Option<Arc<Entry>>,
    pub cond: Conditional,
    /// The request carries the stale entry's validators.
    pub revalidating: bool,
    leader: Option<Leader>,
}

/// The first miss on a key: others wait until it is dropped.
pub struct Leader {
    cache: Arc<Cache>,
    key: String,
    rx: tokio::sync::watch::Receiver<()>,
    _tx: tokio::sync::watch::Sender<()>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut g = self.cache.lock();
        if g.pending
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.rx))
        {
            g.pending.remove(&self.key);
        }
        // `_tx` drops after this: the waiters wake.
    }
}

/// The request's wish about stored answers.
enum ClientWish {
    Any,
    /// `no-cache`, `max-age=0`, `Pragma: no-cache`: check with the upstream.
    Revalidate,
    /// `no-store`: neither served from nor stored in the cache.
    NoStore,
}

fn client_wish(h: &HeaderMap) -> ClientWish {
    let d = Directives::of(h);
    if d.no_store {
        return ClientWish::NoStore;
    }
    let pragma = !h.contains_key(header::CACHE_CONTROL)
        && h.get_all(header::PRAGMA).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
        });
    if d.no_cache || d.max_age == Some(0) || pragma {
        ClientWish::Revalidate
    } else {
        ClientWish::Any
    }
}

/// Fixed cost counted per entry beside its bytes: the entry, its key,
/// map and ring slots, allocator headers. With [`PER_HEADER`], set from
/// bench/cache-memory.sh (resident memory grown per entry against the
/// count: 2,001 entries of 4 KiB bodies and 7 headers).
const ENTRY_OVERHEAD: u64 = 1024;

/// Cost counted per stored header beside its name and value bytes (the
/// header map's slot and index).
const PER_HEADER: u64 = 112;

impl Cache {
    pub fn new(spec: CacheSpec, metrics: CacheMetrics) -> Arc<Self> {
        Arc::new(Cache {
            spec,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                ring: VecDeque::new(),
                bytes: 0,
                entries: 0,
                next_id: 0,
                pending: HashMap::new(),
            }),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves plain data: use it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, u64) {
        let g = self.lock();
        (g.entries, g.bytes)
    }

    /// Decide what to do with a request; a miss may wait for another's
    /// fetch of the same key.
    pub async fn plan(self: &Arc<Self>, req: &Request<'_>, now: impl Fn() -> u64) -> Plan {
        let uri: UriKey = Arc::from(format!("{}\u{0}{}", req.host, req.path_and_query));
        let (get, head) = (req.method == Method::GET, req.method == Method::HEAD);
        if !get && !head {
            let safe = matches!(*req.method, Method::OPTIONS | Method::TRACE);
            return Plan::Bypass {
                invalidate: (!safe).then_some(uri),
            };
        }
        let h = req.headers;
        // A Range request is answered from a fresh entry (206); otherwise
        // it goes upstream as sent, and its partial answer is not kept.
        let ranged = h.contains_key(header::RANGE) || h.contains_key(header::IF_RANGE);
        if !req.plain || h.contains_key(header::AUTHORIZATION) || (ranged && !get) {
            return Plan::Bypass { invalidate: None };
        }
        let wish = if self.spec.ignore_client_cache_control {
            ClientWish::Any
        } else {
            client_wish(h)
        };
        if let ClientWish::NoStore = wish {
            return Plan::Bypass { invalidate: None };
        }
        let keyed: Vec<Option<String>> = self
            .spec
            .key_headers
            .iter()
            .map(|n| joined(h, n.as_str()))
            .collect();
        let cond = Conditional::of(h);
        let mut waited = false;
        loop {
            let t = now();
            let found = self.find(&uri, req.cluster, &keyed, h, t);
            if let (Some(e), ClientWish::Any) = (&found, &wish)
                && e.is_fresh(t)
            {
                e.referenced.store(true, Ordering::Relaxed);
                return Plan::Hit(e.clone(), cond, Status::Hit);
            }
            if ranged {
                return Plan::Bypass { invalidate: None };
            }
            let check = matches!(wish, ClientWish::Revalidate);
            let mut fetch = Fetch {
                uri: uri.clone(),
                cluster: Arc::from(req.cluster),
                keyed: keyed.clone(),
                request_headers: h.clone(),
                store: get,
                stale: found,
                cond: cond.clone(),
                revalidating: false,
                leader: None,
            };
            // A client that asks for a check goes upstream itself.
            if check || self.spec.lock_timeout.is_zero() || waited {
                return Plan::Fetch(Box::new(fetch));
            }
            // A miss or a stale entry: the first request fetches, the
            // others wait for it, or, within stale_while_revalidate, are
            // answered by the stale entry meanwhile.
            let key = format!("{uri}\u{0}{}\u{0}{keyed:?}", req.cluster);
            let rx = {
                let mut g = self.lock();
                match g.pending.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(());
                        g.pending.insert(key.clone(), rx.clone());
                        drop(g);
                        fetch.leader = Some(Leader {
                            cache: self.clone(),
                            key,
                            rx,
                            _tx: tx,
                        });
                        return Plan::Fetch(Box::new(fetch));
                    }
                }
            };
            if let Some(e) = fetch
                .stale
                .take_if(|e| e.usable_while_revalidating(t, &self.spec))
            {
                e.referenced.store(true, Ordering::Relaxed);
                return Plan::Hit(e, cond, Status::Updating);
            }
            let mut rx = rx;
            let _ = tokio::time::timeout(self.spec.lock_timeout, rx.changed()).await;
            waited = true;
        }
    }

    /// The entry of this variant, if any; one that can no longer serve
    /// (stale past `stale_if_error`, with no validator) is removed.
    fn find(
        &self,
        uri: &UriKey,
        cluster: &str,
        keyed: &[Option<String>],
        req: &HeaderMap,
        now: u64,
    ) -> Option<Arc<Entry>> {
        let mut g = self.lock();
        let list = g.map.get(uri)?;
        let i = list.iter().position(|e| e.matches(cluster, keyed, req))?;
        let e = list[i].clone();
        if !e.is_fresh(now)
            && !e.has_validator()
            && !e.usable_on_error(now, &self.spec)
            && !e.usable_while_revalidating(now, &self.spec)
        {
            g.remove_at(uri, i);
            return None;
        }
        Some(e)
    }

    /// Remove every entry of a URI (an unsafe method's answer).
    pub fn invalidate(&self, uri: &UriKey) {
        let mut g = self.lock();
        if let Some(list) = g.map.remove(uri) {
            g.entries -= list.len();
            g.bytes -= list.iter().map(|e| e.size).sum::<u64>();
        }
    }

    /// Remove the entries whose path starts with `prefix` (every entry
    /// without one); the number removed.
    pub fn purge(&self, prefix: Option<&str>) -> usize {
        let mut g = self.lock();
        let doomed: Vec<UriKey> = g
            .map
            .keys()
            .filter(|k| {
                prefix.is_none_or(|p| {
                    k.split_once('\u{0}')
                        .is_some_and(|(_, path)| path.starts_with(p))
                })
            })
            .cloned()
            .collect();
        let mut n = 0;
        for k in doomed {
            if let Some(list) = g.map.remove(&k) {
                n += list.len();
                g.entries -= list.len();
                g.bytes -= list.iter().map(|e| e.size).sum::<u64>();
            }
        }
        let Inner { map, ring, .. } = &mut *g;
        ring.retain(|(k, _)| map.contains_key(k));
        n
    }

    fn insert(&self, e: Entry, uri: UriKey) {
        let e = Arc::new(e);
        let mut g = self.lock();
        let list = g.map.entry(uri.clone()).or_default();
        let replaced = list
            .iter()
            .position(|x| x.same_variant(&e))
            .map(|i| list.swap_remove(i));
        list.push(e.clone());
        if let Some(old) = replaced {
            g.bytes -= old.size;
        } else {
            g.entries += 1;
        }
        g.bytes += e.size;
        g.ring.push_back((uri, e.id));
        let mut passes = g.ring.len() * 2 + 1;
        while g.bytes > self.spec.max_bytes && passes > 0 {
            passes -= 1;
            let Some((k, id)) = g.ring.pop_front() else {
                break;
            };
            let Some(i) = g
                .map
                .get(&k)
                .and_then(|l| l.iter().position(|x| x.id == id))
            else {
                continue;
            };
            let victim = &g.map[&k][i];
            if victim.id != e.id && victim.referenced.swap(false, Ordering::Relaxed) {
                g.ring.push_back((k, id));
                continue;
            }
            g.remove_at(&k, i);
            self.metrics.evictions.inc();
        }
        if g.ring.len() > 2 * g.entries + 64 {
            let Inner { map, ring, .. } = &mut *g;
            ring.retain(|(k, id)| map.get(k).is_some_and(|l| l.iter().any(|x| x.id == *id)));
        }
    }

    fn next_id(&self) -> u64 {
        let mut g = self.lock();
        g.next_id += 1;
        g.next_id
    }

    /// An upstream 304 to a revalidation: the entry with the 304's headers
    /// (RFC 9111 §4.3.4) and fresh again; `None` if it may no longer be
    /// stored, then it is removed.
    pub fn refresh(
        &self,
        f: &Fetch,
        old: &Entry,
        not_modified: &HeaderMap,
        now: u64,
        wall: SystemTime,
    ) -> Option<Arc<Entry>> {
        let mut headers = old.headers.clone();
        for name in not_modified.keys() {
            if matches!(
                *name,
                header::CONTENT_LENGTH | header::CONTENT_ENCODING | header::TRANSFER_ENCODING
            ) || name.as_str().starts_with("content-range")
            {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let initial_age = age_header(&headers);
        headers.remove(header::AGE);
        let headers = compact(&headers);
        match freshness(old.status, &headers, self.spec.default_ttl, wall) {
            Ok((lifetime, must_revalidate)) => {
                let own_stale = Directives::of(&headers).stale;
                let e = Entry {
                    id: self.next_id(),
                    cluster: old.cluster.clone(),
                    keyed: old.keyed.clone(),
                    vary: old.vary.clone(),
                    status: old.status,
                    size: old.size,
                    headers,
                    body: old.body.clone(),
                    stored_at: now,
                    initial_age,
                    fresh_until: fresh_until(now, lifetime, initial_age),
                    must_revalidate,
                    own_stale,
                    referenced: AtomicBool::new(true),
                };
                self.insert(e, f.uri.clone());
                let g = self.lock();
                g.map
                    .get(&f.uri)
                    .and_then(|l| l.iter().find(|x| x.same_variant(old)).cloned())
            }
            Err(_) => {
                self.invalidate_variant(&f.uri, old);
                None
            }
        }
    }

    fn invalidate_variant(&self, uri: &UriKey, old: &Entry) {
        let mut g = self.lock();
        if let Some(i) = g
            .map
            .get(uri)
            .and_then(|l| l.iter().position(|x| x.same_variant(old)))
        {
            g.remove_at(uri, i);
        }
    }
}

fn fresh_until(now: u64, lifetime: Duration, initial_age: u64) -> u64 {
    let left = lifetime.as_secs().saturating_sub(initial_age);
    now.saturating_add(left.saturating_mul(NANOS_PER_SEC))
        .saturating_add(u64::from(lifetime.subsec_nanos()))
}

impl Inner {
    fn remove_at(&mut self, uri: &UriKey, i: usize) {
        let Some(list) = self.map.get_mut(uri) else {
            return;
        };
        let e = list.swap_remove(i);
        self.entries -= 1;
        self.bytes -= e.size;
        if list.is_empty() {
            self.map.remove(uri);
        }
    }
}

impl Fetch {
    /// The stale entry's validators on the upstream request, in place of
    /// the client's (whose conditions sift answers from the entry).
    pub fn revalidate(&mut self, h: &mut HeaderMap) {
        let Some(e) = &self.stale else { return };
        let (etag, lm) = e.validators();
        if etag.is_none() && lm.is_none() {
            return;
        }
        h.remove(header::IF_NONE_MATCH);
        h.remove(header::IF_MODIFIED_SINCE);
        if let Some(v) = etag {
            h.insert(header::IF_NONE_MATCH, v.clone());
        }
        if let Some(v) = lm {
            h.insert(header::IF_MODIFIED_SINCE, v.clone());
        }
        self.revalidating = true;
    }

    /// The stale entry, if it may answer for a failed upstream.
    pub fn stale_for_error(&self, cache: &Cache, now: u64) -> Option<&Arc<Entry>> {
        self.stale
            .as_ref()
            .filter(|e| e.usable_on_error(now, &cache.spec))
    }

    /// Answer from the stale entry now and revalidate in the background:
    /// `background_update`, this request leads the revalidation, and the
    /// entry is within stale_while_revalidate.
    pub fn in_background(&self, cache: &Cache, now: u64) -> bool {
        cache.spec.background_update
            && self.leader.is_some()
            && self
                .stale
                .as_ref()
                .is_some_and(|e| e.usable_while_revalidating(now, &cache.spec))
    }

    /// The upstream's answer head: a body recorder if it may be stored
    /// (counted in `sift_cache_stores_total` otherwise).
    pub fn recorder(
        mut self,
        cache: &Arc<Cache>,
        status: StatusCode,
        headers: &HeaderMap,
        now: u64,
        wall: SystemTime,
    ) -> Option<Recording> {
        if !self.store {
            return None;
        }
        // A new answer that cannot be kept: the expired entry it replaces
        // goes too (it is no longer what the upstream says), unless the
        // upstream failed.
        let not_kept = |why: Store| {
            cache.metrics.store(why);
            if let (Some(old), true) = (&self.stale, status.as_u16() < 500) {
                cache.invalidate_variant(&self.uri, old);
            }
            None
        };
        let (lifetime, must_revalidate) =
            match freshness(status, headers, cache.spec.default_ttl, wall) {
                Ok(f) => f,
                Err(_) => return not_kept(Store::NotStorable),
            };
        let initial_age = age_header(headers);
        if lifetime.as_secs() <= initial_age && lifetime.subsec_nanos() == 0 {
            return not_kept(Store::NotStorable);
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cache.spec.max_object_bytes) {
            return not_kept(Store::TooLarge);
        }
        let vary: Vec<(HeaderName, Option<String>)> = headers
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                    .collect::<Vec<_>>()
            })
            .map(|n| {
                let v = joined(&self.request_headers, &n);
                (n, v)
            })
            .collect();
        let mut stored = compact(headers);
        stored.remove(header::AGE);
        let head_size: u64 = stored
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len()) as u64 + PER_HEADER)
            .sum::<u64>()
            + self.uri.len() as u64
            + ENTRY_OVERHEAD;
        Some(Recording {
            cache: cache.clone(),
            uri: self.uri.clone(),
            draft: Some(Draft {
                cluster: self.cluster.clone(),
                keyed: std::mem::take(&mut self.keyed),
                vary,
                status,
                headers: stored,
                stored_at: now,
                initial_age,
                fresh_until: fresh_until(now, lifetime, initial_age),
                must_revalidate,
                own_stale: Directives::of(headers).stale,
                head_size,
            }),
            // The declared length, when there is one: no regrowth.
            buf: BytesMut::with_capacity(declared.unwrap_or(0) as usize),
            _leader: self.leader.take(),
        })
    }
}

struct Draft {
    cluster: Arc<str>,
    keyed: Vec<Option<String>>,
    vary: Vec<(HeaderName, Option<String>)>,
    status: StatusCode,
    headers: HeaderMap,
    stored_at: u64,
    initial_age: u64,
    fresh_until: u64,
    must_revalidate: bool,
    own_stale: StaleWindows,
    head_size: u64,
}

/// An answer being recorded as it streams to the client.
pub struct Recording {
    cache: Arc<Cache>,
    uri: UriKey,
    draft: Option<Draft>,
    buf: BytesMut,
    /// Waiters on this key wake when the recording ends (stored or not).
    _leader: Option<Leader>,
}

impl Recording {
    fn data(&mut self, b: &Bytes) {
        if self.draft.is_none() {
            return;
        }
        if (self.buf.len() + b.len()) as u64 > self.cache.spec.max_object_bytes {
            self.draft = None;
            self.buf = BytesMut::new();
            self.cache.metrics.store(Store::TooLarge);
            return;
        }
        self.buf.extend_from_slice(b);
    }

    /// Trailers are not kept: such an answer is not stored.
    fn trailers(&mut self) {
        if self.draft.take().is_some() {
            self.cache.metrics.store(Store::NotStorable);
        }
    }

    /// The answer has no body (a 204, a redirect, a `Content-Length: 0`):
    /// stored at once, as hyper never polls a body that has ended.
    pub fn store_empty(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(d) = self.draft.take() else { return };
        let buf = std::mem::take(&mut self.buf);
        // Kept at its length: a buffer that grew keeps spare capacity,
        // which max_bytes would not see.
        let body = if buf.capacity() > buf.len() + buf.len() / 8 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        let e = Entry {
            id: self.cache.next_id(),
            cluster: d.cluster,
            keyed: d.keyed,
            vary: d.vary,
            status: d.status,
            headers: d.headers,
            size: d.head_size + body.len() as u64,
            body,
            stored_at: d.stored_at,
            initial_age: d.initial_age,
            fresh_until: d.fresh_until,
            must_revalidate: d.must_revalidate,
            own_stale: d.own_stale,
            referenced: AtomicBool::new(false),
        };
        if e.size > self.cache.spec.max_bytes {
            self.cache.metrics.store(Store::TooLarge);
            return;
        }
        self.cache.insert(e, self.uri.clone());
        self.cache.metrics.store(Store::Stored);
    }
}

pin_project_lite::pin_project! {
    /// The answer's body, recorded into the cache as it passes.
    pub struct Recorded<B> {
        #[pin]
        inner: B,
        rec: Recording,
    }
}

impl<B> Recorded<B> {
    pub fn new(inner: B, rec: Recording) -> Self {
        Recorded { inner, rec }
    }
}

impl<B> http_body::Body for Recorded<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let r = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.rec.data(d);
                } else if f.is_trailers() {
                    this.rec.trailers();
                }
                // hyper stops polling a body that says it has ended: the
                // last frame is where it ends.
                if this.inner.is_end_stream() {
                    this.rec.end();
                }
            }
            // A failed body is not stored (the draft goes with the body).
            Some(Err(_)) => this.rec.draft = None,
            None => this.rec.end(),
        }
        std::task::Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn wall() -> SystemTime {
        httpdate::parse_http_date("Mon, 07 Dec 2026 10:00:00 GMT").unwrap()
    }

    #[test]
    fn freshness_follows_rfc_9111_order() {
        let ok = StatusCode::OK;
        let f = |p: &[(&str, &str)], ttl| freshness(ok, &h(p), ttl, wall());
        assert_eq!(
            f(&[("cache-control", "max-age=60, s-maxage=5")], None),
            Ok((Duration::from_secs(5), true))
        );
        assert_eq!(
            f(&[("cache-control", "public, max-age=60")], None),
            Ok((Duration::from_secs(60), false))
        );
        assert_eq!(
            f(
                &[
                    ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
                    ("expires", "Mon, 07 Dec 2026 10:02:00 GMT")
                ],
                None
            ),
            Ok((Duration::from_secs(120), false))
        );
        // An invalid Expires is already expired.
        assert_eq!(f(&[("expires", "0")], None), Ok((Duration::ZERO, false)));
        assert_eq!(f(&[], None), Err("no-freshness"));
        assert_eq!(
            f(&[], Some(Duration::from_secs(9))),
            Ok((Duration::from_secs(9), false))
        );
        for (k, v, why) in [
            ("cache-control", "no-store, max-age=60", "cache-control"),
            ("cache-control", "private, max-age=60", "cache-control"),
            ("cache-control", "no-cache, max-age=60", "cache-control"),
            ("set-cookie", "a=b", "set-cookie"),
            ("vary", "accept, *", "vary"),
        ] {
            let mut m = h(&[("cache-control", "max-age=60")]);
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
            assert_eq!(freshness(ok, &m, None, wall()), Err(why), "{k}: {v}");
        }
        // A 500 is never kept; a 302 only with explicit freshness.
        let cc = h(&[("cache-control", "max-age=60")]);
        assert_eq!(
            freshness(StatusCode::INTERNAL_SERVER_ERROR, &cc, None, wall()),
            Err("status")
        );
        assert!(freshness(StatusCode::FOUND, &cc, None, wall()).is_ok());
        assert_eq!(
            freshness(
                StatusCode::FOUND,
                &h(&[]),
                Some(Duration::from_secs(9)),
                wall()
            ),
            Err("no-freshness")
        );
    }

    #[test]
    fn compacted_headers_are_the_same_headers() {
        let mut m = h(&[
            ("cache-control", "max-age=5"),
            ("set-cookie", "a=1"),
            ("x-custom", "v"),
            ("set-cookie", "b=2"),
            ("etag", "\"e\""),
        ]);
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        m.insert("x-secret", secret);
        let c = compact(&m);
        assert_eq!(c, m);
        assert!(c["x-secret"].is_sensitive());
        let cookies: Vec<_> = c.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn client_directives() {
        assert!(matches!(
            client_wish(&h(&[("cache-control", "no-store")])),
            ClientWish::NoStore
        ));
        assert!(matches!(
            client_wish(&h(&[("cache-control", "max-age=0")])),
            ClientWish::Revalidate
        ));
        assert!(matches!(
            client_wish(&h(&[("pragma", "no-cache")])),
            ClientWish::Revalidate
        ));
        let d = Directives::of(&h(&[(
            "cache-control",
            "max-age=5, stale-while-revalidate=30, stale-if-error=600",
        )]));
        assert_eq!(
            d.stale,
            StaleWindows {
                while_revalidate: Some(30),
                if_error: Some(600)
            }
        );
        // Pragma is read only without Cache-Control.
        assert!(matches!(
            client_wish(&h(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=5")
            ])),
            ClientWish::Any
        ));
    }

    fn entry(headers: HeaderMap) -> Entry {
        Entry {
            id: 1,
            cluster: Arc::from("c"),
            keyed: vec![],
            vary: vec![],
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            stored_at: 0,
            initial_age: 3,
            fresh_until: 10 * NANOS_PER_SEC,
            must_revalidate: false,
            own_stale: StaleWindows::default(),
            size: 100,
            referenced: AtomicBool::new(false),
        }
    }

    #[test]
    fn conditional_requests_are_answered_from_the_entry() {
        let e = entry(h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 07 Dec 2026 09:00:00 GMT"),
            ("content-type", "text/plain"),
        ]));
        let c = |p: &[(&str, &str)]| Conditional::of(&h(p));
        assert!(c(&[("if-none-match", "\"v0\", W/\"v1\"")]).not_modified(&e));
        assert!(c(&[("if-none-match", "*")]).not_modified(&e));
        assert!(!c(&[("if-none-match", "\"v0\"")]).not_modified(&e));
        // If-Modified-Since is ignored beside If-None-Match.
        assert!(
            !c(&[
                ("if-none-match", "\"v0\""),
                ("if-modified-since", "Mon, 07 Dec 2026 09:30:00 GMT")
            ])
            .not_modified(&e)
        );
        assert!(c(&[("if-modified-since", "Mon, 07 Dec 2026 09:30:00 GMT")]).not_modified(&e));
        assert!(!c(&[("if-modified-since", "Mon, 07 Dec 2026 08:30:00 GMT")]).not_modified(&e));
        let r = respond(
            &e,
            false,
            &c(&[("if-none-match", "\"v1\"")]),
            2 * NANOS_PER_SEC,
        );
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert_eq!(r.headers()["age"], "5");
        assert!(r.headers().get("content-type").is_none());
        let r = respond(&e, true, &Conditional::default(), 0);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "5");
        assert_eq!(r.headers()["age"], "3");
        let mut empty = entry(HeaderMap::new());
        empty.status = StatusCode::NO_CONTENT;
        empty.body = Bytes::new();
        let r = respond(&empty, false, &Conditional::default(), 0);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(r.headers().get("content-length").is_none());
    }

    fn spec(max_bytes: u64) -> CacheSpec {
        CacheSpec {
            max_bytes,
            max_object_bytes: max_bytes,
            default_ttl: None,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            key_headers: vec![],
            lock_timeout: Duration::ZERO,
            ignore_client_cache_control: false,
            background_update: false,
        }
    }

    fn store(c: &Arc<Cache>, path: &str, body: &'static [u8], now: u64) {
        let mut rh = HeaderMap::new();
        rh.insert(header::HOST, HeaderValue::from_static("h"));
        let f = Fetch {
            uri: Arc::from(format!("h\u{0}{path}")),
            cluster: Arc::from("c"),
            keyed: vec![],
            request_headers: rh,
            store: true,
            stale: None,
            cond: Conditional::default(),
            revalidating: false,
            leader: None,
        };
        let mut rec = f
            .recorder(
                c,
                StatusCode::OK,
                &h(&[("cache-control", "max-age=10")]),
                now,
                wall(),
            )
            .expect("storable");
        rec.data(&Bytes::from_static(body));
        rec.end();
    }

    fn lookup(c: &Arc<Cache>, path: &str, now: u64) -> Option<Arc<Entry>> {
        c.find(
            &Arc::from(format!("h\u{0}{path}")),
            "c",
            &[],
            &HeaderMap::new(),
            now,
        )
    }

    #[test]
    fn clock_eviction_keeps_what_was_used_and_bytes_bounded() {
        let m = crate::metrics::Metrics::new();
        // Each entry: 1024 overhead + 1000 body + one header (23 bytes +
        // 112) + the key (4) = 2163 bytes; room for 3.
        let c = Cache::new(spec(6600), CacheMetrics::new(&m, "r"));
        let body: &'static [u8] = &[b'x'; 1000];
        store(&c, "/a", body, 0);
        store(&c, "/b", body, 0);
        store(&c, "/c", body, 0);
        assert_eq!(c.usage().0, 3);
        // /a is used: the hand passes it over and takes /b.
        lookup(&c, "/a", 1)
            .unwrap()
            .referenced
            .store(true, Ordering::Relaxed);
        store(&c, "/d", body, 0);
        let (n, bytes) = c.usage();
        assert_eq!(n, 3);
        assert_eq!(bytes, 3 * 2163);
        assert!(lookup(&c, "/a", 1).is_some());
        assert!(lookup(&c, "/b", 1).is_none());
        assert!(lookup(&c, "/d", 1).is_some());
        assert_eq!(c.metrics.evictions.get(), 1);
        // Fresh for max-age=10 only.
        let e = lookup(&c, "/d", 1).unwrap();
        assert!(e.is_fresh(9 * NANOS_PER_SEC) && !e.is_fresh(10 * NANOS_PER_SEC));
        // Stale with no validator and no stale_if_error: dropped on lookup.
        assert!(lookup(&c, "/d", 11 * NANOS_PER_SEC).is_none());
        assert_eq!(c.usage().0, 2);
        assert_eq!(c.purge(Some("/a")), 1);
        assert_eq!(c.purge(None), 1);
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn an_answer_larger_than_max_object_bytes_is_not_kept() {
        let m = crate::metrics::Metrics::new();
        let mut s = spec(1 << 20);
        s.max_object_bytes = 4;
        let c = Cache::new(s, CacheMetrics::new(&m, "r"));
        store(&c, "/big", b"hello", 0);
        assert!(lookup(&c, "/big", 1).is_none());
        assert_eq!(c.metrics.stores[Store::TooLarge as usize].get(), 1);
    }
}
