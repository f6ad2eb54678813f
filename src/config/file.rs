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
    /// Body filters (classifiers) that routes can use by name.
    #[serde(default)]
    pub filters: Vec<FilterFile>,
    /// The threads that run filters, off the network threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_pool: Option<FilterPoolFile>,
    /// Distributed tracing: W3C traceparent in and out, spans to an
    /// OpenTelemetry collector (OTLP/HTTP JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingFile>,
    /// Issuers of JSON Web Tokens that routes may require (`routes[].jwt`).
    #[serde(default)]
    pub jwt_providers: Vec<JwtProviderFile>,
    /// The Redis that `global` rate limits count in, shared by every sift
    /// replica that names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisFile>,
    /// How cluster endpoints' DNS names are looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsFile>,
    /// The answers sift itself gives (errors: 404 no-route, 503, 429,
    /// ...): their format, and bodies of your own per error or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_replies: Option<LocalRepliesFile>,
    /// Envoy's global rate limit service (`envoy.service.ratelimit.v3`)
    /// on `serve: envoy` listeners: domains of descriptor limits in
    /// envoyproxy/ratelimit's config shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimitServiceFile>,
    /// Binary upgrades without a refused connection: the Unix socket a
    /// running sift hands its listening sockets over on to a successor
    /// started with `sift run --upgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeFile>,
    /// Bounds on what a flood of requests may make sift hold in memory
    /// (Envoy's overload manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadFile>,
}

/// The top-level `overload`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverloadFile {
    /// Most request body bytes held in memory at once, across every
    /// connection: for filters, external authorization with the body,
    /// retries and mirror copies. `auto` (default): half the memory limit
    /// of sift's cgroup, else a quarter of the machine's memory; `0`: no
    /// limit.
    #[serde(default)]
    pub max_buffered_bytes: Option<BufferLimit>,
    /// Open client connections across every listener (Envoy's
    /// global_downstream_max_connections); beyond it a new connection is
    /// closed at accept. Default: no global bound (each listener's
    /// max_connections still holds).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most request body bytes in spool files at once (on disk, in each
    /// spool directory together): `on_oversize: spool` filters and
    /// `request_buffering`. Beyond it a filter's on_overload decides and
    /// request buffering answers 503. Default: no limit.
    #[serde(default)]
    pub max_spooled_bytes: Option<Bytes>,
}

/// `auto` or a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferLimit {
    Auto,
    Size(Bytes),
}

impl Serialize for BufferLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BufferLimit::Auto => s.serialize_str("auto"),
            BufferLimit::Size(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BufferLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BufferLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto` or a size in bytes, e.g. \"256MiB\" (0: no limit)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BufferLimit, E> {
                if v == "auto" {
                    return Ok(BufferLimit::Auto);
                }
                super::units::parse_bytes(v)
                    .map(|n| BufferLimit::Size(Bytes(n)))
                    .map_err(|e| E::custom(format!("{e}, or `auto`")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BufferLimit, E> {
                Ok(BufferLimit::Size(Bytes(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BufferLimit, E> {
                u64::try_from(v)
                    .map(|n| BufferLimit::Size(Bytes(n)))
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for BufferLimit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BufferLimit".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let size = g.subschema_for::<Bytes>();
        schemars::json_schema!({
            "anyOf": [ { "const": "auto" }, size ],
            "description": "`auto` (half the cgroup memory limit, else a quarter of the machine's memory), or a size in bytes (0: no limit)."
        })
    }
}

/// The top-level `upgrade`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeFile {
    /// Path of the Unix socket (required), e.g. /run/sift/upgrade.sock.
    /// Created mode 0600; only processes of sift's own user are served.
    #[serde(default)]
    pub socket: Option<String>,
}

/// A route's `basic_auth`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthFile {
    /// `name:hash` lines as `htpasswd` writes them ($apr1$, {SHA},
    /// {SSHA}); exactly one of `users` and `users_file`.
    #[serde(default)]
    pub users: Option<Vec<String>>,
    /// An htpasswd file, read at load and on every reload (and watched:
    /// a change reloads).
    #[serde(default)]
    pub users_file: Option<String>,
    /// The realm of the `WWW-Authenticate` challenge (default "sift").
    #[serde(default)]
    pub realm: Option<String>,
    /// Send the authenticated user's name upstream in this header (a
    /// client's own copy is removed first).
    #[serde(default)]
    pub forward_username_header: Option<String>,
    /// Remove the client's `Authorization` header before forwarding
    /// (default false: the app gets it, as with nginx and Envoy).
    #[serde(default)]
    pub strip_authorization: Option<bool>,
}

/// A route's `external_rate_limit`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalRateLimitFile {
    /// The service's cluster (`protocol: http2`).
    pub cluster: String,
    /// The `domain` of every call.
    pub domain: String,
    /// Descriptors, each a list of actions that make its entries.
    pub descriptors: Vec<Vec<RlActionFile>>,
    /// Longest wait for the answer (default 20ms, as Envoy).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// No answer: refuse with 503 instead of letting the request through
    /// (default false).
    #[serde(default)]
    pub failure_mode_deny: Option<bool>,
    /// Tokens each request takes (Envoy's `hits_addend`; default 1).
    #[serde(default)]
    pub hits_addend: Option<u32>,
}

/// One action of a descriptor (Envoy's route `rate_limits[].actions[]`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RlActionFile {
    /// `remote_address`: the client address (as rate limits read it).
    RemoteAddress {},
    /// `generic_key` (or `descriptor_key`): a fixed value.
    GenericKey {
        descriptor_value: String,
        #[serde(default)]
        descriptor_key: Option<String>,
    },
    /// `descriptor_key`: a request header's value (`:path`, `:method`,
    /// `:authority` too); a request without it sends no such descriptor
    /// unless `skip_if_absent` (then the entry is left out).
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
        #[serde(default)]
        skip_if_absent: Option<bool>,
    },
    /// `destination_cluster`: the cluster the route sends to.
    DestinationCluster {},
    /// sift's own: the caller's mTLS identity (`descriptor_key`, default
    /// `identity`); without one, no such descriptor.
    Identity {
        #[serde(default)]
        descriptor_key: Option<String>,
    },
    /// `masked_remote_address`: the client address masked to a prefix
    /// (`10.1.0.0/16`), key `masked_remote_address`.
    MaskedRemoteAddress {
        /// IPv4 prefix length (0 to 32; default 32).
        #[serde(default)]
        v4_prefix_mask_len: Option<u32>,
        /// IPv6 prefix length (0 to 128; default 128).
        #[serde(default)]
        v6_prefix_mask_len: Option<u32>,
    },
    /// `header_value_match`: `descriptor_value` (key `descriptor_key`,
    /// default `header_match`) when the request's headers match all of
    /// `headers` (or, with `expect_match: false`, when they do not);
    /// otherwise no such descriptor.
    HeaderValueMatch {
        #[serde(default)]
        descriptor_key: Option<String>,
        descriptor_value: String,
        #[serde(default)]
        expect_match: Option<bool>,
        headers: Vec<HeaderMatchFile>,
    },
    /// `query_parameters`: a query parameter's value (its first
    /// occurrence, percent-decoded) under `descriptor_key`; a request
    /// without it sends no such descriptor unless `skip_if_absent`.
    QueryParameters {
        query_parameter_name: String,
        descriptor_key: String,
        #[serde(default)]
        skip_if_absent: Option<bool>,
    },
}

/// A cluster's `slow_start`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowStartFile {
    /// How long an endpoint ramps up (required).
    pub window: Dur,
    /// The ramp's curve: the share grows as (elapsed/window)^(1/aggression)
    /// (default 1.0, linear; larger starts faster).
    #[serde(default)]
    pub aggression: Option<f64>,
    /// The least share a ramping endpoint gets, in percent of a full one
    /// (default 10).
    #[serde(default)]
    pub min_weight_percent: Option<f64>,
}

/// A route's `external_auth`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthFile {
    /// The cluster of the authorization service.
    pub cluster: String,
    /// `http` (default: a request without a body, 2xx allows) or `grpc`
    /// (Envoy's Authorization/Check, e.g. OPA's Envoy plugin; the cluster
    /// must be `protocol: http2`).
    #[serde(default)]
    pub protocol: Option<crate::external_auth::AuthProtocol>,
    /// gRPC: `attributes.context_extensions` of every check (Envoy's
    /// per-route check_settings), e.g. for a policy to tell routes apart.
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
    /// Path (and query) of the check, e.g. /oauth2/auth (default: the
    /// client's path and query).
    #[serde(default)]
    pub path: Option<String>,
    /// Path of the check: this prefix, then the client's path and query
    /// (Envoy's http_service path_prefix). Not with `path`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Method of the check: a method, or `original` for the client's
    /// (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Longest wait for the whole answer (default 200ms).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Client headers sent with the check (default: all but hop-by-hop
    /// ones); a name ending in `*` is a prefix. X-Forwarded-Method,
    /// -Proto, -Host, -Uri, -For and X-Request-Id are always sent.
    #[serde(default)]
    pub request_headers: Option<Vec<String>>,
    /// Headers of a 2xx answer set on the upstream request (the client's
    /// own values of these names are removed first); a name ending in `*`
    /// is a prefix (`x-auth-request-*`).
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// Headers of a denial the client gets (default: all but hop-by-hop
    /// ones).
    #[serde(default)]
    pub client_headers: Option<Vec<String>>,
    /// Headers of a 2xx answer added to the client's response (e.g.
    /// set-cookie).
    #[serde(default)]
    pub client_headers_on_success: Vec<String>,
    /// Forward when the service does not answer (default false).
    #[serde(default)]
    pub failure_mode_allow: Option<bool>,
    /// The client's status when the service does not answer and
    /// failure_mode_allow is false (default 403).
    #[serde(default)]
    pub status_on_error: Option<u16>,
    /// Send the client's body with the check (Envoy's with_request_body):
    /// the body is held up to `max_request_bytes` before the check.
    #[serde(default)]
    pub with_request_body: Option<WithRequestBodyFile>,
}

/// An `external_auth`'s `with_request_body`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WithRequestBodyFile {
    /// Most body bytes sent (required; at most 16MiB).
    pub max_request_bytes: crate::config::units::Bytes,
    /// A longer body: its first `max_request_bytes` are sent (and
    /// `x-envoy-auth-partial-body: true`), instead of a 413 (default false).
    #[serde(default)]
    pub allow_partial_message: Option<bool>,
    /// gRPC: the body as `raw_body` bytes, not `body` text (default false).
    #[serde(default)]
    pub pack_as_bytes: Option<bool>,
}

/// The top-level `rate_limit_service`: sift answers Envoy's
/// `RateLimitService/ShouldRateLimit` (the `envoy.filters.http.ratelimit`
/// filter's calls) as envoyproxy/ratelimit does, with token buckets.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitServiceFile {
    /// Where buckets are counted: `local` (this process, default) or
    /// `redis` (the top-level `redis`, shared by every replica).
    #[serde(default)]
    pub store: Option<RlsStore>,
    /// Add RateLimit-Policy / RateLimit for the client to allowed answers
    /// too (default false: only to OVER_LIMIT answers).
    #[serde(default)]
    pub response_headers: Option<bool>,
    /// Local store: most buckets kept per limit (default 100000).
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// One entry per domain: `{domain, descriptors}`, the shape of one
    /// envoyproxy/ratelimit config file.
    #[serde(default)]
    pub domains: Vec<RlsDomainFile>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RlsStore {
    #[default]
    Local,
    Redis,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlsDomainFile {
    /// The `domain` of Envoy's rate limit filter.
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<RlsDescriptorFile>,
}

/// One level of a descriptor tree: matches a request descriptor's entry
/// by `key` and `value` (no value: any value, a bucket per value; a value
/// ending in `*`: any value with that prefix, a bucket per value).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlsDescriptorFile {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    /// The limit for descriptors that end at this level.
    #[serde(default)]
    pub rate_limit: Option<RlsLimitFile>,
    /// Count and report, never answer OVER_LIMIT (default false).
    #[serde(default)]
    pub shadow_mode: Option<bool>,
    /// The next entries of the descriptor.
    #[serde(default)]
    pub descriptors: Vec<RlsDescriptorFile>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlsLimitFile {
    /// The limit's name: in headers, metrics, logs and `replaces`.
    #[serde(default)]
    pub name: Option<String>,
    /// Tokens added per `unit` (required unless `unlimited`).
    #[serde(default)]
    pub requests_per_unit: Option<u64>,
    /// second, minute, hour, day, week, month (30 days) or year (365 days).
    #[serde(default)]
    pub unit: Option<RlsUnit>,
    /// Bucket size (default: requests_per_unit).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Never limit descriptors that end here (default false).
    #[serde(default)]
    pub unlimited: Option<bool>,
    /// Limits (by name) this one replaces when both match one request.
    #[serde(default)]
    pub replaces: Vec<RlsReplacesFile>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlsReplacesFile {
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RlsUnit {
    #[serde(alias = "SECOND")]
    Second,
    #[serde(alias = "MINUTE")]
    Minute,
    #[serde(alias = "HOUR")]
    Hour,
    #[serde(alias = "DAY")]
    Day,
    #[serde(alias = "WEEK")]
    Week,
    #[serde(alias = "MONTH")]
    Month,
    #[serde(alias = "YEAR")]
    Year,
}

impl JsonSchema for RlsUnit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RlsUnit".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["second", "minute", "hour", "day", "week", "month", "year",
                     "SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR"],
            "description": "second, minute, hour, day, week, month (30 days) or year (365 days); lower or upper case."
        })
    }
}

impl RlsUnit {
    /// The unit in seconds (a month is 30 days, a year 365, as in
    /// envoyproxy/ratelimit).
    pub fn secs(self) -> u64 {
        match self {
            RlsUnit::Second => 1,
            RlsUnit::Minute => 60,
            RlsUnit::Hour => 3600,
            RlsUnit::Day => 86_400,
            RlsUnit::Week => 7 * 86_400,
            RlsUnit::Month => 30 * 86_400,
            RlsUnit::Year => 365 * 86_400,
        }
    }
}

/// The top-level `local_replies` (Envoy's local_reply_config, nginx's
/// error_page).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRepliesFile {
    /// `text` (default: `STATUS message`, text/plain) or `json`
    /// (`{"error", "status", "message", "request_id"}`).
    #[serde(default)]
    pub format: Option<ReplyFormat>,
    /// Bodies of your own, by error or status; the first that matches
    /// applies.
    #[serde(default)]
    pub mappers: Vec<ReplyMapperFile>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplyFormat {
    #[default]
    Text,
    Json,
}

/// One `local_replies.mappers` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyMapperFile {
    /// `x-sift-error` kinds this applies to (e.g. no-healthy-endpoint).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Statuses of sift's answers this applies to (e.g. 502, 503, 504).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Answer with this status instead.
    #[serde(default)]
    pub status: Option<u16>,
    /// The body, with %RESPONSE_CODE%, %ERROR%, %MESSAGE% and %REQUEST_ID%
    /// filled (escaped for HTML or JSON content types).
    #[serde(default)]
    pub body: Option<String>,
    /// The body from a file (read at load, at most 1 MiB).
    #[serde(default)]
    pub body_file: Option<String>,
    /// The body's Content-Type (default text/plain; charset=utf-8).
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// host:port of the Redis server (plain TCP).
    pub address: String,
    /// Longest wait for one answer, connecting included (default 50ms).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// What a request gets when Redis cannot answer in time: allow
    /// (default, as Envoy's failure_mode_deny: false) or deny (503).
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
    /// Prefix of every key sift writes (default "sift").
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Most connections open at once (default 16).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// ACL user name (Redis 6+; default: the default user).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for AUTH (default: none).
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to Redis (ElastiCache in-transit encryption, Redis `tls-port`):
    /// `ca`, `server_name` (default: the address's host), and `cert` +
    /// `key` for Redis's `tls-auth-clients`.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (counted).
    #[default]
    Allow,
    /// Answer 503 ratelimit-unavailable.
    Deny,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderFile {
    /// Unique name, used by routes.
    pub name: String,
    /// The `iss` claim tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values (default: any audience).
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// A JWKS file (JSON Web Key Set); read at start and on each reload.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// The JWKS itself, as a JSON string (instead of jwks_file).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Fetch the JWKS from a URI through a cluster, and refresh it
    /// (Envoy's remote_jwks; instead of jwks_file or jwks).
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksFile>,
    /// Allowed clock difference for exp and nbf (default 60s).
    #[serde(default)]
    pub clock_skew: Option<Dur>,
    /// Keep the Authorization header for the upstream (default false).
    #[serde(default)]
    pub forward: Option<bool>,
    /// Claims sent upstream as headers, e.g. {claim: sub, header: x-user}.
    #[serde(default)]
    pub claims_to_headers: Option<Vec<ClaimHeaderFile>>,
    /// Headers that carry the token, e.g. {name: x-goog-iap-jwt-assertion}
    /// or {name: authorization, value_prefix: "Bearer "}. With none of
    /// from_headers, from_cookies and from_params: Authorization: Bearer.
    #[serde(default)]
    pub from_headers: Option<Vec<FromHeaderFile>>,
    /// Cookies that carry the token.
    #[serde(default)]
    pub from_cookies: Option<Vec<String>>,
    /// Query parameters that carry the token (e.g. access_token).
    #[serde(default)]
    pub from_params: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromHeaderFile {
    /// The header's name.
    pub name: String,
    /// What comes before the token in the value (matched without regard
    /// to case), e.g. "Bearer "; default: the whole value is the token.
    #[serde(default)]
    pub value_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksFile {
    /// The JWKS's URI, http:// or https:// (the identity provider's
    /// jwks_uri). Exactly one of `uri` and `discovery: true`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Find the JWKS's URI by OpenID Connect discovery: the `jwks_uri` of
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must be
    /// the provider's.
    #[serde(default)]
    pub discovery: Option<bool>,
    /// The cluster the fetches go through (its endpoints, TLS and
    /// connect timeout); the URI's host is sent as Host and SNI is the
    /// cluster's.
    pub cluster: String,
    /// Time between fetches after a good one (default 10m, Envoy's
    /// cache_duration). A failed fetch is retried after 1s, doubling up
    /// to this.
    #[serde(default)]
    pub refresh: Option<Dur>,
    /// Time a fetch may take (default 5s).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderFile {
    /// A top-level claim of the token.
    pub claim: String,
    /// The request header it is sent in.
    pub header: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteJwtFile {
    /// A name from jwt_providers.
    pub provider: String,
    /// Let requests without a token through (a bad token is still 401).
    #[serde(default)]
    pub allow_missing: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The collector's OTLP/HTTP traces URL (e.g.
    /// http://127.0.0.1:4318/v1/traces; the path defaults to /v1/traces),
    /// or with `protocol: grpc` its OTLP/gRPC address (http://127.0.0.1:4317,
    /// no path). `https://` needs `tls`.
    pub endpoint: String,
    /// TLS to the collector (an `https://` endpoint): `ca` (the CAs its
    /// certificate must chain to; a vendor's collector: `system`, the
    /// system's bundle), optional `server_name`,
    /// client `cert` and `key`, `subject_alt_names`, as a cluster's `tls`.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    /// Fields sent with every export (gRPC metadata with `grpc`): a
    /// vendor's API key, a tenant. Values are redacted in `/config`.
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// `http` (default: OTLP/HTTP, JSON) or `grpc` (OTLP/gRPC, protobuf).
    #[serde(default)]
    pub protocol: Option<OtlpProtocolFile>,
    /// service.name of the spans (default sift).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces sampled, 0 to 1 (default 1); a caller's
    /// traceparent decision is kept. Reloads; the rest needs a restart.
    #[serde(default)]
    pub sampling: Option<f64>,
    /// Spans waiting for export; more are dropped (default 2048).
    #[serde(default)]
    pub max_queue: Option<usize>,
    /// Most spans per export request (default 512).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is sent (default 1s).
    #[serde(default)]
    pub flush_interval: Option<Dur>,
}

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocolFile {
    Http,
    Grpc,
}

/// The bounded pool that runs classifiers (restart to change it).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterPoolFile {
    /// Threads classifying bodies. Default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Inspections waiting for a thread; beyond it a filter's `on_overload`
    /// decides (default 1024).
    #[serde(default)]
    pub queue: Option<usize>,
}

/// What a filter's model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// The spam/scam text classifier (sift's linear model file).
    Spam,
    /// A spam/scam classifier as an ONNX model fed by sift's featurizer.
    Onnx,
    /// The CI build log classifier.
    Cilog,
}

/// How a route uses a filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// Decide before forwarding: the body is held (up to
    /// `max_inspect_bytes`), a bad verdict gets the block response, a good
    /// one is forwarded unchanged with the verdict headers.
    Block,
    /// Forward with the verdict as request headers; never block.
    #[default]
    Annotate,
    /// Forward the body untouched as it streams; classify a copy off the
    /// request path; the verdict only goes to metrics and logs.
    Shadow,
}

/// What happens when a body is longer than `max_inspect_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// Forward without a verdict (counted as skipped, reason oversize).
    Skip,
    /// Classify the first `max_inspect_bytes`, forward the whole body.
    #[default]
    InspectPrefix,
    /// Answer 413.
    Reject,
    /// Keep the first `max_inspect_bytes` in memory and the rest in an
    /// unlinked temporary file in the filter's `spool_dir` (as nginx buffers
    /// request bodies to disk), classify the body as it streams (a streaming
    /// filter, cilog on a plain-text log, reads all of it; others read the
    /// first `max_inspect_bytes`), then forward the whole body. The cilog
    /// default: a build log's failure is near its end.
    Spool,
}

/// What happens when the filter pool is saturated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOverload {
    /// Forward without a verdict.
    #[default]
    FailOpen,
    /// Answer 503 filter-overloaded.
    FailClosed,
}

/// What a block filter does with a body it cannot read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreadable {
    /// Forward without a verdict (counted by skip reason).
    #[default]
    Forward,
    /// Refuse it: 415 `unsupported-media-type` for a content type or
    /// encoding sift does not read, 422 `unclassifiable` for a body that
    /// does not decode or parse. Only in block mode.
    Reject,
}

/// A named filter: its model and defaults for the routes that use it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterFile {
    /// Unique name (metrics, logs, the admin API, routes' `filters`).
    pub name: String,
    /// spam, onnx or cilog.
    pub kind: FilterKind,
    /// Model file. `builtin` (the default) is the model compiled into sift
    /// (spam and cilog). Watched: a new valid file is swapped in, a broken
    /// one is rejected and the old model keeps serving.
    #[serde(default)]
    pub model: Option<String>,
    /// ONNX Runtime library (libonnxruntime.so) for kind onnx. Default:
    /// the `ORT_DYLIB_PATH` environment variable.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Spam probability at or above which a body is spam. Default: the
    /// model's calibrated threshold. Kinds spam and onnx (an error on cilog).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Where `POST /filters/{name}/learn` (admin) saves the updated model,
    /// which is then loaded in preference to `model` (also after a restart).
    /// Default: the model path + `.learned` (`filters/<name>.learned.bin` for
    /// a builtin model). Its directory must exist: sift does not create it.
    #[serde(default)]
    pub learned_model: Option<String>,
    /// Kind cilog: a labelled-log folder (`labels.csv` and `logs/`, as
    /// `sift train cilog --data` reads). With it, `POST
    /// /filters/{name}/learn` retrains the CI-log model on this data plus
    /// every log learned so far (kept beside `learned_model` in
    /// `<learned_model>.examples.jsonl`) and swaps the result in. Without
    /// it a cilog filter does not learn at run time.
    #[serde(default)]
    pub learn_data: Option<String>,
    /// Default mode for routes (annotate).
    #[serde(default)]
    pub mode: Option<FilterMode>,
    /// Most body bytes (after decoding) a filter inspects (default 64KiB;
    /// cilog default 8MiB).
    #[serde(default)]
    pub max_inspect_bytes: Option<Bytes>,
    /// Longer bodies: skip, inspect_prefix (default; cilog: spool), reject
    /// (413) or spool (to disk, classified whole, then forwarded).
    #[serde(default)]
    pub on_oversize: Option<OnOversize>,
    /// Directory for `on_oversize: spool` files (default: `$TMPDIR`, else
    /// /tmp). Files are unlinked as soon as they are created.
    #[serde(default)]
    pub spool_dir: Option<String>,
    /// Pool saturated: fail_open (default) or fail_closed (503).
    #[serde(default)]
    pub on_overload: Option<OnOverload>,
    /// Block mode, a body the filter cannot read (unknown content type or
    /// encoding, broken compression, unparseable JSON or mail past the MIME
    /// limits): forward (default) or reject (415 / 422).
    #[serde(default)]
    pub on_unreadable: Option<OnUnreadable>,
    /// Most bytes a compressed body may expand to; more is 413 (default 16MiB,
    /// or max_inspect_bytes if larger). At least max_inspect_bytes.
    #[serde(default)]
    pub max_decompressed_bytes: Option<Bytes>,
    /// Which text of a body is classified.
    #[serde(default)]
    pub extract: Option<ExtractFile>,
    /// Status and message of a block (default 403).
    #[serde(default)]
    pub block: Option<BlockFile>,
    /// Prefix of the verdict headers (default x-sift-spam, cilog x-sift-ci).
    /// Not empty, not a standard header's namespace (host, content-*,
    /// transfer-*, connection, ...); two filters of a route may not share
    /// it. Outside x-sift-, clients' headers with these names are removed.
    #[serde(default)]
    pub header_prefix: Option<String>,
}

/// Which parts of a body are text to classify.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractFile {
    /// JSON pointers (RFC 6901) of the strings to classify, e.g. `/message`.
    /// Default: every string value in the document.
    #[serde(default)]
    pub json_pointers: Option<Vec<String>>,
    /// Form fields (urlencoded and multipart) to classify. Default: every
    /// field that is not a file, and urlencoded text with no `=` (what
    /// `curl -d 'text'` sends). Kinds spam and onnx (an error on cilog).
    #[serde(default)]
    pub form_fields: Option<Vec<String>>,
    /// Query-string parameters whose values are classified with the body
    /// (and without one: a GET is classified by them). PHP's `$_REQUEST`,
    /// Flask's `request.values` and Rails' `params` give an app query and
    /// body fields under one name, so text sent in the URL is read too.
    /// Default: the `form_fields` list (none without it); `[]` reads no
    /// query. Kinds spam and onnx (an error on cilog).
    #[serde(default)]
    pub query_fields: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockFile {
    /// HTTP status of the block response (400–599, default 403).
    #[serde(default)]
    pub status: Option<u16>,
    /// Message in the JSON body (default "request blocked by filter NAME").
    #[serde(default)]
    pub message: Option<String>,
}

/// A filter on a route; unset fields take the filter's values.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFilterFile {
    /// The filter's name (see `filters`).
    pub filter: String,
    #[serde(default)]
    pub mode: Option<FilterMode>,
    #[serde(default)]
    pub max_inspect_bytes: Option<Bytes>,
    #[serde(default)]
    pub on_oversize: Option<OnOversize>,
    #[serde(default)]
    pub on_overload: Option<OnOverload>,
    #[serde(default)]
    pub on_unreadable: Option<OnUnreadable>,
    /// What a verdict does beyond headers (block mode; cilog classes):
    /// reject it, or send it to another cluster.
    #[serde(default)]
    pub rules: Option<Vec<VerdictRuleFile>>,
}

/// `when` a verdict is one of these, `reject` or `cluster: NAME`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictRuleFile {
    /// Verdicts this rule applies to (e.g. spam; cilog classes such as infra).
    pub when: Vec<String>,
    /// Answer with the filter's block response.
    #[serde(default)]
    pub reject: bool,
    /// Forward to this cluster instead of the route's.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Act only when the verdict's score is at least this (0 to 1; default
    /// 0): a cilog class's confidence, a spam verdict's spam probability.
    /// A verdict below it falls through to the next rule.
    #[serde(default)]
    pub min_score: Option<f64>,
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
    /// `default` (a line in `format`) or `combined` (nginx's and Apache's
    /// combined log format, for tools that read it).
    #[serde(default)]
    pub access_log_format: Option<AccessLogFormatFile>,
    /// Write access-log lines to this file (appended; created mode 0640)
    /// instead of stdout; the other lines stay on stdout. Reopened on
    /// SIGUSR1 and `POST /reopen_logs` (after logrotate moved it).
    #[serde(default)]
    pub access_log_path: Option<String>,
    /// Which requests get an access-log line (default: all): errors and
    /// slow ones always, a sample of the rest, none for skipped paths.
    #[serde(default)]
    pub access_log_filter: Option<AccessLogFilterFile>,
}

/// The shape of access-log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormatFile {
    /// A JSON object (or a text line with `log.format: text`).
    #[default]
    Default,
    /// `CLIENT - - [TIME] "METHOD PATH PROTOCOL" STATUS BYTES "REFERER" "USER-AGENT"`.
    Combined,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilterFile {
    /// Share of ordinary requests logged, 0 to 1 (default 1).
    #[serde(default)]
    pub sample: Option<f64>,
    /// Always log answers with at least this status (e.g. 500, or 400).
    #[serde(default)]
    pub min_status: Option<u16>,
    /// Always log requests that took at least this long.
    #[serde(default)]
    pub slower_than: Option<Dur>,
    /// Never log requests to these exact paths (health checks, probes).
    #[serde(default)]
    pub skip_paths: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin listener. Default 127.0.0.1:9901.
    #[serde(default)]
    pub address: Option<String>,
    /// Peers whose admin requests other than GET and HEAD (reload,
    /// shutdown, canary weights, learning, purges) are taken: addresses or
    /// CIDR ranges. Default loopback only (127.0.0.0/8, ::1), as
    /// linkerd2-proxy takes /shutdown only from localhost; others get 403.
    #[serde(default)]
    pub write_from: Option<Vec<String>>,
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolMode {
    /// No header is read (default).
    #[default]
    Off,
    /// Every connection starts with a header, or is closed.
    Required,
    /// A connection may start with a header.
    Optional,
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
    /// What this listener serves: `proxy` (default: requests forwarded to
    /// the routes' clusters) or `envoy` (Envoy's ext_authz over gRPC and
    /// HTTP, and ext_proc: the same routes' policies and filters decide,
    /// Envoy forwards). Restart-only.
    #[serde(default)]
    pub serve: Option<Serve>,
    /// Read a PROXY protocol header (v1 or v2) before anything else on
    /// each connection and take its source address as the client's:
    /// `off` (default), `required` (a connection without one is closed)
    /// or `optional`. Only for a listener that nothing but the load
    /// balancer can reach.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolMode>,
    /// `serve: tcp`: where each connection's bytes go.
    #[serde(default)]
    pub tcp: Option<TcpProxyFile>,
    /// TCP keepalive probes on accepted connections (default: off, the
    /// OS's), so that a client gone without a FIN, or a middlebox's idle
    /// timeout (an AWS NLB drops idle flows after 350 s), does not keep a
    /// dead connection open. Envoy's `tcp_keepalive`, linkerd's 10 s.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepaliveFile>,
    /// HTTP/2 PINGs to clients: every `interval`, the connection closed
    /// when one goes unanswered for `timeout` (default 20s). Without the
    /// map: every 30s, 20s.
    #[serde(default)]
    pub http2_keepalive: Option<Http2KeepaliveFile>,
    /// Route names this listener serves, in order. Default: every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Connection and request limits.
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    /// How X-Forwarded-For is treated.
    #[serde(default)]
    pub forwarded: Option<ForwardedFile>,
    /// Rate limits applied to every request on this listener (after
    /// routing, before the route's own).
    #[serde(default)]
    pub rate_limits: Option<Vec<RateLimitFile>>,
    /// Terminate TLS (and mTLS) on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
    /// Escaped slashes (`%2F`, `%5C`) in request paths: `keep` (default:
    /// routed and forwarded as sent), `reject` (400) or `unescape` (both
    /// decoded to `/` before routing and forwarded so). Envoy's
    /// `path_with_escaped_slashes_action`.
    #[serde(default)]
    pub escaped_slashes: Option<EscapedSlashes>,
    /// Path parameters (`;` in a path segment, `/admin;jsessionid=1`):
    /// `keep` (default: an ordinary character, as Envoy and nginx read it;
    /// `/admin;x` is not under `/admin`), `reject` (400) or `strip` (each
    /// segment's `;...` removed before routing and forwarded so, as servlet
    /// containers such as Tomcat read the path). Use `reject` or `strip` in
    /// front of a Java servlet app, which serves `/admin` for `/admin;x`.
    #[serde(default)]
    pub path_parameters: Option<PathParameters>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Serve {
    /// Forward requests to the routes' clusters.
    #[default]
    Proxy,
    /// Answer Envoy's external authorization (`envoy.service.auth.v3`
    /// over gRPC, and its HTTP variant) and external processing
    /// (`envoy.service.ext_proc.v3`) calls with the routes' admission and
    /// filters; Envoy forwards the request.
    Envoy,
    /// Forward each connection's bytes, unparsed, to the cluster named in
    /// `tcp` (Envoy's tcp_proxy, Linkerd's opaque ports): databases,
    /// message queues, any protocol. TLS and mTLS are terminated first
    /// when the listener has `tls`.
    Tcp,
}

/// One `tcp.routes` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteFile {
    /// Server names (`api.example.com`, or `*.example.com` for one more
    /// label), matched without case.
    pub server_names: Vec<String>,
    /// Where those connections go.
    pub cluster: String,
}

/// A `serve: tcp` listener's forwarding.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyFile {
    /// The cluster whose endpoints take the connections (its lb,
    /// health checks, outlier detection, max_requests and tls apply;
    /// ring_hash and maglev hash the client's IP). With `routes`: the
    /// cluster of connections no route takes (optional).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Route TLS connections by the server name (SNI) the client asks
    /// for, in order: read from the ClientHello without decrypting (TLS
    /// passthrough: the bytes go on untouched), or from the handshake when
    /// the listener terminates `tls`.
    #[serde(default)]
    pub routes: Option<Vec<TcpRouteFile>>,
    /// A connection with no byte either way for this long is closed
    /// (default 1h, as Envoy's tcp_proxy).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Endpoints tried before giving up on a connection whose connects
    /// fail (default 1, at most 5; Envoy's max_connect_attempts).
    #[serde(default)]
    pub connect_attempts: Option<u32>,
    /// Only callers with these mTLS identities may connect (the
    /// connection is closed otherwise). Default: anyone.
    #[serde(default)]
    pub allowed_identities: Option<Vec<IdentityMatchFile>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// `;` is an ordinary path character: routed and forwarded as sent.
    #[default]
    Keep,
    /// 400 `malformed-request` for a path with a `;`.
    Reject,
    /// Each segment's `;` and what follows it up to the next `/` removed
    /// before routing, and forwarded so: the route and the app read
    /// `/admin` for `/admin;jsessionid=1`.
    Strip,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Routed and forwarded as sent (`/admin%2Fx` is not under `/admin`).
    #[default]
    Keep,
    /// 400 `malformed-request`: for apps that decode `%2F` to `/`.
    Reject,
    /// Decoded before routing, and forwarded decoded: the route and the
    /// app read `/admin/x`.
    Unescape,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// Certificate chains and keys (PEM: RSA, ECDSA or Ed25519). The first
    /// without server_names is the default; others are chosen by SNI.
    pub certificates: Vec<CertFile>,
    /// Client certificates (mTLS).
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
    /// TLS session resumption (abbreviated handshakes for returning clients).
    #[serde(default)]
    pub session_resumption: Option<SessionResumptionFile>,
    /// Lowest TLS version accepted: `TLSv1.2` (default) or `TLSv1.3`
    /// (nginx's `ssl_protocols`, Envoy's `tls_minimum_protocol_version`).
    #[serde(default)]
    pub min_version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionResumptionFile {
    /// Stateless session tickets (TLS 1.3 and 1.2): keys are random, held in
    /// memory only, rotated every 6 hours; a ticket lives at most 12 hours.
    /// Default true (as nginx and Envoy).
    #[serde(default)]
    pub tickets: Option<bool>,
    /// Sessions kept in memory for stateful resumption (TLS 1.2 session IDs,
    /// and TLS 1.3 when tickets are off). 0 turns it off. Default 256.
    #[serde(default)]
    pub cache_size: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate answers (`*.example.com` allowed).
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MtlsModeFile {
    /// Every client must present a valid certificate (default).
    #[default]
    Require,
    /// Verify a certificate when presented; allow clients without one.
    Optional,
    /// Do not ask for client certificates.
    Off,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    /// require (default), optional or off.
    #[serde(default)]
    pub mode: Option<MtlsModeFile>,
    /// PEM bundle of the CAs client certificates must chain to.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM certificate revocation lists.
    #[serde(default)]
    pub crls: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentityMatchFile {
    /// This exact identity (e.g. spiffe://prod.example/ns/web/sa/frontend).
    Exact(String),
    /// Any SPIFFE ID in this trust domain.
    TrustDomain(String),
    /// Any SPIFFE ID in TRUST_DOMAIN/NAMESPACE.
    Namespace(String),
    /// Any identity starting with this.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM bundle of the CAs the upstream's certificate must chain to, or
    /// `system`: the operating system's bundle ($SSL_CERT_FILE, else
    /// /etc/ssl/certs/ca-certificates.crt and the other usual places).
    pub ca: String,
    /// SNI and the name the upstream certificate must carry (default: the endpoint host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate for mTLS to the upstream.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// The upstream certificate must carry one of these SANs (URI, such as
    /// a SPIFFE ID, or DNS), checked instead of the server name.
    #[serde(default)]
    pub subject_alt_names: Option<Vec<String>>,
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
    /// Longest wait for the next piece of a request body before the
    /// upstream has answered (default 60s, nginx's client_body_timeout;
    /// `0s`: no limit). Over it: 408. The route's timeout counts from the
    /// body's end.
    #[serde(default)]
    pub request_body_timeout: Option<Dur>,
    /// The whole request, head to the end of its body, must arrive within
    /// this, unless the upstream answered first (Envoy's request_timeout;
    /// default: none). Over it: 408. Closes what request_body_timeout
    /// leaves open: a body trickled a byte at a time.
    #[serde(default)]
    pub request_timeout: Option<Dur>,
    /// Longest time a client may read nothing of what sift has to send
    /// it before its connection is closed (default 60s, nginx's
    /// send_timeout; `0s`: no limit).
    #[serde(default)]
    pub send_timeout: Option<Dur>,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed (default 75s, nginx's keepalive_timeout: longer than
    /// the 60s a load balancer such as AWS's ALB keeps an idle connection
    /// to sift, so the balancer, not sift, closes it first).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Most open connections on this listener (default 10000); more are closed at accept.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address on this listener
    /// (default: no limit; nginx's `limit_conn` per IP). The address is the
    /// TCP peer's, or the PROXY protocol source; IPv6 clients count per
    /// /64. More are closed at accept.
    #[serde(default)]
    pub max_connections_per_client: Option<u32>,
    /// Most concurrent HTTP/2 streams per connection (default 100).
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// Close a connection gracefully after this many requests (HTTP/1.1:
    /// `Connection: close` on the last answer; HTTP/2: GOAWAY). Default:
    /// no limit (Envoy's max_requests_per_connection, nginx's
    /// keepalive_requests).
    #[serde(default)]
    pub max_requests_per_connection: Option<u64>,
    /// Close a connection gracefully once it is this old, so long-lived
    /// clients spread again over replicas that scaled out. Default: no
    /// limit (Envoy's max_connection_duration, nginx's keepalive_time).
    #[serde(default)]
    pub max_connection_duration: Option<Dur>,
    /// After sift asks a connection to close (the two limits above), how
    /// long its requests in flight may still run before it is cut
    /// (default 5s, as Envoy's drain_timeout).
    #[serde(default)]
    pub drain_timeout: Option<Dur>,
}

/// TCP keepalive (Envoy's `tcp_keepalive`): each key unset keeps the OS's
/// value (Linux: 7200 s, 75 s, 9).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepaliveFile {
    /// Idle time before the first probe (whole seconds, at least 1s).
    #[serde(default)]
    pub time: Option<Dur>,
    /// Time between unanswered probes (whole seconds, at least 1s).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Unanswered probes before the connection is dropped (1..=127).
    #[serde(default)]
    pub probes: Option<u32>,
}

/// HTTP/2 PING keepalive on upstream connections (Envoy's
/// `http2_protocol_options.connection_keepalive`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2KeepaliveFile {
    /// Time between PINGs on a connection (required).
    pub interval: Dur,
    /// How long a PING may go unanswered before the connection is
    /// closed (default 20s).
    #[serde(default)]
    pub timeout: Option<Dur>,
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
    /// Proxies in front of sift that append to X-Forwarded-For and are
    /// trusted (default 0): the client IP used by rate limits is the
    /// address this many hops from the right of X-Forwarded-For; with 0 it is
    /// the peer address.
    #[serde(default)]
    pub trusted_hops: Option<u32>,
    /// Instead of a count: the addresses of trusted proxies (CIDR ranges,
    /// `10.0.0.0/8`). When the peer is one, the client is the rightmost
    /// X-Forwarded-For address that is not (nginx's set_real_ip_from with
    /// real_ip_recursive, Envoy's xff_trusted_cidrs). Not with trusted_hops.
    #[serde(default)]
    pub trusted_cidrs: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Policy name: in RateLimit-Policy headers, metrics and logs.
    pub name: String,
    /// Tokens added per `unit`.
    pub requests_per_unit: u64,
    /// second, minute, hour or day.
    pub unit: RateUnit,
    /// Bucket size: requests allowed at once (default: requests_per_unit).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Descriptor parts forming the bucket key, alone or combined:
    /// client_ip, identity, method, path, route, header:NAME (default [client_ip]).
    /// A request missing a part (header absent, no identity) is not limited
    /// by this policy.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Per-key limits: `value` is the descriptor value, parts joined with `|`.
    #[serde(default)]
    pub overrides: Option<Vec<RateLimitOverrideFile>>,
    /// Count and log what would be rejected, reject nothing (default false).
    #[serde(default)]
    pub shadow: Option<bool>,
    /// Add RateLimit / RateLimit-Policy headers to allowed responses too (default false).
    #[serde(default)]
    pub response_headers: Option<bool>,
    /// Most buckets kept in memory (default 100000); idle ones are evicted first.
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// Count in the top-level `redis`, shared by all sift replicas, instead
    /// of in this process (default false).
    #[serde(default)]
    pub global: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverrideFile {
    /// The descriptor value this override applies to.
    pub value: String,
    pub requests_per_unit: u64,
    /// Default: this override's requests_per_unit.
    #[serde(default)]
    pub burst: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Retries after the first try (default 2 when `retries` is given).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// What is retried: connect-failure, reset, refused-stream, timeout, 5xx,
    /// gateway-error (502/503/504), or status codes like "503" (default
    /// [connect-failure, reset, refused-stream, gateway-error]).
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Timeout of each try (default: the route timeout).
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// First backoff (default 25ms); doubles per retry, full jitter.
    #[serde(default)]
    pub backoff_base: Option<Dur>,
    /// Longest backoff (default 250ms).
    #[serde(default)]
    pub backoff_max: Option<Dur>,
    /// Largest request body kept for replay (default 64KiB). A larger or
    /// chunked body streams once and its request is never retried.
    #[serde(default)]
    pub buffer_limit: Option<Bytes>,
    /// Also retry requests with a non-idempotent method (POST, PATCH and
    /// any method RFC 9110 does not define as idempotent) on reset, timeout
    /// or a retried status, when the upstream may already have acted on
    /// them (default false: such requests are retried only after a failed
    /// connect, as nginx does without `non_idempotent`).
    #[serde(default)]
    pub non_idempotent: Option<bool>,
    /// Wait what a retried answer's `Retry-After` asks before the retry
    /// (Envoy's rate_limited_retry_back_off); longer than `max_interval`
    /// or past the route's deadline: no retry, the client gets the answer.
    #[serde(default)]
    pub retry_after: Option<RetryAfterFile>,
    /// A try past `per_try_timeout` is not cancelled: the next try starts
    /// beside it and the first answer wins (Envoy's hedge_on_per_try_timeout).
    #[serde(default)]
    pub hedge_on_per_try_timeout: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryAfterFile {
    /// Longest `Retry-After` waited for (default 300s, Envoy's).
    #[serde(default)]
    pub max_interval: Option<Dur>,
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
    /// gzip-compress the cluster's answers for clients that accept it.
    #[serde(default)]
    pub compression: Option<CompressionFile>,
    /// Require a JSON Web Token from a jwt_providers entry (401 otherwise).
    #[serde(default)]
    pub jwt: Option<RouteJwtFile>,
    /// HTTP Basic authentication (nginx's auth_basic, Envoy's basic_auth):
    /// users in htpasswd's format, inline or from a file.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthFile>,
    /// Cross-origin requests from browsers (CORS): preflights answered by
    /// sift, answers to allowed origins decorated.
    #[serde(default)]
    pub cors: Option<CorsFile>,
    /// Cross-site request forgery protection (Envoy's csrf filter): a
    /// state-changing request a browser sent from another site's page is
    /// refused with 403 csrf-denied.
    #[serde(default)]
    pub csrf: Option<CsrfFile>,
    /// Token-bucket rate limits for this route.
    #[serde(default)]
    pub rate_limits: Option<Vec<RateLimitFile>>,
    /// Most requests in flight on this route; more get 503 overloaded.
    #[serde(default)]
    pub max_inflight: Option<usize>,
    /// A concurrency limit that follows the route's latency (Envoy's
    /// adaptive_concurrency): more get 503 overloaded.
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrencyFile>,
    /// Retry policy (default: no retries).
    #[serde(default)]
    pub retries: Option<RetryFile>,
    /// Honour a gRPC call's `grpc-timeout` as its deadline (Envoy's
    /// max_stream_duration.grpc_timeout_header_max / _offset).
    #[serde(default)]
    pub grpc_timeout: Option<GrpcTimeoutFile>,
    /// Canary release of this route's `clusters` (stable + canary).
    #[serde(default)]
    pub canary: Option<CanaryFile>,
    /// Only callers with these mTLS identities may use this route (403
    /// identity-denied otherwise). Default: anyone.
    #[serde(default)]
    pub allowed_identities: Option<Vec<IdentityMatchFile>>,
    /// Which client addresses may use this route (nginx's allow/deny,
    /// Envoy's RBAC on remote_ip): 403 source-denied otherwise.
    #[serde(default)]
    pub source_ips: Option<SourceIpsFile>,
    /// Body filters, in order (see `filters`).
    #[serde(default)]
    pub filters: Option<Vec<RouteFilterFile>>,
    /// Answer every request with this filter's verdict as JSON, without an
    /// upstream (then `cluster` is not needed).
    #[serde(default)]
    pub answer: Option<String>,
    /// Replace the matched path prefix before forwarding (Envoy's
    /// prefix_rewrite): `{prefix: /}` on a `/api` route sends `/api/users`
    /// upstream as `/users`.
    #[serde(default)]
    pub rewrite: Option<RewriteFile>,
    /// Answer with a redirect instead of forwarding (no cluster), e.g.
    /// `{scheme: https}` for HTTP to HTTPS.
    #[serde(default)]
    pub redirect: Option<RedirectFile>,
    /// Answer with this status and body instead of forwarding (no cluster).
    #[serde(default)]
    pub direct_response: Option<DirectResponseFile>,
    /// Send a copy of a share of this route's requests to other clusters
    /// and drop their answers (shadow traffic, as Envoy's
    /// request_mirror_policies). Only on a forwarding route.
    #[serde(default)]
    pub mirror: Option<Vec<MirrorFile>>,
    /// Ask an authorization service before forwarding (nginx
    /// auth_request, Traefik forwardAuth, Envoy's HTTP ext_authz): a 2xx
    /// answer lets the request through, any other is the client's answer.
    #[serde(default)]
    pub external_auth: Option<ExternalAuthFile>,
    /// Ask a rate limit service that speaks Envoy's
    /// RateLimitService/ShouldRateLimit (envoyproxy/ratelimit, or sift's
    /// own `rate_limit_service`) before forwarding, with descriptors made
    /// as Envoy's route rate_limits actions make them.
    #[serde(default)]
    pub external_rate_limit: Option<ExternalRateLimitFile>,
    /// Translate gRPC-Web calls (browsers; `application/grpc-web` and
    /// `-text`) to gRPC for the route's `protocol: http2` clusters and the
    /// answers back, as Envoy's grpc_web filter (default false).
    #[serde(default)]
    pub grpc_web: Option<bool>,
    /// What a ring_hash or maglev cluster hashes to pick the endpoint
    /// (Envoy's route hash_policy): the keys of the entries that give one,
    /// combined in order; none: a random endpoint.
    #[serde(default)]
    pub hash_policy: Option<Vec<HashPolicyFile>>,
    /// Fault injection (Envoy's fault filter, Istio's HTTPFaultInjection):
    /// delay or abort a share of the route's requests before they go
    /// upstream.
    #[serde(default)]
    pub fault: Option<FaultFile>,
    /// Keep the cluster's cacheable answers in memory and answer from
    /// them (nginx's proxy_cache, Envoy's cache filter; RFC 9111).
    #[serde(default)]
    pub cache: Option<CacheFile>,
    /// Read the whole request body before the upstream is asked (nginx's
    /// proxy_request_buffering, Envoy's buffer filter): slow uploads tie up
    /// sift, not the app's workers.
    #[serde(default)]
    pub request_buffering: Option<RequestBufferingFile>,
}

/// `routes[].request_buffering`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBufferingFile {
    /// Bytes kept in memory (default 64KiB, within
    /// overload.max_buffered_bytes); the rest of the body waits in an
    /// unlinked file in `spool_dir`. A body held whole in memory can be
    /// retried.
    #[serde(default)]
    pub in_memory: Option<Bytes>,
    /// Directory of the spool files (default: the system's temporary
    /// directory, $TMPDIR or /tmp).
    #[serde(default)]
    pub spool_dir: Option<String>,
}

/// `routes[].grpc_timeout`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTimeoutFile {
    /// Longest deadline taken from a call (default: no cap).
    #[serde(default)]
    pub max: Option<Dur>,
    /// Taken off the call's deadline, so that sift answers before the
    /// client gives up (default 0s).
    #[serde(default)]
    pub offset: Option<Dur>,
}

/// `routes[].cache`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Memory for the route's entries (default 64MiB).
    #[serde(default)]
    pub max_bytes: Option<Bytes>,
    /// Largest body kept (default 1MiB, at most max_bytes).
    #[serde(default)]
    pub max_object_bytes: Option<Bytes>,
    /// Freshness of a cacheable answer that names none (default: such
    /// answers are not kept).
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// How long past its expiry an entry answers when the upstream fails
    /// (default 0s).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// How long past its expiry an entry answers while another request
    /// revalidates it (default 0s: they wait for it).
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    /// Within stale_while_revalidate, the request that finds an entry
    /// expired is answered from it at once too, and the revalidation runs
    /// in the background (nginx's proxy_cache_background_update; default
    /// false: that request waits for it).
    #[serde(default)]
    pub background_update: Option<bool>,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub key_headers: Option<Vec<String>>,
    /// How long a miss waits for another request's answer on the same key
    /// (default 5s; 0s: no waiting).
    #[serde(default)]
    pub lock_timeout: Option<Dur>,
    /// Do not read the client's Cache-Control and Pragma (default false).
    #[serde(default)]
    pub ignore_client_cache_control: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIpsFile {
    /// Only these addresses or CIDR ranges (`10.0.0.0/8`, `192.0.2.7`,
    /// `2001:db8::/32`); default: any.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Never these (checked first).
    #[serde(default)]
    pub deny: Option<Vec<String>>,
    /// Which address: client_ip (default: trusted X-Forwarded-For hops
    /// apply, Envoy's remote_ip) or peer (the TCP peer, direct_remote_ip).
    #[serde(default)]
    pub address: Option<SourceAddress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceAddress {
    /// The client IP after the listener's trusted X-Forwarded-For hops.
    #[default]
    ClientIp,
    /// The TCP peer's address.
    Peer,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashPolicyFile {
    /// Hash this request header's value (its lines joined by ",").
    #[serde(default)]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Hash this query parameter's value (as sent, not decoded).
    #[serde(default)]
    pub query_parameter: Option<String>,
    /// Hash the mTLS identity.
    #[serde(default)]
    pub identity: Option<bool>,
    /// Hash the client IP (trusted X-Forwarded-For hops apply).
    #[serde(default)]
    pub client_ip: Option<bool>,
    /// When this entry gives a key, ignore the entries after it (default false).
    #[serde(default)]
    pub terminal: Option<bool>,
    /// With `cookie`: when the request has no such cookie, sift makes one
    /// (a random value), hashes it, and sets it on the answer with this
    /// Max-Age (0s: a session cookie), so the client's next requests go to
    /// the same endpoint (Envoy's cookie `ttl`).
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// With `ttl`: the made cookie's Path (default none: the browser's
    /// default, the request path's directory).
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    /// Wait before sending a share of the requests upstream.
    #[serde(default)]
    pub delay: Option<FaultDelayFile>,
    /// Answer a share of the requests with this status instead of
    /// forwarding them.
    #[serde(default)]
    pub abort: Option<FaultAbortFile>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayFile {
    /// How long (more than 0, at most 1h).
    pub fixed: Dur,
    /// Share of requests delayed, 0 to 100 (default 100).
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortFile {
    /// Status of the answer, 200 to 599.
    pub status: u16,
    /// Share of requests aborted, 0 to 100 (default 100).
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionFile {
    /// Answers whose Content-Length is below this are sent as they are
    /// (default 256B).
    #[serde(default)]
    pub min_bytes: Option<Bytes>,
    /// Media types compressed (default: text/html, text/plain, text/css,
    /// text/xml, text/javascript, application/json, application/javascript,
    /// application/xml, application/xhtml+xml, image/svg+xml).
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    /// zlib level, 1 (fastest) to 9 (smallest); default 6.
    #[serde(default)]
    pub level: Option<u32>,
    /// Codings offered, in sift's order of preference when the client
    /// accepts several equally: `gzip`, `br` (default [gzip]).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Brotli quality, 0 (fastest) to 11 (smallest); default 4.
    #[serde(default)]
    pub brotli_quality: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Origins allowed: "https://app.example.com", "https://*.example.com"
    /// (any subdomain), "http://localhost:3000", or "*" (any). Required.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows (default GET, HEAD, POST).
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight allows (default none beyond the
    /// CORS-safelisted ones); ["*"]: whatever the preflight asks for.
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers a page's script may read (default none beyond the
    /// safelisted ones).
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight answer (default: not sent).
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Let pages send cookies and read the answers (default false; not
    /// with "*").
    #[serde(default)]
    pub allow_credentials: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrfFile {
    /// `enforce` (default): refused with 403 csrf-denied. `shadow`: let
    /// through, counted (`result="shadow_denied"`) and logged, to see what
    /// enforcing would refuse (Envoy's shadow_enabled).
    #[serde(default)]
    pub mode: Option<CsrfMode>,
    /// Other sites whose pages may send state-changing requests (Envoy's
    /// additional_origins): "https://admin.example.com",
    /// "https://*.example.com" (any subdomain), "http://localhost:3000".
    #[serde(default)]
    pub trusted_origins: Vec<String>,
    /// Also refuse state-changing requests with no Origin, Referer or
    /// Sec-Fetch-Site (default false: API clients, services and scripts
    /// send none; Envoy refuses them). For routes only browsers use.
    #[serde(default)]
    pub require_origin: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CsrfMode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// The cluster that gets the copies (its answers are read and dropped).
    pub cluster: String,
    /// Share of the route's requests copied, 0 to 100 (default 100;
    /// fractions like 0.5 allowed). Sampled by the request id, so one id
    /// is always mirrored or never.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Largest request body copied (default 64KiB, at most 16MiB). A
    /// request with a longer body is not mirrored (counted
    /// `skipped_too_large`): the mirror never gets a cut body.
    #[serde(default)]
    pub max_body: Option<Bytes>,
    /// Append `-shadow` to the copy's host (default true, as Envoy does):
    /// `api:8080` becomes `api-shadow:8080`, so the mirror's app and logs
    /// can tell copies apart. false sends the primary's host unchanged
    /// (Envoy's `disable_shadow_host_suffix_append`), for a mirror that
    /// routes or checks by host name.
    #[serde(default)]
    pub host_suffix: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    /// What replaces the part of the path that the route's path match
    /// matched (the whole path for an `exact` match).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Every match of `pattern` in the path replaced by `substitution`
    /// (`\1` names a capture group): Envoy's `regex_rewrite`.
    #[serde(default)]
    pub regex: Option<RegexRewriteFile>,
    /// The Host (`:authority`) sent upstream (Envoy's `host_rewrite_literal`).
    #[serde(default)]
    pub host: Option<String>,
    /// The Host sent upstream is the chosen endpoint's name and port
    /// (Envoy's `auto_host_rewrite`).
    #[serde(default)]
    pub auto_host: Option<bool>,
}

/// `routes[].adaptive_concurrency` (Envoy's gradient controller; its
/// names in the docs).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrencyFile {
    /// Percentile of a window's latencies taken as its RTT (default 50).
    #[serde(default)]
    pub sample_percentile: Option<f64>,
    /// How often the limit is recomputed (default 100ms).
    #[serde(default)]
    pub update_interval: Option<Dur>,
    /// Highest limit (default 1000).
    #[serde(default)]
    pub max_limit: Option<u32>,
    /// How often the minimum RTT is measured again (default 60s).
    #[serde(default)]
    pub min_rtt_interval: Option<Dur>,
    /// Requests measured for the minimum RTT (default 50).
    #[serde(default)]
    pub min_rtt_requests: Option<u32>,
    /// Random share added to min_rtt_interval, percent (default 10).
    #[serde(default)]
    pub jitter_percent: Option<f64>,
    /// The limit while measuring, and the lowest (default 3).
    #[serde(default)]
    pub min_concurrency: Option<u32>,
    /// Latency allowed over the minimum RTT, percent (default 25).
    #[serde(default)]
    pub buffer_percent: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteFile {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    /// `http` or `https` (default: the request's).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host name (default: the request's).
    #[serde(default)]
    pub host: Option<String>,
    /// Port (default: the request's, or none when `scheme` or `host` is given).
    #[serde(default)]
    pub port: Option<u16>,
    /// Replace the whole path.
    #[serde(default)]
    pub path: Option<String>,
    /// Replace the matched path prefix (as `rewrite.prefix`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default)]
    pub code: Option<u16>,
    /// Drop the query string (default: keep it).
    #[serde(default)]
    pub strip_query: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseFile {
    /// Status code, 200..=599.
    pub status: u16,
    /// Response body (default: empty; at most 64KiB).
    #[serde(default)]
    pub body: Option<String>,
    /// Content-Type of the body (default `text/plain; charset=utf-8`).
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    /// The stable version: one of the route's `clusters`.
    pub stable: String,
    /// The canary version: one of the route's `clusters`.
    pub canary: String,
    /// Keep each user on one version: exactly one of header, cookie,
    /// identity, client_ip. Without it requests are split at random.
    #[serde(default)]
    pub sticky: Option<StickyFile>,
    /// Let a request force a version with `HEADER: always|never`.
    #[serde(default, rename = "override")]
    pub override_header: Option<CanaryOverrideFile>,
    /// Response header naming the version that answered (e.g. x-sift-version).
    #[serde(default)]
    pub version_header: Option<String>,
    /// Progressive rollout with automatic rollback.
    #[serde(default)]
    pub rollout: Option<RolloutFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    /// Hash this request header's value.
    #[serde(default)]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Hash the mTLS identity.
    #[serde(default)]
    pub identity: Option<bool>,
    /// Hash the client IP (trusted X-Forwarded-For hops apply).
    #[serde(default)]
    pub client_ip: Option<bool>,
    /// Hash this query parameter's value (as sent, not decoded).
    #[serde(default)]
    pub query_parameter: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryOverrideFile {
    /// Header name (default x-sift-canary).
    #[serde(default)]
    pub header: Option<String>,
    /// Only these mTLS identities may force a version (default: anyone).
    #[serde(default)]
    pub identities: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStart {
    /// Start when the route is (re)loaded with a changed canary.
    OnLoad,
    /// Start with POST /canary/{route}/rollout (default).
    #[default]
    Manual,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// Canary weights in percent (default [10, 50, 100]); reaching 100 promotes.
    #[serde(default)]
    pub steps: Option<Vec<u32>>,
    /// Time per step before its analysis can pass (default 5m).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Requests each version needs in the step before a verdict (default 100).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Canary 5xx rate may exceed stable's by this many points (default 0.5).
    #[serde(default)]
    pub max_5xx_delta: Option<f64>,
    /// Canary p95 may be at most this times stable's (default 1.10).
    #[serde(default)]
    pub p95_ratio: Option<f64>,
    /// Canary p99 may be at most this times stable's (default 1.15).
    #[serde(default)]
    pub p99_ratio: Option<f64>,
    /// Canary success rate (non-5xx), percent (default 99.5).
    #[serde(default)]
    pub min_success_rate: Option<f64>,
    /// A canary slower than stable by less than this never fails a latency
    /// check (default 3ms): at a few ms, a ratio measures noise.
    #[serde(default)]
    pub latency_tolerance: Option<Dur>,
    /// on_load or manual (default manual).
    #[serde(default)]
    pub start: Option<RolloutStart>,
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
    /// Query parameter conditions; all must hold.
    #[serde(default)]
    pub query: Option<Vec<QueryMatchFile>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatchFile {
    /// The path (without query) equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary: `/api` matches
    /// `/api` and `/api/x`, not `/apix`. A prefix ending in `/` is a plain prefix.
    Prefix(String),
    /// The whole path (without query) matches this regular expression
    /// (Rust `regex` syntax, RE2's family: linear time, no look-around).
    Regex(String),
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
    /// The whole value matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMatchFile {
    /// Parameter name (case-sensitive, compared percent-decoded).
    pub name: String,
    /// A value equals this (percent-decoded, `+` read as a space).
    #[serde(default)]
    pub exact: Option<String>,
    /// A value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A whole value matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// true: the parameter is there (any value, or none); false: it is absent.
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

/// How a cluster's endpoints are found (Envoy's cluster `type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// IP addresses only.
    Static,
    /// One endpoint per configured name, resolved for each new connection.
    #[default]
    LogicalDns,
    /// Every address of every name is an endpoint, refreshed periodically.
    StrictDns,
}

/// Which addresses a DNS name gives (Envoy's `dns_lookup_family`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DnsFamily {
    /// IPv6 addresses if the name has any, else IPv4.
    #[default]
    Auto,
    V4Only,
    V6Only,
    /// IPv4 addresses if the name has any, else IPv6.
    V4Preferred,
    /// Both.
    All,
}

/// The top-level `dns`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// DNS servers (ip or ip:port, port 53 by default) sift asks itself,
    /// in order, over UDP (TCP for truncated answers), with no search
    /// list: give fully qualified names. Default: none, the system's
    /// resolver (getaddrinfo: /etc/hosts, resolv.conf with its search
    /// domains).
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// Longest wait for one server's answer (default 2s).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn (default).
    #[default]
    RoundRobin,
    /// Power of two random choices, the one with fewer requests in flight.
    LeastRequest,
    /// Consistent hashing on a ring (Envoy's ring_hash, ketama): the
    /// route's `hash_policy` key picks the endpoint; an endpoint's removal
    /// moves only its own keys.
    RingHash,
    /// Consistent hashing with a Maglev lookup table (65,537 entries):
    /// spreads keys more evenly than the ring.
    Maglev,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// The client's protocol: HTTP/2 requests over HTTP/2, HTTP/1.x ones
    /// over HTTP/1.1 (Envoy's `use_downstream_protocol_config`, Istio's
    /// `useClientProtocol`), for an app that serves both on one port.
    Client,
}

/// An endpoint: `host:port`, or `{address: host:port, weight: N, priority: P}`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EndpointFile {
    Address(String),
    Weighted(WeightedEndpointFile),
}

// By hand, not `untagged`: serde's untagged enums buffer the value and lose
// the YAML reader's typing, so `weight: 3` would not read as a number.
impl<'de> Deserialize<'de> for EndpointFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EndpointFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("host:port, or {address: host:port, weight: N, priority: P}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointFile, E> {
                Ok(EndpointFile::Address(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<EndpointFile, A::Error> {
                WeightedEndpointFile::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(EndpointFile::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpointFile {
    /// host:port.
    pub address: String,
    /// Share of the cluster's requests relative to the other endpoints
    /// (1 to 1000; default 1), as Envoy's load_balancing_weight and
    /// nginx's `server ... weight=N`.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Priority level (0 to 127; default 0, the highest), as Envoy's
    /// endpoint `priority`: requests go to level 0 while enough of it is
    /// healthy, and spill to the next levels as it is not (failover).
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Unique name, used in routes, metrics and logs.
    pub name: String,
    /// Endpoints as host:port, or {address, weight}. DNS names are
    /// resolved again for every new connection. An empty list is allowed:
    /// requests then get 503.
    #[serde(default)]
    pub endpoints: Vec<EndpointFile>,
    /// How DNS names among the endpoints become endpoints: logical_dns
    /// (default: one endpoint per name, resolved for each new connection),
    /// strict_dns (every address a name resolves to is an endpoint of its
    /// own, looked up again every `dns_refresh_rate`; a Kubernetes headless
    /// Service's pods) or static (IP addresses only).
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// strict_dns: how often the names are looked up again (default 5s).
    #[serde(default)]
    pub dns_refresh_rate: Option<Dur>,
    /// strict_dns: which addresses a name gives: auto (default: IPv6 if it
    /// has any, else IPv4), v4_only, v6_only, v4_preferred or all.
    #[serde(default)]
    pub dns_lookup_family: Option<DnsFamily>,
    /// strict_dns with `dns.resolvers`: look again when the records' TTL
    /// runs out (at least 1 s apart) instead of every dns_refresh_rate
    /// (default false).
    #[serde(default)]
    pub respect_dns_ttl: Option<bool>,
    /// strict_dns: how soon to look again after a failed lookup (default:
    /// dns_refresh_rate).
    #[serde(default)]
    pub dns_failure_refresh_rate: Option<Dur>,
    /// round_robin (default), least_request, ring_hash or maglev (the last
    /// two hash the route's `hash_policy` key).
    #[serde(default)]
    pub lb: Option<LbPolicy>,
    /// http1 (default) or http2.
    #[serde(default)]
    pub protocol: Option<UpstreamProtocol>,
    /// Time allowed to open a TCP connection (default 1s). Over it: 502.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// TCP keepalive probes on upstream connections (default: off), so a
    /// pooled connection to a vanished peer is found dead.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepaliveFile>,
    /// `protocol: http2` only: PING each connection every `interval` and
    /// close it when a PING goes unanswered for `timeout` (default: off).
    #[serde(default)]
    pub http2_keepalive: Option<Http2KeepaliveFile>,
    /// Default time to the response head for routes without a timeout (default 15s). Over it: 504.
    #[serde(default)]
    pub request_timeout: Option<Dur>,
    /// Idle pooled connections are closed after this (default 60s).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// Longest wait for the next piece of a response body once its head
    /// has arrived (default 300s, as Envoy's stream idle timeout; nginx's
    /// proxy_read_timeout). Over it the response is cut (the client sees
    /// an incomplete body, never a silently short one).
    #[serde(default)]
    pub read_timeout: Option<Dur>,
    /// Connection pool limits.
    #[serde(default)]
    pub pool: Option<PoolFile>,
    /// Envoy-style thresholds; overflow gets 503 circuit-open.
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakersFile>,
    /// Passive health: eject endpoints that fail.
    #[serde(default)]
    pub outlier_detection: Option<OutlierFile>,
    /// Active health: probe every endpoint on a timer; unhealthy ones get
    /// no requests.
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    /// Ramp up the share of an endpoint that joined the cluster (a reload,
    /// a DNS refresh) or passed its health checks again (Envoy's
    /// slow_start_config); round_robin and least_request only.
    #[serde(default)]
    pub slow_start: Option<SlowStartFile>,
    /// With endpoint priorities: a level counts as fully healthy while its
    /// healthy share times this factor (percent; default 140, Envoy's 1.4)
    /// is at least 100 %; below, its load spills to the next level.
    #[serde(default)]
    pub overprovisioning_factor: Option<u32>,
    /// Retries in flight may not exceed this share of active requests.
    #[serde(default)]
    pub retry_budget: Option<RetryBudgetFile>,
    /// Originate TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersFile {
    /// Most open upstream connections (HTTP/1.1; default 1024).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most requests waiting for a connection (HTTP/1.1; default 1024).
    #[serde(default)]
    pub max_pending_requests: Option<usize>,
    /// Most requests in flight to the cluster (default 1024).
    #[serde(default)]
    pub max_requests: Option<usize>,
    /// Most retries in flight when retry_budget is disabled (default 3).
    #[serde(default)]
    pub max_retries: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Eject after this many 5xx in a row (default 5; 0 = off).
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many gateway errors in a row: connect failure,
    /// reset, timeout, 502/503/504 (default 5; 0 = off).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// The ejection count decays by one per interval spent healthy (default 10s).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Ejection time = base × number of ejections (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<Dur>,
    /// Cap on the ejection time (default 300s).
    #[serde(default)]
    pub max_ejection_time: Option<Dur>,
    /// Most endpoints ejected at once, in percent (default 10; at least one may be).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Optional failure-rate breaker over a sliding window.
    #[serde(default)]
    pub failure_rate: Option<FailureRateFile>,
    /// Optional success-rate detection: endpoints compared every interval
    /// (Envoy's success_rate_*).
    #[serde(default)]
    pub success_rate: Option<SuccessRateFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateFile {
    /// Fewest endpoints with enough requests for a verdict (default 5).
    #[serde(default)]
    pub minimum_hosts: Option<u32>,
    /// Fewest requests in the interval for an endpoint to count (default 100).
    #[serde(default)]
    pub request_volume: Option<u32>,
    /// Ejected below mean − this × standard deviation (default 1.9).
    #[serde(default)]
    pub stdev_factor: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// http (default): GET `path`, passing on an expected status; tcp: a
    /// connect (and the TLS handshake when the cluster has tls).
    #[serde(default)]
    pub kind: Option<HealthKindFile>,
    /// Path (and query) of the HTTP probe (default /).
    #[serde(default)]
    pub path: Option<String>,
    /// Host header of the HTTP probe (default: the endpoint's host:port).
    #[serde(default)]
    pub host: Option<String>,
    /// kind grpc: the service to ask about (default "": the server).
    #[serde(default)]
    pub service: Option<String>,
    /// Time between two probes of an endpoint (default 5s).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// A random extra wait of up to this before each round of probes, and
    /// before the first (Envoy's interval_jitter and initial_jitter), so
    /// that many proxies do not probe in step (default 0s).
    #[serde(default)]
    pub jitter: Option<Dur>,
    /// A probe without an answer in this time fails (default 1s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Failures in a row that make a healthy endpoint unhealthy (default 3).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Passes in a row that make an unhealthy endpoint healthy (default 2).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Statuses that pass: codes (200) or inclusive ranges ("200-399", the
    /// default, as Kubernetes probes).
    #[serde(default)]
    pub expected_statuses: Option<Vec<StatusItem>>,
    /// Below this percent of healthy endpoints, balance over all of them
    /// (Envoy's healthy panic threshold; default 50; 0 = never).
    #[serde(default)]
    pub panic_threshold: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthKindFile {
    #[default]
    Http,
    Tcp,
    Grpc,
}

/// A status code or an inclusive range such as "200-299".
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusItem {
    Code(u16),
    Range(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureRateFile {
    /// Eject when this share of requests failed (percent).
    pub threshold_percent: u32,
    /// Window length (default 30s).
    #[serde(default)]
    pub window: Option<Dur>,
    /// No verdict with fewer requests in the window (default 20).
    #[serde(default)]
    pub min_requests: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetFile {
    /// false: use circuit_breakers.max_retries instead (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Share of active requests that may be retries (default 20).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Retries always allowed in flight regardless of load (default 3).
    #[serde(default)]
    pub min_concurrency: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Most idle keep-alive connections kept per endpoint (default 128).
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
    /// Close a connection after this many requests (HTTP/2: streams);
    /// Envoy's max_requests_per_connection (default none).
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Take no new request on a connection this old (default none);
    /// Envoy's max_connection_duration.
    #[serde(default)]
    pub max_connection_duration: Option<Dur>,
}
