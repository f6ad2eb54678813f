//! Remote JWKS (`jwt_providers[].remote_jwks`, Envoy's `remote_jwks`): one
//! task per key set on the admin runtime fetches it through its cluster
//! (the cluster's endpoints in turn, its TLS and connect timeout, a fresh
//! connection per fetch), keeps the last good set, refreshes it every
//! `refresh`, and retries a failed fetch after 1 s, doubling up to
//! `refresh`. A bad answer never replaces good keys. The task holds a
//! `Weak` of its cell, so it ends when no snapshot uses the key set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, header};
use http_body_util::BodyExt;

use crate::jwt::{Jwk, RemoteJwks};

/// Largest JWKS document read.
const MAX_JWKS: usize = 1 << 20;

/// Start the fetch task of `cell` if none runs; a no-op outside a Tokio
/// runtime (`sift check`).
pub fn start(cell: &Arc<RemoteJwks>, provider: &str, fetches: prometheus::IntCounterVec) {
    if cell.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        cell.started.store(false, Ordering::Release);
        return;
    };
    rt.spawn(run(Arc::downgrade(cell), provider.to_string(), fetches));
}

async fn run(weak: Weak<RemoteJwks>, provider: String, fetches: prometheus::IntCounterVec) {
    let turn = AtomicUsize::new(0);
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = {
            let Some(cell) = weak.upgrade() else {
                return;
            };
            match fetch(&cell, &turn).await {
                Ok(keys) => {
                    fetches.with_label_values(&[&provider, "ok"]).inc();
                    if **cell.keys.load() != keys {
                        tracing::info!(provider = %provider, uri = %cell.uri, keys = keys.len(), "JWKS fetched");
                        cell.keys.store(Arc::new(keys));
                    }
                    backoff = Duration::from_secs(1);
                    cell.refresh
                }
                Err(why) => {
                    fetches.with_label_values(&[&provider, "failed"]).inc();
                    let kept = cell.keys.load().len();
                    tracing::warn!(provider = %provider, uri = %cell.uri, error = %why, keys_kept = kept, "JWKS fetch failed");
                    let w = backoff.min(cell.refresh);
                    backoff = (backoff * 2).min(cell.refresh);
                    w
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One fetch through the cluster's next endpoint.
async fn fetch(cell: &RemoteJwks, turn: &AtomicUsize) -> Result<Vec<Jwk>, String> {
    let cluster = cell
        .via
        .lock()
        .map_err(|_| "state poisoned".to_string())?
        .upgrade()
        .ok_or_else(|| format!("cluster {:?} is not running", cell.cluster))?;
    let n = cluster.endpoints.len();
    if n == 0 {
        return Err(format!("cluster {:?} has no endpoints", cell.cluster));
    }
    let endpoint = &cluster.endpoints[turn.fetch_add(1, Ordering::Relaxed) % n].endpoint;
    let host = cell.uri.authority().map_or("", |a| a.as_str());
    let path = cell.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = match cluster.spec.protocol {
        // HTTP/1.1: origin form and a Host header; HTTP/2: :authority.
        crate::config::file::UpstreamProtocol::Http1 => path.to_string(),
        crate::config::file::UpstreamProtocol::Http2 => cell.uri.to_string(),
    };
    let req = Request::get(target)
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(header::USER_AGENT, "sift-jwks")
        .body(crate::body::empty())
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        let resp = cluster
            .exchange_fresh(endpoint, req)
            .await
            .map_err(|e| format!("{}: {e}", endpoint.authority))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
        crate::jwt::parse_jwks(text).map_err(|e| format!("not a usable JWKS: {e}"))
    };
    match tokio::time::timeout(cell.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cell.timeout)),
    }
}
