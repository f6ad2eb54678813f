//! Distributed tracing: W3C Trace Context in, one span per request out to
//! an OpenTelemetry collector (OTLP over HTTP with JSON encoding, or over
//! gRPC with protobuf), as Envoy and linkerd2-proxy do for a mesh hop.
//!
//! - A request's `traceparent` (version 00, or a later version read as 00
//!   as the spec says) makes sift's span a child of the caller's, and the
//!   caller's sampled flag is kept (parent-based sampling); a request
//!   without a valid one starts a new trace, sampled at `sampling`.
//! - The upstream gets `traceparent` naming sift's span as its parent (the
//!   app's spans hang under sift's); `tracestate` passes untouched. An
//!   unsampled request is propagated all the same (flag 00).
//! - Sampled spans go through a bounded queue to one exporter task that
//!   posts batches; a full queue drops spans (counted), never the request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::header::HeaderMap;
use serde::Serialize;

use crate::body::Body;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/HTTP, JSON encoding: a POST to the path (port 4318).
    Http,
    /// OTLP/gRPC: `TraceService/Export` over HTTP/2 (port 4317), protobuf.
    Grpc,
}

/// The gRPC method of OTLP trace export.
pub const OTLP_GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TracingSpec {
    /// host:port of the collector.
    pub authority: String,
    /// TLS to the collector (an https endpoint).
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
    /// Fields sent with every export (values redacted when shown).
    #[serde(serialize_with = "ser_redacted")]
    pub headers: Vec<(String, String)>,
    /// Request path (default /v1/traces; the gRPC method with `grpc`).
    pub path: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    /// Share of new traces sampled, 0 to 1.
    pub sampling: f64,
    pub max_queue: usize,
    pub batch_size: usize,
    #[serde(serialize_with = "ser_dur")]
    pub flush_interval: Duration,
}

fn ser_redacted<S: serde::Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(h.len()))?;
    for (k, _) in h {
        m.serialize_entry(k, "[redacted]")?;
    }
    m.end()
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

impl TracingSpec {
    /// The settings the exporter is built from (a change needs a restart;
    /// `sampling` is read per request and reloads): all but `sampling`.
    pub fn exporter_key(&self) -> TracingSpec {
        TracingSpec {
            sampling: 0.0,
            ..self.clone()
        }
    }
}

/// One request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// sift's span.
    pub span_id: [u8; 8],
    /// The caller's span, from its traceparent.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

impl TraceCtx {
    /// The context of a request with these headers.
    pub fn start(h: &HeaderMap, sampling: f64) -> TraceCtx {
        let span_id = nonzero_u64().to_be_bytes();
        // Exactly one traceparent line; several are invalid (spec §3.2).
        let mut lines = h.get_all(&TRACEPARENT).iter();
        let parsed = match (lines.next(), lines.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        match parsed {
            Some((trace_id, parent, flags)) => TraceCtx {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
                TraceCtx {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: sampling >= 1.0 || fastrand::f64() < sampling,
                }
            }
        }
    }

    /// `traceparent` for the upstream: sift's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::from_maybe_shared(Bytes::from(s))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    push_hex(&mut s, b);
    s
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = d(s[2 * i])? << 4 | d(s[2 * i + 1])?;
    }
    Some(out)
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): lower-case
/// hex only, all-zero ids invalid, version ff invalid; a version above 00
/// is read as 00 when its first four fields are well formed.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = v.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    if version == 0xff
        || (version == 0 && v.len() != 55)
        || (version > 0 && v.len() > 55 && v[55] != b'-')
    {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(s.to_string())
    }
}

impl From<String> for Attr {
    fn from(s: String) -> Attr {
        Attr::Str(s)
    }
}

impl From<u16> for Attr {
    fn from(n: u16) -> Attr {
        Attr::Int(i64::from(n))
    }
}

/// A finished span.
pub struct Span {
    pub ctx: TraceCtx,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set for answers that are errors (5xx): the message.
    pub error: Option<String>,
}

/// The queue to the exporter task.
pub struct Exporter {
    tx: tokio::sync::mpsc::Sender<Span>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<Span>>>,
    pub spec: TracingSpec,
    spans: prometheus::IntCounterVec,
    /// Connections to the collector (kept alive between exports; TLS
    /// when the endpoint is https), or why there are none.
    link: Result<(Arc<crate::upstream::Pool>, crate::config::model::Endpoint), String>,
}

impl Exporter {
    pub fn new(spec: TracingSpec, spans: prometheus::IntCounterVec) -> Exporter {
        let (tx, rx) = tokio::sync::mpsc::channel(spec.max_queue.max(1));
        let link = Self::link(&spec);
        if let Err(e) = &link {
            tracing::error!(error = %e, "trace exporter: no collector connection; spans will be counted failed");
        }
        Exporter {
            tx,
            rx: Mutex::new(Some(rx)),
            spec,
            spans,
            link,
        }
    }

    fn link(
        spec: &TracingSpec,
    ) -> Result<(Arc<crate::upstream::Pool>, crate::config::model::Endpoint), String> {
        use crate::config::file::UpstreamProtocol;
        let endpoint = crate::config::build::parse_endpoint(&spec.authority)?;
        let (protocol, alpn) = match spec.protocol {
            OtlpProtocol::Http => (UpstreamProtocol::Http1, b"http/1.1".to_vec()),
            OtlpProtocol::Grpc => (UpstreamProtocol::Http2, b"h2".to_vec()),
        };
        let tls = match &spec.tls {
            Some(t) => Some(
                crate::tls::UpstreamTls::new(t.clone(), vec![alpn])
                    .map_err(|e| format!("tracing.tls: {e}"))?,
            ),
            None => None,
        };
        let cfg = crate::upstream::PoolConfig {
            protocol,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_endpoint: 2,
            tls,
            resolver: None,
            max_requests_per_connection: None,
            max_connection_duration: None,
            tcp_keepalive: None,
            http2_keepalive: None,
            resent: None,
        };
        Ok((crate::upstream::Pool::new(cfg, 1), endpoint))
    }

    /// Queue a sampled span; dropped (and counted) when the queue is full.
    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.spans.with_label_values(&["dropped"]).inc();
        }
    }

    /// Start the exporter task on the current runtime (once).
    pub fn start(self: &std::sync::Arc<Self>) {
        let Some(rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move { me.run(rx).await });
    }

    async fn run(&self, mut rx: tokio::sync::mpsc::Receiver<Span>) {
        let mut batch = Vec::with_capacity(self.spec.batch_size);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let deadline = tokio::time::sleep(self.spec.flush_interval);
            tokio::pin!(deadline);
            while batch.len() < self.spec.batch_size {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            let n = batch.len() as u64;
            let body = match self.spec.protocol {
                OtlpProtocol::Http => encode(&batch, &self.spec.service_name),
                OtlpProtocol::Grpc => encode_protobuf(&batch, &self.spec.service_name),
            };
            batch.clear();
            match tokio::time::timeout(Duration::from_secs(10), self.export(body)).await {
                Ok(Ok(())) => self.spans.with_label_values(&["exported"]).inc_by(n),
                Ok(Err(e)) => {
                    self.spans.with_label_values(&["failed"]).inc_by(n);
                    tracing::warn!(collector = %self.spec.authority, error = %e, spans = n, "trace export failed");
                }
                Err(_) => {
                    self.spans.with_label_values(&["failed"]).inc_by(n);
                    tracing::warn!(collector = %self.spec.authority, spans = n, "trace export timed out");
                }
            }
        }
    }

    async fn export(&self, body: Vec<u8>) -> Result<(), String> {
        let (pool, endpoint) = match &self.link {
            Ok(l) => l,
            Err(e) => return Err(e.clone()),
        };
        let scheme = if self.spec.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = format!("{scheme}://{}{}", self.spec.authority, self.spec.path);
        let grpc = self.spec.protocol == OtlpProtocol::Grpc;
        let mut req = http::Request::post(uri)
            .header(http::header::HOST, self.spec.authority.as_str())
            .header(http::header::USER_AGENT, "sift-otlp");
        req = if grpc {
            req.header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
        } else {
            req.header(http::header::CONTENT_TYPE, "application/json")
        };
        for (k, v) in &self.spec.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let body = if grpc {
            // The gRPC frame: uncompressed, its length, the message.
            let len = u32::try_from(body.len()).map_err(|_| "batch over 4 GiB".to_string())?;
            let mut frame = Vec::with_capacity(5 + body.len());
            frame.push(0);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&body);
            frame
        } else {
            body
        };
        let req = req
            .body::<Body>(crate::body::full(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = pool
            .send(0, endpoint, req)
            .await
            .map_err(|e| e.to_string())?;
        if grpc {
            grpc_outcome(resp).await
        } else if resp.status().is_success() {
            // Read to its end: the connection goes back to the pool.
            use http_body_util::BodyExt;
            let _ = resp.into_body().collect().await;
            Ok(())
        } else {
            Err(format!("collector answered {}", resp.status()))
        }
    }
}

/// OTLP/gRPC: done when the collector answers 200 with `grpc-status: 0`
/// (in its head or its trailers).
async fn grpc_outcome(resp: http::Response<Body>) -> Result<(), String> {
    if !resp.status().is_success() {
        return Err(format!("collector answered {}", resp.status()));
    }
    let head = resp.headers().get("grpc-status").cloned();
    let head_msg = resp.headers().get("grpc-message").cloned();
    use http_body_util::BodyExt;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers();
    let status = head.or_else(|| trailers.and_then(|t| t.get("grpc-status")).cloned());
    let message = head_msg.or_else(|| trailers.and_then(|t| t.get("grpc-message")).cloned());
    match status.as_ref().map(|v| v.as_bytes()) {
        Some(b"0") => Ok(()),
        Some(code) => Err(format!(
            "collector answered grpc-status {} {}",
            String::from_utf8_lossy(code),
            message
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default()
        )),
        None => Err("collector answered without grpc-status".into()),
    }
}

/// Protobuf wire format, written by hand for the few OTLP messages sift
/// sends (field numbers from opentelemetry-proto's trace, common and
/// resource protos, v1).
mod pb {
    /// A varint.
    pub fn varint(o: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            o.push((v as u8) | 0x80);
            v >>= 7;
        }
        o.push(v as u8);
    }

    /// A field key: number and wire type (0 varint, 1 fixed64, 2 bytes).
    pub fn key(o: &mut Vec<u8>, field: u32, wire: u8) {
        varint(o, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn bytes(o: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(o, field, 2);
        varint(o, b.len() as u64);
        o.extend_from_slice(b);
    }

    pub fn fixed64(o: &mut Vec<u8>, field: u32, v: u64) {
        key(o, field, 1);
        o.extend_from_slice(&v.to_le_bytes());
    }

    pub fn uint(o: &mut Vec<u8>, field: u32, v: u64) {
        key(o, field, 0);
        varint(o, v);
    }

    /// A nested message, written by `f` into a scratch buffer first (its
    /// length goes before it).
    pub fn message(o: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut m = Vec::new();
        f(&mut m);
        bytes(o, field, &m);
    }
}

/// A `KeyValue` (common.v1): key 1, value 2 (`AnyValue`: string 1, int 3).
fn pb_attr(o: &mut Vec<u8>, field: u32, key: &str, v: &Attr) {
    pb::message(o, field, |m| {
        pb::bytes(m, 1, key.as_bytes());
        pb::message(m, 2, |a| match v {
            Attr::Str(s) => pb::bytes(a, 1, s.as_bytes()),
            // int64, two's complement as a varint.
            Attr::Int(n) => pb::uint(a, 3, *n as u64),
        });
    });
}

/// OTLP protobuf `ExportTraceServiceRequest` (collector.trace.v1): the same
/// content as [`encode`]'s JSON.
pub fn encode_protobuf(spans: &[Span], service: &str) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut o = Vec::with_capacity(128 + spans.len() * 512);
    // resource_spans = 1
    pb::message(&mut o, 1, |rs| {
        // resource = 1 { attributes = 1 }
        pb::message(rs, 1, |r| {
            pb_attr(r, 1, "service.name", &Attr::from(service));
            pb_attr(r, 1, "service.version", &Attr::from(version));
        });
        // scope_spans = 2 { scope = 1 { name 1, version 2 }, spans = 2 }
        pb::message(rs, 2, |ss| {
            pb::message(ss, 1, |sc| {
                pb::bytes(sc, 1, b"sift");
                pb::bytes(sc, 2, version.as_bytes());
            });
            for s in spans {
                pb::message(ss, 2, |m| {
                    pb::bytes(m, 1, &s.ctx.trace_id);
                    pb::bytes(m, 2, &s.ctx.span_id);
                    if let Some(p) = s.ctx.parent {
                        pb::bytes(m, 4, &p);
                    }
                    pb::bytes(m, 5, s.name.as_bytes());
                    // kind = SPAN_KIND_SERVER
                    pb::uint(m, 6, 2);
                    pb::fixed64(m, 7, s.start_unix_nanos);
                    pb::fixed64(m, 8, s.end_unix_nanos);
                    for (k, v) in &s.attributes {
                        pb_attr(m, 9, k, v);
                    }
                    // status = 15 { message 2, code 3 }: ERROR with a
                    // message, else UNSET (nothing to write).
                    if let Some(msg) = &s.error {
                        pb::message(m, 15, |st| {
                            pb::bytes(st, 2, msg.as_bytes());
                            pb::uint(st, 3, 2);
                        });
                    }
                });
            }
        });
    });
    o
}

/// A JSON string literal of `s`: runs that need no escape are copied
/// whole.
fn json_str(o: &mut String, s: &str) {
    o.push('"');
    let b = s.as_bytes();
    let mut from = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'"' || c == b'\\' || c < 0x20 {
            // Escapes are ASCII: `from..i` is on char boundaries.
            o.push_str(&s[from..i]);
            match c {
                b'"' => o.push_str("\\\""),
                b'\\' => o.push_str("\\\\"),
                c => {
                    use std::fmt::Write;
                    let _ = write!(o, "\\u{:04x}", c);
                }
            }
            from = i + 1;
        }
    }
    o.push_str(&s[from..]);
    o.push('"');
}

/// Append `b` as lower-case hex.
fn push_hex(o: &mut String, b: &[u8]) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for &x in b {
        o.push(D[(x >> 4) as usize] as char);
        o.push(D[(x & 15) as usize] as char);
    }
}

fn json_attr(o: &mut String, key: &str, v: &Attr) {
    o.push_str("{\"key\":");
    json_str(o, key);
    match v {
        Attr::Str(s) => {
            o.push_str(",\"value\":{\"stringValue\":");
            json_str(o, s);
            o.push_str("}}");
        }
        Attr::Int(n) => {
            use std::fmt::Write;
            let _ = write!(o, ",\"value\":{{\"intValue\":\"{n}\"}}}}");
        }
    }
}

/// OTLP/JSON `ExportTraceServiceRequest` (ids as hex, times as strings),
/// written straight into one buffer.
pub fn encode(spans: &[Span], service: &str) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut o = String::with_capacity(256 + spans.len() * 768);
    o.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    json_attr(&mut o, "service.name", &Attr::from(service));
    o.push(',');
    json_attr(&mut o, "service.version", &Attr::from(version));
    o.push_str("]},\"scopeSpans\":[{\"scope\":{\"name\":\"sift\",\"version\":");
    json_str(&mut o, version);
    o.push_str("},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"traceId\":\"");
        push_hex(&mut o, &s.ctx.trace_id);
        o.push_str("\",\"spanId\":\"");
        push_hex(&mut o, &s.ctx.span_id);
        if let Some(p) = s.ctx.parent {
            o.push_str("\",\"parentSpanId\":\"");
            push_hex(&mut o, &p);
        }
        o.push_str("\",\"name\":");
        json_str(&mut o, &s.name);
        {
            use std::fmt::Write;
            let _ = write!(
                o,
                ",\"kind\":2,\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
                s.start_unix_nanos, s.end_unix_nanos
            );
        }
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            json_attr(&mut o, k, v);
        }
        o.push_str("],\"status\":");
        match &s.error {
            Some(m) => {
                o.push_str("{\"code\":2,\"message\":");
                json_str(&mut o, m);
                o.push('}');
            }
            None => o.push_str("{\"code\":0}"),
        }
        o.push('}');
    }
    o.push_str("]}]}]}");
    o.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_the_spec() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, f) = parse_traceparent(good).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version: read as 00, with more fields after a dash.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what")
                .is_some()
        );
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x")
                .is_none()
        );
    }

    #[test]
    fn contexts_keep_the_callers_trace_and_decision() {
        let mut h = HeaderMap::new();
        h.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let c = TraceCtx::start(&h, 1.0);
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(!c.sampled, "the caller's decision, not the local ratio");
        let tp = c.traceparent();
        let tp = tp.to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-00"));
        assert_ne!(&tp[36..52], "00f067aa0ba902b7", "sift's own span id");
        // Two lines: invalid, a new trace.
        h.append(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let c = TraceCtx::start(&h, 0.0);
        assert_ne!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(c.parent.is_none());
        assert!(!c.sampled);
        assert!(TraceCtx::start(&HeaderMap::new(), 1.0).sampled);
        // The ratio holds roughly for new traces.
        let n = (0..4000)
            .filter(|_| TraceCtx::start(&HeaderMap::new(), 0.25).sampled)
            .count();
        assert!((800..1200).contains(&n), "{n}");
    }

    #[test]
    fn otlp_json_shape() {
        let ctx = TraceCtx {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            sampled: true,
        };
        let s = Span {
            ctx,
            name: "GET api".into(),
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![
                ("http.response.status_code", Attr::Int(503)),
                ("url.path", Attr::from("/x\"\\\u{1}")),
            ],
            error: Some("no healthy endpoint".into()),
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&[s], "edge")).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
        let sp = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(sp["traceId"], "01010101010101010101010101010101");
        assert_eq!(sp["spanId"], "0202020202020202");
        assert_eq!(sp["parentSpanId"], "0303030303030303");
        assert_eq!(sp["kind"], 2);
        assert_eq!(sp["startTimeUnixNano"], "10");
        assert_eq!(sp["attributes"][0]["value"]["intValue"], "503");
        assert_eq!(sp["attributes"][1]["value"]["stringValue"], "/x\"\\\u{1}");
        assert_eq!(sp["name"], "GET api");
        assert_eq!(sp["status"]["message"], "no healthy endpoint");
        assert_eq!(sp["status"]["code"], 2);
    }
}
