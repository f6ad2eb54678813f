//! Active health checking per cluster, with Envoy's meaning (its
//! `health_checks`, nginx Plus's `health_check`, Kubernetes' probes):
//!
//! - every `interval`, each endpoint gets a probe on a fresh connection: an
//!   HTTP GET of `path` (over the cluster's protocol and TLS) that passes on
//!   an expected status, or, with `kind: tcp`, a connect (and the TLS
//!   handshake when the cluster has `tls`); no answer within `timeout` fails;
//! - a healthy endpoint is marked unhealthy after `unhealthy_threshold`
//!   failures in a row, an unhealthy one healthy again after
//!   `healthy_threshold` passes in a row; the first probe's result decides at
//!   once (Envoy starts hosts as failing until their first check passes);
//!   until it arrives an endpoint takes traffic;
//! - unhealthy endpoints get no requests; but when fewer than
//!   `panic_threshold` percent of the endpoints are healthy, the cluster is
//!   in *panic* and balances over all of them (Envoy's healthy panic
//!   threshold, 50 % by default), so a broken health endpoint cannot take a
//!   whole service down; `panic_threshold: 0` turns that off (then a cluster
//!   with no healthy endpoint answers 503 `no-healthy-endpoint`).
//!
//! Outlier detection (passive) works beside it: an endpoint takes traffic
//! when it is healthy (or the cluster is in panic) and not ejected.
//!
//! The data path reads one atomic per endpoint; the probes run in one task
//! per cluster, which ends when the cluster is dropped (a reload that changes
//! the cluster starts a new one; an unchanged cluster keeps its state).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode};

use super::Cluster;
use super::pool::SendError;
use crate::config::file::UpstreamProtocol;

/// How an endpoint is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Http,
    Tcp,
    /// grpc.health.v1.Health/Check (clusters with protocol http2).
    Grpc,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HealthSpec {
    pub kind: HealthKind,
    /// Path and query of the HTTP probe (origin form).
    pub path: String,
    /// Host header (HTTP/2 :authority) of the probe; `None`: the endpoint.
    pub host: Option<String>,
    /// The service named in a gRPC probe ("" = the server as a whole).
    pub service: String,
    #[serde(serialize_with = "ser_dur")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub jitter: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Inclusive status ranges that pass.
    pub expected_statuses: Vec<(u16, u16)>,
    /// Percent; below it the cluster balances over every endpoint.
    pub panic_threshold: u32,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection (TCP, TLS or HTTP/2 handshake).
    Connect(String),
    /// No answer within `timeout`.
    Timeout,
    /// An answer with a status that is not expected.
    Status(u16),
    /// The connection failed during the exchange.
    Protocol(String),
    /// A gRPC probe's answer: not SERVING, or a gRPC error.
    Grpc(String),
}

impl Failure {
    /// The `outcome` label of `sift_health_checks_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect_failure",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "unexpected_status",
            Failure::Protocol(_) => "protocol_error",
            Failure::Grpc(_) => "not_serving",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Timeout => f.write_str("no answer within the timeout"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::Grpc(e) => write!(f, "gRPC: {e}"),
        }
    }
}

/// A change of an endpoint's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Healthy,
    Unhealthy,
}

#[derive(Default)]
struct EndpointHealth {
    /// Read by the data path. Starts true (traffic until the first probe).
    unhealthy: AtomicBool,
    checked: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
    /// The last failure, for the admin view.
    last_failure: Mutex<Option<String>>,
}

/// One cluster's health state.
pub struct Health {
    pub spec: HealthSpec,
    endpoints: Vec<EndpointHealth>,
    healthy: AtomicUsize,
    started: AtomicBool,
}

impl Health {
    pub fn new(spec: HealthSpec, endpoints: usize) -> Health {
        Health {
            spec,
            endpoints: (0..endpoints).map(|_| EndpointHealth::default()).collect(),
            healthy: AtomicUsize::new(endpoints),
            started: AtomicBool::new(false),
        }
    }

    /// Endpoint `i` passes its health checks (or has not been probed yet).
    #[inline]
    pub fn healthy(&self, i: usize) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| !e.unhealthy.load(Ordering::Relaxed))
    }

    /// Endpoint `i` takes over what `old` knew of its endpoint `j` (the
    /// same address in the previous snapshot's cluster).
    pub fn carry(&self, i: usize, old: &Health, j: usize) {
        let (Some(to), Some(from)) = (self.endpoints.get(i), old.endpoints.get(j)) else {
            return;
        };
        let unhealthy = from.unhealthy.load(Ordering::Relaxed);
        if unhealthy && !to.unhealthy.swap(true, Ordering::Relaxed) {
            self.healthy.fetch_sub(1, Ordering::Relaxed);
        }
        to.checked
            .store(from.checked.load(Ordering::Relaxed), Ordering::Relaxed);
        to.passes
            .store(from.passes.load(Ordering::Relaxed), Ordering::Relaxed);
        to.failures
            .store(from.failures.load(Ordering::Relaxed), Ordering::Relaxed);
        if let (Ok(mut t), Ok(f)) = (to.last_failure.lock(), from.last_failure.lock()) {
            t.clone_from(&f);
        }
    }

    /// Endpoints healthy now.
    pub fn healthy_count(&self) -> usize {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Fewer than `panic_threshold` percent of the endpoints are healthy:
    /// balance over all of them.
    #[inline]
    pub fn panic(&self) -> bool {
        let n = self.endpoints.len();
        n > 0
            && (self.healthy_count() as u64) * 100 < u64::from(self.spec.panic_threshold) * n as u64
    }

    /// The last failure seen for endpoint `i` (`None` after a pass).
    pub fn last_failure(&self, i: usize) -> Option<String> {
        self.endpoints
            .get(i)
            .and_then(|e| e.last_failure.lock().ok().and_then(|f| f.clone()))
    }

    /// Endpoint `i` has had its first probe.
    pub fn checked(&self, i: usize) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| e.checked.load(Ordering::Relaxed))
    }

    /// Feed one probe result for endpoint `i`; returns the change of
    /// health it causes, if any. Called by the cluster's one probe task.
    pub fn record(&self, i: usize, result: &Result<(), Failure>) -> Option<Transition> {
        let e = self.endpoints.get(i)?;
        if let Ok(mut f) = e.last_failure.lock() {
            *f = result.as_ref().err().map(ToString::to_string);
        }
        let was_unhealthy = e.unhealthy.load(Ordering::Relaxed);
        let first = !e.checked.swap(true, Ordering::Relaxed);
        let unhealthy = match result {
            Ok(()) => {
                e.failures.store(0, Ordering::Relaxed);
                let passes = e.passes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                was_unhealthy && !first && passes < self.spec.healthy_threshold
            }
            Err(_) => {
                e.passes.store(0, Ordering::Relaxed);
                let failures = e.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                was_unhealthy || first || failures >= self.spec.unhealthy_threshold
            }
        };
        if unhealthy == was_unhealthy {
            return None;
        }
        e.unhealthy.store(unhealthy, Ordering::Relaxed);
        if unhealthy {
            self.healthy.fetch_sub(1, Ordering::Relaxed);
            Some(Transition::Unhealthy)
        } else {
            self.healthy.fetch_add(1, Ordering::Relaxed);
            Some(Transition::Healthy)
        }
    }

    fn expected(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        self.spec
            .expected_statuses
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&s))
    }
}

/// Start the probe task of `cluster` if it has health checks and none runs
/// yet; a no-op outside a Tokio runtime (`sift check`).
pub fn start(cluster: &Arc<Cluster>) {
    let Some(h) = &cluster.health else { return };
    if h.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        h.started.store(false, Ordering::Release);
        return;
    };
    let weak = Arc::downgrade(cluster);
    let (every, jitter) = (h.spec.interval, h.spec.jitter);
    rt.spawn(run(weak, every, jitter));
}

/// `base` plus a share `r` (0..1) of `jitter`.
fn jittered(base: Duration, jitter: Duration, r: f64) -> Duration {
    base + jitter.mul_f64(r.clamp(0.0, 1.0))
}

async fn run(weak: Weak<Cluster>, every: Duration, jitter: Duration) {
    if !jitter.is_zero() {
        tokio::time::sleep(jittered(Duration::ZERO, jitter, fastrand::f64())).await;
    }
    loop {
        {
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            round(&cluster).await;
        }
        tokio::time::sleep(jittered(every, jitter, fastrand::f64())).await;
    }
}

/// Probe every endpoint once, concurrently, and record the results.
async fn round(cluster: &Arc<Cluster>) {
    let Some(h) = &cluster.health else { return };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..cluster.endpoints.len() {
        let c = cluster.clone();
        set.spawn(async move {
            let r = probe(&c, i).await;
            (i, r)
        });
    }
    while let Some(joined) = set.join_next().await {
        let Ok((i, result)) = joined else { continue };
        let outcome = match &result {
            Ok(()) => "success",
            Err(f) => f.label(),
        };
        cluster
            .metrics
            .health_checks
            .with_label_values(&[cluster.name(), outcome])
            .inc();
        let endpoint = cluster.endpoints[i].endpoint.id();
        // A passing probe returns an endpoint outlier detection ejected
        // (Envoy's successful_active_health_check_uneject_host).
        if result.is_ok() && cluster.outlier.as_ref().is_some_and(|o| o.uneject(i)) {
            tracing::info!(
                cluster = %cluster.name(),
                endpoint = %endpoint,
                "ejected endpoint returned by a passing health check"
            );
        }
        match h.record(i, &result) {
            Some(Transition::Unhealthy) => {
                let reason = result.err().map(|f| f.to_string()).unwrap_or_default();
                tracing::warn!(
                    cluster = %cluster.name(),
                    endpoint = %endpoint,
                    reason = %reason,
                    "endpoint marked unhealthy by health check"
                );
            }
            Some(Transition::Healthy) => {
                // Back from unhealthy: ramp up again (slow_start).
                if cluster.spec.slow_start.is_some() {
                    let now = crate::clock::Clock::new().now();
                    cluster.endpoints[i]
                        .warming_since
                        .store(now.max(1), std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(
                    cluster = %cluster.name(),
                    endpoint = %endpoint,
                    "endpoint healthy again"
                );
            }
            None => {}
        }
        cluster.metrics.healthy.set(h.healthy_count() as i64);
    }
}

/// One probe of endpoint `i`, bounded by the spec's timeout.
async fn probe(cluster: &Cluster, i: usize) -> Result<(), Failure> {
    let Some(h) = &cluster.health else {
        return Ok(());
    };
    let endpoint = &cluster.endpoints[i].endpoint;
    let exchange = async {
        match h.spec.kind {
            HealthKind::Tcp => cluster.pool.probe_connect(endpoint).await.map_err(failure),
            HealthKind::Grpc => {
                let req = grpc_request(&h.spec, cluster, i)?;
                let resp = cluster
                    .pool
                    .probe_exchange(endpoint, req)
                    .await
                    .map_err(failure)?;
                grpc_verdict(resp).await
            }
            HealthKind::Http => {
                let req = probe_request(&h.spec, cluster, i)?;
                let status = cluster
                    .pool
                    .probe_request(endpoint, req)
                    .await
                    .map_err(failure)?;
                if h.expected(status) {
                    Ok(())
                } else {
                    Err(Failure::Status(status.as_u16()))
                }
            }
        }
    };
    match tokio::time::timeout(h.spec.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

/// `grpc.health.v1.Health/Check` with `HealthCheckRequest{service}`.
fn grpc_request(
    spec: &HealthSpec,
    cluster: &Cluster,
    i: usize,
) -> Result<Request<crate::body::Body>, Failure> {
    let authority = cluster.endpoints[i].endpoint.authority.as_str();
    let host = spec.host.as_deref().unwrap_or(authority);
    let scheme = if cluster.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // The message: field 1 (service), length-delimited, when not empty;
    // framed as gRPC (uncompressed flag, 4-byte big-endian length).
    let mut msg = Vec::new();
    if !spec.service.is_empty() {
        msg.push(0x0a);
        let mut n = spec.service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(spec.service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Request::post(format!("{scheme}://{host}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "sift-health-check")
        .body(crate::body::full(bytes::Bytes::from(frame)))
        .map_err(|e| Failure::Protocol(format!("probe request: {e}")))
}

/// SERVING (status 1) with grpc-status 0 passes; anything else fails.
async fn grpc_verdict(resp: http::Response<hyper::body::Incoming>) -> Result<(), Failure> {
    use http_body_util::BodyExt;
    if resp.status() != StatusCode::OK {
        return Err(Failure::Status(resp.status().as_u16()));
    }
    // A trailers-only answer carries grpc-status in its head.
    let head_status = resp.headers().get("grpc-status").cloned();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    let trailers = collected.trailers().cloned();
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    match status.as_ref().map(|v| v.as_bytes()) {
        Some(b"0") => {}
        Some(s) => {
            return Err(Failure::Grpc(format!(
                "grpc-status {}",
                String::from_utf8_lossy(s)
            )));
        }
        None => return Err(Failure::Grpc("no grpc-status".into())),
    }
    let body = collected.to_bytes();
    match grpc_serving_status(&body) {
        Some(1) => Ok(()),
        Some(0) => Err(Failure::Grpc("status UNKNOWN".into())),
        Some(2) => Err(Failure::Grpc("status NOT_SERVING".into())),
        Some(3) => Err(Failure::Grpc("status SERVICE_UNKNOWN".into())),
        Some(n) => Err(Failure::Grpc(format!("status {n}"))),
        None => Err(Failure::Grpc("unreadable HealthCheckResponse".into())),
    }
}

/// `HealthCheckResponse.status` (field 1, varint) from one gRPC frame;
/// an empty message is status 0 (proto3 default).
fn grpc_serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let varint = |m: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, r) = m.split_first()?;
            *m = r;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            (_, 5) => msg = msg.get(4..)?,
            (_, 1) => msg = msg.get(8..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn failure(e: SendError) -> Failure {
    match e {
        SendError::Connect(m) => Failure::Connect(m),
        SendError::Http(e) => Failure::Protocol(e.to_string()),
    }
}

fn probe_request(
    spec: &HealthSpec,
    cluster: &Cluster,
    i: usize,
) -> Result<Request<crate::body::Body>, Failure> {
    let authority = cluster.endpoints[i].endpoint.authority.as_str();
    let host = spec.host.as_deref().unwrap_or(authority);
    let bad = |e: String| Failure::Protocol(format!("probe request: {e}"));
    let mut b = Request::get(match cluster.spec.protocol {
        // HTTP/1.1: origin form and a Host header.
        UpstreamProtocol::Http1 | UpstreamProtocol::Client => spec.path.clone(),
        // HTTP/2: the host goes in :authority.
        UpstreamProtocol::Http2 => format!(
            "{}://{host}{}",
            if cluster.spec.tls.is_some() {
                "https"
            } else {
                "http"
            },
            spec.path
        ),
    })
    .header(http::header::USER_AGENT, "sift-health-check");
    if cluster.spec.protocol != UpstreamProtocol::Http2 {
        b = b
            .header(
                http::header::HOST,
                HeaderValue::from_str(host).map_err(|e| bad(e.to_string()))?,
            )
            .header(http::header::CONNECTION, "close");
    }
    b.body(crate::body::empty()).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(unhealthy: u32, healthy: u32, panic: u32) -> HealthSpec {
        HealthSpec {
            kind: HealthKind::Http,
            path: "/healthz".into(),
            host: None,
            service: String::new(),
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            expected_statuses: vec![(200, 399)],
            panic_threshold: panic,
        }
    }

    #[test]
    fn jitter_adds_up_to_its_length() {
        let (b, j) = (Duration::from_secs(5), Duration::from_millis(500));
        assert_eq!(jittered(b, j, 0.0), b);
        assert_eq!(jittered(b, j, 1.0), b + j);
        assert_eq!(jittered(b, j, 0.5), b + Duration::from_millis(250));
        assert_eq!(jittered(b, j, 7.0), b + j, "clamped");
        assert_eq!(jittered(b, Duration::ZERO, 0.9), b);
    }

    const OK: Result<(), Failure> = Ok(());
    fn fail() -> Result<(), Failure> {
        Err(Failure::Status(503))
    }

    #[test]
    fn first_probe_decides_then_thresholds_apply() {
        let h = Health::new(spec(3, 2, 0), 2);
        assert!(
            h.healthy(0) && h.healthy(1),
            "traffic before the first probe"
        );
        assert!(!h.checked(0));
        // First probe fails: unhealthy at once.
        assert_eq!(h.record(0, &fail()), Some(Transition::Unhealthy));
        assert!(!h.healthy(0));
        assert_eq!(h.last_failure(0).as_deref(), Some("status 503"));
        assert_eq!(h.healthy_count(), 1);
        // Back after healthy_threshold (2) passes in a row, not one.
        assert_eq!(h.record(0, &OK), None);
        assert!(!h.healthy(0));
        assert_eq!(h.record(0, &fail()), None, "a failure resets the run");
        assert_eq!(h.record(0, &OK), None);
        assert_eq!(h.record(0, &OK), Some(Transition::Healthy));
        assert!(h.healthy(0));
        assert_eq!(h.last_failure(0), None);
        // Healthy: out after unhealthy_threshold (3) failures in a row.
        assert_eq!(h.record(0, &fail()), None);
        assert_eq!(h.record(0, &fail()), None);
        assert_eq!(h.record(0, &OK), None, "a pass resets the run");
        assert_eq!(h.record(0, &fail()), None);
        assert_eq!(h.record(0, &fail()), None);
        assert_eq!(h.record(0, &fail()), Some(Transition::Unhealthy));
        assert_eq!(h.healthy_count(), 1);
        // First probe passes: healthy, no transition.
        assert_eq!(h.record(1, &OK), None);
        assert!(h.healthy(1) && h.checked(1));
        // Out of range: nothing.
        assert_eq!(h.record(7, &OK), None);
        assert!(!h.healthy(7));
    }

    #[test]
    fn panic_below_the_threshold() {
        let h = Health::new(spec(1, 1, 50), 4);
        assert!(!h.panic());
        h.record(0, &fail());
        h.record(1, &fail());
        assert_eq!(h.healthy_count(), 2);
        assert!(!h.panic(), "50 % healthy is not below 50 %");
        h.record(2, &fail());
        assert!(h.panic());
        let off = Health::new(spec(1, 1, 0), 1);
        off.record(0, &fail());
        assert!(!off.panic(), "panic_threshold 0 never panics");
        let all = Health::new(spec(1, 1, 100), 2);
        assert!(!all.panic());
        all.record(0, &fail());
        assert!(all.panic(), "100: any unhealthy endpoint");
        assert!(!Health::new(spec(1, 1, 50), 0).panic(), "no endpoints");
    }

    #[test]
    fn grpc_health_answers_are_read() {
        let frame = |msg: &[u8]| {
            let mut f = vec![0];
            f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            f.extend_from_slice(msg);
            f
        };
        assert_eq!(grpc_serving_status(&frame(&[0x08, 0x01])), Some(1));
        assert_eq!(grpc_serving_status(&frame(&[0x08, 0x02])), Some(2));
        assert_eq!(grpc_serving_status(&frame(&[])), Some(0));
        // Unknown fields are skipped.
        assert_eq!(
            grpc_serving_status(&frame(&[0x12, 0x02, b'h', b'i', 0x08, 0x01])),
            Some(1)
        );
        assert_eq!(grpc_serving_status(&[]), None);
        assert_eq!(grpc_serving_status(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(grpc_serving_status(&frame(&[0x08])), None, "cut short");
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 9, 0x08]), None);
    }

    #[test]
    fn expected_statuses_are_inclusive_ranges() {
        let mut s = spec(1, 1, 0);
        s.expected_statuses = vec![(200, 200), (204, 299)];
        let h = Health::new(s, 1);
        for (code, ok) in [
            (200, true),
            (201, false),
            (204, true),
            (299, true),
            (300, false),
        ] {
            assert_eq!(
                h.expected(StatusCode::from_u16(code).unwrap()),
                ok,
                "{code}"
            );
        }
    }
}
