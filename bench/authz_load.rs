//! bench/istio.sh's two helpers for the Istio mode, in one binary:
//!
//!   authz_load floor LISTEN
//!       The floor: an ext_authz gRPC server on tonic (the stack sift's
//!       Envoy servers are built on) that admits every check without
//!       looking at it.
//!   authz_load load ADDR SECONDS CONCURRENCY PATH [BODY_FILE]
//!   authz_load proc ADDR SECONDS CONCURRENCY PATH [BODY_FILE]
//!       Envoy's side: `Authorization/Check` calls over one HTTP/2
//!       connection, CONCURRENCY in flight, for SECONDS; each carries the
//!       client request POST PATH with BODY_FILE as `raw_body` (Envoy's
//!       `with_request_body` + `pack_as_bytes`). Prints one line:
//!       `checks_per_s p50_us p99_us errors denied`.
//!       `proc`: the same through ext_proc instead, one stream per request:
//!       request headers, the body (one buffered message), response
//!       headers, each sent after the answer to the one before (the floor
//!       answers ext_proc too, continuing every message).
//!   authz_load rls ADDR SECONDS CONCURRENCY KEYS
//!       `RateLimitService/ShouldRateLimit` calls of domain `bench`, each
//!       with two descriptors as Envoy's route actions make them:
//!       `remote_address` (one of KEYS addresses, in turn) and
//!       `generic_key=api`. `denied` counts OVER_LIMIT answers (the floor
//!       answers OK to every call).
//!
//! Not a product and not used by sift; built with
//! `cargo bench --bench authz_load --no-run`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry as RlEntry,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse, attribute_context,
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    external_processor_client::ExternalProcessorClient,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as In,
    processing_response::Response as Out,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse,
    rate_limit_response::Code,
    rate_limit_service_client::RateLimitServiceClient,
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

struct Floor;

struct FloorProc;

type ProcReply = Result<ProcessingResponse, tonic::Status>;

#[tonic::async_trait]
impl ExternalProcessor for FloorProc {
    type ProcessStream = ReceiverStream<ProcReply>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let out = match m.request {
                    Some(In::RequestHeaders(_)) => Out::RequestHeaders(HeadersResponse::default()),
                    Some(In::RequestBody(_)) => Out::RequestBody(BodyResponse::default()),
                    Some(In::ResponseHeaders(_)) => {
                        Out::ResponseHeaders(HeadersResponse::default())
                    }
                    Some(In::ResponseBody(_)) => Out::ResponseBody(BodyResponse::default()),
                    _ => continue,
                };
                let reply = ProcessingResponse {
                    response: Some(out),
                    ..Default::default()
                };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

#[tonic::async_trait]
impl RateLimitService for Floor {
    async fn should_rate_limit(
        &self,
        r: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![Default::default(); r.get_ref().descriptors.len()],
            ..Default::default()
        }))
    }
}

fn check_request(path: &str, body: &[u8]) -> CheckRequest {
    let mut headers = HashMap::new();
    for (k, v) in [
        (":authority", "app.example"),
        (":method", "POST"),
        (":path", path),
        ("content-type", "text/plain"),
        ("user-agent", "bench"),
        ("x-request-id", "0b1c6a4e-8a8e-4b7e-9d39-4bb7a1a0b7f2"),
    ] {
        headers.insert(k.to_string(), v.to_string());
    }
    headers.insert("content-length".into(), body.len().to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    host: "app.example".into(),
                    headers,
                    size: body.len() as i64,
                    raw_body: body.to_vec(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("floor") => {
            let addr: std::net::SocketAddr = args[2].parse().expect("LISTEN address");
            rt.block_on(floor(addr));
        }
        Some("load") => {
            let addr = args[2].clone();
            let secs: u64 = args[3].parse().expect("SECONDS");
            let conc: usize = args[4].parse().expect("CONCURRENCY");
            let path = args[5].clone();
            let body = args
                .get(6)
                .map(|f| std::fs::read(f).expect("BODY_FILE"))
                .unwrap_or_default();
            rt.block_on(load(addr, secs, conc, path, body));
        }
        Some("proc") => {
            let addr = args[2].clone();
            let secs: u64 = args[3].parse().expect("SECONDS");
            let conc: usize = args[4].parse().expect("CONCURRENCY");
            let path = args[5].clone();
            let body = args
                .get(6)
                .map(|f| std::fs::read(f).expect("BODY_FILE"))
                .unwrap_or_default();
            rt.block_on(proc_load(addr, secs, conc, path, body));
        }
        Some("rls") => {
            let addr = args[2].clone();
            let secs: u64 = args[3].parse().expect("SECONDS");
            let conc: usize = args[4].parse().expect("CONCURRENCY");
            let keys: usize = args[5].parse().expect("KEYS");
            rt.block_on(rls_load(addr, secs, conc, keys.max(1)));
        }
        _ => {
            eprintln!(
                "usage: authz_load floor LISTEN | load|proc ADDR SECONDS CONCURRENCY PATH [BODY_FILE] | rls ADDR SECONDS CONCURRENCY KEYS"
            );
            std::process::exit(2);
        }
    }
}

/// The floor server: tonic's generated service on a hyper HTTP/2
/// connection per client (prior knowledge), as sift serves it.
async fn floor(addr: std::net::SocketAddr) {
    use tonic::codegen::Service;
    let tcp = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let svc = AuthorizationServer::new(Floor);
    let proc = ExternalProcessorServer::new(FloorProc);
    let rls = RateLimitServiceServer::new(Floor);
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (svc, proc, rls) = (svc.clone(), proc.clone(), rls.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (mut s, mut p, mut r) = (svc.clone(), proc.clone(), rls.clone());
                    async move {
                        if req.uri().path().starts_with("/envoy.service.ext_proc.v3.") {
                            p.call(req).await
                        } else if req.uri().path().starts_with("/envoy.service.ratelimit.v3.") {
                            r.call(req).await
                        } else {
                            s.call(req).await
                        }
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn load(addr: String, secs: u64, conc: usize, path: String, body: Vec<u8>) {
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let req = check_request(&path, &body);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let mut c = client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let (mut errors, mut denied) = (0u64, 0u64);
            while Instant::now() < end {
                let t = Instant::now();
                match c.check(req.clone()).await {
                    Ok(r) => {
                        if r.get_ref().status.as_ref().is_some_and(|s| s.code != 0) {
                            denied += 1;
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, denied)
        }));
    }
    report(tasks, secs).await;
}

async fn rls_load(addr: String, secs: u64, conc: usize, keys: usize) {
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let end = Instant::now() + Duration::from_secs(secs);
    let entry = |k: &str, v: &str| RlEntry {
        key: k.into(),
        value: v.into(),
    };
    let reqs: Vec<RateLimitRequest> = (0..keys)
        .map(|i| RateLimitRequest {
            domain: "bench".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    entries: vec![entry(
                        "remote_address",
                        &format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    )],
                    ..Default::default()
                },
                RateLimitDescriptor {
                    entries: vec![entry("generic_key", "api")],
                    ..Default::default()
                },
            ],
            hits_addend: 0,
        })
        .collect();
    let reqs = std::sync::Arc::new(reqs);
    let mut tasks = Vec::new();
    for t in 0..conc {
        let mut c = client.clone();
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let (mut errors, mut denied) = (0u64, 0u64);
            let mut i = t;
            while Instant::now() < end {
                let req = reqs[i % reqs.len()].clone();
                i += conc;
                let t = Instant::now();
                match c.should_rate_limit(req).await {
                    Ok(r) => {
                        if r.get_ref().overall_code == Code::OverLimit as i32 {
                            denied += 1;
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, denied)
        }));
    }
    report(tasks, secs).await;
}

fn proc_headers(path: &str, body_len: usize) -> ProcessingRequest {
    let hv = |k: &str, v: &str| PbHeaderValue {
        key: k.into(),
        raw_value: v.as_bytes().to_vec(),
        ..Default::default()
    };
    let len = body_len.to_string();
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(PbHeaderMap {
                headers: vec![
                    hv(":method", "POST"),
                    hv(":path", path),
                    hv(":authority", "app.example"),
                    hv("content-type", "text/plain"),
                    hv("content-length", &len),
                    hv("x-request-id", "0b1c6a4e-8a8e-4b7e-9d39-4bb7a1a0b7f2"),
                ],
            }),
            end_of_stream: body_len == 0,
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn proc_load(addr: String, secs: u64, conc: usize, path: String, body: Vec<u8>) {
    let client = ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let mut c = client.clone();
        let (path, body) = (path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let (mut errors, mut denied) = (0u64, 0u64);
            while Instant::now() < end {
                let t = Instant::now();
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let mut msgs = vec![proc_headers(&path, body.len())];
                if !body.is_empty() {
                    msgs.push(ProcessingRequest {
                        request: Some(In::RequestBody(HttpBody {
                            body: body.clone(),
                            end_of_stream: true,
                            ..Default::default()
                        })),
                        ..Default::default()
                    });
                }
                msgs.push(ProcessingRequest {
                    request: Some(In::ResponseHeaders(HttpHeaders {
                        headers: Some(PbHeaderMap {
                            headers: vec![PbHeaderValue {
                                key: ":status".into(),
                                raw_value: b"200".to_vec(),
                                ..Default::default()
                            }],
                        }),
                        end_of_stream: true,
                        ..Default::default()
                    })),
                    ..Default::default()
                });
                let Ok(resp) = c.process(ReceiverStream::new(rx)).await else {
                    errors += 1;
                    continue;
                };
                let mut answers = resp.into_inner();
                let mut ok = true;
                for m in msgs {
                    if tx.send(m).await.is_err() {
                        ok = false;
                        break;
                    }
                    match answers.message().await {
                        Ok(Some(a)) => {
                            if matches!(a.response, Some(Out::ImmediateResponse(_))) {
                                denied += 1;
                                break;
                            }
                        }
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                drop(tx);
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors, denied)
        }));
    }
    report(tasks, secs).await;
}

/// Each task's (latencies µs, errors, denied) → one line:
/// `per_s p50_us p99_us errors denied`.
async fn report(tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64, u64)>>, secs: u64) {
    let mut all = Vec::new();
    let (mut errors, mut denied) = (0, 0);
    for t in tasks {
        let (l, e, d) = t.await.expect("task");
        all.extend(l);
        errors += e;
        denied += d;
    }
    all.sort_unstable();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{:.0} {} {} {} {}",
        all.len() as f64 / secs as f64,
        q(0.50),
        q(0.99),
        errors,
        denied
    );
}
