//! Consistent hashing for `lb: ring_hash` and `lb: maglev`: a request key
//! (the route's `hash_policy`) names an endpoint, the same one in every
//! sift process, and an endpoint that leaves moves only its own keys.
//!
//! Both tables are built once per cluster from the endpoints' authorities
//! (not their order), so a reload that keeps the endpoints, or lists them
//! in another order, keeps every key where it was. An endpoint that is not
//! eligible (failing health checks, ejected, or a retry's previous one) is
//! skipped at pick time, as Envoy's rebuilt tables would: the ring walks on
//! to the next endpoint's point; Maglev looks the key up again with a
//! different seed, so the skipped endpoint's keys spread over all others.

use crate::config::model::Endpoint;

/// Envoy's default Maglev table size (a prime).
pub const MAGLEV_SIZE: usize = 65_537;
/// Envoy's default minimum ring size.
const RING_MIN: usize = 1024;
/// Largest ring built (points for all endpoints together).
const RING_MAX: usize = 1 << 20;
/// Maglev re-lookups with another seed before a linear scan.
const MAGLEV_RETRIES: u64 = 16;

pub enum Table {
    /// Sorted (point, endpoint) pairs.
    Ring(Vec<(u64, u32)>),
    /// Endpoint index per slot.
    Maglev(Vec<u32>),
}

fn hash(s: &str) -> u64 {
    crate::proxy::stable_hash(s)
}

/// splitmix64 of `h + k`: the key's `k`-th alternative slot.
fn mix(h: u64, k: u64) -> u64 {
    let mut z = h.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Table {
    /// A ring with at least 1,024 points, the same number per endpoint
    /// (ketama's layout: point j of an endpoint is the hash of
    /// `authority_j`).
    pub fn ring(endpoints: &[Endpoint], weights: &[u32]) -> Table {
        let n = endpoints.len();
        if n == 0 {
            return Table::Ring(Vec::new());
        }
        // Points per unit of weight: at least 1,024 in all, at most 2^20.
        let w = |i: usize| weights.get(i).copied().unwrap_or(1).max(1) as usize;
        let total: usize = (0..n).map(w).sum();
        let per = RING_MIN
            .div_ceil(total)
            .max(16)
            .min((RING_MAX / total).max(1));
        let mut points = Vec::with_capacity(total * per);
        for (i, e) in endpoints.iter().enumerate() {
            let a = e.id();
            for j in 0..per * w(i) {
                points.push((hash(&format!("{a}_{j}")), i as u32));
            }
        }
        // Ties (equal points) go to the lower authority, not to the order
        // the endpoints were listed in.
        points.sort_unstable_by(|x, y| {
            x.0.cmp(&y.0).then_with(|| {
                endpoints[x.1 as usize]
                    .id()
                    .cmp(&endpoints[y.1 as usize].id())
            })
        });
        Table::Ring(points)
    }

    /// Maglev's lookup table (Eisenbud et al., NSDI 2016): each endpoint
    /// walks its own permutation of the slots, taking turns, until every
    /// slot has an endpoint; each gets within one slot of M / n.
    /// With weights, an endpoint takes as many turns per round as its
    /// weight, so it owns slots in proportion.
    pub fn maglev(endpoints: &[Endpoint], weights: &[u32]) -> Table {
        let n = endpoints.len();
        let m = MAGLEV_SIZE as u64;
        if n == 0 {
            return Table::Maglev(Vec::new());
        }
        // Endpoints take their turns in authority order, so the table does
        // not depend on the order they were listed in.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| endpoints[a].id().cmp(&endpoints[b].id()));
        let perm: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let a = e.id();
                let offset = hash(&format!("{a}#offset")) % m;
                let skip = hash(&format!("{a}#skip")) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut slots = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        'fill: loop {
            for &i in &order {
                for _ in 0..weights.get(i).copied().unwrap_or(1).max(1) {
                    let (offset, skip) = perm[i];
                    let mut c = ((offset + next[i] * skip) % m) as usize;
                    while slots[c] != u32::MAX {
                        next[i] += 1;
                        c = ((offset + next[i] * skip) % m) as usize;
                    }
                    slots[c] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == MAGLEV_SIZE {
                        break 'fill;
                    }
                }
            }
        }
        Table::Maglev(slots)
    }

    /// The endpoint for key hash `h` among those `ok` accepts: the owner of
    /// the key's place, else (it is not eligible) the next choice as
    /// described in the module doc; `None` if no endpoint is eligible.
    pub fn pick(&self, h: u64, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Table::Ring(points) => {
                if points.is_empty() {
                    return None;
                }
                let start = points.partition_point(|p| p.0 < h);
                (0..points.len())
                    .map(|k| points[(start + k) % points.len()].1 as usize)
                    .find(|&i| ok(i))
            }
            Table::Maglev(slots) => {
                if slots.is_empty() {
                    return None;
                }
                (0..MAGLEV_RETRIES)
                    .map(|k| {
                        let x = if k == 0 { h } else { mix(h, k) };
                        slots[(x % MAGLEV_SIZE as u64) as usize] as usize
                    })
                    .find(|&i| ok(i))
                    .or_else(|| (0..n).map(|k| (h as usize + k) % n).find(|&i| ok(i)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                let host = format!("10.0.{}.{}", i / 250, i % 250 + 1);
                Endpoint {
                    authority: format!("{host}:8080").parse().unwrap(),
                    host,
                    port: 8080,
                    addr: None,
                }
            })
            .collect()
    }

    fn owners(t: &Table, n: usize, keys: u64, ok: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        (0..keys)
            .map(|k| t.pick(hash(&format!("user-{k}")), n, ok).unwrap())
            .collect()
    }

    /// Each endpoint gets a fair share of the keys, and taking one out of
    /// service moves its keys only, spread over the others.
    fn check(build: impl Fn(&[Endpoint]) -> Table, tolerance: f64) {
        let n = 5;
        let e = eps(n);
        let t = build(&e);
        let keys = 20_000;
        let before = owners(&t, n, keys, |_| true);
        let mut counts = vec![0usize; n];
        for &o in &before {
            counts[o] += 1;
        }
        let fair = keys as f64 / n as f64;
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (c as f64 - fair).abs() / fair < tolerance,
                "endpoint {i} has {c} of {keys} keys: {counts:?}"
            );
        }
        let after = owners(&t, n, keys, |i| i != 2);
        let mut moved_to = vec![0usize; n];
        for (b, a) in before.iter().zip(&after) {
            if *b == 2 {
                moved_to[*a] += 1;
            } else {
                assert_eq!(b, a, "a key of an endpoint still serving moved");
            }
        }
        assert_eq!(moved_to[2], 0);
        for (i, &m) in moved_to.iter().enumerate() {
            if i != 2 {
                assert!(m > counts[2] / 10, "endpoint 2's keys spread: {moved_to:?}");
            }
        }
    }

    #[test]
    fn ring_spreads_keys_and_moves_only_the_lost_endpoints() {
        check(|e| Table::ring(e, &[]), 0.25);
    }

    #[test]
    fn maglev_spreads_keys_evenly_and_moves_only_the_lost_endpoints() {
        check(|e| Table::maglev(e, &[]), 0.05);
        // Slots per endpoint within one of M / n.
        let Table::Maglev(slots) = Table::maglev(&eps(7), &[]) else {
            unreachable!()
        };
        let mut c = [0usize; 7];
        for s in slots {
            c[s as usize] += 1;
        }
        let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
        assert!(hi - lo <= 1, "{c:?}");
    }

    #[test]
    fn tables_ignore_the_order_endpoints_are_listed_in() {
        let e = eps(4);
        let mut r = e.clone();
        r.reverse();
        for build in [(|e| Table::ring(e, &[])) as fn(&[Endpoint]) -> Table, |e| {
            Table::maglev(e, &[])
        }] {
            let (a, b) = (build(&e), build(&r));
            for k in 0..2000u64 {
                let h = hash(&format!("k{k}"));
                let x = a.pick(h, 4, |_| true).unwrap();
                let y = b.pick(h, 4, |_| true).unwrap();
                assert_eq!(e[x].authority, r[y].authority);
            }
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let e = eps(3);
        let w = [1, 2, 5];
        for (t, tol) in [(Table::maglev(&e, &w), 0.03), (Table::ring(&e, &w), 0.25)] {
            let o = owners(&t, 3, 40_000, |_| true);
            for (i, &wi) in w.iter().enumerate() {
                let share = o.iter().filter(|&&x| x == i).count() as f64 / 40_000.0;
                let want = f64::from(wi) / 8.0;
                assert!(
                    (share - want).abs() / want < tol,
                    "endpoint {i}: {share} vs {want}"
                );
            }
        }
    }

    #[test]
    fn nothing_eligible_is_none_and_empty_tables_pick_nothing() {
        let e = eps(3);
        for t in [Table::ring(&e, &[]), Table::maglev(&e, &[])] {
            assert_eq!(t.pick(42, 3, |_| false), None);
            assert_eq!(t.pick(42, 3, |i| i == 1), Some(1));
        }
        assert_eq!(Table::ring(&[], &[]).pick(1, 0, |_| true), None);
        assert_eq!(Table::maglev(&[], &[]).pick(1, 0, |_| true), None);
    }
}
