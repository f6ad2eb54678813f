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

    /// Start this process's epoch `reading` nanoseconds ago, so that this
    /// clock reads what a predecessor's clock read just now: on a binary
    /// upgrade the rollout times it hands over keep their meaning (both
    /// read the system's one monotonic clock). False when a clock was
    /// already made, or the system has not been up that long.
    pub fn adopt(reading: u64) -> bool {
        let Some(epoch) = Instant::now().checked_sub(std::time::Duration::from_nanos(reading))
        else {
            return false;
        };
        EPOCH.set(epoch).is_ok()
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
