//! The shapes of sift.yaml: plain serde structs, `deny_unknown_fields`,
//! nothing but parsing. [`super::build`] turns them into the validated model.
//! The JSON Schema in config/sift.schema.json is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{Bytes, Dur};

/// The whole sift.yaml file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Worker threads of the data plane. Default: the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogFile>,
    /// The admin listener (health, readiness, metrics, config, reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminFile>,
    /// How the config file is watched for changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadFile>,
    /// What happens on SIGTERM / SIGINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownFile>,
    /// Sockets sift accepts requests on.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// Routes, matched in order: the first route that matches a request wins.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Upstream clusters that routes forward to.
    #[serde(default)]
    pub clusters: Vec<ClusterFile>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines (development).
    Text,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: Option<LogFormat>,
    /// Minimum level: error, warn, info (default), debug, trace. `RUST_LOG` overrides it.
    #[serde(default)]
    pub level: Option<String>,
    /// Emit one access-log line per request (default true).
    #[serde(default)]
    pub access_log: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin listener. Default 127.0.0.1:9901.
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    /// Reload when the config file changes (default true).
    #[serde(default)]
    pub watch: Option<bool>,
    /// How often the file is checked (default 500ms).
    #[serde(default)]
    pub interval: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    /// Time between turning not-ready and closing the listeners, so load
    /// balancers see the readiness change first (default 0s).
    #[serde(default)]
    pub delay: Option<Dur>,
    /// How long in-flight requests may take to finish before sift exits (default 30s).
    #[serde(default)]
    pub drain_timeout: Option<Dur>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamProtocol {
    /// HTTP/1.1 only.
    H1,
    /// HTTP/2 only (prior knowledge on plain TCP).
    H2,
    /// Detect HTTP/1.1 or HTTP/2 (prior knowledge) per connection.
    #[default]
    Auto,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Socket address, e.g. "0.0.0.0:8080" or "[::]:8080".
    pub address: String,
    /// h1, h2 or auto (default).
    #[serde(default)]
    pub protocol: Option<DownstreamProtocol>,
    /// Route names this listener serves, in order. Default: every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Connection and request limits.
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    /// How X-Forwarded-For is treated.
    #[serde(default)]
    pub forwarded: Option<ForwardedFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Most bytes of request line + headers (default 64KiB). Over it: 431.
    #[serde(default)]
    pub max_header_bytes: Option<Bytes>,
    /// Most request headers (default 100). Over it: 431.
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Time a client has to send a complete request head (default 10s; slowloris guard).
    #[serde(default)]
    pub header_read_timeout: Option<Dur>,
    /// A connection with no request in flight and no bytes moving for this long is closed (default 60s).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Most open connections on this listener (default 10000); more are closed at accept.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most concurrent HTTP/2 streams per connection (default 100).
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum XffMode {
    /// Append the client address to any X-Forwarded-For the client sent (default).
    #[default]
    Append,
    /// Replace X-Forwarded-For with the client address (edge: trust nobody).
    Replace,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardedFile {
    /// `append` (default) or `replace`.
    #[serde(default)]
    pub x_forwarded_for: Option<XffMode>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// What requests this route takes. Default: everything.
    #[serde(default, rename = "match")]
    pub matches: Option<MatchFile>,
    /// The cluster to forward to (exactly one of `cluster` and `clusters`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// A weighted set of clusters (e.g. stable 90, canary 10).
    #[serde(default)]
    pub clusters: Option<Vec<WeightedClusterFile>>,
    /// Time from sending the request upstream to receiving the response
    /// head (default: the cluster's request_timeout). Over it: 504.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Largest request body accepted (default 10MiB). Over it: 413.
    #[serde(default)]
    pub max_request_body: Option<Bytes>,
    /// Header changes on the request sent upstream.
    #[serde(default)]
    pub request_headers: Option<HeaderOpsFile>,
    /// Header changes on the response sent to the client.
    #[serde(default)]
    pub response_headers: Option<HeaderOpsFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Host names (the Host header without port); `*.example.com` matches any subdomain.
    #[serde(default)]
    pub host: Option<Vec<String>>,
    /// Path match: `{prefix: /api}` or `{exact: /healthz}`.
    #[serde(default)]
    pub path: Option<PathMatchFile>,
    /// Methods, e.g. [GET, POST]. Default: any.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Option<Vec<HeaderMatchFile>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatchFile {
    /// The path (without query) equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary: `/api` matches
    /// `/api` and `/api/x`, not `/apix`. A prefix ending in `/` is a plain prefix.
    Prefix(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchFile {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// true: the header is there (any value); false: it is absent.
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterFile {
    /// Cluster name.
    pub name: String,
    /// Relative weight (0..=10000). Weights need not sum to 100.
    pub weight: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsFile {
    /// Set these headers, replacing any value already there.
    #[serde(default)]
    pub set: Option<BTreeMap<String, String>>,
    /// Add these headers, keeping values already there.
    #[serde(default)]
    pub add: Option<BTreeMap<String, String>>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn (default).
    #[default]
    RoundRobin,
    /// Power of two random choices, the one with fewer requests in flight.
    LeastRequest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Unique name, used in routes, metrics and logs.
    pub name: String,
    /// Endpoints as host:port. DNS names are resolved again for every new
    /// connection. An empty list is allowed: requests then get 503.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// round_robin (default) or least_request.
    #[serde(default)]
    pub lb: Option<LbPolicy>,
    /// http1 (default) or http2.
    #[serde(default)]
    pub protocol: Option<UpstreamProtocol>,
    /// Time allowed to open a TCP connection (default 1s). Over it: 502.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Default time to the response head for routes without a timeout (default 15s). Over it: 504.
    #[serde(default)]
    pub request_timeout: Option<Dur>,
    /// Idle pooled connections are closed after this (default 60s).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Connection pool limits.
    #[serde(default)]
    pub pool: Option<PoolFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Most idle keep-alive connections kept per endpoint (default 128).
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
}
