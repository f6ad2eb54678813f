//! Upstream clusters: endpoints, load balancing and the connection pool.
//!
//! A [`Cluster`] owns one hyper client (and so one pool); the snapshot
//! builder re-uses the same `Arc<Cluster>` across reloads while the cluster's
//! spec is unchanged, so its pool and in-flight counters survive a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::file::{LbPolicy, UpstreamProtocol};
use crate::config::model::{ClusterSpec, Endpoint};

pub struct EndpointState {
    pub endpoint: Endpoint,
    /// Requests in flight to this endpoint (least-request LB).
    pub inflight: AtomicUsize,
    /// Cleared by outlier detection / health checking.
    pub healthy: AtomicBool,
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub endpoints: Vec<EndpointState>,
    client: Client<HttpConnector, Body>,
    rr: AtomicUsize,
}

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

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.cluster.endpoints[self.index]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout.0));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(spec.idle_timeout.0)
            .pool_max_idle_per_host(spec.max_idle_per_endpoint)
            .set_host(false);
        if spec.protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| EndpointState {
                endpoint: e.clone(),
                inflight: AtomicUsize::new(0),
                healthy: AtomicBool::new(true),
            })
            .collect();
        Arc::new(Cluster {
            spec,
            endpoints,
            client,
            rr: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Choose an endpoint by the cluster's LB policy among healthy ones.
    pub fn pick(self: &Arc<Self>) -> Option<(usize, InflightGuard)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let healthy = |i: usize| self.endpoints[i].healthy.load(Ordering::Relaxed);
        let index = match self.spec.lb {
            LbPolicy::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| healthy(i))?
            }
            LbPolicy::LeastRequest => {
                let load = |i: usize| self.endpoints[i].inflight.load(Ordering::Relaxed);
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
                            if load(b) < load(a) {
                                b
                            } else {
                                a
                            }
                        }
                        (true, false) => a,
                        (false, true) => b,
                        (false, false) => {
                            (0..n).filter(|&i| healthy(i)).min_by_key(|&i| load(i))?
                        }
                    }
                }
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

    /// Send a request whose URI already names the endpoint.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}
