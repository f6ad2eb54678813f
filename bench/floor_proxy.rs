//! The floor of sift's stack: a TLS-terminating HTTP/1.1 reverse proxy made
//! of hyper 1 + tokio-rustls + rustls (the crates sift is built on) with no
//! logic at all: no routing, no header hygiene, no metrics, no policy, no
//! pool. Each downstream connection gets its own upstream connection
//! (`hyper::client::conn::http1`), and the upstream response body is handed
//! back unboxed. bench/tls-compare.sh runs it beside sift and nginx, so the
//! table shows how much of any gap to nginx is the stack and how much is
//! sift's own work. Not a product and not used by sift.
//!
//!   cargo bench --bench floor_proxy --no-run
//!   floor_proxy LISTEN BACKEND CERT KEY [CLIENT_CA]
//!
//! With CLIENT_CA, client certificates are required and verified (mTLS).

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn server_config(cert: &str, key: &str, ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.expect("cert PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let b = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("CA") {
                roots.add(c.expect("CA PEM")).expect("add CA");
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_single_cert(chain, key).expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Upstream = Arc<Mutex<Option<SendRequest<Incoming>>>>;

async fn forward(
    backend: &'static str,
    slot: Upstream,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut cached = slot.lock().map(|mut s| s.take()).unwrap_or(None);
    if let Some(s) = &mut cached {
        if s.ready().await.is_err() {
            cached = None;
        }
    }
    let mut send = match cached {
        Some(s) => s,
        None => {
            let tcp = tokio::net::TcpStream::connect(backend).await?;
            tcp.set_nodelay(true)?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            s
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    *req.uri_mut() = path;
    let fut = send.send_request(req);
    if let Ok(mut s) = slot.lock() {
        *s = Some(send);
    }
    Ok(fut.await?)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: floor_proxy LISTEN BACKEND CERT KEY [CLIENT_CA]");
        std::process::exit(2);
    }
    let cfg = server_config(&args[2], &args[3], args.get(4).map(String::as_str));
    let backend: &'static str = Box::leak(args[1].clone().into_boxed_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args[0]).await.expect("bind");
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let slot: Upstream = Arc::new(Mutex::new(None));
                let svc =
                    hyper::service::service_fn(move |req| forward(backend, slot.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
}
