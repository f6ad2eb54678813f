//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's
//! global rate limit service (the `envoy.filters.http.ratelimit` filter's
//! calls), answered from the top-level `rate_limit_service`
//! ([`crate::policy::rls`]).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue as PbHeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse,
    rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit},
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use http::{Request, Response};

use crate::config::file::{RlsStore, RlsUnit};
use crate::policy::ratelimit::Decision;
use crate::policy::rls::{Entry, Matched, Service};
use crate::proxy::ConnInfo;
use crate::snapshot::Snapshot;
use crate::state::Shared;

struct Limits {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// Serve one gRPC call to the RateLimitService.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body> {
    let svc = RateLimitServiceServer::new(Limits { shared, conn })
        .max_decoding_message_size(1 << 20)
        .max_encoding_message_size(1 << 20);
    super::call_grpc(svc, req).await
}

#[tonic::async_trait]
impl RateLimitService for Limits {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let start = std::time::Instant::now();
        let req = request.into_inner();
        let snap = self.shared.snapshot.load_full();
        let result = should_rate_limit(&self.shared, &snap, &req).await;
        let decision = match &result {
            Ok(r) if r.overall_code == Code::OverLimit as i32 => "denied",
            Ok(_) => "allowed",
            Err(_) => "error",
        };
        self.shared
            .metrics
            .envoy_checks
            .with_label_values(&[&*self.conn.listener, "ratelimit", decision])
            .inc();
        if snap.config.log.access_log {
            // At most 16 descriptors of 8 entries, values cut at 128
            // bytes: a line stays small whatever the call holds.
            let cut = |v: &str| -> String {
                let mut end = v.len().min(128);
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v[..end].to_string()
            };
            let mut descriptors: Vec<String> = req
                .descriptors
                .iter()
                .take(16)
                .map(|d| {
                    d.entries
                        .iter()
                        .take(8)
                        .map(|e| format!("{}={}", cut(&e.key), cut(&e.value)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            if req.descriptors.len() > 16 {
                descriptors.push(format!("(+{} more)", req.descriptors.len() - 16));
            }
            let over: Vec<&str> = match &result {
                Ok(r) => r
                    .statuses
                    .iter()
                    .filter(|s| s.code == Code::OverLimit as i32)
                    .filter_map(|s| s.current_limit.as_ref().map(|l| l.name.as_str()))
                    .take(16)
                    .collect(),
                Err(_) => Vec::new(),
            };
            let descriptors = descriptors.join(" ");
            let limits = if over.is_empty() {
                "-".to_string()
            } else {
                over.join(" ")
            };
            let error = result.as_ref().err().map_or("-", |e| e.message());
            let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            // Written directly in the JSON format, as the proxy's access
            // lines are (crate::access_log), in the event's shape.
            if let Some(mut w) = crate::logging::access_json_writer() {
                if tracing::enabled!(target: "sift::access", tracing::Level::INFO) {
                    crate::access_log::write(&mut w, "envoy_ratelimit", |l| {
                        l.str("api", "ratelimit")
                            .str("listener", &self.conn.listener)
                            .display("remote", self.conn.remote)
                            .str("domain", &req.domain)
                            .str("descriptors", &descriptors)
                            .str("decision", decision)
                            .str("limits", &limits)
                            .str("error", error)
                            .f64("duration_ms", duration_ms);
                    });
                }
            } else {
                tracing::info!(
                    target: "sift::access",
                    api = "ratelimit",
                    listener = %self.conn.listener,
                    remote = %self.conn.remote,
                    domain = %req.domain,
                    descriptors = %descriptors,
                    decision,
                    limits,
                    error,
                    duration_ms,
                    "envoy_ratelimit"
                );
            }
        }
        result.map(tonic::Response::new)
    }
}

fn unit_from(code: i32) -> Option<RlsUnit> {
    Some(match Unit::try_from(code).ok()? {
        Unit::Second => RlsUnit::Second,
        Unit::Minute => RlsUnit::Minute,
        Unit::Hour => RlsUnit::Hour,
        Unit::Day => RlsUnit::Day,
        Unit::Week => RlsUnit::Week,
        Unit::Month => RlsUnit::Month,
        Unit::Year => RlsUnit::Year,
        Unit::Unknown => return None,
    })
}

fn unit_to(u: RlsUnit) -> Unit {
    match u {
        RlsUnit::Second => Unit::Second,
        RlsUnit::Minute => Unit::Minute,
        RlsUnit::Hour => Unit::Hour,
        RlsUnit::Day => Unit::Day,
        RlsUnit::Week => Unit::Week,
        RlsUnit::Month => Unit::Month,
        RlsUnit::Year => Unit::Year,
    }
}

/// The name of a match's limit (headers, `current_limit.name`) and the
/// limit Envoy is told.
fn limit_of(domain: &str, m: &Matched) -> Option<(String, RateLimit)> {
    let (name, rpu, unit) = match m {
        Matched::Limit { limit, .. } => (
            limit.name.clone(),
            limit.spec.requests_per_unit,
            limit.spec.unit,
        ),
        Matched::Given { rpu, unit, .. } => (format!("{domain}.request"), *rpu, *unit),
        _ => return None,
    };
    Some((
        name.clone(),
        RateLimit {
            name,
            requests_per_unit: u32::try_from(rpu).unwrap_or(u32::MAX),
            unit: unit_to(unit) as i32,
        },
    ))
}

/// Answer one ShouldRateLimit call.
pub async fn should_rate_limit(
    shared: &Shared,
    snap: &Snapshot,
    req: &RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    let Some(svc) = snap.rls.as_deref() else {
        return Err(tonic::Status::unimplemented(
            "sift has no rate_limit_service in its config",
        ));
    };
    if req.domain.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "rate limit domain must not be empty",
        ));
    }
    if req.descriptors.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "rate limit descriptor list must not be empty",
        ));
    }
    let request_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    let mut matches = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.iter().enumerate() {
        let entries: Vec<Entry<'_>> = d
            .entries
            .iter()
            .map(|e| Entry {
                key: &e.key,
                value: &e.value,
            })
            .collect();
        let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
        let given = match &d.limit {
            None => None,
            Some(l) => {
                let Some(unit) = unit_from(l.unit) else {
                    return Err(tonic::Status::invalid_argument(format!(
                        "descriptors[{i}].limit has unknown unit {}",
                        l.unit
                    )));
                };
                if l.requests_per_unit == 0 {
                    return Err(tonic::Status::invalid_argument(format!(
                        "descriptors[{i}].limit has 0 requests_per_unit"
                    )));
                }
                Some((u64::from(l.requests_per_unit), unit))
            }
        };
        matches.push(svc.lookup(&req.domain, &entries, given, hits));
    }
    Service::replace(&mut matches);
    let decisions = decide(shared, snap, svc, &req.domain, &matches).await?;
    Ok(respond(snap, svc, &req.domain, &matches, decisions).await)
}

/// Each match's decision, and whether its tokens were taken, from this
/// process's buckets or from Redis (one script per call for all its
/// buckets, all or nothing: up to `TAKE_ALL_MAX` buckets a script). On a
/// Redis error, what was taken is given back and the error goes to Envoy
/// (its `failure_mode_deny` decides).
async fn decide(
    shared: &Shared,
    snap: &Snapshot,
    svc: &Service,
    domain: &str,
    matches: &[Matched],
) -> Result<Vec<(Option<Decision>, bool)>, tonic::Status> {
    let hits_of = |m: &Matched| match m {
        Matched::Limit { hits, .. } | Matched::Given { hits, .. } => *hits,
        _ => 0,
    };
    if svc.spec.store == RlsStore::Local {
        let now = shared.clock.now();
        return Ok(matches
            .iter()
            .map(|m| {
                let d = svc.check_local(m, now);
                (d, d.is_some_and(|d| d.allowed) && hits_of(m) > 0)
            })
            .collect());
    }
    let (Some(redis), Some(prefix)) = (
        snap.redis.as_deref(),
        snap.config.redis.as_ref().map(|r| r.key_prefix.as_str()),
    ) else {
        return Err(tonic::Status::internal("no redis"));
    };
    let mut out: Vec<(Option<Decision>, bool)> = vec![(None, false); matches.len()];
    // (match index, quota, window) of each bucket asked, in order.
    let mut asked = Vec::new();
    let mut items = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        if let Some((key, interval, burst, quota, window)) = svc.redis_bucket(prefix, domain, m) {
            let shadow = matches!(m, Matched::Limit { limit, .. } if limit.shadow);
            asked.push((i, quota, window, interval));
            items.push((key, interval, burst, hits_of(m), shadow));
        }
    }
    let mut done = 0;
    for chunk in items.chunks(crate::policy::redis::TAKE_ALL_MAX) {
        match redis.take_all(chunk).await {
            Ok(got) => {
                for (k, (t, taken)) in got.into_iter().enumerate() {
                    let (i, quota, window, _) = asked[done + k];
                    out[i] = (Some(t.decision(quota, window)), taken);
                }
                done += chunk.len();
            }
            Err(e) => {
                snap.redis_errors
                    .with_label_values(&[e.reason(), "error"])
                    .inc();
                // Give back what the earlier scripts of this call took.
                for (k, item) in items[..done].iter().enumerate() {
                    let (i, _, _, interval) = asked[k];
                    if out[i].1 {
                        if let Err(e) = redis.give(&item.0, interval * item.3 as f64).await {
                            tracing::debug!(error = %e, "could not give a rate-limit token back");
                        }
                    }
                }
                return Err(tonic::Status::unavailable(format!("redis: {e}")));
            }
        }
    }
    Ok(out)
}

/// The answer: one status per descriptor, the overall code, and for the
/// client the 429's headers and body (or, with `response_headers`, the
/// RateLimit headers of the tightest limit). A refused request gives
/// back the tokens its admitted descriptors took.
async fn respond(
    snap: &Snapshot,
    svc: &Service,
    domain: &str,
    matches: &[Matched],
    decisions: Vec<(Option<Decision>, bool)>,
) -> RateLimitResponse {
    let shadow = |m: &Matched| matches!(m, Matched::Limit { limit, .. } if limit.shadow);
    let over = matches
        .iter()
        .zip(&decisions)
        .position(|(m, (d, _))| d.is_some_and(|d| !d.allowed) && !shadow(m));
    let mut statuses = Vec::with_capacity(matches.len());
    let mut tightest: Option<(String, Decision)> = None;
    for (m, &(d, taken)) in matches.iter().zip(&decisions) {
        let Some(mut d) = d else {
            statuses.push(DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: if matches!(m, Matched::Unlimited) {
                    u32::MAX
                } else {
                    0
                },
                ..Default::default()
            });
            continue;
        };
        let outcome = match (d.allowed, shadow(m)) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        svc.count(domain, m, outcome);
        if over.is_some() && taken {
            // Refused elsewhere: this descriptor's tokens go back.
            let hits = match m {
                Matched::Limit { hits, .. } | Matched::Given { hits, .. } => *hits,
                _ => 0,
            };
            if svc.spec.store == RlsStore::Local {
                svc.refund_local(m);
            } else if let (Some(redis), Some(prefix)) = (
                snap.redis.clone(),
                snap.config.redis.as_ref().map(|r| r.key_prefix.clone()),
            ) {
                if let Some((key, interval, ..)) = svc.redis_bucket(&prefix, domain, m) {
                    if hits > 0 {
                        if let Err(e) = redis.give(&key, interval * hits as f64).await {
                            tracing::debug!(error = %e, "could not give a rate-limit token back");
                        }
                    }
                }
            }
            d.remaining = d.remaining.saturating_add(hits);
        }
        let Some((name, limit)) = limit_of(domain, m) else {
            continue;
        };
        let code = if !d.allowed && !shadow(m) {
            Code::OverLimit
        } else {
            Code::Ok
        };
        let wait = if d.allowed { d.reset } else { d.retry_after };
        statuses.push(DescriptorStatus {
            code: code as i32,
            current_limit: Some(limit),
            limit_remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(PbDuration {
                seconds: i64::try_from(wait).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            quota: None,
        });
        if d.allowed
            && tightest
                .as_ref()
                .is_none_or(|(_, t)| d.remaining < t.remaining)
        {
            tightest = Some((name, d));
        }
    }
    let mut resp = RateLimitResponse {
        overall_code: if over.is_some() {
            Code::OverLimit as i32
        } else {
            Code::Ok as i32
        },
        statuses,
        ..Default::default()
    };
    if let Some(i) = over {
        let (name, decision) = match (limit_of(domain, &matches[i]), decisions[i].0) {
            (Some((n, _)), Some(d)) => (n, d),
            _ => return resp,
        };
        // sift's own 429 for this limit, shaped by `local_replies`: its
        // headers and body are what Envoy answers the client with.
        let answer = crate::error::ProxyError::RateLimited {
            policy: name,
            decision,
        }
        .local_reply(false, &snap.config.local_replies, None);
        let (parts, body) = answer.into_parts();
        for (k, v) in &parts.headers {
            if k == http::header::CONTENT_LENGTH {
                continue;
            }
            resp.response_headers_to_add
                .push(pb_header(k.as_str(), v.as_bytes()));
        }
        resp.raw_body = super::ready_bytes(body).to_vec();
    } else if svc.spec.response_headers {
        if let Some((name, d)) = tightest {
            for (k, v) in crate::error::ratelimit_headers(&name, &d) {
                resp.response_headers_to_add
                    .push(pb_header(k.as_str(), v.as_bytes()));
            }
        }
    }
    resp
}

fn pb_header(k: &str, v: &[u8]) -> PbHeaderValue {
    PbHeaderValue {
        key: k.to_string(),
        value: String::from_utf8_lossy(v).into_owned(),
        raw_value: Vec::new(),
    }
}
