//! File shapes → validated model. Every problem is collected as a
//! [`ConfigError`] with its YAML path; nothing stops at the first one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::ConfigError;
use super::file::*;
use super::model::*;
use super::units::{Bytes, Dur};
use crate::policy::outlier::{FailureRateSpec, OutlierSpec};
use crate::policy::ratelimit::{KeyPart, Override, RateLimitSpec};
use crate::policy::retry::{BudgetSpec, RetrySpec};
use crate::upstream::health::{HealthKind, HealthSpec};

/// Headers a route may not set or remove: they frame the message or belong to sift.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

struct Errs(Vec<ConfigError>);

impl Errs {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

pub fn build(f: &FileConfig) -> Result<Config, Vec<ConfigError>> {
    let mut e = Errs(Vec::new());

    let workers = match f.workers {
        Some(0) => {
            e.push("workers", "must be at least 1");
            None
        }
        Some(n) if n > 1024 => {
            e.push("workers", format!("{n} is more than 1024"));
            None
        }
        w => w,
    };

    let log = build_log(f.log.as_ref(), &mut e);
    let admin = build_admin(f.admin.as_ref(), &mut e);
    let r = f.reload.clone().unwrap_or_default();
    let reload = ReloadConfig {
        watch: r.watch.unwrap_or(true),
        interval: positive(r.interval, Dur::millis(500), "reload.interval", &mut e),
    };
    let s = f.shutdown.clone().unwrap_or_default();
    let shutdown = ShutdownConfig {
        delay: s.delay.unwrap_or(Dur::secs(0)),
        drain_timeout: s.drain_timeout.unwrap_or(Dur::secs(30)),
    };

    let dns = build_dns(f.dns.as_ref(), &mut e);
    let upgrade = f.upgrade.as_ref().and_then(|u| match u.socket.as_deref() {
        None | Some("") => {
            e.push("upgrade.socket", "a path is required");
            None
        }
        // sockaddr_un holds 108 bytes with the terminating NUL.
        Some(p) if p.len() > 107 => {
            e.push(
                "upgrade.socket",
                format!(
                    "{} bytes is longer than a Unix socket path may be (107)",
                    p.len()
                ),
            );
            None
        }
        Some(p) => Some(UpgradeConfig {
            socket: std::path::PathBuf::from(p),
        }),
    });
    let local_replies = build_local_replies(f.local_replies.as_ref(), &mut e);
    let clusters = build_clusters(&f.clusters, &dns, &mut e);
    let cluster_names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let filters = build_filters(&f.filters, &mut e);
    let cluster_file_names: HashSet<&str> = f.clusters.iter().map(|c| c.name.as_str()).collect();
    let jwt_providers = build_jwt_providers(&f.jwt_providers, &cluster_file_names, &mut e);
    let routes = build_routes(
        &f.routes,
        &cluster_names,
        &f.clusters,
        &filters,
        &jwt_providers,
        &mut e,
    );
    let fp = f.filter_pool.clone().unwrap_or_default();
    let filter_pool = FilterPoolSpec {
        threads: match fp.threads {
            Some(0) => {
                e.push("filter_pool.threads", "must be at least 1");
                None
            }
            Some(n) if n > 1024 => {
                e.push("filter_pool.threads", format!("{n} is more than 1024"));
                None
            }
            t => t,
        },
        queue: fp.queue.unwrap_or(1024).min(1 << 20),
    };
    let overload = OverloadSpec {
        max_buffered_bytes: match f.overload.as_ref().and_then(|o| o.max_buffered_bytes) {
            None | Some(crate::config::file::BufferLimit::Auto) => {
                Some(crate::budget::auto_limit())
            }
            Some(crate::config::file::BufferLimit::Size(b)) => (b.0 > 0).then_some(b.0),
        },
        max_connections: match f.overload.as_ref().and_then(|o| o.max_connections) {
            Some(0) => {
                e.push("overload.max_connections", "must be at least 1");
                None
            }
            n => n,
        },
        max_spooled_bytes: match f.overload.as_ref().and_then(|o| o.max_spooled_bytes) {
            Some(b) if b.0 == 0 => {
                e.push("overload.max_spooled_bytes", "must be more than 0");
                None
            }
            b => b.map(|b| b.0),
        },
    };
    let listeners = build_listeners(&f.listeners, &routes, &clusters, &mut e);
    let tracing = f.tracing.as_ref().map(|t| build_tracing(t, &mut e));
    let redis = f.redis.as_ref().map(|r| build_redis(r, &mut e));
    if redis.is_none() {
        let global = |scope: String, ls: &[RateLimitSpec], e: &mut Errs| {
            for (j, l) in ls.iter().enumerate().filter(|(_, l)| l.global) {
                e.push(
                    format!("{scope}.rate_limits[{j}].global"),
                    format!(
                        "rate limit {:?} is global but there is no top-level `redis` to count in",
                        l.name
                    ),
                );
            }
        };
        for (i, l) in listeners.iter().enumerate() {
            global(format!("listeners[{i}]"), &l.rate_limits, &mut e);
        }
        for (i, r) in routes.iter().enumerate() {
            global(format!("routes[{i}]"), &r.rate_limits, &mut e);
        }
    }

    let rate_limit_service = f
        .rate_limit_service
        .as_ref()
        .map(|r| build_rls(r, redis.is_some(), &mut e));
    if rate_limit_service.is_some()
        && !listeners
            .iter()
            .any(|l| l.serve == crate::config::file::Serve::Envoy)
    {
        e.push(
            "rate_limit_service",
            "it is served on `serve: envoy` listeners, and there is none",
        );
    }

    if let Some(admin) = &admin {
        for (i, l) in listeners.iter().enumerate() {
            let same_port = l.address.port() == admin.address.port() && l.address.port() != 0;
            let overlap = l.address.ip() == admin.address.ip()
                || l.address.ip().is_unspecified()
                || admin.address.ip().is_unspecified();
            if same_port && overlap {
                e.push(
                    format!("listeners[{i}].address"),
                    format!("{} is also the admin address", l.address),
                );
            }
        }
    }

    match admin {
        Some(admin) if e.0.is_empty() => Ok(Config {
            workers,
            log,
            admin,
            reload,
            shutdown,
            listeners,
            routes,
            clusters,
            filters,
            filter_pool,
            tracing,
            redis,
            dns,
            local_replies,
            rate_limit_service,
            upgrade,
            overload,
        }),
        _ => Err(e.0),
    }
}

fn build_local_replies(l: Option<&LocalRepliesFile>, e: &mut Errs) -> LocalReplies {
    let Some(l) = l else {
        return LocalReplies::default();
    };
    let kinds: Vec<&str> = crate::error::ErrorKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    let mut mappers = Vec::new();
    for (i, m) in l.mappers.iter().enumerate() {
        let p = format!("local_replies.mappers[{i}]");
        if m.errors.is_empty() && m.statuses.is_empty() {
            e.push(
                &p,
                "needs `errors` or `statuses` to say which answers it changes",
            );
        }
        for (j, k) in m.errors.iter().enumerate() {
            if !kinds.contains(&k.as_str()) {
                e.push(
                    format!("{p}.errors[{j}]"),
                    format!(
                        "{k:?} is not an error sift gives; one of {}",
                        kinds.join(", ")
                    ),
                );
            }
        }
        for (j, s) in m.statuses.iter().chain(m.status.iter()).enumerate() {
            if !(200..=599).contains(s) {
                e.push(
                    format!("{p}.statuses[{j}]"),
                    format!("{s} is not a status 200..=599"),
                );
            }
        }
        let body = match (&m.body, &m.body_file) {
            (Some(_), Some(_)) => {
                e.push(&p, "give `body` or `body_file`, not both");
                None
            }
            (Some(b), None) => Some(b.clone()),
            (None, Some(f)) => match std::fs::metadata(f) {
                Ok(md) if md.len() > 1 << 20 => {
                    e.push(
                        format!("{p}.body_file"),
                        format!("{f} is larger than 1 MiB"),
                    );
                    None
                }
                Ok(_) => match std::fs::read_to_string(f) {
                    Ok(t) => Some(t),
                    Err(err) => {
                        e.push(format!("{p}.body_file"), format!("cannot read {f}: {err}"));
                        None
                    }
                },
                Err(err) => {
                    e.push(format!("{p}.body_file"), format!("cannot read {f}: {err}"));
                    None
                }
            },
            (None, None) => None,
        };
        let content_type = match &m.content_type {
            Some(c) => match HeaderValue::from_str(c) {
                Ok(v) if c.contains('/') => Some(v),
                _ => {
                    e.push(
                        format!("{p}.content_type"),
                        format!("{c:?} is not a media type"),
                    );
                    None
                }
            },
            None => None,
        };
        if body.is_none() && m.status.is_none() && content_type.is_none() {
            e.push(&p, "changes nothing: give `body`, `body_file` or `status`");
        }
        mappers.push(ReplyMapper {
            errors: m.errors.clone(),
            statuses: m.statuses.clone(),
            status: m.status,
            body,
            content_type,
        });
    }
    LocalReplies {
        format: l.format.unwrap_or_default(),
        mappers,
    }
}

fn build_dns(d: Option<&DnsFile>, e: &mut Errs) -> crate::dns::ResolverSpec {
    let Some(d) = d else {
        return crate::dns::ResolverSpec::default();
    };
    let mut servers = Vec::new();
    for (i, r) in d.resolvers.iter().enumerate() {
        let parsed = r.parse::<SocketAddr>().or_else(|_| {
            r.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) if a.port() != 0 => servers.push(a),
            _ => e.push(
                format!("dns.resolvers[{i}]"),
                format!("{r:?} is not an IP address with an optional port (e.g. \"10.96.0.10\", \"127.0.0.1:5353\")"),
            ),
        }
    }
    crate::dns::ResolverSpec {
        servers,
        timeout: positive(d.timeout, Dur::secs(2), "dns.timeout", e),
    }
}

/// The top-level `rate_limit_service`.
fn build_rls(
    f: &crate::config::file::RateLimitServiceFile,
    has_redis: bool,
    e: &mut Errs,
) -> crate::policy::rls::RlsSpec {
    use crate::config::file::RlsStore;
    use crate::policy::rls::{DomainSpec, RlsSpec};
    let store = f.store.unwrap_or_default();
    if store == RlsStore::Redis && !has_redis {
        e.push(
            "rate_limit_service.store",
            "redis, but there is no top-level `redis` to count in",
        );
    }
    let max_keys = f.max_keys.unwrap_or(100_000);
    if !(1..=10_000_000).contains(&max_keys) {
        e.push("rate_limit_service.max_keys", "must be 1..=10000000");
    }
    let mut seen = HashSet::new();
    let mut domains = Vec::new();
    for (i, d) in f.domains.iter().enumerate() {
        let p = format!("rate_limit_service.domains[{i}]");
        if d.domain.is_empty() {
            e.push(format!("{p}.domain"), "must not be empty");
        } else if !seen.insert(d.domain.clone()) {
            e.push(
                format!("{p}.domain"),
                format!("domain {:?} is given twice", d.domain),
            );
        }
        let mut names = HashSet::new();
        let mut replaces = Vec::new();
        let descriptors = build_rls_nodes(&d.descriptors, &p, 1, &mut names, &mut replaces, e);
        for (path, name) in replaces {
            if !names.contains(&name) {
                e.push(
                    path,
                    format!("no limit of domain {:?} is named {name:?}", d.domain),
                );
            }
        }
        domains.push(DomainSpec {
            domain: d.domain.clone(),
            descriptors,
        });
    }
    RlsSpec {
        store,
        response_headers: f.response_headers.unwrap_or(false),
        max_keys: max_keys.clamp(1, 10_000_000),
        domains,
    }
}

fn build_rls_nodes(
    nodes: &[crate::config::file::RlsDescriptorFile],
    p: &str,
    depth: usize,
    names: &mut HashSet<String>,
    replaces: &mut Vec<(String, String)>,
    e: &mut Errs,
) -> Vec<crate::policy::rls::NodeSpec> {
    use crate::policy::rls::{LimitSpec, NodeSpec};
    if depth > 16 {
        e.push(p, "descriptors nest more than 16 levels deep");
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let np = format!("{p}.descriptors[{i}]");
        if n.key.is_empty() {
            e.push(format!("{np}.key"), "must not be empty");
        }
        if n.value.as_deref() == Some("") {
            e.push(
                format!("{np}.value"),
                "must not be empty (leave it out to match any value)",
            );
        }
        if !seen.insert((n.key.clone(), n.value.clone())) {
            e.push(
                np.clone(),
                format!(
                    "another descriptor at this level has key {:?} and {}",
                    n.key,
                    n.value
                        .as_ref()
                        .map_or("no value".to_string(), |v| format!("value {v:?}"))
                ),
            );
        }
        let rate_limit = n.rate_limit.as_ref().map(|l| {
            let lp = format!("{np}.rate_limit");
            let unlimited = l.unlimited.unwrap_or(false);
            if let Some(name) = &l.name {
                let ok = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                if !ok {
                    e.push(
                        format!("{lp}.name"),
                        format!("{name:?} must be 1-128 visible ASCII characters, no '\"' or '\\'"),
                    );
                }
                names.insert(name.clone());
            }
            for (j, r) in l.replaces.iter().enumerate() {
                if Some(&r.name) == l.name.as_ref() {
                    e.push(
                        format!("{lp}.replaces[{j}]"),
                        "a limit cannot replace itself",
                    );
                } else {
                    replaces.push((format!("{lp}.replaces[{j}]"), r.name.clone()));
                }
            }
            if unlimited {
                if l.unit.is_some() || l.requests_per_unit.is_some() || l.burst.is_some() {
                    e.push(
                        lp.clone(),
                        "unlimited takes no unit, requests_per_unit or burst",
                    );
                }
            } else {
                if l.unit.is_none() {
                    e.push(format!("{lp}.unit"), "is required (or unlimited: true)");
                }
                match l.requests_per_unit {
                    None => e.push(
                        format!("{lp}.requests_per_unit"),
                        "is required (or unlimited: true)",
                    ),
                    Some(0) => e.push(format!("{lp}.requests_per_unit"), "must be at least 1"),
                    _ => {}
                }
                if l.burst == Some(0) {
                    e.push(format!("{lp}.burst"), "must be at least 1");
                }
            }
            let rpu = l.requests_per_unit.unwrap_or(1).max(1);
            LimitSpec {
                name: l.name.clone(),
                requests_per_unit: rpu,
                unit: l.unit.unwrap_or(crate::config::file::RlsUnit::Second),
                burst: l.burst.unwrap_or(rpu).max(1),
                unlimited,
                replaces: l.replaces.iter().map(|r| r.name.clone()).collect(),
            }
        });
        out.push(NodeSpec {
            key: n.key.clone(),
            value: n.value.clone(),
            rate_limit,
            shadow_mode: n.shadow_mode.unwrap_or(false),
            descriptors: build_rls_nodes(&n.descriptors, &np, depth + 1, names, replaces, e),
        });
    }
    out
}

fn build_redis(
    r: &crate::config::file::RedisFile,
    e: &mut Errs,
) -> crate::policy::redis::RedisSpec {
    if parse_endpoint(&r.address).is_err() {
        e.push(
            "redis.address",
            format!(
                "{:?} is not host:port (e.g. \"redis.default.svc:6379\")",
                r.address
            ),
        );
    }
    let timeout = positive(r.timeout, Dur::millis(50), "redis.timeout", e);
    let max_connections = match r.max_connections {
        Some(0) => {
            e.push("redis.max_connections", "must be at least 1");
            1
        }
        Some(n) => n.min(1024),
        None => 16,
    };
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "sift".into());
    if key_prefix.is_empty() || key_prefix.bytes().any(|b| !b.is_ascii_graphic()) {
        e.push(
            "redis.key_prefix",
            "must be visible ASCII characters, at least one",
        );
    }
    if r.username.is_some() && r.password.is_none() {
        e.push("redis.username", "needs a password");
    }
    let tls = r
        .tls
        .as_ref()
        .map(|t| build_upstream_tls(t, "redis.tls", e));
    crate::policy::redis::RedisSpec {
        tls,
        address: r.address.clone(),
        timeout,
        failure_mode: r.failure_mode.unwrap_or_default(),
        key_prefix,
        max_connections,
        username: r.username.clone(),
        password: r.password.clone(),
    }
}

fn build_tracing(t: &TracingFile, e: &mut Errs) -> crate::trace::TracingSpec {
    let protocol = match t.protocol {
        Some(super::file::OtlpProtocolFile::Grpc) => crate::trace::OtlpProtocol::Grpc,
        _ => crate::trace::OtlpProtocol::Http,
    };
    let (authority, path) = match t.endpoint.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() =>
        {
            let https = u.scheme_str() == Some("https");
            if https != t.tls.is_some() {
                e.push(
                    "tracing.tls",
                    if https {
                        "an https endpoint needs `tls` (at least `ca`: the collector's CA, or `system` for the system's bundle)"
                    } else {
                        "`tls` needs an https endpoint"
                    },
                );
            }
            let path = match (u.path_and_query().map(|p| p.as_str()), protocol) {
                (None | Some("") | Some("/"), crate::trace::OtlpProtocol::Http) => {
                    "/v1/traces".to_string()
                }
                (Some(p), crate::trace::OtlpProtocol::Http) => p.to_string(),
                (None | Some("") | Some("/"), crate::trace::OtlpProtocol::Grpc) => {
                    crate::trace::OTLP_GRPC_PATH.to_string()
                }
                (Some(p), crate::trace::OtlpProtocol::Grpc) => {
                    e.push(
                        "tracing.endpoint",
                        format!(
                            "{p:?}: an OTLP/gRPC endpoint has no path (e.g. \"http://127.0.0.1:4317\"; the method is TraceService/Export)"
                        ),
                    );
                    String::new()
                }
            };
            let a = u
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let a = match (u.port_u16(), https) {
                (Some(_), _) => a,
                (None, false) => format!("{a}:80"),
                (None, true) => format!("{a}:443"),
            };
            (a, path)
        }
        _ => {
            e.push(
                "tracing.endpoint",
                format!(
                    "{:?} is not an http or https URL (e.g. \"http://127.0.0.1:4318/v1/traces\")",
                    t.endpoint
                ),
            );
            (String::new(), String::new())
        }
    };
    let sampling = t.sampling.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling) {
        e.push(
            "tracing.sampling",
            format!("{sampling} is not within 0..=1"),
        );
    }
    let positive = |v: Option<usize>, d: usize, key: &str, e: &mut Errs| match v {
        Some(0) => {
            e.push(format!("tracing.{key}"), "must be at least 1");
            d
        }
        Some(n) => n.min(1 << 20),
        None => d,
    };
    let service_name = t.service_name.clone().unwrap_or_else(|| "sift".into());
    if service_name.is_empty() {
        e.push("tracing.service_name", "is empty");
    }
    let tls = t.tls.as_ref().map(|tls| {
        let spec = build_upstream_tls(tls, "tracing.tls", e);
        // The files are read now, so a config that passes can export.
        if let Err(err) = crate::tls::UpstreamTls::new(spec.clone(), Vec::new()) {
            e.push("tracing.tls", err.to_string());
        }
        spec
    });
    let mut headers = Vec::new();
    for (k, v) in t.headers.iter().flatten() {
        let p = format!("tracing.headers.{k}");
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(_)) => {
                // The request's own framing and protocol fields are sift's.
                let own = matches!(
                    n.as_str(),
                    "host"
                        | "content-type"
                        | "content-length"
                        | "te"
                        | "connection"
                        | "transfer-encoding"
                        | "upgrade"
                        | "keep-alive"
                ) || n.as_str().starts_with("grpc-")
                    || n.as_str().starts_with(':');
                if own {
                    e.push(p, "is set by sift for the export request");
                } else {
                    headers.push((n.as_str().to_string(), v.clone()));
                }
            }
            (Err(_), _) => e.push(p, "is not a header name"),
            (_, Err(_)) => e.push(p, "is not a header value (visible ASCII and spaces)"),
        }
    }
    crate::trace::TracingSpec {
        authority,
        path,
        tls,
        headers,
        protocol,
        service_name,
        sampling: sampling.clamp(0.0, 1.0),
        max_queue: positive(t.max_queue, 2048, "max_queue", e),
        batch_size: positive(t.batch_size, 512, "batch_size", e),
        flush_interval: match t.flush_interval {
            Some(d) if d.0.is_zero() => {
                e.push("tracing.flush_interval", "must be greater than 0");
                Duration::from_secs(1)
            }
            Some(d) => d.0,
            None => Duration::from_secs(1),
        },
    }
}

fn positive(v: Option<Dur>, default: Dur, path: &str, e: &mut Errs) -> Dur {
    match v {
        Some(d) if d.0.is_zero() => {
            e.push(path, "must be greater than 0");
            default
        }
        Some(d) => d,
        None => default,
    }
}

fn build_log(l: Option<&LogFile>, e: &mut Errs) -> LogConfig {
    let l = l.cloned().unwrap_or_default();
    let level = l
        .level
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        e.push(
            "log.level",
            format!("{level:?} is not one of error, warn, info, debug, trace"),
        );
    }
    let access_log_filter = l.access_log_filter.as_ref().map(|f| {
        let sample = f.sample.unwrap_or(1.0);
        if !(sample.is_finite() && (0.0..=1.0).contains(&sample)) {
            e.push(
                "log.access_log_filter.sample",
                format!("{sample} is not within 0..=1"),
            );
        }
        if let Some(m) = f.min_status.filter(|m| !(100..=599).contains(m)) {
            e.push(
                "log.access_log_filter.min_status",
                format!("{m} is not between 100 and 599"),
            );
        }
        for (i, p) in f.skip_paths.iter().flatten().enumerate() {
            if !p.starts_with('/') {
                e.push(
                    format!("log.access_log_filter.skip_paths[{i}]"),
                    format!("{p:?} does not start with '/'"),
                );
            }
        }
        std::sync::Arc::new(crate::config::model::AccessLogFilter {
            per_million: (sample.clamp(0.0, 1.0) * 1_000_000.0).round() as u32,
            min_status: f.min_status,
            slower_than: f.slower_than,
            skip_paths: f.skip_paths.clone().unwrap_or_default(),
        })
    });
    let access_log_path = l.access_log_path.as_ref().map(|p| {
        let path = std::path::PathBuf::from(p);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if p.is_empty() || p.ends_with('/') {
            e.push("log.access_log_path", format!("{p:?} is not a file path"));
        } else if path.is_dir() {
            e.push("log.access_log_path", format!("{p} is a directory"));
        } else if !dir.is_dir() {
            e.push(
                "log.access_log_path",
                format!(
                    "the directory {} of {p} does not exist (sift does not create it)",
                    dir.display()
                ),
            );
        }
        path
    });
    LogConfig {
        format: l.format.unwrap_or_default(),
        level,
        access_log: l.access_log.unwrap_or(true),
        access_log_path,
        access_log_combined: l.access_log_format
            == Some(crate::config::file::AccessLogFormatFile::Combined),
        access_log_filter,
    }
}

fn build_admin(a: Option<&AdminFile>, e: &mut Errs) -> Option<AdminConfig> {
    let addr = a
        .and_then(|a| a.address.clone())
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let write_from = match a.and_then(|a| a.write_from.as_ref()) {
        None => ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|c| c.parse::<Cidr>().ok())
            .collect(),
        Some(list) => cidr_list(list, "admin.write_from", e),
    };
    match addr.parse::<SocketAddr>() {
        Ok(address) => Some(AdminConfig {
            address,
            write_from,
        }),
        Err(_) => {
            e.push(
                "admin.address",
                format!("{addr:?} is not an IP:port socket address"),
            );
            None
        }
    }
}

fn build_listeners(
    ls: &[ListenerFile],
    routes: &[RouteSpec],
    clusters: &[ClusterSpec],
    e: &mut Errs,
) -> Vec<ListenerSpec> {
    if ls.is_empty() {
        e.push("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut addrs = HashMap::new();
    let route_index: HashMap<&str, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let mut out = Vec::new();
    // A route with no action (no cluster, answer, redirect or direct
    // response) admits requests for Envoy to forward: a proxy listener has
    // nothing to do with them, and a route no listener serves is a typo.
    let forwards = |r: &RouteSpec| {
        !r.backends.is_empty()
            || r.answer.is_some()
            || r.redirect.is_some()
            || r.direct_response.is_some()
    };
    let serves = |l: &ListenerFile, name: &str| {
        l.routes
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|n| n == name))
    };
    for (k, r) in routes.iter().enumerate() {
        if forwards(r) {
            continue;
        }
        let proxy = ls
            .iter()
            .find(|l| l.serve.unwrap_or_default() == Serve::Proxy && serves(l, &r.name));
        let envoy = ls
            .iter()
            .any(|l| l.serve == Some(Serve::Envoy) && serves(l, &r.name));
        match proxy {
            Some(l) => e.push(
                format!("routes[{k}]"),
                format!(
                    "needs `cluster` or `clusters` (or one of `answer`, `redirect`, `direct_response`): listener {:?} forwards its requests (only a `serve: envoy` listener's routes may have none)",
                    l.name
                ),
            ),
            None if !envoy => e.push(
                format!("routes[{k}]"),
                "needs `cluster` or `clusters` (or one of `answer`, `redirect`, `direct_response`)",
            ),
            None => {}
        }
    }
    for (i, l) in ls.iter().enumerate() {
        let p = format!("listeners[{i}]");
        check_name(&l.name, &format!("{p}.name"), &mut names, "listener", e);
        let address = match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if a.port() == 0 {
                    // Port 0 asks the OS for a free port: never a clash.
                } else if let Some(j) = addrs.insert(a, i) {
                    e.push(
                        format!("{p}.address"),
                        format!("{a} is already used by listeners[{j}]"),
                    );
                }
                Some(a)
            }
            Err(_) => {
                e.push(
                    format!("{p}.address"),
                    format!("{:?} is not an IP:port socket address", l.address),
                );
                None
            }
        };
        let route_indices = match &l.routes {
            None => (0..routes.len()).collect(),
            Some(names) => {
                let mut v = Vec::new();
                for (j, n) in names.iter().enumerate() {
                    match route_index.get(n.as_str()) {
                        Some(&k) => v.push(k),
                        None => e.push(
                            format!("{p}.routes[{j}]"),
                            format!("no route is named {n:?}"),
                        ),
                    }
                }
                v
            }
        };
        let limits = build_limits(l.limits.as_ref(), &format!("{p}.limits"), e);
        let serve = l.serve.unwrap_or_default();
        let tcp = build_tcp(l, serve, clusters, &p, e);
        if let Some(address) = address {
            out.push(ListenerSpec {
                name: l.name.clone(),
                address,
                protocol: l.protocol.unwrap_or_default(),
                serve: l.serve.unwrap_or_default(),
                proxy_protocol: l.proxy_protocol.unwrap_or_default(),
                route_indices,
                routes: l.routes.clone(),
                limits,
                x_forwarded_for: l
                    .forwarded
                    .as_ref()
                    .and_then(|f| f.x_forwarded_for)
                    .unwrap_or_default(),
                trusted_hops: l
                    .forwarded
                    .as_ref()
                    .and_then(|f| f.trusted_hops)
                    .unwrap_or(0),
                trusted_cidrs: build_trusted_cidrs(l.forwarded.as_ref(), &p, e),
                escaped_slashes: l.escaped_slashes.unwrap_or_default(),
                path_parameters: l.path_parameters.unwrap_or_default(),
                rate_limits: build_rate_limits(
                    l.rate_limits.as_deref(),
                    &format!("{p}.rate_limits"),
                    e,
                ),
                tls: l.tls.as_ref().map(|t| {
                    let mut spec = build_listener_tls(
                        t,
                        l.protocol.unwrap_or_default(),
                        &format!("{p}.tls"),
                        e,
                    );
                    if serve == Serve::Tcp {
                        // Not HTTP: no ALPN, so a client that offers its
                        // own (PostgreSQL's "postgresql") still connects.
                        spec.alpn.clear();
                    }
                    spec
                }),
                tcp,
                tcp_keepalive: l
                    .tcp_keepalive
                    .as_ref()
                    .map(|k| build_tcp_keepalive(k, &format!("{p}.tcp_keepalive"), e)),
                http2_keepalive: match &l.http2_keepalive {
                    Some(k) => build_http2_keepalive(k, &p, e),
                    None => Http2Keepalive {
                        interval: Dur::secs(30),
                        timeout: Dur::secs(20),
                    },
                },
            });
        }
    }
    out
}

/// `http2_keepalive` of a listener or cluster at `p`: a positive interval,
/// and a timeout (default 20s, hyper's).
fn build_http2_keepalive(k: &Http2KeepaliveFile, p: &str, e: &mut Errs) -> Http2Keepalive {
    Http2Keepalive {
        interval: positive(
            Some(k.interval),
            k.interval,
            &format!("{p}.http2_keepalive.interval"),
            e,
        ),
        timeout: positive(
            k.timeout,
            Dur::secs(20),
            &format!("{p}.http2_keepalive.timeout"),
            e,
        ),
    }
}

/// `forwarded.trusted_cidrs`: address ranges, not with `trusted_hops`.
fn build_trusted_cidrs(f: Option<&ForwardedFile>, p: &str, e: &mut Errs) -> Vec<Cidr> {
    let Some(f) = f else { return Vec::new() };
    let Some(list) = &f.trusted_cidrs else {
        return Vec::new();
    };
    if f.trusted_hops.is_some_and(|h| h > 0) {
        e.push(
            format!("{p}.forwarded.trusted_cidrs"),
            "give trusted_hops or trusted_cidrs, not both",
        );
    }
    cidr_list(list, &format!("{p}.forwarded.trusted_cidrs"), e)
}

/// A list of addresses or CIDR ranges, an error per bad entry at `p[i]`.
fn cidr_list(list: &[String], p: &str, e: &mut Errs) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c.parse::<Cidr>() {
            Ok(c) => out.push(c),
            Err(why) => e.push(format!("{p}[{i}]"), why),
        }
    }
    out
}

/// `tcp_keepalive`: whole seconds (the socket options count seconds) of
/// at least 1, and Linux's bound on probes.
fn build_tcp_keepalive(k: &TcpKeepaliveFile, p: &str, e: &mut Errs) -> TcpKeepalive {
    let secs = |d: Option<Dur>, key: &str, e: &mut Errs| {
        let d = d?;
        if d.0 < std::time::Duration::from_secs(1) || d.0.subsec_nanos() != 0 {
            e.push(
                format!("{p}.{key}"),
                format!("{d} is not a whole number of seconds ≥ 1s"),
            );
            return None;
        }
        Some(d)
    };
    let probes = match k.probes {
        Some(n) if !(1..=127).contains(&n) => {
            e.push(format!("{p}.probes"), format!("{n} is not in 1..=127"));
            None
        }
        n => n,
    };
    TcpKeepalive {
        time: secs(k.time, "time", e),
        interval: secs(k.interval, "interval", e),
        probes,
    }
}

/// A `serve: tcp` listener's `tcp`; HTTP-only keys on such a listener
/// would be silently unused, so they are errors.
fn build_tcp(
    l: &ListenerFile,
    serve: Serve,
    clusters: &[ClusterSpec],
    p: &str,
    e: &mut Errs,
) -> Option<TcpProxySpec> {
    if serve != Serve::Tcp {
        if l.tcp.is_some() {
            e.push(
                format!("{p}.tcp"),
                "only a `serve: tcp` listener forwards connections",
            );
        }
        return None;
    }
    for (key, set) in [
        ("protocol", l.protocol.is_some()),
        ("routes", l.routes.is_some()),
        ("rate_limits", l.rate_limits.is_some()),
        ("forwarded", l.forwarded.is_some()),
        ("escaped_slashes", l.escaped_slashes.is_some()),
        ("path_parameters", l.path_parameters.is_some()),
    ] {
        if set {
            e.push(
                format!("{p}.{key}"),
                "is HTTP; a `serve: tcp` listener forwards bytes without reading them",
            );
        }
    }
    let Some(t) = &l.tcp else {
        e.push(
            format!("{p}.tcp"),
            "`serve: tcp` needs `tcp: {cluster: NAME}`",
        );
        return None;
    };
    let known = |name: &str, at: String, e: &mut Errs| {
        if !clusters.iter().any(|c| c.name == name) {
            e.push(at, format!("no cluster is named {name:?}"));
        }
    };
    if let Some(c) = &t.cluster {
        known(c, format!("{p}.tcp.cluster"), e);
    }
    let mut routes = Vec::new();
    for (j, r) in t.routes.iter().flatten().enumerate() {
        let rp = format!("{p}.tcp.routes[{j}]");
        known(&r.cluster, format!("{rp}.cluster"), e);
        if r.server_names.is_empty() {
            e.push(format!("{rp}.server_names"), "needs at least one name");
        }
        for (k, n) in r.server_names.iter().enumerate() {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            let ok = !bare.is_empty()
                && bare.len() <= 253
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                e.push(
                    format!("{rp}.server_names[{k}]"),
                    format!("{n:?} is not a server name (api.example.com, or *.example.com)"),
                );
            }
        }
        routes.push((
            r.server_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            r.cluster.clone(),
        ));
    }
    if t.cluster.is_none() && routes.is_empty() {
        e.push(format!("{p}.tcp"), "needs `cluster`, `routes`, or both");
    }
    if t.allowed_identities.as_ref().is_some_and(|a| !a.is_empty()) && l.tls.is_none() {
        e.push(
            format!("{p}.tcp.allowed_identities"),
            "identities come from client certificates: the listener needs `tls` with `client_auth`",
        );
    }
    let connect_attempts = t.connect_attempts.unwrap_or(1);
    if !(1..=5).contains(&connect_attempts) {
        e.push(
            format!("{p}.tcp.connect_attempts"),
            format!("{connect_attempts} is not between 1 and 5"),
        );
    }
    Some(TcpProxySpec {
        cluster: t.cluster.clone(),
        routes,
        idle_timeout: positive(
            t.idle_timeout,
            Dur::secs(3600),
            &format!("{p}.tcp.idle_timeout"),
            e,
        ),
        connect_attempts: connect_attempts.clamp(1, 5),
        allowed_identities: t
            .allowed_identities
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, m)| {
                build_identity_match(m, &format!("{p}.tcp.allowed_identities[{j}]"), e)
            })
            .collect(),
    })
}

fn build_limits(l: Option<&LimitsFile>, p: &str, e: &mut Errs) -> Limits {
    let d = Limits::default();
    let Some(l) = l else { return d };
    let max_header_bytes = match l.max_header_bytes {
        Some(Bytes(b)) if !(1024..=1024 * 1024).contains(&b) => {
            e.push(
                format!("{p}.max_header_bytes"),
                format!("{b} is outside 1KiB..=1MiB"),
            );
            d.max_header_bytes
        }
        Some(b) => b,
        None => d.max_header_bytes,
    };
    let max_headers = match l.max_headers {
        Some(n) if !(1..=10_000).contains(&n) => {
            e.push(
                format!("{p}.max_headers"),
                format!("{n} is outside 1..=10000"),
            );
            d.max_headers
        }
        Some(n) => n,
        None => d.max_headers,
    };
    let max_connections = match l.max_connections {
        Some(0) => {
            e.push(format!("{p}.max_connections"), "must be at least 1");
            d.max_connections
        }
        Some(n) => n,
        None => d.max_connections,
    };
    let max_concurrent_streams = match l.max_concurrent_streams {
        Some(0) => {
            e.push(format!("{p}.max_concurrent_streams"), "must be at least 1");
            d.max_concurrent_streams
        }
        Some(n) => n,
        None => d.max_concurrent_streams,
    };
    Limits {
        max_header_bytes,
        max_headers,
        header_read_timeout: positive(
            l.header_read_timeout,
            d.header_read_timeout,
            &format!("{p}.header_read_timeout"),
            e,
        ),
        request_timeout: l
            .request_timeout
            .map(|d| positive(Some(d), d, &format!("{p}.request_timeout"), e)),
        send_timeout: match l.send_timeout {
            Some(t) if t.0.is_zero() => None,
            Some(t) => Some(t),
            None => d.send_timeout,
        },
        request_body_timeout: match l.request_body_timeout {
            Some(t) if t.0.is_zero() => None,
            Some(t) => Some(t),
            None => d.request_body_timeout,
        },
        idle_timeout: positive(
            l.idle_timeout,
            d.idle_timeout,
            &format!("{p}.idle_timeout"),
            e,
        ),
        max_connections,
        max_connections_per_client: match l.max_connections_per_client {
            Some(0) => {
                e.push(
                    format!("{p}.max_connections_per_client"),
                    "must be at least 1",
                );
                None
            }
            n => n,
        },
        max_concurrent_streams,
        max_requests_per_connection: match l.max_requests_per_connection {
            Some(0) => {
                e.push(
                    format!("{p}.max_requests_per_connection"),
                    "must be at least 1",
                );
                None
            }
            n => n,
        },
        max_connection_duration: l
            .max_connection_duration
            .map(|d| positive(Some(d), d, &format!("{p}.max_connection_duration"), e)),
        drain_timeout: positive(
            l.drain_timeout,
            d.drain_timeout,
            &format!("{p}.drain_timeout"),
            e,
        ),
    }
}

fn check_name(name: &str, path: &str, seen: &mut HashSet<String>, what: &str, e: &mut Errs) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        e.push(
            path,
            format!("{what} name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        );
    }
    if !seen.insert(name.to_string()) {
        e.push(path, format!("another {what} is already named {name:?}"));
    }
}

/// The verdicts a kind of filter gives (what `rules[].when` may name).
pub fn verdicts_of(kind: FilterKind) -> &'static [&'static str] {
    match kind {
        FilterKind::Spam | FilterKind::Onnx => &["spam", "ham"],
        FilterKind::Cilog => &[
            "timeout",
            "oom",
            "infra",
            "dependency",
            "compile",
            "lint",
            "test",
            "config",
            "unknown",
        ],
    }
}

fn build_filters(fs: &[FilterFile], e: &mut Errs) -> Vec<FilterSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, f) in fs.iter().enumerate() {
        let p = format!("filters[{i}]");
        check_name(&f.name, &format!("{p}.name"), &mut names, "filter", e);
        let model = match f.model.as_deref().map(str::trim) {
            None | Some("builtin") => {
                if f.kind == FilterKind::Onnx {
                    e.push(
                        format!("{p}.model"),
                        "kind onnx needs a model file (.onnx); there is no builtin ONNX model",
                    );
                }
                ModelSource::Builtin
            }
            Some("") => {
                e.push(format!("{p}.model"), "is empty");
                ModelSource::Builtin
            }
            Some(path) => ModelSource::File(path.into()),
        };
        if f.runtime.is_some() && f.kind != FilterKind::Onnx {
            e.push(
                format!("{p}.runtime"),
                "only kind onnx uses an ONNX Runtime library",
            );
        }
        let cilog = f.kind == FilterKind::Cilog;
        // Options only the spam and onnx kinds read: on a cilog filter they
        // would be accepted and ignored, so they are refused.
        if cilog && f.threshold.is_some() {
            e.push(
                format!("{p}.threshold"),
                "option threshold has no effect on a cilog filter (it is the spam probability \
                 of kinds spam and onnx; a CI log gets the most probable class)",
            );
        }
        if cilog && f.extract.as_ref().is_some_and(|x| x.form_fields.is_some()) {
            e.push(
                format!("{p}.extract.form_fields"),
                "option extract.form_fields has no effect on a cilog filter (it reads a \
                 plain-text log, or the log in a JSON field named by extract.json_pointers)",
            );
        }
        if cilog && f.extract.as_ref().is_some_and(|x| x.query_fields.is_some()) {
            e.push(
                format!("{p}.extract.query_fields"),
                "option extract.query_fields has no effect on a cilog filter (it reads a \
                 plain-text log, or the log in a JSON field named by extract.json_pointers)",
            );
        }
        let threshold = match f.threshold {
            Some(t) if !(t > 0.0 && t < 1.0) => {
                e.push(
                    format!("{p}.threshold"),
                    format!("{t} is not between 0 and 1"),
                );
                None
            }
            t => t.map(|t| t as f32),
        };
        // cilog learns by retraining on a labelled-log folder.
        let learn_data = match (f.kind, &f.learn_data) {
            (_, None) => None,
            (FilterKind::Cilog, Some(d)) => {
                let d = std::path::PathBuf::from(d);
                if d.join("labels.csv").is_file() {
                    Some(d)
                } else {
                    e.push(
                        format!("{p}.learn_data"),
                        format!(
                            "{} has no labels.csv (a labelled-log folder: labels.csv and logs/)",
                            d.display()
                        ),
                    );
                    None
                }
            }
            (_, Some(_)) => {
                e.push(
                    format!("{p}.learn_data"),
                    "learn_data is for kind cilog (a spam model learns from its own weights)",
                );
                None
            }
        };
        let learned_model = match (f.kind, &f.learned_model, &model) {
            (FilterKind::Onnx, Some(_), _) => {
                e.push(
                    format!("{p}.learned_model"),
                    "an ONNX model cannot learn at run time (retrain it offline)",
                );
                None
            }
            (FilterKind::Onnx, None, _) => None,
            (FilterKind::Cilog, Some(_), _) if learn_data.is_none() && f.learn_data.is_none() => {
                e.push(
                    format!("{p}.learned_model"),
                    "a cilog filter learns only with learn_data (the labelled logs it retrains on)",
                );
                None
            }
            (FilterKind::Cilog, None, _) if learn_data.is_none() => None,
            (_, Some(l), _) => {
                // Learning writes the file there and never creates
                // directories (as spool_dir, it must exist).
                let l = std::path::PathBuf::from(l);
                if let Some(dir) = l.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.is_dir() {
                        e.push(
                            format!("{p}.learned_model"),
                            format!(
                                "the directory {} of {} does not exist (sift does not create it)",
                                dir.display(),
                                l.display()
                            ),
                        );
                    }
                }
                Some(l)
            }
            (_, None, ModelSource::File(m)) => {
                let mut s = m.clone().into_os_string();
                s.push(".learned");
                Some(s.into())
            }
            (_, None, ModelSource::Builtin) => {
                Some(format!("filters/{}.learned.bin", f.name).into())
            }
        };
        let usage = FilterUsage {
            mode: f.mode.unwrap_or_default(),
            max_inspect_bytes: inspect_limit(
                f.max_inspect_bytes,
                if cilog { 8 << 20 } else { 64 << 10 },
                &format!("{p}.max_inspect_bytes"),
                e,
            ),
            on_oversize: f.on_oversize.unwrap_or(if cilog {
                OnOversize::Spool
            } else {
                OnOversize::InspectPrefix
            }),
            on_overload: f.on_overload.unwrap_or_default(),
            on_unreadable: f.on_unreadable.unwrap_or_default(),
        };
        let spool_dir: std::path::PathBuf = f
            .spool_dir
            .as_ref()
            .map_or_else(std::env::temp_dir, Into::into);
        if f.spool_dir.is_some() && !spool_dir.is_dir() {
            e.push(
                format!("{p}.spool_dir"),
                format!("{} is not a directory", spool_dir.display()),
            );
        }
        let max_decompressed_bytes = match f.max_decompressed_bytes {
            Some(Bytes(0)) => {
                e.push(
                    format!("{p}.max_decompressed_bytes"),
                    "must be greater than 0",
                );
                16 << 20
            }
            Some(Bytes(b)) if b < usage.max_inspect_bytes => {
                e.push(
                    format!("{p}.max_decompressed_bytes"),
                    format!(
                        "filter {:?}: max_decompressed_bytes {} is smaller than its \
                         max_inspect_bytes {}; it must be at least max_inspect_bytes",
                        f.name,
                        Bytes(b),
                        Bytes(usage.max_inspect_bytes)
                    ),
                );
                usage.max_inspect_bytes
            }
            Some(Bytes(b)) => b.min(1 << 40),
            None => DEFAULT_MAX_DECOMPRESSED.max(usage.max_inspect_bytes),
        };
        let x = f.extract.clone().unwrap_or_default();
        for (j, ptr) in x.json_pointers.iter().flatten().enumerate() {
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                e.push(
                    format!("{p}.extract.json_pointers[{j}]"),
                    format!("{ptr:?} is not a JSON pointer (it must start with '/')"),
                );
            }
        }
        for (list, names) in [
            ("form_fields", &x.form_fields),
            ("query_fields", &x.query_fields),
        ] {
            for (j, n) in names.iter().flatten().enumerate() {
                if n.is_empty() {
                    e.push(
                        format!("{p}.extract.{list}[{j}]"),
                        "a field name is not empty",
                    );
                }
            }
        }
        let b = f.block.clone().unwrap_or_default();
        let block_status = match b.status {
            Some(s) if !(400..=599).contains(&s) => {
                e.push(
                    format!("{p}.block.status"),
                    format!("{s} is not a 4xx or 5xx status"),
                );
                403
            }
            s => s.unwrap_or(403),
        };
        let header_prefix = f
            .header_prefix
            .clone()
            .unwrap_or_else(|| {
                if cilog {
                    "x-sift-ci".into()
                } else {
                    "x-sift-spam".into()
                }
            })
            .to_ascii_lowercase();
        if let Err(msg) = check_header_prefix(&header_prefix) {
            e.push(format!("{p}.header_prefix"), msg);
        }
        out.push(FilterSpec {
            name: f.name.clone(),
            kind: f.kind,
            model,
            runtime: f.runtime.as_ref().map(Into::into),
            threshold,
            learned_model,
            learn_data,
            usage,
            max_decompressed_bytes,
            json_pointers: x.json_pointers,
            query_fields: x
                .query_fields
                .or_else(|| x.form_fields.clone())
                .unwrap_or_default(),
            form_fields: x.form_fields,
            block_status,
            block_message: b
                .message
                .unwrap_or_else(|| format!("request blocked by filter {}", f.name)),
            header_prefix,
            spool_dir,
        });
    }
    out
}

/// Header namespaces a verdict header prefix may not write into: the
/// message's framing and routing, and what sift itself sets upstream.
const RESERVED_PREFIXES: &[&str] = &[
    "host",
    "content",
    "transfer",
    "connection",
    "keep-alive",
    "proxy",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-forwarded",
    "x-request-id",
    "via",
];

/// A `header_prefix` is usable: not empty, valid in header names, and not in
/// a standard header's namespace.
fn check_header_prefix(prefix: &str) -> Result<(), String> {
    if prefix.trim().is_empty() {
        return Err("is empty: verdict headers need a prefix (e.g. x-sift-spam)".into());
    }
    if HeaderName::from_bytes(format!("{prefix}-verdict").as_bytes()).is_err()
        || HeaderName::from_bytes(prefix.as_bytes()).is_err()
    {
        return Err(format!("{prefix:?} does not make valid header names"));
    }
    if let Some(ns) = RESERVED_PREFIXES.iter().find(|ns| {
        prefix == **ns
            || prefix
                .strip_prefix(**ns)
                .is_some_and(|r| r.starts_with('-'))
    }) {
        return Err(format!(
            "{prefix:?} would make headers in the standard {ns:?} namespace (e.g. \
             {prefix}-verdict); use a prefix of your own such as x-sift-spam"
        ));
    }
    Ok(())
}

fn inspect_limit(v: Option<Bytes>, default: u64, p: &str, e: &mut Errs) -> u64 {
    match v {
        Some(Bytes(0)) => {
            e.push(p, "must be greater than 0");
            default
        }
        Some(Bytes(b)) if b > 1 << 30 => {
            e.push(p, format!("{b} is more than 1GiB"));
            default
        }
        Some(Bytes(b)) => b,
        None => default,
    }
}

fn build_route_filters(
    r: &RouteFile,
    p: &str,
    filters: &[FilterSpec],
    clusters: &[ClusterFile],
    e: &mut Errs,
) -> Vec<RouteFilterSpec> {
    let known = || {
        let v: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        if v.is_empty() {
            "none are defined".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = Vec::new();
    for (j, rf) in r.filters.iter().flatten().enumerate() {
        let q = format!("{p}.filters[{j}]");
        let Some(f) = filters.iter().find(|f| f.name == rf.filter) else {
            e.push(
                format!("{q}.filter"),
                format!("no filter is named {:?} (filters: {})", rf.filter, known()),
            );
            continue;
        };
        if let Some(Bytes(b)) = rf.max_inspect_bytes {
            if b > f.max_decompressed_bytes {
                e.push(
                    format!("{q}.max_inspect_bytes"),
                    format!(
                        "{} is more than filter {:?}'s max_decompressed_bytes {}; raise \
                         max_decompressed_bytes on the filter to at least max_inspect_bytes",
                        Bytes(b),
                        f.name,
                        Bytes(f.max_decompressed_bytes)
                    ),
                );
            }
        }
        let usage = FilterUsage {
            mode: rf.mode.unwrap_or(f.usage.mode),
            max_inspect_bytes: rf.max_inspect_bytes.map_or(f.usage.max_inspect_bytes, |b| {
                inspect_limit(
                    Some(b),
                    f.usage.max_inspect_bytes,
                    &format!("{q}.max_inspect_bytes"),
                    e,
                )
            }),
            on_oversize: rf.on_oversize.unwrap_or(f.usage.on_oversize),
            on_overload: rf.on_overload.unwrap_or(f.usage.on_overload),
            on_unreadable: rf.on_unreadable.unwrap_or(f.usage.on_unreadable),
        };
        let mut rules = Vec::new();
        for (k, rule) in rf.rules.iter().flatten().enumerate() {
            let rp = format!("{q}.rules[{k}]");
            if usage.mode != FilterMode::Block {
                e.push(&rp, "rules act before forwarding: they need mode block");
            }
            let vocab = verdicts_of(f.kind);
            if rule.when.is_empty() {
                e.push(format!("{rp}.when"), "needs at least one verdict");
            }
            for (w, v) in rule.when.iter().enumerate() {
                if !vocab.contains(&v.as_str()) {
                    e.push(
                        format!("{rp}.when[{w}]"),
                        format!(
                            "{v:?} is not a verdict of this filter ({})",
                            vocab.join(", ")
                        ),
                    );
                }
            }
            let action = match (rule.reject, &rule.cluster) {
                (true, None) => RuleAction::Reject,
                (false, Some(c)) => {
                    if !clusters.iter().any(|cf| &cf.name == c) {
                        e.push(
                            format!("{rp}.cluster"),
                            format!("no cluster is named {c:?}"),
                        );
                    }
                    RuleAction::Cluster(c.clone())
                }
                _ => {
                    e.push(&rp, "give exactly one of `reject: true` and `cluster`");
                    continue;
                }
            };
            let min_score = match rule.min_score {
                None => 0.0,
                Some(m) if (0.0..=1.0).contains(&m) => m as f32,
                Some(m) => {
                    e.push(
                        format!("{rp}.min_score"),
                        format!("{m} is not between 0 and 1"),
                    );
                    continue;
                }
            };
            rules.push(VerdictRule {
                when: rule.when.clone(),
                min_score,
                action,
            });
        }
        out.push(RouteFilterSpec {
            filter: f.name.clone(),
            usage,
            rules,
        });
    }
    // Two filters writing the same verdict headers: the upstream would see
    // only the last one's verdict.
    let mut writers: HashMap<String, &str> = HashMap::new();
    for (j, rf) in out.iter().enumerate() {
        if rf.usage.mode == FilterMode::Shadow {
            continue;
        }
        let Some(f) = filters.iter().find(|f| f.name == rf.filter) else {
            continue;
        };
        let names = f.verdict_header_names();
        let clash: Vec<(&str, &str)> = names
            .iter()
            .filter_map(|n| writers.get(n).map(|w| (n.as_str(), *w)))
            .collect();
        if let Some((_, other)) = clash.first() {
            if *other == f.name {
                e.push(
                    format!("{p}.filters[{j}]"),
                    format!(
                        "filter {:?} is listed twice on this route (outside shadow mode): its \
                         second verdict headers would replace the first",
                        f.name
                    ),
                );
                continue;
            }
            let which: Vec<&str> = clash.iter().map(|(n, _)| *n).collect();
            e.push(
                format!("{p}.filters[{j}]"),
                format!(
                    "filter {:?} writes the same verdict headers as filter {other:?} on this \
                     route ({}): the upstream would see only one verdict; give one of them \
                     another header_prefix",
                    f.name,
                    which.join(", ")
                ),
            );
            continue;
        }
        for n in names {
            writers.insert(n, f.name.as_str());
        }
    }
    out
}

/// The verdict header names of a route's filters a client may not send
/// (those outside `x-sift-*`, which is removed from every request).
fn route_verdict_headers(route: &[RouteFilterSpec], filters: &[FilterSpec]) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for rf in route {
        let Some(f) = filters.iter().find(|f| f.name == rf.filter) else {
            continue;
        };
        for n in f.verdict_header_names() {
            if n.starts_with("x-sift-") {
                continue;
            }
            if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
        }
    }
    out
}

fn build_routes(
    rs: &[RouteFile],
    clusters: &HashSet<&str>,
    cluster_files: &[ClusterFile],
    filters: &[FilterSpec],
    jwt_providers: &[crate::jwt::JwtProviderSpec],
    e: &mut Errs,
) -> Vec<RouteSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    let known = || {
        let mut v: Vec<&str> = cluster_files.iter().map(|c| c.name.as_str()).collect();
        v.sort_unstable();
        v.join(", ")
    };
    for (i, r) in rs.iter().enumerate() {
        let p = format!("routes[{i}]");
        check_name(&r.name, &format!("{p}.name"), &mut names, "route", e);
        let matches = build_match(r.matches.as_ref(), &format!("{p}.match"), e);
        let answer = r.answer.as_ref().and_then(|a| {
            if filters.iter().any(|f| &f.name == a) {
                Some(a.clone())
            } else {
                e.push(format!("{p}.answer"), format!("no filter is named {a:?}"));
                None
            }
        });
        // The route's action: forward (cluster/clusters), or answer itself.
        let local = [
            ("answer", r.answer.is_some()),
            ("redirect", r.redirect.is_some()),
            ("direct_response", r.direct_response.is_some()),
        ];
        let local: Vec<&str> = local.iter().filter(|a| a.1).map(|a| a.0).collect();
        if local.len() > 1 {
            e.push(
                &p,
                format!("has {}: give exactly one action", local.join(" and ")),
            );
        }
        let local = local.first().copied();
        if let Some(a) = local.filter(|a| *a != "answer") {
            if r.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                e.push(
                    format!("{p}.filters"),
                    format!("a route with `{a}` reads no body: its filters would never run"),
                );
            }
            if r.retries.is_some() {
                e.push(
                    format!("{p}.retries"),
                    format!("a route with `{a}` has no upstream to retry"),
                );
            }
        }
        if r.rewrite.is_some() && local.is_some() {
            e.push(
                format!("{p}.rewrite"),
                "only a forwarding route (cluster/clusters) rewrites paths; a redirect has its own `prefix`",
            );
        }
        if matches!(matches.path, PathMatch::Regex(_))
            && (r.rewrite.as_ref().is_some_and(|rw| rw.prefix.is_some())
                || r.redirect.as_ref().is_some_and(|rd| rd.prefix.is_some()))
        {
            e.push(
                format!("{p}.match.path"),
                "a `regex` path match has no matched prefix to replace: `rewrite.prefix` and a redirect's `prefix` need an `exact` or `prefix` match (`rewrite.regex` works with any)",
            );
        }
        let (rewrite_prefix, rewrite_regex, rewrite_host) = match &r.rewrite {
            Some(rw) => build_rewrite(rw, &format!("{p}.rewrite"), e),
            None => (None, None, None),
        };
        let redirect = r
            .redirect
            .as_ref()
            .and_then(|rd| build_redirect(rd, &format!("{p}.redirect"), e));
        let direct_response = r
            .direct_response
            .as_ref()
            .and_then(|d| build_direct_response(d, &format!("{p}.direct_response"), e));
        let backends = match (&r.cluster, &r.clusters) {
            (None, None) if local.is_some() => Vec::new(),
            (Some(_), _) | (_, Some(_)) if local.is_some() => {
                e.push(
                    &p,
                    format!(
                        "a route with `{}` has no upstream: remove `cluster`/`clusters`",
                        local.unwrap_or_default()
                    ),
                );
                Vec::new()
            }
            (Some(c), None) => {
                if !clusters.contains(c.as_str()) && !cluster_files.iter().any(|f| &f.name == c) {
                    e.push(
                        format!("{p}.cluster"),
                        format!("no cluster is named {c:?} (clusters: {})", known()),
                    );
                }
                vec![Backend {
                    cluster: c.clone(),
                    weight: 1,
                }]
            }
            (None, Some(ws)) => {
                if ws.is_empty() {
                    e.push(format!("{p}.clusters"), "needs at least one cluster");
                }
                let mut seen = HashSet::new();
                for (j, w) in ws.iter().enumerate() {
                    if !cluster_files.iter().any(|f| f.name == w.name) {
                        e.push(
                            format!("{p}.clusters[{j}].name"),
                            format!("no cluster is named {:?} (clusters: {})", w.name, known()),
                        );
                    }
                    if !seen.insert(&w.name) {
                        e.push(
                            format!("{p}.clusters[{j}].name"),
                            format!("cluster {:?} is listed twice", w.name),
                        );
                    }
                    if w.weight > 10_000 {
                        e.push(
                            format!("{p}.clusters[{j}].weight"),
                            format!("{} is more than 10000", w.weight),
                        );
                    }
                }
                if !ws.is_empty() && ws.iter().all(|w| w.weight == 0) {
                    e.push(
                        format!("{p}.clusters"),
                        "all weights are 0: at least one must be positive",
                    );
                }
                ws.iter()
                    .map(|w| Backend {
                        cluster: w.name.clone(),
                        weight: w.weight,
                    })
                    .collect()
            }
            (Some(_), Some(_)) => {
                e.push(&p, "has both `cluster` and `clusters`: give exactly one");
                Vec::new()
            }
            // Only `serve: envoy` listeners may serve it: Envoy forwards
            // (checked with the listeners).
            (None, None) => Vec::new(),
        };
        let timeout = r
            .timeout
            .map(|t| positive(Some(t), t, &format!("{p}.timeout"), e));
        let grpc_web = {
            let on = r.grpc_web.unwrap_or(false);
            if on && local.is_some() {
                e.push(
                    format!("{p}.grpc_web"),
                    "translates calls for a cluster: this route has no cluster",
                );
            }
            if on {
                for b in &backends {
                    let h2 = cluster_files
                        .iter()
                        .find(|f| f.name == b.cluster)
                        .is_none_or(|f| f.protocol == Some(UpstreamProtocol::Http2));
                    if !h2 {
                        e.push(
                            format!("{p}.grpc_web"),
                            format!(
                                "cluster {:?} must be `protocol: http2` (gRPC-Web calls go to it as gRPC)",
                                b.cluster
                            ),
                        );
                    }
                }
            }
            on
        };
        out.push(RouteSpec {
            name: r.name.clone(),
            matches,
            backends,
            timeout,
            max_request_body: match r.max_request_body {
                Some(Bytes(b)) if b > 1 << 40 => {
                    e.push(
                        format!("{p}.max_request_body"),
                        format!("{b} is more than 1TiB"),
                    );
                    Bytes(10 * 1024 * 1024)
                }
                Some(b) => b,
                None => Bytes(10 * 1024 * 1024),
            },
            request_headers: build_ops(
                r.request_headers.as_ref(),
                &format!("{p}.request_headers"),
                false,
                e,
            ),
            response_headers: build_ops(
                r.response_headers.as_ref(),
                &format!("{p}.response_headers"),
                true,
                e,
            ),
            cors: r
                .cors
                .as_ref()
                .map(|c| build_cors(c, &format!("{p}.cors"), e)),
            csrf: r
                .csrf
                .as_ref()
                .map(|c| build_csrf(c, &format!("{p}.csrf"), e)),
            jwt: r.jwt.as_ref().and_then(|j| {
                match jwt_providers.iter().find(|pr| pr.name == j.provider) {
                    Some(pr) => Some(crate::jwt::RouteJwtSpec {
                        provider: pr.clone(),
                        allow_missing: j.allow_missing.unwrap_or(false),
                    }),
                    None => {
                        e.push(
                            format!("{p}.jwt.provider"),
                            format!("{:?} is not in jwt_providers", j.provider),
                        );
                        None
                    }
                }
            }),
            basic_auth: r
                .basic_auth
                .as_ref()
                .and_then(|b| build_basic_auth(b, &format!("{p}.basic_auth"), e)),
            compression: r.compression.as_ref().map(|c| {
                if local.is_some() {
                    e.push(
                        format!("{p}.compression"),
                        "compresses a cluster's answers: this route has no cluster",
                    );
                }
                build_compression(c, &format!("{p}.compression"), e)
            }),
            rate_limits: build_rate_limits(
                r.rate_limits.as_deref(),
                &format!("{p}.rate_limits"),
                e,
            ),
            max_inflight: match r.max_inflight {
                Some(0) => {
                    e.push(format!("{p}.max_inflight"), "must be at least 1");
                    None
                }
                m => m,
            },
            adaptive_concurrency: r
                .adaptive_concurrency
                .as_ref()
                .and_then(|a| build_adaptive(a, &format!("{p}.adaptive_concurrency"), e)),
            retries: r
                .retries
                .as_ref()
                .map(|rt| build_retries(rt, &format!("{p}.retries"), e)),
            canary: r
                .canary
                .as_ref()
                .and_then(|c| build_canary(c, r.clusters.as_deref(), &format!("{p}.canary"), e)),
            allowed_identities: r.allowed_identities.as_ref().map(|ids| {
                ids.iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        build_identity_match(m, &format!("{p}.allowed_identities[{i}]"), e)
                    })
                    .collect()
            }),
            source_ips: r
                .source_ips
                .as_ref()
                .map(|s| build_source_ips(s, &format!("{p}.source_ips"), e)),
            verdict_headers: Vec::new(),
            filters: build_route_filters(r, &p, filters, cluster_files, e),
            answer,
            rewrite_prefix,
            rewrite_regex,
            rewrite_host,
            redirect,
            direct_response,
            mirror: build_mirrors(r, &p, local, cluster_files, e),
            external_auth: r.external_auth.as_ref().and_then(|a| {
                build_external_auth(a, &format!("{p}.external_auth"), cluster_files, e)
            }),
            external_rate_limit: r.external_rate_limit.as_ref().and_then(|a| {
                build_external_rate_limit(a, &format!("{p}.external_rate_limit"), cluster_files, e)
            }),
            grpc_web,
            hash_policy: build_hash_policy(
                r.hash_policy.as_deref(),
                &format!("{p}.hash_policy"),
                e,
            ),
            fault: r
                .fault
                .as_ref()
                .and_then(|f| build_fault(f, &format!("{p}.fault"), local, e)),
            cache: r
                .cache
                .as_ref()
                .and_then(|c| build_cache(c, &format!("{p}.cache"), local, e)),
            request_buffering: r.request_buffering.as_ref().and_then(|b| {
                let bp = format!("{p}.request_buffering");
                if let Some(a) = local {
                    e.push(
                        &bp,
                        format!("holds bodies for an upstream: a route with `{a}` has none"),
                    );
                    return None;
                }
                if r.grpc_web == Some(true) {
                    e.push(
                        &bp,
                        "gRPC-Web calls stream; a buffered call would wait for its end",
                    );
                    return None;
                }
                let in_memory = b.in_memory.unwrap_or(Bytes(64 * 1024));
                if in_memory.0 > 1 << 30 {
                    e.push(
                        format!("{bp}.in_memory"),
                        format!("{} is more than 1GiB", in_memory.0),
                    );
                }
                let spool_dir: std::path::PathBuf = b
                    .spool_dir
                    .as_ref()
                    .map_or_else(std::env::temp_dir, Into::into);
                if b.spool_dir.is_some() && !spool_dir.is_dir() {
                    e.push(
                        format!("{bp}.spool_dir"),
                        format!("{} is not a directory", spool_dir.display()),
                    );
                }
                Some(RequestBufferingSpec {
                    in_memory,
                    spool_dir,
                })
            }),
            grpc_timeout: r.grpc_timeout.as_ref().and_then(|g| {
                let gp = format!("{p}.grpc_timeout");
                let before = e.len();
                if let Some(a) = local {
                    e.push(
                        &gp,
                        format!("bounds the wait for a cluster: a route with `{a}` has no cluster"),
                    );
                }
                let max = g.max.map(|d| d.0);
                let offset = g.offset.map_or(Duration::ZERO, |d| d.0);
                if max.is_some_and(|m| m.is_zero() || m > Duration::from_secs(86_400)) {
                    e.push(
                        format!("{gp}.max"),
                        "must be more than 0s and at most 1 day (leave it out for no cap)",
                    );
                }
                if offset > Duration::from_secs(60) || max.is_some_and(|m| offset >= m) {
                    e.push(
                        format!("{gp}.offset"),
                        "must be at most 1m and less than max",
                    );
                }
                (e.len() == before).then_some(GrpcTimeoutSpec { max, offset })
            }),
        });
        if let Some(last) = out.last_mut() {
            // The origins the route's CORS policy lets call it are trusted
            // by its csrf too: its pages' cross-origin requests are the
            // ones CORS was written for ("*" is not: any site).
            if let (Some(csrf), Some(cors)) = (&mut last.csrf, &last.cors) {
                for m in &cors.allow_origins {
                    if *m != crate::cors::OriginMatch::Any && !csrf.trusted_origins.contains(m) {
                        csrf.trusted_origins.push(m.clone());
                    }
                }
            }
            last.verdict_headers = route_verdict_headers(&last.filters, filters);
            let with_body = last
                .external_auth
                .as_ref()
                .is_some_and(|a| a.with_body.is_some());
            if with_body
                && last
                    .filters
                    .iter()
                    .any(|f| f.usage.on_oversize == OnOversize::Spool)
            {
                e.push(
                    format!("{p}.external_auth.with_request_body"),
                    "not with a filter that spools (`on_oversize: spool`): the check reads the body first",
                );
            }
            if with_body && local == Some("answer") {
                e.push(
                    format!("{p}.external_auth.with_request_body"),
                    "not on an `answer` route: its filter reads the body itself",
                );
            }
        }
    }
    out
}

/// A route's `external_rate_limit`.
fn build_external_rate_limit(
    a: &crate::config::file::ExternalRateLimitFile,
    p: &str,
    cluster_files: &[ClusterFile],
    e: &mut Errs,
) -> Option<crate::rls_client::ExternalRateLimitSpec> {
    use crate::config::file::RlActionFile;
    use crate::rls_client::Action;
    let before = e.len();
    match cluster_files.iter().find(|f| f.name == a.cluster) {
        None => {
            let mut known: Vec<&str> = cluster_files.iter().map(|c| c.name.as_str()).collect();
            known.sort_unstable();
            e.push(
                format!("{p}.cluster"),
                format!(
                    "no cluster is named {:?} (clusters: {})",
                    a.cluster,
                    known.join(", ")
                ),
            );
        }
        Some(f) if f.protocol != Some(UpstreamProtocol::Http2) => e.push(
            format!("{p}.cluster"),
            format!(
                "cluster {:?} must be `protocol: http2` (the service speaks gRPC)",
                a.cluster
            ),
        ),
        Some(_) => {}
    }
    if a.domain.is_empty() {
        e.push(format!("{p}.domain"), "must not be empty");
    }
    if a.descriptors.is_empty() {
        e.push(format!("{p}.descriptors"), "needs at least one descriptor");
    }
    let mut descriptors = Vec::new();
    for (i, d) in a.descriptors.iter().enumerate() {
        let dp = format!("{p}.descriptors[{i}]");
        if d.is_empty() {
            e.push(dp.clone(), "needs at least one action");
        }
        let mut actions = Vec::new();
        for (j, act) in d.iter().enumerate() {
            let ap = format!("{dp}[{j}]");
            actions.push(match act {
                RlActionFile::RemoteAddress {} => Action::RemoteAddress,
                RlActionFile::DestinationCluster {} => Action::DestinationCluster,
                RlActionFile::GenericKey {
                    descriptor_value,
                    descriptor_key,
                } => Action::GenericKey {
                    key: descriptor_key.clone().unwrap_or_else(|| "generic_key".into()),
                    value: descriptor_value.clone(),
                },
                RlActionFile::Identity { descriptor_key } => Action::Identity {
                    key: descriptor_key.clone().unwrap_or_else(|| "identity".into()),
                },
                RlActionFile::MaskedRemoteAddress {
                    v4_prefix_mask_len,
                    v6_prefix_mask_len,
                } => {
                    let v4 = v4_prefix_mask_len.unwrap_or(32);
                    let v6 = v6_prefix_mask_len.unwrap_or(128);
                    if v4 > 32 {
                        e.push(
                            format!("{ap}.masked_remote_address.v4_prefix_mask_len"),
                            format!("{v4} is more than 32"),
                        );
                    }
                    if v6 > 128 {
                        e.push(
                            format!("{ap}.masked_remote_address.v6_prefix_mask_len"),
                            format!("{v6} is more than 128"),
                        );
                    }
                    Action::MaskedRemoteAddress {
                        v4: v4.min(32) as u8,
                        v6: v6.min(128) as u8,
                    }
                }
                RlActionFile::HeaderValueMatch {
                    descriptor_key,
                    descriptor_value,
                    expect_match,
                    headers,
                } => {
                    if headers.is_empty() {
                        e.push(
                            format!("{ap}.header_value_match.headers"),
                            "needs at least one header condition",
                        );
                    }
                    Action::HeaderValueMatch {
                        key: descriptor_key.clone().unwrap_or_else(|| "header_match".into()),
                        value: descriptor_value.clone(),
                        expect_match: expect_match.unwrap_or(true),
                        headers: build_header_matches(
                            headers,
                            &format!("{ap}.header_value_match"),
                            e,
                        ),
                    }
                }
                RlActionFile::QueryParameters {
                    query_parameter_name,
                    descriptor_key,
                    skip_if_absent,
                } => {
                    if query_parameter_name.is_empty() || descriptor_key.is_empty() {
                        e.push(
                            format!("{ap}.query_parameters"),
                            "`query_parameter_name` and `descriptor_key` must not be empty",
                        );
                    }
                    Action::QueryParameter {
                        name: query_parameter_name.clone(),
                        key: descriptor_key.clone(),
                        skip_if_absent: skip_if_absent.unwrap_or(false),
                    }
                }
                RlActionFile::RequestHeaders {
                    header_name,
                    descriptor_key,
                    skip_if_absent,
                } => {
                    let lower = header_name.to_ascii_lowercase();
                    let pseudo = matches!(lower.as_str(), ":path" | ":method" | ":authority");
                    let name = if pseudo {
                        Some(HeaderName::from_static("x-pseudo"))
                    } else {
                        HeaderName::from_bytes(lower.as_bytes()).ok()
                    };
                    let Some(name) = name else {
                        e.push(
                            format!("{ap}.request_headers.header_name"),
                            format!("{header_name:?} is not a header name (or :path, :method, :authority)"),
                        );
                        continue;
                    };
                    if descriptor_key.is_empty() {
                        e.push(
                            format!("{ap}.request_headers.descriptor_key"),
                            "must not be empty",
                        );
                    }
                    Action::RequestHeader {
                        name,
                        pseudo: if pseudo { lower } else { String::new() },
                        key: descriptor_key.clone(),
                        skip_if_absent: skip_if_absent.unwrap_or(false),
                    }
                }
            });
        }
        descriptors.push(actions);
    }
    let timeout = positive(a.timeout, Dur::millis(20), &format!("{p}.timeout"), e);
    if e.len() > before {
        return None;
    }
    Some(crate::rls_client::ExternalRateLimitSpec {
        cluster: a.cluster.clone(),
        domain: a.domain.clone(),
        descriptors,
        timeout,
        failure_mode_deny: a.failure_mode_deny.unwrap_or(false),
        hits_addend: a.hits_addend.unwrap_or(0),
    })
}

/// A route's `basic_auth`: the users parsed (a file read now), the
/// challenge made.
fn build_basic_auth(b: &BasicAuthFile, p: &str, e: &mut Errs) -> Option<BasicAuthSpec> {
    let text = match (&b.users, &b.users_file) {
        (Some(u), None) => u.join("\n"),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(err) => {
                e.push(
                    format!("{p}.users_file"),
                    format!("cannot read {f:?}: {err}"),
                );
                return None;
            }
        },
        _ => {
            e.push(p, "give exactly one of `users` and `users_file`");
            return None;
        }
    };
    let users = match crate::basic_auth::Users::parse(&text) {
        Ok(u) => u,
        Err(m) => {
            let at = if b.users.is_some() {
                "users"
            } else {
                "users_file"
            };
            e.push(format!("{p}.{at}"), m);
            return None;
        }
    };
    let realm = b.realm.clone().unwrap_or_else(|| "sift".into());
    let challenge =
        match HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", realm)) {
            Ok(v) if !realm.contains('"') && !realm.contains('\\') => v,
            _ => {
                e.push(
                    format!("{p}.realm"),
                    format!("{realm:?}: printable characters other than '\"' and '\\' only"),
                );
                return None;
            }
        };
    let forward_username_header = match &b.forward_username_header {
        None => None,
        Some(n) => match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if !h.as_str().starts_with("x-sift-") => Some(h),
            _ => {
                e.push(
                    format!("{p}.forward_username_header"),
                    format!("{n:?} is not a header name sift may set"),
                );
                return None;
            }
        },
    };
    Some(BasicAuthSpec {
        users,
        users_file: b.users_file.clone(),
        challenge,
        forward_username_header,
        strip_authorization: b.strip_authorization.unwrap_or(false),
    })
}

/// A route's `external_auth`.
fn build_external_auth(
    a: &crate::config::file::ExternalAuthFile,
    p: &str,
    cluster_files: &[ClusterFile],
    e: &mut Errs,
) -> Option<crate::external_auth::ExternalAuthSpec> {
    let before = e.len();
    let protocol = a.protocol.unwrap_or_default();
    if protocol == crate::external_auth::AuthProtocol::Grpc {
        if cluster_files
            .iter()
            .any(|f| f.name == a.cluster && f.protocol != Some(UpstreamProtocol::Http2))
        {
            e.push(
                format!("{p}.protocol"),
                format!("grpc needs cluster {:?} to be `protocol: http2`", a.cluster),
            );
        }
        for (set, key) in [(a.path.is_some(), "path"), (a.method.is_some(), "method")] {
            if set {
                e.push(
                    format!("{p}.{key}"),
                    "is for protocol http (a grpc check is Authorization/Check)",
                );
            }
        }
    } else if !a.context_extensions.is_empty() {
        e.push(format!("{p}.context_extensions"), "is for protocol grpc");
    }
    if !cluster_files.iter().any(|f| f.name == a.cluster) {
        let mut known: Vec<&str> = cluster_files.iter().map(|c| c.name.as_str()).collect();
        known.sort_unstable();
        e.push(
            format!("{p}.cluster"),
            format!(
                "no cluster is named {:?} (clusters: {})",
                a.cluster,
                known.join(", ")
            ),
        );
    }
    if let Some(pre) = &a.path_prefix {
        if a.path.is_some() {
            e.push(
                format!("{p}.path_prefix"),
                "give path or path_prefix, not both",
            );
        }
        let ok = pre.starts_with('/')
            && !pre.contains(['?', '#'])
            && http::uri::PathAndQuery::try_from(pre.as_str()).is_ok();
        if !ok {
            e.push(
                format!("{p}.path_prefix"),
                format!("{pre:?} is not a path starting with '/' (no query)"),
            );
        }
        if protocol == crate::external_auth::AuthProtocol::Grpc {
            e.push(format!("{p}.path_prefix"), "is for protocol http");
        }
    }
    if let Some(path) = &a.path {
        let ok = path.starts_with('/')
            && !path.contains('#')
            && http::uri::PathAndQuery::try_from(path.as_str()).is_ok();
        if !ok {
            e.push(
                format!("{p}.path"),
                format!("{path:?} is not a path (and query) starting with '/'"),
            );
        }
    }
    let method = match a.method.as_deref() {
        None => Some(Method::GET),
        Some("original") => None,
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) if m.as_str().bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
            _ => {
                e.push(
                    format!("{p}.method"),
                    format!("{m:?} is not an upper-case method (GET, POST, ...) or `original`"),
                );
                None
            }
        },
    };
    use crate::external_auth::NamePattern;
    // A header name, or a prefix ending in `*` (`x-auth-request-*`).
    let names = |list: &[String], what: &str, e: &mut Errs| -> Vec<NamePattern> {
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            let lower = n.to_ascii_lowercase();
            match lower.strip_suffix('*') {
                Some(pre) if !pre.is_empty() && HeaderName::from_bytes(pre.as_bytes()).is_ok() => {
                    out.push(NamePattern::Prefix(pre.to_string()))
                }
                Some(_) => e.push(
                    format!("{p}.{what}[{i}]"),
                    format!("{n:?}: a prefix pattern needs a header-name prefix before '*'"),
                ),
                None => match HeaderName::from_bytes(lower.as_bytes()) {
                    Ok(h) => out.push(NamePattern::Exact(h)),
                    Err(_) => e.push(
                        format!("{p}.{what}[{i}]"),
                        format!("{n:?} is not a header name"),
                    ),
                },
            }
        }
        out
    };
    let request_headers = a
        .request_headers
        .as_ref()
        .map(|l| names(l, "request_headers", e));
    let upstream_headers = names(&a.upstream_headers, "upstream_headers", e);
    for (i, h) in upstream_headers.iter().enumerate() {
        let bad = match h {
            NamePattern::Exact(h) => {
                h.as_str().starts_with("x-sift-")
                    || matches!(
                        h.as_str(),
                        "host" | "content-length" | "transfer-encoding" | "connection"
                    )
            }
            // A prefix that covers sift's own headers or a connection one.
            NamePattern::Prefix(pre) => [
                "x-sift-",
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
            ]
            .iter()
            .any(|n| n.starts_with(pre.as_str()) || pre.starts_with("x-sift-")),
        };
        if bad {
            e.push(
                format!("{p}.upstream_headers[{i}]"),
                "names sift's own headers or the connection's (x-sift-*, host, content-length, transfer-encoding, connection)",
            );
        }
    }
    let client_headers = a
        .client_headers
        .as_ref()
        .map(|l| names(l, "client_headers", e));
    let client_headers_on_success =
        names(&a.client_headers_on_success, "client_headers_on_success", e);
    if let Some(w) = &a.with_request_body {
        if w.max_request_bytes.0 == 0 || w.max_request_bytes.0 > 16 << 20 {
            e.push(
                format!("{p}.with_request_body.max_request_bytes"),
                "must be between 1 byte and 16MiB",
            );
        }
    }
    let status_on_error = a.status_on_error.unwrap_or(403);
    if !(200..=599).contains(&status_on_error) {
        e.push(format!("{p}.status_on_error"), "must be 200..=599");
    }
    let timeout = positive(a.timeout, Dur::millis(200), &format!("{p}.timeout"), e);
    if e.len() > before {
        return None;
    }
    Some(crate::external_auth::ExternalAuthSpec {
        cluster: a.cluster.clone(),
        protocol,
        context_extensions: a.context_extensions.clone(),
        path: a.path.clone(),
        path_prefix: a.path_prefix.clone(),
        method,
        timeout,
        request_headers,
        upstream_headers,
        client_headers,
        client_headers_on_success,
        failure_mode_allow: a.failure_mode_allow.unwrap_or(false),
        status_on_error,
        with_body: a
            .with_request_body
            .as_ref()
            .map(|w| crate::external_auth::WithBody {
                max_request_bytes: w.max_request_bytes.0.min(16 << 20),
                allow_partial_message: w.allow_partial_message.unwrap_or(false),
                pack_as_bytes: w.pack_as_bytes.unwrap_or(false),
            }),
    })
}

/// A route's mirrors: each names a cluster, a share and a body limit;
/// only a forwarding route mirrors (a local answer has no upstream request
/// to copy).
fn build_mirrors(
    r: &RouteFile,
    p: &str,
    local: Option<&str>,
    cluster_files: &[ClusterFile],
    e: &mut Errs,
) -> Vec<MirrorSpec> {
    let Some(ms) = &r.mirror else {
        return Vec::new();
    };
    if let Some(a) = local {
        if !ms.is_empty() {
            e.push(
                format!("{p}.mirror"),
                format!(
                    "a route with `{a}` answers itself: it sends no request upstream to mirror"
                ),
            );
        }
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (j, m) in ms.iter().enumerate() {
        let mp = format!("{p}.mirror[{j}]");
        let mut ok = true;
        if !cluster_files.iter().any(|f| f.name == m.cluster) {
            let mut known: Vec<&str> = cluster_files.iter().map(|c| c.name.as_str()).collect();
            known.sort_unstable();
            e.push(
                format!("{mp}.cluster"),
                format!(
                    "no cluster is named {:?} (clusters: {})",
                    m.cluster,
                    known.join(", ")
                ),
            );
            ok = false;
        } else if !seen.insert(m.cluster.as_str()) {
            e.push(
                format!("{mp}.cluster"),
                format!("cluster {:?} is mirrored twice", m.cluster),
            );
            ok = false;
        }
        let errors = e.0.len();
        let per_million = per_million(m.percent, &format!("{mp}.percent"), e);
        ok &= e.0.len() == errors;
        let max_body = m.max_body.map_or(MirrorSpec::DEFAULT_MAX_BODY, |b| b.0);
        if max_body > MirrorSpec::MAX_MAX_BODY {
            e.push(
                format!("{mp}.max_body"),
                format!("{max_body} is more than 16MiB (each copy is held in memory)"),
            );
            ok = false;
        }
        if ok {
            out.push(MirrorSpec {
                cluster: m.cluster.clone(),
                per_million,
                max_body,
                host_suffix: m.host_suffix.unwrap_or(true),
            });
        }
    }
    out
}

/// A path written in the config to be sent as is (a rewrite or redirect
/// target): it must already be in the form sift gives every path (see
/// `normalize_path`), or the app would read another path than the one
/// written: starts with `/`, URI path characters only, no `%` escapes, no
/// `//`, no `.` or `..` segments, no query.
fn check_path_literal(s: &str, p: &str, e: &mut Errs) -> bool {
    let why = if !s.starts_with('/') {
        Some("must start with '/'")
    } else if let Some(c) = s
        .bytes()
        .find(|&b| !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)))
    {
        Some(match c {
            b'%' => "may not have '%' escapes (write the characters)",
            b'?' | b'#' => "may not have a query or fragment",
            _ => "has a character that is not allowed in a URI path",
        })
    } else if s.contains("//") {
        Some("may not have '//'")
    } else if s.split('/').any(|seg| seg == "." || seg == "..") {
        Some("may not have '.' or '..' segments")
    } else {
        None
    };
    if let Some(why) = why {
        e.push(p, format!("{s:?} {why}"));
    }
    why.is_none()
}

/// A route's `rewrite`: path prefix or regex, and host.
fn build_rewrite(
    rw: &RewriteFile,
    p: &str,
    e: &mut Errs,
) -> (Option<String>, Option<RegexRewrite>, Option<HostRewrite>) {
    if rw.prefix.is_none() && rw.regex.is_none() && rw.host.is_none() && rw.auto_host != Some(true)
    {
        e.push(
            p,
            "give `prefix` or `regex` (the path), and/or `host` or `auto_host: true` (the Host)",
        );
    }
    if rw.prefix.is_some() && rw.regex.is_some() {
        e.push(p, "give `prefix` or `regex`, not both");
    }
    if rw.host.is_some() && rw.auto_host == Some(true) {
        e.push(p, "give `host` or `auto_host`, not both");
    }
    let prefix = rw
        .prefix
        .as_ref()
        .and_then(|x| check_path_literal(x, &format!("{p}.prefix"), e).then(|| x.clone()));
    let regex = rw.regex.as_ref().and_then(|x| {
        let q = format!("{p}.regex");
        if x.pattern.is_empty() {
            e.push(
                format!("{q}.pattern"),
                "an empty pattern matches everywhere: give one",
            );
            return None;
        }
        // Captures come from the normalised path; the substitution's own
        // characters must be path characters too (no `%`, `?`, `#`).
        if let Some(c) = x
            .substitution
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/\\".contains(c)))
        {
            e.push(
                format!("{q}.substitution"),
                format!("{:?}: {c:?} is not allowed in a URI path", x.substitution),
            );
            return None;
        }
        match RegexRewrite::new(&x.pattern, &x.substitution) {
            Ok(r) => Some(r),
            Err(m) => {
                e.push(q, m);
                None
            }
        }
    });
    let host = if rw.auto_host == Some(true) {
        Some(HostRewrite::Auto)
    } else {
        rw.host.as_ref().and_then(|h| {
            let ok = !h.is_empty()
                && !h.contains('@')
                && http::uri::Authority::try_from(h.as_str()).is_ok();
            match (ok, HeaderValue::from_str(h)) {
                (true, Ok(v)) => Some(HostRewrite::Literal(v)),
                _ => {
                    e.push(
                        format!("{p}.host"),
                        format!("{h:?} is not a host or host:port"),
                    );
                    None
                }
            }
        })
    };
    (prefix, regex, host)
}

fn build_redirect(r: &RedirectFile, p: &str, e: &mut Errs) -> Option<RedirectSpec> {
    let ok_before = e.len();
    let https = match r.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("https") => Some(true),
        Some("http") => Some(false),
        Some(other) => {
            e.push(
                format!("{p}.scheme"),
                format!("{other:?} is not `http` or `https`"),
            );
            None
        }
    };
    let host = r.host.as_ref().map(|h| h.trim().to_ascii_lowercase());
    if let Some(h) = &host {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            e.push(
                format!("{p}.host"),
                format!(
                    "{h:?} is not a host name (letters, digits, '-', '.'; no port: use `port`)"
                ),
            );
        }
    }
    if r.port == Some(0) {
        e.push(format!("{p}.port"), "0 is not a port");
    }
    let path = match (&r.path, &r.prefix) {
        (Some(_), Some(_)) => {
            e.push(p, "has both `path` and `prefix`: give at most one");
            None
        }
        (Some(x), None) => {
            check_path_literal(x, &format!("{p}.path"), e).then(|| RedirectPath::Full(x.clone()))
        }
        (None, Some(x)) => check_path_literal(x, &format!("{p}.prefix"), e)
            .then(|| RedirectPath::Prefix(x.clone())),
        (None, None) => None,
    };
    let code = r.code.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&code) {
        e.push(
            format!("{p}.code"),
            format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
        );
    }
    if r.scheme.is_none()
        && r.host.is_none()
        && r.port.is_none()
        && r.path.is_none()
        && r.prefix.is_none()
    {
        e.push(
            p,
            "changes nothing (give `scheme`, `host`, `port`, `path` or `prefix`): it would redirect to itself",
        );
    }
    (e.len() == ok_before).then(|| RedirectSpec {
        https,
        host,
        port: r.port,
        path,
        code,
        strip_query: r.strip_query.unwrap_or(false),
    })
}

/// Envoy's default cap on a direct response body is 4KiB; sift's is larger
/// (error and maintenance pages) but still bounded: the body is copied
/// into every response.
const MAX_DIRECT_BODY: usize = 64 * 1024;

fn build_direct_response(
    d: &DirectResponseFile,
    p: &str,
    e: &mut Errs,
) -> Option<DirectResponseSpec> {
    let ok_before = e.len();
    if !(200..=599).contains(&d.status) {
        e.push(
            format!("{p}.status"),
            format!("{} is not in 200..=599", d.status),
        );
    }
    let body = d.body.clone().unwrap_or_default();
    if body.len() > MAX_DIRECT_BODY {
        e.push(
            format!("{p}.body"),
            format!("{} bytes is more than 64KiB", body.len()),
        );
    }
    if !body.is_empty() && (d.status == 204 || d.status == 304) {
        e.push(
            format!("{p}.body"),
            format!("a {} response has no body", d.status),
        );
    }
    let content_type = d
        .content_type
        .clone()
        .unwrap_or_else(|| "text/plain; charset=utf-8".into());
    if HeaderValue::from_str(&content_type).is_err() || content_type.is_empty() {
        e.push(
            format!("{p}.content_type"),
            format!("{content_type:?} is not a valid header value"),
        );
    }
    (e.len() == ok_before).then_some(DirectResponseSpec {
        status: d.status,
        body,
        content_type,
    })
}

/// Header conditions (`match.headers`, a rate limit action's
/// `header_value_match.headers`) at `{p}.headers[i]`.
fn build_header_matches(list: &[HeaderMatchFile], p: &str, e: &mut Errs) -> Vec<HeaderMatch> {
    let mut headers = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let hp = format!("{p}.headers[{i}]");
        let name = match HeaderName::from_bytes(h.name.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                e.push(
                    format!("{hp}.name"),
                    format!("{:?} is not a header name", h.name),
                );
                continue;
            }
        };
        let rule = match (&h.exact, &h.prefix, h.present, &h.regex) {
            (Some(v), None, None, None) => HeaderRule::Exact(v.clone()),
            (None, Some(v), None, None) => HeaderRule::Prefix(v.clone()),
            (None, None, Some(b), None) => HeaderRule::Present(b),
            (None, None, None, Some(r)) => match Pattern::new(r) {
                Ok(re) => HeaderRule::Regex(re),
                Err(m) => {
                    e.push(format!("{hp}.regex"), m);
                    continue;
                }
            },
            _ => {
                e.push(
                    &hp,
                    "give exactly one of `exact`, `prefix`, `regex`, `present`",
                );
                continue;
            }
        };
        if name.as_str().starts_with("x-sift-") && rule != HeaderRule::Present(false) {
            e.push(
                format!("{hp}.name"),
                format!(
                    "{:?}: x-sift-* headers are removed from client requests before routing, so this condition never holds",
                    h.name
                ),
            );
        }
        if name.as_str().contains('_') && rule != HeaderRule::Present(false) {
            e.push(
                format!("{hp}.name"),
                format!(
                    "{:?}: headers with '_' in their names are removed from client requests before routing, so this condition never holds",
                    h.name
                ),
            );
        }
        headers.push(HeaderMatch { name, rule });
    }
    headers
}

fn build_match(m: Option<&MatchFile>, p: &str, e: &mut Errs) -> MatchSpec {
    let Some(m) = m else {
        return MatchSpec::default();
    };
    let mut hosts = Vec::new();
    for (i, h) in m.host.iter().flatten().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if valid(rest) {
                hosts.push(HostMatch::Suffix(format!(".{rest}")));
                continue;
            }
        } else if valid(&h) {
            hosts.push(HostMatch::Exact(h));
            continue;
        }
        e.push(
            format!("{p}.host[{i}]"),
            format!("{h:?} is not a host name (letters, digits, '-', '.'; a leading '*.' for subdomains)"),
        );
    }
    let path = match &m.path {
        None => PathMatch::default(),
        Some(PathMatchFile::Exact(s)) | Some(PathMatchFile::Prefix(s)) if !s.starts_with('/') => {
            e.push(format!("{p}.path"), format!("{s:?} must start with '/'"));
            PathMatch::default()
        }
        Some(PathMatchFile::Exact(s)) => PathMatch::Exact(s.clone()),
        Some(PathMatchFile::Prefix(s)) => PathMatch::Prefix(s.clone()),
        Some(PathMatchFile::Regex(s)) => match Pattern::new(s) {
            Ok(re) => PathMatch::Regex(re),
            Err(m) => {
                e.push(format!("{p}.path.regex"), m);
                PathMatch::default()
            }
        },
    };
    let mut methods = Vec::new();
    for (i, name) in m.methods.iter().flatten().enumerate() {
        let up = name.to_ascii_uppercase();
        match Method::from_bytes(up.as_bytes()) {
            Ok(me) => methods.push(me),
            Err(_) => e.push(
                format!("{p}.methods[{i}]"),
                format!("{name:?} is not an HTTP method"),
            ),
        }
    }
    let headers = build_header_matches(m.headers.as_deref().unwrap_or_default(), p, e);
    let mut query = Vec::new();
    for (i, q) in m.query.iter().flatten().enumerate() {
        let qp = format!("{p}.query[{i}]");
        if q.name.is_empty() {
            e.push(format!("{qp}.name"), "is empty");
            continue;
        }
        let rule = match (&q.exact, &q.prefix, &q.regex, q.present) {
            (Some(v), None, None, None) => QueryRule::Exact(v.clone()),
            (None, Some(v), None, None) => QueryRule::Prefix(v.clone()),
            (None, None, Some(r), None) => match Pattern::new(r) {
                Ok(re) => QueryRule::Regex(re),
                Err(m) => {
                    e.push(format!("{qp}.regex"), m);
                    continue;
                }
            },
            (None, None, None, Some(b)) => QueryRule::Present(b),
            _ => {
                e.push(
                    &qp,
                    "give exactly one of `exact`, `prefix`, `regex`, `present`",
                );
                continue;
            }
        };
        query.push(QueryMatch {
            name: q.name.clone(),
            rule,
        });
    }
    MatchSpec {
        hosts,
        path,
        methods,
        headers,
        query,
    }
}

/// A route's header changes; values may name `%VARIABLES%` (`%%` is a
/// `%`). `response`: the response's (other variables are at hand).
fn build_ops(o: Option<&HeaderOpsFile>, p: &str, response: bool, e: &mut Errs) -> HeaderOps {
    let Some(o) = o else {
        return HeaderOps::default();
    };
    let name = |n: &str, path: String, e: &mut Errs| -> Option<HeaderName> {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                e.push(path, format!("{n:?} frames the message; sift manages it"));
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                e.push(path, format!("{n:?} is not a header name"));
                None
            }
        }
    };
    type Pairs = (
        Vec<(HeaderName, HeaderValue)>,
        Vec<(HeaderName, HeaderTemplate)>,
    );
    let pairs = |m: &Option<std::collections::BTreeMap<String, String>>,
                 what: &str,
                 e: &mut Errs|
     -> Pairs {
        let (mut v, mut t) = (Vec::new(), Vec::new());
        for (k, val) in m.iter().flatten() {
            let path = format!("{p}.{what}.{k}");
            let Some(n) = name(k, path.clone(), e) else {
                continue;
            };
            let literal = match HeaderTemplate::parse(val, response) {
                Ok(Some(tp)) => {
                    t.push((n, tp));
                    continue;
                }
                Ok(None) => val.replace("%%", "%"),
                Err(m) => {
                    e.push(path, m);
                    continue;
                }
            };
            match HeaderValue::from_str(&literal) {
                Ok(hv) => v.push((n, hv)),
                Err(_) => e.push(path, format!("{val:?} is not a valid header value")),
            }
        }
        (v, t)
    };
    let (set, set_templates) = pairs(&o.set, "set", e);
    let (add, add_templates) = pairs(&o.add, "add", e);
    let mut remove = Vec::new();
    for (i, r) in o.remove.iter().flatten().enumerate() {
        if let Some(n) = name(r, format!("{p}.remove[{i}]"), e) {
            remove.push(n);
        }
    }
    HeaderOps {
        set,
        add,
        remove,
        set_templates,
        add_templates,
    }
}

fn build_clusters(
    cs: &[ClusterFile],
    dns: &crate::dns::ResolverSpec,
    e: &mut Errs,
) -> Vec<ClusterSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let p = format!("clusters[{i}]");
        check_name(&c.name, &format!("{p}.name"), &mut names, "cluster", e);
        // A cluster may have no endpoints (a placeholder, or all taken out
        // of service): its requests get 503 no-healthy-endpoint, as in Envoy.
        let mut endpoints = Vec::new();
        let mut weights = Vec::new();
        let mut priorities = Vec::new();
        for (j, ep) in c.endpoints.iter().enumerate() {
            let (addr, weight, priority) = match ep {
                EndpointFile::Address(a) => (a, 1, 0),
                EndpointFile::Weighted(w) => {
                    (&w.address, w.weight.unwrap_or(1), w.priority.unwrap_or(0))
                }
            };
            if !(1..=1000).contains(&weight) {
                e.push(
                    format!("{p}.endpoints[{j}].weight"),
                    format!("{weight} is not between 1 and 1000"),
                );
            }
            if priority > 127 {
                e.push(
                    format!("{p}.endpoints[{j}].priority"),
                    format!("{priority} is not between 0 and 127"),
                );
            }
            match parse_endpoint(addr) {
                Ok(x) => {
                    endpoints.push(x);
                    weights.push(weight.clamp(1, 1000));
                    priorities.push(priority.min(127) as u8);
                }
                Err(m) => e.push(format!("{p}.endpoints[{j}]"), m),
            }
        }
        let discovery = c.discovery.unwrap_or_default();
        if discovery == Discovery::Static {
            for (j, ep) in endpoints.iter().enumerate() {
                if ep.host.parse::<std::net::IpAddr>().is_err() {
                    e.push(
                        format!("{p}.endpoints[{j}]"),
                        format!(
                            "{:?} is a name; a static cluster takes IP addresses (or use discovery: strict_dns)",
                            ep.authority.as_str()
                        ),
                    );
                }
            }
        }
        if discovery != Discovery::StrictDns {
            for (k, set) in [
                ("dns_refresh_rate", c.dns_refresh_rate.is_some()),
                ("dns_lookup_family", c.dns_lookup_family.is_some()),
                ("respect_dns_ttl", c.respect_dns_ttl.is_some()),
                (
                    "dns_failure_refresh_rate",
                    c.dns_failure_refresh_rate.is_some(),
                ),
            ] {
                if set {
                    e.push(format!("{p}.{k}"), "only applies to discovery: strict_dns");
                }
            }
        }
        let respect_ttl = c.respect_dns_ttl.unwrap_or(false);
        if respect_ttl && dns.servers.is_empty() {
            e.push(
                format!("{p}.respect_dns_ttl"),
                "needs the top-level `dns.resolvers`: the system's resolver does not give TTLs",
            );
        }
        let strict_dns = (discovery == Discovery::StrictDns).then(|| {
            let refresh = positive(
                c.dns_refresh_rate,
                Dur::secs(5),
                &format!("{p}.dns_refresh_rate"),
                e,
            );
            crate::dns::StrictDns {
                names: endpoints
                    .iter()
                    .cloned()
                    .zip(weights.iter().copied())
                    .zip(priorities.iter().copied())
                    .map(|((e, w), p)| (e, w, p))
                    .collect(),
                refresh,
                family: c.dns_lookup_family.unwrap_or_default(),
                respect_ttl,
                failure_refresh: positive(
                    c.dns_failure_refresh_rate,
                    refresh,
                    &format!("{p}.dns_failure_refresh_rate"),
                    e,
                ),
            }
        });
        let max_idle = c
            .pool
            .as_ref()
            .and_then(|p| p.max_idle_per_endpoint)
            .unwrap_or(128);
        let overprovisioning = c.overprovisioning_factor.unwrap_or(140);
        if !(100..=1000).contains(&overprovisioning) {
            e.push(
                format!("{p}.overprovisioning_factor"),
                format!(
                    "{overprovisioning} is not between 100 and 1000 (percent; Envoy's 1.4 is 140)"
                ),
            );
        }
        if c.overprovisioning_factor.is_some() && priorities.iter().all(|&x| x == 0) {
            e.push(
                format!("{p}.overprovisioning_factor"),
                "only applies when endpoints have priorities (`{address, priority}`)",
            );
        }
        out.push(ClusterSpec {
            name: c.name.clone(),
            endpoints,
            weights,
            priorities,
            overprovisioning: overprovisioning.clamp(100, 1000),
            lb: c.lb.unwrap_or_default(),
            protocol: c.protocol.unwrap_or_default(),
            connect_timeout: positive(
                c.connect_timeout,
                Dur::secs(1),
                &format!("{p}.connect_timeout"),
                e,
            ),
            tcp_keepalive: c
                .tcp_keepalive
                .as_ref()
                .map(|k| build_tcp_keepalive(k, &format!("{p}.tcp_keepalive"), e)),
            http2_keepalive: c.http2_keepalive.as_ref().map(|k| {
                if c.protocol.unwrap_or_default() != UpstreamProtocol::Http2 {
                    e.push(
                        format!("{p}.http2_keepalive"),
                        "needs `protocol: http2` (HTTP/1.1 has no PING)",
                    );
                }
                build_http2_keepalive(k, &p, e)
            }),
            request_timeout: positive(
                c.request_timeout,
                Dur::secs(15),
                &format!("{p}.request_timeout"),
                e,
            ),
            idle_timeout: positive(
                c.idle_timeout,
                Dur::secs(60),
                &format!("{p}.idle_timeout"),
                e,
            ),
            read_timeout: positive(
                c.read_timeout,
                Dur::secs(300),
                &format!("{p}.read_timeout"),
                e,
            ),
            max_idle_per_endpoint: max_idle,
            max_requests_per_connection: match c.pool.as_ref().and_then(|p| p.max_requests_per_connection) {
                Some(0) => {
                    e.push(format!("{p}.pool.max_requests_per_connection"), "must be at least 1");
                    None
                }
                n => n,
            },
            max_connection_duration: c
                .pool
                .as_ref()
                .and_then(|pf| pf.max_connection_duration)
                .map(|d| positive(Some(d), d, &format!("{p}.pool.max_connection_duration"), e)),
            breakers: build_breakers(
                c.circuit_breakers.as_ref(),
                &format!("{p}.circuit_breakers"),
                e,
            ),
            outlier: c
                .outlier_detection
                .as_ref()
                .map(|o| build_outlier(o, &format!("{p}.outlier_detection"), e)),
            health_check: c.health_check.as_ref().map(|h| {
                let spec = build_health(h, &format!("{p}.health_check"), e);
                if spec.kind == crate::upstream::health::HealthKind::Grpc
                    && c.protocol.unwrap_or_default() != UpstreamProtocol::Http2
                {
                    e.push(
                        format!("{p}.health_check.kind"),
                        "grpc probes need the cluster's protocol: http2",
                    );
                }
                spec
            }),
            slow_start: c.slow_start.as_ref().map(|ss| {
                let sp = format!("{p}.slow_start");
                if matches!(c.lb, Some(crate::config::file::LbPolicy::RingHash | crate::config::file::LbPolicy::Maglev)) {
                    e.push(
                        sp.clone(),
                        "is for lb round_robin and least_request (a hash LB keeps keys on their endpoint)",
                    );
                }
                let window = positive(Some(ss.window), Dur::secs(1), &format!("{sp}.window"), e);
                let aggression = ss.aggression.unwrap_or(1.0);
                if !(aggression.is_finite() && aggression > 0.0) {
                    e.push(format!("{sp}.aggression"), "must be a number above 0");
                }
                let min = ss.min_weight_percent.unwrap_or(10.0);
                if !(0.0..=100.0).contains(&min) {
                    e.push(format!("{sp}.min_weight_percent"), "must be 0..=100");
                }
                crate::config::model::SlowStartSpec {
                    window,
                    aggression: if aggression > 0.0 && aggression.is_finite() {
                        aggression
                    } else {
                        1.0
                    },
                    min_weight: (min / 100.0).clamp(0.0, 1.0),
                }
            }),
            retry_budget: build_budget(c.retry_budget.as_ref(), &format!("{p}.retry_budget"), e),
            tls: c.tls
                .as_ref()
                .map(|t| build_upstream_tls(t, &format!("{p}.tls"), e)),
            strict_dns,
            resolver: dns.clone(),
        });
    }
    out
}

/// A cluster's or Redis's `tls` section.
fn build_upstream_tls(t: &UpstreamTlsFile, p: &str, e: &mut Errs) -> crate::tls::UpstreamTlsSpec {
    if t.cert.is_some() != t.key.is_some() {
        e.push(p, "give both cert and key, or neither");
    }
    let names = t.subject_alt_names.clone().unwrap_or_default();
    if t.subject_alt_names.is_some() && names.is_empty() {
        e.push(
            format!("{p}.subject_alt_names"),
            "an empty list would accept no certificate: leave it out to check the server name",
        );
    }
    if names.len() > 64 {
        e.push(format!("{p}.subject_alt_names"), "at most 64 names");
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.len() > 1024 || n.bytes().any(|b| !b.is_ascii_graphic()) {
            e.push(
                format!("{p}.subject_alt_names[{i}]"),
                format!(
                    "{n:?} is not a SAN (a URI such as \"spiffe://cluster.local/ns/app/sa/api\" or a DNS name, printable ASCII without spaces, at most 1024 bytes)"
                ),
            );
        }
    }
    let ca = if t.ca == "system" {
        crate::tls::system_ca_bundle().unwrap_or_else(|err| {
            e.push(format!("{p}.ca"), err);
            std::path::PathBuf::new()
        })
    } else {
        t.ca.clone().into()
    };
    crate::tls::UpstreamTlsSpec {
        ca,
        server_name: t.server_name.clone(),
        cert: t.cert.clone().map(Into::into),
        key: t.key.clone().map(Into::into),
        subject_alt_names: names,
    }
}

/// `host:port`, `1.2.3.4:80` or `[::1]:80`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let bad =
        || format!("{s:?} is not host:port (e.g. \"10.0.0.7:8080\", \"app.svc:80\", \"[::1]:80\")");
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("{s:?}: port 0 is not a port to connect to"));
        }
        let authority = sa.to_string().parse().map_err(|_| bad())?;
        return Ok(Endpoint {
            host: sa.ip().to_string(),
            port: sa.port(),
            authority,
            addr: None,
        });
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok || port == 0 {
        return Err(bad());
    }
    let authority = s.parse().map_err(|_| bad())?;
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        port,
        authority,
        addr: None,
    })
}

fn build_rate_limits(rs: Option<&[RateLimitFile]>, p: &str, e: &mut Errs) -> Vec<RateLimitSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in rs.unwrap_or_default().iter().enumerate() {
        let rp = format!("{p}[{i}]");
        check_name(&r.name, &format!("{rp}.name"), &mut names, "rate limit", e);
        if r.requests_per_unit == 0 {
            e.push(format!("{rp}.requests_per_unit"), "must be at least 1");
        }
        let burst = r.burst.unwrap_or(r.requests_per_unit);
        if burst == 0 {
            e.push(format!("{rp}.burst"), "must be at least 1");
        }
        let unit_secs = match r.unit {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86400,
        };
        let mut key = Vec::new();
        let parts = r.key.clone().unwrap_or_else(|| vec!["client_ip".into()]);
        if parts.is_empty() {
            e.push(format!("{rp}.key"), "needs at least one part");
        }
        for (j, k) in parts.iter().enumerate() {
            let part = match k.as_str() {
                "client_ip" => Some(KeyPart::ClientIp),
                "identity" => Some(KeyPart::Identity),
                "method" => Some(KeyPart::Method),
                "path" => Some(KeyPart::Path),
                "route" => Some(KeyPart::Route),
                h if h.starts_with("header:") => {
                    let name = h["header:".len()..].to_ascii_lowercase();
                    // Names with '_' are removed from client requests: a
                    // policy keyed on one would never apply.
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(_) if !name.contains('_') => Some(KeyPart::Header(name)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match part {
                Some(p) => key.push(p),
                None if k.starts_with("header:") && k.contains('_') => e.push(
                    format!("{rp}.key[{j}]"),
                    format!(
                        "{k:?}: headers with '_' in their names are removed from client requests, so this part is never there"
                    ),
                ),
                None => e.push(
                    format!("{rp}.key[{j}]"),
                    format!(
                        "{k:?} is not one of client_ip, identity, method, path, route, header:NAME"
                    ),
                ),
            }
        }
        let mut values = HashSet::new();
        let mut overrides = Vec::new();
        for (j, o) in r.overrides.iter().flatten().enumerate() {
            if !values.insert(o.value.clone()) {
                e.push(
                    format!("{rp}.overrides[{j}].value"),
                    format!("{:?} is listed twice", o.value),
                );
            }
            if o.requests_per_unit == 0 {
                e.push(
                    format!("{rp}.overrides[{j}].requests_per_unit"),
                    "must be at least 1",
                );
            }
            overrides.push(Override {
                value: o.value.clone(),
                requests_per_unit: o.requests_per_unit,
                burst: o.burst.unwrap_or(o.requests_per_unit).max(1),
            });
        }
        let max_keys = r.max_keys.unwrap_or(100_000);
        if !(1..=10_000_000).contains(&max_keys) {
            e.push(
                format!("{rp}.max_keys"),
                format!("{max_keys} is outside 1..=10000000"),
            );
        }
        out.push(RateLimitSpec {
            name: r.name.clone(),
            requests_per_unit: r.requests_per_unit,
            unit_secs,
            burst: burst.max(1),
            key,
            overrides,
            shadow: r.shadow.unwrap_or(false),
            response_headers: r.response_headers.unwrap_or(false),
            max_keys: max_keys.clamp(1, 10_000_000),
            global: r.global.unwrap_or(false),
        });
    }
    out
}

fn build_retries(r: &RetryFile, p: &str, e: &mut Errs) -> RetrySpec {
    let attempts = r.attempts.unwrap_or(2);
    if attempts > 10 {
        e.push(
            format!("{p}.attempts"),
            format!("{attempts} is more than 10"),
        );
    }
    let mut spec = RetrySpec {
        attempts: attempts.min(10),
        on_connect_failure: false,
        on_reset: false,
        on_refused_stream: false,
        on_timeout: false,
        on_status: Vec::new(),
        on_grpc: 0,
        per_try_timeout: r
            .per_try_timeout
            .map(|d| positive(Some(d), d, &format!("{p}.per_try_timeout"), e).0),
        backoff_base: positive(
            r.backoff_base,
            Dur::millis(25),
            &format!("{p}.backoff_base"),
            e,
        )
        .0,
        backoff_max: positive(
            r.backoff_max,
            Dur::millis(250),
            &format!("{p}.backoff_max"),
            e,
        )
        .0,
        buffer_limit: r.buffer_limit.unwrap_or(Bytes(64 * 1024)).0,
        non_idempotent: r.non_idempotent.unwrap_or(false),
        hedge_on_per_try_timeout: r.hedge_on_per_try_timeout.unwrap_or(false),
        retry_after_max: r.retry_after.as_ref().map(|a| {
            positive(
                a.max_interval,
                Dur::secs(300),
                &format!("{p}.retry_after.max_interval"),
                e,
            )
            .0
        }),
    };
    if spec.hedge_on_per_try_timeout && spec.per_try_timeout.is_none() {
        e.push(
            format!("{p}.hedge_on_per_try_timeout"),
            "needs per_try_timeout (the time after which the next try starts beside the first)",
        );
    }
    let on = r.on.clone().unwrap_or_else(|| {
        vec![
            "connect-failure".into(),
            "reset".into(),
            "refused-stream".into(),
            "gateway-error".into(),
        ]
    });
    for (i, cond) in on.iter().enumerate() {
        match cond.as_str() {
            "connect-failure" => spec.on_connect_failure = true,
            "reset" => spec.on_reset = true,
            "refused-stream" => spec.on_refused_stream = true,
            "timeout" => spec.on_timeout = true,
            "5xx" => spec.on_status.extend(500..=599),
            "gateway-error" => spec.on_status.extend([502, 503, 504]),
            g if crate::policy::retry::GRPC_CONDITIONS.iter().any(|(n, _)| *n == g) => {
                for (n, c) in crate::policy::retry::GRPC_CONDITIONS {
                    if n == g {
                        spec.on_grpc |= 1 << c;
                    }
                }
            }
            code => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => spec.on_status.push(c),
                _ => e.push(
                    format!("{p}.on[{i}]"),
                    format!("{code:?} is not connect-failure, reset, refused-stream, timeout, 5xx, gateway-error, a status code, or a gRPC condition (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)"),
                ),
            },
        }
    }
    spec.on_status.sort_unstable();
    spec.on_status.dedup();
    spec
}

fn build_breakers(b: Option<&CircuitBreakersFile>, p: &str, e: &mut Errs) -> Breakers {
    let d = Breakers::default();
    let Some(b) = b else { return d };
    let mut get = |v: Option<usize>, def: usize, name: &str| match v {
        Some(0) => {
            e.push(format!("{p}.{name}"), "must be at least 1");
            def
        }
        Some(n) => n,
        None => def,
    };
    Breakers {
        max_connections: get(b.max_connections, d.max_connections, "max_connections"),
        max_pending_requests: get(
            b.max_pending_requests,
            d.max_pending_requests,
            "max_pending_requests",
        ),
        max_requests: get(b.max_requests, d.max_requests, "max_requests"),
        max_retries: get(b.max_retries, d.max_retries, "max_retries"),
    }
}

fn build_outlier(o: &OutlierFile, p: &str, e: &mut Errs) -> OutlierSpec {
    let ns = |d: Dur| d.0.as_nanos().min(u64::MAX as u128) as u64;
    let pct = o.max_ejection_percent.unwrap_or(10);
    if pct > 100 {
        e.push(
            format!("{p}.max_ejection_percent"),
            format!("{pct} is more than 100"),
        );
    }
    let failure_rate = o.failure_rate.as_ref().map(|f| {
        if !(1..=100).contains(&f.threshold_percent) {
            e.push(
                format!("{p}.failure_rate.threshold_percent"),
                format!("{} is outside 1..=100", f.threshold_percent),
            );
        }
        FailureRateSpec {
            threshold_percent: f.threshold_percent.clamp(1, 100),
            window: ns(positive(
                f.window,
                Dur::secs(30),
                &format!("{p}.failure_rate.window"),
                e,
            )),
            min_requests: f.min_requests.unwrap_or(20).max(1),
        }
    });
    OutlierSpec {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(5),
        interval: ns(positive(
            o.interval,
            Dur::secs(10),
            &format!("{p}.interval"),
            e,
        )),
        base_ejection_time: ns(positive(
            o.base_ejection_time,
            Dur::secs(30),
            &format!("{p}.base_ejection_time"),
            e,
        )),
        max_ejection_time: ns(positive(
            o.max_ejection_time,
            Dur::secs(300),
            &format!("{p}.max_ejection_time"),
            e,
        )),
        max_ejection_percent: pct.min(100),
        failure_rate,
        success_rate: o.success_rate.as_ref().map(|sr| {
            let factor = sr.stdev_factor.unwrap_or(1.9);
            if !(0.0..=100.0).contains(&factor) {
                e.push(
                    format!("{p}.success_rate.stdev_factor"),
                    format!("{factor} is not in 0..=100"),
                );
            }
            let minimum_hosts = sr.minimum_hosts.unwrap_or(5);
            if minimum_hosts < 2 {
                e.push(
                    format!("{p}.success_rate.minimum_hosts"),
                    "at least 2: one endpoint has no others to be compared with",
                );
            }
            crate::policy::outlier::SuccessRateSpec {
                minimum_hosts,
                request_volume: sr.request_volume.unwrap_or(100).max(1),
                stdev_factor: factor.clamp(0.0, 100.0),
            }
        }),
    }
}

fn build_jwt_providers(
    ps: &[JwtProviderFile],
    clusters: &HashSet<&str>,
    e: &mut Errs,
) -> Vec<crate::jwt::JwtProviderSpec> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, pf) in ps.iter().enumerate() {
        let p = format!("jwt_providers[{i}]");
        check_name(
            &pf.name,
            &format!("{p}.name"),
            &mut names,
            "jwt provider",
            e,
        );
        if pf.issuer.is_empty() {
            e.push(format!("{p}.issuer"), "is empty");
        }
        let remote = pf.remote_jwks.as_ref().and_then(|r| {
            let at = format!("{p}.remote_jwks");
            let discovery = r.discovery == Some(true);
            // With discovery, the issuer's discovery document.
            let (text, key) = match (&r.uri, discovery) {
                (Some(u), false) => (u.clone(), "uri"),
                (None, true) => (
                    format!(
                        "{}/.well-known/openid-configuration",
                        pf.issuer.trim_end_matches('/')
                    ),
                    "discovery",
                ),
                (Some(_), true) => {
                    e.push(at.clone(), "give `uri` or `discovery: true`, not both");
                    return None;
                }
                (None, false) => {
                    e.push(
                        at.clone(),
                        "give `uri` (the JWKS's) or `discovery: true` (OpenID Connect discovery from the issuer)",
                    );
                    return None;
                }
            };
            let uri = match text.parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty()) =>
                {
                    Some(u)
                }
                _ if discovery => {
                    e.push(
                        format!("{at}.discovery"),
                        format!(
                            "the issuer {:?} is not an http:// or https:// URL with a host, so it has no discovery document",
                            pf.issuer
                        ),
                    );
                    None
                }
                _ => {
                    e.push(
                        format!("{at}.{key}"),
                        format!("{text:?} is not an http:// or https:// URI with a host"),
                    );
                    None
                }
            };
            if !clusters.contains(r.cluster.as_str()) {
                e.push(
                    format!("{at}.cluster"),
                    format!("no cluster is named {:?}", r.cluster),
                );
            }
            let refresh = positive(r.refresh, Dur::secs(600), &format!("{at}.refresh"), e);
            let timeout = positive(r.timeout, Dur::secs(5), &format!("{at}.timeout"), e);
            uri.map(|u| {
                let mut cell = crate::jwt::RemoteJwks::new(u, r.cluster.clone(), refresh.0, timeout.0);
                cell.discover = discovery.then(|| pf.issuer.clone());
                std::sync::Arc::new(cell)
            })
        });
        let (source, text) = match (&pf.jwks_file, &pf.jwks) {
            (None, None) if pf.remote_jwks.is_some() => (
                remote.as_ref().map_or(String::new(), |r| r.uri.to_string()),
                None,
            ),
            (Some(_), _) | (_, Some(_)) if pf.remote_jwks.is_some() => {
                e.push(
                    &p,
                    "give exactly one of `jwks_file`, `jwks` and `remote_jwks`",
                );
                (String::new(), None)
            }
            (Some(f), None) => match std::fs::read_to_string(f) {
                Ok(t) => (f.clone(), Some(t)),
                Err(err) => {
                    e.push(
                        format!("{p}.jwks_file"),
                        format!("cannot read {f:?}: {err}"),
                    );
                    (f.clone(), None)
                }
            },
            (None, Some(t)) => ("inline".to_string(), Some(t.clone())),
            _ => {
                e.push(
                    &p,
                    "give exactly one of `jwks_file`, `jwks` and `remote_jwks`",
                );
                (String::new(), None)
            }
        };
        let keys = match text.map(|t| crate::jwt::parse_jwks(&t)) {
            Some(Ok(k)) => k,
            Some(Err(m)) => {
                let key = if pf.jwks_file.is_some() {
                    "jwks_file"
                } else {
                    "jwks"
                };
                e.push(format!("{p}.{key}"), format!("not a usable JWKS: {m}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut claims_to_headers = Vec::new();
        for (j, c) in pf.claims_to_headers.iter().flatten().enumerate() {
            match HeaderName::from_bytes(c.header.as_bytes()) {
                Ok(h) if !h.as_str().starts_with("x-sift-") && !h.as_str().contains('_') => {
                    claims_to_headers.push((c.claim.clone(), h.as_str().to_string()))
                }
                _ => e.push(
                    format!("{p}.claims_to_headers[{j}].header"),
                    format!(
                        "{:?} is not a header name sift can send (no x-sift- prefix, no '_')",
                        c.header
                    ),
                ),
            }
        }
        let mut locations = Vec::new();
        for (j, fh) in pf.from_headers.iter().flatten().enumerate() {
            match HeaderName::from_bytes(fh.name.as_bytes()) {
                Ok(h) => locations.push(crate::jwt::TokenLocation::Header {
                    name: h.as_str().to_string(),
                    prefix: fh.value_prefix.clone().unwrap_or_default(),
                }),
                Err(_) => e.push(
                    format!("{p}.from_headers[{j}].name"),
                    format!("{:?} is not a header name", fh.name),
                ),
            }
        }
        for (j, c) in pf.from_cookies.iter().flatten().enumerate() {
            if c.is_empty() || c.contains([';', '=', ' ', ',']) {
                e.push(
                    format!("{p}.from_cookies[{j}]"),
                    format!("{c:?} is not a cookie name"),
                );
            } else {
                locations.push(crate::jwt::TokenLocation::Cookie(c.clone()));
            }
        }
        for (j, q) in pf.from_params.iter().flatten().enumerate() {
            if q.is_empty() {
                e.push(format!("{p}.from_params[{j}]"), "is empty");
            } else {
                locations.push(crate::jwt::TokenLocation::Param(q.clone()));
            }
        }
        if pf.from_headers.is_none() && pf.from_cookies.is_none() && pf.from_params.is_none() {
            locations.push(crate::jwt::TokenLocation::bearer());
        } else if locations.is_empty() {
            e.push(
                &p,
                "from_headers, from_cookies and from_params name no place for the token",
            );
        }
        out.push(crate::jwt::JwtProviderSpec {
            name: pf.name.clone(),
            issuer: pf.issuer.clone(),
            audiences: pf.audiences.clone().unwrap_or_default(),
            jwks_source: source,
            keys,
            remote,
            clock_skew_secs: pf.clock_skew.map_or(60, |d| d.0.as_secs()),
            forward: pf.forward.unwrap_or(false),
            locations,
            claims_to_headers,
        });
    }
    out
}

fn build_compression(
    c: &CompressionFile,
    p: &str,
    e: &mut Errs,
) -> crate::compress::CompressionSpec {
    let level = c.level.unwrap_or(6);
    if !(1..=9).contains(&level) {
        e.push(format!("{p}.level"), format!("{level} is not within 1..=9"));
    }
    let mut content_types = Vec::new();
    match &c.content_types {
        None => content_types.extend(crate::compress::DEFAULT_TYPES.iter().map(|t| t.to_string())),
        Some(list) => {
            if list.is_empty() {
                e.push(
                    format!("{p}.content_types"),
                    "is empty: nothing would be compressed",
                );
            }
            for (i, t) in list.iter().enumerate() {
                let t = t.trim().to_ascii_lowercase();
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    let token = |s: &str| {
                        !s.is_empty()
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                    };
                    token(a) && token(b)
                });
                if ok {
                    content_types.push(t);
                } else {
                    e.push(
                        format!("{p}.content_types[{i}]"),
                        format!("{t:?} is not a media type (type/subtype, no parameters)"),
                    );
                }
            }
        }
    }
    let mut algorithms = Vec::new();
    for (i, a) in c
        .algorithms
        .clone()
        .unwrap_or_else(|| vec!["gzip".into()])
        .iter()
        .enumerate()
    {
        let coding = match a.as_str() {
            "gzip" => crate::compress::Coding::Gzip,
            "br" => crate::compress::Coding::Br,
            other => {
                e.push(
                    format!("{p}.algorithms[{i}]"),
                    format!("{other:?} is not gzip or br"),
                );
                continue;
            }
        };
        if algorithms.contains(&coding) {
            e.push(
                format!("{p}.algorithms[{i}]"),
                format!("{a:?} is listed twice"),
            );
        } else {
            algorithms.push(coding);
        }
    }
    if c.algorithms.as_ref().is_some_and(Vec::is_empty) {
        e.push(
            format!("{p}.algorithms"),
            "is empty: nothing would be compressed",
        );
    }
    let brotli_quality = c.brotli_quality.unwrap_or(4);
    if brotli_quality > 11 {
        e.push(
            format!("{p}.brotli_quality"),
            format!("{brotli_quality} is not within 0..=11"),
        );
    }
    crate::compress::CompressionSpec {
        min_bytes: c.min_bytes.map_or(256, |b| b.0),
        content_types,
        level: level.clamp(1, 9),
        algorithms,
        brotli_quality: brotli_quality.min(11),
    }
}

fn build_cors(c: &CorsFile, p: &str, e: &mut Errs) -> crate::cors::CorsSpec {
    use crate::cors::OriginMatch;
    let mut allow_origins = Vec::new();
    for (i, o) in c.allow_origins.iter().enumerate() {
        match OriginMatch::parse(o) {
            Ok(m) => allow_origins.push(m),
            Err(m) => e.push(format!("{p}.allow_origins[{i}]"), m),
        }
    }
    if c.allow_origins.is_empty() {
        e.push(
            format!("{p}.allow_origins"),
            "is empty: name the origins (or \"*\")",
        );
    }
    let credentials = c.allow_credentials.unwrap_or(false);
    if credentials && allow_origins.contains(&OriginMatch::Any) {
        e.push(
            format!("{p}.allow_credentials"),
            "with allow_origins \"*\" any web site could read answers made with its visitors' cookies: name the origins",
        );
    }
    let mut methods = Vec::new();
    for (i, m) in c
        .allow_methods
        .clone()
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()])
        .iter()
        .enumerate()
    {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m.as_str().to_string()),
            Err(_) => e.push(
                format!("{p}.allow_methods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ),
        }
    }
    let names = |list: &Option<Vec<String>>, key: &str, e: &mut Errs| -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in list.iter().flatten().enumerate() {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => out.push(h.as_str().to_string()),
                Err(_) => e.push(
                    format!("{p}.{key}[{i}]"),
                    format!("{n:?} is not a header name"),
                ),
            }
        }
        out
    };
    let allow_headers = if c
        .allow_headers
        .as_ref()
        .is_some_and(|h| h.iter().any(|n| n == "*"))
    {
        if c.allow_headers.as_ref().is_some_and(|h| h.len() > 1) {
            e.push(
                format!("{p}.allow_headers"),
                "\"*\" allows every header: give it alone",
            );
        }
        None
    } else {
        Some(names(&c.allow_headers, "allow_headers", e).join(", "))
    };
    crate::cors::CorsSpec {
        allow_origins,
        allow_methods: methods.join(", "),
        allow_headers,
        expose_headers: names(&c.expose_headers, "expose_headers", e).join(", "),
        max_age: c.max_age.map(|d| d.0.as_secs()),
        allow_credentials: credentials,
    }
}

fn build_csrf(c: &CsrfFile, p: &str, e: &mut Errs) -> crate::csrf::CsrfSpec {
    use crate::cors::OriginMatch;
    let mut trusted_origins = Vec::new();
    for (i, o) in c.trusted_origins.iter().enumerate() {
        match OriginMatch::parse(o) {
            Ok(OriginMatch::Any) => e.push(
                format!("{p}.trusted_origins[{i}]"),
                "\"*\" would trust every site: leave csrf out instead, or name the origins",
            ),
            Ok(m) => trusted_origins.push(m),
            Err(m) => e.push(format!("{p}.trusted_origins[{i}]"), m),
        }
    }
    crate::csrf::CsrfSpec {
        enforce: c.mode.unwrap_or_default() == CsrfMode::Enforce,
        trusted_origins,
        require_origin: c.require_origin.unwrap_or(false),
    }
}

fn build_health(h: &HealthCheckFile, p: &str, e: &mut Errs) -> HealthSpec {
    let kind = match h.kind.unwrap_or_default() {
        HealthKindFile::Http => HealthKind::Http,
        HealthKindFile::Tcp => HealthKind::Tcp,
        HealthKindFile::Grpc => HealthKind::Grpc,
    };
    if kind != HealthKind::Grpc && h.service.is_some() {
        e.push(format!("{p}.service"), "is for kind: grpc");
    }
    if kind == HealthKind::Grpc {
        for (key, set) in [
            ("path", h.path.is_some()),
            ("expected_statuses", h.expected_statuses.is_some()),
        ] {
            if set {
                e.push(
                    format!("{p}.{key}"),
                    "is for kind: http (a grpc probe calls grpc.health.v1.Health/Check)",
                );
            }
        }
    }
    if kind == HealthKind::Tcp {
        for (key, set) in [
            ("path", h.path.is_some()),
            ("host", h.host.is_some()),
            ("expected_statuses", h.expected_statuses.is_some()),
        ] {
            if set {
                e.push(
                    format!("{p}.{key}"),
                    "is for kind: http (a tcp probe only connects)",
                );
            }
        }
    }
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        e.push(
            format!("{p}.path"),
            format!("{path:?} is not a path (e.g. \"/healthz\")"),
        );
    }
    if let Some(host) = &h.host
        && host.parse::<http::uri::Authority>().is_err()
    {
        e.push(
            format!("{p}.host"),
            format!("{host:?} is not a host[:port]"),
        );
    }
    let threshold = |v: Option<u32>, d: u32, key: &str, e: &mut Errs| match v {
        Some(0) => {
            e.push(format!("{p}.{key}"), "must be at least 1");
            d
        }
        Some(n) => n,
        None => d,
    };
    let mut expected = Vec::new();
    for (i, item) in h.expected_statuses.iter().flatten().enumerate() {
        let range = match item {
            StatusItem::Code(c) => Some((*c, *c)),
            StatusItem::Range(r) => match r.trim().split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => r.trim().parse().ok().map(|c| (c, c)),
            },
        };
        match range {
            Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                expected.push((lo, hi))
            }
            _ => e.push(
                format!("{p}.expected_statuses[{i}]"),
                "is not a status code (100-599) or a range such as \"200-299\"",
            ),
        }
    }
    if h.expected_statuses.as_ref().is_some_and(Vec::is_empty) {
        e.push(
            format!("{p}.expected_statuses"),
            "is empty: no probe could pass",
        );
    }
    if expected.is_empty() {
        expected.push((200, 399));
    }
    let panic = h.panic_threshold.unwrap_or(50);
    if panic > 100 {
        e.push(
            format!("{p}.panic_threshold"),
            format!("{panic} is more than 100"),
        );
    }
    HealthSpec {
        kind,
        path,
        host: h.host.clone(),
        service: h.service.clone().unwrap_or_default(),
        interval: positive(h.interval, Dur::secs(5), &format!("{p}.interval"), e).0,
        jitter: h.jitter.map_or(Duration::ZERO, |d| d.0),
        timeout: positive(h.timeout, Dur::secs(1), &format!("{p}.timeout"), e).0,
        unhealthy_threshold: threshold(h.unhealthy_threshold, 3, "unhealthy_threshold", e),
        healthy_threshold: threshold(h.healthy_threshold, 2, "healthy_threshold", e),
        expected_statuses: expected,
        panic_threshold: panic.min(100),
    }
}

/// `routes[].cache`, with its defaults.
fn build_cache(
    c: &crate::config::file::CacheFile,
    p: &str,
    local: Option<&str>,
    e: &mut Errs,
) -> Option<crate::cache::CacheSpec> {
    let before = e.len();
    if let Some(a) = local {
        e.push(
            p.to_string(),
            format!("keeps a cluster's answers: a route with `{a}` has no cluster"),
        );
    }
    let max_bytes = c.max_bytes.map_or(64 << 20, |b| b.0);
    if !(1024..=(1u64 << 40)).contains(&max_bytes) {
        e.push(
            format!("{p}.max_bytes"),
            format!("{max_bytes} bytes is not between 1KiB and 1TiB"),
        );
    }
    let max_object_bytes = c.max_object_bytes.map_or((1 << 20).min(max_bytes), |b| b.0);
    if max_object_bytes == 0 || max_object_bytes > max_bytes {
        e.push(
            format!("{p}.max_object_bytes"),
            format!("{max_object_bytes} bytes is not between 1 and max_bytes ({max_bytes})"),
        );
    }
    let day = Duration::from_secs(365 * 86_400);
    let default_ttl = c.default_ttl.map(|d| d.0);
    if default_ttl.is_some_and(|d| d.is_zero() || d > day) {
        e.push(
            format!("{p}.default_ttl"),
            "must be more than 0s and at most 365 days (leave it out to keep only answers that name their freshness)",
        );
    }
    let stale_if_error = c.stale_if_error.map_or(Duration::ZERO, |d| d.0);
    let stale_while_revalidate = c.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0);
    let lock_timeout = c.lock_timeout.map_or(Duration::from_secs(5), |d| d.0);
    for (key, d) in [
        ("stale_if_error", stale_if_error),
        ("stale_while_revalidate", stale_while_revalidate),
        ("lock_timeout", lock_timeout),
    ] {
        if d > day {
            e.push(format!("{p}.{key}"), "must be at most 365 days");
        }
    }
    let mut key_headers = Vec::new();
    for (i, h) in c.key_headers.iter().flatten().enumerate() {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            e.push(
                format!("{p}.key_headers[{i}]"),
                format!("{h:?} is not a header name"),
            );
        } else if lower.starts_with("x-sift-") {
            e.push(
                format!("{p}.key_headers[{i}]"),
                "x-sift-* headers are removed from client requests: they cannot key the cache",
            );
        } else if key_headers.contains(&lower) {
            e.push(
                format!("{p}.key_headers[{i}]"),
                format!("{h:?} is listed twice"),
            );
        } else {
            key_headers.push(lower);
        }
    }
    if key_headers.len() > 16 {
        e.push(format!("{p}.key_headers"), "at most 16 headers");
    }
    if c.background_update == Some(true) && stale_while_revalidate.is_zero() {
        e.push(
            format!("{p}.background_update"),
            "needs stale_while_revalidate: the stale entry is what answers meanwhile",
        );
    }
    (e.len() == before).then_some(crate::cache::CacheSpec {
        max_bytes,
        max_object_bytes,
        default_ttl,
        stale_if_error,
        stale_while_revalidate,
        key_headers,
        lock_timeout,
        ignore_client_cache_control: c.ignore_client_cache_control.unwrap_or(false),
        background_update: c.background_update.unwrap_or(false),
    })
}

/// `routes[].adaptive_concurrency`, with Envoy's defaults.
fn build_adaptive(
    a: &AdaptiveConcurrencyFile,
    p: &str,
    e: &mut Errs,
) -> Option<crate::policy::adaptive::AdaptiveSpec> {
    let before = e.len();
    let mut pct = |v: Option<f64>, default: f64, key: &str, lo: f64, hi: f64| {
        let x = v.unwrap_or(default);
        if !(lo..=hi).contains(&x) {
            e.push(format!("{p}.{key}"), format!("{x} is not in {lo}..={hi}"));
        }
        x
    };
    let sample_percentile = pct(a.sample_percentile, 50.0, "sample_percentile", 0.0, 100.0);
    let jitter_percent = pct(a.jitter_percent, 10.0, "jitter_percent", 0.0, 100.0);
    let buffer_percent = pct(a.buffer_percent, 25.0, "buffer_percent", 0.0, 1000.0);
    let update_interval = a
        .update_interval
        .map_or(Duration::from_millis(100), |d| d.0);
    let min_rtt_interval = a.min_rtt_interval.map_or(Duration::from_secs(60), |d| d.0);
    for (key, d, lo) in [
        ("update_interval", update_interval, Duration::from_millis(1)),
        (
            "min_rtt_interval",
            min_rtt_interval,
            Duration::from_millis(10),
        ),
    ] {
        if d < lo || d > Duration::from_secs(86_400) {
            e.push(
                format!("{p}.{key}"),
                format!("{d:?} is not between {lo:?} and 1 day"),
            );
        }
    }
    let max_limit = a.max_limit.unwrap_or(1000);
    let min_concurrency = a.min_concurrency.unwrap_or(3);
    let min_rtt_requests = a.min_rtt_requests.unwrap_or(50);
    if min_concurrency == 0 {
        e.push(format!("{p}.min_concurrency"), "must be at least 1");
    }
    if max_limit < min_concurrency || max_limit > 1_000_000 {
        e.push(
            format!("{p}.max_limit"),
            format!("{max_limit} is not in min_concurrency ({min_concurrency})..=1000000"),
        );
    }
    if !(1..=100_000).contains(&min_rtt_requests) {
        e.push(
            format!("{p}.min_rtt_requests"),
            format!("{min_rtt_requests} is not in 1..=100000"),
        );
    }
    (e.len() == before).then_some(crate::policy::adaptive::AdaptiveSpec {
        sample_percentile,
        update_interval,
        max_limit,
        min_rtt_interval,
        min_rtt_requests,
        jitter_percent,
        min_concurrency,
        buffer_percent,
    })
}

fn build_budget(b: Option<&RetryBudgetFile>, p: &str, e: &mut Errs) -> Option<BudgetSpec> {
    let b = b.cloned().unwrap_or_default();
    if b.enabled == Some(false) {
        return None;
    }
    let percent = b.percent.unwrap_or(20);
    if percent > 100 {
        e.push(
            format!("{p}.percent"),
            format!("{percent} is more than 100"),
        );
    }
    Some(BudgetSpec {
        percent: percent.min(100),
        min_concurrency: b.min_concurrency.unwrap_or(3),
    })
}

/// The request value a canary's `sticky` or a `hash_policy` entry reads:
/// exactly one of its sources.
fn request_key(
    header: &Option<String>,
    cookie: &Option<String>,
    query: &Option<String>,
    identity: Option<bool>,
    client_ip: Option<bool>,
    p: &str,
    e: &mut Errs,
) -> Option<crate::canary::Sticky> {
    use crate::canary::Sticky;
    let key = match (header, cookie, query, identity, client_ip) {
        (Some(h), None, None, None, None) => Sticky::Header(h.to_ascii_lowercase()),
        (None, Some(k), None, None, None) => Sticky::Cookie(k.clone()),
        (None, None, Some(q), None, None) => Sticky::QueryParameter(q.clone()),
        (None, None, None, Some(true), None) => Sticky::Identity,
        (None, None, None, None, Some(true)) => Sticky::ClientIp,
        _ => {
            e.push(
                p.to_string(),
                "give exactly one of header, cookie, query_parameter, identity: true, client_ip: true",
            );
            return None;
        }
    };
    match &key {
        Sticky::Header(h) if HeaderName::from_bytes(h.as_bytes()).is_err() => {
            e.push(format!("{p}.header"), format!("{h:?} is not a header name"));
            None
        }
        Sticky::Cookie(k) | Sticky::QueryParameter(k) if k.is_empty() => {
            e.push(p.to_string(), "an empty name");
            None
        }
        _ => Some(key),
    }
}

/// A route's `source_ips`: address ranges to allow and deny.
fn build_source_ips(
    s: &crate::config::file::SourceIpsFile,
    p: &str,
    e: &mut Errs,
) -> crate::config::model::SourceIps {
    let list = |v: &Option<Vec<String>>, key: &str, e: &mut Errs| {
        v.iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, c)| {
                c.parse()
                    .map_err(|m: String| e.push(format!("{p}.{key}[{i}]"), m))
                    .ok()
            })
            .collect::<Vec<_>>()
    };
    let allow = list(&s.allow, "allow", e);
    let deny = list(&s.deny, "deny", e);
    if s.allow.as_ref().is_none_or(Vec::is_empty) && s.deny.as_ref().is_none_or(Vec::is_empty) {
        e.push(p.to_string(), "give allow, deny or both");
    }
    crate::config::model::SourceIps {
        allow,
        deny,
        address: s.address.unwrap_or_default(),
    }
}

/// A route's `hash_policy` entries, in order.
fn build_hash_policy(
    hs: Option<&[crate::config::file::HashPolicyFile]>,
    p: &str,
    e: &mut Errs,
) -> Vec<crate::config::model::HashPolicy> {
    hs.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let key = request_key(
                &h.header,
                &h.cookie,
                &h.query_parameter,
                h.identity,
                h.client_ip,
                &format!("{p}[{i}]"),
                e,
            )?;
            let hp = format!("{p}[{i}]");
            if h.cookie.is_none() && (h.ttl.is_some() || h.path.is_some()) {
                e.push(
                    format!("{hp}.ttl"),
                    "ttl and path make a missing cookie: they need `cookie`",
                );
            }
            if h.path.is_some() && h.ttl.is_none() {
                e.push(format!("{hp}.path"), "path is the made cookie's: it needs `ttl`");
            }
            if let Some(path) = &h.path {
                if !path.starts_with('/') || path.bytes().any(|b| b == b';' || !(0x21..0x7f).contains(&b)) {
                    e.push(
                        format!("{hp}.path"),
                        format!("{path:?} is not a cookie path (starts with /, printable, no ';' or spaces)"),
                    );
                }
            }
            Some(crate::config::model::HashPolicy {
                key,
                terminal: h.terminal.unwrap_or(false),
                generate: h
                    .ttl
                    .filter(|_| h.cookie.is_some())
                    .map(|ttl| crate::config::model::CookieGen {
                        ttl,
                        path: h.path.clone(),
                    }),
            })
        })
        .collect()
}

/// A share in percent (0 to 100, default 100) as millionths.
fn per_million(percent: Option<f64>, p: &str, e: &mut Errs) -> u32 {
    let percent = percent.unwrap_or(100.0);
    if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
        e.push(p.to_string(), format!("{percent} is not between 0 and 100"));
        return 0;
    }
    (percent * 10_000.0).round() as u32
}

/// A route's fault injection; only a forwarding route has one (a local
/// answer sends nothing upstream to delay or replace).
fn build_fault(
    f: &crate::config::file::FaultFile,
    p: &str,
    local: Option<&str>,
    e: &mut Errs,
) -> Option<crate::config::model::FaultSpec> {
    use crate::config::model::{FaultAbort, FaultDelay, FaultSpec};
    if let Some(a) = local {
        e.push(
            p.to_string(),
            format!(
                "a route with `{a}` answers itself: there is no upstream request to delay or abort"
            ),
        );
        return None;
    }
    if f.delay.is_none() && f.abort.is_none() {
        e.push(p.to_string(), "give delay, abort or both");
        return None;
    }
    let delay = f.delay.as_ref().map(|d| {
        if d.fixed.0.is_zero() || d.fixed.0 > std::time::Duration::from_secs(3600) {
            e.push(
                format!("{p}.delay.fixed"),
                format!("{} is not more than 0 and at most 1h", d.fixed),
            );
        }
        FaultDelay {
            fixed: d.fixed,
            per_million: per_million(d.percent, &format!("{p}.delay.percent"), e),
        }
    });
    let abort = f.abort.as_ref().map(|a| {
        if !(200..=599).contains(&a.status) {
            e.push(
                format!("{p}.abort.status"),
                format!("{} is not between 200 and 599", a.status),
            );
        }
        FaultAbort {
            status: a.status,
            per_million: per_million(a.percent, &format!("{p}.abort.percent"), e),
        }
    });
    Some(FaultSpec { delay, abort })
}

fn build_canary(
    c: &CanaryFile,
    clusters: Option<&[WeightedClusterFile]>,
    p: &str,
    e: &mut Errs,
) -> Option<crate::canary::CanarySpec> {
    use crate::canary::{CanarySpec, OverrideSpec, RolloutSpec};
    let Some(ws) = clusters else {
        e.push(
            p,
            "a canary needs the route's `clusters` (a weighted set), not `cluster`",
        );
        return None;
    };
    let index = |name: &str, what: &str, e: &mut Errs| {
        let i = ws.iter().position(|w| w.name == name);
        if i.is_none() {
            e.push(
                format!("{p}.{what}"),
                format!("{name:?} is not one of this route's clusters"),
            );
        }
        i
    };
    let stable = index(&c.stable, "stable", e);
    let canary = index(&c.canary, "canary", e);
    if c.stable == c.canary {
        e.push(format!("{p}.canary"), "stable and canary must differ");
    }
    let sticky = c.sticky.as_ref().and_then(|sf| {
        request_key(
            &sf.header,
            &sf.cookie,
            &sf.query_parameter,
            sf.identity,
            sf.client_ip,
            &format!("{p}.sticky"),
            e,
        )
    });
    let override_header = c.override_header.as_ref().map(|o| OverrideSpec {
        header: o
            .header
            .clone()
            .unwrap_or_else(|| "x-sift-canary".into())
            .to_ascii_lowercase(),
        identities: o.identities.clone().unwrap_or_default(),
    });
    if let Some(o) = &override_header {
        if HeaderName::from_bytes(o.header.as_bytes()).is_err() {
            e.push(
                format!("{p}.override.header"),
                format!("{:?} is not a header name", o.header),
            );
        }
    }
    let version_header = c.version_header.as_ref().map(|h| h.to_ascii_lowercase());
    if let Some(h) = &version_header {
        if HeaderName::from_bytes(h.as_bytes()).is_err() {
            e.push(
                format!("{p}.version_header"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    let rollout = c.rollout.as_ref().map(|r| {
        let steps = r.steps.clone().unwrap_or_else(|| vec![10, 50, 100]);
        if steps.is_empty()
            || steps.iter().any(|s| *s == 0 || *s > 100)
            || steps.windows(2).any(|w| w[0] >= w[1])
        {
            e.push(
                format!("{p}.rollout.steps"),
                "steps must rise strictly within 1..=100",
            );
        } else if steps.first().is_some_and(|s| *s >= 100) {
            // Analysis runs at steps below 100; [100] would send all
            // traffic to the canary unanalysed (and stable none to compare).
            e.push(
                format!("{p}.rollout.steps"),
                "needs at least one step below 100 (e.g. [10, 50, 100])",
            );
        }
        let ratio = |v: Option<f64>, d: f64, name: &str, e: &mut Errs| match v {
            Some(x) if !(x.is_finite() && x >= 1.0) => {
                e.push(
                    format!("{p}.rollout.{name}"),
                    format!("{x} must be at least 1.0"),
                );
                d
            }
            Some(x) => x,
            None => d,
        };
        let p95_ratio = ratio(r.p95_ratio, 1.10, "p95_ratio", e);
        let p99_ratio = ratio(r.p99_ratio, 1.15, "p99_ratio", e);
        let pct = |v: Option<f64>, d: f64, name: &str, e: &mut Errs| match v {
            Some(x) if !(x.is_finite() && (0.0..=100.0).contains(&x)) => {
                e.push(
                    format!("{p}.rollout.{name}"),
                    format!("{x} is outside 0..=100"),
                );
                d
            }
            Some(x) => x,
            None => d,
        };
        RolloutSpec {
            steps,
            interval: positive(
                r.interval,
                Dur::secs(300),
                &format!("{p}.rollout.interval"),
                e,
            )
            .0
            .as_nanos() as u64,
            min_requests: r.min_requests.unwrap_or(100).max(1),
            max_5xx_delta: pct(r.max_5xx_delta, 0.5, "max_5xx_delta", e),
            p95_ratio,
            p99_ratio,
            min_success_rate: pct(r.min_success_rate, 99.5, "min_success_rate", e),
            latency_tolerance_ms: r
                .latency_tolerance
                .map_or(3.0, |d| d.0.as_secs_f64() * 1000.0),
            start_on_load: r.start == Some(RolloutStart::OnLoad),
        }
    });
    Some(CanarySpec {
        stable: stable?,
        canary: canary?,
        stable_name: c.stable.clone(),
        canary_name: c.canary.clone(),
        sticky,
        override_header,
        version_header,
        rollout,
    })
}

/// Upper bound of a listener's TLS session cache (about 1 KB per session).
const MAX_SESSION_CACHE: usize = 1_000_000;

fn build_listener_tls(
    t: &ListenerTlsFile,
    protocol: DownstreamProtocol,
    p: &str,
    e: &mut Errs,
) -> crate::tls::ListenerTlsSpec {
    use crate::tls::{CertSpec, ListenerTlsSpec, MtlsMode};
    if t.certificates.is_empty() {
        e.push(
            format!("{p}.certificates"),
            "needs at least one certificate",
        );
    }
    let certificates = t
        .certificates
        .iter()
        .map(|c| CertSpec {
            cert: c.cert.clone().into(),
            key: c.key.clone().into(),
            server_names: c.server_names.clone().unwrap_or_default(),
        })
        .collect();
    let ca_ = t.client_auth.as_ref();
    let mode = match ca_ {
        None => MtlsMode::Off,
        Some(c) => match c.mode.unwrap_or_default() {
            MtlsModeFile::Require => MtlsMode::Require,
            MtlsModeFile::Optional => MtlsMode::Optional,
            MtlsModeFile::Off => MtlsMode::Off,
        },
    };
    let ca = ca_.and_then(|c| c.ca.clone()).map(Into::into);
    if mode != MtlsMode::Off && ca.is_none() {
        e.push(
            format!("{p}.client_auth.ca"),
            "mode require or optional needs a CA bundle",
        );
    }
    let alpn = match protocol {
        DownstreamProtocol::H1 => vec!["http/1.1".to_string()],
        DownstreamProtocol::H2 => vec!["h2".to_string()],
        DownstreamProtocol::Auto => vec!["h2".to_string(), "http/1.1".to_string()],
    };
    let resumption = t.session_resumption.clone().unwrap_or_default();
    let session_cache = resumption.cache_size.unwrap_or(256);
    if session_cache > MAX_SESSION_CACHE {
        e.push(
            format!("{p}.session_resumption.cache_size"),
            format!("at most {MAX_SESSION_CACHE}"),
        );
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("TLSv1.2" | "1.2") => false,
        Some("TLSv1.3" | "1.3") => true,
        Some(v) => {
            e.push(
                format!("{p}.min_version"),
                format!("{v:?} is not a version sift can require: TLSv1.2 (the default; nothing older is offered) or TLSv1.3"),
            );
            false
        }
    };
    ListenerTlsSpec {
        tls13_only,
        tickets: resumption.tickets.unwrap_or(true),
        session_cache: session_cache.min(MAX_SESSION_CACHE),
        certificates,
        mode,
        ca,
        crls: ca_
            .and_then(|c| c.crls.clone())
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect(),
        alpn,
    }
}

fn build_identity_match(m: &IdentityMatchFile, p: &str, e: &mut Errs) -> Option<IdentityMatch> {
    Some(match m {
        IdentityMatchFile::Exact(s) => IdentityMatch::Exact(s.clone()),
        IdentityMatchFile::TrustDomain(s) => IdentityMatch::TrustDomain(s.clone()),
        IdentityMatchFile::Prefix(s) => IdentityMatch::Prefix(s.clone()),
        IdentityMatchFile::Namespace(s) => match s.split_once('/') {
            Some((td, ns)) if !td.is_empty() && !ns.is_empty() && !ns.contains('/') => {
                IdentityMatch::Namespace(td.to_string(), ns.to_string())
            }
            _ => {
                e.push(
                    format!("{p}.namespace"),
                    format!("{s:?} is not TRUST_DOMAIN/NAMESPACE"),
                );
                return None;
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, load_str};

    /// A config with these filters and this route's filter list.
    fn cfg(filters: &str, route_filters: &str) -> String {
        format!(
            "listeners:\n  - {{ name: main, address: \"127.0.0.1:0\" }}\n\
             filters:\n{filters}\
             routes:\n  - name: r\n    cluster: app\n    filters:\n{route_filters}\
             clusters:\n  - {{ name: app, endpoints: [\"127.0.0.1:1\"] }}\n"
        )
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match load_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn has(errs: &[ConfigError], path: &str, needle: &str) -> bool {
        errs.iter()
            .any(|e| e.path == path && e.message.contains(needle))
    }

    #[test]
    fn external_rate_limit_is_checked() {
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] } ]
routes:
  - name: r
    cluster: app
    external_rate_limit:
      cluster: app
      domain: ""
      timeout: 0s
      descriptors:
        - []
        - [ { request_headers: { header_name: "bad name", descriptor_key: "" } } ]
"#,
        );
        let p = "routes[0].external_rate_limit";
        assert!(
            has(&errs, &format!("{p}.cluster"), "protocol: http2"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.domain"), "must not be empty"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.timeout"), "greater than 0"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.descriptors[0]"), "at least one action"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{p}.descriptors[1][0].request_headers.header_name"),
                "not a header name"
            ),
            "{errs:?}"
        );
        let ok = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] }, { name: rls, endpoints: ["127.0.0.1:2"], protocol: http2 } ]
routes:
  - name: r
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: d
      descriptors:
        - [ { remote_address: {} }, { destination_cluster: {} } ]
        - [ { request_headers: { header_name: ":path", descriptor_key: path, skip_if_absent: true } }, { identity: {} } ]
"#,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn slow_start_is_checked() {
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters:
  - { name: h, lb: maglev, endpoints: ["127.0.0.1:1"], slow_start: { window: 0s, aggression: 0, min_weight_percent: 101 } }
"#,
        );
        let p = "clusters[0].slow_start";
        assert!(has(&errs, p, "round_robin and least_request"), "{errs:?}");
        assert!(
            has(&errs, &format!("{p}.window"), "greater than 0"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.aggression"), "above 0"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.min_weight_percent"), "0..=100"),
            "{errs:?}"
        );
    }

    #[test]
    fn external_auth_is_checked() {
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] } ]
routes:
  - name: r
    cluster: app
    external_auth:
      cluster: nope
      path: "verify"
      method: "get me"
      timeout: 0s
      request_headers: ["bad name"]
      upstream_headers: [x-sift-user, host]
      status_on_error: 700
"#,
        );
        let p = "routes[0].external_auth";
        assert!(
            has(
                &errs,
                &format!("{p}.cluster"),
                "no cluster is named \"nope\""
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.path"), "starting with '/'"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.method"), "upper-case method"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.timeout"), "greater than 0"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{p}.request_headers[0]"),
                "not a header name"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.upstream_headers[0]"), "sift's own"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.upstream_headers[1]"), "sift's own"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.status_on_error"), "200..=599"),
            "{errs:?}"
        );
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] }, { name: auth, endpoints: ["127.0.0.1:2"] } ]
routes:
  - { name: p, cluster: app, external_auth: { cluster: auth, path: /a, path_prefix: "/b?x", upstream_headers: ["x-*", "*", "x-auth-*"] } }
"#,
        );
        let p = "routes[0].external_auth";
        assert!(
            has(&errs, &format!("{p}.path_prefix"), "not both"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.path_prefix"), "no query"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.upstream_headers[0]"), "sift's own"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{p}.upstream_headers[1]"), "before '*'"),
            "{errs:?}"
        );
        assert!(
            !errs
                .iter()
                .any(|e| e.path == format!("{p}.upstream_headers[2]")),
            "{errs:?}"
        );
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] }, { name: auth, endpoints: ["127.0.0.1:2"] } ]
routes:
  - { name: g, cluster: app, external_auth: { cluster: auth, protocol: grpc, path: /x } }
  - { name: h, cluster: app, external_auth: { cluster: auth, context_extensions: { a: b } } }
"#,
        );
        assert!(
            has(&errs, "routes[0].external_auth.protocol", "protocol: http2"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "routes[0].external_auth.path", "for protocol http"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "routes[1].external_auth.context_extensions",
                "for protocol grpc"
            ),
            "{errs:?}"
        );
        let ok = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters: [ { name: app, endpoints: ["127.0.0.1:1"] }, { name: auth, endpoints: ["127.0.0.1:2"] } ]
routes:
  - { name: r, cluster: app, external_auth: { cluster: auth, path: "/oauth2/auth?rd=1", method: original, upstream_headers: [X-Auth-Request-User] } }
"#,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn rate_limit_service_trees_are_checked() {
        let base = r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0", serve: envoy } ]
"#;
        let errs = errors(&format!(
            r#"{base}rate_limit_service:
  store: redis
  max_keys: 0
  domains:
    - domain: edge
      descriptors:
        - key: k
          rate_limit: {{ unit: second }}
        - key: k
          rate_limit: {{ requests_per_unit: 0, unit: minute, burst: 0 }}
        - key: u
          value: ""
          rate_limit: {{ unlimited: true, unit: second }}
        - key: ""
          rate_limit: {{ name: "a\"b", requests_per_unit: 1, unit: day, replaces: [ {{ name: ghost }}, {{ name: "a\"b" }} ] }}
    - domain: edge
"#
        ));
        let d = "rate_limit_service.domains[0].descriptors";
        assert!(
            has(&errs, "rate_limit_service.store", "no top-level `redis`"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "rate_limit_service.max_keys", "1..=10000000"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{d}[0].rate_limit.requests_per_unit"),
                "is required"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{d}[1]"), "key \"k\" and no value"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{d}[1].rate_limit.requests_per_unit"),
                "at least 1"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{d}[1].rate_limit.burst"), "at least 1"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{d}[2].value"), "must not be empty"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{d}[2].rate_limit"),
                "unlimited takes no unit"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{d}[3].key"), "must not be empty"),
            "{errs:?}"
        );
        assert!(
            has(&errs, &format!("{d}[3].rate_limit.name"), "visible ASCII"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{d}[3].rate_limit.replaces[0]"),
                "named \"ghost\""
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                &format!("{d}[3].rate_limit.replaces[1]"),
                "cannot replace itself"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, "rate_limit_service.domains[1].domain", "given twice"),
            "{errs:?}"
        );
        // Unknown keys (envoyproxy/ratelimit's detailed_metric is not one).
        let errs = errors(&format!(
            "{base}rate_limit_service: {{ domains: [ {{ domain: d, descriptors: [ {{ key: k, detailed_metric: true }} ] }} ] }}\n"
        ));
        assert!(
            errs.iter().any(|e| e.message.contains("detailed_metric")),
            "{errs:?}"
        );
        // Served only on envoy listeners.
        let errs = errors(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
rate_limit_service: { domains: [ { domain: d } ] }
"#,
        );
        assert!(has(&errs, "rate_limit_service", "serve: envoy"), "{errs:?}");
        // A good tree, upper-case units as envoyproxy/ratelimit writes them.
        let errs = errors(&format!(
            "{base}rate_limit_service: {{ domains: [ {{ domain: d, descriptors: [ {{ key: k, rate_limit: {{ unit: SECOND, requests_per_unit: 5 }} }} ] }} ] }}\n"
        ));
        assert!(errs.is_empty(), "{errs:?}");
    }

    /// Client headers with '_' in their names never reach routing.
    #[test]
    fn underscored_header_names_in_matches_and_keys_are_errors() {
        let errs = errors(
            "listeners:\n  - { name: main, address: \"127.0.0.1:0\" }\n\
             routes:\n  - name: r\n    cluster: app\n    \
             match: { headers: [{ name: x_tenant, exact: a }, { name: x_b, present: false }] }\n    \
             rate_limits: [{ name: p, requests_per_unit: 1, unit: second, key: [\"header:x_tenant\"] }]\n\
             clusters:\n  - { name: app, endpoints: [\"127.0.0.1:1\"] }\n",
        );
        assert!(
            has(&errs, "routes[0].match.headers[0].name", "'_'"),
            "{errs:?}"
        );
        assert!(
            !errs.iter().any(|e| e.path.contains("headers[1]")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.path.ends_with("key[0]") && e.message.contains("'_'")),
            "{errs:?}"
        );
    }

    #[test]
    fn max_decompressed_below_max_inspect_is_an_error() {
        let errs = errors(&cfg(
            "  - { name: spam, kind: spam, max_inspect_bytes: 1MiB, max_decompressed_bytes: 64KiB }\n",
            "      - { filter: spam }\n",
        ));
        assert!(
            has(
                &errs,
                "filters[0].max_decompressed_bytes",
                "filter \"spam\": max_decompressed_bytes 64KiB is smaller than its max_inspect_bytes 1MiB"
            ),
            "{errs:?}"
        );
        // Equal is fine; the default follows max_inspect_bytes.
        let c = load_str(&cfg(
            "  - { name: spam, kind: spam, max_inspect_bytes: 1MiB, max_decompressed_bytes: 1MiB }\n\
             \x20 - { name: big, kind: spam, max_inspect_bytes: 32MiB }\n",
            "      - { filter: spam }\n",
        ))
        .unwrap();
        assert_eq!(c.filters[0].max_decompressed_bytes, 1 << 20);
        assert_eq!(c.filters[1].max_decompressed_bytes, 32 << 20);
        // A route raising max_inspect_bytes past the filter's cap.
        let errs = errors(&cfg(
            "  - { name: spam, kind: spam }\n",
            "      - { filter: spam, max_inspect_bytes: 32MiB }\n",
        ));
        assert!(
            has(
                &errs,
                "routes[0].filters[0].max_inspect_bytes",
                "32MiB is more than filter \"spam\"'s max_decompressed_bytes 16MiB"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn options_a_cilog_filter_ignores_are_errors() {
        let errs = errors(&cfg(
            "  - name: ci\n    kind: cilog\n    threshold: 0.5\n    \
             extract: { form_fields: [log], query_fields: [log] }\n",
            "      - { filter: ci }\n",
        ));
        assert!(
            has(
                &errs,
                "filters[0].extract.query_fields",
                "option extract.query_fields has no effect on a cilog filter"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "filters[0].threshold",
                "option threshold has no effect on a cilog filter"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "filters[0].extract.form_fields",
                "option extract.form_fields has no effect on a cilog filter"
            ),
            "{errs:?}"
        );
        // What cilog does read is accepted.
        load_str(&cfg(
            "  - name: ci\n    kind: cilog\n    extract: { json_pointers: [/log] }\n    \
             block: { status: 422, message: no }\n    header_prefix: x-sift-build\n    \
             max_decompressed_bytes: 64MiB\n    on_oversize: spool\n    mode: block\n",
            "      - { filter: ci, rules: [{ when: [unknown], reject: true }] }\n",
        ))
        .unwrap();
        // Field names are not empty.
        let errs = errors(&cfg(
            "  - { name: spam, kind: spam, extract: { form_fields: [c, ''], query_fields: [''] } }\n",
            "      - { filter: spam }\n",
        ));
        assert!(
            has(
                &errs,
                "filters[0].extract.form_fields[1]",
                "a field name is not empty"
            ) && has(
                &errs,
                "filters[0].extract.query_fields[0]",
                "a field name is not empty"
            ),
            "{errs:?}"
        );
        // query_fields defaults to form_fields; `[]` turns it off.
        let c = load_str(&cfg(
            "  - { name: a, kind: spam, extract: { form_fields: [c] } }\n  \
             - { name: b, kind: spam, header_prefix: x-b, extract: { form_fields: [c], query_fields: [] } }\n  \
             - { name: d, kind: spam, header_prefix: x-d, extract: { query_fields: [q] } }\n  \
             - { name: e, kind: spam, header_prefix: x-e }\n",
            "      - { filter: a }\n",
        ))
        .unwrap();
        let q: Vec<&[String]> = c.filters.iter().map(|f| &f.query_fields[..]).collect();
        assert_eq!(q, [&["c".to_string()][..], &[], &["q".to_string()], &[]]);
        // And spam still takes both.
        load_str(&cfg(
            "  - { name: spam, kind: spam, threshold: 0.5, extract: { form_fields: [c] } }\n",
            "      - { filter: spam }\n",
        ))
        .unwrap();
    }

    #[test]
    fn verdict_header_collisions_on_a_route_are_errors() {
        let two = "  - { name: a, kind: spam }\n  - { name: b, kind: spam }\n";
        let errs = errors(&cfg(two, "      - { filter: a }\n      - { filter: b }\n"));
        assert!(
            has(
                &errs,
                "routes[0].filters[1]",
                "filter \"b\" writes the same verdict headers as filter \"a\" on this route \
                 (x-sift-spam-score, x-sift-spam-verdict)"
            ),
            "{errs:?}"
        );
        let errs = errors(&cfg(
            two,
            "      - { filter: a }\n      - { filter: a, mode: block }\n",
        ));
        assert!(
            has(&errs, "routes[0].filters[1]", "listed twice"),
            "{errs:?}"
        );
        // A shadow filter writes no headers; another prefix does not clash.
        load_str(&cfg(
            two,
            "      - { filter: a }\n      - { filter: b, mode: shadow }\n",
        ))
        .unwrap();
        load_str(&cfg(
            "  - { name: a, kind: spam }\n  - { name: b, kind: spam, header_prefix: x-sift-b }\n",
            "      - { filter: a }\n      - { filter: b }\n",
        ))
        .unwrap();
        // Different routes may use the same prefix.
        load_str(&cfg(two, "      - { filter: a }\n").replace(
            "clusters:",
            "  - { name: r2, cluster: app, filters: [{ filter: b }] }\nclusters:",
        ))
        .unwrap();
    }

    #[test]
    fn header_prefix_must_be_usable() {
        for (prefix, needle) in [
            ("\"\"", "is empty"),
            ("\"  \"", "is empty"),
            ("host", "standard \"host\" namespace"),
            ("content", "standard \"content\" namespace"),
            ("content-x", "standard \"content\" namespace"),
            ("transfer-enc", "standard \"transfer\" namespace"),
            ("connection", "standard \"connection\" namespace"),
            ("x-forwarded", "standard \"x-forwarded\" namespace"),
            ("\"a b\"", "does not make valid header names"),
        ] {
            let errs = errors(&cfg(
                &format!("  - {{ name: a, kind: spam, header_prefix: {prefix} }}\n"),
                "      - { filter: a }\n",
            ));
            assert!(
                has(&errs, "filters[0].header_prefix", needle),
                "{prefix}: {errs:?}"
            );
        }
        // Not a namespace: only whole dash-separated words count.
        let c = load_str(&cfg(
            "  - { name: a, kind: spam, header_prefix: App-Spam }\n  \
             - { name: c, kind: cilog, header_prefix: hostile-ci }\n  \
             - { name: d, kind: spam }\n",
            "      - { filter: a }\n      - { filter: c }\n      - { filter: d, mode: shadow }\n",
        ))
        .unwrap();
        let names: Vec<&str> = c.routes[0]
            .verdict_headers
            .iter()
            .map(|h| h.as_str())
            .collect();
        // Lower-cased; x-sift-* is left to the global strip; every filter of
        // the route counts, shadow ones too.
        assert_eq!(
            names,
            [
                "app-spam-score",
                "app-spam-verdict",
                "hostile-ci-class",
                "hostile-ci-confidence",
                "hostile-ci-evidence-line"
            ]
        );
    }

    #[test]
    fn learned_model_directory_must_exist() {
        let errs = errors(&cfg(
            "  - { name: a, kind: spam, learned_model: /nonexistent/dir/x.bin }\n",
            "      - { filter: a }\n",
        ));
        assert!(
            has(
                &errs,
                "filters[0].learned_model",
                "the directory /nonexistent/dir of /nonexistent/dir/x.bin does not exist"
            ),
            "{errs:?}"
        );
        let dir = std::env::temp_dir();
        load_str(&cfg(
            &format!(
                "  - {{ name: a, kind: spam, learned_model: {}/x.bin }}\n",
                dir.display()
            ),
            "      - { filter: a }\n",
        ))
        .unwrap();
    }

    #[test]
    fn rule_min_score_is_between_0_and_1() {
        let filters = "  - { name: ci, kind: cilog }\n";
        let errs = errors(&cfg(
            filters,
            "      - { filter: ci, mode: block, rules: [{ when: [infra], min_score: 1.5, reject: true }] }\n",
        ));
        assert!(
            has(
                &errs,
                "routes[0].filters[0].rules[0].min_score",
                "1.5 is not between 0 and 1"
            ),
            "{errs:?}"
        );
        let c = load_str(&cfg(
            filters,
            "      - { filter: ci, mode: block, rules: [{ when: [infra], min_score: 0.6, reject: true }] }\n",
        ))
        .unwrap();
        assert_eq!(c.routes[0].filters[0].rules[0].min_score, 0.6);
    }

    #[test]
    fn learn_data_is_a_labelled_folder_for_cilog_only() {
        let dir = std::env::temp_dir().join(format!("sift-learn-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // No labels.csv yet.
        let errs = errors(&cfg(
            &format!("  - {{ name: a, kind: cilog, learn_data: {d} }}\n"),
            "      - { filter: a }\n",
        ));
        assert!(
            has(&errs, "filters[0].learn_data", "has no labels.csv"),
            "{errs:?}"
        );
        std::fs::write(dir.join("labels.csv"), "path,label\n").unwrap();
        let c = load_str(&cfg(
            &format!("  - {{ name: a, kind: cilog, learn_data: {d}, learned_model: {d}/m.bin }}\n"),
            "      - { filter: a }\n",
        ))
        .unwrap();
        let f = &c.filters[0];
        assert_eq!(f.learn_data.as_deref(), Some(dir.as_path()));
        assert_eq!(
            f.learned_model.as_deref(),
            Some(dir.join("m.bin").as_path())
        );
        // Spam learns from its own weights: learn_data is an error there.
        let errs = errors(&cfg(
            &format!("  - {{ name: a, kind: spam, learn_data: {d} }}\n"),
            "      - { filter: a }\n",
        ));
        assert!(
            has(&errs, "filters[0].learn_data", "is for kind cilog"),
            "{errs:?}"
        );
        // A cilog learned_model without learn_data does nothing: an error.
        let errs = errors(&cfg(
            &format!("  - {{ name: a, kind: cilog, learned_model: {d}/m.bin }}\n"),
            "      - { filter: a }\n",
        ));
        assert!(
            has(&errs, "filters[0].learned_model", "only with learn_data"),
            "{errs:?}"
        );
        // Without either, a cilog filter does not learn (no learned file).
        let c = load_str(&cfg(
            "  - { name: a, kind: cilog }\n",
            "      - { filter: a }\n",
        ))
        .unwrap();
        assert!(c.filters[0].learned_model.is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A route with `route` YAML (flow mapping inside) and clusters a, b.
    fn mirror_cfg(route: &str) -> String {
        format!(
            "listeners:\n  - {{ name: main, address: \"127.0.0.1:0\" }}\n\
             routes:\n  - {{ name: r, {route} }}\n\
             clusters:\n  - {{ name: a, endpoints: [\"127.0.0.1:1\"] }}\n\
             \x20 - {{ name: b, endpoints: [\"127.0.0.1:2\"] }}\n"
        )
    }

    #[test]
    fn mirror_errors_name_their_path() {
        let cases = [
            (
                "cluster: a, mirror: [{ cluster: x }]",
                "routes[0].mirror[0].cluster",
                "no cluster is named \"x\" (clusters: a, b)",
            ),
            (
                "cluster: a, mirror: [{ cluster: b }, { cluster: b }]",
                "routes[0].mirror[1].cluster",
                "mirrored twice",
            ),
            (
                "cluster: a, mirror: [{ cluster: b, percent: 101 }]",
                "routes[0].mirror[0].percent",
                "101 is not between 0 and 100",
            ),
            (
                "cluster: a, mirror: [{ cluster: b, percent: -1 }]",
                "routes[0].mirror[0].percent",
                "not between 0 and 100",
            ),
            (
                "cluster: a, mirror: [{ cluster: b, max_body: 1GiB }]",
                "routes[0].mirror[0].max_body",
                "more than 16MiB",
            ),
            (
                "redirect: { scheme: https }, mirror: [{ cluster: b }]",
                "routes[0].mirror",
                "a route with `redirect` answers itself",
            ),
            (
                "direct_response: { status: 204 }, mirror: [{ cluster: b }]",
                "routes[0].mirror",
                "a route with `direct_response` answers itself",
            ),
        ];
        for (route, path, needle) in cases {
            let errs = errors(&mirror_cfg(route));
            assert!(has(&errs, path, needle), "{route}: {errs:?}");
        }
    }

    #[test]
    fn mirror_defaults_and_shares() {
        let c = load_str(&mirror_cfg(
            "cluster: a, mirror: [{ cluster: b }, { cluster: a, percent: 0.5, max_body: 1MiB }]",
        ))
        .unwrap();
        let m = &c.routes[0].mirror;
        assert_eq!(
            (m[0].cluster.as_str(), m[0].per_million, m[0].max_body),
            ("b", 1_000_000, 64 * 1024)
        );
        assert_eq!(
            (m[1].cluster.as_str(), m[1].per_million, m[1].max_body),
            ("a", 5_000, 1024 * 1024)
        );
    }
}
