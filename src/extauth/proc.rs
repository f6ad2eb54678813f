//! `envoy.service.ext_proc.v3.ExternalProcessor/Process`: Envoy's
//! external processing, one stream per HTTP request. The request head is
//! judged when it comes; a route whose filters read the body asks Envoy
//! for it buffered (`mode_override`, taken when Envoy's filter has
//! `allow_mode_override`) and is judged on it. What is judged is what
//! ext_authz judges ([`super::admit_head`], [`super::admit_body`]); a
//! denial is an `immediate_response`, an admission the header mutations
//! on the request (and the rate-limit and CORS headers on the response).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ProcessingMode, processing_mode::BodySendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, TrailersResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as In,
    processing_response::Response as Out,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use http::{Request, Response};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::grpc::{header_map_from, pb_header, request_head, whole_body};
use super::{Allowed, Denied};
use crate::proxy::ConnInfo;
use crate::state::Shared;

struct Processor {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// Serve one ext_proc stream.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body> {
    let max = super::grpc::max_message(&shared);
    let svc = ExternalProcessorServer::new(Processor { shared, conn })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    super::call_grpc(svc, req).await
}

type Reply = Result<ProcessingResponse, tonic::Status>;

#[tonic::async_trait]
impl ExternalProcessor for Processor {
    type ProcessStream = ReceiverStream<Reply>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = run(&shared, &conn, inbound, &tx).await {
                shared
                    .metrics
                    .envoy_checks
                    .with_label_values(&[&*conn.listener, "ext_proc", "error"])
                    .inc();
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

fn reply(r: Out) -> Reply {
    Ok(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

fn go_on(mutation: Option<HeaderMutation>) -> CommonResponse {
    CommonResponse {
        header_mutation: mutation,
        ..Default::default()
    }
}

/// The request-side header changes of an admission.
fn request_mutation(a: &Allowed) -> Option<HeaderMutation> {
    if a.set.is_empty() && a.remove.is_empty() {
        return None;
    }
    let mut remove: Vec<String> = a.remove.iter().map(|k| k.as_str().to_owned()).collect();
    remove.dedup();
    Some(HeaderMutation {
        set_headers: a.set.iter().map(|(k, v)| pb_header(k, v)).collect(),
        remove_headers: remove,
    })
}

fn immediate(d: Denied) -> Out {
    let (parts, body) = d.response.into_parts();
    Out::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(parts.status.as_u16()),
        }),
        headers: Some(HeaderMutation {
            set_headers: parts.headers.iter().map(|(k, v)| pb_header(k, v)).collect(),
            ..Default::default()
        }),
        body: body.to_vec(),
        details: d.kind.map_or("sift_answer", |k| k.as_str()).to_owned(),
        ..Default::default()
    })
}

/// One request's exchange.
async fn run(
    shared: &Shared,
    conn: &ConnInfo,
    mut inbound: tonic::Streaming<ProcessingRequest>,
    tx: &mpsc::Sender<Reply>,
) -> Result<(), tonic::Status> {
    let count = |decision: &str| {
        shared
            .metrics
            .envoy_checks
            .with_label_values(&[&*conn.listener, "ext_proc", decision])
            .inc();
    };
    let start = std::time::Instant::now();
    let send = |r: Out| async move {
        tx.send(reply(r))
            .await
            .map_err(|_| tonic::Status::cancelled("Envoy closed the stream"))
    };
    // The request head.
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    let body_mode = first.protocol_config.as_ref().map(|p| p.request_body_mode);
    let Some(In::RequestHeaders(hh)) = first.request else {
        return Err(tonic::Status::invalid_argument(
            "the first message is not request_headers (sift needs request headers: SEND)",
        ));
    };
    let headers = header_map_from(
        &Default::default(),
        &hh.headers
            .clone()
            .map(|m| envoy_types::pb::envoy::config::core::v3::HeaderMap { headers: m.headers }),
    )
    .map_err(tonic::Status::invalid_argument)?;
    let pseudo = |name: &str| {
        hh.headers.as_ref().and_then(|m| {
            m.headers.iter().find(|h| h.key == name).map(|h| {
                if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                }
            })
        })
    };
    let method = pseudo(":method").unwrap_or_else(|| "GET".into());
    let path = pseudo(":path").unwrap_or_else(|| "/".into());
    let mut req = request_head(&method, &path, "", &Default::default(), &None)
        .map_err(tonic::Status::invalid_argument)?;
    *req.headers_mut() = headers;
    // The caller's client: Envoy's attributes, when it sends them.
    let attr = |key: &str| {
        first
            .attributes
            .values()
            .find_map(|s| s.fields.get(key))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
    };
    let remote = attr("source.address").and_then(|a| a.parse().ok());
    // The client's SPIFFE ID: Envoy's attribute for the downstream
    // certificate's URI SAN (request_attributes lists it).
    let principal = attr("connection.uri_san_peer_certificate").unwrap_or_default();
    let client = super::client_conn(conn, remote, &principal);
    let grpc = crate::error::is_grpc(req.headers());
    let snap = shared.snapshot.load_full();
    let head = match super::admit_head(shared, &snap, &client, &mut req, grpc).await {
        Ok(h) => h,
        Err(d) => {
            count("denied");
            super::log_check(shared, "ext_proc", &client, &req, Err(&d), start);
            send(immediate(*d)).await?;
            return Ok(());
        }
    };
    let no_body = hh.end_of_stream || !head.wants_body;
    // Envoy told its mode, and it sends no body: the filters judge
    // without one, as ext_authz does when no body comes with the check.
    let none_coming = body_mode == Some(BodySendMode::None as i32);
    let allowed = if no_body || none_coming {
        let complete = hh.end_of_stream || whole_body(req.headers(), -1, 0);
        match super::admit_body(shared, head, Bytes::new(), complete, grpc).await {
            Ok(a) => {
                send(Out::RequestHeaders(HeadersResponse {
                    response: Some(go_on(request_mutation(&a))),
                }))
                .await?;
                a
            }
            Err(d) => {
                count("denied");
                super::log_check(shared, "ext_proc", &client, &req, Err(&d), start);
                send(immediate(*d)).await?;
                return Ok(());
            }
        }
    } else {
        // Headers go on; the body comes buffered, and the header changes
        // ride on the body's answer (Envoy still holds the headers).
        let cap = if head.route.answer.is_some() {
            head.body_limit
        } else {
            head.inspect_cap
        };
        tx.send(Ok(ProcessingResponse {
            response: Some(Out::RequestHeaders(HeadersResponse {
                response: Some(go_on(None)),
            })),
            mode_override: Some(ProcessingMode {
                request_body_mode: BodySendMode::Buffered as i32,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .map_err(|_| tonic::Status::cancelled("Envoy closed the stream"))?;
        // Body pieces (one when buffered; several when streamed, their
        // answers held back until the verdict, as the proxy holds the body).
        // Held to the verdict, within overload.max_buffered_bytes.
        let mut held = shared
            .budget
            .reservation(snap.config.overload.max_buffered_bytes);
        let mut buf = BytesMut::new();
        let mut pending = 0usize;
        let mut complete = false;
        let mut early = None;
        loop {
            let Some(m) = inbound.message().await? else {
                return Ok(());
            };
            match m.request {
                Some(In::RequestBody(b)) => {
                    if !super::hold_body(shared, &mut held, b.body.len()) {
                        let d = super::buffers_full(shared, grpc, head.route);
                        count("denied");
                        super::log_check(shared, "ext_proc", &client, &req, Err(&d), start);
                        send(immediate(*d)).await?;
                        return Ok(());
                    }
                    pending += 1;
                    buf.extend_from_slice(&b.body);
                    if b.end_of_stream {
                        complete = true;
                        break;
                    }
                    if buf.len() as u64 > cap {
                        break;
                    }
                }
                Some(In::RequestTrailers(_)) => {
                    complete = true;
                    early = Some(Out::RequestTrailers(TrailersResponse::default()));
                    break;
                }
                // The body never came (Envoy's mode sends none and took
                // no override): the request went on unread.
                other => {
                    count("unread");
                    tracing::warn!(
                        route = %head.route.spec.name,
                        "ext_proc: no request body came for the route's filters; set the ext_proc filter's request_body_mode: BUFFERED or allow_mode_override: true"
                    );
                    return answer_rest(other, &mut inbound, tx, &head.allowed).await;
                }
            }
        }
        let partial = pending > 0 && !complete;
        match super::admit_body(shared, head, buf.freeze(), !partial, grpc).await {
            Ok(a) => {
                for i in 0..pending {
                    let m = if i == 0 { request_mutation(&a) } else { None };
                    send(Out::RequestBody(BodyResponse {
                        response: Some(go_on(m)),
                    }))
                    .await?;
                }
                if let Some(e) = early {
                    send(e).await?;
                }
                a
            }
            Err(d) => {
                count("denied");
                super::log_check(shared, "ext_proc", &client, &req, Err(&d), start);
                send(immediate(*d)).await?;
                return Ok(());
            }
        }
    };
    count("allowed");
    super::log_check(shared, "ext_proc", &client, &req, Ok(&allowed), start);
    let next = inbound.message().await?.and_then(|m| m.request);
    answer_rest(next, &mut inbound, tx, &allowed).await
}

/// The rest of the exchange: every further message continues; the
/// response head gets the admission's client headers.
async fn answer_rest(
    mut next: Option<In>,
    inbound: &mut tonic::Streaming<ProcessingRequest>,
    tx: &mpsc::Sender<Reply>,
    a: &Allowed,
) -> Result<(), tonic::Status> {
    loop {
        let out = match next.take() {
            None => return Ok(()),
            Some(In::RequestHeaders(_)) => {
                return Err(tonic::Status::invalid_argument(
                    "request_headers twice on one stream",
                ));
            }
            Some(In::RequestBody(_)) => Out::RequestBody(BodyResponse {
                response: Some(go_on(None)),
            }),
            Some(In::RequestTrailers(_)) => Out::RequestTrailers(TrailersResponse::default()),
            Some(In::ResponseHeaders(_)) => Out::ResponseHeaders(HeadersResponse {
                response: Some(go_on((!a.response.is_empty()).then(|| HeaderMutation {
                    set_headers: a.response.iter().map(|(k, v)| pb_header(k, v)).collect(),
                    ..Default::default()
                }))),
            }),
            Some(In::ResponseBody(_)) => Out::ResponseBody(BodyResponse {
                response: Some(go_on(None)),
            }),
            Some(In::ResponseTrailers(_)) => Out::ResponseTrailers(TrailersResponse::default()),
        };
        tx.send(reply(out))
            .await
            .map_err(|_| tonic::Status::cancelled("Envoy closed the stream"))?;
        next = match inbound.message().await? {
            Some(m) => m.request,
            None => return Ok(()),
        };
    }
}
