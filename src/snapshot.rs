//! The snapshot: everything that can change at run time, built into one
//! immutable value and published through one `ArcSwap`. A request loads it
//! once and keeps that `Arc` to its end, so a reload never changes a request
//! in flight and never leaves half-applied state.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::config::Config;
use crate::config::model::{
    HeaderRule, HostMatch, ListenerSpec, PathMatch, QueryMatch, QueryRule, RouteSpec,
};
use crate::metrics::Metrics;
use crate::policy::ratelimit::{Limiter, RateLimitSpec};
use crate::upstream::Cluster;

pub struct Snapshot {
    pub config: Arc<Config>,
    /// The YAML text this snapshot was built from.
    pub source: Arc<str>,
    pub routes: Vec<Route>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Rate limits of each listener (by listener index).
    pub listener_limits: Vec<Vec<Arc<Limit>>>,
    /// TLS material of each listener (by listener index), rotated in place.
    pub listener_tls: Vec<Option<Arc<crate::tls::ListenerTls>>>,
    /// Body filters by name (kept across reloads while their spec is unchanged).
    pub filters: HashMap<String, Arc<dyn crate::filter::Filter>>,
    /// Monotonic generation, 1 for the first config.
    pub generation: u64,
    /// `sift_jwks_fetches_total`, for the remote key sets' fetch tasks.
    pub jwks_fetches: prometheus::IntCounterVec,
    /// The Redis of `global` rate limits (kept across reloads while its
    /// spec is unchanged, with its connections).
    pub redis: Option<Arc<crate::policy::redis::Redis>>,
    /// `sift_ratelimit_redis_errors_total`.
    pub redis_errors: prometheus::IntCounterVec,
    /// What the `strict_dns` clusters' names resolved to (kept across
    /// reloads while the top-level `dns` is unchanged).
    pub dns: Arc<crate::dns::Cache>,
    /// The rate limit service Envoy calls (its buckets kept across
    /// reloads per unchanged limit).
    pub rls: Option<Arc<crate::policy::rls::Service>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .finish()
    }
}

pub struct Route {
    pub spec: RouteSpec,
    /// Position in `Snapshot::routes`.
    pub index: usize,
    /// Backends with cumulative weights, for weighted picks.
    pub backends: Vec<Backend>,
    pub total_weight: u32,
    pub limits: Vec<Arc<Limit>>,
    /// Requests in flight on this route (kept across reloads by name).
    pub inflight: Arc<RouteInflight>,
    /// The adaptive concurrency controller (kept across reloads while its
    /// spec is unchanged) and its refusals' counter.
    pub adaptive: Option<(Arc<crate::policy::adaptive::Adaptive>, IntCounter)>,
    /// The route's HTTP cache (kept across reloads while its spec is
    /// unchanged).
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Canary state (runtime weights, windows, rollout), kept across
    /// reloads while the route's file weights and canary spec are unchanged.
    pub canary: Option<Arc<crate::canary::CanaryState>>,
    /// The route's body filters, in order.
    pub filters: Vec<RouteFilter>,
    /// Clusters that filter rules can send a request to.
    pub rule_backends: HashMap<String, Backend>,
    /// The filter whose verdict answers requests (answer routes).
    pub answer: Option<Arc<dyn crate::filter::Filter>>,
    /// Clusters that get a copy of a share of the requests.
    pub mirrors: Vec<crate::mirror::Mirror>,
    /// The external authorization service's cluster and the route's
    /// `sift_external_auth_total` counters (by `Outcome::ALL`).
    pub auth: Option<(Arc<crate::upstream::Cluster>, [IntCounter; 4])>,
    /// The external rate limit service's cluster and the route's
    /// `sift_external_ratelimit_total` counters (by `Outcome::ALL`).
    pub remote_limit: Option<(Arc<crate::upstream::Cluster>, [IntCounter; 4])>,
    /// The route's `sift_csrf_requests_total` counters (by
    /// `csrf::RESULTS`), with a `csrf` policy.
    pub csrf: Option<[IntCounter; 5]>,
}

/// A filter as one route uses it.
pub struct RouteFilter {
    pub spec: crate::config::model::RouteFilterSpec,
    pub filter: Arc<dyn crate::filter::Filter>,
}

/// A rate-limit policy and its decision counters (for each route index:
/// allowed, denied, shadow_denied).
pub struct Limit {
    pub limiter: Arc<Limiter>,
    pub counters: Vec<[IntCounter; 3]>,
    /// A global policy's Redis key prefix: `{key_prefix}:{scope}:{policy}:`
    /// (the bucket key in hex follows).
    pub redis_key: Option<String>,
}

pub struct RouteInflight {
    pub count: std::sync::atomic::AtomicUsize,
    pub gauge: IntGauge,
}

/// Held while a request is in flight on a route.
pub struct InflightSlot(Arc<RouteInflight>);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

impl RouteInflight {
    /// Count a request in; `None` when `max` are already in flight.
    pub fn enter(self: &Arc<Self>, max: Option<usize>) -> Option<InflightSlot> {
        let prev = self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.gauge.inc();
        let slot = InflightSlot(self.clone());
        match max {
            Some(m) if prev >= m => None,
            _ => Some(slot),
        }
    }
}

/// One cluster of a route, with its metric handles resolved once per
/// snapshot so the request path never hashes label values.
pub struct Backend {
    pub cluster: Arc<Cluster>,
    pub cumulative_weight: u32,
    pub stats: Arc<BackendStats>,
}

pub struct BackendStats {
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub duration: Histogram,
    /// `requests[listener index][code class index]`.
    pub requests: Vec<[IntCounter; 5]>,
    /// The canary analysis window of this version, if the route has a canary.
    pub window: Option<Arc<crate::canary::Window>>,
}

impl BackendStats {
    pub fn count(&self, listener: usize, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        if let Some(c) = self.requests.get(listener) {
            c[class].inc();
        }
    }
}

impl Route {
    /// Pick a backend cluster by weight.
    pub fn pick_backend(&self) -> Option<&Backend> {
        if self.backends.len() == 1 {
            return self.backends.first();
        }
        if self.total_weight == 0 {
            return None;
        }
        let x = fastrand::u32(..self.total_weight);
        self.backends.iter().find(|b| x < b.cumulative_weight)
    }

    fn matches(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> bool {
        let m = &self.spec.matches;
        if !m.hosts.is_empty()
            && !m.hosts.iter().any(|h| match h {
                HostMatch::Exact(e) => e == host,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            })
        {
            return false;
        }
        let path_ok = match &m.path {
            PathMatch::Exact(e) => e == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path.as_bytes()),
        };
        if !path_ok {
            return false;
        }
        if !m.methods.is_empty() && !m.methods.contains(method) {
            return false;
        }
        headers_match(&m.headers, headers) && m.query.iter().all(|q| query_matches(q, query))
    }
}

/// Every condition of `hms` holds for `headers`. Several lines of a name
/// are matched as one value, joined by "," (Envoy since CVE-2020-25017):
/// the first line alone may not be what the upstream reads.
pub fn headers_match(hms: &[crate::config::model::HeaderMatch], headers: &HeaderMap) -> bool {
    hms.iter().all(|hm| {
        let v = crate::field::joined(headers, &hm.name);
        match &hm.rule {
            HeaderRule::Present(want) => v.is_some() == *want,
            HeaderRule::Exact(e) => v.is_some_and(|v| *v == *e.as_bytes()),
            HeaderRule::Prefix(p) => v.is_some_and(|v| v.starts_with(p.as_bytes())),
            HeaderRule::Regex(re) => v.is_some_and(|v| re.is_match(&v)),
        }
    })
}

/// A query condition holds when **any** occurrence of the parameter
/// satisfies it (`present: false`: when none occurs). Names and values are
/// compared percent-decoded with `+` as a space, as apps read them; pairs
/// are split on `&` only (as Envoy, Gateway API and current app stacks do).
/// Envoy matches the first occurrence only; an app may read the last
/// (PHP, Express's last string) or all of them, so `?debug=0&debug=1`
/// could route past a route meant for `debug=1` while the app acts on it.
/// "Any" makes a route on a value catch every request in which an app
/// could see that value.
fn query_matches(q: &QueryMatch, query: Option<&str>) -> bool {
    let mut found = false;
    for pair in query.unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if *query_decode(k) != *q.name.as_bytes() {
            continue;
        }
        found = true;
        let v = query_decode(v);
        let hit = match &q.rule {
            QueryRule::Present(want) => return *want,
            QueryRule::Exact(e) => *v == *e.as_bytes(),
            QueryRule::Prefix(p) => v.starts_with(p.as_bytes()),
            QueryRule::Regex(re) => re.is_match(&v),
        };
        if hit {
            return true;
        }
    }
    matches!(q.rule, QueryRule::Present(false)) && !found
}

/// Percent-decode a query name or value, `+` as a space; a `%` that starts
/// no escape stays as it is (as browsers and most app stacks read it).
pub(crate) fn query_decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return std::borrow::Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

impl Snapshot {
    /// Start the clusters' background work (health probes) on the current
    /// runtime, for clusters that have none running (a cluster kept across
    /// a reload keeps its task). The admin thread calls it at start and
    /// after each reload, so probes never run on the proxy's workers.
    pub fn start_background(&self) {
        for c in self.clusters.values() {
            c.start();
        }
        for (provider, cell) in self.remote_jwks() {
            if let (Ok(mut via), Some(c)) = (cell.via.lock(), self.clusters.get(&cell.cluster)) {
                *via = Arc::downgrade(c);
            }
            crate::jwks::start(&cell, &provider, self.jwks_fetches.clone());
        }
    }

    /// The remote key sets the routes use, each once, with a provider name.
    pub fn remote_jwks(&self) -> Vec<(String, Arc<crate::jwt::RemoteJwks>)> {
        let mut out: Vec<(String, Arc<crate::jwt::RemoteJwks>)> = Vec::new();
        for r in &self.routes {
            if let Some(cell) = r.spec.jwt.as_ref().and_then(|j| j.provider.remote.as_ref()) {
                if !out.iter().any(|(_, c)| Arc::ptr_eq(c, cell)) {
                    out.push((
                        r.spec
                            .jwt
                            .as_ref()
                            .map_or(String::new(), |j| j.provider.name.clone()),
                        cell.clone(),
                    ));
                }
            }
        }
        out
    }

    /// Build a snapshot, re-using the clusters (and so their connection
    /// pools) of `prev` whose spec did not change.
    pub fn build(
        config: Config,
        source: Arc<str>,
        prev: Option<&Snapshot>,
        metrics: &Metrics,
        now: u64,
    ) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
        let mut errors = Vec::new();
        // A remote key set the previous snapshot fetched is kept (its keys
        // and its fetch task) while its source and schedule are unchanged.
        let mut config = config;
        if let Some(p) = prev {
            let old = p.remote_jwks();
            for r in &mut config.routes {
                if let Some(cell) = r.jwt.as_mut().and_then(|j| j.provider.remote.as_mut()) {
                    if let Some((_, o)) = old.iter().find(|(_, o)| o.same(cell)) {
                        *cell = o.clone();
                    }
                }
            }
        }
        // strict_dns clusters: their endpoints are what their names
        // resolve to (names never seen are looked up now).
        let dns = prev
            .map(|p| p.dns.clone())
            .filter(|c| c.resolver == config.dns)
            .unwrap_or_else(|| Arc::new(crate::dns::Cache::new(config.dns.clone())));
        crate::dns::expand(&mut config.clusters, &dns);
        let err = |path: String, e: crate::tls::TlsError| crate::config::ConfigError {
            path,
            line: None,
            message: e.to_string(),
        };
        let mut clusters = HashMap::new();
        for (i, spec) in config.clusters.iter().enumerate() {
            let reused = prev
                .and_then(|p| p.clusters.get(&spec.name))
                .filter(|c| c.spec == *spec)
                .cloned();
            let built = reused.map(Ok).unwrap_or_else(|| {
                let c = Cluster::new(spec.clone(), metrics)?;
                // A changed cluster keeps what it knew of the endpoints it
                // still has (health, ejections): a DNS refresh or a reload
                // that adds one endpoint does not make the others new.
                if let Some(old) = prev.and_then(|p| p.clusters.get(&spec.name)) {
                    c.carry_state(old, now);
                }
                Ok(c)
            });
            match built {
                Ok(c) => {
                    clusters.insert(spec.name.clone(), c);
                }
                Err(e) => errors.push(err(format!("clusters[{i}].tls"), e)),
            }
        }
        let mut listener_tls = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(spec) = &l.tls else {
                listener_tls.push(None);
                continue;
            };
            let reused = prev
                .and_then(|p| {
                    p.listener_index(&l.name)
                        .and_then(|j| p.listener_tls.get(j))
                })
                .and_then(|t| t.clone())
                .filter(|t| t.spec == *spec);
            match reused
                .map(Ok)
                .unwrap_or_else(|| crate::tls::ListenerTls::new(spec.clone()))
            {
                Ok(t) => listener_tls.push(Some(t)),
                Err(e) => {
                    errors.push(err(format!("listeners[{i}].tls"), e));
                    listener_tls.push(None);
                }
            }
        }
        let mut filters: HashMap<String, Arc<dyn crate::filter::Filter>> = HashMap::new();
        for (i, spec) in config.filters.iter().enumerate() {
            let reused = prev
                .and_then(|p| p.filters.get(&spec.name))
                .filter(|f| f.spec() == spec)
                .cloned();
            match reused.map(Ok).unwrap_or_else(|| crate::filter::build(spec)) {
                Ok(f) => {
                    filters.insert(spec.name.clone(), f);
                }
                Err(e) => errors.push(crate::config::ConfigError {
                    path: format!("filters[{i}].model"),
                    line: None,
                    message: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let listener_names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let route_names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        // Re-use a limiter whose policy did not change: its buckets survive.
        let prev_limiter = |scope: &str, spec: &RateLimitSpec| -> Option<Arc<Limiter>> {
            let p = prev?;
            let pool: Vec<&Arc<Limit>> = if let Some(l) = scope.strip_prefix("listener:") {
                let i = p.listener_index(l)?;
                p.listener_limits.get(i)?.iter().collect()
            } else {
                p.routes
                    .iter()
                    .find(|r| r.spec.name == scope)?
                    .limits
                    .iter()
                    .collect()
            };
            pool.into_iter()
                .find(|l| l.limiter.spec == *spec)
                .map(|l| l.limiter.clone())
        };
        let redis_prefix = config.redis.as_ref().map(|r| r.key_prefix.clone());
        let make_limit = |scope: &str, spec: &RateLimitSpec| -> Arc<Limit> {
            let limiter =
                prev_limiter(scope, spec).unwrap_or_else(|| Arc::new(Limiter::new(spec.clone())));
            let counters = route_names
                .iter()
                .map(|r| {
                    ["allowed", "denied", "shadow_denied"].map(|d| {
                        metrics
                            .ratelimit_decisions
                            .with_label_values(&[r, spec.name.as_str(), d])
                    })
                })
                .collect();
            let redis_key = spec
                .global
                .then_some(redis_prefix.as_ref())
                .flatten()
                .map(|p| {
                    let scope = match scope.strip_prefix("listener:") {
                        Some(l) => format!("listener:{l}"),
                        None => format!("route:{scope}"),
                    };
                    format!("{p}:{scope}:{}:", spec.name)
                });
            Arc::new(Limit {
                limiter,
                counters,
                redis_key,
            })
        };
        let listener_limits = config
            .listeners
            .iter()
            .map(|l| {
                l.rate_limits
                    .iter()
                    .map(|spec| make_limit(&format!("listener:{}", l.name), spec))
                    .collect()
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let file_weights: Vec<u32> = spec.backends.iter().map(|b| b.weight).collect();
                let canary = spec.canary.as_ref().map(|c| {
                    prev.and_then(|p| p.routes.iter().find(|r| r.spec.name == spec.name))
                        .and_then(|r| r.canary.clone())
                        .filter(|s| s.spec == *c && s.file_weights == file_weights)
                        .unwrap_or_else(|| {
                            crate::canary::CanaryState::new(c.clone(), file_weights.clone(), now)
                        })
                });
                let mut cum = 0u32;
                let route: Arc<str> = Arc::from(spec.name.as_str());
                let make_backend = |name: &str, cum: u32, window| {
                    let cluster = clusters.get(name)?.clone();
                    let labels = |l: &str, class: &str| {
                        metrics
                            .requests
                            .with_label_values(&[l, &spec.name, name, class])
                    };
                    let stats = BackendStats {
                        route: route.clone(),
                        cluster: Arc::from(name),
                        duration: metrics
                            .request_duration
                            .with_label_values(&[spec.name.as_str(), name]),
                        requests: listener_names
                            .iter()
                            .map(|l| ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| labels(l, c)))
                            .collect(),
                        window,
                    };
                    Some(Backend {
                        cluster,
                        cumulative_weight: cum,
                        stats: Arc::new(stats),
                    })
                };
                let backends = spec
                    .backends
                    .iter()
                    .enumerate()
                    .filter_map(|(bi, b)| {
                        cum += b.weight;
                        make_backend(
                            &b.cluster,
                            cum,
                            canary.as_ref().and_then(|c| c.windows.get(bi).cloned()),
                        )
                    })
                    .collect();
                let mut rule_backends = HashMap::new();
                for rf in &spec.filters {
                    for rule in &rf.rules {
                        if let crate::config::model::RuleAction::Cluster(c) = &rule.action {
                            if let Some(b) = make_backend(c, 1, None) {
                                rule_backends.insert(c.clone(), b);
                            }
                        }
                    }
                }
                let route_filters = spec
                    .filters
                    .iter()
                    .filter_map(|rf| {
                        Some(RouteFilter {
                            spec: rf.clone(),
                            filter: filters.get(&rf.filter)?.clone(),
                        })
                    })
                    .collect();
                let answer = spec.answer.as_ref().and_then(|a| filters.get(a).cloned());
                let mirrors = spec
                    .mirror
                    .iter()
                    .filter_map(|m| {
                        let cluster = clusters.get(&m.cluster)?.clone();
                        Some(crate::mirror::Mirror::new(
                            &spec.name,
                            m.clone(),
                            cluster,
                            metrics,
                        ))
                    })
                    .collect();
                let limits = spec
                    .rate_limits
                    .iter()
                    .map(|l| make_limit(&spec.name, l))
                    .collect();
                let remote_limit = spec.external_rate_limit.as_ref().and_then(|a| {
                    let cluster = clusters.get(&a.cluster)?.clone();
                    Some((
                        cluster,
                        crate::rls_client::Outcome::ALL.map(|o| {
                            metrics
                                .external_ratelimit
                                .with_label_values(&[spec.name.as_str(), o.as_str()])
                        }),
                    ))
                });
                let auth = spec.external_auth.as_ref().and_then(|a| {
                    let cluster = clusters.get(&a.cluster)?.clone();
                    Some((
                        cluster,
                        crate::external_auth::Outcome::ALL.map(|o| {
                            metrics
                                .external_auth
                                .with_label_values(&[spec.name.as_str(), o.as_str()])
                        }),
                    ))
                });
                let csrf = spec.csrf.as_ref().map(|_| {
                    crate::csrf::RESULTS
                        .map(|r| metrics.csrf.with_label_values(&[spec.name.as_str(), r]))
                });
                let inflight = prev
                    .and_then(|p| p.routes.iter().find(|r| r.spec.name == spec.name))
                    .map(|r| r.inflight.clone())
                    .unwrap_or_else(|| {
                        Arc::new(RouteInflight {
                            count: std::sync::atomic::AtomicUsize::new(0),
                            gauge: metrics.inflight.with_label_values(&[spec.name.as_str()]),
                        })
                    });
                let adaptive = spec.adaptive_concurrency.as_ref().map(|a| {
                    let kept = prev
                        .and_then(|p| p.routes.iter().find(|r| r.spec.name == spec.name))
                        .and_then(|r| r.adaptive.as_ref())
                        .filter(|(c, _)| c.spec == *a)
                        .map(|(c, _)| c.clone());
                    (
                        kept.unwrap_or_else(|| {
                            crate::policy::adaptive::Adaptive::new(a.clone(), now)
                        }),
                        metrics
                            .adaptive_blocked
                            .with_label_values(&[spec.name.as_str()]),
                    )
                });
                let cache = spec.cache.as_ref().map(|c| {
                    prev.and_then(|p| p.routes.iter().find(|r| r.spec.name == spec.name))
                        .and_then(|r| r.cache.as_ref())
                        .filter(|k| k.spec == *c)
                        .cloned()
                        .unwrap_or_else(|| {
                            crate::cache::Cache::new(
                                c.clone(),
                                crate::cache::CacheMetrics::new(metrics, &spec.name),
                            )
                        })
                });
                Route {
                    spec: spec.clone(),
                    index,
                    backends,
                    total_weight: cum,
                    limits,
                    inflight,
                    adaptive,
                    cache,
                    canary,
                    filters: route_filters,
                    rule_backends,
                    answer,
                    mirrors,
                    auth,
                    remote_limit,
                    csrf,
                }
            })
            .collect();
        let redis = match config.redis.as_ref().map(|spec| {
            match prev
                .and_then(|p| p.redis.as_ref())
                .filter(|r| r.spec == *spec)
            {
                Some(r) => Ok(r.clone()),
                None => crate::policy::redis::Redis::new(spec.clone()).map(Arc::new),
            }
        }) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                return Err(vec![crate::config::ConfigError {
                    path: "redis.tls".into(),
                    line: None,
                    message: e.to_string(),
                }]);
            }
        };
        let rls = config.rate_limit_service.as_ref().map(|spec| {
            let old = prev.and_then(|p| p.rls.as_ref());
            match old.filter(|o| o.spec == *spec) {
                Some(o) => o.clone(),
                None => Arc::new(crate::policy::rls::Service::new(
                    spec.clone(),
                    old.map(|o| &**o),
                    &metrics.rls_decisions,
                )),
            }
        });
        Ok(Snapshot {
            rls,
            redis,
            redis_errors: metrics.ratelimit_redis_errors.clone(),
            config: Arc::new(config),
            source,
            routes,
            clusters,
            listener_limits,
            listener_tls,
            filters,
            generation: prev.map_or(1, |p| p.generation + 1),
            jwks_fetches: metrics.jwks_fetches.clone(),
            dns,
        })
    }

    /// The listener at `index`.
    pub fn listener(&self, index: usize) -> Option<&ListenerSpec> {
        self.config.listeners.get(index)
    }

    /// The listener named `name` and its index here: `hint` (its index
    /// when the connection was accepted) unless a reload moved it; `None`
    /// once a reload removed it.
    pub fn listener_at(&self, hint: usize, name: &str) -> Option<(usize, &ListenerSpec)> {
        match self.config.listeners.get(hint) {
            Some(l) if l.name == name => Some((hint, l)),
            _ => self
                .config
                .listeners
                .iter()
                .enumerate()
                .find(|(_, l)| l.name == name),
        }
    }

    pub fn listener_index(&self, name: &str) -> Option<usize> {
        self.config.listeners.iter().position(|l| l.name == name)
    }

    /// The first route of `listener` that matches.
    pub fn route_for(
        &self,
        listener: &ListenerSpec,
        host: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        listener
            .route_indices
            .iter()
            .filter_map(|&i| self.routes.get(i))
            .find(|r| r.matches(host, path, query, method, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_as_apps_read_them() {
        assert_eq!(&*query_decode("plain"), b"plain");
        assert_eq!(&*query_decode("a+b%20c"), b"a b c");
        assert_eq!(&*query_decode("%41%4a%zz%4"), b"AJ%zz%4");
        assert_eq!(&*query_decode("%ff%00"), b"\xff\x00");
        let q = |rule| QueryMatch {
            name: "a b".into(),
            rule,
        };
        let exact = q(QueryRule::Exact("1".into()));
        assert!(query_matches(&exact, Some("a+b=1")));
        assert!(query_matches(&exact, Some("x=2&a%20b=0&&a+b=1")));
        assert!(!query_matches(&exact, Some("a+b=10")));
        assert!(!query_matches(&exact, None));
        let absent = q(QueryRule::Present(false));
        assert!(query_matches(&absent, None));
        assert!(query_matches(&absent, Some("ab=1")));
        assert!(!query_matches(&absent, Some("a+b")));
        let present = q(QueryRule::Present(true));
        assert!(query_matches(&present, Some("z&a%20b")));
        assert!(!query_matches(&present, Some("")));
    }
}
