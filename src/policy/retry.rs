//! Retries: which failures are retried, exponential backoff with full
//! jitter, and a retry budget (Envoy's: retries in flight may not exceed
//! `percent` of the cluster's active requests, with a floor of
//! `min_concurrency`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RetrySpec {
    /// Retries after the first try (0 = off).
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    /// An HTTP/2 upstream refused the stream unprocessed (Envoy's
    /// `refused-stream`).
    pub on_refused_stream: bool,
    pub on_timeout: bool,
    /// Response statuses that are retried (e.g. 503).
    pub on_status: Vec<u16>,
    /// gRPC status codes (bit per code) retried when a response head
    /// carries them (a trailers-only gRPC answer): Envoy's retry_on
    /// cancelled, deadline-exceeded, internal, resource-exhausted,
    /// unavailable.
    pub on_grpc: u32,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Largest request body kept for replay; larger bodies stream and are
    /// never retried once sent.
    pub buffer_limit: u64,
    /// Also retry requests whose method is not idempotent (POST, PATCH, …)
    /// after they reached an upstream. Off: only a failed connect (the
    /// request never left sift) retries them, as nginx does.
    pub non_idempotent: bool,
    /// Honour a retried answer's `Retry-After` up to this long.
    pub retry_after_max: Option<Duration>,
    /// A try past `per_try_timeout` keeps running beside the next one;
    /// the first answer wins (Envoy's hedge_on_per_try_timeout).
    pub hedge_on_per_try_timeout: bool,
}

/// The gRPC conditions of `retries.on` and their status codes.
pub const GRPC_CONDITIONS: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl RetrySpec {
    /// Whether an answer with this head is retried by status: its HTTP
    /// status, or the `grpc-status` of a trailers-only gRPC answer.
    pub fn retries_answer(&self, status: u16, headers: &http::HeaderMap) -> bool {
        if self.on_status.binary_search(&status).is_ok() {
            return true;
        }
        self.on_grpc != 0
            && headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|c| c < 32 && self.on_grpc & (1 << c) != 0)
    }
}

/// Methods RFC 9110 §9.2.2 defines as idempotent; any other method
/// (POST, PATCH, CONNECT, extensions) may change state each time it runs.
pub fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BudgetSpec {
    pub percent: u32,
    pub min_concurrency: u32,
}

/// Delay before retry number `attempt` (1-based): uniform in
/// [0, min(max, base × 2^(attempt-1))] ("full jitter"); `unit` in [0, 1).
pub fn backoff(spec: &RetrySpec, attempt: u32, unit: f64) -> Duration {
    let exp = spec
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(spec.backoff_max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// How long an answer's `Retry-After` asks to wait (RFC 9110 §10.2.3):
/// delay-seconds, or an HTTP-date compared with `now` (a date passed is
/// 0). `None`: no header, or one that is neither.
pub fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A cluster's retry budget: counts retries in flight.
#[derive(Debug, Default)]
pub struct Budget {
    inflight: Arc<AtomicUsize>,
}

/// Held while a retry is in flight.
#[derive(Debug)]
pub struct RetryPermit(Arc<AtomicUsize>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    /// Take a permit if retries in flight stay within
    /// max(min_concurrency, percent × active).
    pub fn try_acquire(&self, spec: &BudgetSpec, active: usize) -> Option<RetryPermit> {
        let allowed = (active * spec.percent as usize / 100).max(spec.min_concurrency as usize);
        let mut cur = self.inflight.load(Ordering::Acquire);
        loop {
            if cur >= allowed {
                return None;
            }
            match self.inflight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(RetryPermit(self.inflight.clone())),
                Err(now) => cur = now,
            }
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        assert_eq!(retry_after(&h("3"), now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&h(" 0 "), now), Some(Duration::ZERO));
        // 2023-11-14T22:13:20Z is `now`; 5 s later, and 5 s before.
        assert_eq!(
            retry_after(&h("Tue, 14 Nov 2023 22:13:25 GMT"), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(&h("Tue, 14 Nov 2023 22:13:15 GMT"), now),
            Some(Duration::ZERO)
        );
        for bad in ["-1", "1.5", "soon", "99999999999", ""] {
            assert_eq!(retry_after(&h(bad), now), None, "{bad:?}");
        }
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }

    fn spec() -> RetrySpec {
        RetrySpec {
            attempts: 3,
            on_connect_failure: true,
            on_reset: true,
            on_refused_stream: true,
            on_timeout: true,
            on_status: vec![503],
            on_grpc: 0,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            buffer_limit: 65536,
            non_idempotent: false,
            retry_after_max: None,
            hedge_on_per_try_timeout: false,
        }
    }

    #[test]
    fn idempotent_methods_are_rfc_9110s() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "LOCK", "PURGE"] {
            assert!(!idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = spec();
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_millis(25));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(&s, 3, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&s, 10, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(&s, 3, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(&s, 3, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_is_a_share_of_active_requests_with_a_floor() {
        let b = Budget::default();
        let spec = BudgetSpec {
            percent: 20,
            min_concurrency: 3,
        };
        // 5 active: 20 % is 1, the floor is 3.
        let held: Vec<_> = (0..3).map(|_| b.try_acquire(&spec, 5).unwrap()).collect();
        assert!(b.try_acquire(&spec, 5).is_none());
        // 50 active: 10 retries may fly.
        let more: Vec<_> = (0..7).map(|_| b.try_acquire(&spec, 50).unwrap()).collect();
        assert!(b.try_acquire(&spec, 50).is_none());
        drop(held);
        assert_eq!(b.inflight(), 7);
        assert!(b.try_acquire(&spec, 50).is_some());
        drop(more);
    }
}
