//! Passive outlier detection per cluster, with Envoy's meaning:
//!
//! - an endpoint is ejected after `consecutive_5xx` 5xx responses in a row,
//!   or `consecutive_gateway_errors` gateway errors in a row (connect
//!   failure, reset, timeout, 502/503/504), or, optionally, when its failure
//!   rate over a sliding window passes a threshold with enough requests;
//! - ejection time = base × number of ejections, capped at the max; the
//!   number of ejections decays by one per `interval` spent healthy;
//! - at most `max_ejection_percent` of the endpoints are ejected at once
//!   (at least one may be);
//! - an endpoint returns by itself when its time is up, on probation: its
//!   first failure before a clean run of successes ejects it again at once,
//!   for longer.
//!
//! The data path reads one atomic per endpoint ([`Outlier::available`]);
//! `now` is a parameter (nanoseconds).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutlierSpec {
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway_errors: u32,
    pub interval: u64,
    pub base_ejection_time: u64,
    pub max_ejection_time: u64,
    pub max_ejection_percent: u32,
    pub failure_rate: Option<FailureRateSpec>,
    pub success_rate: Option<SuccessRateSpec>,
}

/// Envoy's success-rate outlier detection: every `interval`, the endpoints
/// with at least `request_volume` requests in it are compared; when there
/// are at least `minimum_hosts` of them, each whose success rate is below
/// mean − `stdev_factor` × standard deviation is ejected.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SuccessRateSpec {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FailureRateSpec {
    pub threshold_percent: u32,
    pub window: u64,
    pub min_requests: u32,
}

/// What one request to an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Success,
    /// A 5xx response; `gateway` for 502, 503, 504.
    Status5xx {
        gateway: bool,
    },
    /// Connect failure, reset, timeout: no response at all.
    LocalGatewayError,
}

impl Observed {
    /// What a response with this status code counts as.
    pub fn of_status(code: u16) -> Observed {
        if code >= 500 {
            Observed::Status5xx {
                gateway: matches!(code, 502..=504),
            }
        } else {
            Observed::Success
        }
    }
}

const WINDOW_BUCKETS: usize = 10;

#[derive(Clone, Debug, Default)]
struct State {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    last_decay: u64,
    /// Set when the endpoint came back from an ejection; cleared by a run of
    /// successes.
    probation: bool,
    successes_since_return: u32,
    ejected_until: u64,
    /// Returned before `ejected_until` by a passing active health check.
    returned_early: bool,
    /// Failure-rate window: (bucket start, total, failures).
    window: [(u64, u32, u32); WINDOW_BUCKETS],
    /// Success-rate interval: requests and successes so far.
    interval_total: u32,
    interval_success: u32,
}

pub struct Outlier {
    pub spec: OutlierSpec,
    /// Per endpoint: ejected until (ns); 0 = never ejected.
    until: Vec<AtomicU64>,
    state: Vec<Mutex<State>>,
    /// When the success-rate interval ends (0: not started).
    interval_end: AtomicU64,
}

impl std::fmt::Debug for Outlier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlier").field("spec", &self.spec).finish()
    }
}

impl Outlier {
    pub fn new(spec: OutlierSpec, endpoints: usize) -> Self {
        Outlier {
            spec,
            until: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            state: (0..endpoints)
                .map(|_| Mutex::new(State::default()))
                .collect(),
            interval_end: AtomicU64::new(0),
        }
    }

    /// Endpoint `i` takes over the ejection state of `old`'s endpoint `j`
    /// (the same address in the previous snapshot's cluster).
    pub fn carry(&self, i: usize, old: &Outlier, j: usize) {
        let (Some(until), Some(cell)) = (self.until.get(i), self.state.get(i)) else {
            return;
        };
        let (Some(old_until), Some(old_cell)) = (old.until.get(j), old.state.get(j)) else {
            return;
        };
        until.store(old_until.load(Ordering::Relaxed), Ordering::Relaxed);
        let s = old_cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
        *cell.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// May endpoint `i` take traffic at `now`?
    pub fn available(&self, i: usize, now: u64) -> bool {
        self.until
            .get(i)
            .is_none_or(|u| u.load(Ordering::Relaxed) <= now)
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: u64) -> usize {
        self.until
            .iter()
            .filter(|u| u.load(Ordering::Relaxed) > now)
            .count()
    }

    /// A passing active health check returns an ejected endpoint to
    /// service at once (Envoy's `successful_active_health_check_uneject_host`,
    /// on by default): on probation, its ejection count kept, so a new
    /// failure ejects it again for longer. True when it was ejected (or its
    /// ejection had ended with no request since).
    pub fn uneject(&self, i: usize) -> bool {
        let (Some(cell), Some(until)) = (self.state.get(i), self.until.get(i)) else {
            return false;
        };
        let mut s = cell.lock().unwrap_or_else(|p| p.into_inner());
        if s.ejected_until == 0 || s.returned_early {
            return false;
        }
        s.returned_early = true;
        until.store(0, Ordering::Relaxed);
        true
    }

    /// Record an outcome; true when it ejected the endpoint.
    pub fn record(&self, i: usize, what: Observed, now: u64) -> bool {
        let Some(cell) = self.state.get(i) else {
            return false;
        };
        let spec = &self.spec;
        let mut s = cell.lock().unwrap_or_else(|p| p.into_inner());
        if s.ejected_until > now && !s.returned_early {
            // Still ejected (a request that was already in flight): ignore.
            return false;
        }
        if s.ejected_until != 0 {
            // Back from an ejection: on probation; healthy time counts from
            // the moment it came back.
            s.last_decay = if s.returned_early {
                now
            } else {
                s.ejected_until
            };
            s.returned_early = false;
            s.ejected_until = 0;
            s.probation = true;
            s.successes_since_return = 0;
            s.consecutive_5xx = 0;
            s.consecutive_gateway = 0;
        }
        // Decay the ejection count by one per interval spent healthy.
        if s.ejections > 0 && spec.interval > 0 {
            let steps = (now.saturating_sub(s.last_decay) / spec.interval) as u32;
            if steps > 0 {
                s.ejections = s.ejections.saturating_sub(steps);
                s.last_decay = now;
            }
        }
        let failed = !matches!(what, Observed::Success);
        if spec.success_rate.is_some() {
            s.interval_total = s.interval_total.saturating_add(1);
            s.interval_success = s.interval_success.saturating_add(u32::from(!failed));
        }
        match what {
            Observed::Success => {
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                s.successes_since_return += 1;
                let clean = spec
                    .consecutive_5xx
                    .max(spec.consecutive_gateway_errors)
                    .max(1);
                if s.successes_since_return >= clean {
                    s.probation = false;
                }
            }
            Observed::Status5xx { gateway } => {
                s.consecutive_5xx += 1;
                if gateway {
                    s.consecutive_gateway += 1;
                } else {
                    s.consecutive_gateway = 0;
                }
            }
            Observed::LocalGatewayError => {
                s.consecutive_gateway += 1;
                s.consecutive_5xx += 1;
            }
        }
        let rate_tripped = spec
            .failure_rate
            .as_ref()
            .is_some_and(|fr| window_tripped(&mut s.window, fr, failed, now));
        let trip = (failed && s.probation)
            || (spec.consecutive_5xx > 0 && s.consecutive_5xx >= spec.consecutive_5xx)
            || (spec.consecutive_gateway_errors > 0
                && s.consecutive_gateway >= spec.consecutive_gateway_errors)
            || rate_tripped;
        if !trip {
            return false;
        }
        self.eject(i, &mut s, now)
    }

    /// Eject endpoint `i` (its state `s`) at `now`, unless
    /// `max_ejection_percent` is reached (at least one endpoint may go).
    fn eject(&self, i: usize, s: &mut State, now: u64) -> bool {
        let spec = &self.spec;
        let n = self.until.len();
        let allowed = ((n as u64 * u64::from(spec.max_ejection_percent)) / 100).max(1) as usize;
        if self.ejected(now) >= allowed {
            return false;
        }
        s.ejections += 1;
        let time = spec
            .base_ejection_time
            .saturating_mul(u64::from(s.ejections))
            .min(spec.max_ejection_time.max(spec.base_ejection_time));
        s.ejected_until = now + time.max(1);
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
        s.window = Default::default();
        s.last_decay = s.ejected_until;
        self.until[i].store(s.ejected_until, Ordering::Relaxed);
        true
    }

    /// Success-rate detection: when the interval that began with the first
    /// request (or the last evaluation) has ended at `now`, compare the
    /// endpoints and eject the outliers; the ones ejected. One caller per
    /// interval evaluates (the others see the new end and return).
    pub fn evaluate_success_rate(&self, now: u64) -> Vec<usize> {
        let Some(sr) = &self.spec.success_rate else {
            return Vec::new();
        };
        let end = self.interval_end.load(Ordering::Acquire);
        if end != 0 && now < end {
            return Vec::new();
        }
        let next = now.saturating_add(self.spec.interval.max(1));
        if self
            .interval_end
            .compare_exchange(end, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
            || end == 0
        {
            // Another caller evaluates, or the first interval just began.
            return Vec::new();
        }
        let mut rates = Vec::new();
        for (i, cell) in self.state.iter().enumerate() {
            let mut s = cell.lock().unwrap_or_else(|p| p.into_inner());
            let (total, ok) = (s.interval_total, s.interval_success);
            (s.interval_total, s.interval_success) = (0, 0);
            if total >= sr.request_volume.max(1) && self.available(i, now) {
                rates.push((i, f64::from(ok) / f64::from(total)));
            }
        }
        let Some(threshold) = success_rate_threshold(&rates, sr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, rate) in rates {
            if rate < threshold {
                let mut s = self.state[i].lock().unwrap_or_else(|p| p.into_inner());
                if self.eject(i, &mut s, now) {
                    out.push(i);
                }
            }
        }
        out
    }
}

/// The success rate under which an endpoint is an outlier: mean −
/// `stdev_factor` × (population) standard deviation of `rates`; `None`
/// with fewer than `minimum_hosts` rates, or when they are all alike.
fn success_rate_threshold(rates: &[(usize, f64)], sr: &SuccessRateSpec) -> Option<f64> {
    if rates.is_empty() || rates.len() < sr.minimum_hosts as usize {
        return None;
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let var = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    // All alike (to rounding): no outlier, whatever rounding says.
    if var.sqrt() < 1e-9 {
        return None;
    }
    Some(mean - sr.stdev_factor * var.sqrt())
}

/// Add an outcome to the sliding window; true when the failure rate over the
/// window reaches the threshold with at least `min_requests`.
fn window_tripped(
    w: &mut [(u64, u32, u32); WINDOW_BUCKETS],
    fr: &FailureRateSpec,
    failed: bool,
    now: u64,
) -> bool {
    let width = (fr.window / WINDOW_BUCKETS as u64).max(1);
    let slot_start = now - now % width;
    let idx = ((now / width) as usize) % WINDOW_BUCKETS;
    if w[idx].0 != slot_start {
        w[idx] = (slot_start, 0, 0);
    }
    w[idx].1 += 1;
    w[idx].2 += u32::from(failed);
    let from = now.saturating_sub(fr.window);
    let (total, failures) = w
        .iter()
        .filter(|(start, _, _)| *start > from || (*start == 0 && from == 0))
        .fold((0u32, 0u32), |(t, f), (_, bt, bf)| (t + bt, f + bf));
    total >= fr.min_requests.max(1) && failures * 100 >= fr.threshold_percent * total
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn spec() -> OutlierSpec {
        OutlierSpec {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 3,
            interval: 10 * S,
            base_ejection_time: 30 * S,
            max_ejection_time: 300 * S,
            max_ejection_percent: 50,
            failure_rate: None,
            success_rate: None,
        }
    }

    #[test]
    fn success_rate_ejects_the_outlier_after_an_interval() {
        let mut sp = spec();
        sp.consecutive_5xx = 0;
        sp.consecutive_gateway_errors = 0;
        sp.success_rate = Some(SuccessRateSpec {
            minimum_hosts: 5,
            request_volume: 10,
            stdev_factor: 1.9,
        });
        let o = Outlier::new(sp, 6);
        // Endpoints 0-3 succeed; 4 fails half of its requests; 5 has too
        // few requests to count. The first request starts the interval.
        assert!(o.evaluate_success_rate(0).is_empty());
        for k in 0..20u64 {
            for i in 0..4 {
                o.record(i, Observed::Success, k);
            }
            o.record(4, if k % 2 == 0 { ERR } else { Observed::Success }, k);
        }
        o.record(5, ERR, 1);
        assert!(
            o.evaluate_success_rate(9 * S).is_empty(),
            "the interval has not ended"
        );
        // mean 0.9, stdev 0.2: threshold 0.52 > 0.5.
        assert_eq!(o.evaluate_success_rate(10 * S), vec![4]);
        assert!(!o.available(4, 10 * S));
        assert!(o.available(5, 10 * S));
        // The counts started again: nothing more to eject.
        assert!(o.evaluate_success_rate(20 * S).is_empty());
        // Fewer hosts than minimum_hosts: no verdict however bad.
        let rates = [(0, 1.0), (1, 0.0)];
        let sr = SuccessRateSpec {
            minimum_hosts: 3,
            request_volume: 1,
            stdev_factor: 1.9,
        };
        assert_eq!(success_rate_threshold(&rates, &sr), None);
        // A uniform set has no outlier.
        let same = [(0, 0.8), (1, 0.8), (2, 0.8)];
        assert_eq!(success_rate_threshold(&same, &sr), None);
        let t = success_rate_threshold(&[(0, 1.0), (1, 1.0), (2, 0.7)], &sr).unwrap();
        assert!((t - (0.9 - 1.9 * 0.02f64.sqrt())).abs() < 1e-9, "{t}");
    }

    const ERR: Observed = Observed::Status5xx { gateway: false };

    #[test]
    fn consecutive_5xx_ejects_and_time_returns_it() {
        let o = Outlier::new(spec(), 4);
        for _ in 0..4 {
            assert!(!o.record(0, ERR, 0));
        }
        assert!(o.available(0, 0));
        assert!(o.record(0, ERR, 0), "5th 5xx in a row ejects");
        assert!(!o.available(0, 0));
        assert_eq!(o.ejected(0), 1);
        assert!(!o.available(0, 30 * S - 1));
        assert!(o.available(0, 30 * S), "back after base_ejection_time");
    }

    #[test]
    fn a_passing_health_check_returns_an_ejected_endpoint_on_probation() {
        let o = Outlier::new(spec(), 4);
        assert!(!o.uneject(0), "never ejected");
        for _ in 0..5 {
            o.record(0, ERR, 0);
        }
        assert!(!o.available(0, S));
        assert!(o.uneject(0));
        assert!(!o.uneject(0), "once");
        assert!(o.available(0, S), "back at once, not after 30 s");
        assert_eq!(o.ejected(S), 0);
        // Successes keep it in; on probation one failure ejects it again,
        // for twice the base time (its ejection count was kept).
        assert!(!o.record(0, Observed::Success, 2 * S));
        assert!(o.record(0, ERR, 3 * S), "on probation");
        assert!(!o.available(0, 3 * S + 59 * S));
        assert!(o.available(0, 3 * S + 60 * S));
    }

    #[test]
    fn a_success_resets_the_run() {
        let o = Outlier::new(spec(), 2);
        for _ in 0..4 {
            o.record(0, ERR, 0);
        }
        o.record(0, Observed::Success, 0);
        for _ in 0..4 {
            assert!(!o.record(0, ERR, 0));
        }
    }

    #[test]
    fn gateway_errors_have_their_own_threshold() {
        let o = Outlier::new(spec(), 2);
        assert!(!o.record(1, Observed::LocalGatewayError, 0));
        assert!(!o.record(1, Observed::Status5xx { gateway: true }, 0));
        assert!(o.record(1, Observed::LocalGatewayError, 0));
    }

    #[test]
    fn returned_endpoint_is_ejected_again_faster_and_longer() {
        let o = Outlier::new(spec(), 4);
        for _ in 0..5 {
            o.record(0, ERR, 0);
        }
        let back = 30 * S;
        assert!(o.available(0, back));
        // On probation: the first failure ejects again, for 2 × base.
        assert!(o.record(0, ERR, back));
        assert!(!o.available(0, back + 60 * S - 1));
        assert!(o.available(0, back + 60 * S));
        // A clean run of successes ends probation.
        let t = back + 60 * S;
        for _ in 0..5 {
            o.record(0, Observed::Success, t);
        }
        assert!(!o.record(0, ERR, t));
    }

    #[test]
    fn ejection_time_is_capped_and_count_decays() {
        let mut sp = spec();
        sp.max_ejection_time = 45 * S;
        let o = Outlier::new(sp, 2);
        let mut t = 0;
        for round in 1..=3u64 {
            for _ in 0..5 {
                o.record(0, ERR, t);
            }
            let len = (30 * S * round).min(45 * S);
            assert!(!o.available(0, t + len - 1), "round {round}");
            assert!(o.available(0, t + len));
            t += len;
        }
        // Long healthy stretch: the count decays back to zero, so the next
        // ejection is a base one again.
        t += 1000 * S;
        for _ in 0..6 {
            o.record(0, Observed::Success, t);
        }
        for _ in 0..5 {
            o.record(0, ERR, t);
        }
        assert!(o.available(0, t + 30 * S));
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints_serving() {
        let o = Outlier::new(spec(), 4); // 50 % of 4 = 2
        for i in 0..4 {
            for _ in 0..5 {
                o.record(i, ERR, 0);
            }
        }
        assert_eq!(o.ejected(0), 2);
        // One endpoint of one may always be ejected.
        let single = Outlier::new(spec(), 1);
        for _ in 0..5 {
            single.record(0, ERR, 0);
        }
        assert_eq!(single.ejected(0), 1);
    }

    #[test]
    fn failure_rate_over_a_window() {
        let mut sp = spec();
        sp.consecutive_5xx = 0;
        sp.consecutive_gateway_errors = 0;
        sp.failure_rate = Some(FailureRateSpec {
            threshold_percent: 50,
            window: 10 * S,
            min_requests: 10,
        });
        let o = Outlier::new(sp, 2);
        // Alternating success/failure: 50 % once 10 requests are in.
        let mut ejected_at = None;
        for k in 0..20u64 {
            let what = if k % 2 == 0 { Observed::Success } else { ERR };
            if o.record(0, what, k * S / 10) {
                ejected_at = Some(k);
                break;
            }
        }
        assert_eq!(ejected_at, Some(9), "ejected at the 10th request");
        // Too few requests: no verdict.
        let o = Outlier::new(o.spec.clone(), 2);
        for k in 0..9u64 {
            assert!(!o.record(0, ERR, k));
        }
    }
}
