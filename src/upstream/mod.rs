//! Upstream clusters: endpoints, load balancing and the connection pool.
//!
//! A [`Cluster`] owns one connection [`Pool`]; the snapshot
//! builder re-uses the same `Arc<Cluster>` across reloads while the cluster's
//! spec is unchanged, so its pool and in-flight counters survive a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::Request;

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::config::file::{LbPolicy, UpstreamProtocol};
use crate::config::model::{ClusterSpec, Endpoint};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::policy::outlier::{Observed, Outlier};
use crate::policy::retry::{Budget, RetryPermit};

pub mod hash;
pub mod health;
pub mod pool;
pub use health::Health;
pub use pool::{Pool, PoolConfig, SendError};

pub struct EndpointState {
    pub endpoint: Endpoint,
    /// Requests in flight to this endpoint (least-request LB).
    pub inflight: AtomicUsize,
    /// slow_start: when (clock ns, at least 1) the endpoint joined the
    /// cluster or passed its health checks again; 0: not ramping.
    pub warming_since: AtomicU64,
}

/// Metric handles of one cluster, resolved once.
pub struct ClusterMetrics {
    pub overflow_connections: IntCounter,
    pub overflow_pending: IntCounter,
    pub overflow_requests: IntCounter,
    pub overflow_retries: IntCounter,
    pub ejections: IntCounter,
    pub ejected: IntGauge,
    pub retried: IntCounter,
    pub budget_exhausted: IntCounter,
    pub attempts_exhausted: IntCounter,
    pub not_replayable: IntCounter,
    pub non_idempotent: IntCounter,
    pub no_endpoint: IntCounter,
    pub retry_after_too_long: IntCounter,
    pub hedged: IntCounter,
    pub connect_errors: IntCounter,
    /// `sift_health_checks_total`, labelled per probe outcome.
    pub health_checks: IntCounterVec,
    pub healthy: IntGauge,
    pub panic: IntCounter,
    pub priority_load: prometheus::GaugeVec,
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub endpoints: Vec<EndpointState>,
    pub outlier: Option<Outlier>,
    /// Active health checks (`health_check`).
    pub health: Option<Health>,
    pub budget: Budget,
    pub metrics: ClusterMetrics,
    pool: Arc<Pool>,
    rr: AtomicUsize,
    /// ring_hash and maglev: the key → endpoint table.
    table: Option<hash::Table>,
    /// round_robin with unequal weights: the order of one cycle (smooth
    /// weighted round robin, as nginx interleaves), walked by `rr`.
    schedule: Option<Vec<u32>>,
    /// Endpoint weights when they differ (least_request divides by them).
    weights: Option<Vec<u32>>,
    /// Priority levels, when endpoints have more than one.
    levels: Option<Levels>,
    /// Requests in flight (max_requests; the retry budget's "active").
    requests: Arc<AtomicUsize>,
    /// HTTP/1.1: one permit per upstream connection in use (max_connections).
    conn_slots: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
}

/// Endpoints an LB pick chooses among: all of a cluster's, or one
/// priority level's (indices local to the group).
struct Group<'a> {
    n: usize,
    schedule: Option<&'a [u32]>,
    table: Option<&'a hash::Table>,
    /// A group index's endpoint index in the cluster.
    global: &'a dyn Fn(usize) -> usize,
}

/// A cluster's endpoints by priority level (Envoy's priorities).
struct Levels {
    /// Each endpoint's level, dense (0..count) in the order of the
    /// configured priorities.
    of: Vec<usize>,
    /// The configured priority of each dense level.
    priority: Vec<u8>,
    /// Endpoints per level.
    size: Vec<usize>,
    /// Each level's endpoints (cluster indices), and its own smooth
    /// weighted round-robin schedule and hash table (level indices).
    members: Vec<Vec<usize>>,
    schedules: Vec<Option<Vec<u32>>>,
    tables: Vec<Option<hash::Table>>,
}

impl Levels {
    fn new(spec: &ClusterSpec) -> Option<Levels> {
        let priorities = &spec.priorities;
        let mut distinct: Vec<u8> = priorities.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return None;
        }
        let of: Vec<usize> = priorities
            .iter()
            .map(|p| distinct.binary_search(p).unwrap_or(0))
            .collect();
        let mut members = vec![Vec::new(); distinct.len()];
        for (i, &l) in of.iter().enumerate() {
            members[l].push(i);
        }
        let size = members.iter().map(Vec::len).collect();
        let pick = |m: &[usize]| -> (Vec<Endpoint>, Vec<u32>) {
            m.iter()
                .map(|&i| {
                    (
                        spec.endpoints[i].clone(),
                        spec.weights.get(i).copied().unwrap_or(1),
                    )
                })
                .unzip()
        };
        let schedules = members
            .iter()
            .map(|m| {
                let (_, w) = pick(m);
                (spec.lb == LbPolicy::RoundRobin && w.windows(2).any(|x| x[0] != x[1]))
                    .then(|| smooth_schedule(&w))
            })
            .collect();
        let tables = members
            .iter()
            .map(|m| {
                let (e, w) = pick(m);
                match spec.lb {
                    LbPolicy::RingHash => Some(hash::Table::ring(&e, &w)),
                    LbPolicy::Maglev => Some(hash::Table::maglev(&e, &w)),
                    LbPolicy::RoundRobin | LbPolicy::LeastRequest => None,
                }
            })
            .collect();
        Some(Levels {
            of,
            priority: distinct,
            size,
            members,
            schedules,
            tables,
        })
    }
}

/// Envoy's priority load: each level's share of requests (percent, sums
/// to 100) from its healthy and total endpoint counts. A level's health is
/// `min(100, floor(healthy% × overprovisioning / 100))`; the levels take
/// load in order up to their health, and when the health of all levels
/// sums below 100 the loads are scaled to 100. `None`: that normalized
/// total health is below `panic_threshold` (the cluster is in panic).
pub fn priority_load(
    counts: &[(usize, usize)],
    overprovisioning: u32,
    panic_threshold: u32,
) -> Option<Vec<f64>> {
    let health: Vec<u64> = counts
        .iter()
        .map(|&(healthy, total)| {
            if total == 0 {
                0
            } else {
                (healthy as u64 * 100 * u64::from(overprovisioning) / (total as u64 * 100)).min(100)
            }
        })
        .collect();
    let total: u64 = health.iter().sum::<u64>().min(100);
    if total < u64::from(panic_threshold) {
        return None;
    }
    if total == 0 {
        // Nothing healthy and panic off (threshold 0): no level takes load.
        return Some(vec![0.0; health.len()]);
    }
    let mut left = 100.0;
    Some(
        health
            .iter()
            .map(|&h| {
                let load = (h as f64 * 100.0 / total as f64).min(left);
                left -= load;
                load
            })
            .collect(),
    )
}

/// Held for the life of one request to the cluster (max_requests).
pub struct RequestSlot(Arc<AtomicUsize>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a request occupies an HTTP/1.1 connection (max_connections).
pub type ConnSlot = Option<OwnedSemaphorePermit>;

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.spec.name)
            .finish()
    }
}

/// Decrements an endpoint's in-flight count when the request is over.
pub struct InflightGuard {
    cluster: Arc<Cluster>,
    index: usize,
}

impl InflightGuard {
    /// Feed the endpoint's outlier detection (an outcome known only once
    /// the answer ended: a gRPC call's trailers).
    pub fn observe(&self, what: Observed, now: u64) {
        self.cluster.observe(self.index, what, now);
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.cluster.endpoints[self.index]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One cycle of smooth weighted round robin (nginx's algorithm): each
/// step every endpoint gains its weight, the one with the most goes and
/// loses the total. Weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
/// Weights are scaled down (keeping each at least 1) so a cycle has at
/// most 65,536 steps.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let cap = 1u64 << 16;
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| {
            let x = u64::from(x);
            (if total > cap {
                (x * cap / total).max(1)
            } else {
                x
            }) as i64
        })
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += x;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// A cluster's TLS client, from its files (`None`: plain). `sift check`
/// calls it too, so a config it passes can start.
pub fn tls_connector(
    spec: &ClusterSpec,
) -> Result<Option<Arc<crate::tls::UpstreamTls>>, crate::tls::TlsError> {
    let Some(t) = &spec.tls else {
        return Ok(None);
    };
    let alpn = match spec.protocol {
        // `client`: HTTP/1.1 requests offer `http/1.1`; HTTP/2 ones connect
        // with the loaded client's `h2` connector.
        UpstreamProtocol::Http1 | UpstreamProtocol::Client => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    crate::tls::UpstreamTls::new(t.clone(), alpn).map(Some)
}

impl Cluster {
    pub fn new(spec: ClusterSpec, m: &Metrics) -> Result<Arc<Self>, crate::tls::TlsError> {
        let tls = tls_connector(&spec)?;
        let pool = Pool::new(
            PoolConfig {
                protocol: spec.protocol,
                connect_timeout: spec.connect_timeout.0,
                idle_timeout: spec.idle_timeout.0,
                max_idle_per_endpoint: spec.max_idle_per_endpoint,
                max_requests_per_connection: spec.max_requests_per_connection,
                max_connection_duration: spec.max_connection_duration.map(|d| d.0),
                tcp_keepalive: spec.tcp_keepalive,
                http2_keepalive: spec.http2_keepalive,
                tls,
                resolver: (!spec.resolver.servers.is_empty()).then(|| spec.resolver.clone()),
                resent: Some(
                    m.retries
                        .with_label_values(&[spec.name.as_str(), "stale_connection"]),
                ),
            },
            spec.endpoints.len(),
        );
        let endpoints: Vec<EndpointState> = spec
            .endpoints
            .iter()
            .map(|e| EndpointState {
                endpoint: e.clone(),
                inflight: AtomicUsize::new(0),
                warming_since: AtomicU64::new(0),
            })
            .collect();
        let n = spec.name.as_str();
        let overflow = |t: &str| m.circuit_overflow.with_label_values(&[n, t]);
        let retries = |o: &str| m.retries.with_label_values(&[n, o]);
        let metrics = ClusterMetrics {
            overflow_connections: overflow("connections"),
            overflow_pending: overflow("pending"),
            overflow_requests: overflow("requests"),
            overflow_retries: overflow("retries"),
            ejections: m.outlier_ejections.with_label_values(&[n]),
            ejected: m.endpoints_ejected.with_label_values(&[n]),
            retried: retries("retried"),
            budget_exhausted: retries("budget_exhausted"),
            attempts_exhausted: retries("attempts_exhausted"),
            not_replayable: retries("not_replayable"),
            non_idempotent: retries("non_idempotent"),
            no_endpoint: retries("no_endpoint"),
            retry_after_too_long: retries("retry_after_too_long"),
            hedged: retries("hedged"),
            connect_errors: m.upstream_connect_errors.with_label_values(&[n]),
            health_checks: m.health_checks.clone(),
            healthy: m.endpoints_healthy.with_label_values(&[n]),
            panic: m.lb_panic.with_label_values(&[n]),
            priority_load: m.cluster_priority_load.clone(),
        };
        let outlier = spec
            .outlier
            .clone()
            .map(|o| Outlier::new(o, endpoints.len()));
        let health = spec
            .health_check
            .clone()
            .map(|h| Health::new(h, endpoints.len()));
        if health.is_some() {
            metrics.healthy.set(endpoints.len() as i64);
        }
        m.cluster_endpoints
            .with_label_values(&[n])
            .set(endpoints.len() as i64);
        // HTTP/1.1 requests take a connection each (HTTP/2 ones share one).
        let conn_slots = (spec.protocol != UpstreamProtocol::Http2)
            .then(|| Arc::new(Semaphore::new(spec.breakers.max_connections)));
        let table = match spec.lb {
            LbPolicy::RingHash => Some(hash::Table::ring(&spec.endpoints, &spec.weights)),
            LbPolicy::Maglev => Some(hash::Table::maglev(&spec.endpoints, &spec.weights)),
            LbPolicy::RoundRobin | LbPolicy::LeastRequest => None,
        };
        let weighted = spec.weights.windows(2).any(|w| w[0] != w[1]);
        let schedule =
            (weighted && spec.lb == LbPolicy::RoundRobin).then(|| smooth_schedule(&spec.weights));
        let weights = weighted.then(|| spec.weights.clone());
        let levels = Levels::new(&spec);
        Ok(Arc::new(Cluster {
            levels,
            table,
            schedule,
            weights,
            spec,
            endpoints,
            outlier,
            health,
            budget: Budget::default(),
            metrics,
            pool,
            rr: AtomicUsize::new(0),
            requests: Arc::new(AtomicUsize::new(0)),
            conn_slots,
            pending: AtomicUsize::new(0),
        }))
    }

    /// A plain (or the cluster's TLS) connection to endpoint `index`, for
    /// the TCP proxy; counted in the cluster's connect errors.
    pub async fn connect_raw(&self, index: usize) -> Result<pool::Io, SendError> {
        let e = &self
            .endpoints
            .get(index)
            .ok_or_else(|| SendError::Connect(format!("no endpoint {index}")))?
            .endpoint;
        let r = self.pool.connect_io(e, pool::Alpn::None).await;
        if r.is_err() {
            self.metrics.connect_errors.inc();
        }
        r
    }

    /// The TLS client, when the cluster originates TLS.
    pub fn tls(&self) -> Option<&Arc<crate::tls::UpstreamTls>> {
        self.pool.tls()
    }

    /// Take over what `old` (this cluster in the previous snapshot) knew
    /// of the endpoints both have, matched by address: active health and
    /// outlier ejections, when their settings did not change.
    pub fn carry_state(&self, old: &Cluster, now: u64) {
        let (a, b) = (&self.spec, &old.spec);
        let same_transport = a.protocol == b.protocol
            && a.tls == b.tls
            && a.resolver == b.resolver
            && a.connect_timeout == b.connect_timeout
            && a.idle_timeout == b.idle_timeout;
        let index: std::collections::HashMap<std::borrow::Cow<'_, str>, usize> = old
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, e)| (e.endpoint.id(), j))
            .collect();
        for (i, e) in self.endpoints.iter().enumerate() {
            let Some(&j) = index.get(&e.endpoint.id()) else {
                // A new endpoint ramps up (slow_start).
                if self.spec.slow_start.is_some() {
                    e.warming_since.store(now.max(1), Ordering::Relaxed);
                }
                continue;
            };
            let was = old.endpoints[j].warming_since.load(Ordering::Relaxed);
            e.warming_since.store(was, Ordering::Relaxed);
            // Warm connections stay when the way to the endpoints is the
            // same (a DNS refresh, a reload of other settings).
            if same_transport {
                self.pool.adopt(i, &old.pool, j);
            }
            if let (Some(h), Some(o)) = (&self.health, &old.health) {
                if h.spec == o.spec {
                    h.carry(i, o, j);
                }
            }
            if let (Some(x), Some(o)) = (&self.outlier, &old.outlier) {
                if x.spec == o.spec {
                    x.carry(i, o, j);
                }
            }
        }
        if let Some(h) = &self.health {
            self.metrics.healthy.set(h.healthy_count() as i64);
        }
        self.refresh_gauges(now);
    }

    /// Enter the cluster: 503 circuit-open past max_requests.
    pub fn request_slot(&self) -> Result<RequestSlot, ProxyError> {
        let max = self.spec.breakers.max_requests;
        let prev = self.requests.fetch_add(1, Ordering::AcqRel);
        let slot = RequestSlot(self.requests.clone());
        if prev >= max {
            self.metrics.overflow_requests.inc();
            return Err(ProxyError::CircuitOpen {
                cluster: self.spec.name.clone(),
                threshold: "requests",
            });
        }
        Ok(slot)
    }

    /// HTTP/1.1: wait for a connection slot (counted as pending), or 503
    /// circuit-open when max_pending_requests are already waiting. `h2`:
    /// the request goes over HTTP/2 (a `protocol: client` cluster), no
    /// slot.
    pub async fn conn_slot(&self, h2: bool) -> Result<ConnSlot, ProxyError> {
        let Some(sem) = self.conn_slots.as_ref().filter(|_| !h2) else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        self.metrics.overflow_connections.inc();
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        struct Pending<'a>(&'a AtomicUsize);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _pending = Pending(&self.pending);
        if waiting >= self.spec.breakers.max_pending_requests {
            self.metrics.overflow_pending.inc();
            return Err(ProxyError::CircuitOpen {
                cluster: self.spec.name.clone(),
                threshold: "pending",
            });
        }
        sem.clone()
            .acquire_owned()
            .await
            .map(Some)
            .map_err(|_| ProxyError::Internal("connection slots closed".into()))
    }

    /// A permit for one retry: the budget when enabled, else max_retries.
    pub fn retry_permit(&self) -> Option<RetryPermit> {
        let active = self.requests.load(Ordering::Acquire);
        let permit = match &self.spec.retry_budget {
            Some(b) => self.budget.try_acquire(b, active),
            None => self.budget.try_acquire(
                &crate::policy::retry::BudgetSpec {
                    percent: 0,
                    min_concurrency: self.spec.breakers.max_retries as u32,
                },
                active,
            ),
        };
        if permit.is_none() {
            self.metrics.overflow_retries.inc();
            self.metrics.budget_exhausted.inc();
        }
        permit
    }

    /// Feed outlier detection; counts and logs ejections.
    pub fn observe(&self, index: usize, what: Observed, now: u64) {
        let Some(o) = &self.outlier else { return };
        if o.record(index, what, now) {
            self.ejected_log(index, &format!("{what:?}"), now);
        }
        for i in o.evaluate_success_rate(now) {
            self.ejected_log(i, "success rate below the others'", now);
        }
    }

    /// Count and log an outlier ejection of endpoint `index`.
    fn ejected_log(&self, index: usize, why: &str, now: u64) {
        self.metrics.ejections.inc();
        if let Some(o) = &self.outlier {
            self.metrics.ejected.set(o.ejected(now) as i64);
        }
        tracing::warn!(
            cluster = %self.spec.name,
            endpoint = %self.endpoints[index].endpoint.id(),
            outcome = why,
            "endpoint ejected by outlier detection"
        );
    }

    /// Refresh the ejected-endpoints and priority-load gauges (at scrape
    /// time).
    pub fn refresh_gauges(&self, now: u64) {
        if let Some(o) = &self.outlier {
            self.metrics.ejected.set(o.ejected(now) as i64);
        }
        for (p, share) in self.priority_shares(now).1 {
            self.metrics
                .priority_load
                .with_label_values(&[self.name(), &p.to_string()])
                .set(share);
        }
    }

    /// Some endpoint could take a request at `now` (a retry has somewhere
    /// to go): healthy (or the cluster in panic) and not ejected.
    pub fn any_available(&self, now: u64) -> bool {
        let n = self.endpoints.len();
        let panic = self.health.as_ref().is_some_and(Health::panic);
        (0..n).any(|i| self.eligible(i, now, panic))
    }

    /// Endpoint `i` passes active health checks (unless `panic`) and is not
    /// ejected by outlier detection at `now`.
    #[inline]
    fn eligible(&self, i: usize, now: u64, panic: bool) -> bool {
        (panic || self.health.as_ref().is_none_or(|h| h.healthy(i)))
            && self.outlier.as_ref().is_none_or(|o| o.available(i, now))
    }

    /// One request of sift's own (a remote JWKS fetch) to `endpoint` on a
    /// fresh connection over the cluster's protocol and TLS, outside its
    /// pool, breakers and outlier detection.
    pub async fn exchange_fresh(
        &self,
        endpoint: &Endpoint,
        req: http::Request<crate::body::Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, pool::SendError> {
        self.pool.probe_exchange(endpoint, req).await
    }

    /// Start background work (health probes); idempotent, and a no-op
    /// outside a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        health::start(self);
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the LB policy hashes a request key (ring_hash, maglev).
    pub fn hashes(&self) -> bool {
        self.table.is_some()
    }

    /// Choose an endpoint by the cluster's LB policy among those eligible
    /// at `now` (healthy or in panic, and not ejected), avoiding `avoid` (a retry's previous endpoint) when
    /// another one is available. `key` is the request's hash for
    /// ring_hash and maglev (without one they pick at random, as Envoy).
    pub fn pick(
        self: &Arc<Self>,
        now: u64,
        avoid: Option<usize>,
        key: Option<u64>,
    ) -> Option<(usize, InflightGuard)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        // With priority levels, the level comes first (by the priority
        // load; a hash key picks it deterministically), then the LB policy
        // within it; panic is the levels' normalized health below the
        // threshold, and then every endpoint takes requests.
        let (panic, level) = match &self.levels {
            None => (self.health.as_ref().is_some_and(Health::panic), None),
            Some(levels) => match self.priority_loads(levels, now) {
                None => (true, None),
                Some(loads) => {
                    let r = match key {
                        Some(h) => (h >> 11) as f64 / (1u64 << 53) as f64 * 100.0,
                        None => fastrand::f64() * 100.0,
                    };
                    let mut acc = 0.0;
                    let last = loads.iter().rposition(|&l| l > 0.0).unwrap_or(0);
                    let level = loads
                        .iter()
                        .position(|&l| {
                            acc += l;
                            l > 0.0 && r < acc
                        })
                        .unwrap_or(last);
                    (false, Some(level))
                }
            },
        };
        if panic {
            self.metrics.panic.inc();
        }
        let in_level = |i: usize| match (level, &self.levels) {
            (Some(l), Some(levels)) => levels.of[i] == l,
            _ => true,
        };
        let up = |i: usize| in_level(i) && self.eligible(i, now, panic);
        let others_up = avoid.is_some_and(|a| (0..n).any(|i| i != a && up(i)));
        let healthy = |i: usize| up(i) && !(others_up && Some(i) == avoid);
        // slow_start: a ramping endpoint is taken with the probability of
        // its share, else the LB picks again (at most 4 picks).
        let mut tries = if self.spec.slow_start.is_some() { 4 } else { 1 };
        let index = loop {
            tries -= 1;
            let i = self.pick_once(key, &healthy, level)?;
            if tries == 0 || self.accept(i, now) {
                break i;
            }
        };
        self.endpoints[index]
            .inflight
            .fetch_add(1, Ordering::Relaxed);
        Some((
            index,
            InflightGuard {
                cluster: self.clone(),
                index,
            },
        ))
    }

    /// The priority load of `levels` at `now` (None: panic): health from
    /// active health checks and outlier ejections.
    fn priority_loads(&self, levels: &Levels, now: u64) -> Option<Vec<f64>> {
        let mut counts: Vec<(usize, usize)> = levels.size.iter().map(|&s| (0, s)).collect();
        for (i, &l) in levels.of.iter().enumerate() {
            if self.eligible(i, now, false) {
                counts[l].0 += 1;
            }
        }
        let threshold = self
            .spec
            .health_check
            .as_ref()
            .map_or(50, |h| h.panic_threshold);
        priority_load(&counts, self.spec.overprovisioning, threshold)
    }

    /// Each priority level's configured priority and share of requests
    /// (percent) at `now`, and whether the cluster is in panic (then every
    /// endpoint takes requests: a level's share is its share of the
    /// endpoints). Empty without levels.
    pub fn priority_shares(&self, now: u64) -> (bool, Vec<(u8, f64)>) {
        let Some(levels) = &self.levels else {
            return (false, Vec::new());
        };
        let n = self.endpoints.len().max(1) as f64;
        let loads = self.priority_loads(levels, now);
        let shares = levels
            .priority
            .iter()
            .enumerate()
            .map(|(l, &p)| {
                let share = match &loads {
                    Some(x) => x[l],
                    None => levels.size[l] as f64 * 100.0 / n,
                };
                (p, share)
            })
            .collect();
        (loads.is_none(), shares)
    }

    /// Whether a pick of endpoint `i` stands under slow_start: always for
    /// an endpoint not ramping; else with the probability of its share.
    fn accept(&self, i: usize, now: u64) -> bool {
        let Some(ss) = &self.spec.slow_start else {
            return true;
        };
        let since = self.endpoints[i].warming_since.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        let f = ss.factor(now.saturating_sub(since));
        if f >= 1.0 {
            // Ramped: stop looking (a store race only ends it early).
            self.endpoints[i].warming_since.store(0, Ordering::Relaxed);
            return true;
        }
        fastrand::f64() < f
    }

    /// One pick by the LB policy among the endpoints `healthy` admits: of
    /// priority level `level` when the cluster has levels (each level has
    /// its own round-robin schedule and hash table), else of all.
    fn pick_once(
        &self,
        key: Option<u64>,
        healthy: &dyn Fn(usize) -> bool,
        level: Option<usize>,
    ) -> Option<usize> {
        if let (Some(l), Some(levels)) = (level, &self.levels) {
            let members = &levels.members[l];
            let group = Group {
                n: members.len(),
                schedule: levels.schedules[l].as_deref(),
                table: levels.tables[l].as_ref(),
                global: &|k| members[k],
            };
            return self
                .pick_in(&group, key, &|k| healthy(members[k]))
                .map(|k| members[k]);
        }
        let group = Group {
            n: self.endpoints.len(),
            schedule: self.schedule.as_deref(),
            table: self.table.as_ref(),
            global: &|k| k,
        };
        self.pick_in(&group, key, healthy)
    }

    /// [`Cluster::pick_once`] within `g`; indices are `g`'s own.
    fn pick_in(
        &self,
        g: &Group,
        key: Option<u64>,
        healthy: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = g.n;
        if n == 0 {
            return None;
        }
        Some(match self.spec.lb {
            LbPolicy::RingHash | LbPolicy::Maglev => match (key, g.table) {
                (Some(h), Some(t)) => t.pick(h, n, healthy)?,
                _ => {
                    let start = fastrand::usize(..n);
                    (0..n).map(|k| (start + k) % n).find(|&i| healthy(i))?
                }
            },
            LbPolicy::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                match g.schedule {
                    None => (0..n).map(|k| (start + k) % n).find(|&i| healthy(i))?,
                    Some(s) => (0..s.len())
                        .map(|k| s[(start + k) % s.len()] as usize)
                        .find(|&i| healthy(i))?,
                }
            }
            LbPolicy::LeastRequest => {
                let inflight = |i: usize| {
                    self.endpoints[(g.global)(i)]
                        .inflight
                        .load(Ordering::Relaxed)
                };
                // Requests in flight per unit of weight (Envoy's weighted
                // least request), compared without division.
                let w = |i: usize| {
                    self.weights
                        .as_ref()
                        .map_or(1, |w| w[(g.global)(i)] as usize)
                };
                let lighter = |a: usize, b: usize| inflight(a) * w(b) < inflight(b) * w(a);
                if n == 1 {
                    if !healthy(0) {
                        return None;
                    }
                    0
                } else {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    match (healthy(a), healthy(b)) {
                        (true, true) => {
                            if lighter(b, a) {
                                b
                            } else {
                                a
                            }
                        }
                        (true, false) => a,
                        (false, true) => b,
                        (false, false) => (0..n)
                            .filter(|&i| healthy(i))
                            .reduce(|x, y| if lighter(y, x) { y } else { x })?,
                    }
                }
            }
        })
    }

    /// Send a request to endpoint `index`; its URI already names the
    /// endpoint (absolute form).
    pub async fn send(
        &self,
        index: usize,
        req: Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        let endpoint = &self.endpoints[index].endpoint;
        self.pool.send(index, endpoint, req).await
    }

    /// [`send`](Self::send) for sift's own requests (mirrors, checks): a
    /// failure counts as a connect error and a local gateway error of the
    /// endpoint, the answer's status feeds its outlier detection.
    pub async fn exchange(
        &self,
        index: usize,
        req: Request<Body>,
        clock: crate::clock::Clock,
    ) -> Result<http::Response<Body>, SendError> {
        match self.send(index, req).await {
            Ok(r) => {
                self.observe(index, Observed::of_status(r.status().as_u16()), clock.now());
                Ok(r)
            }
            Err(e) => {
                if matches!(e, SendError::Connect(_)) {
                    self.metrics.connect_errors.inc();
                }
                self.observe(index, Observed::LocalGatewayError, clock.now());
                Err(e)
            }
        }
    }

    /// Idle HTTP/1.1 connections kept for endpoint `index`.
    pub fn idle_connections(&self, index: usize) -> usize {
        self.pool.idle(index)
    }
}

/// One endpoint of the cluster as a tonic transport: requests go through
/// the cluster's pool (HTTP/2, TLS as configured).
#[derive(Clone)]
pub struct GrpcEndpoint {
    pub cluster: Arc<Cluster>,
    pub index: usize,
}

impl tonic::codegen::Service<Request<tonic::body::Body>> for GrpcEndpoint {
    type Response = http::Response<crate::body::Body>;
    type Error = SendError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let endpoint = &self.cluster.endpoints[self.index].endpoint;
        let uri = http::Uri::builder()
            .scheme(if self.cluster.spec.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            })
            .authority(endpoint.authority.clone())
            .path_and_query(
                parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            )
            .build();
        let (cluster, index) = (self.cluster.clone(), self.index);
        Box::pin(async move {
            parts.uri = uri.map_err(|e| SendError::Connect(e.to_string()))?;
            parts.version = http::Version::HTTP_2;
            let req = Request::from_parts(parts, crate::body::boxed(body));
            cluster.send(index, req).await
        })
    }
}

#[cfg(test)]
mod weight_tests {
    use super::smooth_schedule;

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[3, 1]), [0, 0, 1, 0]);
        let big = smooth_schedule(&[1000; 100]);
        assert!(big.len() <= 1 << 16 && big.len() >= 100);
        for i in 0..100u32 {
            let n = big.iter().filter(|&&x| x == i).count();
            assert_eq!(n, big.len() / 100, "equal weights, equal turns");
        }
    }
}

#[cfg(test)]
mod slow_start_tests {
    use std::sync::atomic::Ordering;

    fn cluster(lb: &str) -> std::sync::Arc<super::Cluster> {
        let cfg = crate::config::load_str(&format!(
            r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: a, address: "127.0.0.1:0" }} ]
clusters:
  - name: c
    lb: {lb}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2"]
    slow_start: {{ window: 100s, aggression: 1.0, min_weight_percent: 10 }}
"#
        ))
        .expect("config");
        super::Cluster::new(cfg.clusters[0].clone(), &crate::metrics::Metrics::new())
            .expect("cluster")
    }

    /// The share of endpoint 1 (ramping since t = 1) over many picks at `now`.
    fn share(c: &std::sync::Arc<super::Cluster>, now: u64) -> f64 {
        c.endpoints[1].warming_since.store(1, Ordering::Relaxed);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| c.pick(now, None, None).expect("an endpoint").0 == 1)
            .count();
        ones as f64 / n as f64
    }

    #[test]
    fn a_joining_endpoint_ramps_up_over_the_window() {
        const S: u64 = 1_000_000_000;
        for lb in ["round_robin", "least_request"] {
            let c = cluster(lb);
            let at_start = share(&c, 1);
            let quarter = share(&c, 1 + 25 * S);
            let three_quarters = share(&c, 1 + 75 * S);
            let after = share(&c, 1 + 100 * S);
            // Factors 0.1, 0.25, 0.75, 1: shares rise with them, an even
            // split once the window is over.
            assert!(at_start < 0.15, "{lb}: {at_start}");
            assert!(
                at_start < quarter && quarter < three_quarters,
                "{lb}: {quarter} {three_quarters}"
            );
            assert!((0.15..0.35).contains(&quarter), "{lb}: {quarter}");
            assert!((0.45..0.55).contains(&after), "{lb}: {after}");
            assert_eq!(
                c.endpoints[1].warming_since.load(Ordering::Relaxed),
                0,
                "{lb}: ramped"
            );
        }
    }

    #[test]
    fn the_factor_follows_envoys_curve() {
        let s = crate::config::model::SlowStartSpec {
            window: crate::config::units::Dur::secs(10),
            aggression: 2.0,
            min_weight: 0.1,
        };
        const S: u64 = 1_000_000_000;
        assert!((s.factor(0) - 0.1).abs() < 1e-9, "the floor");
        assert!((s.factor(25 * S / 10) - 0.5).abs() < 1e-9, "(0.25)^(1/2)");
        assert_eq!(s.factor(10 * S), 1.0);
    }
}

#[cfg(test)]
mod priority_tests {
    use super::health::Failure;
    use super::priority_load;

    fn loads(counts: &[(usize, usize)]) -> Vec<i64> {
        priority_load(counts, 140, 0)
            .expect("not in panic")
            .iter()
            .map(|l| l.round() as i64)
            .collect()
    }

    /// Envoy's tables (docs: load balancing, priority levels), as healthy
    /// endpoints out of 100 per level.
    #[test]
    fn the_priority_load_follows_envoys_tables() {
        let two = |p0: usize, p1: usize| loads(&[(p0, 100), (p1, 100)]);
        assert_eq!(two(100, 100), [100, 0]);
        assert_eq!(two(72, 100), [100, 0]);
        assert_eq!(two(71, 100), [99, 1]);
        assert_eq!(two(50, 100), [70, 30]);
        assert_eq!(two(25, 100), [35, 65]);
        assert_eq!(two(0, 100), [0, 100]);
        assert_eq!(two(71, 71), [99, 1]);
        assert_eq!(two(50, 50), [70, 30]);
        assert_eq!(two(25, 25), [50, 50]);
        let three = |a: usize, b: usize, c: usize| loads(&[(a, 100), (b, 100), (c, 100)]);
        assert_eq!(three(100, 100, 100), [100, 0, 0]);
        assert_eq!(three(71, 71, 100), [99, 1, 0]);
        assert_eq!(three(25, 100, 100), [35, 65, 0]);
        assert_eq!(three(25, 25, 100), [35, 35, 30]);
        // Envoy's table rounds this row to 36, 36, 28 (integer percents);
        // the loads here are not rounded: 35.7, 35.7, 28.6.
        let r = priority_load(&[(25, 100), (25, 100), (20, 100)], 140, 0).unwrap();
        for (got, want) in r.iter().zip([36.0, 36.0, 28.0]) {
            assert!((got - want).abs() < 1.0, "{r:?}");
        }
        // Envoy's normalization example: health {20, 30} gives {40, 60}.
        let n = priority_load(&[(20, 140), (30, 140)], 140, 0).unwrap();
        assert_eq!(
            n.iter().map(|l| l.round() as i64).collect::<Vec<_>>(),
            [40, 60]
        );
        // Panic: the normalized total health below the threshold.
        assert!(priority_load(&[(10, 100), (20, 100)], 140, 50).is_none());
        assert!(priority_load(&[(20, 100), (20, 100)], 140, 50).is_some());
        assert!(
            priority_load(&[(0, 3), (0, 1)], 140, 50).is_none(),
            "nothing healthy"
        );
        assert_eq!(
            priority_load(&[(0, 3), (0, 1)], 140, 0),
            Some(vec![0.0, 0.0]),
            "panic_threshold 0: no panic, no load"
        );
    }

    fn cluster() -> std::sync::Arc<super::Cluster> {
        let cfg = crate::config::load_str(
            r#"admin: { address: "127.0.0.1:0" }
listeners: [ { name: a, address: "127.0.0.1:0" } ]
clusters:
  - name: c
    endpoints:
      - "127.0.0.1:1"
      - "127.0.0.1:2"
      - "127.0.0.1:3"
      - "127.0.0.1:4"
      - { address: "127.0.0.1:5", priority: 1 }
      - { address: "127.0.0.1:6", priority: 2 }
    health_check: { kind: tcp, interval: 1h }
"#,
        )
        .expect("config");
        super::Cluster::new(cfg.clusters[0].clone(), &crate::metrics::Metrics::new())
            .expect("cluster")
    }

    fn counts(c: &std::sync::Arc<super::Cluster>) -> [usize; 6] {
        let mut n = [0; 6];
        for _ in 0..20_000 {
            n[c.pick(0, None, None).expect("an endpoint").0] += 1;
        }
        n
    }

    #[test]
    fn requests_fail_over_level_by_level() {
        let c = cluster();
        let h = c.health.as_ref().unwrap();
        let down = |i: usize| {
            h.record(i, &Err(Failure::Timeout));
        };
        let n = counts(&c);
        assert_eq!(n[4] + n[5], 0, "all on level 0 while it is healthy: {n:?}");
        assert!(n[..4].iter().all(|&x| x > 4000), "{n:?}");
        down(0);
        let n = counts(&c);
        assert_eq!(n[4] + n[5], 0, "75 % healthy x 1.4 > 100: {n:?}");
        down(1);
        // Level 0 at 50 %: 70 % of requests, 30 % to level 1.
        let n = counts(&c);
        let p1 = n[4] as f64 / 20_000.0;
        assert!((0.27..0.33).contains(&p1), "{n:?}");
        assert_eq!(n[0] + n[1] + n[5], 0, "{n:?}");
        assert!(!c.priority_shares(0).0);
        down(2);
        down(3);
        let n = counts(&c);
        assert_eq!(n[4], 20_000, "level 0 down: all on level 1: {n:?}");
        down(4);
        let n = counts(&c);
        assert_eq!(n[5], 20_000, "then level 2: {n:?}");
        // Everything down: panic, every endpoint takes requests.
        down(5);
        let n = counts(&c);
        assert!(n.iter().all(|&x| x > 2000), "panic spreads over all: {n:?}");
        assert!(c.priority_shares(0).0);
    }
}
