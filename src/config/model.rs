//! The validated configuration. Built only by [`super::build`]; once built it
//! cannot be invalid (every name resolves, every value is in range).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::file::{
    DownstreamProtocol, FilterKind, FilterMode, LbPolicy, LogFormat, OnOverload, OnOversize,
    OnUnreadable, UpstreamProtocol, XffMode,
};
use super::units::{Bytes, Dur};
use crate::policy::outlier::OutlierSpec;
use crate::policy::ratelimit::RateLimitSpec;
use crate::policy::retry::{BudgetSpec, RetrySpec};

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Data-plane worker threads; `None` = one per CPU.
    pub workers: Option<usize>,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub reload: ReloadConfig,
    pub shutdown: ShutdownConfig,
    pub listeners: Vec<ListenerSpec>,
    pub routes: Vec<RouteSpec>,
    pub clusters: Vec<ClusterSpec>,
    pub filters: Vec<FilterSpec>,
    pub filter_pool: FilterPoolSpec,
    pub tracing: Option<crate::trace::TracingSpec>,
    pub redis: Option<crate::policy::redis::RedisSpec>,
    /// The top-level `dns`.
    pub dns: crate::dns::ResolverSpec,
    /// The top-level `local_replies`.
    pub local_replies: LocalReplies,
    /// The top-level `rate_limit_service`.
    pub rate_limit_service: Option<crate::policy::rls::RlsSpec>,
    /// The top-level `upgrade`.
    pub upgrade: Option<UpgradeConfig>,
    /// The top-level `overload`.
    pub overload: OverloadSpec,
}

/// `routes[].request_buffering`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestBufferingSpec {
    pub in_memory: Bytes,
    pub spool_dir: std::path::PathBuf,
}

/// The top-level `overload`, resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverloadSpec {
    /// Held request body bytes at most (`auto` resolved at load); None:
    /// no limit.
    pub max_buffered_bytes: Option<u64>,
    /// Open client connections across every listener at most.
    pub max_connections: Option<usize>,
    /// Request body bytes in spool files at most.
    pub max_spooled_bytes: Option<u64>,
}

/// A route's validated `basic_auth`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BasicAuthSpec {
    #[serde(serialize_with = "ser_users")]
    pub users: crate::basic_auth::Users,
    /// The htpasswd file, when the users come from one.
    pub users_file: Option<String>,
    /// `Basic realm="…", charset="UTF-8"`.
    #[serde(serialize_with = "ser_value")]
    pub challenge: HeaderValue,
    #[serde(serialize_with = "ser_opt_name")]
    pub forward_username_header: Option<HeaderName>,
    pub strip_authorization: bool,
}

/// Users are shown by count, never their hashes (`GET /config`).
fn ser_users<S: Serializer>(u: &crate::basic_auth::Users, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} user(s) [redacted]", u.len()))
}

fn ser_value<S: Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
}

fn ser_opt_name<S: Serializer>(v: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_str(n.as_str()),
        None => s.serialize_none(),
    }
}

/// Where a running sift hands its listening sockets to a successor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpgradeConfig {
    pub socket: std::path::PathBuf,
}

/// How sift's own answers look.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LocalReplies {
    pub format: super::file::ReplyFormat,
    pub mappers: Vec<ReplyMapper>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplyMapper {
    /// Error kinds (empty: any).
    pub errors: Vec<String>,
    /// Statuses (empty: any).
    pub statuses: Vec<u16>,
    pub status: Option<u16>,
    /// The body template (from `body`, or `body_file`'s text).
    pub body: Option<String>,
    #[serde(serialize_with = "ser_opt_value")]
    pub content_type: Option<HeaderValue>,
}

fn ser_opt_value<S: Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&String::from_utf8_lossy(v.as_bytes())),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterPoolSpec {
    /// None = one per CPU.
    pub threads: Option<usize>,
    pub queue: usize,
}

/// `max_decompressed_bytes` when a filter does not set it (raised to the
/// filter's `max_inspect_bytes` when that is larger).
pub const DEFAULT_MAX_DECOMPRESSED: u64 = 16 << 20;

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// Compiled into the binary.
    Builtin,
    File(std::path::PathBuf),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterSpec {
    pub name: String,
    pub kind: FilterKind,
    pub model: ModelSource,
    pub runtime: Option<std::path::PathBuf>,
    /// Probability threshold override.
    pub threshold: Option<f32>,
    /// Where learning persists (None: learning is not supported by the kind).
    pub learned_model: Option<std::path::PathBuf>,
    /// Kind cilog: the labelled-log folder a learn retrains on (None: the
    /// filter does not learn at run time).
    pub learn_data: Option<std::path::PathBuf>,
    pub usage: FilterUsage,
    pub max_decompressed_bytes: u64,
    pub json_pointers: Option<Vec<String>>,
    pub form_fields: Option<Vec<String>>,
    /// Query-string parameters classified with the body (resolved: the
    /// configured list, else `form_fields`, else none).
    pub query_fields: Vec<String>,
    pub block_status: u16,
    pub block_message: String,
    pub header_prefix: String,
    /// Where `on_oversize: spool` keeps the part of a body past
    /// `max_inspect_bytes`.
    pub spool_dir: std::path::PathBuf,
}

/// Suffixes of the verdict headers a kind of filter writes
/// (`{header_prefix}-{suffix}`).
pub fn verdict_header_suffixes(kind: FilterKind) -> &'static [&'static str] {
    match kind {
        FilterKind::Spam | FilterKind::Onnx => &["score", "verdict"],
        FilterKind::Cilog => &["class", "confidence", "evidence-line"],
    }
}

impl FilterSpec {
    /// The request headers this filter writes for the upstream (block and
    /// annotate modes), lower case.
    pub fn verdict_header_names(&self) -> Vec<String> {
        verdict_header_suffixes(self.kind)
            .iter()
            .map(|s| format!("{}-{s}", self.header_prefix))
            .collect()
    }
}

/// How a route runs a filter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterUsage {
    pub mode: FilterMode,
    pub max_inspect_bytes: u64,
    pub on_oversize: OnOversize,
    pub on_overload: OnOverload,
    pub on_unreadable: OnUnreadable,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteFilterSpec {
    pub filter: String,
    pub usage: FilterUsage,
    pub rules: Vec<VerdictRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerdictRule {
    pub when: Vec<String>,
    /// The rule acts on a verdict whose score is at least this.
    pub min_score: f32,
    pub action: RuleAction,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Reject,
    Cluster(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
    /// Access-log lines to this file instead of stdout.
    pub access_log_path: Option<std::path::PathBuf>,
    /// nginx's combined format instead of `format`'s line.
    pub access_log_combined: bool,
    #[serde(serialize_with = "ser_arc_filter")]
    pub access_log_filter: Option<std::sync::Arc<AccessLogFilter>>,
}

fn ser_arc_filter<S: Serializer>(
    f: &Option<std::sync::Arc<AccessLogFilter>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    f.as_deref().serialize(s)
}

/// Which requests get an access-log line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccessLogFilter {
    /// Share of ordinary requests logged, in millionths.
    #[serde(rename = "sample", serialize_with = "ser_share")]
    pub per_million: u32,
    pub min_status: Option<u16>,
    pub slower_than: Option<Dur>,
    pub skip_paths: Vec<String>,
}

impl AccessLogFilter {
    /// Whether a request gets its line: never on a skipped path; always
    /// when its status or duration says so; else when drawn (`draw`
    /// uniform in 0..1_000_000).
    pub fn keeps(&self, path: &str, status: u16, elapsed: std::time::Duration, draw: u32) -> bool {
        if self.skip_paths.iter().any(|p| p == path) {
            return false;
        }
        self.min_status.is_some_and(|m| status >= m)
            || self.slower_than.is_some_and(|d| elapsed >= d.0)
            || in_share(self.per_million, draw)
    }
}

fn ser_share<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(f64::from(*p) / 1_000_000.0)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Peers whose writes (any method but GET and HEAD) are taken.
    pub write_from: Vec<Cidr>,
}

impl AdminConfig {
    /// Whether a request other than GET or HEAD from `peer` is taken.
    pub fn takes_writes_from(&self, peer: std::net::IpAddr) -> bool {
        self.write_from.iter().any(|c| c.contains(peer))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReloadConfig {
    pub watch: bool,
    pub interval: Dur,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShutdownConfig {
    pub delay: Dur,
    pub drain_timeout: Dur,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: DownstreamProtocol,
    pub serve: super::file::Serve,
    pub proxy_protocol: super::file::ProxyProtocolMode,
    /// Indices into [`Config::routes`], in match order.
    #[serde(skip)]
    pub route_indices: Vec<usize>,
    /// Route names, as configured (None = all).
    pub routes: Option<Vec<String>>,
    pub limits: Limits,
    pub x_forwarded_for: XffMode,
    /// Trusted proxies appending to X-Forwarded-For (client IP for rate limits).
    pub trusted_hops: u32,
    /// Trusted proxies by address (instead of trusted_hops).
    pub trusted_cidrs: Vec<Cidr>,
    pub rate_limits: Vec<RateLimitSpec>,
    pub tls: Option<crate::tls::ListenerTlsSpec>,
    pub escaped_slashes: super::file::EscapedSlashes,
    pub path_parameters: super::file::PathParameters,
    /// `serve: tcp`: where the connections go.
    pub tcp: Option<TcpProxySpec>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// HTTP/2 PINGs to clients.
    pub http2_keepalive: Http2Keepalive,
}

/// TCP keepalive of a socket; None keeps the OS's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TcpKeepalive {
    pub time: Option<Dur>,
    pub interval: Option<Dur>,
    pub probes: Option<u32>,
}

impl TcpKeepalive {
    /// Turn keepalive on for `s` with these settings.
    pub fn apply(&self, s: &tokio::net::TcpStream) -> std::io::Result<()> {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(t) = self.time {
            k = k.with_time(t.0);
        }
        if let Some(i) = self.interval {
            k = k.with_interval(i.0);
        }
        if let Some(n) = self.probes {
            k = k.with_retries(n);
        }
        socket2::SockRef::from(s).set_tcp_keepalive(&k)
    }
}

/// HTTP/2 PING keepalive of an upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Http2Keepalive {
    pub interval: Dur,
    pub timeout: Dur,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limits {
    pub max_header_bytes: Bytes,
    pub max_headers: usize,
    pub header_read_timeout: Dur,
    /// None: no limit (`0s`).
    pub request_body_timeout: Option<Dur>,
    /// None: no limit.
    pub request_timeout: Option<Dur>,
    /// None: no limit (`0s`).
    pub send_timeout: Option<Dur>,
    pub idle_timeout: Dur,
    pub max_connections: usize,
    pub max_connections_per_client: Option<u32>,
    pub max_concurrent_streams: u32,
    pub max_requests_per_connection: Option<u64>,
    pub max_connection_duration: Option<Dur>,
    pub drain_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: Bytes(64 * 1024),
            max_headers: 100,
            header_read_timeout: Dur::secs(10),
            request_body_timeout: Some(Dur::secs(60)),
            request_timeout: None,
            send_timeout: Some(Dur::secs(60)),
            idle_timeout: Dur::secs(75),
            max_connections: 10_000,
            max_connections_per_client: None,
            max_concurrent_streams: 100,
            max_requests_per_connection: None,
            max_connection_duration: None,
            drain_timeout: Dur::secs(5),
        }
    }
}

/// `routes[].grpc_timeout`: a gRPC call's `grpc-timeout` replaces the
/// route's timeout, capped by `max`, less `offset`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrpcTimeoutSpec {
    pub max: Option<Duration>,
    pub offset: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: MatchSpec,
    /// Clusters with weights; a single-cluster route has one entry of weight 1.
    pub backends: Vec<Backend>,
    /// Time to the upstream response head; None = the cluster's request_timeout.
    pub timeout: Option<Dur>,
    pub max_request_body: Bytes,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub cors: Option<crate::cors::CorsSpec>,
    pub csrf: Option<crate::csrf::CsrfSpec>,
    pub compression: Option<crate::compress::CompressionSpec>,
    pub jwt: Option<crate::jwt::RouteJwtSpec>,
    /// HTTP Basic authentication of the route.
    pub basic_auth: Option<BasicAuthSpec>,
    pub rate_limits: Vec<RateLimitSpec>,
    pub max_inflight: Option<usize>,
    /// A concurrency limit that follows the route's latency.
    pub adaptive_concurrency: Option<crate::policy::adaptive::AdaptiveSpec>,
    pub retries: Option<RetrySpec>,
    pub canary: Option<crate::canary::CanarySpec>,
    /// None: anyone; Some: only matching identities.
    pub allowed_identities: Option<Vec<IdentityMatch>>,
    /// Client address allow and deny lists.
    pub source_ips: Option<SourceIps>,
    pub filters: Vec<RouteFilterSpec>,
    /// Answer with this filter's verdict (no upstream; `backends` is empty).
    pub answer: Option<String>,
    /// Replaces the matched path prefix in the request sent upstream.
    pub rewrite_prefix: Option<String>,
    /// Replaces every match of a pattern in the path sent upstream.
    pub rewrite_regex: Option<RegexRewrite>,
    /// The Host sent upstream.
    pub rewrite_host: Option<HostRewrite>,
    /// Answer with a redirect (no upstream; `backends` is empty).
    pub redirect: Option<RedirectSpec>,
    /// Answer with a fixed response (no upstream; `backends` is empty).
    pub direct_response: Option<DirectResponseSpec>,
    /// Clusters that get a copy of a share of the requests.
    pub mirror: Vec<MirrorSpec>,
    /// The authorization service asked before forwarding.
    pub external_auth: Option<crate::external_auth::ExternalAuthSpec>,
    /// The rate limit service asked before forwarding.
    pub external_rate_limit: Option<crate::rls_client::ExternalRateLimitSpec>,
    /// gRPC-Web calls become gRPC upstream ([`crate::grpc_web`]).
    pub grpc_web: bool,
    /// What a ring_hash or maglev cluster hashes (empty: random endpoint).
    pub hash_policy: Vec<HashPolicy>,
    /// Delays and aborts injected before forwarding.
    pub fault: Option<FaultSpec>,
    /// The route's HTTP cache.
    pub cache: Option<crate::cache::CacheSpec>,
    /// Read the whole body before going upstream.
    pub request_buffering: Option<RequestBufferingSpec>,
    /// A gRPC call's `grpc-timeout` is its deadline.
    pub grpc_timeout: Option<GrpcTimeoutSpec>,
    /// Verdict header names of this route's filters that only sift may set:
    /// a client's are removed before the request goes upstream, whether or
    /// not a filter gives a verdict. `x-sift-*` names are left out (every
    /// client `x-sift-*` header is removed already).
    #[serde(skip)]
    pub verdict_headers: Vec<HeaderName>,
}

impl RouteSpec {
    /// Remove the client's headers named like this route's verdict headers.
    pub fn strip_verdict_headers(&self, headers: &mut http::HeaderMap) {
        for name in &self.verdict_headers {
            headers.remove(name);
        }
    }
}

/// One mirror of a route: copies of a share of its requests go to
/// `cluster`, whose answers are dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorSpec {
    pub cluster: String,
    /// The share mirrored, in millionths (100% = 1_000_000); shown in
    /// `/config` as the percent it was written as.
    #[serde(rename = "percent", serialize_with = "ser_per_million")]
    pub per_million: u32,
    /// Largest body copied; a longer one is not mirrored.
    #[serde(serialize_with = "ser_bytes")]
    pub max_body: u64,
    /// `-shadow` appended to the copy's host.
    pub host_suffix: bool,
}

impl MirrorSpec {
    /// Default `max_body` (as the retry buffer's).
    pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
    /// Largest `max_body` accepted.
    pub const MAX_MAX_BODY: u64 = 16 * 1024 * 1024;

    /// Whether a request whose id hashes to `h` is mirrored.
    pub fn sampled(&self, h: u64) -> bool {
        self.per_million >= 1_000_000 || (h % 1_000_000) < u64::from(self.per_million)
    }
}

/// A route's `source_ips`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceIps {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub address: crate::config::file::SourceAddress,
}

impl SourceIps {
    /// Whether `ip` may use the route: in no deny range, and in an allow
    /// range when there are any.
    pub fn admits(&self, ip: Option<std::net::IpAddr>) -> bool {
        match ip {
            Some(ip) => {
                !self.deny.iter().any(|c| c.contains(ip))
                    && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            }
            None => self.allow.is_empty(),
        }
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub net: std::net::IpAddr,
    pub prefix: u8,
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/{}", self.net, self.prefix))
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(v: &str) -> Result<Cidr, String> {
        use std::net::IpAddr;
        let (a, p) = match v.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (v, None),
        };
        let net: IpAddr = a
            .parse()
            .map_err(|_| format!("{v:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{v:?}: prefix length must be 0..={max}"))?,
        };
        let c = Cidr { net, prefix };
        if !c.contains(net) || c.masked() != net {
            return Err(format!(
                "{v:?} has bits set past its prefix (did you mean {}/{prefix}?)",
                c.masked()
            ));
        }
        Ok(c)
    }
}

impl Cidr {
    fn masked(&self) -> std::net::IpAddr {
        use std::net::IpAddr;
        match self.net {
            IpAddr::V4(a) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) is read as its IPv4 address.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::*;

    #[test]
    fn ranges_match_their_addresses_only() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "nope",
            "10.0.0.0/x",
            "::/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let s = SourceIps {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
            address: crate::config::file::SourceAddress::ClientIp,
        };
        assert!(s.admits(Some("10.1.0.1".parse().unwrap())));
        assert!(!s.admits(Some("10.9.0.1".parse().unwrap())));
        assert!(!s.admits(Some("192.0.2.1".parse().unwrap())));
        assert!(!s.admits(None));
    }
}

/// One entry of a route's `hash_policy`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HashPolicy {
    pub key: crate::canary::Sticky,
    /// When this entry gives a key, the entries after it are not read.
    pub terminal: bool,
    /// A `cookie` entry with `ttl`: make the cookie when it is missing.
    pub generate: Option<CookieGen>,
}

/// How a `hash_policy` cookie that the request lacks is made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CookieGen {
    /// Max-Age; zero: a session cookie.
    pub ttl: Dur,
    pub path: Option<String>,
}

/// A route's fault injection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultSpec {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultDelay {
    pub fixed: Dur,
    #[serde(rename = "percent", serialize_with = "ser_per_million")]
    pub per_million: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultAbort {
    pub status: u16,
    #[serde(rename = "percent", serialize_with = "ser_per_million")]
    pub per_million: u32,
}

/// Whether a request drawn at `r` (uniform in 0..1_000_000) falls in a
/// share of `per_million`.
pub fn in_share(per_million: u32, r: u32) -> bool {
    per_million >= 1_000_000 || r < per_million
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedirectSpec {
    /// `Some(true)`: https, `Some(false)`: http, `None`: the request's.
    pub https: Option<bool>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<RedirectPath>,
    pub code: u16,
    pub strip_query: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPath {
    /// The whole path.
    Full(String),
    /// The matched prefix.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirectResponseSpec {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// The path sent on for `path` when the route's path match `m` matched it
/// and `new_prefix` replaces the matched part (Envoy's prefix_rewrite,
/// made segment-safe): the rest of the path keeps its leading `/`, and a
/// trailing `/` of `new_prefix` is not doubled. `/api` → `/`: `/api/x` is
/// `/x`, `/api` is `/`. `/api/` → `/v2`: `/api/x` is `/v2/x`.
pub fn rewrite_prefix(m: &PathMatch, path: &str, new_prefix: &str) -> String {
    let (matched, slash) = match m {
        PathMatch::Exact(e) => (e.len().min(path.len()), false),
        PathMatch::Prefix(p) => (p.len().min(path.len()), p.ends_with('/')),
        // Refused at config load (a regex match has no matched prefix).
        PathMatch::Regex(_) => (0, false),
    };
    let rest = path.get(matched..).unwrap_or("");
    let base = new_prefix.trim_end_matches('/');
    let mut out = String::with_capacity(base.len() + rest.len() + 2);
    out.push_str(base);
    if slash {
        out.push('/');
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMatch {
    Exact(String),
    TrustDomain(String),
    /// (trust domain, namespace)
    Namespace(String, String),
    Prefix(String),
}

impl IdentityMatch {
    pub fn matches(&self, id: &crate::tls::Identity) -> bool {
        match self {
            IdentityMatch::Exact(e) => id.id == *e,
            IdentityMatch::TrustDomain(td) => id.trust_domain.as_deref() == Some(td.as_str()),
            IdentityMatch::Namespace(td, ns) => {
                id.trust_domain.as_deref() == Some(td.as_str())
                    && id.namespace.as_deref() == Some(ns.as_str())
            }
            IdentityMatch::Prefix(p) => id.id.starts_with(p.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backend {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MatchSpec {
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

/// `rewrite.regex`: every match of `re` in the path replaced by the
/// substitution (written with Envoy's `\N` capture references, kept here
/// in the `regex` crate's `${N}` form); equal when both sources are.
#[derive(Clone, Debug)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
    pub re: regex::Regex,
    pub expand: String,
}

impl PartialEq for RegexRewrite {
    fn eq(&self, o: &RegexRewrite) -> bool {
        self.pattern == o.pattern && self.substitution == o.substitution
    }
}

impl Serialize for RegexRewrite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RegexRewrite", 2)?;
        st.serialize_field("pattern", &self.pattern)?;
        st.serialize_field("substitution", &self.substitution)?;
        st.end()
    }
}

impl RegexRewrite {
    /// Compile `pattern` and translate `substitution` (`\N`: group N, `\\`:
    /// a backslash; any other character as written).
    pub fn new(pattern: &str, substitution: &str) -> Result<RegexRewrite, String> {
        let re = regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(n) => {
                    format!("{pattern:?}: the compiled pattern is over {n} bytes")
                }
                e => format!("{pattern:?} is not a regular expression: {e}"),
            })?;
        let mut expand = String::with_capacity(substitution.len());
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(d) if d.is_ascii_digit() => {
                        let n = d.to_digit(10).unwrap_or(0) as usize;
                        if n >= re.captures_len() {
                            return Err(format!(
                                "{substitution:?} names group \\{n}, but {pattern:?} has {} group(s)",
                                re.captures_len() - 1
                            ));
                        }
                        expand.push_str(&format!("${{{n}}}"));
                    }
                    Some('\\') => expand.push('\\'),
                    _ => {
                        return Err(format!(
                            "{substitution:?}: a backslash is followed by a group number (\\1) or another backslash"
                        ));
                    }
                },
                '$' => expand.push_str("$$"),
                c => expand.push(c),
            }
        }
        Ok(RegexRewrite {
            pattern: pattern.to_string(),
            substitution: substitution.to_string(),
            re,
            expand,
        })
    }

    /// The path with every match replaced.
    pub fn apply<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        self.re.replace_all(path, self.expand.as_str())
    }
}

/// `rewrite.host` / `rewrite.auto_host`: the Host sent upstream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRewrite {
    /// This value.
    Literal(#[serde(serialize_with = "ser_header_value")] http::HeaderValue),
    /// The chosen endpoint's host, with its port unless the scheme's default.
    Auto,
}

fn ser_header_value<S: Serializer>(v: &http::HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.to_str().unwrap_or_default())
}

/// A compiled regular expression that must match a whole value; equal
/// (for reload reuse) when its source is.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    pub re: regex::bytes::Regex,
}

/// Most bytes a compiled pattern may take (Envoy bounds RE2 program size
/// the same way): a config error past it, never a slow match.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        regex::bytes::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(|re| Pattern {
                source: source.to_string(),
                re,
            })
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(n) => {
                    format!("{source:?}: the compiled pattern is over {n} bytes")
                }
                e => format!("{source:?} is not a regular expression: {e}"),
            })
    }

    #[inline]
    pub fn is_match(&self, v: &[u8]) -> bool {
        self.re.is_match(v)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, o: &Pattern) -> bool {
        self.source == o.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub rule: QueryRule,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryRule {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
    Present(bool),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".into())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser_name")]
    pub name: HeaderName,
    pub rule: HeaderRule,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderRule {
    Exact(String),
    Prefix(String),
    Present(bool),
    Regex(Pattern),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
    /// `set` values with `%VARIABLES%` (request headers only).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_templates"
    )]
    pub set_templates: Vec<(HeaderName, HeaderTemplate)>,
    /// `add` values with `%VARIABLES%` (request headers only).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_templates"
    )]
    pub add_templates: Vec<(HeaderName, HeaderTemplate)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.set_templates.is_empty()
            && self.add_templates.is_empty()
    }

    /// Some value names `%VARIABLES%`.
    pub fn templated(&self) -> bool {
        !(self.set_templates.is_empty() && self.add_templates.is_empty())
    }

    /// Apply remove, then set, then add (templated values are left out:
    /// see [`apply_with`](Self::apply_with)).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// [`apply`](Self::apply), with the templates' values filled from
    /// `ctx` and from `headers` as they were before any change (`%REQ%`).
    /// A value that comes out empty or not a header value is left out (as
    /// Envoy does without `keep_empty_value`).
    pub fn apply_with(&self, headers: &mut http::HeaderMap, ctx: &TemplateCtx<'_>) {
        if self.set_templates.is_empty() && self.add_templates.is_empty() {
            return self.apply(headers);
        }
        let fill = |ts: &[(HeaderName, HeaderTemplate)], headers: &http::HeaderMap| {
            ts.iter()
                .filter_map(|(n, t)| Some((n.clone(), t.render(headers, ctx)?)))
                .collect::<Vec<_>>()
        };
        let set = fill(&self.set_templates, headers);
        let add = fill(&self.add_templates, headers);
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set.iter().cloned().chain(set) {
            headers.insert(name, value);
        }
        for (name, value) in self.add.iter().cloned().chain(add) {
            headers.append(name, value);
        }
    }
}

/// What a request header template can name.
pub struct TemplateCtx<'a> {
    /// The client address (trusted X-Forwarded-For hops, PROXY protocol).
    pub client_ip: &'a str,
    /// The TCP peer (after the PROXY protocol).
    pub peer: std::net::SocketAddr,
    pub identity: Option<&'a str>,
    pub protocol: http::Version,
    pub route: &'a str,
    pub cluster: &'a str,
    /// When the request arrived.
    pub start: std::time::SystemTime,
    /// Response headers: the endpoint that answered, and its status.
    pub upstream_host: &'a str,
    pub status: u16,
    /// Response headers: the time from the request's arrival to its answer's
    /// head.
    pub elapsed: std::time::Duration,
}

/// A header value with `%VARIABLE%`s (Envoy's header formatter names).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderTemplate {
    pub text: String,
    parts: Vec<TemplatePart>,
}

#[derive(Clone, Debug, PartialEq)]
enum TemplatePart {
    Lit(String),
    ClientIp,
    PeerIp,
    PeerAddr,
    PeerUriSan,
    Req(HeaderName),
    Protocol,
    Route,
    Cluster,
    Hostname,
    /// RFC 3339 with milliseconds; `%s`; `%s.%3f`; `%s%3f`.
    StartTime(u8),
    UpstreamHost,
    ResponseCode,
    /// Milliseconds from arrival to the answer's head.
    ResponseDuration,
}

/// The variables a request header template may use, for error messages.
pub const TEMPLATE_VARIABLES: &str = "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_DIRECT_REMOTE_ADDRESS, DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_PEER_URI_SAN, REQ(name) (request headers), PROTOCOL, ROUTE_NAME, UPSTREAM_CLUSTER, UPSTREAM_HOST, RESPONSE_CODE and RESPONSE_DURATION (response headers), HOSTNAME, START_TIME, START_TIME(%s), START_TIME(%s.%3f), START_TIME(%s%3f)";

impl HeaderTemplate {
    /// Parse a value: `None` when it has no variable (a literal value;
    /// `%%` is a `%`), else the template or what is wrong with it.
    /// `response`: a response header's value (`REQ` is not at hand there;
    /// `UPSTREAM_HOST` and `RESPONSE_CODE` are only there).
    pub fn parse(v: &str, response: bool) -> Result<Option<HeaderTemplate>, String> {
        if !v.contains('%') {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = v;
        let mut vars = 0;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            // The variable ends at the next '%' outside parentheses.
            let mut depth = 0usize;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth = depth.saturating_sub(1),
                        '%' if depth == 0 => return true,
                        _ => {}
                    }
                    false
                })
                .map(|(j, _)| j)
                .ok_or_else(|| {
                    format!("{v:?}: a '%' opens a variable that is not closed (write %% for a '%')")
                })?;
            let name = &rest[..end];
            rest = &rest[end + 1..];
            let part = match name {
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => TemplatePart::ClientIp,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => TemplatePart::PeerAddr,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => TemplatePart::PeerIp,
                "DOWNSTREAM_PEER_URI_SAN" => TemplatePart::PeerUriSan,
                "PROTOCOL" => TemplatePart::Protocol,
                "ROUTE_NAME" => TemplatePart::Route,
                "UPSTREAM_CLUSTER" => TemplatePart::Cluster,
                "HOSTNAME" => TemplatePart::Hostname,
                "START_TIME" => TemplatePart::StartTime(0),
                "START_TIME(%s)" => TemplatePart::StartTime(1),
                "START_TIME(%s.%3f)" => TemplatePart::StartTime(2),
                "START_TIME(%s%3f)" => TemplatePart::StartTime(3),
                "UPSTREAM_HOST" | "RESPONSE_CODE" | "RESPONSE_DURATION" if !response => {
                    return Err(format!(
                        "{v:?}: %{name}% is known only for response headers"
                    ));
                }
                "UPSTREAM_HOST" => TemplatePart::UpstreamHost,
                "RESPONSE_CODE" => TemplatePart::ResponseCode,
                "RESPONSE_DURATION" => TemplatePart::ResponseDuration,
                n if n.starts_with("REQ(") && n.ends_with(')') && response => {
                    return Err(format!(
                        "{v:?}: %{n}% reads the request's headers: only in request_headers"
                    ));
                }
                n if n.starts_with("REQ(") && n.ends_with(')') => {
                    let h = &n[4..n.len() - 1];
                    TemplatePart::Req(
                        HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("{v:?}: {h:?} is not a header name"))?,
                    )
                }
                n => {
                    return Err(format!(
                        "{v:?}: unknown variable %{n}% (known: {TEMPLATE_VARIABLES}; write %% for a '%')"
                    ));
                }
            };
            if !lit.is_empty() {
                parts.push(TemplatePart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            vars += 1;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(TemplatePart::Lit(lit));
        }
        if vars == 0 {
            // Only %% escapes: a literal value.
            return Ok(None);
        }
        Ok(Some(HeaderTemplate {
            text: v.to_string(),
            parts,
        }))
    }

    /// The value for one request; `None` when it comes out empty or is
    /// not a header value.
    pub fn render(&self, headers: &http::HeaderMap, ctx: &TemplateCtx<'_>) -> Option<HeaderValue> {
        let mut out: Vec<u8> = Vec::with_capacity(64);
        for p in &self.parts {
            match p {
                TemplatePart::Lit(s) => out.extend_from_slice(s.as_bytes()),
                TemplatePart::ClientIp => out.extend_from_slice(ctx.client_ip.as_bytes()),
                TemplatePart::PeerIp => out.extend_from_slice(ctx.peer.ip().to_string().as_bytes()),
                TemplatePart::PeerAddr => out.extend_from_slice(ctx.peer.to_string().as_bytes()),
                TemplatePart::PeerUriSan => {
                    out.extend_from_slice(ctx.identity.unwrap_or("").as_bytes())
                }
                TemplatePart::Req(h) => {
                    if let Some(v) = crate::field::joined(headers, h) {
                        out.extend_from_slice(&v);
                    }
                }
                TemplatePart::Protocol => out.extend_from_slice(
                    match ctx.protocol {
                        http::Version::HTTP_10 => "HTTP/1.0",
                        http::Version::HTTP_11 => "HTTP/1.1",
                        http::Version::HTTP_2 => "HTTP/2",
                        _ => "HTTP",
                    }
                    .as_bytes(),
                ),
                TemplatePart::Route => out.extend_from_slice(ctx.route.as_bytes()),
                TemplatePart::Cluster => out.extend_from_slice(ctx.cluster.as_bytes()),
                TemplatePart::Hostname => out.extend_from_slice(hostname().as_bytes()),
                TemplatePart::UpstreamHost => out.extend_from_slice(ctx.upstream_host.as_bytes()),
                TemplatePart::ResponseCode => {
                    out.extend_from_slice(ctx.status.to_string().as_bytes())
                }
                TemplatePart::ResponseDuration => {
                    out.extend_from_slice(ctx.elapsed.as_millis().to_string().as_bytes())
                }
                TemplatePart::StartTime(f) => {
                    let d = ctx
                        .start
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let (secs, ms) = (d.as_secs(), d.subsec_millis());
                    let t = match f {
                        1 => secs.to_string(),
                        2 => format!("{secs}.{ms:03}"),
                        3 => format!("{secs}{ms:03}"),
                        _ => rfc3339_ms(secs, ms),
                    };
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

/// This host's name (a pod's name in Kubernetes), read once.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    })
}

/// `2026-12-06T15:43:22.123Z` (UTC).
fn rfc3339_ms(secs: u64, ms: u32) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = crate::access_log::civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ser_templates<S: Serializer>(
    p: &[(HeaderName, HeaderTemplate)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(p.len()))?;
    for (k, v) in p {
        map.serialize_entry(k.as_str(), &v.text)?;
    }
    map.end()
}

#[cfg(test)]
mod template_tests {
    use super::*;

    fn ctx() -> TemplateCtx<'static> {
        TemplateCtx {
            client_ip: "203.0.113.7",
            peer: "10.0.0.9:41000".parse().unwrap(),
            identity: Some("spiffe://prod.example/ns/web/sa/frontend"),
            protocol: http::Version::HTTP_2,
            route: "api",
            cluster: "app",
            start: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_765_035_802_123),
            upstream_host: "10.0.0.7:8080",
            status: 503,
            elapsed: std::time::Duration::from_micros(12_345),
        }
    }

    fn render(t: &str, h: &http::HeaderMap) -> Option<String> {
        HeaderTemplate::parse(t, false)
            .unwrap()
            .unwrap()
            .render(h, &ctx())
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn variables_fill_in_and_literals_stay() {
        let mut h = http::HeaderMap::new();
        h.append("x-tenant", "a".parse().unwrap());
        h.append("x-tenant", "b".parse().unwrap());
        assert_eq!(
            render("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &h).unwrap(),
            "203.0.113.7"
        );
        assert_eq!(
            render("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", &h).unwrap(),
            "10.0.0.9:41000"
        );
        assert_eq!(
            render("t=%START_TIME(%s.%3f)%", &h).unwrap(),
            "t=1765035802.123"
        );
        assert_eq!(render("%START_TIME(%s%3f)%", &h).unwrap(), "1765035802123");
        assert_eq!(
            render("%START_TIME%", &h).unwrap(),
            "2025-12-06T15:43:22.123Z"
        );
        assert_eq!(
            render("%REQ(X-Tenant)%|%ROUTE_NAME%|%UPSTREAM_CLUSTER%", &h).unwrap(),
            "a,b|api|app"
        );
        assert_eq!(render("100%% %PROTOCOL%", &h).unwrap(), "100% HTTP/2");
        assert_eq!(
            render("%DOWNSTREAM_PEER_URI_SAN%", &h).unwrap(),
            "spiffe://prod.example/ns/web/sa/frontend"
        );
        assert_eq!(render("%REQ(x-none)%", &h), None, "empty: left out");
        assert_eq!(HeaderTemplate::parse("plain", false).unwrap(), None);
        assert_eq!(HeaderTemplate::parse("100%%", true).unwrap(), None);
        for bad in [
            "%NOPE%",
            "50%",
            "%REQ(bad name)%",
            "%START_TIME(%Y)%",
            "%UPSTREAM_HOST%",
            "%RESPONSE_DURATION%",
        ] {
            assert!(HeaderTemplate::parse(bad, false).is_err(), "{bad}");
        }
        assert!(
            HeaderTemplate::parse("%REQ(x)%", true).is_err(),
            "no REQ on responses"
        );
        let r = HeaderTemplate::parse("%UPSTREAM_HOST% %RESPONSE_CODE% %RESPONSE_DURATION%", true)
            .unwrap()
            .unwrap()
            .render(&h, &ctx())
            .unwrap();
        assert_eq!(r, "10.0.0.7:8080 503 12");
        assert_eq!(rfc3339_ms(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(0, 5), "1970-01-01T00:00:00.005Z");
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterSpec {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Each endpoint's weight (1..=1000), in the order of `endpoints`.
    pub weights: Vec<u32>,
    /// Each endpoint's priority level (0..=127, 0 the highest), in the
    /// order of `endpoints`.
    pub priorities: Vec<u8>,
    /// Percent (Envoy's overprovisioning factor × 100): a priority level's
    /// health is its healthy share × this, at most 100.
    pub overprovisioning: u32,
    pub lb: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Dur,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub http2_keepalive: Option<Http2Keepalive>,
    pub request_timeout: Dur,
    pub idle_timeout: Dur,
    /// Longest wait for the next piece of a response body.
    pub read_timeout: Dur,
    pub max_idle_per_endpoint: usize,
    /// Close a connection after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// Take no new request on a connection this old.
    pub max_connection_duration: Option<Dur>,
    pub breakers: Breakers,
    pub outlier: Option<OutlierSpec>,
    pub health_check: Option<crate::upstream::health::HealthSpec>,
    /// Ramp-up of joining and recovering endpoints.
    pub slow_start: Option<SlowStartSpec>,
    /// None: the budget is disabled and `breakers.max_retries` caps retries.
    pub retry_budget: Option<BudgetSpec>,
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
    /// `discovery: strict_dns`: the configured names (`endpoints` holds
    /// what they resolve to).
    pub strict_dns: Option<crate::dns::StrictDns>,
    /// How names are looked up (the top-level `dns`).
    pub resolver: crate::dns::ResolverSpec,
}

/// Envoy's `slow_start_config`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlowStartSpec {
    pub window: Dur,
    pub aggression: f64,
    /// 0..=1 (configured in percent).
    pub min_weight: f64,
}

impl SlowStartSpec {
    /// The share (0..=1) of a full endpoint that one `elapsed` ns into its
    /// ramp gets: max(min_weight, (elapsed / window)^(1 / aggression)).
    pub fn factor(&self, elapsed: u64) -> f64 {
        let window = self.window.0.as_nanos() as f64;
        if window <= 0.0 || elapsed as f64 >= window {
            return 1.0;
        }
        let t = elapsed as f64 / window;
        t.powf(1.0 / self.aggression).max(self.min_weight).min(1.0)
    }
}

/// Envoy's circuit-breaker thresholds (defaults 1024/1024/1024/3).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakers {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    pub max_retries: usize,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// A `serve: tcp` listener's forwarding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpProxySpec {
    /// The default cluster (every connection's, without `routes`).
    pub cluster: Option<String>,
    /// (server names, lower-case; cluster), in order.
    pub routes: Vec<(Vec<String>, String)>,
    pub idle_timeout: Dur,
    pub connect_attempts: u32,
    /// Empty: anyone.
    pub allowed_identities: Vec<IdentityMatch>,
}

impl TcpProxySpec {
    /// The cluster for a connection that asked for `sni`.
    pub fn cluster_for(&self, sni: Option<&str>) -> Option<&str> {
        sni.and_then(|n| {
            self.routes
                .iter()
                .find(|(names, _)| names.iter().any(|p| crate::tls::server_name_matches(p, n)))
                .map(|(_, c)| c.as_str())
        })
        .or(self.cluster.as_deref())
    }
}

/// One upstream endpoint, `host:port` (an IP literal or a DNS name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `host:port` as an authority, ready for request URIs.
    pub authority: http::uri::Authority,
    /// The address a `strict_dns` name resolved to (`host` stays the name).
    pub addr: Option<SocketAddr>,
}

impl Endpoint {
    /// What tells this endpoint apart: its resolved address, else its
    /// authority (hash tables, logs, the admin view, state across reloads).
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        match self.addr {
            Some(a) => std::borrow::Cow::Owned(a.to_string()),
            None => std::borrow::Cow::Borrowed(self.authority.as_str()),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id())
    }
}

impl ClusterSpec {
    pub fn timeout_for(&self, route: &RouteSpec) -> Duration {
        route.timeout.unwrap_or(self.request_timeout).0
    }
}

fn ser_per_million<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(f64::from(*p) / 10_000.0)
}

fn ser_bytes<S: Serializer>(b: &u64, s: S) -> Result<S::Ok, S::Error> {
    Bytes(*b).serialize(s)
}

fn ser_methods<S: Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

fn ser_name<S: Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn ser_names<S: Serializer>(n: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(n.iter().map(HeaderName::as_str))
}

fn ser_pairs<S: Serializer>(p: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(p.len()))?;
    for (k, v) in p {
        map.serialize_entry(k.as_str(), &String::from_utf8_lossy(v.as_bytes()))?;
    }
    map.end()
}
