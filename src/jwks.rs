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

/// One fetch through the cluster's next endpoint: the JWKS, after the
/// discovery document when the provider uses discovery.
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
    let exchange = async {
        let jwks_uri = match &cell.discover {
            None => cell.uri.clone(),
            Some(issuer) => {
                let doc = get(&cluster, endpoint, &cell.uri, "application/json").await?;
                jwks_uri_of(&doc, issuer)
                    .map_err(|e| format!("discovery document {}: {e}", cell.uri))?
            }
        };
        let body = get(
            &cluster,
            endpoint,
            &jwks_uri,
            "application/json, application/jwk-set+json",
        )
        .await?;
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
        crate::jwt::parse_jwks(text).map_err(|e| format!("not a usable JWKS: {e}"))
    };
    match tokio::time::timeout(cell.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cell.timeout)),
    }
}

/// GET `uri` (its host as Host) from `endpoint` of `cluster`: a 200's body,
/// at most [`MAX_JWKS`] bytes.
async fn get(
    cluster: &crate::upstream::Cluster,
    endpoint: &crate::config::model::Endpoint,
    uri: &http::Uri,
    accept: &'static str,
) -> Result<bytes::Bytes, String> {
    let host = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = match cluster.spec.protocol {
        // HTTP/1.1: origin form and a Host header; HTTP/2: :authority.
        crate::config::file::UpstreamProtocol::Http1
        | crate::config::file::UpstreamProtocol::Client => path.to_string(),
        crate::config::file::UpstreamProtocol::Http2 => uri.to_string(),
    };
    let req = Request::get(target)
        .header(header::HOST, host)
        .header(header::ACCEPT, accept)
        .header(header::USER_AGENT, "sift-jwks")
        .body(crate::body::empty())
        .map_err(|e| format!("request: {e}"))?;
    let resp = cluster
        .exchange_fresh(endpoint, req)
        .await
        .map_err(|e| format!("{}: {e}", endpoint.authority))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("{uri}: status {}", resp.status().as_u16()));
    }
    Ok(http_body_util::Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("{uri}: body: {e}"))?
        .to_bytes())
}

/// The `jwks_uri` of an OpenID Connect discovery document, which must name
/// `issuer` (OpenID Connect Discovery 1.0 §4.3: a document for another
/// issuer is refused) and an http:// or https:// URI with a host.
pub fn jwks_uri_of(doc: &[u8], issuer: &str) -> Result<http::Uri, String> {
    let v: serde_json::Value = serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("issuer").and_then(|i| i.as_str()) {
        Some(i) if i == issuer => {}
        Some(i) => return Err(format!("names issuer {i:?}, not {issuer:?}")),
        None => return Err("has no issuer".into()),
    }
    let text = v
        .get("jwks_uri")
        .and_then(|u| u.as_str())
        .ok_or("has no jwks_uri")?;
    match text.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(u)
        }
        _ => Err(format!(
            "jwks_uri {text:?} is not an http:// or https:// URI with a host"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::jwks_uri_of;

    #[test]
    fn discovery_documents_name_their_issuer_and_jwks() {
        let ok = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/keys","token_endpoint":"x"}"#;
        assert_eq!(
            jwks_uri_of(ok, "https://idp.example").unwrap(),
            "https://idp.example/keys"
        );
        for (doc, issuer, why) in [
            (&ok[..], "https://other.example", "names issuer"),
            (
                br#"{"jwks_uri":"https://idp.example/keys"}"#,
                "https://idp.example",
                "has no issuer",
            ),
            (
                br#"{"issuer":"https://idp.example"}"#,
                "https://idp.example",
                "has no jwks_uri",
            ),
            (
                br#"{"issuer":"https://idp.example","jwks_uri":"/keys"}"#,
                "https://idp.example",
                "is not an http",
            ),
            (b"<html>", "https://idp.example", "not JSON"),
        ] {
            let e = jwks_uri_of(doc, issuer).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
