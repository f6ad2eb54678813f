//! A route's `external_rate_limit`: before forwarding, sift asks a rate
//! limit service over Envoy's `RateLimitService/ShouldRateLimit` (a
//! central envoyproxy/ratelimit, or sift's own `rate_limit_service`), with
//! descriptors made as Envoy's route `rate_limits` actions make them.
//!
//! - OK: the request goes on with the answer's `request_headers_to_add`,
//!   and its `response_headers_to_add` go on the client's response.
//! - OVER_LIMIT: 429 `rate-limited`, named after the descriptor that is
//!   over (its `current_limit`), with `Retry-After` and the RateLimit
//!   headers from its status, then the answer's own response headers.
//! - No answer in `timeout`: the request goes on, or with
//!   `failure_mode_deny` 503 `ratelimit-unavailable` (Envoy's
//!   failure_mode_deny).

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, rate_limit_response::Code, rate_limit_response::rate_limit::Unit,
    rate_limit_service_client::RateLimitServiceClient,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::config::units::Dur;
use crate::error::ProxyError;
use crate::policy::outlier::Observed;
use crate::upstream::Cluster;

/// The validated `external_rate_limit` of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExternalRateLimitSpec {
    pub cluster: String,
    pub domain: String,
    pub descriptors: Vec<Vec<Action>>,
    pub timeout: Dur,
    pub failure_mode_deny: bool,
    /// Tokens a request takes (0: the service's default, 1).
    pub hits_addend: u32,
}

/// How one descriptor entry is made.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RemoteAddress,
    GenericKey {
        key: String,
        value: String,
    },
    RequestHeader {
        #[serde(serialize_with = "ser_name")]
        name: HeaderName,
        /// `:path`, `:method` or `:authority` (read from the request
        /// line), else empty.
        pseudo: String,
        key: String,
        skip_if_absent: bool,
    },
    DestinationCluster,
    Identity {
        key: String,
    },
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<crate::config::model::HeaderMatch>,
    },
    QueryParameter {
        name: String,
        key: String,
        skip_if_absent: bool,
    },
}

/// `ip` masked to its first `v4` (IPv4) or `v6` (IPv6) bits, as Envoy's
/// `masked_remote_address` writes it: `10.1.0.0/16`.
pub fn masked(ip: std::net::IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        std::net::IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            format!("{}/{}", std::net::Ipv4Addr::from(bits & mask), v4.min(32))
        }
        std::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            format!("{}/{}", std::net::Ipv6Addr::from(bits & mask), v6.min(128))
        }
    }
}

/// The first value of query parameter `name` in `path` (after its `?`),
/// percent-decoded with `+` as a space.
fn query_value(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (*crate::snapshot::query_decode(k) == *name.as_bytes())
            .then(|| String::from_utf8_lossy(&crate::snapshot::query_decode(v)).into_owned())
    })
}

fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// What the request brings to the actions.
pub struct Client<'a> {
    pub ip: &'a str,
    pub headers: &'a HeaderMap,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub host: &'a str,
    pub cluster: &'a str,
    pub identity: Option<&'a str>,
}

/// The descriptors of one request: a descriptor any of whose actions
/// cannot be made is left out (as Envoy does).
pub fn descriptors(spec: &ExternalRateLimitSpec, c: &Client<'_>) -> Vec<RateLimitDescriptor> {
    let entry = |k: &str, v: &str| Entry {
        key: k.to_string(),
        value: v.to_string(),
    };
    let mut out = Vec::new();
    'descriptor: for actions in &spec.descriptors {
        let mut entries = Vec::with_capacity(actions.len());
        for a in actions {
            match a {
                Action::RemoteAddress => entries.push(entry("remote_address", c.ip)),
                Action::GenericKey { key, value } => entries.push(entry(key, value)),
                Action::RequestHeader {
                    name,
                    pseudo,
                    key,
                    skip_if_absent,
                } => {
                    let v = match pseudo.as_str() {
                        ":path" => Some(c.path.to_string()),
                        ":method" => Some(c.method.as_str().to_string()),
                        ":authority" => Some(c.host.to_string()),
                        _ => {
                            let mut vals = c.headers.get_all(name).iter().peekable();
                            vals.peek().is_some().then(|| {
                                vals.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                        }
                    };
                    match v {
                        Some(v) => entries.push(entry(key, &v)),
                        None if *skip_if_absent => {}
                        None => continue 'descriptor,
                    }
                }
                Action::DestinationCluster => entries.push(entry("destination_cluster", c.cluster)),
                Action::Identity { key } => match c.identity {
                    Some(id) => entries.push(entry(key, id)),
                    None => continue 'descriptor,
                },
                Action::MaskedRemoteAddress { v4, v6 } => match c.ip.parse() {
                    Ok(ip) => entries.push(entry("masked_remote_address", &masked(ip, *v4, *v6))),
                    Err(_) => continue 'descriptor,
                },
                Action::HeaderValueMatch {
                    key,
                    value,
                    expect_match,
                    headers,
                } => {
                    if crate::snapshot::headers_match(headers, c.headers) != *expect_match {
                        continue 'descriptor;
                    }
                    entries.push(entry(key, value));
                }
                Action::QueryParameter {
                    name,
                    key,
                    skip_if_absent,
                } => match query_value(c.path, name) {
                    Some(v) => entries.push(entry(key, &v)),
                    None if *skip_if_absent => {}
                    None => continue 'descriptor,
                },
            }
        }
        if !entries.is_empty() {
            out.push(RateLimitDescriptor {
                entries,
                ..Default::default()
            });
        }
    }
    out
}

/// What an OK answer adds.
#[derive(Debug, Default)]
pub struct Allowed {
    pub request: Vec<(HeaderName, HeaderValue)>,
    pub response: Vec<(HeaderName, HeaderValue)>,
}

/// The outcome, for `sift_external_ratelimit_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    OverLimit,
    ErrorAllowed,
    ErrorDenied,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::OverLimit,
        Outcome::ErrorAllowed,
        Outcome::ErrorDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OverLimit => "over_limit",
            Outcome::ErrorAllowed => "error_allowed",
            Outcome::ErrorDenied => "error_denied",
        }
    }
}

fn unit_secs(u: i32) -> u64 {
    match Unit::try_from(u) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 7 * 86_400,
        Ok(Unit::Month) => 30 * 86_400,
        Ok(Unit::Year) => 365 * 86_400,
        _ => 1,
    }
}

fn pb_headers(
    hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValue],
) -> Vec<(HeaderName, HeaderValue)> {
    hs.iter()
        .filter_map(|h| {
            let n = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                h.raw_value.as_slice()
            };
            let v = HeaderValue::from_bytes(raw).ok()?;
            (!matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "host"
            ))
            .then_some((n, v))
        })
        .collect()
}

/// Ask the service. `Ok` to go on; `Err` with the client's answer.
pub async fn check(
    spec: &ExternalRateLimitSpec,
    cluster: &Arc<Cluster>,
    descriptors: Vec<RateLimitDescriptor>,
    clock: crate::clock::Clock,
    route: &str,
) -> (Outcome, Result<Allowed, ProxyError>) {
    let ask = async {
        let (index, _guard) = cluster
            .pick(clock.now(), None, None)
            .ok_or_else(|| "no healthy endpoint".to_string())?;
        let _slot = cluster
            .request_slot()
            .map_err(|_| "circuit breaker open".to_string())?;
        let mut grpc = RateLimitServiceClient::new(crate::upstream::GrpcEndpoint {
            cluster: cluster.clone(),
            index,
        });
        let r = grpc
            .should_rate_limit(RateLimitRequest {
                domain: spec.domain.clone(),
                descriptors,
                hits_addend: spec.hits_addend,
            })
            .await;
        match r {
            Ok(r) => {
                cluster.observe(index, Observed::of_status(200), clock.now());
                Ok(r.into_inner())
            }
            Err(s) => {
                cluster.observe(index, Observed::LocalGatewayError, clock.now());
                Err(format!("gRPC {:?}: {}", s.code(), s.message()))
            }
        }
    };
    let r = tokio::time::timeout(spec.timeout.0, ask)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    let resp = match r {
        Ok(resp) => resp,
        Err(why) => {
            tracing::warn!(route, cluster = %spec.cluster, error = %why, "rate limit service did not answer");
            return if spec.failure_mode_deny {
                (
                    Outcome::ErrorDenied,
                    Err(ProxyError::RateLimitUnavailable {
                        policy: spec.domain.clone(),
                        reason: why,
                    }),
                )
            } else {
                (Outcome::ErrorAllowed, Ok(Allowed::default()))
            };
        }
    };
    if resp.overall_code == Code::OverLimit as i32 {
        let over = resp
            .statuses
            .iter()
            .find(|s| s.code == Code::OverLimit as i32);
        let (name, decision) = match over.and_then(|s| s.current_limit.as_ref().map(|l| (s, l))) {
            Some((s, l)) => {
                let wait = s
                    .duration_until_reset
                    .as_ref()
                    .map_or(1, |d| u64::try_from(d.seconds).unwrap_or(0).max(1));
                (
                    if l.name.is_empty() {
                        spec.domain.clone()
                    } else {
                        l.name.clone()
                    },
                    crate::policy::ratelimit::Decision {
                        allowed: false,
                        remaining: u64::from(s.limit_remaining),
                        retry_after: wait,
                        reset: wait,
                        quota: u64::from(l.requests_per_unit),
                        window: unit_secs(l.unit),
                    },
                )
            }
            None => (
                spec.domain.clone(),
                crate::policy::ratelimit::Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after: 1,
                    reset: 1,
                    quota: 0,
                    window: 1,
                },
            ),
        };
        return (
            Outcome::OverLimit,
            Err(ProxyError::RateLimitedRemote {
                policy: name,
                decision,
                headers: pb_headers(&resp.response_headers_to_add),
            }),
        );
    }
    (
        Outcome::Ok,
        Ok(Allowed {
            request: pb_headers(&resp.request_headers_to_add)
                .into_iter()
                .filter(|(n, _)| !n.as_str().starts_with("x-sift-"))
                .collect(),
            response: pb_headers(&resp.response_headers_to_add),
        }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_follow_envoys_form() {
        let m = |ip: &str, v4, v6| super::masked(ip.parse().unwrap(), v4, v6);
        assert_eq!(m("10.1.2.3", 16, 128), "10.1.0.0/16");
        assert_eq!(m("10.1.2.3", 32, 128), "10.1.2.3/32");
        assert_eq!(m("10.1.2.3", 0, 128), "0.0.0.0/0");
        assert_eq!(m("2001:db8:1:2::7", 32, 48), "2001:db8:1::/48");
        assert_eq!(m("2001:db8:1:2::7", 32, 32), "2001:db8::/32");
        assert_eq!(m("2001:db8:1:2::7", 32, 0), "::/0");
        assert_eq!(
            super::query_value("/a?x=1&key=a%2Fb+c", "key").as_deref(),
            Some("a/b c")
        );
        assert_eq!(
            super::query_value("/a?key=1&key=2", "key").as_deref(),
            Some("1")
        );
        assert_eq!(super::query_value("/a?keys=1", "key"), None);
        assert_eq!(super::query_value("/a", "key"), None);
    }
}
