//! Traffic policy: rate limiting ([`ratelimit`]), per-route concurrency
//! limits (fixed, and adaptive: [`adaptive`]), circuit breaking and outlier detection ([`outlier`]), retries
//! with a budget ([`retry`]). Every time-dependent part takes `now`.

pub mod adaptive;
pub mod outlier;
pub mod ratelimit;
pub mod redis;
pub mod retry;
pub mod rls;
