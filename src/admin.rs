//! The admin listener, on its own thread and runtime, never on the data
//! path: /healthz, /readyz, /metrics, /config, POST /reload.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

use crate::body::{self, Body};
use crate::reload::{Outcome, Reloader};
use crate::state::Shared;

pub async fn serve(tcp: tokio::net::TcpListener, shared: Arc<Shared>, reloader: Arc<Reloader>) {
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (shared, reloader) = (shared.clone(), reloader.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, reloader) = (shared.clone(), reloader.clone());
                async move { Ok::<_, std::convert::Infallible>(route(req, &shared, &reloader).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    reloader: &Arc<Reloader>,
) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let now = shared.clock.now();
            for c in shared.snapshot.load().clusters.values() {
                c.refresh_gauges(now);
            }
            let mut r = text(StatusCode::OK, &shared.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/config") => {
            let snap = shared.snapshot.load();
            let mut cfg = serde_json::to_value(&*snap.config).unwrap_or(Value::Null);
            redact(&mut cfg);
            json_response(
                StatusCode::OK,
                json!({ "generation": snap.generation, "config": cfg }),
            )
        }
        (&Method::POST, "/reload") => {
            let r = reloader.clone();
            let res = tokio::task::spawn_blocking(move || r.reload("admin")).await;
            match res {
                Ok(Ok(Outcome::Applied { generation })) => json_response(
                    StatusCode::OK,
                    json!({ "result": "applied", "generation": generation }),
                ),
                Ok(Ok(Outcome::Unchanged)) => {
                    let generation = shared.snapshot.load().generation;
                    json_response(
                        StatusCode::OK,
                        json!({ "result": "unchanged", "generation": generation }),
                    )
                }
                Ok(Err(errs)) => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "result": "rejected",
                        "errors": errs.0.iter().map(|e| json!({
                            "path": e.path, "line": e.line, "message": e.message
                        })).collect::<Vec<_>>()
                    }),
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n"),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /metrics /config, POST /reload\n",
        ),
    }
}

fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::copy_from_slice(s.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Replace the values of secret-looking keys with "[redacted]": config keys
/// and header names alike (`*key*`, `*secret*`, `*password*`, `*token*`,
/// `authorization`, `cookie`, `*credential*`).
pub fn redact(v: &mut Value) {
    const SECRET: &[&str] = &[
        "key",
        "secret",
        "password",
        "passwd",
        "token",
        "authorization",
        "cookie",
        "credential",
    ];
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = SECRET.iter().any(|s| k.contains(s));
                if secret && !val.is_null() {
                    *val = Value::String("[redacted]".into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_keys_only() {
        let mut v = json!({"tls": {"private_key": "/k.pem", "cert": "/c.pem"},
                           "auth": [{"token": "t"}], "max_idle_per_endpoint": 3});
        redact(&mut v);
        assert_eq!(v["tls"]["private_key"], "[redacted]");
        assert_eq!(v["tls"]["cert"], "/c.pem");
        assert_eq!(v["auth"][0]["token"], "[redacted]");
        assert_eq!(v["max_idle_per_endpoint"], 3);
        let mut h = json!({"set": {"authorization": "Bearer x", "x-api-key": "k", "x-frame-options": "DENY"}});
        redact(&mut h);
        assert_eq!(h["set"]["authorization"], "[redacted]");
        assert_eq!(h["set"]["x-api-key"], "[redacted]");
        assert_eq!(h["set"]["x-frame-options"], "DENY");
    }
}
