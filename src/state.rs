//! State shared by every part of a running sift: the one `ArcSwap` that
//! holds the current [`Snapshot`], the metrics, and the lifecycle flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// Listeners are bound and the first config is loaded.
    pub ready: AtomicBool,
    /// Shutdown has begun: /readyz fails, listeners close, connections drain.
    pub draining: AtomicBool,
    /// Set by `POST /healthcheck/fail` (Envoy's): /readyz fails while sift
    /// keeps serving, so a load balancer takes it out of rotation first.
    pub failing: AtomicBool,
    /// The one clock every time-dependent policy reads.
    pub clock: crate::clock::Clock,
    /// The threads that run body filters (sized at start).
    pub filter_pool: Arc<crate::filter::pool::Pool>,
    /// Request body bytes held in memory, across every request
    /// (`overload.max_buffered_bytes`).
    pub budget: Arc<crate::budget::Budget>,
    /// Request body bytes in spool files (`overload.max_spooled_bytes`).
    pub spool_budget: Arc<crate::budget::Budget>,
    /// Open client connections across every listener
    /// (`overload.max_connections`).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The span exporter when `tracing` is configured (built at start).
    pub tracer: Option<Arc<crate::trace::Exporter>>,
    /// Set once a successor took the listening sockets over (binary
    /// upgrade): the listeners and the admin API stop accepting, the
    /// connections drain, the process exits.
    pub handed_over: tokio::sync::watch::Sender<bool>,
    /// Set by `POST /quitquitquit` (Envoy's; linkerd's `/shutdown`): the
    /// same graceful stop as SIGTERM, for a pod whose main container
    /// ended (a Kubernetes Job with a sidecar).
    pub quit: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>, clock: crate::clock::Clock) -> Arc<Self> {
        let fp = &snapshot.config.filter_pool;
        let threads = fp.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        let filter_pool =
            crate::filter::pool::Pool::new(threads, fp.queue, metrics.filters.pool_queued.clone());
        let tracer = snapshot
            .config
            .tracing
            .clone()
            .map(|t| Arc::new(crate::trace::Exporter::new(t, metrics.trace_spans.clone())));
        let budget = crate::budget::Budget::new(
            metrics.buffered_request_bytes.clone(),
            metrics.buffer_denied.clone(),
        );
        let spool_budget = crate::budget::Budget::new(
            metrics.spooled_request_bytes.clone(),
            metrics.spool_denied.clone(),
        );
        Arc::new(Shared {
            filter_pool,
            budget,
            spool_budget,
            connections: Arc::default(),
            tracer,
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            clock,
            handed_over: tokio::sync::watch::Sender::new(false),
            quit: tokio::sync::watch::Sender::new(false),
        })
    }

    /// A successor serves on the listening sockets now ([`Shared::handed_over`]).
    pub fn hand_over(&self) {
        self.draining.store(true, Ordering::Release);
        self.handed_over.send_replace(true);
    }

    /// Ask for the graceful stop SIGTERM starts (`POST /quitquitquit`).
    pub fn request_quit(&self) {
        self.quit.send_replace(true);
    }

    /// Resolves once a stop was asked for on the admin API.
    pub async fn until_quit(&self) {
        let _ = self.quit.subscribe().wait_for(|q| *q).await;
    }

    /// Resolves once a successor took over.
    pub async fn until_handed_over(&self) {
        let _ = self.handed_over.subscribe().wait_for(|h| *h).await;
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.failing.load(Ordering::Acquire)
    }
}
