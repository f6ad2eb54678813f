//! Traffic policy: rate limiting ([`ratelimit`]), per-route concurrency
//! limits, circuit breaking and outlier detection ([`outlier`]), retries
//! with a budget ([`retry`]). Every time-dependent part takes `now`.

pub mod outlier;
pub mod ratelimit;
pub mod redis;
pub mod retry;
pub mod rls;
