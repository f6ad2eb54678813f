//! Time as a parameter: policies take `now` in nanoseconds from a [`Clock`],
//! so tests drive them with plain numbers, deterministically, without sleeps.

use std::time::Instant;

/// Monotonic nanoseconds since the process's first clock was made.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's one epoch: every [`Clock`] reads from it, so readings
/// taken by different parts (the data path, health probes) compare.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: *EPOCH.get_or_init(Instant::now),
        }
    }

    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The clock's reading at `t` (a time already taken: no clock read).
    pub fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }
}

pub const NANOS_PER_SEC: u64 = 1_000_000_000;
pub const NANOS_PER_MS: u64 = 1_000_000;
