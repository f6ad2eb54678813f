//! The admin listener, on its own thread and runtime, never on the data
//! path: the endpoints of [`INDEX`].

use std::collections::HashMap;
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
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            // A successor serves the admin API on this same socket now.
            () = shared.until_handed_over() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (shared, reloader) = (shared.clone(), reloader.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, reloader) = (shared.clone(), reloader.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(route(req, peer, &shared, &reloader).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `GET /`: every admin endpoint, one a line (also the 404 hint).
pub const INDEX: &str = "\
sift admin endpoints:
  GET  /healthz                    liveness: 200 ok
  GET  /readyz                     readiness: 503 while starting, draining or set to fail
  POST /healthcheck/fail           make /readyz fail while sift keeps serving (before maintenance)
  POST /healthcheck/ok             undo /healthcheck/fail
  POST /quitquitquit               stop as on SIGTERM: not ready, shutdown.delay, drain, exit 0 (also /shutdown)
  GET  /metrics                    Prometheus text format
  GET  /config                     the running config (secrets redacted) and its generation
  GET  /clusters                   clusters and endpoints: health, ejection, requests in flight
  POST /reload                     re-read the config file; a bad one is rejected, the old one keeps serving
  GET  /canary                     canary weights, rollout state and per-version stats
  PUT  /canary/ROUTE               set weights: {\"weights\":{\"stable\":90,\"canary\":10}}
  POST /canary/ROUTE/rollout       start (or restart) the rollout at its first step
  POST /canary/ROUTE/rollback      canary weight to 0 % now
  GET  /logging                    the log filter in force
  POST /logging?level=LEVEL        set the log level (error, warn, info, debug, trace, off) now
  POST /logging?filter=DIRECTIVES  set the log filter (RUST_LOG syntax: info,sift::proxy=debug)
  POST /reopen_logs                reopen the access log file (after logrotate moved it; also SIGUSR1)
  GET  /filters                    the filters and their models
  GET  /cache                      routes' caches: entries, bytes, limits
  POST /cache/purge?route=R&prefix=/p  drop cached answers (every route, every path by default)
  POST /filters/NAME/learn         JSONL of {\"text\",\"label\"} (spam) or {\"log\",\"label\"} (cilog) examples
";

/// `GET /clusters`: every cluster's endpoints as the balancer sees them
/// (Envoy's `/clusters`), sorted by name.
fn clusters_view(snap: &crate::snapshot::Snapshot, now: u64) -> Value {
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let clusters: Vec<Value> = names
        .into_iter()
        .filter_map(|n| snap.clusters.get(n))
        .map(|c| {
            let health = c.health.as_ref();
            let endpoints: Vec<Value> = c
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut v = json!({
                        "address": e.endpoint.id(),
                        "ejected": c.outlier.as_ref().is_some_and(|o| !o.available(i, now)),
                        "requests_in_flight": e.inflight.load(std::sync::atomic::Ordering::Relaxed),
                        "idle_connections": c.idle_connections(i),
                    });
                    if let Some(&p) = c
                        .spec
                        .priorities
                        .get(i)
                        .filter(|_| c.spec.priorities.iter().any(|&p| p != 0))
                    {
                        v["priority"] = json!(p);
                    }
                    if e.endpoint.addr.is_some() {
                        v["hostname"] = json!(e.endpoint.authority.as_str());
                    }
                    if let Some(h) = health {
                        v["healthy"] = json!(h.healthy(i));
                        v["checked"] = json!(h.checked(i));
                        v["last_failure"] = json!(h.last_failure(i));
                    }
                    // slow_start: the share of a full endpoint it gets now.
                    if let Some(ss) = &c.spec.slow_start {
                        let since = e.warming_since.load(std::sync::atomic::Ordering::Relaxed);
                        let f = if since == 0 {
                            1.0
                        } else {
                            ss.factor(now.saturating_sub(since))
                        };
                        v["slow_start_factor"] = json!((f * 1000.0).round() / 1000.0);
                    }
                    v
                })
                .collect();
            let mut v = json!({ "name": c.name(), "endpoints": endpoints });
            if let Some(h) = health {
                v["health_check"] = json!({
                    "healthy": h.healthy_count(),
                    "panic": h.panic(),
                });
            }
            let (panic, shares) = c.priority_shares(now);
            if !shares.is_empty() {
                let load: serde_json::Map<String, serde_json::Value> = shares
                    .iter()
                    .map(|(p, s)| (p.to_string(), json!((s * 10.0).round() / 10.0)))
                    .collect();
                v["priority_load"] = json!(load);
                v["priority_panic"] = json!(panic);
            }
            v
        })
        .collect();
    json!({ "generation": snap.generation, "clusters": clusters })
}

async fn route(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    shared: &Shared,
    reloader: &Arc<Reloader>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    // Writes (reload, shutdown, weights, learning, purges) only from the
    // peers admin.write_from names: loopback by default, so an admin
    // address open to the pod network for probes and scrapes does not let
    // every pod stop sift or move its traffic.
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && !shared
            .snapshot
            .load()
            .config
            .admin
            .takes_writes_from(peer.ip())
    {
        tracing::warn!(
            peer = %peer,
            method = %req.method(),
            path = %path,
            "admin write refused: the peer is not in admin.write_from"
        );
        return text(
            StatusCode::FORBIDDEN,
            &format!(
                "{} {path} is taken only from the addresses in admin.write_from (default loopback); {} is not one\n",
                req.method(),
                peer.ip()
            ),
        );
    }
    if path == "/canary" || path.starts_with("/canary/") {
        return canary(req, &path, shared).await;
    }
    if path == "/filters" || path.starts_with("/filters/") {
        return filters(req, &path, shared).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => text(StatusCode::OK, INDEX),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if shared.failing.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failing: set by POST /healthcheck/fail (POST /healthcheck/ok undoes it)\n",
                )
            } else if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let now = shared.clock.now();
            let snap = shared.snapshot.load();
            for c in snap.clusters.values() {
                c.refresh_gauges(now);
            }
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for (l, tls) in snap.config.listeners.iter().zip(snap.listener_tls.iter()) {
                let Some(tls) = tls else { continue };
                for (cert, not_after) in &tls.current().expiries {
                    shared
                        .metrics
                        .tls_cert_expiry
                        .with_label_values(&[l.name.as_str(), cert.as_str()])
                        .set((not_after - unix) as f64);
                }
            }
            for (name, c) in &snap.clusters {
                let Some((_, until)) = c.tls().and_then(|t| t.current().client_cert) else {
                    continue;
                };
                shared
                    .metrics
                    .upstream_tls_cert_expiry
                    .with_label_values(&[name.as_str()])
                    .set((until - unix) as f64);
            }
            for r in &snap.routes {
                let Some((a, _)) = &r.adaptive else { continue };
                let name = r.spec.name.as_str();
                let m = &shared.metrics;
                m.adaptive_limit
                    .with_label_values(&[name])
                    .set(i64::from(a.limit()));
                let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
                m.adaptive_min_rtt
                    .with_label_values(&[name])
                    .set(secs(a.min_rtt()));
                m.adaptive_sample_rtt
                    .with_label_values(&[name])
                    .set(secs(a.sample_rtt()));
            }
            for r in &snap.routes {
                let Some(c) = &r.cache else { continue };
                let (n, bytes) = c.usage();
                let name = r.spec.name.as_str();
                let m = &shared.metrics;
                m.cache_entries.with_label_values(&[name]).set(n as i64);
                m.cache_bytes.with_label_values(&[name]).set(bytes as i64);
            }
            for r in &snap.routes {
                let Some(c) = &r.canary else { continue };
                for (b, w) in r.spec.backends.iter().zip(c.weights().iter()) {
                    shared
                        .metrics
                        .canary_weight
                        .with_label_values(&[r.spec.name.as_str(), b.cluster.as_str()])
                        .set(i64::from(*w));
                }
                shared
                    .metrics
                    .canary_rollout_step
                    .with_label_values(&[r.spec.name.as_str()])
                    .set(c.step_index());
            }
            let mut r = text(StatusCode::OK, &shared.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/clusters") => {
            let snap = shared.snapshot.load();
            json_response(StatusCode::OK, clusters_view(&snap, shared.clock.now()))
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
        (&Method::GET, "/cache") => {
            let snap = shared.snapshot.load();
            let routes: Vec<Value> = snap
                .routes
                .iter()
                .filter_map(|r| {
                    let c = r.cache.as_ref()?;
                    let (entries, bytes) = c.usage();
                    Some(json!({
                        "route": r.spec.name,
                        "entries": entries,
                        "bytes": bytes,
                        "max_bytes": c.spec.max_bytes,
                        "max_object_bytes": c.spec.max_object_bytes,
                    }))
                })
                .collect();
            json_response(StatusCode::OK, json!({ "routes": routes }))
        }
        (&Method::POST, "/cache/purge") => purge(req.uri().query(), shared),
        (&Method::GET, "/logging") => match crate::logging::current_filter() {
            Some(f) => json_response(StatusCode::OK, json!({ "filter": f })),
            None => text(StatusCode::NOT_FOUND, "sift did not install the logger\n"),
        },
        (&Method::POST, "/logging") => logging(req.uri().query()),
        (&Method::POST, "/reopen_logs") => match crate::logging::reopen_access_log() {
            Ok(Some(p)) => {
                tracing::info!(path = %p.display(), trigger = "admin", "access log reopened");
                json_response(
                    StatusCode::OK,
                    json!({ "reopened": p.display().to_string() }),
                )
            }
            Ok(None) => json_response(
                StatusCode::OK,
                json!({ "reopened": null, "note": "access-log lines go to stdout: no file to reopen" }),
            ),
            Err(e) => {
                tracing::error!(error = %e, trigger = "admin", "access log not reopened; the old file stays in use");
                json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": e }))
            }
        },
        (&Method::POST, "/healthcheck/fail") => {
            shared.failing.store(true, Ordering::Release);
            tracing::warn!("readiness set to fail by POST /healthcheck/fail; still serving");
            text(StatusCode::OK, "readiness now fails; still serving\n")
        }
        // Envoy's /quitquitquit, linkerd's /shutdown: stop as on SIGTERM
        // (not ready, shutdown.delay, drain), e.g. when a Job's main
        // container is done and its sidecar must end too.
        (&Method::POST, "/quitquitquit" | "/shutdown") => {
            tracing::warn!(path = %path, "stop asked for on the admin API");
            shared.request_quit();
            text(StatusCode::OK, "stopping: not ready, draining\n")
        }
        (&Method::POST, "/healthcheck/ok") => {
            shared.failing.store(false, Ordering::Release);
            tracing::info!("readiness restored by POST /healthcheck/ok");
            text(StatusCode::OK, "readiness restored\n")
        }
        (
            _,
            "/" | "/healthz" | "/readyz" | "/metrics" | "/config" | "/clusters" | "/reload"
            | "/healthcheck/fail" | "/healthcheck/ok" | "/logging" | "/cache" | "/cache/purge"
            | "/quitquitquit" | "/shutdown" | "/reopen_logs",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, &format!("not found\n{INDEX}")),
    }
}

/// `POST /cache/purge?route=R&prefix=/p`: drop cached answers, of one
/// route or all, under a path prefix or all (nginx's `proxy_cache_purge`).
fn purge(query: Option<&str>, shared: &Shared) -> Response<Body> {
    let (mut route, mut prefix) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = String::from_utf8_lossy(&crate::snapshot::query_decode(v)).into_owned();
        match k {
            "route" => route = Some(v),
            "prefix" if v.starts_with('/') => prefix = Some(v),
            "prefix" => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("prefix {v:?} must start with /\n"),
                );
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {k:?}: use route=NAME and prefix=/path\n"),
                );
            }
        }
    }
    let snap = shared.snapshot.load();
    let cached: Vec<&crate::snapshot::Route> =
        snap.routes.iter().filter(|r| r.cache.is_some()).collect();
    if let Some(name) = &route
        && !cached.iter().any(|r| r.spec.name == *name)
    {
        let known: Vec<&str> = cached.iter().map(|r| r.spec.name.as_str()).collect();
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "no route {name:?} with a cache (routes with one: {})\n",
                known.join(", ")
            ),
        );
    }
    let mut purged = 0;
    for r in cached {
        if route.as_ref().is_none_or(|n| *n == r.spec.name)
            && let Some(c) = &r.cache
        {
            purged += c.purge(prefix.as_deref());
        }
    }
    tracing::info!(
        route = route.as_deref().unwrap_or("*"),
        prefix = prefix.as_deref().unwrap_or("/"),
        purged,
        "cache purged"
    );
    json_response(StatusCode::OK, json!({ "purged": purged }))
}

/// `POST /logging?level=L` or `?filter=DIRECTIVES`: the log filter, now
/// (Envoy's `/logging?level=`, linkerd2-proxy's `/proxy-log-level`). Not
/// kept across a restart; a reload that changes `log.level` sets it again.
fn logging(query: Option<&str>) -> Response<Body> {
    const USAGE: &str = "use POST /logging?level=(error|warn|info|debug|trace|off) or POST /logging?filter=DIRECTIVES (RUST_LOG syntax)\n";
    let mut want = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = String::from_utf8_lossy(&crate::snapshot::query_decode(v)).into_owned();
        let filter = match k {
            "level" => {
                let l = v.to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace", "off"].contains(&l.as_str()) {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("{v:?} is not a level; {USAGE}"),
                    );
                }
                crate::logging::level_filter(&l)
            }
            "filter" => v,
            _ => return text(StatusCode::BAD_REQUEST, USAGE),
        };
        if want.replace(filter).is_some() {
            return text(StatusCode::BAD_REQUEST, USAGE);
        }
    }
    let Some(new) = want else {
        return text(StatusCode::BAD_REQUEST, USAGE);
    };
    if new.len() > 4096 {
        return text(StatusCode::BAD_REQUEST, "a filter is at most 4096 bytes\n");
    }
    let previous = crate::logging::current_filter();
    match crate::logging::set_filter(&new) {
        Ok(()) => {
            tracing::warn!(filter = %new, previous = previous.as_deref().unwrap_or("-"), "log filter changed by the admin API");
            json_response(
                StatusCode::OK,
                json!({ "filter": new, "previous": previous }),
            )
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

/// GET /canary, PUT /canary/{route}, POST /canary/{route}/rollout,
/// POST /canary/{route}/rollback.
async fn canary(req: Request<Incoming>, path: &str, shared: &Shared) -> Response<Body> {
    use http_body_util::BodyExt;
    let snap = shared.snapshot.load_full();
    let now = shared.clock.now();
    let parts: Vec<&str> = path
        .trim_start_matches("/canary")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    if parts.is_empty() {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let routes: Vec<Value> = snap
            .routes
            .iter()
            .filter_map(|r| {
                let c = r.canary.as_ref()?;
                let st = c.status();
                let names: Vec<&str> = r.spec.backends.iter().map(|b| b.cluster.as_str()).collect();
                let weights: serde_json::Map<String, Value> = names
                    .iter()
                    .zip(st.weights.iter())
                    .map(|(n, w)| (n.to_string(), json!(w)))
                    .collect();
                let stats: serde_json::Map<String, Value> = names
                    .iter()
                    .zip(st.stats.iter())
                    .map(|(n, s)| (n.to_string(), json!(s)))
                    .collect();
                let ms = |t: u64| now.saturating_sub(t) / 1_000_000;
                let phase = match &st.rollout {
                    crate::canary::Phase::Running { step, weight, started_at, step_started_at } => json!({
                        "state": "running", "step": step, "weight": weight,
                        "started_ms_ago": ms(*started_at), "step_started_ms_ago": ms(*step_started_at)
                    }),
                    crate::canary::Phase::Promoted { at } => json!({"state": "promoted", "ms_ago": ms(*at)}),
                    crate::canary::Phase::RolledBack { at, reason } => json!({"state": "rolled_back", "ms_ago": ms(*at), "reason": reason}),
                    crate::canary::Phase::Idle => json!({"state": "idle"}),
                };
                Some(json!({
                    "route": r.spec.name,
                    "stable": c.spec.stable_name,
                    "canary": c.spec.canary_name,
                    "weights": weights,
                    "source": st.source,
                    "rollout": phase,
                    "last_verdict": st.last_verdict,
                    "window": stats,
                }))
            })
            .collect();
        return json_response(StatusCode::OK, json!({ "routes": routes }));
    }
    let name = parts[0];
    let Some(route) = snap.routes.iter().find(|r| r.spec.name == name) else {
        return text(StatusCode::NOT_FOUND, "no such route\n");
    };
    let Some(c) = &route.canary else {
        return text(StatusCode::NOT_FOUND, "this route has no canary section\n");
    };
    let action = parts.get(1).copied();
    if parts.len() > 2 || action.is_some_and(|a| a != "rollout" && a != "rollback") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; use PUT /canary/ROUTE, POST /canary/ROUTE/rollout or /rollback\n",
        );
    }
    match (method, action) {
        (Method::PUT, None) => {
            let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB\n"),
            };
            let v: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}\n")),
            };
            let Some(map) = v.get("weights").and_then(Value::as_object) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "expected {\"weights\": {\"CLUSTER\": N, ...}}\n",
                );
            };
            if let Some(k) = map
                .keys()
                .find(|k| !route.spec.backends.iter().any(|b| &b.cluster == *k))
            {
                let names: Vec<&str> = route
                    .spec
                    .backends
                    .iter()
                    .map(|b| b.cluster.as_str())
                    .collect();
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "weights names {k:?}, which is not a cluster of this route ({})\n",
                        names.join(", ")
                    ),
                );
            }
            let mut weights = Vec::new();
            for b in &route.spec.backends {
                match map.get(&b.cluster).and_then(Value::as_u64) {
                    Some(w) if w <= 10_000 => weights.push(w as u32),
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("weights needs an integer 0..=10000 for {:?}\n", b.cluster),
                        );
                    }
                }
            }
            match c.set_weights(weights) {
                Ok(()) => {
                    tracing::info!(route = name, weights = %v["weights"], "canary weights set by the admin API");
                    json_response(
                        StatusCode::OK,
                        json!({"route": name, "weights": v["weights"], "source": "admin"}),
                    )
                }
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            }
        }
        (Method::POST, Some("rollout")) => match c.start_rollout(now) {
            Some(w) => {
                tracing::info!(route = name, weight = w, "canary rollout started");
                json_response(
                    StatusCode::OK,
                    json!({"route": name, "rollout": "running", "weight": w}),
                )
            }
            None => text(
                StatusCode::BAD_REQUEST,
                "this canary has no rollout section\n",
            ),
        },
        (Method::POST, Some("rollback")) => {
            c.rollback(
                now,
                crate::canary::Verdict::Fail {
                    metric: "manual",
                    canary: 0.0,
                    stable: 0.0,
                    limit: 0.0,
                },
            );
            tracing::warn!(route = name, "canary rolled back by the admin API");
            json_response(
                StatusCode::OK,
                json!({"route": name, "rollout": "rolled_back"}),
            )
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /canary, PUT /canary/ROUTE, POST /canary/ROUTE/rollout or /rollback\n",
        ),
    }
}

/// Watch every TLS listener's certificate, key, CA and CRL files, and every
/// cluster's CA, client certificate and key (at the config's reload
/// interval), and rotate them in place: new handshakes use the new
/// material, open connections continue; a broken file is rejected, logged
/// and counted, and the old material keeps serving.
pub async fn tls_watcher(shared: Arc<Shared>) {
    loop {
        let interval = shared.snapshot.load().config.reload.interval.0;
        tokio::time::sleep(interval).await;
        let snap = shared.snapshot.load_full();
        for (l, tls) in snap.config.listeners.iter().zip(snap.listener_tls.iter()) {
            let Some(tls) = tls.clone() else { continue };
            let counter = shared.metrics.tls_reloads.clone();
            rotate_tls(move || tls.rotate_if_changed(), counter, &l.name, false).await;
        }
        // Redis's TLS under a label no cluster can have (names have no '/').
        let redis = snap
            .redis
            .as_ref()
            .and_then(|r| r.tls().cloned())
            .map(|t| ("redis/".to_string(), t));
        let clusters = snap
            .clusters
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), c.tls()?.clone())));
        for (name, tls) in clusters.chain(redis) {
            let counter = shared.metrics.upstream_tls_reloads.clone();
            rotate_tls(move || tls.rotate_if_changed(), counter, &name, true).await;
        }
    }
}

/// Run one rotation check off the async workers; count and log a change.
async fn rotate_tls(
    check: impl FnOnce() -> Option<Result<(), crate::tls::TlsError>> + Send + 'static,
    counter: prometheus::IntCounterVec,
    name: &str,
    upstream: bool,
) {
    let Ok(Some(result)) = tokio::task::spawn_blocking(check).await else {
        return;
    };
    let outcome = if result.is_ok() { "success" } else { "failure" };
    counter.with_label_values(&[name, outcome]).inc();
    match (result, upstream) {
        (Ok(()), false) => tracing::info!(listener = %name, "TLS material rotated"),
        (Ok(()), true) => tracing::info!(cluster = %name, "upstream TLS material rotated"),
        (Err(e), false) => {
            tracing::error!(listener = %name, error = %e, "new TLS material rejected; the previous certificate keeps serving")
        }
        (Err(e), true) => {
            tracing::error!(cluster = %name, error = %e, "new upstream TLS material rejected; the previous material keeps serving")
        }
    }
}

/// Largest body `POST /filters/{name}/learn` accepts.
const MAX_LEARN_BODY: usize = 64 << 20;
/// Largest decoded size of a gzip learn body.
const MAX_LEARN_DECODED: usize = 256 << 20;

/// GET /filters; POST /filters/{name}/learn (JSONL labelled examples).
async fn filters(req: Request<Incoming>, path: &str, shared: &Shared) -> Response<Body> {
    use http_body_util::BodyExt;
    let snap = shared.snapshot.load_full();
    let rest = path.trim_start_matches("/filters").trim_start_matches('/');
    if rest.is_empty() {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let mut names: Vec<&String> = snap.filters.keys().collect();
        names.sort();
        let list: Vec<Value> = names
            .into_iter()
            .map(|n| {
                let f = &snap.filters[n];
                json!({
                    "name": n,
                    "kind": f.spec().kind,
                    "model": f.model_source(),
                    "learned_model": f.spec().learned_model,
                    "learn_data": f.spec().learn_data,
                })
            })
            .collect();
        return json_response(StatusCode::OK, json!({ "filters": list }));
    }
    let Some(name) = rest.strip_suffix("/learn") else {
        return text(StatusCode::NOT_FOUND, &format!("not found\n{INDEX}"));
    };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let Some(filter) = snap.filters.get(name).cloned() else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no filter is named {name:?}") }),
        );
    };
    // Labelled CI logs are large and compress well: a gzip body is read
    // too (decoded up to MAX_LEARN_DECODED).
    let gzip = match req
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": format!("content-encoding {other:?}: send the JSONL plain or gzip") }),
            );
        }
    };
    let limited = http_body_util::Limited::new(req.into_body(), MAX_LEARN_BODY);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("cannot read the examples: {e}") }),
            );
        }
    };

    let metrics = shared.metrics.clone();
    // Decoding and learning run off the admin thread.
    let res = tokio::task::spawn_blocking(move || {
        let body = if gzip {
            gunzip_learn_body(&body)?
        } else {
            body
        };
        Ok(filter.learn(&body))
    })
    .await;
    let res = match res {
        Ok(Err((status, msg))) => return json_response(status, json!({ "error": msg })),
        Ok(Ok(r)) => Ok(r),
        Err(e) => Err(e),
    };
    match res {
        Ok(Ok(report)) => {
            let l = &metrics.filters.learned;
            for (label, n) in report.by_label() {
                l.with_label_values(&[name, label.as_str()])
                    .inc_by(n as u64);
            }
            tracing::info!(filter = name, examples = report.examples, saved_to = %report.saved_to, "filter learned from examples");
            json_response(StatusCode::OK, json!(report))
        }
        Ok(Err(e)) => {
            let status = match e {
                crate::filter::FilterError::BadExamples(_) => StatusCode::BAD_REQUEST,
                crate::filter::FilterError::LearnUnsupported(_)
                | crate::filter::FilterError::LearnNeedsData(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_response(status, json!({ "error": e.to_string() }))
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "learn task failed\n"),
    }
}

/// A gzip learn body, decoded (at most MAX_LEARN_DECODED bytes), or the
/// status and message for the client.
fn gunzip_learn_body(body: &[u8]) -> Result<bytes::Bytes, (StatusCode, String)> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_LEARN_DECODED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the gzip body does not decode: {e}"),
            )
        })?;
    if out.len() > MAX_LEARN_DECODED {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the gzip body expands past {MAX_LEARN_DECODED} bytes"),
        ));
    }
    Ok(bytes::Bytes::from(out))
}

/// Watch every filter's model file: a new valid model is swapped in, a
/// broken one is rejected (logged, counted) and the old one keeps serving.
/// A new configured `model` file while a learned model serves is read but
/// does not serve (the learned model wins): logged so, and counted as
/// `shadowed_by_learned`, not as a success.
pub async fn filter_watcher(shared: Arc<Shared>) {
    // Each filter's configured model file as last seen, by filter name (and
    // the filter instance, rebuilt by a config reload that changes it).
    let mut configured: HashMap<String, (usize, crate::filter::Fingerprint)> = HashMap::new();
    loop {
        let interval = shared.snapshot.load().config.reload.interval.0;
        tokio::time::sleep(interval).await;
        let snap = shared.snapshot.load_full();
        configured.retain(|name, _| snap.filters.contains_key(name));
        for (name, f) in &snap.filters {
            let model_file = match &f.spec().model {
                crate::config::model::ModelSource::File(p) => Some(p.clone()),
                crate::config::model::ModelSource::Builtin => None,
            };
            let id = Arc::as_ptr(f) as *const () as usize;
            let now = model_file
                .as_deref()
                .map(|p| crate::filter::fingerprint(&[p]))
                .unwrap_or_default();
            let model_changed = matches!(
                configured.insert(name.clone(), (id, now.clone())),
                Some((prev_id, prev)) if prev_id == id && prev != now
            );
            let (f, name, metrics) = (f.clone(), name.clone(), shared.metrics.clone());
            let _ = tokio::task::spawn_blocking(move || match f.reload_if_changed() {
                None => {}
                Some(Ok(source)) => {
                    let shadowed = model_changed
                        && model_file
                            .as_ref()
                            .is_some_and(|m| m.display().to_string() != source);
                    let result = if shadowed {
                        "shadowed_by_learned"
                    } else {
                        "success"
                    };
                    metrics
                        .filters
                        .model_reloads
                        .with_label_values(&[&name, result])
                        .inc();
                    if shadowed {
                        let file = model_file.unwrap_or_default();
                        tracing::warn!(
                            filter = %name,
                            model = %file.display(),
                            serving = %source,
                            "new model file read, but the learned model keeps serving (the learned model wins; delete it to serve the model file)"
                        );
                    } else {
                        tracing::info!(filter = %name, model = %source, "filter model reloaded");
                    }
                }
                Some(Err(e)) => {
                    metrics
                        .filters
                        .model_reloads
                        .with_label_values(&[&name, "failure"])
                        .inc();
                    tracing::error!(filter = %name, error = %e, "new model rejected; the previous model keeps serving");
                }
            })
            .await;
        }
    }
}

/// Drive every running rollout: a tick every 100 ms, off the data path.
pub async fn canary_controller(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        every.tick().await;
        let snap = shared.snapshot.load_full();
        let now = shared.clock.now();
        for r in &snap.routes {
            let Some(c) = &r.canary else { continue };
            let route = r.spec.name.as_str();
            match c.tick(now) {
                Some(crate::canary::Event::Stepped { weight }) => {
                    tracing::info!(route, weight, "canary rollout: analysis passed, next step");
                }
                Some(crate::canary::Event::Promoted) => {
                    shared
                        .metrics
                        .canary_promotions
                        .with_label_values(&[route])
                        .inc();
                    tracing::info!(route, "canary rollout: promoted to 100 %");
                }
                Some(crate::canary::Event::RolledBack(crate::canary::Verdict::Fail {
                    metric,
                    canary,
                    stable,
                    limit,
                })) => {
                    shared
                        .metrics
                        .canary_rollbacks
                        .with_label_values(&[route, metric])
                        .inc();
                    tracing::warn!(
                        route,
                        metric,
                        canary,
                        stable,
                        limit,
                        "canary rollout: analysis failed, rolled back to 0 %"
                    );
                }
                Some(crate::canary::Event::RolledBack(_)) => {}
                None => {}
            }
        }
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
