//! Local token-bucket rate limits keyed by request descriptors.
//!
//! - Each policy owns a sharded map from a 64-bit key hash to a bucket; a
//!   request locks one shard only (no global lock on the hot path).
//! - Memory is bounded: each shard holds at most `max_keys / SHARDS`
//!   buckets. When full, idle (fully refilled) buckets are dropped first,
//!   otherwise the least recently used of a small sample. An evicted bucket
//!   comes back full, which is exactly what an idle bucket would be.
//! - Time is a parameter (`now` in nanoseconds).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

use crate::clock::NANOS_PER_SEC;

const SHARDS: usize = 64;
/// Entries looked at when a full shard must make room.
const EVICTION_SAMPLE: usize = 32;

/// The validated policy (built by the config builder).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateLimitSpec {
    pub name: String,
    pub requests_per_unit: u64,
    pub unit_secs: u64,
    pub burst: u64,
    pub key: Vec<KeyPart>,
    pub overrides: Vec<Override>,
    pub shadow: bool,
    /// Add `RateLimit` / `RateLimit-Policy` to allowed responses too.
    pub response_headers: bool,
    pub max_keys: usize,
    /// Counted in Redis (shared by replicas), not in this process.
    pub global: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    ClientIp,
    Identity,
    Method,
    Path,
    Route,
    Header(String),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Override {
    /// The descriptor value, parts joined with `|` (e.g. `gold` or `10.0.0.1|GET`).
    pub value: String,
    pub requests_per_unit: u64,
    pub burst: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: u64,
}

/// A u64 key is already a hash: do not hash it again.
#[derive(Default)]
struct Identity(u64);
impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Bucket, BuildHasherDefault<Identity>>;

/// Rate and capacity of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Quota {
    /// Tokens per nanosecond.
    rate: f64,
    burst: f64,
    /// For headers: quota `q` per window `w`.
    q: u64,
    w: u64,
}

/// The verdict for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Seconds until one more request would be allowed (0 when allowed).
    pub retry_after: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// Quota and window for `RateLimit-Policy` (`q`, `w`).
    pub quota: u64,
    pub window: u64,
}

pub struct Limiter {
    pub spec: RateLimitSpec,
    quota: Quota,
    overrides: HashMap<u64, Quota>,
    hasher: KeyHasher,
    shards: Box<[Mutex<Shard>]>,
    cap_per_shard: usize,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.spec.name)
            .finish()
    }
}

fn quota(requests_per_unit: u64, unit_secs: u64, burst: u64) -> Quota {
    Quota {
        rate: requests_per_unit as f64 / (unit_secs as f64 * NANOS_PER_SEC as f64),
        burst: burst.max(1) as f64,
        q: requests_per_unit,
        w: unit_secs,
    }
}

impl Limiter {
    pub fn new(spec: RateLimitSpec) -> Self {
        // A global policy's keys name Redis keys that every replica must
        // compute alike: a fixed hash. A local one is seeded per process.
        let hasher = if spec.global {
            KeyHasher::Stable
        } else {
            KeyHasher::Random(RandomState::new())
        };
        let q = quota(spec.requests_per_unit, spec.unit_secs, spec.burst);
        let mut overrides = HashMap::new();
        for o in &spec.overrides {
            let h = hash_str(&hasher, &o.value);
            overrides.insert(h, quota(o.requests_per_unit, spec.unit_secs, o.burst));
        }
        let cap_per_shard = spec.max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Limiter {
            spec,
            quota: q,
            overrides,
            hasher,
            shards,
            cap_per_shard,
        }
    }

    /// Hash a descriptor value (parts joined by `|`) into a bucket key.
    pub fn key(&self, value: &str) -> u64 {
        hash_str(&self.hasher, value)
    }

    /// The same key as [`key`](Self::key) of the parts joined by `|`,
    /// without building the string (SipHash is a stream: writing the parts
    /// and separators one by one equals writing the joined bytes).
    pub fn key_of_parts<'a>(&self, parts: impl Iterator<Item = &'a [u8]>) -> u64 {
        let mut h = self.hasher.start();
        for (i, p) in parts.enumerate() {
            if i > 0 {
                h.write(b"|");
            }
            h.write(p);
        }
        h.finish()
    }

    /// The token interval (µs) and burst of `key`'s bucket, with the quota
    /// and window for headers (a global policy's bucket lives in Redis).
    pub fn bucket_of(&self, key: u64) -> (f64, u64, u64, u64) {
        let q = self.overrides.get(&key).copied().unwrap_or(self.quota);
        (1.0 / (q.rate * 1000.0), q.burst as u64, q.q, q.w)
    }

    /// Take one token for `key` at `now`.
    pub fn check(&self, key: u64, now: u64) -> Decision {
        let q = self.overrides.get(&key).copied().unwrap_or(self.quota);
        self.take(key, 1, now, q)
    }

    /// Take `hits` tokens for `key` at `now` (0: only look, allowed while
    /// a token is left), from a bucket of `custom` (requests per unit, unit
    /// in seconds) instead of the policy's own quota when given. All or
    /// nothing: a denied request takes no token.
    pub fn check_n(&self, key: u64, hits: u64, now: u64, custom: Option<(u64, u64)>) -> Decision {
        let q = match custom {
            Some((rpu, unit)) => quota(rpu.max(1), unit.max(1), rpu.max(1)),
            None => self.overrides.get(&key).copied().unwrap_or(self.quota),
        };
        self.take(key, hits, now, q)
    }

    fn take(&self, key: u64, hits: u64, now: u64, q: Quota) -> Decision {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match map.get_mut(&key) {
            Some(b) => b,
            None => {
                if map.len() >= self.cap_per_shard {
                    evict(&mut map, now, q);
                }
                map.entry(key).or_insert(Bucket {
                    tokens: q.burst,
                    last: now,
                })
            }
        };
        let elapsed = now.saturating_sub(bucket.last) as f64;
        bucket.tokens = (bucket.tokens + elapsed * q.rate).min(q.burst);
        bucket.last = bucket.last.max(now);
        let need = hits.max(1) as f64;
        let allowed = bucket.tokens >= need;
        if allowed {
            bucket.tokens -= hits as f64;
        }
        let secs = |tokens_needed: f64| -> u64 {
            if tokens_needed <= 0.0 {
                0
            } else {
                (tokens_needed / q.rate / NANOS_PER_SEC as f64).ceil() as u64
            }
        };
        Decision {
            allowed,
            remaining: bucket.tokens.floor() as u64,
            retry_after: if allowed {
                0
            } else {
                // More than the bucket holds never fits: say when it is full.
                secs(need.min(q.burst) - bucket.tokens).max(1)
            },
            reset: secs(q.burst - bucket.tokens),
            quota: q.q,
            window: q.w,
        }
    }

    /// Give back a token taken by [`check`](Self::check) for a request that
    /// another policy then rejected (so overlapping policies do not all pay).
    pub fn refund(&self, key: u64) {
        self.refund_n(key, 1, None);
    }

    /// Give back `hits` tokens taken by [`check_n`](Self::check_n).
    pub fn refund_n(&self, key: u64, hits: u64, custom: Option<(u64, u64)>) {
        let q = match custom {
            Some((rpu, unit)) => quota(rpu.max(1), unit.max(1), rpu.max(1)),
            None => self.overrides.get(&key).copied().unwrap_or(self.quota),
        };
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(&key) {
            b.tokens = (b.tokens + hits as f64).min(q.burst);
        }
    }

    /// Buckets held now (bounded by `max_keys` rounded up to the shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap_per_shard * SHARDS
    }
}

/// Make room in a full shard: drop every idle bucket in a sample (a full
/// bucket is the same as no bucket); if none is idle, drop the least
/// recently used of the sample.
fn evict(map: &mut Shard, now: u64, q: Quota) {
    let full_after = (q.burst / q.rate) as u64;
    let mut idle = Vec::new();
    let mut oldest: Option<(u64, u64)> = None;
    for (&k, b) in map.iter().take(EVICTION_SAMPLE) {
        if now.saturating_sub(b.last) >= full_after {
            idle.push(k);
        }
        if oldest.is_none_or(|(_, t)| b.last < t) {
            oldest = Some((k, b.last));
        }
    }
    if idle.is_empty() {
        if let Some((k, _)) = oldest {
            map.remove(&k);
        }
    } else {
        for k in idle {
            map.remove(&k);
        }
    }
}

fn hash_str(h: &KeyHasher, s: &str) -> u64 {
    let mut hasher = h.start();
    hasher.write(s.as_bytes());
    hasher.finish()
}

/// How descriptor values become bucket keys.
enum KeyHasher {
    /// SipHash with a per-process seed (local buckets: keys an attacker
    /// cannot aim at one shard).
    Random(RandomState),
    /// FNV-1a 64 with a splitmix64 finish, the same in every process
    /// (global policies: the key names a Redis key).
    Stable,
}

enum AnyHasher {
    Sip(std::hash::DefaultHasher),
    Fnv(u64),
}

impl KeyHasher {
    fn start(&self) -> AnyHasher {
        match self {
            KeyHasher::Random(r) => AnyHasher::Sip(r.build_hasher()),
            KeyHasher::Stable => AnyHasher::Fnv(0xcbf2_9ce4_8422_2325),
        }
    }
}

impl Hasher for AnyHasher {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            AnyHasher::Sip(h) => h.write(bytes),
            AnyHasher::Fnv(h) => {
                for &b in bytes {
                    *h ^= u64::from(b);
                    *h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
    }
    fn finish(&self) -> u64 {
        match self {
            AnyHasher::Sip(h) => h.finish(),
            AnyHasher::Fnv(h) => {
                let mut z = *h;
                z ^= z >> 30;
                z = z.wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z ^= z >> 27;
                z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    fn spec(rpu: u64, unit: u64, burst: u64) -> RateLimitSpec {
        RateLimitSpec {
            name: "t".into(),
            requests_per_unit: rpu,
            unit_secs: unit,
            burst,
            key: vec![KeyPart::ClientIp],
            overrides: vec![],
            shadow: false,
            response_headers: false,
            max_keys: 1000,
            global: false,
        }
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let l = Limiter::new(spec(10, 1, 5));
        let k = l.key("1.2.3.4");
        for i in 0..5 {
            let d = l.check(k, 0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = l.check(k, 0);
        assert!(!d.allowed);
        assert_eq!(
            d.retry_after, 1,
            "0.1 s to the next token, rounded up to 1 s"
        );
        assert_eq!(d.quota, 10);
        assert_eq!(d.window, 1);
        // 10/s: after 100 ms one token is back, after 500 ms the bucket is full.
        assert!(l.check(k, SEC / 10).allowed);
        assert!(!l.check(k, SEC / 10).allowed);
        let d = l.check(k, SEC);
        assert!(d.allowed);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn retry_after_and_reset_for_slow_limits() {
        // 60 per minute, burst 2: one token a second.
        let l = Limiter::new(spec(60, 60, 2));
        let k = l.key("k");
        assert!(l.check(k, 0).allowed);
        let d = l.check(k, 0);
        assert!(d.allowed);
        assert_eq!(d.reset, 2);
        let d = l.check(k, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 1);
        assert_eq!((d.quota, d.window), (60, 60));
    }

    #[test]
    fn overrides_give_one_key_more() {
        let mut s = spec(1, 1, 1);
        s.overrides.push(Override {
            value: "gold".into(),
            requests_per_unit: 10,
            burst: 10,
        });
        let l = Limiter::new(s);
        let (gold, other) = (l.key("gold"), l.key("silver"));
        assert_eq!((0..20).filter(|_| l.check(gold, 0).allowed).count(), 10);
        assert_eq!((0..20).filter(|_| l.check(other, 0).allowed).count(), 1);
    }

    #[test]
    fn parts_hash_like_the_joined_value() {
        let l = Limiter::new(spec(1, 1, 1));
        let parts: [&[u8]; 3] = [b"gold", b"GET", b"/x"];
        assert_eq!(l.key_of_parts(parts.into_iter()), l.key("gold|GET|/x"));
    }

    #[test]
    fn refund_returns_a_token() {
        let l = Limiter::new(spec(1, 60, 1));
        let k = l.key("k");
        assert!(l.check(k, 0).allowed);
        assert!(!l.check(k, 0).allowed);
        l.refund(k);
        assert!(l.check(k, 0).allowed);
    }

    /// One million distinct keys within one minute: the map never holds more
    /// than its cap, and a key that keeps coming stays limited.
    #[test]
    fn a_million_keys_in_a_minute_stay_under_the_cap() {
        let mut s = spec(1, 60, 1);
        s.max_keys = 10_000;
        let l = Limiter::new(s);
        let cap = l.capacity();
        assert!((10_000..10_000 + SHARDS).contains(&cap));
        let hot = l.key("attacker");
        let mut hot_allowed = 0;
        for i in 0..1_000_000u64 {
            let now = i * 60 * SEC / 1_000_000;
            let k = l.key(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
            assert!(
                l.check(k, now).allowed,
                "a new key starts with a full bucket"
            );
            if i % 1000 == 0 && l.check(hot, now).allowed {
                hot_allowed += 1;
            }
        }
        assert!(l.len() <= cap, "{} buckets > cap {cap}", l.len());
        // The hot key asked 1000 times in a minute at 1/min: eviction under the
        // flood let it through a few more times at most, never freely.
        assert!(hot_allowed <= 10, "hot key allowed {hot_allowed} times");
    }
}
