//! Canary releases: runtime weights per route, sticky assignment, per-version
//! stats windows, and the progressive rollout controller.
//!
//! A route with a `canary` section gets a [`CanaryState`] that outlives
//! snapshots (the builder re-attaches it while the route's file weights and
//! canary spec are unchanged). Its weights can change at run time (admin
//! API, rollout) without a config reload. Time is a parameter (`now`, ns).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// The validated canary section of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanarySpec {
    /// Index in the route's backends of the stable and canary versions.
    pub stable: usize,
    pub canary: usize,
    pub stable_name: String,
    pub canary_name: String,
    pub sticky: Option<Sticky>,
    pub override_header: Option<OverrideSpec>,
    pub version_header: Option<String>,
    pub rollout: Option<RolloutSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    Header(String),
    Cookie(String),
    Identity,
    ClientIp,
    QueryParameter(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverrideSpec {
    pub header: String,
    /// Only these identities may force a version (empty: anyone).
    pub identities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutSpec {
    /// Canary weights in percent, in order (e.g. 10, 50, 100).
    pub steps: Vec<u32>,
    /// How long each step runs before its analysis (ns).
    pub interval: u64,
    /// Requests each version needs in the window before a verdict.
    pub min_requests: u64,
    /// Canary 5xx rate may exceed stable's by at most this many points.
    pub max_5xx_delta: f64,
    pub p95_ratio: f64,
    pub p99_ratio: f64,
    /// Canary success rate (non-5xx), percent.
    pub min_success_rate: f64,
    /// A canary slower than stable by less than this (ms) never fails a
    /// latency check: at a few ms, a ratio measures noise.
    pub latency_tolerance_ms: f64,
    pub start_on_load: bool,
}

// ---------------------------------------------------------------- windows

/// Latency buckets grow by 5 % from 50 µs: fine enough to compare p95 and
/// p99 at the 10 % / 15 % ratios the analysis uses.
const BUCKETS: usize = 300;
const GROWTH: f64 = 1.05;
const FIRST_US: f64 = 50.0;

/// Requests, 5xx and a latency histogram of one version over the current
/// rollout step (reset at each step).
pub struct Window {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors_5xx: u64,
    pub error_rate_percent: f64,
    pub success_rate_percent: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Window {
    pub fn record(&self, status: u16, secs: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = (secs * 1e6).max(FIRST_US);
        let i = ((us / FIRST_US).ln() / GROWTH.ln()) as usize;
        self.latency[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for b in self.latency.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> WindowStats {
        let requests = self.requests.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Upper edge of the bucket, in ms.
                    return FIRST_US * GROWTH.powi(i as i32 + 1) / 1000.0;
                }
            }
            FIRST_US * GROWTH.powi(BUCKETS as i32) / 1000.0
        };
        let rate = if requests == 0 {
            0.0
        } else {
            errors as f64 * 100.0 / requests as f64
        };
        WindowStats {
            requests,
            errors_5xx: errors,
            error_rate_percent: rate,
            success_rate_percent: 100.0 - rate,
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
        }
    }
}

// ---------------------------------------------------------------- analysis

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Not enough traffic yet: wait, do not pass.
    Wait {
        stable_requests: u64,
        canary_requests: u64,
        needed: u64,
    },
    Pass,
    Fail {
        metric: &'static str,
        canary: f64,
        stable: f64,
        limit: f64,
    },
}

/// Compare canary with stable over a window. Error rates are judged as soon
/// as both versions have `min_requests`; latency only when `step_over` (a
/// full window, enough samples for p99).
pub fn analyze(
    spec: &RolloutSpec,
    stable: &WindowStats,
    canary: &WindowStats,
    step_over: bool,
) -> Verdict {
    if stable.requests < spec.min_requests || canary.requests < spec.min_requests {
        return Verdict::Wait {
            stable_requests: stable.requests,
            canary_requests: canary.requests,
            needed: spec.min_requests,
        };
    }
    let fail = |metric, canary, stable, limit| Verdict::Fail {
        metric,
        canary,
        stable,
        limit,
    };
    let limit = stable.error_rate_percent + spec.max_5xx_delta;
    if canary.error_rate_percent > limit {
        return fail(
            "5xx_rate_percent",
            canary.error_rate_percent,
            stable.error_rate_percent,
            limit,
        );
    }
    if canary.success_rate_percent < spec.min_success_rate {
        return fail(
            "success_rate_percent",
            canary.success_rate_percent,
            stable.success_rate_percent,
            spec.min_success_rate,
        );
    }
    if !step_over {
        return Verdict::Pass;
    }
    let tol = spec.latency_tolerance_ms;
    let limit = (stable.p95_ms * spec.p95_ratio).max(stable.p95_ms + tol);
    if canary.p95_ms > limit {
        return fail("p95_ms", canary.p95_ms, stable.p95_ms, limit);
    }
    let limit = (stable.p99_ms * spec.p99_ratio).max(stable.p99_ms + tol);
    if canary.p99_ms > limit {
        return fail("p99_ms", canary.p99_ms, stable.p99_ms, limit);
    }
    Verdict::Pass
}

/// A [`Verdict`] read back (from a predecessor's hand-over).
#[derive(Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
enum VerdictWire {
    Wait {
        stable_requests: u64,
        canary_requests: u64,
        needed: u64,
    },
    Pass,
    Fail {
        metric: String,
        canary: f64,
        stable: f64,
        limit: f64,
    },
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Verdict, D::Error> {
        VerdictWire::deserialize(d).map(Verdict::from)
    }
}

impl From<VerdictWire> for Verdict {
    fn from(v: VerdictWire) -> Verdict {
        match v {
            VerdictWire::Wait {
                stable_requests,
                canary_requests,
                needed,
            } => Verdict::Wait {
                stable_requests,
                canary_requests,
                needed,
            },
            VerdictWire::Pass => Verdict::Pass,
            // The names [`analyze`] and the admin rollback give.
            VerdictWire::Fail {
                metric,
                canary,
                stable,
                limit,
            } => Verdict::Fail {
                metric: [
                    "5xx_rate_percent",
                    "success_rate_percent",
                    "p95_ms",
                    "p99_ms",
                    "manual",
                ]
                .into_iter()
                .find(|m| *m == metric)
                .unwrap_or("other"),
                canary,
                stable,
                limit,
            },
        }
    }
}

// ---------------------------------------------------------------- state

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Running {
        step: usize,
        weight: u32,
        started_at: u64,
        step_started_at: u64,
    },
    Promoted {
        at: u64,
    },
    RolledBack {
        at: u64,
        reason: Verdict,
    },
}

impl Phase {
    /// The phase with every time `t` replaced by `f(t)`: a hand-over sends
    /// ages (`now - t`) and the successor turns them back into its own
    /// clock's readings (each process's clock has its own epoch).
    fn map_times(&self, f: impl Fn(u64) -> u64) -> Phase {
        match self.clone() {
            Phase::Idle => Phase::Idle,
            Phase::Running {
                step,
                weight,
                started_at,
                step_started_at,
            } => Phase::Running {
                step,
                weight,
                started_at: f(started_at),
                step_started_at: f(step_started_at),
            },
            Phase::Promoted { at } => Phase::Promoted { at: f(at) },
            Phase::RolledBack { at, reason } => Phase::RolledBack { at: f(at), reason },
        }
    }
}

/// A route's canary state as a binary upgrade hands it to the successor
/// process: run-time weights and the rollout's phase, its times as ages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub route: String,
    /// The route's backends (cluster names) and file weights: the state is
    /// taken only by a route with the same ones and the same canary spec.
    pub backends: Vec<String>,
    pub file_weights: Vec<u32>,
    pub spec: serde_json::Value,
    pub weights: Vec<u32>,
    pub source: WeightSource,
    /// Times are nanoseconds before the hand-over.
    pub phase: Phase,
    pub last_verdict: Option<Verdict>,
}

/// Where the current weights came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    File,
    Admin,
    Rollout,
}

/// What a tick did, for metrics and logs.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Stepped { weight: u32 },
    Promoted,
    RolledBack(Verdict),
}

pub struct CanaryState {
    pub spec: CanarySpec,
    /// Weights from the file, per backend (what a reload compares).
    pub file_weights: Vec<u32>,
    weights: ArcSwap<Vec<u32>>,
    pub windows: Vec<Arc<Window>>,
    inner: Mutex<Inner>,
}

struct Inner {
    phase: Phase,
    source: WeightSource,
    last_verdict: Option<Verdict>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub weights: Vec<u32>,
    pub source: WeightSource,
    pub rollout: Phase,
    pub last_verdict: Option<Verdict>,
    pub stats: Vec<WindowStats>,
}

impl CanaryState {
    pub fn new(spec: CanarySpec, file_weights: Vec<u32>, now: u64) -> Arc<Self> {
        let windows = file_weights
            .iter()
            .map(|_| Arc::new(Window::default()))
            .collect();
        let state = Arc::new(CanaryState {
            weights: ArcSwap::from_pointee(file_weights.clone()),
            spec,
            file_weights,
            windows,
            inner: Mutex::new(Inner {
                phase: Phase::Idle,
                source: WeightSource::File,
                last_verdict: None,
            }),
        });
        if state.spec.rollout.as_ref().is_some_and(|r| r.start_on_load) {
            state.start_rollout(now);
        }
        state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn weights(&self) -> Arc<Vec<u32>> {
        self.weights.load_full()
    }

    /// Set the canary's share in percent; stable gets the rest, other
    /// backends keep their weight 0.
    fn set_canary_percent(&self, pct: u32) {
        let mut w = vec![0; self.file_weights.len()];
        w[self.spec.canary] = pct.min(100);
        w[self.spec.stable] = 100 - pct.min(100);
        self.weights.store(Arc::new(w));
    }

    /// Set weights from the admin API; stops a running rollout.
    pub fn set_weights(&self, weights: Vec<u32>) -> Result<(), String> {
        if weights.len() != self.file_weights.len() {
            return Err(format!("expected {} weights", self.file_weights.len()));
        }
        if weights.iter().all(|w| *w == 0) || weights.iter().any(|w| *w > 10_000) {
            return Err("weights must be 0..=10000 and not all 0".into());
        }
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::Running { .. }) {
            inner.phase = Phase::Idle;
        }
        inner.source = WeightSource::Admin;
        self.weights.store(Arc::new(weights));
        Ok(())
    }

    pub fn start_rollout(&self, now: u64) -> Option<u32> {
        let r = self.spec.rollout.as_ref()?;
        let weight = *r.steps.first()?;
        for w in &self.windows {
            w.reset();
        }
        let mut inner = self.lock();
        inner.phase = Phase::Running {
            step: 0,
            weight,
            started_at: now,
            step_started_at: now,
        };
        inner.source = WeightSource::Rollout;
        inner.last_verdict = None;
        drop(inner);
        self.set_canary_percent(weight);
        Some(weight)
    }

    /// Roll back to 0 % now (admin), stopping a rollout.
    pub fn rollback(&self, now: u64, reason: Verdict) {
        let mut inner = self.lock();
        inner.phase = Phase::RolledBack { at: now, reason };
        inner.source = WeightSource::Rollout;
        drop(inner);
        self.set_canary_percent(0);
    }

    /// Advance a running rollout: fail as soon as the analysis fails (with
    /// enough traffic), pass a step only when its interval is over.
    pub fn tick(&self, now: u64) -> Option<Event> {
        let r = self.spec.rollout.as_ref()?;
        let mut inner = self.lock();
        let Phase::Running {
            step,
            started_at,
            step_started_at,
            ..
        } = inner.phase
        else {
            return None;
        };
        let stable = self.windows[self.spec.stable].stats();
        let canary = self.windows[self.spec.canary].stats();
        let step_over = now.saturating_sub(step_started_at) >= r.interval;
        let verdict = analyze(r, &stable, &canary, step_over);
        inner.last_verdict = Some(verdict.clone());
        match verdict {
            Verdict::Fail { .. } => {
                inner.phase = Phase::RolledBack {
                    at: now,
                    reason: verdict.clone(),
                };
                drop(inner);
                self.set_canary_percent(0);
                Some(Event::RolledBack(verdict))
            }
            Verdict::Wait { .. } => None,
            Verdict::Pass if now.saturating_sub(step_started_at) < r.interval => None,
            Verdict::Pass => {
                let next = r.steps.get(step + 1).copied().unwrap_or(100);
                if next >= 100 {
                    inner.phase = Phase::Promoted { at: now };
                    drop(inner);
                    self.set_canary_percent(100);
                    return Some(Event::Promoted);
                }
                inner.phase = Phase::Running {
                    step: step + 1,
                    weight: next,
                    started_at,
                    step_started_at: now,
                };
                drop(inner);
                for w in &self.windows {
                    w.reset();
                }
                self.set_canary_percent(next);
                Some(Event::Stepped { weight: next })
            }
        }
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        Status {
            weights: self.weights().to_vec(),
            source: inner.source,
            rollout: inner.phase.clone(),
            last_verdict: inner.last_verdict.clone(),
            stats: self.windows.iter().map(|w| w.stats()).collect(),
        }
    }

    /// This state for a successor process ([`Handoff`]); `now` is this
    /// process's clock.
    pub fn hand_off(&self, route: &str, backends: Vec<String>, now: u64) -> Handoff {
        let inner = self.lock();
        Handoff {
            route: route.to_string(),
            backends,
            file_weights: self.file_weights.clone(),
            spec: serde_json::to_value(&self.spec).unwrap_or_default(),
            weights: self.weights().to_vec(),
            source: inner.source,
            phase: inner.phase.map_times(|t| now.saturating_sub(t)),
            last_verdict: inner.last_verdict.clone(),
        }
    }

    /// Take a predecessor's state, when it is for this route's backends,
    /// file weights and canary spec; `now` is this process's clock. The
    /// analysis windows start empty.
    pub fn take_over(&self, h: &Handoff, backends: &[String], now: u64) -> bool {
        let spec = serde_json::to_value(&self.spec).unwrap_or_default();
        if h.backends != backends
            || h.file_weights != self.file_weights
            || h.spec != spec
            || h.weights.len() != self.file_weights.len()
            || h.weights.iter().all(|w| *w == 0)
        {
            return false;
        }
        for w in &self.windows {
            w.reset();
        }
        let mut inner = self.lock();
        inner.phase = h.phase.map_times(|age| now.saturating_sub(age));
        inner.source = h.source;
        inner.last_verdict = h.last_verdict.clone();
        self.weights.store(Arc::new(h.weights.clone()));
        true
    }

    pub fn step_index(&self) -> i64 {
        match self.lock().phase {
            Phase::Running { step, .. } => step as i64,
            _ => -1,
        }
    }
}

/// Pick a backend index from `weights`. With a sticky key hash, the point is
/// fixed per key and the canary's range comes first, so when its weight
/// rises users only move into it (and out of it when it falls).
pub fn pick(weights: &[u32], canary: usize, sticky: Option<u64>) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let point = match sticky {
        // Scale the key's point to the current total: 1/10000 resolution.
        Some(h) => (h % 10_000) * total / 10_000,
        None => fastrand::u64(..total),
    };
    let order = std::iter::once(canary).chain((0..weights.len()).filter(|&i| i != canary));
    let mut cum = 0u64;
    for i in order {
        cum += u64::from(weights[i]);
        if point < cum {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn spec() -> CanarySpec {
        CanarySpec {
            stable: 0,
            canary: 1,
            stable_name: "stable".into(),
            canary_name: "canary".into(),
            sticky: None,
            override_header: None,
            version_header: None,
            rollout: Some(RolloutSpec {
                steps: vec![10, 50, 100],
                interval: 60 * S,
                min_requests: 100,
                max_5xx_delta: 0.5,
                p95_ratio: 1.10,
                p99_ratio: 1.15,
                min_success_rate: 99.5,
                latency_tolerance_ms: 3.0,
                start_on_load: false,
            }),
        }
    }

    fn feed(w: &Window, n: u64, errors: u64, ms: f64) {
        for i in 0..n {
            w.record(if i < errors { 503 } else { 200 }, ms / 1000.0);
        }
    }

    #[test]
    fn sticky_users_only_move_into_the_canary_as_it_grows() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let at = |canary_pct: u32| -> Vec<usize> {
            keys.iter()
                .map(|&k| pick(&[100 - canary_pct, canary_pct], 1, Some(k)).unwrap())
                .collect()
        };
        let (a, b, c) = (at(10), at(50), at(100));
        let share = |v: &[usize]| v.iter().filter(|&&i| i == 1).count() as f64 / v.len() as f64;
        assert!((share(&a) - 0.10).abs() < 0.02);
        assert!((share(&b) - 0.50).abs() < 0.02);
        assert_eq!(share(&c), 1.0);
        for i in 0..keys.len() {
            assert!(
                !(a[i] == 1 && b[i] == 0),
                "user {i} left the canary as it grew"
            );
            assert!(!(b[i] == 1 && c[i] == 0));
        }
        // Falling weights: users only leave the canary.
        let down = at(5);
        for i in 0..keys.len() {
            assert!(
                !(a[i] == 0 && down[i] == 1),
                "user {i} entered the canary as it shrank"
            );
        }
    }

    #[test]
    fn healthy_canary_is_promoted_step_by_step() {
        let s = CanaryState::new(spec(), vec![100, 0], 0);
        assert_eq!(s.start_rollout(0), Some(10));
        assert_eq!(*s.weights(), vec![90, 10]);
        feed(&s.windows[0], 900, 0, 10.0);
        feed(&s.windows[1], 100, 0, 10.5);
        assert_eq!(s.tick(30 * S), None, "passes, but the interval is not over");
        assert_eq!(s.tick(60 * S), Some(Event::Stepped { weight: 50 }));
        assert_eq!(*s.weights(), vec![50, 50]);
        feed(&s.windows[0], 500, 0, 10.0);
        feed(&s.windows[1], 500, 0, 10.0);
        assert_eq!(s.tick(120 * S), Some(Event::Promoted));
        assert_eq!(*s.weights(), vec![0, 100]);
        assert!(matches!(s.status().rollout, Phase::Promoted { .. }));
    }

    #[test]
    fn two_percent_5xx_rolls_back_at_once() {
        let s = CanaryState::new(spec(), vec![100, 0], 0);
        s.start_rollout(0);
        feed(&s.windows[0], 1000, 0, 10.0);
        feed(&s.windows[1], 200, 4, 10.0);
        match s.tick(S) {
            Some(Event::RolledBack(Verdict::Fail {
                metric,
                canary,
                stable,
                ..
            })) => {
                assert_eq!(metric, "5xx_rate_percent");
                assert!((canary - 2.0).abs() < 1e-9);
                assert_eq!(stable, 0.0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(*s.weights(), vec![100, 0]);
    }

    #[test]
    fn thirty_percent_slower_rolls_back() {
        let s = CanaryState::new(spec(), vec![100, 0], 0);
        s.start_rollout(0);
        feed(&s.windows[0], 1000, 0, 20.0);
        feed(&s.windows[1], 200, 0, 26.0);
        assert_eq!(s.tick(S), None, "latency is judged when the step is over");
        match s.tick(60 * S) {
            Some(Event::RolledBack(Verdict::Fail {
                metric,
                canary,
                stable,
                ..
            })) => {
                assert_eq!(metric, "p95_ms");
                assert!(canary / stable > 1.2, "{canary} vs {stable}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_absolute_differences_are_tolerated() {
        let s = CanaryState::new(spec(), vec![100, 0], 0);
        s.start_rollout(0);
        // 2.0 vs 2.6 ms is 30 % slower but only 0.6 ms: within the tolerance.
        feed(&s.windows[0], 1000, 0, 2.0);
        feed(&s.windows[1], 200, 0, 2.6);
        assert_eq!(s.tick(60 * S), Some(Event::Stepped { weight: 50 }));
    }

    #[test]
    fn not_enough_traffic_waits_instead_of_passing() {
        let s = CanaryState::new(spec(), vec![100, 0], 0);
        s.start_rollout(0);
        feed(&s.windows[0], 1000, 0, 10.0);
        feed(&s.windows[1], 20, 0, 10.0);
        assert_eq!(s.tick(600 * S), None);
        assert!(matches!(
            s.status().last_verdict,
            Some(Verdict::Wait {
                canary_requests: 20,
                ..
            })
        ));
        assert_eq!(*s.weights(), vec![90, 10], "still at the first step");
    }

    #[test]
    fn quantiles_resolve_ten_percent() {
        let a = Window::default();
        let b = Window::default();
        feed(&a, 1000, 0, 20.0);
        feed(&b, 1000, 0, 22.0);
        let (sa, sb) = (a.stats(), b.stats());
        assert!(sb.p95_ms / sa.p95_ms >= 1.05, "{} {}", sa.p95_ms, sb.p95_ms);
        assert!((sa.p95_ms - 20.0).abs() / 20.0 < 0.06);
    }
}
