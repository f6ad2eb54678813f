//! One bound on the request body bytes sift holds in memory at once, across
//! every connection and route (`overload.max_buffered_bytes`; Envoy's
//! overload manager has the same aim: a flood of large bodies must not end
//! in the kernel's OOM killer, which drops every connection).
//!
//! Bodies are held for block and annotate filters, for an external
//! authorization check that reads the body, for retries (replay) and for
//! mirror copies. Each such hold takes a [`Reservation`] that grows with
//! the bytes it keeps and gives them back when it is dropped. A hold that
//! cannot grow stops holding: the filters' `on_overload` decides (as for a
//! saturated pool), a spooling route writes to disk sooner, a retryable
//! body streams without replay, a mirror copy is skipped, an external
//! authorization check with the body gets 503 `overloaded`; each counted
//! in `sift_buffer_denied_total{use}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{IntCounterVec, IntGauge};

/// The process's count of held request bytes; survives reloads. The limit
/// is the config's (each request's snapshot), carried by its
/// [`Reservation`].
pub struct Budget {
    used: AtomicU64,
    gauge: IntGauge,
    denied: IntCounterVec,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish()
    }
}

/// Where a hold was refused (the `use` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Filter,
    Spool,
    ExternalAuth,
    Retry,
    Mirror,
    Buffering,
}

impl Use {
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Filter => "filter",
            Use::Spool => "spool",
            Use::ExternalAuth => "external_auth",
            Use::Retry => "retry",
            Use::Mirror => "mirror",
            Use::Buffering => "buffering",
        }
    }
}

impl Budget {
    pub fn new(gauge: IntGauge, denied: IntCounterVec) -> Arc<Self> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            gauge,
            denied,
        })
    }

    /// A budget with metrics of its own, registered nowhere (tests, tools).
    pub fn detached() -> Arc<Self> {
        let gauge = IntGauge::new("sift_buffered_request_bytes", "-").expect("valid metric");
        let denied = IntCounterVec::new(
            prometheus::Opts::new("sift_buffer_denied_total", "-"),
            &["use"],
        )
        .expect("valid metric");
        Budget::new(gauge, denied)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as bytes are held, while the bytes
    /// held by everyone stay within `limit` (None: no limit).
    pub fn reservation(self: &Arc<Self>, limit: Option<u64>) -> Reservation {
        Reservation {
            budget: self.clone(),
            limit: limit.unwrap_or(u64::MAX),
            bytes: 0,
        }
    }

    /// Count a refused hold.
    pub fn deny(&self, u: Use) {
        self.denied.with_label_values(&[u.as_str()]).inc();
    }

    fn take(&self, n: u64, limit: u64) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok();
        if ok {
            self.gauge.add(n as i64);
        }
        ok
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }
}

/// Bytes of the budget one hold keeps; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    limit: u64,
    bytes: u64,
}

impl Reservation {
    /// Take `n` more bytes; false (and nothing taken) if the budget has
    /// not that much left.
    pub fn grow(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.take(n, self.limit);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Keep at most `n` bytes (the hold turned out smaller).
    pub fn shrink_to(&mut self, n: u64) {
        if n < self.bytes {
            self.budget.give(self.bytes - n);
            self.bytes = n;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.bytes);
        }
    }
}

/// `auto`: half the memory limit of sift's cgroup (a Kubernetes pod's
/// `resources.limits.memory`), or a quarter of the machine's memory when
/// no cgroup limit is below it. Read from cgroup v2's `memory.max`, else
/// v1's `memory.limit_in_bytes`, and `/proc/meminfo`.
pub fn auto_limit() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let total = read("/proc/meminfo")
        .as_deref()
        .and_then(mem_total)
        .unwrap_or(4 << 30);
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .as_deref()
        .and_then(cgroup_limit);
    auto_from(cgroup, total)
}

/// The `auto` rule on given readings.
pub fn auto_from(cgroup: Option<u64>, mem_total: u64) -> u64 {
    match cgroup {
        Some(c) if c < mem_total => c / 2,
        _ => mem_total / 4,
    }
}

/// A cgroup memory limit file's value: `max` (v2) or a v1 number near
/// `i64::MAX` mean none.
pub fn cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&n| n > 0 && n < (1 << 60))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_to_the_limit_and_give_back_on_drop() {
        let b = Budget::detached();
        let mut r1 = b.reservation(Some(100));
        assert!(r1.grow(60));
        let mut r2 = b.reservation(Some(100));
        assert!(!r2.grow(41), "60 + 41 > 100");
        assert_eq!(r2.bytes(), 0);
        assert!(r2.grow(40));
        assert_eq!(b.used(), 100);
        assert!(!r1.grow(1));
        r1.shrink_to(10);
        assert_eq!(b.used(), 50);
        drop(r2);
        assert_eq!(b.used(), 10);
        drop(r1);
        assert_eq!(b.used(), 0);
        assert_eq!(b.gauge.get(), 0);
        // A lower limit after a reload: what is held stays, new holds
        // wait until the total is below it.
        let mut r3 = b.reservation(Some(100));
        assert!(r3.grow(80));
        let mut r4 = b.reservation(Some(50));
        assert!(!r4.grow(1));
        drop(r3);
        assert!(r4.grow(50));
        let mut r5 = b.reservation(None);
        assert!(r5.grow(u64::MAX / 2));
        drop((r4, r5));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn auto_reads_the_cgroup_limit_or_the_machine() {
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("268435456\n"), Some(256 << 20));
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(cgroup_limit("garbage"), None);
        let meminfo = "MemTotal:       24683772 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_683_772 * 1024));
        assert_eq!(mem_total("nothing"), None);
        // A pod limited to 256 MiB on a 24 GiB node: 128 MiB.
        assert_eq!(auto_from(Some(256 << 20), 24 << 30), 128 << 20);
        // No limit, or one above the machine's memory: a quarter of it.
        assert_eq!(auto_from(None, 24 << 30), 6 << 30);
        assert_eq!(auto_from(Some(64 << 30), 24 << 30), 6 << 30);
        assert!(auto_limit() > 0);
    }
}
