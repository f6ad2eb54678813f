//! Envoy's global rate limit service (`envoy.service.ratelimit.v3`), as
//! envoyproxy/ratelimit answers it, counted in sift's token buckets.
//!
//! - A domain holds a tree of descriptor nodes. A request descriptor (a
//!   list of key/value entries) walks the tree one entry per level: the
//!   node with the same key and value, else one whose value ends in `*`
//!   and prefixes the entry's value, else the node with the key and no
//!   value (any value). Its limit applies only if the descriptor's last
//!   entry lands on a node with a limit (envoyproxy/ratelimit's rule).
//! - Each distinct descriptor (every entry's key and value) has its own
//!   bucket: a node without a value gives every value its own bucket.
//! - A request is over limit if any of its descriptors is, except where
//!   the node is in shadow mode. The tokens an admitted descriptor took
//!   for a request that another refused are given back.
//! - Time is a parameter (`now`, nanoseconds); the Redis store runs on
//!   Redis's clock.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::ratelimit::{Decision, Limiter, RateLimitSpec};

/// The validated `rate_limit_service`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RlsSpec {
    pub store: crate::config::file::RlsStore,
    pub response_headers: bool,
    pub max_keys: usize,
    pub domains: Vec<DomainSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainSpec {
    pub domain: String,
    pub descriptors: Vec<NodeSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSpec {
    pub key: String,
    /// None: any value.
    pub value: Option<String>,
    pub rate_limit: Option<LimitSpec>,
    pub shadow_mode: bool,
    pub descriptors: Vec<NodeSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitSpec {
    pub name: Option<String>,
    pub requests_per_unit: u64,
    pub unit: crate::config::file::RlsUnit,
    pub burst: u64,
    pub unlimited: bool,
    pub replaces: Vec<String>,
}

/// One entry of a request descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// A limit of the tree, with its bucket map (kept across reloads while
/// its path and spec are unchanged).
#[derive(Debug)]
pub struct NodeLimit {
    /// `domain.key_value.key…`: metric label, Redis key part.
    pub path: String,
    /// For headers and `replaces`: the configured name, else the path.
    pub name: String,
    pub spec: LimitSpec,
    pub shadow: bool,
    pub limiter: Arc<Limiter>,
    /// `sift_rls_decisions_total` for ok, over_limit, shadow_over_limit.
    counters: [prometheus::IntCounter; 3],
}

#[derive(Debug, Default)]
struct Node {
    limit: Option<Arc<NodeLimit>>,
    /// Unlimited nodes end the walk with no limit.
    unlimited: bool,
    children: HashMap<String, Children>,
}

#[derive(Debug, Default)]
struct Children {
    exact: HashMap<String, Node>,
    prefix: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

/// What one request descriptor came to.
#[derive(Debug)]
pub enum Matched {
    /// No limit applies (unknown domain, no node, not at a limit's depth).
    None,
    /// `unlimited: true`.
    Unlimited,
    /// Replaced by another matched limit (`replaces`).
    Replaced(Arc<NodeLimit>),
    /// A configured limit; `key` the descriptor's bucket.
    Limit {
        limit: Arc<NodeLimit>,
        key: u64,
        hits: u64,
    },
    /// A limit the request itself carries (`RateLimitDescriptor.limit`).
    Given {
        rpu: u64,
        unit: crate::config::file::RlsUnit,
        key: u64,
        hits: u64,
    },
}

/// The service built from its spec.
#[derive(Debug)]
pub struct Service {
    pub spec: RlsSpec,
    domains: HashMap<String, Node>,
    limits: HashMap<String, Arc<NodeLimit>>,
    /// Buckets of limits the requests carry.
    pub given: Arc<Limiter>,
    /// `sift_rls_decisions_total` for requests' own limits.
    given_counters: HashMap<String, [prometheus::IntCounter; 3]>,
}

pub const DECISIONS: [&str; 3] = ["ok", "over_limit", "shadow_over_limit"];

fn limiter_spec(path: &str, l: &LimitSpec, spec: &RlsSpec) -> RateLimitSpec {
    RateLimitSpec {
        name: path.to_string(),
        requests_per_unit: l.requests_per_unit.max(1),
        unit_secs: l.unit.secs(),
        burst: l.burst.max(1),
        key: Vec::new(),
        overrides: Vec::new(),
        shadow: false,
        response_headers: spec.response_headers,
        max_keys: spec.max_keys,
        global: spec.store == crate::config::file::RlsStore::Redis,
    }
}

impl Service {
    /// Build from `spec`, keeping `prev`'s buckets of unchanged limits.
    pub fn new(
        spec: RlsSpec,
        prev: Option<&Service>,
        decisions: &prometheus::IntCounterVec,
    ) -> Self {
        let mut limits = HashMap::new();
        let mut domains = HashMap::new();
        let mut given_counters = HashMap::new();
        for d in &spec.domains {
            let mut root = Node::default();
            for n in &d.descriptors {
                insert(
                    &mut root,
                    n,
                    &d.domain,
                    &d.domain,
                    &spec,
                    prev,
                    decisions,
                    &mut limits,
                );
            }
            domains.insert(d.domain.clone(), root);
            given_counters.insert(
                d.domain.clone(),
                DECISIONS
                    .map(|x| decisions.with_label_values(&[d.domain.as_str(), "(request)", x])),
            );
        }
        let given_spec = limiter_spec(
            "(request)",
            &LimitSpec {
                name: None,
                requests_per_unit: 1,
                unit: crate::config::file::RlsUnit::Second,
                burst: 1,
                unlimited: false,
                replaces: Vec::new(),
            },
            &spec,
        );
        let given = prev
            .filter(|p| p.given.spec == given_spec)
            .map(|p| p.given.clone())
            .unwrap_or_else(|| Arc::new(Limiter::new(given_spec)));
        Service {
            spec,
            domains,
            limits,
            given,
            given_counters,
        }
    }

    /// Whether `domain` is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The limit of one request descriptor. `given` is the request's own
    /// limit (requests per unit, unit), `hits` the tokens it takes.
    pub fn lookup(
        &self,
        domain: &str,
        entries: &[Entry<'_>],
        given: Option<(u64, crate::config::file::RlsUnit)>,
        hits: u64,
    ) -> Matched {
        let Some(root) = self.domains.get(domain) else {
            return Matched::None;
        };
        if entries.is_empty() {
            return Matched::None;
        }
        if let Some((rpu, unit)) = given {
            let key_text = format!(
                "{domain}\u{0}{rpu}\u{0}{}\u{0}{}",
                unit.secs(),
                bucket_text(entries)
            );
            return Matched::Given {
                rpu,
                unit,
                key: self.given.key(&key_text),
                hits,
            };
        }
        let mut node = root;
        for (i, e) in entries.iter().enumerate() {
            let Some(ch) = node.children.get(e.key) else {
                return Matched::None;
            };
            let next = ch
                .exact
                .get(e.value)
                .or_else(|| {
                    ch.prefix
                        .iter()
                        .find(|(p, _)| e.value.starts_with(p.as_str()))
                        .map(|(_, n)| n)
                })
                .or(ch.any.as_deref());
            let Some(next) = next else {
                return Matched::None;
            };
            if i + 1 == entries.len() {
                if next.unlimited {
                    return Matched::Unlimited;
                }
                return match &next.limit {
                    Some(l) => Matched::Limit {
                        limit: l.clone(),
                        key: l.limiter.key(&bucket_text(entries)),
                        hits,
                    },
                    None => Matched::None,
                };
            }
            node = next;
        }
        Matched::None
    }

    /// Apply `replaces` across one request's matches.
    pub fn replace(matches: &mut [Matched]) {
        let gone: Vec<String> = matches
            .iter()
            .filter_map(|m| match m {
                Matched::Limit { limit, .. } => Some(limit.spec.replaces.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        if gone.is_empty() {
            return;
        }
        for m in matches.iter_mut() {
            if let Matched::Limit { limit, .. } = m {
                if gone.contains(&limit.name) {
                    *m = Matched::Replaced(limit.clone());
                }
            }
        }
    }

    /// Count one decision of a match.
    pub fn count(&self, domain: &str, m: &Matched, outcome: usize) {
        match m {
            Matched::Limit { limit, .. } => limit.counters[outcome].inc(),
            Matched::Given { .. } => {
                if let Some(c) = self.given_counters.get(domain) {
                    c[outcome].inc();
                }
            }
            _ => {}
        }
    }

    /// Check a match in the local store.
    pub fn check_local(&self, m: &Matched, now: u64) -> Option<Decision> {
        match m {
            Matched::Limit { limit, key, hits } => {
                Some(limit.limiter.check_n(*key, *hits, now, None))
            }
            Matched::Given {
                rpu,
                unit,
                key,
                hits,
            } => Some(
                self.given
                    .check_n(*key, *hits, now, Some((*rpu, unit.secs()))),
            ),
            _ => None,
        }
    }

    /// Give back what [`check_local`](Self::check_local) took.
    pub fn refund_local(&self, m: &Matched) {
        match m {
            Matched::Limit { limit, key, hits } => limit.limiter.refund_n(*key, *hits, None),
            Matched::Given {
                rpu,
                unit,
                key,
                hits,
            } => self.given.refund_n(*key, *hits, Some((*rpu, unit.secs()))),
            _ => {}
        }
    }

    /// The Redis key, token interval (µs), burst, quota and window of a
    /// match (Redis store).
    pub fn redis_bucket(
        &self,
        prefix: &str,
        domain: &str,
        m: &Matched,
    ) -> Option<(String, f64, u64, u64, u64)> {
        match m {
            Matched::Limit { limit, key, .. } => {
                let (interval, burst, q, w) = limit.limiter.bucket_of(*key);
                Some((
                    format!("{prefix}:rls:{}:{key:016x}", limit.path),
                    interval,
                    burst,
                    q,
                    w,
                ))
            }
            Matched::Given { rpu, unit, key, .. } => {
                let w = unit.secs();
                let interval = w as f64 * 1e6 / (*rpu).max(1) as f64;
                Some((
                    format!("{prefix}:rls:{domain}:(request):{key:016x}"),
                    interval,
                    (*rpu).max(1),
                    *rpu,
                    w,
                ))
            }
            _ => None,
        }
    }

    /// Number of limits in the tree.
    pub fn limit_count(&self) -> usize {
        self.limits.len()
    }
}

/// The bucket of a descriptor: every entry's key and value, lengths first
/// so no two descriptors share a text.
fn bucket_text(entries: &[Entry<'_>]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!(
            "{}:{}{}:{}",
            e.key.len(),
            e.key,
            e.value.len(),
            e.value
        ));
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn insert(
    parent: &mut Node,
    n: &NodeSpec,
    domain: &str,
    parent_path: &str,
    spec: &RlsSpec,
    prev: Option<&Service>,
    decisions: &prometheus::IntCounterVec,
    limits: &mut HashMap<String, Arc<NodeLimit>>,
) {
    let path = match &n.value {
        Some(v) => format!("{parent_path}.{}_{v}", n.key),
        None => format!("{parent_path}.{}", n.key),
    };
    let mut node = Node::default();
    if let Some(l) = &n.rate_limit {
        if l.unlimited {
            node.unlimited = true;
        } else {
            let ls = limiter_spec(&path, l, spec);
            let limiter = prev
                .and_then(|p| p.limits.get(&path))
                .filter(|old| old.limiter.spec == ls)
                .map(|old| old.limiter.clone())
                .unwrap_or_else(|| Arc::new(Limiter::new(ls)));
            let nl = Arc::new(NodeLimit {
                name: l.name.clone().unwrap_or_else(|| path.clone()),
                path: path.clone(),
                spec: l.clone(),
                shadow: n.shadow_mode,
                limiter,
                counters: DECISIONS
                    .map(|x| decisions.with_label_values(&[domain, path.as_str(), x])),
            });
            limits.insert(path.clone(), nl.clone());
            node.limit = Some(nl);
        }
    }
    for c in &n.descriptors {
        insert(&mut node, c, domain, &path, spec, prev, decisions, limits);
    }
    let ch = parent.children.entry(n.key.clone()).or_default();
    match &n.value {
        None => ch.any = Some(Box::new(node)),
        Some(v) if v.ends_with('*') => ch.prefix.push((v.trim_end_matches('*').to_string(), node)),
        Some(v) => {
            ch.exact.insert(v.clone(), node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{RlsStore, RlsUnit};

    fn limit(rpu: u64, unit: RlsUnit) -> Option<LimitSpec> {
        Some(LimitSpec {
            name: None,
            requests_per_unit: rpu,
            unit,
            burst: rpu,
            unlimited: false,
            replaces: Vec::new(),
        })
    }

    fn node(key: &str, value: Option<&str>, l: Option<LimitSpec>, kids: Vec<NodeSpec>) -> NodeSpec {
        NodeSpec {
            key: key.into(),
            value: value.map(Into::into),
            rate_limit: l,
            shadow_mode: false,
            descriptors: kids,
        }
    }

    fn service(descriptors: Vec<NodeSpec>) -> Service {
        let spec = RlsSpec {
            store: RlsStore::Local,
            response_headers: false,
            max_keys: 1000,
            domains: vec![DomainSpec {
                domain: "edge".into(),
                descriptors,
            }],
        };
        let v = prometheus::IntCounterVec::new(
            prometheus::Opts::new("t", "t"),
            &["domain", "limit", "decision"],
        )
        .unwrap();
        Service::new(spec, None, &v)
    }

    fn e<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Entry<'a>> {
        pairs
            .iter()
            .map(|(k, v)| Entry { key: k, value: v })
            .collect()
    }

    fn path_of(m: &Matched) -> Option<String> {
        match m {
            Matched::Limit { limit, .. } => Some(limit.path.clone()),
            _ => None,
        }
    }

    #[test]
    fn walks_exact_then_prefix_then_any_and_needs_the_full_depth() {
        let s = service(vec![
            node("remote_address", None, limit(10, RlsUnit::Second), vec![]),
            node(
                "tenant",
                Some("gold"),
                limit(1000, RlsUnit::Minute),
                vec![node("path", None, limit(50, RlsUnit::Minute), vec![])],
            ),
            node("tenant", Some("trial-*"), limit(5, RlsUnit::Minute), vec![]),
            node("tenant", None, limit(100, RlsUnit::Minute), vec![]),
            node(
                "database",
                Some("users"),
                None,
                vec![node("op", None, limit(1, RlsUnit::Second), vec![])],
            ),
        ]);
        let p = |pairs: &[(&str, &str)]| path_of(&s.lookup("edge", &e(pairs), None, 1));
        assert_eq!(
            p(&[("remote_address", "10.0.0.1")]).as_deref(),
            Some("edge.remote_address")
        );
        assert_eq!(
            p(&[("tenant", "gold")]).as_deref(),
            Some("edge.tenant_gold")
        );
        assert_eq!(
            p(&[("tenant", "trial-42")]).as_deref(),
            Some("edge.tenant_trial-*")
        );
        assert_eq!(p(&[("tenant", "silver")]).as_deref(), Some("edge.tenant"));
        assert_eq!(
            p(&[("tenant", "gold"), ("path", "/a")]).as_deref(),
            Some("edge.tenant_gold.path")
        );
        // Deeper than the tree, or ending on a node without a limit: none.
        assert_eq!(p(&[("remote_address", "10.0.0.1"), ("x", "y")]), None);
        assert_eq!(p(&[("database", "users")]), None);
        assert_eq!(
            p(&[("database", "users"), ("op", "read")]).as_deref(),
            Some("edge.database_users.op")
        );
        assert_eq!(p(&[("unknown", "v")]), None);
        assert!(matches!(
            s.lookup("other", &e(&[("tenant", "gold")]), None, 1),
            Matched::None
        ));
    }

    #[test]
    fn each_value_has_its_own_bucket_and_a_denial_takes_nothing() {
        let s = service(vec![node(
            "remote_address",
            None,
            limit(2, RlsUnit::Minute),
            vec![],
        )]);
        let check = |ip: &str, now: u64| {
            let m = s.lookup("edge", &e(&[("remote_address", ip)]), None, 1);
            s.check_local(&m, now).unwrap().allowed
        };
        assert!(check("a", 0) && check("a", 0));
        assert!(!check("a", 0), "third in the minute");
        assert!(check("b", 0), "another value, another bucket");
        // 30 s later one token is back (2 per minute).
        assert!(check("a", 30_000_000_000));
        assert!(!check("a", 30_000_000_000));
    }

    #[test]
    fn hits_addend_takes_that_many_or_none() {
        let s = service(vec![node("k", None, limit(10, RlsUnit::Minute), vec![])]);
        let m = s.lookup("edge", &e(&[("k", "v")]), None, 7);
        let d = s.check_local(&m, 0).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let d = s.check_local(&m, 0).unwrap();
        assert!(!d.allowed, "7 more do not fit in 3");
        assert_eq!(d.remaining, 3, "a denial takes nothing");
        assert_eq!(d.retry_after, 24, "4 tokens at 6 s each");
        s.refund_local(&s.lookup("edge", &e(&[("k", "v")]), None, 7));
        assert_eq!(
            s.check_local(&s.lookup("edge", &e(&[("k", "v")]), None, 0), 0)
                .unwrap()
                .remaining,
            10
        );
    }

    #[test]
    fn unlimited_replaces_and_request_given_limits() {
        let mut premium = limit(100, RlsUnit::Second).unwrap();
        premium.name = Some("premium".into());
        premium.replaces = vec!["per-ip".into()];
        let mut per_ip = limit(1, RlsUnit::Minute).unwrap();
        per_ip.name = Some("per-ip".into());
        let mut free = limit(1, RlsUnit::Second).unwrap();
        free.unlimited = true;
        let s = service(vec![
            node("remote_address", None, Some(per_ip), vec![]),
            node("plan", Some("premium"), Some(premium), vec![]),
            node("internal", None, Some(free), vec![]),
        ]);
        assert!(matches!(
            s.lookup("edge", &e(&[("internal", "x")]), None, 1),
            Matched::Unlimited
        ));
        let mut ms = vec![
            s.lookup("edge", &e(&[("remote_address", "1.2.3.4")]), None, 1),
            s.lookup("edge", &e(&[("plan", "premium")]), None, 1),
        ];
        Service::replace(&mut ms);
        assert!(matches!(ms[0], Matched::Replaced(_)));
        assert!(matches!(ms[1], Matched::Limit { .. }));
        // A limit the request carries: its own bucket per quota.
        let g = s.lookup(
            "edge",
            &e(&[("remote_address", "1.2.3.4")]),
            Some((1, RlsUnit::Hour)),
            1,
        );
        assert!(s.check_local(&g, 0).unwrap().allowed);
        assert!(!s.check_local(&g, 0).unwrap().allowed);
        let g2 = s.lookup(
            "edge",
            &e(&[("remote_address", "1.2.3.4")]),
            Some((2, RlsUnit::Hour)),
            1,
        );
        assert!(
            s.check_local(&g2, 0).unwrap().allowed,
            "another quota, another bucket"
        );
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_limits() {
        let spec = |rpu| RlsSpec {
            store: RlsStore::Local,
            response_headers: false,
            max_keys: 1000,
            domains: vec![DomainSpec {
                domain: "edge".into(),
                descriptors: vec![
                    node("a", None, limit(1, RlsUnit::Minute), vec![]),
                    node("b", None, limit(rpu, RlsUnit::Minute), vec![]),
                ],
            }],
        };
        let v = prometheus::IntCounterVec::new(
            prometheus::Opts::new("t", "t"),
            &["domain", "limit", "decision"],
        )
        .unwrap();
        let one = Service::new(spec(1), None, &v);
        for k in ["a", "b"] {
            let m = one.lookup("edge", &e(&[(k, "v")]), None, 1);
            assert!(one.check_local(&m, 0).unwrap().allowed);
        }
        let two = Service::new(spec(5), Some(&one), &v);
        let a = two.lookup("edge", &e(&[("a", "v")]), None, 1);
        assert!(
            !two.check_local(&a, 0).unwrap().allowed,
            "a unchanged: still spent"
        );
        let b = two.lookup("edge", &e(&[("b", "v")]), None, 1);
        assert!(
            two.check_local(&b, 0).unwrap().allowed,
            "b changed: a new bucket"
        );
    }
}
