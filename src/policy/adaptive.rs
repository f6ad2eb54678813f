//! Adaptive concurrency (Envoy's `adaptive_concurrency` filter, gradient
//! controller): a route's concurrency limit follows its latency instead of
//! a fixed `max_inflight`.
//!
//! - Every `min_rtt_interval` (± `jitter_percent`), and at the start, the
//!   limit is pinned to `min_concurrency` and the next `min_rtt_requests`
//!   requests' latencies give the **minimum RTT** (their
//!   `sample_percentile`): the latency when the upstream is not queueing.
//! - Every `update_interval`, the latencies of the requests that ended in
//!   it give the **sample RTT** (same percentile), and
//!   `gradient = clamp(min_rtt · (1 + buffer) / sample_rtt, 0.5, 2)`;
//!   `limit = gradient · limit`, plus `sqrt(limit)` of burst headroom,
//!   held within `min_concurrency..=max_limit`. Latency rising over the
//!   buffered minimum shrinks the limit; latency at the minimum grows it.
//! - Requests over the limit are refused at once (503 `overloaded`).
//!
//! Latency is a request's time from admission to the end of its answer's
//! body, as Envoy measures it. Time is a parameter: every method takes
//! `now` (nanoseconds of [`crate::clock::Clock`]); updates happen when a
//! request enters or ends past a due time, so no task runs per route.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// A route's `adaptive_concurrency` settings (Envoy's names in brackets).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptiveSpec {
    /// Percentile of a window's latencies taken as its RTT, 0–100
    /// [`sample_aggregate_percentile`, 50].
    pub sample_percentile: f64,
    /// How often the limit is recomputed [`concurrency_update_interval`].
    pub update_interval: Duration,
    /// Highest limit [`max_concurrency_limit`, 1000].
    pub max_limit: u32,
    /// How often the minimum RTT is measured again [`min_rtt_calc_params.interval`, 60s].
    pub min_rtt_interval: Duration,
    /// Requests measured for the minimum RTT [`request_count`, 50].
    pub min_rtt_requests: u32,
    /// Random share added to `min_rtt_interval`, percent [`jitter`, 10].
    pub jitter_percent: f64,
    /// The limit while measuring, and the lowest limit [`min_concurrency`, 3].
    pub min_concurrency: u32,
    /// Latency allowed over the minimum before the limit shrinks, percent
    /// [`buffer`, 25].
    pub buffer_percent: f64,
}

/// What the controller is doing.
#[derive(Debug)]
enum Phase {
    /// Measuring the minimum RTT: the limit is `min_concurrency`; the limit
    /// before it is restored after.
    MinRtt { restore: u32 },
    /// Adjusting the limit every `update_interval`.
    Gradient,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Latencies (ns) of the current window.
    samples: Vec<u64>,
    /// When the gradient window ends.
    next_update: u64,
    /// When the next minimum-RTT measurement begins.
    next_min_rtt: u64,
}

/// One route's controller, kept across reloads while its spec is unchanged.
#[derive(Debug)]
pub struct Adaptive {
    pub spec: AdaptiveSpec,
    inflight: AtomicU32,
    limit: AtomicU32,
    /// Nanoseconds; 0 until measured.
    min_rtt: AtomicU64,
    sample_rtt: AtomicU64,
    state: Mutex<State>,
}

/// Held while an admitted request runs; its end is a latency sample.
#[derive(Debug)]
pub struct AdaptiveSlot {
    controller: Arc<Adaptive>,
    start: u64,
    clock: crate::clock::Clock,
}

impl Drop for AdaptiveSlot {
    fn drop(&mut self) {
        let now = self.clock.now();
        self.controller.inflight.fetch_sub(1, Ordering::AcqRel);
        self.controller.record(now, now.saturating_sub(self.start));
    }
}

/// The `p`th percentile (0–100) of `v` (nearest rank; `v` is reordered).
fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    let i = rank.clamp(1, v.len()) - 1;
    *v.select_nth_unstable(i).1
}

impl Adaptive {
    /// A controller that starts by measuring the minimum RTT, as Envoy's.
    pub fn new(spec: AdaptiveSpec, now: u64) -> Arc<Adaptive> {
        let start_limit = spec.min_concurrency;
        Arc::new(Adaptive {
            limit: AtomicU32::new(spec.min_concurrency),
            inflight: AtomicU32::new(0),
            min_rtt: AtomicU64::new(0),
            sample_rtt: AtomicU64::new(0),
            state: Mutex::new(State {
                phase: Phase::MinRtt {
                    restore: start_limit,
                },
                samples: Vec::with_capacity(spec.min_rtt_requests as usize),
                next_update: now,
                next_min_rtt: u64::MAX,
            }),
            spec,
        })
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Requests in flight under this controller.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// The minimum RTT measured last (`None` before the first).
    pub fn min_rtt(&self) -> Option<Duration> {
        match self.min_rtt.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// The RTT of the last gradient window (`None` before the first).
    pub fn sample_rtt(&self) -> Option<Duration> {
        match self.sample_rtt.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Whether the minimum RTT is being measured.
    pub fn measuring(&self) -> bool {
        matches!(
            self.state.lock().unwrap_or_else(|p| p.into_inner()).phase,
            Phase::MinRtt { .. }
        )
    }

    /// Admit a request, or `None` (with the limit) when the limit is
    /// reached. A measurement that is due begins first.
    pub fn try_enter(
        self: &Arc<Self>,
        now: u64,
        clock: crate::clock::Clock,
    ) -> Result<AdaptiveSlot, u32> {
        self.tick(now);
        let limit = self.limit();
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(AdaptiveSlot {
            controller: self.clone(),
            start: now,
            clock,
        })
    }

    /// Begin a due minimum-RTT measurement.
    fn tick(&self, now: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(st.phase, Phase::Gradient) && now >= st.next_min_rtt {
            let restore = self.limit();
            st.phase = Phase::MinRtt { restore };
            st.samples.clear();
            self.limit
                .store(self.spec.min_concurrency, Ordering::Release);
        }
    }

    /// A request admitted at `now - latency` ended at `now`.
    pub fn record(&self, now: u64, latency: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.samples.push(latency.max(1));
        match st.phase {
            Phase::MinRtt { restore } => {
                if st.samples.len() >= self.spec.min_rtt_requests as usize {
                    let p = self.spec.sample_percentile;
                    let min_rtt = percentile(&mut st.samples, p);
                    self.min_rtt.store(min_rtt, Ordering::Release);
                    self.limit.store(restore, Ordering::Release);
                    st.samples.clear();
                    st.phase = Phase::Gradient;
                    st.next_update = now + self.spec.update_interval.as_nanos() as u64;
                    st.next_min_rtt = now + self.jittered_interval();
                }
            }
            Phase::Gradient => {
                if now >= st.next_update {
                    let p = self.spec.sample_percentile;
                    let sample = percentile(&mut st.samples, p);
                    st.samples.clear();
                    st.next_update = now + self.spec.update_interval.as_nanos() as u64;
                    self.sample_rtt.store(sample, Ordering::Release);
                    let min_rtt = self.min_rtt.load(Ordering::Acquire);
                    let next = self.next_limit(self.limit(), min_rtt, sample);
                    self.limit.store(next, Ordering::Release);
                }
                if now >= st.next_min_rtt {
                    let restore = self.limit();
                    st.phase = Phase::MinRtt { restore };
                    st.samples.clear();
                    self.limit
                        .store(self.spec.min_concurrency, Ordering::Release);
                }
            }
        }
    }

    /// The gradient controller's step (Envoy's `calculateNewLimit`).
    pub fn next_limit(&self, limit: u32, min_rtt: u64, sample_rtt: u64) -> u32 {
        if sample_rtt == 0 || min_rtt == 0 {
            return limit;
        }
        let target = min_rtt as f64 * (1.0 + self.spec.buffer_percent / 100.0);
        let gradient = (target / sample_rtt as f64).clamp(0.5, 2.0);
        let scaled = (gradient * f64::from(limit)).max(1.0);
        let next = scaled + scaled.sqrt();
        (next as u32).clamp(self.spec.min_concurrency, self.spec.max_limit)
    }

    /// `min_rtt_interval` plus a random share of up to `jitter_percent`.
    fn jittered_interval(&self) -> u64 {
        let base = self.spec.min_rtt_interval.as_nanos() as f64;
        let jitter = base * self.spec.jitter_percent / 100.0 * fastrand::f64();
        (base + jitter) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn spec() -> AdaptiveSpec {
        AdaptiveSpec {
            sample_percentile: 50.0,
            update_interval: Duration::from_millis(100),
            max_limit: 1000,
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_requests: 5,
            jitter_percent: 0.0,
            min_concurrency: 3,
            buffer_percent: 25.0,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&mut [5, 1, 4, 2, 3], 50.0), 3);
        assert_eq!(percentile(&mut [5, 1, 4, 2, 3], 100.0), 5);
        assert_eq!(percentile(&mut [5, 1, 4, 2, 3], 0.0), 1);
        assert_eq!(percentile(&mut [7], 90.0), 7);
        assert_eq!(percentile(&mut [], 50.0), 0);
    }

    #[test]
    fn gradient_steps_follow_envoy() {
        let a = Adaptive::new(spec(), 0);
        // At the minimum: gradient 1.25 → 10 · 1.25 = 12.5, + sqrt = 16.0.
        assert_eq!(a.next_limit(10, 10 * MS, 10 * MS), 16);
        // Twice the buffered minimum: gradient 0.625 → 62.5 + 7.9 = 70.
        assert_eq!(a.next_limit(100, 10 * MS, 20 * MS), 70);
        // Far slower: gradient floored at 0.5 → 50 + 7.07 = 57.
        assert_eq!(a.next_limit(100, 10 * MS, 1000 * MS), 57);
        // Far faster: capped at 2 → 200 + 14.1 = 214; and at max_limit.
        assert_eq!(a.next_limit(100, 10 * MS, MS), 214);
        assert_eq!(a.next_limit(900, 10 * MS, MS), 1000);
        // Never below min_concurrency.
        assert_eq!(a.next_limit(1, 10 * MS, 1000 * MS), 3);
        // No sample: unchanged.
        assert_eq!(a.next_limit(42, 10 * MS, 0), 42);
    }

    #[test]
    fn measures_min_rtt_first_then_adapts_then_measures_again() {
        let clock = crate::clock::Clock::default();
        let a = Adaptive::new(spec(), 0);
        assert!(a.measuring());
        assert_eq!(a.limit(), 3);
        // The fourth concurrent request is refused while measuring.
        let slots: Vec<_> = (0..3).map(|_| a.try_enter(0, clock).ok()).collect();
        assert!(slots.iter().all(Option::is_some));
        assert_eq!(a.try_enter(0, clock).err(), Some(3));
        std::mem::forget(slots);
        a.inflight.store(0, Ordering::Release);
        // Five samples of 10 ms give the minimum RTT.
        for i in 0..5 {
            a.record(i * MS, 10 * MS);
        }
        assert!(!a.measuring());
        assert_eq!(a.min_rtt(), Some(Duration::from_millis(10)));
        assert_eq!(a.limit(), 3, "the limit before measuring is restored");
        // Latency at the minimum: the limit grows every window.
        let mut t = 4 * MS;
        let mut last = a.limit();
        for _ in 0..5 {
            t += 100 * MS;
            a.record(t, 10 * MS);
            assert!(a.limit() > last, "{} > {last}", a.limit());
            last = a.limit();
        }
        // Latency four times the minimum: it shrinks.
        t += 100 * MS;
        a.record(t, 40 * MS);
        assert!(a.limit() < last);
        assert_eq!(a.sample_rtt(), Some(Duration::from_millis(40)));
        // After min_rtt_interval a new measurement pins the limit again,
        // and restores what it was once done.
        // (That record also ends a gradient window: the limit it leaves is
        // the one restored.)
        let before = a.limit();
        let restore = a.next_limit(before, 10 * MS, 40 * MS);
        t += 61_000 * MS;
        a.record(t, 40 * MS);
        assert!(a.measuring());
        assert_eq!(a.limit(), 3);
        for i in 0..5 {
            a.record(t + i * MS, 20 * MS);
        }
        assert_eq!(a.min_rtt(), Some(Duration::from_millis(20)));
        assert!(!a.measuring());
        assert_eq!(a.limit(), restore);
    }
}
