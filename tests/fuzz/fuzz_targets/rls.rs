//! Envoy's rate limit service in process: `extauth::rls::should_rate_limit`
//! (what a `serve: envoy` listener runs for each
//! `RateLimitService/ShouldRateLimit` call) on a tree with exact, prefix
//! and any-value nodes, nesting, shadow mode, unlimited, `replaces`, and
//! limits small enough to be reached.
//!
//! Input: byte 0 even: the rest is a `RateLimitRequest` in protobuf (prost
//! decodes it); odd: a small text form so that most inputs walk the tree:
//! line 1 the domain, then one descriptor per line as `key=value` pairs
//! separated by `,`, a line starting with `+N` sets `hits_addend` N and
//! one starting with `!` gives the next descriptor a limit override
//! (`!N` N per minute).
//!
//! Checks, beyond "no panic":
//! - the answer is a RateLimitResponse or INVALID_ARGUMENT;
//! - one status per descriptor, in order;
//! - OVER_LIMIT overall if and only if some status is OVER_LIMIT, and then
//!   the answer carries `retry-after` and a body;
//! - a status's `current_limit` is a configured limit (or the request's
//!   own), and `limit_remaining` never exceeds its bucket.
#![no_main]

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor,
    rate_limit_descriptor::{Entry, RateLimitOverride},
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, rate_limit_response::Code};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const CONFIG: &str = r#"
log: { format: json, level: error, access_log: false }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
rate_limit_service:
  response_headers: true
  max_keys: 1000
  domains:
    - domain: d
      descriptors:
        - key: a
          rate_limit: { name: per-a, unit: minute, requests_per_unit: 3 }
        - key: t
          value: gold
          rate_limit: { name: gold, unit: second, requests_per_unit: 5, burst: 8 }
          descriptors:
            - key: p
              rate_limit: { unit: minute, requests_per_unit: 1 }
        - key: t
          value: "tr*"
          shadow_mode: true
          rate_limit: { unit: hour, requests_per_unit: 2 }
        - key: t
          rate_limit: { unit: day, requests_per_unit: 4, replaces: [ { name: per-a } ] }
        - key: u
          rate_limit: { unlimited: true }
    - domain: e
      descriptors:
        - key: x
          descriptors:
            - key: y
              value: z
              rate_limit: { unit: week, requests_per_unit: 2 }
"#;

/// Limit names and bucket sizes of the tree.
const LIMITS: &[(&str, u32)] = &[
    ("per-a", 3),
    ("gold", 8),
    ("d.t_gold.p", 1),
    ("d.t_tr*", 2),
    ("d.t", 4),
    ("e.x.y_z", 2),
];

struct Env {
    rt: tokio::runtime::Runtime,
    shared: Arc<sift::state::Shared>,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = sift::config::load_str(CONFIG).unwrap_or_else(|e| panic!("config: {e}"));
        let metrics = Arc::new(sift::metrics::Metrics::new());
        let clock = sift::clock::Clock::new();
        let _g = rt.enter();
        let snap =
            sift::snapshot::Snapshot::build(cfg, Arc::from(CONFIG), None, &metrics, clock.now())
                .unwrap_or_else(|e| panic!("snapshot: {e:?}"));
        let shared = sift::state::Shared::new(snap, metrics, clock);
        drop(_g);
        Env { rt, shared }
    })
}

fn text_request(data: &[u8]) -> RateLimitRequest {
    let s = String::from_utf8_lossy(data);
    let mut lines = s.lines();
    let domain = lines.next().unwrap_or("d").to_string();
    let mut r = RateLimitRequest {
        domain,
        ..Default::default()
    };
    let mut given = None;
    for l in lines {
        if let Some(n) = l.strip_prefix('+') {
            r.hits_addend = n.trim().parse().unwrap_or(0);
            continue;
        }
        if let Some(n) = l.strip_prefix('!') {
            given = Some(RateLimitOverride {
                requests_per_unit: n.trim().parse().unwrap_or(1),
                unit: 2,
            });
            continue;
        }
        let entries = l
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect();
        r.descriptors.push(RateLimitDescriptor {
            entries,
            limit: given.take(),
            ..Default::default()
        });
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let req = if flags % 2 == 0 {
        match RateLimitRequest::decode(rest) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        text_request(rest)
    };
    let e = env();
    let snap = e.shared.snapshot.load_full();
    let r = e.rt.block_on(sift::extauth::rls::should_rate_limit(
        &e.shared, &snap, &req,
    ));
    let resp = match r {
        Ok(resp) => resp,
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            return;
        }
    };
    assert_eq!(resp.statuses.len(), req.descriptors.len());
    let any_over = resp
        .statuses
        .iter()
        .any(|s| s.code == Code::OverLimit as i32);
    assert_eq!(resp.overall_code == Code::OverLimit as i32, any_over);
    if any_over {
        assert!(
            resp.response_headers_to_add
                .iter()
                .any(|h| h.key == "retry-after")
        );
        assert!(!resp.raw_body.is_empty());
    }
    for (s, d) in resp.statuses.iter().zip(&req.descriptors) {
        let Some(l) = &s.current_limit else {
            assert_ne!(s.code, Code::OverLimit as i32);
            continue;
        };
        let cap = match &d.limit {
            Some(o) => o.requests_per_unit,
            None => {
                LIMITS
                    .iter()
                    .find(|(n, _)| *n == l.name)
                    .unwrap_or_else(|| panic!("unknown limit {:?}", l.name))
                    .1
            }
        };
        assert!(s.limit_remaining <= cap, "{s:?} over {cap}");
    }
});
