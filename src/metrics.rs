//! Prometheus metrics: one registry per running sift, prefix `sift_`, help
//! text on every metric, and only bounded label values (listener, route and
//! cluster names come from the config; error kinds from [`ErrorKind`]).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::ErrorKind;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_connect_errors: IntCounterVec,
    pub errors: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub connections: IntCounterVec,
    pub listener_overflow: IntCounterVec,
    pub listener_client_overflow: IntCounterVec,
    /// `sift_listener_global_overflow_total{listener}`.
    pub listener_global_overflow: IntCounterVec,
    pub downstream_protocol_errors: IntCounterVec,
    pub active_requests: IntGauge,
    /// `sift_buffered_request_bytes`.
    pub buffered_request_bytes: IntGauge,
    /// `sift_buffer_denied_total{use}`.
    pub buffer_denied: IntCounterVec,
    /// `sift_spooled_request_bytes`.
    pub spooled_request_bytes: IntGauge,
    /// `sift_spool_denied_total{use}`.
    pub spool_denied: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub upgrades: IntCounterVec,
    pub mirror_requests: IntCounterVec,
    pub faults: IntCounterVec,
    pub ratelimit_redis_errors: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    /// `sift_rls_decisions_total{domain,limit,decision}`.
    pub rls_decisions: IntCounterVec,
    /// `sift_external_auth_total{route,result}`.
    pub external_auth: IntCounterVec,
    /// `sift_external_ratelimit_total{route,result}`.
    pub external_ratelimit: IntCounterVec,
    pub circuit_overflow: IntCounterVec,
    pub outlier_ejections: IntCounterVec,
    pub endpoints_ejected: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub endpoints_healthy: IntGaugeVec,
    /// Share of requests (percent) each priority level of a cluster takes.
    pub cluster_priority_load: prometheus::GaugeVec,
    /// `sift_cluster_endpoints{cluster}`.
    pub cluster_endpoints: IntGaugeVec,
    /// `sift_dns_resolutions_total{cluster,result}`.
    pub dns_resolutions: IntCounterVec,
    /// `sift_tcp_connections_total{listener,cluster,result}`.
    pub tcp_connections: IntCounterVec,
    /// `sift_tcp_bytes_total{listener,direction}`.
    pub tcp_bytes: IntCounterVec,
    /// `sift_connections_closed_total{listener,reason}`.
    pub connections_closed: IntCounterVec,
    pub lb_panic: IntCounterVec,
    pub cors: IntCounterVec,
    /// `sift_csrf_requests_total{route,result}`.
    pub csrf: IntCounterVec,
    pub trace_spans: IntCounterVec,
    pub jwt: IntCounterVec,
    pub basic_auth: IntCounterVec,
    pub envoy_checks: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub compression: IntCounterVec,
    pub compression_bytes: IntCounterVec,
    pub retries: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub adaptive_limit: IntGaugeVec,
    pub adaptive_min_rtt: prometheus::GaugeVec,
    pub adaptive_sample_rtt: prometheus::GaugeVec,
    pub adaptive_blocked: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_stores: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub cache_refreshes: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub canary_weight: IntGaugeVec,
    pub canary_rollout_step: IntGaugeVec,
    pub canary_rollbacks: IntCounterVec,
    pub canary_promotions: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_resumed_handshakes: IntCounterVec,
    pub tls_cert_expiry: prometheus::GaugeVec,
    pub tls_reloads: IntCounterVec,
    pub upstream_tls_cert_expiry: prometheus::GaugeVec,
    pub upstream_tls_reloads: IntCounterVec,
    pub filters: FilterMetrics,
}

/// The body filters' metrics.
pub struct FilterMetrics {
    pub verdicts: IntCounterVec,
    pub duration: HistogramVec,
    pub skipped: IntCounterVec,
    pub overload: IntCounterVec,
    pub model_reloads: IntCounterVec,
    pub learned: IntCounterVec,
    pub pool_queued: IntGauge,
    pub spooled: IntCounterVec,
}

impl FilterMetrics {
    fn new(registry: &Registry) -> FilterMetrics {
        let verdicts = IntCounterVec::new(
            Opts::new(
                "sift_filter_verdicts_total",
                "Body filter verdicts by filter, route and verdict (spam/ham, or a CI-log class), in every mode (shadow included).",
            ),
            &["filter", "route", "verdict"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sift_filter_duration_seconds",
                "Time a filter spent on one body in the filter pool (decoding, extraction, classification), by filter.",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["filter"],
        )
        .expect("valid metric");
        let skipped = IntCounterVec::new(
            Opts::new(
                "sift_filter_skipped_total",
                "Bodies a filter did not classify, by filter and reason: content_type, encoding, empty, oversize, overload, decode_error, extract_error, model_error, incomplete.",
            ),
            &["filter", "reason"],
        )
        .expect("valid metric");
        let overload = IntCounterVec::new(
            Opts::new(
                "sift_filter_overload_total",
                "Inspections refused because the filter pool was saturated, by filter and action (fail_open, fail_closed, shadow_dropped).",
            ),
            &["filter", "action"],
        )
        .expect("valid metric");
        let model_reloads = IntCounterVec::new(
            Opts::new(
                "sift_filter_model_reloads_total",
                "Model file changes picked up, by filter and result (success; failure: the old model keeps serving; shadowed_by_learned: read, but the learned model keeps serving).",
            ),
            &["filter", "result"],
        )
        .expect("valid metric");
        let learned = IntCounterVec::new(
            Opts::new(
                "sift_filter_learned_examples_total",
                "Labelled examples learned at run time (POST /filters/{name}/learn), by filter and label.",
            ),
            &["filter", "label"],
        )
        .expect("valid metric");
        let pool_queued = IntGauge::new(
            "sift_filter_pool_queued",
            "Inspections waiting for or running on a filter pool thread.",
        )
        .expect("valid metric");
        let spooled = IntCounterVec::new(
            Opts::new(
                "sift_filter_spooled_bytes_total",
                "Body bytes past max_inspect_bytes written to a spool file (on_oversize: spool), by route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        for m in [
            Box::new(verdicts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(spooled.clone()),
            Box::new(duration.clone()),
            Box::new(skipped.clone()),
            Box::new(overload.clone()),
            Box::new(model_reloads.clone()),
            Box::new(learned.clone()),
            Box::new(pool_queued.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        FilterMetrics {
            verdicts,
            duration,
            skipped,
            overload,
            model_reloads,
            learned,
            pool_queued,
            spooled,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Seconds buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sift_requests_total",
                "Requests answered, by listener, route, cluster and status class (2xx..5xx). Route and cluster are \"none\" when sift answered before choosing one.",
            ),
            &["listener", "route", "cluster", "code_class"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sift_request_duration_seconds",
                "Time from receiving a request head to the end of the response body, by route and cluster.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "cluster"],
        )
        .expect("valid metric");
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new(
                "sift_upstream_connect_errors_total",
                "Failed attempts to open a connection to an upstream endpoint, by cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "sift_errors_total",
                "Requests sift answered itself because of an error, by kind (the x-sift-error value).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let active_connections = IntGaugeVec::new(
            Opts::new(
                "sift_active_connections",
                "Open downstream connections, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections = IntCounterVec::new(
            Opts::new(
                "sift_connections_total",
                "Downstream connections accepted, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let listener_overflow = IntCounterVec::new(
            Opts::new(
                "sift_listener_overflow_total",
                "Connections closed at accept because the listener was at max_connections.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let listener_client_overflow = IntCounterVec::new(
            Opts::new(
                "sift_listener_client_overflow_total",
                "Connections closed at accept because their client was at max_connections_per_client.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let listener_global_overflow = IntCounterVec::new(
            Opts::new(
                "sift_listener_global_overflow_total",
                "Connections closed at accept because sift had overload.max_connections open across its listeners.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let downstream_protocol_errors = IntCounterVec::new(
            Opts::new(
                "sift_downstream_protocol_errors_total",
                "Downstream connections that ended in an HTTP protocol error (unparseable request, header read timeout, oversized head answered by the HTTP codec), by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let buffered_request_bytes = IntGauge::new(
            "sift_buffered_request_bytes",
            "Request body bytes held in memory now (for filters, external authorization, retries and mirror copies), against overload.max_buffered_bytes.",
        )
        .expect("valid metric");
        let buffer_denied = IntCounterVec::new(
            Opts::new(
                "sift_buffer_denied_total",
                "Holds of a request body refused because overload.max_buffered_bytes was reached, by use: filter (the filters' on_overload decided), spool (written to disk sooner), external_auth (503 overloaded), retry (streamed without replay), mirror (copy skipped), buffering (request_buffering spooled sooner).",
            ),
            &["use"],
        )
        .expect("valid metric");
        let spooled_request_bytes = IntGauge::new(
            "sift_spooled_request_bytes",
            "Request body bytes in spool files now (on_oversize: spool filters, request_buffering), against overload.max_spooled_bytes.",
        )
        .expect("valid metric");
        let spool_denied = IntCounterVec::new(
            Opts::new(
                "sift_spool_denied_total",
                "Spool writes refused because overload.max_spooled_bytes was reached, by use: filter (the filters' on_overload decided), buffering (503).",
            ),
            &["use"],
        )
        .expect("valid metric");
        let active_requests = IntGauge::new(
            "sift_active_requests",
            "Requests in flight on the data path.",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "sift_config_reloads_total",
                "Config reload attempts by result: success, unchanged or failure (the old config keeps serving).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_last_reload_success = IntGauge::new(
            "sift_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that took effect.",
        )
        .expect("valid metric");
        let upgrades = IntCounterVec::new(
            Opts::new(
                "sift_upgrades_total",
                "HTTP upgrades (e.g. WebSocket) tunnelled, by route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "sift_mirror_requests_total",
                "Mirrored (shadow) request copies by route, mirror cluster and result: sent (the mirror answered, any status), failed (connect error, reset, timeout, no endpoint), aborted (the client's body failed or was cut off before it ended), skipped_too_large (body over max_body), dropped_overload (the mirror cluster's circuit breaker was full).",
            ),
            &["route", "cluster", "result"],
        )
        .expect("valid metric");
        let ratelimit_redis_errors = IntCounterVec::new(
            Opts::new(
                "sift_ratelimit_redis_errors_total",
                "Global rate-limit checks Redis did not answer, by reason (timeout, connection, server_error, protocol) and the action failure_mode took (allowed, denied).",
            ),
            &["reason", "action"],
        )
        .expect("valid metric");
        let faults = IntCounterVec::new(
            Opts::new(
                "sift_faults_injected_total",
                "Faults injected by a route's `fault` section, by route and kind (delay, abort).",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "sift_ratelimit_decisions_total",
                "Rate-limit decisions by route, policy and decision (allowed, denied, shadow_denied).",
            ),
            &["route", "policy", "decision"],
        )
        .expect("valid metric");
        let rls_decisions = IntCounterVec::new(
            Opts::new(
                "sift_rls_decisions_total",
                "Rate limit service (Envoy's ShouldRateLimit) decisions by domain, configured limit (its descriptor path, or (request) for limits the request carried) and decision (ok, over_limit, shadow_over_limit).",
            ),
            &["domain", "limit", "decision"],
        )
        .expect("valid metric");
        let external_auth = IntCounterVec::new(
            Opts::new(
                "sift_external_auth_total",
                "Checks with a route's external authorization service by route and result (allowed, denied, error_allowed: no answer and failure_mode_allow, error_denied: no answer, status_on_error).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let external_ratelimit = IntCounterVec::new(
            Opts::new(
                "sift_external_ratelimit_total",
                "Calls to a route's external rate limit service by route and result (ok, over_limit, error_allowed: no answer, let through; error_denied: no answer, failure_mode_deny).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let circuit_overflow = IntCounterVec::new(
            Opts::new(
                "sift_circuit_overflow_total",
                "Circuit-breaker overflows by cluster and threshold (connections: a request had to queue; pending, requests: a request got 503 circuit-open; retries: a retry was not sent).",
            ),
            &["cluster", "threshold"],
        )
        .expect("valid metric");
        let outlier_ejections = IntCounterVec::new(
            Opts::new(
                "sift_outlier_ejections_total",
                "Endpoints ejected by outlier detection, by cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let endpoints_ejected = IntGaugeVec::new(
            Opts::new(
                "sift_endpoints_ejected",
                "Endpoints ejected right now, by cluster (refreshed at scrape).",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let health_checks = IntCounterVec::new(
            Opts::new(
                "sift_health_checks_total",
                "Active health probes by cluster and outcome (success, unexpected_status, timeout, connect_failure, protocol_error, not_serving).",
            ),
            &["cluster", "outcome"],
        )
        .expect("valid metric");
        let endpoints_healthy = IntGaugeVec::new(
            Opts::new(
                "sift_endpoints_healthy",
                "Endpoints passing active health checks, by cluster (clusters with health_check only).",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let cluster_priority_load = prometheus::GaugeVec::new(
            Opts::new(
                "sift_cluster_priority_load",
                "Share of requests (percent) each priority level of a cluster takes now (clusters whose endpoints have priorities; read at scrape time).",
            ),
            &["cluster", "priority"],
        )
        .expect("valid metric");
        let cluster_endpoints = IntGaugeVec::new(
            Opts::new(
                "sift_cluster_endpoints",
                "Endpoints of each cluster (a strict_dns cluster: the addresses its names resolve to now).",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "sift_dns_resolutions_total",
                "Periodic DNS lookups of strict_dns clusters' names, by cluster and result (changed, unchanged, failure: the last addresses are kept).",
            ),
            &["cluster", "result"],
        )
        .expect("valid metric");
        let tcp_connections = IntCounterVec::new(
            Opts::new(
                "sift_tcp_connections_total",
                "Connections of serve: tcp listeners, by listener, cluster and how they ended: closed, idle_timeout, error, connect_failure, no_endpoint, overflow, identity_denied.",
            ),
            &["listener", "cluster", "result"],
        )
        .expect("valid metric");
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "sift_tcp_bytes_total",
                "Bytes relayed by serve: tcp listeners: received (from clients, sent upstream) and sent (to clients).",
            ),
            &["listener", "direction"],
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "sift_connections_closed_total",
                "HTTP connections sift closed, by listener and reason: idle_timeout, drain (shutdown), max_requests, max_duration (graceful), drain_timeout (cut with requests in flight), head_timeout. Connections the client closed are not counted.",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let lb_panic = IntCounterVec::new(
            Opts::new(
                "sift_lb_panic_total",
                "Requests balanced over all endpoints because fewer than panic_threshold percent were healthy, by cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let cors = IntCounterVec::new(
            Opts::new(
                "sift_cors_requests_total",
                "Requests with an Origin on routes with a cors policy, by route and result (preflight: answered by sift; allowed: answer decorated; denied: origin not allowed, left as is).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let csrf = IntCounterVec::new(
            Opts::new(
                "sift_csrf_requests_total",
                "State-changing requests (not GET, HEAD or OPTIONS) on routes with a csrf policy, by route and result (same_origin, trusted, no_origin: passed; denied: refused with 403; shadow_denied: would be refused, let through in shadow mode).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let jwt = IntCounterVec::new(
            Opts::new(
                "sift_jwt_total",
                "JWT checks on routes with jwt, by route and result (ok, missing, invalid, allowed_missing).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let basic_auth = IntCounterVec::new(
            Opts::new(
                "sift_basic_auth_total",
                "Basic authentication checks on routes with basic_auth, by route and result (ok, missing, invalid).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let envoy_checks = IntCounterVec::new(
            Opts::new(
                "sift_envoy_checks_total",
                "Calls from Envoy on serve: envoy listeners, by listener, api (ext_authz_grpc, ext_authz_http, ext_proc) and decision (allowed, denied, error).",
            ),
            &["listener", "api", "decision"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "sift_jwks_fetches_total",
                "Fetches of remote JWKS (jwt_providers[].remote_jwks), by provider and result (ok, failed).",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let trace_spans = IntCounterVec::new(
            Opts::new(
                "sift_trace_spans_total",
                "Sampled spans by result: exported (the collector took them), failed (the export failed), dropped (the queue was full).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let compression = IntCounterVec::new(
            Opts::new(
                "sift_compression_total",
                "Answers on routes with compression, by route and result (compressed, not_accepted, too_small, content_type, already_encoded, no_transform, no_body).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let compression_bytes = IntCounterVec::new(
            Opts::new(
                "sift_compression_bytes_total",
                "Bytes of compressed answers before (uncompressed) and after (compressed) gzip, by route.",
            ),
            &["route", "stage"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "sift_retries_total",
                "Retry decisions by cluster and outcome (retried, budget_exhausted, attempts_exhausted, not_replayable, non_idempotent, no_endpoint, retry_after_too_long, hedged, stale_connection).",
            ),
            &["cluster", "outcome"],
        )
        .expect("valid metric");
        let inflight = IntGaugeVec::new(
            Opts::new("sift_inflight", "Requests in flight, by route."),
            &["route"],
        )
        .expect("valid metric");
        let adaptive_limit = IntGaugeVec::new(
            Opts::new(
                "sift_adaptive_concurrency_limit",
                "A route's adaptive concurrency limit now (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let adaptive_min_rtt = prometheus::GaugeVec::new(
            Opts::new(
                "sift_adaptive_concurrency_min_rtt_seconds",
                "A route's minimum RTT last measured by its adaptive concurrency controller (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let adaptive_sample_rtt = prometheus::GaugeVec::new(
            Opts::new(
                "sift_adaptive_concurrency_sample_rtt_seconds",
                "A route's RTT in the last window of its adaptive concurrency controller (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let adaptive_blocked = IntCounterVec::new(
            Opts::new(
                "sift_adaptive_concurrency_blocked_total",
                "Requests refused (503 overloaded) at a route's adaptive concurrency limit.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "sift_cache_requests_total",
                "Requests on routes with a cache, by how the cache served them: hit, miss, expired, revalidated, stale, updating, bypass.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let cache_stores = IntCounterVec::new(
            Opts::new(
                "sift_cache_stores_total",
                "Upstream answers to cacheable requests: stored, not_storable (HTTP forbids it or names no freshness), too_large.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let cache_refreshes = IntCounterVec::new(
            Opts::new(
                "sift_cache_refreshes_total",
                "Background updates of expired entries (background_update): revalidated (304), replaced (a new answer), failed (no answer, or an error).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let cache_evictions = IntCounterVec::new(
            Opts::new(
                "sift_cache_evictions_total",
                "Entries evicted to keep a route's cache within max_bytes.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let cache_bytes = IntGaugeVec::new(
            Opts::new(
                "sift_cache_bytes",
                "Bytes a route's cache holds (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                "sift_cache_entries",
                "Entries a route's cache holds (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let canary_weight = IntGaugeVec::new(
            Opts::new(
                "sift_canary_weight",
                "Current weight of each version of a canary route (refreshed at scrape).",
            ),
            &["route", "version"],
        )
        .expect("valid metric");
        let canary_rollout_step = IntGaugeVec::new(
            Opts::new(
                "sift_canary_rollout_step",
                "Index of the running rollout step per canary route; -1 when no rollout runs (refreshed at scrape).",
            ),
            &["route"],
        )
        .expect("valid metric");
        let canary_rollbacks = IntCounterVec::new(
            Opts::new(
                "sift_canary_rollbacks_total",
                "Rollouts rolled back by the analysis, by route and failing metric.",
            ),
            &["route", "metric"],
        )
        .expect("valid metric");
        let canary_promotions = IntCounterVec::new(
            Opts::new(
                "sift_canary_promotions_total",
                "Rollouts that passed every step and promoted the canary to 100 %.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "sift_tls_handshakes_total",
                "Completed TLS handshakes by listener and peer: the client's trust domain, or dns/cn for non-SPIFFE certificates, or none without a client certificate.",
            ),
            &["listener", "peer"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "sift_tls_handshake_failures_total",
                "Failed TLS handshakes by listener and reason (no_client_cert, unknown_ca, expired, not_yet_valid, revoked, bad_certificate, protocol, alert_received, timeout, closed, io, other).",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let tls_resumed_handshakes = IntCounterVec::new(
            Opts::new(
                "sift_tls_resumed_handshakes_total",
                "Completed TLS handshakes that resumed an earlier session (ticket or session cache), by listener; also counted in sift_tls_handshakes_total.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let tls_cert_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "sift_tls_cert_expiry_seconds",
                "Seconds until a listener certificate expires (negative: expired), refreshed at scrape.",
            ),
            &["listener", "cert"],
        )
        .expect("valid metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "sift_tls_reloads_total",
                "Certificate / key / CA file changes by listener and result (success, failure: the old material keeps serving).",
            ),
            &["listener", "result"],
        )
        .expect("valid metric");
        let upstream_tls_cert_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "sift_upstream_tls_cert_expiry_seconds",
                "Seconds until a cluster's client certificate expires (negative: expired), refreshed at scrape.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let upstream_tls_reloads = IntCounterVec::new(
            Opts::new(
                "sift_upstream_tls_reloads_total",
                "A cluster's CA / client certificate / key file changes by result (success, failure: the old material keeps serving).",
            ),
            &["cluster", "result"],
        )
        .expect("valid metric");
        for m in [
            Box::new(upstream_tls_cert_expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_tls_reloads.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(tls_resumed_handshakes.clone()),
            Box::new(tls_cert_expiry.clone()),
            Box::new(tls_reloads.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        for m in [
            Box::new(canary_weight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(adaptive_limit.clone()),
            Box::new(adaptive_min_rtt.clone()),
            Box::new(adaptive_sample_rtt.clone()),
            Box::new(adaptive_blocked.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_stores.clone()),
            Box::new(cache_evictions.clone()),
            Box::new(cache_refreshes.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_entries.clone()),
            Box::new(canary_rollout_step.clone()),
            Box::new(canary_rollbacks.clone()),
            Box::new(canary_promotions.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        for m in [
            Box::new(ratelimit_decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rls_decisions.clone()),
            Box::new(external_auth.clone()),
            Box::new(external_ratelimit.clone()),
            Box::new(circuit_overflow.clone()),
            Box::new(outlier_ejections.clone()),
            Box::new(endpoints_ejected.clone()),
            Box::new(health_checks.clone()),
            Box::new(endpoints_healthy.clone()),
            Box::new(cluster_priority_load.clone()),
            Box::new(cluster_endpoints.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(tcp_connections.clone()),
            Box::new(tcp_bytes.clone()),
            Box::new(connections_closed.clone()),
            Box::new(lb_panic.clone()),
            Box::new(cors.clone()),
            Box::new(csrf.clone()),
            Box::new(trace_spans.clone()),
            Box::new(jwt.clone()),
            Box::new(basic_auth.clone()),
            Box::new(envoy_checks.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(compression.clone()),
            Box::new(compression_bytes.clone()),
            Box::new(retries.clone()),
            Box::new(inflight.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_connect_errors.clone()),
            Box::new(errors.clone()),
            Box::new(active_connections.clone()),
            Box::new(connections.clone()),
            Box::new(listener_overflow.clone()),
            Box::new(listener_client_overflow.clone()),
            Box::new(listener_global_overflow.clone()),
            Box::new(downstream_protocol_errors.clone()),
            Box::new(active_requests.clone()),
            Box::new(buffered_request_bytes.clone()),
            Box::new(buffer_denied.clone()),
            Box::new(spooled_request_bytes.clone()),
            Box::new(spool_denied.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(upgrades.clone()),
            Box::new(mirror_requests.clone()),
            Box::new(faults.clone()),
            Box::new(ratelimit_redis_errors.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        for k in ErrorKind::ALL {
            errors.with_label_values(&[k.as_str()]);
        }
        for r in ["success", "unchanged", "failure"] {
            config_reloads.with_label_values(&[r]);
        }
        let filters = FilterMetrics::new(&registry);
        registry
            .register(Box::new(ProcessCollector::new()))
            .expect("metric names are unique");
        // `sift_build_info{version} 1`, as linkerd2-proxy's
        // `proxy_build_info`: which version each replica runs.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sift_build_info",
                "Always 1; the label names the sift version running.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        Metrics {
            filters,
            registry,
            requests,
            request_duration,
            upstream_connect_errors,
            errors,
            active_connections,
            connections,
            listener_overflow,
            listener_client_overflow,
            listener_global_overflow,
            downstream_protocol_errors,
            active_requests,
            buffered_request_bytes,
            buffer_denied,
            spooled_request_bytes,
            spool_denied,
            config_reloads,
            config_last_reload_success,
            upgrades,
            mirror_requests,
            faults,
            ratelimit_redis_errors,
            ratelimit_decisions,
            rls_decisions,
            external_auth,
            external_ratelimit,
            circuit_overflow,
            outlier_ejections,
            endpoints_ejected,
            health_checks,
            endpoints_healthy,
            cluster_priority_load,
            cluster_endpoints,
            dns_resolutions,
            tcp_connections,
            tcp_bytes,
            connections_closed,
            lb_panic,
            cors,
            csrf,
            trace_spans,
            jwt,
            basic_auth,
            envoy_checks,
            jwks_fetches,
            compression,
            compression_bytes,
            retries,
            inflight,
            adaptive_limit,
            adaptive_min_rtt,
            adaptive_sample_rtt,
            adaptive_blocked,
            cache_requests,
            cache_stores,
            cache_evictions,
            cache_refreshes,
            cache_bytes,
            cache_entries,
            canary_weight,
            canary_rollout_step,
            canary_rollbacks,
            canary_promotions,
            tls_handshakes,
            tls_handshake_failures,
            tls_resumed_handshakes,
            tls_cert_expiry,
            tls_reloads,
            upstream_tls_cert_expiry,
            upstream_tls_reloads,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The process metrics every Prometheus client library exports
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads`, `process_start_time_seconds`), as linkerd2-proxy
/// does, read from /proc at each scrape. Where /proc cannot be read (a
/// container without it) the ones it feeds are left out, never an error.
pub struct ProcessCollector {
    cpu: prometheus::Counter,
    rss: IntGauge,
    vsz: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start: prometheus::Gauge,
    descs: Vec<prometheus::core::Desc>,
    /// Seconds per clock tick and bytes per page.
    tick: f64,
    page: u64,
    /// Boot time (Unix seconds, /proc/stat `btime`).
    boot: Option<u64>,
}

/// What /proc/self/stat says: CPU ticks (user + system), threads, start
/// (ticks after boot), virtual size (bytes), resident pages.
#[derive(Debug, PartialEq)]
struct Stat {
    ticks: u64,
    threads: i64,
    start: u64,
    vsize: u64,
    rss_pages: i64,
}

/// Parse /proc/self/stat's line: fields after the command's `)` (the
/// command itself may hold spaces and parentheses).
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<i64>().ok());
    Some(Stat {
        ticks: (n(14)? + n(15)?).max(0) as u64,
        threads: n(20)?,
        start: n(22)?.max(0) as u64,
        vsize: n(23)?.max(0) as u64,
        rss_pages: n(24)?,
    })
}

impl ProcessCollector {
    pub fn new() -> Self {
        let cpu = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let rss = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let vsz = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
        );
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let start = prometheus::Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        let mut descs = Vec::new();
        for c in [
            &cpu as &dyn prometheus::core::Collector,
            &rss,
            &vsz,
            &open_fds,
            &max_fds,
            &threads,
            &start,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        });
        ProcessCollector {
            cpu,
            rss,
            vsz,
            open_fds,
            max_fds,
            threads,
            start,
            descs,
            tick: 1.0 / rustix::param::clock_ticks_per_second().max(1) as f64,
            page: rustix::param::page_size() as u64,
            boot,
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl prometheus::core::Collector for ProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut out = Vec::new();
        if let Some(s) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|l| parse_stat(&l))
        {
            // A counter only goes up: add what was spent since the last scrape.
            let total = s.ticks as f64 * self.tick;
            let past = self.cpu.get();
            if total > past {
                self.cpu.inc_by(total - past);
            }
            out.extend(self.cpu.collect());
            self.rss
                .set(s.rss_pages.saturating_mul(self.page as i64).max(0));
            out.extend(self.rss.collect());
            self.vsz.set(s.vsize.min(i64::MAX as u64) as i64);
            out.extend(self.vsz.collect());
            self.threads.set(s.threads);
            out.extend(self.threads.collect());
            if let Some(boot) = self.boot {
                self.start.set(boot as f64 + s.start as f64 * self.tick);
                out.extend(self.start.collect());
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is one of them.
            self.open_fds.set((dir.count() as i64 - 1).max(0));
            out.extend(self.open_fds.collect());
        }
        if let Some(l) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            self.max_fds.set(l.min(i64::MAX as u64) as i64);
            out.extend(self.max_fds.collect());
        }
        out
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_the_command() {
        let line = "4242 (sift (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 7 0 123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ticks: 200,
                threads: 7,
                start: 123456,
                vsize: 987654321,
                rss_pages: 2500,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn the_process_is_measured() {
        use prometheus::core::Collector;
        let c = ProcessCollector::new();
        let names: Vec<String> = c.collect().iter().map(|f| f.name().to_string()).collect();
        for n in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(c.rss.get() > 1 << 20, "a test binary holds more than 1 MiB");
        assert!(c.threads.get() >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = c.start.get();
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }
}
