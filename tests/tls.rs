//! TLS and mTLS end to end with certificates generated here (rcgen): real
//! handshakes on 127.0.0.1, each result asserted.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sift::body;
use support::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

struct Leaf {
    cert: String,
    key: String,
}

#[derive(Clone, Copy)]
enum Alg {
    Ecdsa,
    Ed25519,
    Rsa,
}

fn leaf(
    ca: &Ca,
    dns: &[&str],
    uri: Option<&str>,
    cn: &str,
    server: bool,
    expired: bool,
    alg: Alg,
) -> Leaf {
    let key = match alg {
        Alg::Ecdsa => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        Alg::Rsa => {
            // ring cannot generate RSA keys: openssl does.
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl is installed");
            let pem = String::from_utf8(out.stdout).unwrap();
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
        }
    };
    let mut p =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if server {
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    }
    if let Some(u) = uri {
        p.subject_alt_names
            .push(SanType::URI(u.try_into().unwrap()));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &TempDir, name: &str, s: &str) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, s).unwrap();
    p
}

/// The usual good client: spiffe://prod.example/ns/web/sa/frontend, CN
/// frontend, ECDSA, issued by `ca`.
fn frontend(ca: &Ca) -> Leaf {
    leaf(
        ca,
        &[],
        Some("spiffe://prod.example/ns/web/sa/frontend"),
        "frontend",
        false,
        false,
        Alg::Ecdsa,
    )
}

/// A TLS client: trusts `ca_pem`, presents `client` if given, offers `alpn`.
fn client_config(ca_pem: &str, client: Option<&Leaf>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some(l) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(l.cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

struct TlsResponse {
    status: u16,
    version: http::Version,
    headers: http::HeaderMap,
    body: Bytes,
    /// CN of the certificate the server presented.
    server_cn: String,
    /// The handshake resumed an earlier session.
    resumed: bool,
}

/// One request over a fresh TLS connection.
async fn tls_get(
    addr: std::net::SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsResponse, String> {
    tls_get_after(addr, b"", sni, cfg, path, headers).await
}

/// [`tls_get`] with `preamble` written on the TCP connection before the
/// handshake (a PROXY protocol header).
async fn tls_get_after(
    addr: std::net::SocketAddr,
    preamble: &[u8],
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsResponse, String> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::AsyncWriteExt::write_all(&mut tcp, preamble)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let server_cn = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|d| sift::tls::CertInfo::parse(d.as_ref()))
        .and_then(|i| i.cn)
        .unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut req = Request::get(format!("https://{sni}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body::empty()).unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().insert("host", sni.parse().unwrap());
        send.send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    };
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsResponse {
        status,
        version,
        headers,
        body,
        server_cn,
        resumed,
    })
}

struct Setup {
    ca: Ca,
    other_ca: Ca,
    dir: TempDir,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn setup() -> Setup {
    let other_ca = ca("other CA");
    let ca = ca("mesh CA");
    let dir = TempDir::new();
    let server = leaf(
        &ca,
        &["localhost"],
        Some("spiffe://prod.example/ns/sift/sa/proxy"),
        "server-v1",
        true,
        false,
        Alg::Ecdsa,
    );
    let server_cert = write(&dir, "server.pem", &server.cert);
    let server_key = write(&dir, "server.key", &server.key);
    write(&dir, "ca.pem", &ca.pem);
    Setup {
        ca,
        other_ca,
        dir,
        server_cert,
        server_key,
    }
}

fn tls_config(s: &Setup, mode: &str, upstream: std::net::SocketAddr, extra_routes: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 200ms }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert: "{}", key: "{}" }}
      client_auth: {{ mode: {mode}, ca: "{}" }}
routes:
{extra_routes}
  - name: open
    cluster: app
clusters:
  - {{ name: app, endpoints: ["{upstream}"] }}
"#,
        s.server_cert.display(),
        s.server_key.display(),
        s.dir.path("ca.pem").display()
    )
}

fn echo_json(r: &TlsResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_require_verifies_clients_and_passes_identity_as_xfcc() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&tls_config(
        &s,
        "require",
        up.addr,
        r#"  - name: web-only
    match: { path: { prefix: /web } }
    cluster: app
    allowed_identities: [ { namespace: prod.example/web } ]
  - name: legacy
    match: { path: { prefix: /legacy } }
    cluster: app
    allowed_identities: [ { exact: legacy-client } ]"#,
    ));
    let addr = sift.addr();
    let good = frontend(&s.ca);
    let good_cfg = client_config(&s.ca.pem, Some(&good), &["http/1.1"]);
    // A good client: 200, the upstream sees sift's XFCC, not the client's.
    let r = tls_get(
        addr,
        "localhost",
        good_cfg.clone(),
        "/web/x",
        &[("x-forwarded-client-cert", "By=evil;URI=spiffe://evil")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let v = echo_json(&r);
    let xfcc = v["headers"]["x-forwarded-client-cert"].as_array().unwrap();
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    let xfcc = xfcc[0].as_str().unwrap();
    assert!(
        xfcc.starts_with("By=spiffe://prod.example/ns/sift/sa/proxy;Hash="),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";URI=spiffe://prod.example/ns/web/sa/frontend"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("evil"));
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
    // A valid client from another namespace: the handshake works, the route says 403.
    let other_ns = leaf(
        &s.ca,
        &[],
        Some("spiffe://prod.example/ns/batch/sa/job"),
        "job",
        false,
        false,
        Alg::Ecdsa,
    );
    let cfg = client_config(&s.ca.pem, Some(&other_ns), &["http/1.1"]);
    let r = tls_get(addr, "localhost", cfg.clone(), "/web/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-sift-error"], "identity-denied");
    assert_eq!(
        tls_get(addr, "localhost", cfg, "/open", &[])
            .await
            .unwrap()
            .status,
        200
    );
    // No SAN: the subject CN is the identity.
    let legacy = leaf(
        &s.ca,
        &[],
        None,
        "legacy-client",
        false,
        false,
        Alg::Ed25519,
    );
    let cfg = client_config(&s.ca.pem, Some(&legacy), &["http/1.1"]);
    let r = tls_get(addr, "localhost", cfg, "/legacy", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.log_lines().iter().any(|l| {
                l.contains("\"identity\":\"legacy-client\"")
                    && l.contains("\"tls\":\"TLSv1.3\"")
                    && l.contains("\"sni\":\"localhost\"")
            })
        })
        .await,
        "the access log carries the identity, TLS version and server name"
    );
    // Rejected handshakes, each counted by reason.
    let foreign = leaf(
        &s.other_ca,
        &[],
        Some("spiffe://prod.example/ns/web/sa/frontend"),
        "x",
        false,
        false,
        Alg::Ecdsa,
    );
    let expired = leaf(
        &s.ca,
        &[],
        Some("spiffe://prod.example/ns/web/sa/frontend"),
        "old",
        false,
        true,
        Alg::Ecdsa,
    );
    for (who, cfg, reason) in [
        (
            "no cert",
            client_config(&s.ca.pem, None, &["http/1.1"]),
            "no_client_cert",
        ),
        (
            "other CA",
            client_config(&s.ca.pem, Some(&foreign), &["http/1.1"]),
            "unknown_ca",
        ),
        (
            "expired",
            client_config(&s.ca.pem, Some(&expired), &["http/1.1"]),
            "expired",
        ),
    ] {
        let r = tls_get(addr, "localhost", cfg, "/open", &[]).await;
        assert!(r.is_err(), "{who} must be refused");
        assert!(
            eventually(Duration::from_secs(2), || async {
                sift.metric(&format!(
                    r#"sift_tls_handshake_failures_total{{listener="main",reason="{reason}"}}"#
                ))
                .await
                    == Some(1.0)
            })
            .await,
            "{who}: reason {reason}"
        );
    }
    assert!(
        sift.metric(r#"sift_tls_handshakes_total{listener="main",peer="prod.example"}"#)
            .await
            .unwrap()
            >= 2.0
    );
    let expiry = sift
        .metric(r#"sift_tls_cert_expiry_seconds{listener="main",cert="server.pem"}"#)
        .await
        .unwrap();
    assert!(expiry > 86_400.0, "{expiry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_mode_h2_alpn_and_sni_with_rsa_and_ed25519_keys() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let rsa = leaf(
        &s.ca,
        &["rsa.example"],
        None,
        "rsa-server",
        true,
        false,
        Alg::Rsa,
    );
    let ed = leaf(
        &s.ca,
        &["ed.example"],
        None,
        "ed-server",
        true,
        false,
        Alg::Ed25519,
    );
    let cfg = tls_config(&s, "optional", up.addr, "").replace(
        "      client_auth:",
        &format!(
            "        - {{ cert: \"{}\", key: \"{}\", server_names: [rsa.example] }}\n        - {{ cert: \"{}\", key: \"{}\", server_names: [\"*.ed.example\", ed.example] }}\n      client_auth:",
            write(&s.dir, "rsa.pem", &rsa.cert).display(),
            write(&s.dir, "rsa.key", &rsa.key).display(),
            write(&s.dir, "ed.pem", &ed.cert).display(),
            write(&s.dir, "ed.key", &ed.key).display(),
        ),
    );
    let sift = Sift::start(&cfg);
    let addr = sift.addr();
    // Optional: no client certificate is fine, and then there is no XFCC.
    let anon = client_config(&s.ca.pem, None, &["h2", "http/1.1"]);
    let r = tls_get(addr, "localhost", anon.clone(), "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2, "ALPN chose h2");
    assert!(
        echo_json(&r)["headers"]
            .get("x-forwarded-client-cert")
            .is_none()
    );
    assert_eq!(r.server_cn, "server-v1", "the default certificate");
    // SNI picks the RSA and the Ed25519 certificates.
    assert_eq!(
        tls_get(addr, "rsa.example", anon.clone(), "/", &[])
            .await
            .unwrap()
            .server_cn,
        "rsa-server"
    );
    assert_eq!(
        tls_get(addr, "ed.example", anon.clone(), "/", &[])
            .await
            .unwrap()
            .server_cn,
        "ed-server"
    );
    // With a certificate: verified and forwarded.
    let good = leaf(
        &s.ca,
        &["frontend.prod.example"],
        None,
        "frontend",
        false,
        false,
        Alg::Ecdsa,
    );
    let cfg = client_config(&s.ca.pem, Some(&good), &["http/1.1"]);
    let r = tls_get(addr, "localhost", cfg, "/", &[]).await.unwrap();
    assert_eq!(r.version, http::Version::HTTP_11);
    let xfcc = echo_json(&r)["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(xfcc.contains("DNS=frontend.prod.example"), "{xfcc}");
    // A certificate from another CA is still refused in optional mode.
    let foreign = leaf(&s.other_ca, &[], None, "x", false, false, Alg::Ecdsa);
    assert!(
        tls_get(
            addr,
            "localhost",
            client_config(&s.ca.pem, Some(&foreign), &[]),
            "/",
            &[]
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_while_requests_run_and_broken_files_are_rejected() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&tls_config(&s, "require", up.addr, ""));
    let addr = sift.addr();
    let client = frontend(&s.ca);
    let cfg = client_config(&s.ca.pem, Some(&client), &["http/1.1"]);
    // Load: a new connection (a full handshake) per request.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let mut hs = Vec::new();
    for _ in 0..3 {
        let (stop, failed, seen_v2, cfg) =
            (stop.clone(), failed.clone(), seen_v2.clone(), cfg.clone());
        hs.push(tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                match tls_get(addr, "localhost", cfg.clone(), "/", &[]).await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        if r.server_cn == "server-v2" {
                            seen_v2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotate like cert-manager: write the new pair, then rename over.
    let v2 = leaf(
        &s.ca,
        &["localhost"],
        None,
        "server-v2",
        true,
        false,
        Alg::Ecdsa,
    );
    std::fs::write(s.dir.path("new.key"), &v2.key).unwrap();
    std::fs::write(s.dir.path("new.pem"), &v2.cert).unwrap();
    std::fs::rename(s.dir.path("new.key"), &s.server_key).unwrap();
    std::fs::rename(s.dir.path("new.pem"), &s.server_cert).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            seen_v2.load(Ordering::Relaxed) > 5
        })
        .await,
        "new handshakes see the new certificate"
    );
    // A broken certificate is rejected; the current one keeps serving.
    std::fs::write(
        s.dir.path("bad.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    std::fs::rename(s.dir.path("bad.pem"), &s.server_cert).unwrap();
    assert!(
        sift.metric_reaches(
            r#"sift_tls_reloads_total{listener="main",result="failure"}"#,
            1.0,
            Duration::from_secs(5)
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for h in hs {
        ok += h.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the rotation"
    );
    assert!(ok > 20, "{ok} requests");
    let r = tls_get(addr, "localhost", cfg, "/", &[]).await.unwrap();
    assert_eq!(
        r.server_cn, "server-v2",
        "the last good certificate still serves"
    );
    assert!(
        sift.metric(r#"sift_tls_reloads_total{listener="main",result="success"}"#)
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_mtls_origination() {
    let s = setup();
    // An upstream that requires a client certificate and answers its CN.
    let server = leaf(
        &s.ca,
        &["localhost"],
        None,
        "upstream",
        true,
        false,
        Alg::Ecdsa,
    );
    let up = https_upstream(
        &s.dir,
        "up",
        &server,
        &s.ca.pem,
        sift::tls::MtlsMode::Require,
    )
    .await;
    let client = leaf(
        &s.ca,
        &[],
        Some("spiffe://prod.example/ns/sift/sa/proxy"),
        "sift-client",
        false,
        false,
        Alg::Ecdsa,
    );
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: with-cert, match: {{ path: {{ prefix: /with }} }}, cluster: mtls }}
  - {{ name: without, cluster: tls-only }}
clusters:
  - name: mtls
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", server_name: localhost, cert: "{c}", key: "{k}" }}
  - name: tls-only
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", server_name: localhost }}
"#,
        ca = s.dir.path("ca.pem").display(),
        c = write(&s.dir, "client.pem", &client.cert).display(),
        k = write(&s.dir, "client.key", &client.key).display(),
    );
    let sift = Sift::start(&cfg);
    let (status, body) = get_text(&sift.url("/with")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "sift-client"),
        "the upstream saw sift's client certificate"
    );
    // Without a client certificate the upstream refuses the handshake: 502.
    let r = send(
        Request::get(sift.url("/without"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_failing_handshakes_does_not_stop_good_clients() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&tls_config(&s, "require", up.addr, ""));
    let addr = sift.addr();
    // 200 connections that fail: garbage, or TLS without a certificate.
    let mut bad = Vec::new();
    for i in 0..200 {
        let cfg = client_config(&s.ca.pem, None, &[]);
        bad.push(tokio::spawn(async move {
            if i % 2 == 0 {
                if let Ok(mut t) = tokio::net::TcpStream::connect(addr).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = t.write_all(b"\x16\x03\x01garbage-not-a-client-hello").await;
                }
            } else {
                let _ = tls_get(addr, "localhost", cfg, "/", &[]).await;
            }
        }));
    }
    let good = frontend(&s.ca);
    let cfg = client_config(&s.ca.pem, Some(&good), &["http/1.1"]);
    for _ in 0..20 {
        assert_eq!(
            tls_get(addr, "localhost", cfg.clone(), "/", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    for b in bad {
        let _ = b.await;
    }
    let mut failures = 0.0;
    for r in ["no_client_cert", "protocol", "closed", "io", "other"] {
        failures += sift
            .metric(&format!(
                r#"sift_tls_handshake_failures_total{{listener="main",reason="{r}"}}"#
            ))
            .await
            .unwrap_or(0.0);
    }
    assert!(failures >= 150.0, "failed handshakes counted: {failures}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_client_certificates_are_refused_by_the_crl() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let client = |serial: u64| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.subject_alt_names.push(SanType::URI(
            format!("spiffe://prod.example/ns/web/sa/c{serial}")
                .try_into()
                .unwrap(),
        ));
        p.distinguished_name
            .push(DnType::CommonName, format!("client-{serial}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &s.ca.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2036, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(4242u64),
            revocation_time: rcgen::date_time_ymd(2026, 6, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&s.ca.issuer)
    .unwrap();
    let crl_path = write(&s.dir, "ca.crl", &crl.pem().unwrap());
    let cfg = tls_config(&s, "require", up.addr, "").replace(
        &format!("ca: \"{}\" }}", s.dir.path("ca.pem").display()),
        &format!(
            "ca: \"{}\", crls: [\"{}\"] }}",
            s.dir.path("ca.pem").display(),
            crl_path.display()
        ),
    );
    assert!(cfg.contains("crls:"), "{cfg}");
    let sift = Sift::start(&cfg);
    let good = client_config(&s.ca.pem, Some(&client(7)), &["http/1.1"]);
    assert_eq!(
        tls_get(sift.addr(), "localhost", good, "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
    let revoked = client_config(&s.ca.pem, Some(&client(4242)), &["http/1.1"]);
    assert!(
        tls_get(sift.addr(), "localhost", revoked, "/", &[])
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.metric(r#"sift_tls_handshake_failures_total{listener="main",reason="revoked"}"#)
                .await
                == Some(1.0)
        })
        .await
    );
}

/// cert-manager / kubelet style: tls.crt -> ..data/tls.crt, ..data -> ..v1,
/// rotated by pointing ..data at a new directory with one rename.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_by_symlink_swap() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let v1 = s.dir.path("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(&s.server_cert, v1.join("tls.crt")).unwrap();
    std::fs::copy(&s.server_key, v1.join("tls.key")).unwrap();
    std::os::unix::fs::symlink("..v1", s.dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", s.dir.path("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", s.dir.path("tls.key")).unwrap();
    let cfg = tls_config(&s, "require", up.addr, "")
        .replace(
            &s.server_cert.display().to_string(),
            &s.dir.path("tls.crt").display().to_string(),
        )
        .replace(
            &s.server_key.display().to_string(),
            &s.dir.path("tls.key").display().to_string(),
        );
    let sift = Sift::start(&cfg);
    let client = frontend(&s.ca);
    let cc = client_config(&s.ca.pem, Some(&client), &["http/1.1"]);
    assert_eq!(
        tls_get(sift.addr(), "localhost", cc.clone(), "/", &[])
            .await
            .unwrap()
            .server_cn,
        "server-v1"
    );
    let v2 = s.dir.path("..v2");
    std::fs::create_dir(&v2).unwrap();
    let new = leaf(
        &s.ca,
        &["localhost"],
        None,
        "server-v2",
        true,
        false,
        Alg::Ed25519,
    );
    std::fs::write(v2.join("tls.crt"), &new.cert).unwrap();
    std::fs::write(v2.join("tls.key"), &new.key).unwrap();
    std::os::unix::fs::symlink("..v2", s.dir.path("..data_tmp")).unwrap();
    std::fs::rename(s.dir.path("..data_tmp"), s.dir.path("..data")).unwrap();
    let addr = sift.addr();
    assert!(
        eventually(Duration::from_secs(5), || {
            let cc = cc.clone();
            async move {
                tls_get(addr, "localhost", cc, "/", &[])
                    .await
                    .is_ok_and(|r| r.server_cn == "server-v2")
            }
        })
        .await,
        "the swapped certificate serves new handshakes"
    );
}

/// A client config like [`client_config`] limited to TLS 1.2.
fn client_config_tls12(ca_pem: &str, client: &Leaf) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(client.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn resumed_sessions_keep_the_client_identity_and_can_be_turned_off() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let client = frontend(&s.ca);
    let identity_of = |r: &TlsResponse| {
        let v = echo_json(r);
        v["headers"]["x-forwarded-client-cert"][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // Default: tickets on. TLS 1.3 and TLS 1.2 clients resume, and a resumed
    // connection carries the identity of the certificate of the first.
    let sift = Sift::start(&tls_config(&s, "require", up.addr, ""));
    for (version, cfg) in [
        (
            "TLS 1.3",
            client_config(&s.ca.pem, Some(&client), &["http/1.1"]),
        ),
        ("TLS 1.2", client_config_tls12(&s.ca.pem, &client)),
    ] {
        let first = tls_get(sift.addr(), "localhost", cfg.clone(), "/a", &[])
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        assert!(!first.resumed, "{version}: the first handshake is full");
        let xfcc = identity_of(&first);
        assert!(
            xfcc.ends_with(";URI=spiffe://prod.example/ns/web/sa/frontend"),
            "{version}: {xfcc}"
        );
        let second = tls_get(sift.addr(), "localhost", cfg.clone(), "/b", &[])
            .await
            .unwrap();
        assert_eq!(second.status, 200);
        assert!(second.resumed, "{version}: the second handshake resumes");
        assert_eq!(identity_of(&second), xfcc, "{version}");
    }
    assert_eq!(
        sift.metric(r#"sift_tls_resumed_handshakes_total{listener="main"}"#)
            .await,
        Some(2.0)
    );

    // A listener with `session_resumption: OPTS`; both client versions.
    let with_resumption = |opts: &str| {
        tls_config(&s, "require", up.addr, "").replace(
            "      client_auth:",
            &format!("      session_resumption: {opts}\n      client_auth:"),
        )
    };
    let both_versions = || {
        [
            client_config(&s.ca.pem, Some(&client), &["http/1.1"]),
            client_config_tls12(&s.ca.pem, &client),
        ]
    };

    // No session cache: tickets alone resume both versions.
    let tickets_only = Sift::start(&with_resumption("{ cache_size: 0 }"));
    for cfg in both_versions() {
        let (first, second) = two_gets(tickets_only.addr(), cfg).await;
        assert!(!first.resumed && second.resumed);
        assert_eq!(identity_of(&second), identity_of(&first));
    }

    // Tickets and cache off: every handshake is full.
    let off = Sift::start(&with_resumption("{ tickets: false, cache_size: 0 }"));
    for cfg in both_versions() {
        let (first, second) = two_gets(off.addr(), cfg).await;
        assert_eq!((first.status, second.status), (200, 200));
        assert!(!first.resumed && !second.resumed);
    }
    assert_eq!(
        off.metric(r#"sift_tls_resumed_handshakes_total{listener="main"}"#)
            .await,
        None,
        "no resumed handshake is counted"
    );
    assert_eq!(
        off.metric(r#"sift_tls_handshakes_total{listener="main"}"#)
            .await,
        Some(4.0)
    );

    // A config that asks for too large a cache is refused with its path.
    let err = Sift::try_start(&with_resumption("{ cache_size: 5000000 }"))
        .err()
        .expect("refused");
    assert!(
        err.contains("session_resumption.cache_size") && err.contains("at most 1000000"),
        "{err}"
    );
}

/// Two requests, each on a new connection with the same client config.
async fn two_gets(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> (TlsResponse, TlsResponse) {
    let first = tls_get(addr, "localhost", cfg.clone(), "/r", &[])
        .await
        .unwrap();
    let second = tls_get(addr, "localhost", cfg, "/r", &[]).await.unwrap();
    (first, second)
}

/// A server certificate signed by `ca` for localhost with the key in
/// `key_pem`, valid from `from` to `until` (seconds from now, may be < 0).
fn server_cert_valid(ca: &Ca, key_pem: &str, cn: &str, from: i64, until: i64) -> String {
    let key = KeyPair::from_pem(key_pem).unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    p.not_before = epoch + Duration::from_secs((now + from) as u64);
    p.not_after = epoch + Duration::from_secs((now + until) as u64);
    p.signed_by(&key, &ca.issuer).unwrap().pem()
}

/// A rotation to a certificate outside its validity (expired, or not valid
/// yet) is rejected and counted, and the current certificate keeps serving:
/// swapping in either would fail every new handshake. A certificate not
/// valid yet is taken as soon as it is, with no further file change.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_waits_for_a_valid_certificate() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&tls_config(&s, "require", up.addr, ""));
    let addr = sift.addr();
    let client = frontend(&s.ca);
    let cfg = client_config(&s.ca.pem, Some(&client), &["http/1.1"]);
    let key_pem = std::fs::read_to_string(&s.server_key).unwrap();
    let failures = r#"sift_tls_reloads_total{listener="main",result="failure"}"#;
    let rotate = |pem: String| {
        std::fs::write(s.dir.path("new.pem"), pem).unwrap();
        std::fs::rename(s.dir.path("new.pem"), &s.server_cert).unwrap();
    };
    // Expired an hour ago.
    rotate(server_cert_valid(
        &s.ca, &key_pem, "expired", -86_400, -3_600,
    ));
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(failures).await.unwrap_or(0.0) >= 1.0
        })
        .await,
        "an expired certificate is rejected"
    );
    let r = tls_get(addr, "localhost", cfg.clone(), "/", &[]).await;
    assert_eq!(
        r.map(|r| r.server_cn),
        Ok("server-v1".to_string()),
        "the valid certificate keeps serving"
    );
    // Valid in 3 seconds.
    rotate(server_cert_valid(&s.ca, &key_pem, "server-v3", 3, 86_400));
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.metric(failures).await.unwrap_or(0.0) >= 2.0
        })
        .await,
        "a certificate not valid yet is rejected"
    );
    let r = tls_get(addr, "localhost", cfg.clone(), "/", &[]).await;
    assert_eq!(r.map(|r| r.server_cn), Ok("server-v1".to_string()));
    assert!(
        eventually(Duration::from_secs(8), || async {
            tls_get(addr, "localhost", cfg.clone(), "/", &[])
                .await
                .is_ok_and(|r| r.server_cn == "server-v3")
        })
        .await,
        "the new certificate serves once it is valid"
    );
    assert_eq!(sift.metric(failures).await, Some(2.0), "counted once each");
}

/// A SPIFFE ID comes only from a URI SAN (X509-SVID spec). A certificate
/// from the same CA whose subject CN merely reads like one
/// (`CN=spiffe://prod.example/ns/web/sa/frontend`, no SAN) has no identity:
/// every `allowed_identities` kind refuses it, and its metric label is
/// `none`, not the trust domain. A real SVID still passes.
#[tokio::test(flavor = "multi_thread")]
async fn spiffe_ids_come_only_from_uri_sans() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&tls_config(
        &s,
        "require",
        up.addr,
        r#"  - name: ns
    match: { path: { prefix: /ns } }
    cluster: app
    allowed_identities: [ { namespace: prod.example/web } ]
  - name: td
    match: { path: { prefix: /td } }
    cluster: app
    allowed_identities: [ { trust_domain: prod.example } ]
  - name: exact
    match: { path: { prefix: /exact } }
    cluster: app
    allowed_identities: [ { exact: "spiffe://prod.example/ns/web/sa/frontend" } ]
  - name: prefix
    match: { path: { prefix: /prefix } }
    cluster: app
    allowed_identities: [ { prefix: "spiffe://prod.example/" } ]"#,
    ));
    let addr = sift.addr();
    let id = "spiffe://prod.example/ns/web/sa/frontend";
    let by_cn = leaf(&s.ca, &[], None, id, false, false, Alg::Ecdsa);
    let svid = frontend(&s.ca);
    for path in ["/ns", "/td", "/exact", "/prefix"] {
        let cfg = client_config(&s.ca.pem, Some(&by_cn), &["http/1.1"]);
        let r = tls_get(addr, "localhost", cfg, path, &[]).await.unwrap();
        assert_eq!(r.status, 403, "{path}: a CN is not a SPIFFE ID");
        let cfg = client_config(&s.ca.pem, Some(&svid), &["http/1.1"]);
        let r = tls_get(addr, "localhost", cfg, path, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{path}: the SVID passes");
    }
    assert_eq!(
        sift.metric(r#"sift_tls_handshakes_total{listener="main",peer="none"}"#)
            .await,
        Some(4.0)
    );
}

/// `sift check` loads the TLS material `sift run` would (listener
/// certificate, key and CA; cluster CA, client certificate and SNI name):
/// a config that cannot start is not reported ok.
#[test]
fn sift_check_loads_tls_files() {
    let dir = TempDir::new();
    let cfg = dir.path("sift.yaml");
    std::fs::write(
        &cfg,
        r#"listeners:
  - name: main
    address: "127.0.0.1:0"
    tls:
      certificates: [{ cert: /nonexistent/server.pem, key: /nonexistent/server.key }]
      client_auth: { mode: off }
clusters:
  - name: app
    endpoints: ["127.0.0.1:1"]
    tls: { ca: /nonexistent/ca.pem }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":4: listeners[0].tls: cannot read /nonexistent/server.pem"),
        "{err}"
    );
    assert!(
        err.contains(":10: clusters[0].tls: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
}

/// A TCP load balancer in front of an mTLS listener (AWS NLB with TLS
/// passthrough and the PROXY protocol): the v2 header comes before the
/// ClientHello; the handshake, the identity and the client address all
/// hold.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_header_before_an_mtls_handshake() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let cfg = tls_config(&s, "require", up.addr, "")
        .replace("    tls:\n", "    proxy_protocol: required\n    tls:\n");
    let sift = Sift::start(&cfg);
    let client = frontend(&s.ca);
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 50, 10, 0, 0, 1, 0x30, 0x39, 1, 0xbb]);
    let r = tls_get_after(
        sift.addr(),
        &v2,
        "localhost",
        client_config(&s.ca.pem, Some(&client), &["http/1.1"]),
        "/x",
        &[],
    )
    .await
    .expect("handshake after the PROXY header");
    assert_eq!(r.status, 200);
    let v = echo_json(&r);
    assert_eq!(v["headers"]["x-forwarded-for"][0], "203.0.113.50");
    let xfcc = v["headers"]["x-forwarded-client-cert"][0].as_str().unwrap();
    assert!(
        xfcc.contains("spiffe://prod.example/ns/web/sa/frontend"),
        "{xfcc}"
    );
    // The same client without the header: closed before any handshake.
    let e = tls_get(
        sift.addr(),
        "localhost",
        client_config(&s.ca.pem, Some(&client), &["http/1.1"]),
        "/x",
        &[],
    )
    .await;
    assert!(e.is_err(), "{:?}", e.map(|r| r.status));
}

/// Global rate limits over TLS to Redis (its `tls-port`, client
/// certificates required, as ElastiCache in-transit encryption with AUTH
/// would be): counted there; a sift that does not trust Redis's CA cannot
/// reach it and fails closed.
#[tokio::test(flavor = "multi_thread")]
async fn global_rate_limits_reach_redis_over_mtls() {
    let s = setup();
    let redis_leaf = leaf(
        &s.ca,
        &["localhost"],
        None,
        "redis",
        true,
        false,
        Alg::Ecdsa,
    );
    let client = leaf(&s.ca, &[], None, "sift", false, false, Alg::Ecdsa);
    let rcert = write(&s.dir, "redis.pem", &redis_leaf.cert);
    let rkey = write(&s.dir, "redis.key", &redis_leaf.key);
    let ccert = write(&s.dir, "client.pem", &client.cert);
    let ckey = write(&s.dir, "client.key", &client.key);
    let other = write(&s.dir, "other.pem", &s.other_ca.pem);
    let port = free_port();
    let tls_port = port.to_string();
    let ca_file = s.dir.path("ca.pem");
    let _redis = RedisServer::spawn(
        port,
        &[
            std::ffi::OsStr::new("--port"),
            "0".as_ref(),
            "--tls-port".as_ref(),
            tls_port.as_ref(),
            "--tls-auth-clients".as_ref(),
            "yes".as_ref(),
            "--tls-cert-file".as_ref(),
            rcert.as_os_str(),
            "--tls-key-file".as_ref(),
            rkey.as_os_str(),
            "--tls-ca-cert-file".as_ref(),
            ca_file.as_os_str(),
        ],
    );
    let up = Upstream::echo("app").await;
    let cfg = |ca: &std::path::Path| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
redis:
  address: "127.0.0.1:{port}"
  failure_mode: deny
  timeout: 2s
  tls: {{ ca: "{}", cert: "{}", key: "{}", server_name: localhost }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: api
    cluster: app
    rate_limits: [ {{ name: g, requests_per_unit: 2, unit: minute, key: [method], global: true }} ]
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
            ca.display(),
            ccert.display(),
            ckey.display(),
            up.addr
        )
    };
    let sift = Sift::start(&cfg(&s.dir.path("ca.pem")));
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(get_text(&sift.url("/x")).await.0);
    }
    assert_eq!(codes, [200, 200, 429]);
    let wrong = Sift::start(&cfg(&other));
    let r = send(Request::get(wrong.url("/x")).body(body::empty()).unwrap()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "ratelimit-unavailable");
    // redis.tls files are watched: once the CA file holds the right CA,
    // Redis is reached, and its count (2 of 2 taken above) says 429.
    std::fs::write(&other, &s.ca.pem).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_text(&wrong.url("/x")).await.0 == 429
        })
        .await,
        "the rotated CA reaches Redis"
    );
    assert_eq!(
        wrong
            .metric(r#"sift_upstream_tls_reloads_total{cluster="redis/",result="success"}"#)
            .await,
        Some(1.0)
    );
    // A CA file that cannot be read is a config error, named.
    let err = Sift::try_start(&cfg(std::path::Path::new("/nonexistent/ca.pem")))
        .err()
        .expect("refused");
    assert!(
        err.contains("redis.tls") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

/// `serve: tcp` behind mTLS (the sidecar in front of a database): the
/// mesh's client certificate is checked against `allowed_identities`, a
/// client that offers its own ALPN (PostgreSQL's) still connects, and the
/// bytes reach the server in the clear.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_listener_terminates_mtls_and_checks_identities() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = server.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = c.read(&mut buf).await {
                    let _ = c.write_all(b"db:").await;
                    let _ = c.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: db
    address: "127.0.0.1:0"
    serve: tcp
    tcp:
      cluster: pg
      allowed_identities: [ {{ exact: "spiffe://prod.example/ns/web/sa/frontend" }} ]
    tls:
      certificates:
        - {{ cert: "{}", key: "{}" }}
      client_auth: {{ mode: require, ca: "{}" }}
clusters:
  - {{ name: pg, endpoints: ["{db}"] }}
"#,
        s.server_cert.display(),
        s.server_key.display(),
        s.dir.path("ca.pem").display()
    );
    let sift = Sift::start(&cfg);
    let talk = |client: Leaf| {
        let cfg = client_config(&s.ca.pem, Some(&client), &["postgresql"]);
        let addr = sift.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .expect("handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), None);
            tls.write_all(b"SELECT 1").await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
            String::from_utf8_lossy(&got).into_owned()
        }
    };
    assert_eq!(talk(frontend(&s.ca)).await, "db:SELECT 1");
    let other = leaf(
        &s.ca,
        &[],
        Some("spiffe://prod.example/ns/web/sa/crawler"),
        "crawler",
        false,
        false,
        Alg::Ecdsa,
    );
    assert_eq!(
        talk(other).await,
        "",
        "a caller not allowed reaches nothing"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(
                r#"sift_tcp_connections_total{cluster="pg",listener="db",result="identity_denied"}"#,
            )
            .await
                == Some(1.0)
        })
        .await
    );
}

/// A TLS server (its own certificate for `name`, issued by `ca`) that
/// writes `name` to each client after the handshake.
async fn tls_backend(ca: &Ca, name: &'static str) -> std::net::SocketAddr {
    tls_backend_alpn(ca, name, &[]).await
}

/// [`tls_backend`] that requires one of `alpn` when the client offers any
/// (as PostgreSQL's direct TLS does with `postgresql`).
async fn tls_backend_alpn(ca: &Ca, name: &'static str, alpn: &[&str]) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = leaf(ca, &[name], None, name, true, false, Alg::Ecdsa);
    let chain: Vec<_> = CertificateDer::pem_slice_iter(l.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let mut cfg = cfg;
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = acceptor.accept(s).await {
                    let _ = t.write_all(name.as_bytes()).await;
                    let _ = t.shutdown().await;
                }
            });
        }
    });
    addr
}

/// TLS passthrough: a `serve: tcp` listener without `tls` routes each
/// connection by the SNI of its ClientHello, read without consuming it,
/// so the client's handshake completes with the backend's own
/// certificate; a name no route takes, with no default, is closed.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_listener_routes_tls_passthrough_by_sni() {
    use tokio::io::AsyncReadExt;
    let s = setup();
    let api = tls_backend(&s.ca, "api.test").await;
    let shop = tls_backend(&s.ca, "shop.apps.test").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: passthrough
    address: "127.0.0.1:0"
    serve: tcp
    tcp:
      routes:
        - {{ server_names: [api.test], cluster: api }}
        - {{ server_names: ["*.apps.test"], cluster: apps }}
clusters:
  - {{ name: api, endpoints: ["{api}"] }}
  - {{ name: apps, endpoints: ["{shop}"] }}
"#
    );
    let sift = Sift::start(&cfg);
    let talk = |name: &'static str| {
        let cfg = client_config(&s.ca.pem, None, &[]);
        let addr = sift.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let server = ServerName::try_from(name).unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(server, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut got = String::new();
            let _ = tls.read_to_string(&mut got).await;
            Ok::<String, String>(got)
        }
    };
    // The certificate each client checked is the backend's: sift holds none.
    assert_eq!(talk("api.test").await.unwrap(), "api.test");
    assert_eq!(talk("shop.apps.test").await.unwrap(), "shop.apps.test");
    assert!(talk("other.test").await.is_err(), "no route, no default");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(
                r#"sift_tcp_connections_total{cluster="none",listener="passthrough",result="no_route"}"#,
            )
            .await
                == Some(1.0)
        })
        .await
    );
    let apps_line = || {
        sift.log_lines()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find(|v| v["message"] == "tcp" && v["cluster"] == "apps")
    };
    assert!(eventually(Duration::from_secs(5), || async { apps_line().is_some() }).await);
    let line = apps_line().unwrap();
    assert_eq!(line["server_name"], "shop.apps.test", "{line}");
}

/// A TCP listener whose cluster originates TLS: sift offers no ALPN on
/// those connections (they are not HTTP), so a server that refuses an ALPN
/// it does not know (here one that speaks only `postgresql`) still accepts.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_listener_originates_tls_without_alpn() {
    use tokio::io::AsyncReadExt;
    let s = setup();
    let db = tls_backend_alpn(&s.ca, "db.test", &["postgresql"]).await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: db
    address: "127.0.0.1:0"
    serve: tcp
    tcp: {{ cluster: pg }}
clusters:
  - name: pg
    endpoints: ["{db}"]
    tls: {{ ca: "{}", server_name: db.test }}
"#,
        s.dir.path("ca.pem").display()
    );
    let sift = Sift::start(&cfg);
    let mut c = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let mut got = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut got)).await;
    assert_eq!(got, "db.test", "the TLS server behind sift answered");
}

/// A binary upgrade hands an mTLS listener over: TLS handshakes with client
/// certificates go on through the switch without a failure, and the new
/// process verifies clients and passes their identity as the old one did.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_hands_an_mtls_listener_over() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = setup();
    let up = Upstream::echo("app").await;
    let socket = s.dir.path("upgrade.sock");
    let cfg = tls_config(&s, "require", up.addr, "").replace(
        "reload: { interval: 200ms }",
        &format!(
            "reload: {{ interval: 200ms }}\nupgrade: {{ socket: \"{}\" }}",
            socket.display()
        ),
    );
    let mut old = Sift::start(&cfg);
    let addr = old.addr();
    let good = frontend(&s.ca);
    let good_cfg = client_config(&s.ca.pem, Some(&good), &["http/1.1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed, cfg) = (stop.clone(), ok.clone(), failed.clone(), good_cfg.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tls_get(addr, "localhost", cfg.clone(), "/x", &[]).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = TempDir::new();
    let path = dir.path("sift.yaml");
    std::fs::write(&path, &cfg).unwrap();
    let new = Sift::start_with(dir, path, &["--upgrade"]).unwrap();
    assert_eq!(new.addr(), addr);
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(10)));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "{}",
        ok.load(Ordering::Relaxed)
    );
    // The new process verifies clients and passes their identity.
    let r = tls_get(addr, "localhost", good_cfg, "/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let xfcc = echo_json(&r)["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.ends_with(";URI=spiffe://prod.example/ns/web/sa/frontend"),
        "{xfcc}"
    );
    let anonymous = client_config(&s.ca.pem, None, &["http/1.1"]);
    assert!(
        tls_get(addr, "localhost", anonymous, "/x", &[])
            .await
            .is_err()
    );
}

/// An HTTPS upstream with `server`'s certificate (PEM files under `dir`),
/// asking for a client certificate from `client_ca` (`mode`): it answers
/// each request with the client certificate's CN (`anonymous` without one)
/// and `connection: close`, so every request is a new handshake.
async fn https_upstream(
    dir: &TempDir,
    tag: &str,
    server: &Leaf,
    client_ca: &str,
    mode: sift::tls::MtlsMode,
) -> std::net::SocketAddr {
    let cfg = test_server_tls(dir, tag, server, mode, Some(client_ca));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|d| sift::tls::CertInfo::parse(d.as_ref()))
                    .and_then(|i| i.cn)
                    .unwrap_or_else(|| "anonymous".into());
                let svc = hyper::service::service_fn(move |_req| {
                    let cn = cn.clone();
                    async move {
                        let mut r = http::Response::new(full(cn));
                        r.headers_mut()
                            .insert("connection", http::HeaderValue::from_static("close"));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// `protocol: client` over TLS: an HTTP/1.1 request's connection offers
/// `http/1.1` by ALPN, an HTTP/2 request's `h2`, and each goes in its
/// client's protocol to an upstream that speaks both (it answers with the
/// version and the protocol ALPN chose).
#[tokio::test(flavor = "multi_thread")]
async fn client_protocol_cluster_offers_the_clients_protocol_by_alpn() {
    let s = setup();
    let api = leaf(
        &s.ca,
        &["api.internal"],
        None,
        "api",
        true,
        false,
        Alg::Ecdsa,
    );
    let mut cfg = (*test_server_tls(&s.dir, "api", &api, sift::tls::MtlsMode::Off, None)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map_or("none".to_string(), |a| {
                        String::from_utf8_lossy(a).into_owned()
                    });
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = format!("{:?} {alpn}", req.version());
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(full(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes: [{{ name: all, cluster: api }}]
clusters:
  - name: api
    endpoints: ["{up}"]
    protocol: client
    tls: {{ ca: "{ca}", server_name: api.internal }}
"#,
        ca = s.dir.path("ca.pem").display(),
    );
    let sift = Sift::start(&cfg);
    for (client, want) in [
        (http1_client(), "HTTP/1.1 http/1.1"),
        (http2_client(), "HTTP/2.0 h2"),
        (http1_client(), "HTTP/1.1 http/1.1"),
    ] {
        let r = client
            .request(Request::get(sift.url("/x")).body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(b, want);
    }
}

/// `subject_alt_names` checks the upstream's workload identity (a SPIFFE
/// ID in its URI SAN) instead of a host name, as Istio's DestinationRule
/// `subjectAltNames` does: the right ID passes whatever the server name,
/// another ID fails, and the chain is still checked (the right ID from
/// another CA fails). Without the list the server name is checked as
/// before.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_subject_alt_names_check_the_workload() {
    let s = setup();
    let api_id = "spiffe://prod.example/ns/api/sa/api";
    let api = leaf(&s.ca, &[], Some(api_id), "api", true, false, Alg::Ecdsa);
    let up = https_upstream(
        &s.dir,
        "api",
        &api,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    // The same workload ID, from a CA sift does not trust.
    let rogue = leaf(
        &s.other_ca,
        &[],
        Some(api_id),
        "rogue",
        true,
        false,
        Alg::Ecdsa,
    );
    let rogue_up = https_upstream(
        &s.dir,
        "rogue",
        &rogue,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    let ca = s.dir.path("ca.pem");
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: right, match: {{ path: {{ prefix: /right }} }}, cluster: right }}
  - {{ name: dns, match: {{ path: {{ prefix: /dns }} }}, cluster: dns }}
  - {{ name: wrong, match: {{ path: {{ prefix: /wrong }} }}, cluster: wrong }}
  - {{ name: rogue, match: {{ path: {{ prefix: /rogue }} }}, cluster: rogue }}
  - {{ name: byname, cluster: byname }}
clusters:
  - name: right
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", server_name: api.internal, subject_alt_names: ["spiffe://prod.example/ns/web/sa/web", "{api_id}"] }}
  - name: dns
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", subject_alt_names: ["api.internal"] }}
  - name: wrong
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", subject_alt_names: ["spiffe://prod.example/ns/api/sa/other"] }}
  - name: rogue
    endpoints: ["{rogue_up}"]
    tls: {{ ca: "{ca}", subject_alt_names: ["{api_id}"] }}
  - name: byname
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", server_name: api.internal }}
"#,
        ca = ca.display(),
    );
    let sift = Sift::start(&cfg);
    let (status, body) = get_text(&sift.url("/right")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "anonymous"),
        "the listed SPIFFE ID passes"
    );
    for path in ["/dns", "/wrong", "/rogue", "/byname"] {
        let r = send(Request::get(sift.url(path)).body(body::empty()).unwrap()).await;
        assert_eq!(r.status(), 502, "{path}");
        assert_eq!(
            r.headers()["x-sift-error"],
            "upstream-connect-failure",
            "{path}"
        );
    }
    let logs = sift.log_lines().join("\n");
    assert!(
        logs.contains(
            "match none of subject_alt_names [\\\"spiffe://prod.example/ns/api/sa/other\\\"]"
        ),
        "the mismatch is named in the log: {logs}"
    );
    // A bad list is a config error, not a certificate that passes.
    let bad = cfg.replace(
        r#"subject_alt_names: ["api.internal"]"#,
        r#"subject_alt_names: ["api internal"]"#,
    );
    let path = write(&s.dir, "bad.yaml", &bad);
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("clusters[1].tls.subject_alt_names[0]") && err.contains("is not a SAN"),
        "{err}"
    );
}

/// A cluster's client certificate and CA bundle rotate from their files
/// while sift runs, as a listener's do: new connections use the new
/// material, a broken file is rejected and counted while the old material
/// keeps serving, and the client certificate's expiry is a metric.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_client_certificates_and_cas_rotate() {
    let s = setup();
    let server = leaf(&s.ca, &["localhost"], None, "up", true, false, Alg::Ecdsa);
    let up = https_upstream(
        &s.dir,
        "up",
        &server,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    // An upstream whose certificate comes from the other CA.
    let other = leaf(
        &s.other_ca,
        &["localhost"],
        None,
        "other",
        true,
        false,
        Alg::Ecdsa,
    );
    let other_up = https_upstream(
        &s.dir,
        "other",
        &other,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    let v1 = leaf(&s.ca, &[], None, "client-v1", false, false, Alg::Ecdsa);
    let cert = write(&s.dir, "client.pem", &v1.cert);
    let key = write(&s.dir, "client.key", &v1.key);
    let bundle = write(&s.dir, "bundle.pem", &s.ca.pem);
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 100ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: other, match: {{ path: {{ prefix: /other }} }}, cluster: other }}
  - {{ name: mtls, cluster: mtls }}
clusters:
  - name: mtls
    endpoints: ["{up}"]
    tls: {{ ca: "{ca}", server_name: localhost, cert: "{cert}", key: "{key}" }}
  - name: other
    endpoints: ["{other_up}"]
    tls: {{ ca: "{bundle}", server_name: localhost }}
"#,
        ca = s.dir.path("ca.pem").display(),
        cert = cert.display(),
        key = key.display(),
        bundle = bundle.display(),
    );
    let sift = Sift::start(&cfg);
    assert_eq!(get_text(&sift.url("/")).await, (200, "client-v1".into()));
    assert_eq!(
        get_text(&sift.url("/other")).await.0,
        502,
        "not trusted yet"
    );
    let metrics = || async { get_text(&sift.admin_url("/metrics")).await.1 };
    let expiry = metric_value(
        &metrics().await,
        r#"sift_upstream_tls_cert_expiry_seconds{cluster="mtls"}"#,
    )
    .unwrap();
    assert!(expiry > 86400.0, "{expiry}");

    // Rotate the client certificate and key: written beside, renamed over.
    let v2 = leaf(&s.ca, &[], None, "client-v2", false, false, Alg::Ecdsa);
    let tmp_c = write(&s.dir, "client.pem.new", &v2.cert);
    let tmp_k = write(&s.dir, "client.key.new", &v2.key);
    std::fs::rename(&tmp_k, &key).unwrap();
    std::fs::rename(&tmp_c, &cert).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_text(&sift.url("/")).await == (200, "client-v2".into())
        })
        .await,
        "the new client certificate is presented"
    );
    let m = metrics().await;
    assert!(
        metric_value(
            &m,
            r#"sift_upstream_tls_reloads_total{cluster="mtls",result="success"}"#
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );

    // A broken key is rejected; client-v2 keeps being presented.
    std::fs::write(&key, "not a key").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_value(
                &metrics().await,
                r#"sift_upstream_tls_reloads_total{cluster="mtls",result="failure"}"#,
            )
            .is_some_and(|v| v >= 1.0)
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(get_text(&sift.url("/")).await, (200, "client-v2".into()));
    }
    let logs = sift.log_lines().join("\n");
    assert!(
        logs.contains("new upstream TLS material rejected") && logs.contains("client.key"),
        "{logs}"
    );

    // The other cluster's CA bundle gains the other CA: now trusted.
    std::fs::write(&bundle, format!("{}{}", s.ca.pem, s.other_ca.pem)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_text(&sift.url("/other")).await == (200, "anonymous".into())
        })
        .await,
        "the rotated CA bundle is used"
    );
}

/// A test server's TLS (HTTP/1.1 by ALPN): `server`'s certificate, and
/// client certificates from `client_ca` as `mode` says.
fn test_server_tls(
    dir: &TempDir,
    tag: &str,
    server: &Leaf,
    mode: sift::tls::MtlsMode,
    client_ca: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    let spec = sift::tls::ListenerTlsSpec {
        certificates: vec![sift::tls::CertSpec {
            cert: write(dir, &format!("{tag}-up.pem"), &server.cert),
            key: write(dir, &format!("{tag}-up.key"), &server.key),
            server_names: vec![],
        }],
        mode,
        ca: client_ca.map(|c| write(dir, &format!("{tag}-up-clients.pem"), c)),
        crls: vec![],
        alpn: vec!["http/1.1".into()],
        tickets: false,
        session_cache: 0,
        tls13_only: false,
    };
    sift::tls::server_config(&spec).unwrap().config
}

/// Traces reach a collector over TLS (an `https` endpoint, its CA given),
/// with the configured fields (a vendor's API key) on every export; the
/// connection is kept for the next export; `/config` shows the fields'
/// names, not their values. A collector whose certificate does not chain
/// to the CA gets nothing: the spans are counted failed.
#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_a_collector_over_tls_with_headers() {
    let s = setup();
    let server = leaf(
        &s.ca,
        &["collector.test"],
        None,
        "collector",
        true,
        false,
        Alg::Ecdsa,
    );
    let cfg = test_server_tls(&s.dir, "collector", &server, sift::tls::MtlsMode::Off, None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // (path, x-honeycomb-team, body) of each export, and the connections.
    let got = Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, c) = (got.clone(), conns.clone());
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, g) = (acceptor.clone(), g.clone());
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let key = req
                            .headers()
                            .get("x-honeycomb-team")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock().unwrap().push((
                            path,
                            key,
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        Ok::<_, std::convert::Infallible>(http::Response::new(full("{}")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let up = Upstream::start(|_req| async { text_response(200, "ok") }).await;
    let config = |ca: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
tracing:
  endpoint: "https://{addr}"
  tls: {{ ca: "{ca}", server_name: collector.test }}
  headers: {{ x-honeycomb-team: "s3cret-team" }}
  flush_interval: 50ms
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: r, cluster: a }}
clusters:
  - {{ name: a, endpoints: ["{}"] }}
"#,
            up.addr
        )
    };
    let sift = Sift::start(&config(&s.dir.path("ca.pem").display().to_string()));
    for path in ["/one", "/two"] {
        let (code, _) = get_text(&sift.url(path)).await;
        assert_eq!(code, 200);
        let n = if path == "/one" { 1 } else { 2 };
        let arrived = eventually(Duration::from_secs(5), || async {
            got.lock().unwrap().len() >= n
        })
        .await;
        assert!(arrived, "export {n} reached the collector");
    }
    {
        let got = got.lock().unwrap();
        for (i, (path, key, body)) in got.iter().enumerate() {
            assert_eq!(path, "/v1/traces");
            assert_eq!(key, "s3cret-team");
            let want = if i == 0 { "\"/one\"" } else { "\"/two\"" };
            assert!(body.contains(want), "{body}");
        }
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second export reused the connection"
    );
    let (_, shown) = get_text(&sift.admin_url("/config")).await;
    assert!(!shown.contains("s3cret-team"), "{shown}");
    assert!(shown.contains("x-honeycomb-team"), "{shown}");
    drop(sift);

    // A CA the collector's certificate does not chain to: nothing arrives.
    let other = write(&s.dir, "other.pem", &s.other_ca.pem);
    let before = got.lock().unwrap().len();
    let sift = Sift::start(&config(&other.display().to_string()));
    let (code, _) = get_text(&sift.url("/three")).await;
    assert_eq!(code, 200);
    let failed = r#"sift_trace_spans_total{result="failed"}"#;
    assert!(
        sift.metric_reaches(failed, 1.0, Duration::from_secs(5))
            .await,
        "the span is counted failed"
    );
    assert_eq!(got.lock().unwrap().len(), before);
}

/// `ca: system` trusts the operating system's CA bundle, found where
/// OpenSSL and Go find it: `$SSL_CERT_FILE` first (here a generated CA, so
/// the test needs no public CA), else /etc/ssl/certs/ca-certificates.crt
/// and the other usual files (unit-tested in src/tls.rs). A bundle that
/// does not hold the upstream's CA fails the handshake, and one that
/// cannot be read is a config error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn system_ca_bundle_is_trusted_with_ca_system() {
    let s = setup();
    let server = leaf(&s.ca, &["localhost"], None, "up", true, false, Alg::Ecdsa);
    let up = https_upstream(
        &s.dir,
        "sys",
        &server,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    let other = write(&s.dir, "other-ca.pem", &s.other_ca.pem);
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes: [{{ name: all, cluster: app }}]
clusters:
  - name: app
    endpoints: ["{up}"]
    tls: {{ ca: system, server_name: localhost }}
"#
    );
    let start = |bundle: &std::path::Path| {
        let dir = TempDir::new();
        let path = dir.path("sift.yaml");
        std::fs::write(&path, &cfg).unwrap();
        Sift::start_env(dir, path, &[], &[("SSL_CERT_FILE", bundle.as_os_str())])
            .expect("sift starts")
    };
    let trusted = start(&s.dir.path("ca.pem"));
    let (status, body) = get_text(&trusted.url("/")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "anonymous"),
        "the bundle holds the CA"
    );
    drop(trusted);

    let untrusted = start(&other);
    let r = send(
        Request::get(untrusted.url("/"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 502, "a bundle without the upstream's CA");
    assert_eq!(r.headers()["x-sift-error"], "upstream-connect-failure");
    drop(untrusted);

    let path = write(&s.dir, "sys.yaml", &cfg);
    let missing = s.dir.path("no-such-bundle.pem");
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("SSL_CERT_FILE", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("clusters[0].tls") && err.contains("no-such-bundle.pem"),
        "the unreadable bundle is named: {err}"
    );
}

/// `sift run --upstream https://HOST:PORT` (no config file): TLS to the
/// upstream checked against the system's CA bundle (`ca: system`, here
/// `$SSL_CERT_FILE`) and the certificate's name, the Host header set to
/// the upstream's, as a dev proxy in front of a public API needs.
#[tokio::test(flavor = "multi_thread")]
async fn sift_run_upstream_https_uses_the_system_cas() {
    let s = setup();
    let server = leaf(&s.ca, &["localhost"], None, "up", true, false, Alg::Ecdsa);
    let up = https_upstream(
        &s.dir,
        "dev",
        &server,
        &s.ca.pem,
        sift::tls::MtlsMode::Optional,
    )
    .await;
    let target = format!("https://localhost:{}", up.port());
    let ca = s.dir.path("ca.pem");
    let dev = DevSift::start(
        &["--upstream", &target],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    )
    .await;
    let (status, body) = get_text(&dev.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "anonymous"));
    drop(dev);
    let other = write(&s.dir, "other-ca.pem", &s.other_ca.pem);
    let dev = DevSift::start(
        &["--upstream", &target],
        &[("SSL_CERT_FILE", other.as_os_str())],
    )
    .await;
    let r = send(Request::get(dev.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(
        r.status(),
        502,
        "a CA the upstream's certificate does not chain to"
    );
}

/// `tls.min_version: TLSv1.3` (nginx's `ssl_protocols TLSv1.3`, Envoy's
/// `tls_minimum_protocol_version`): a client that offers only TLS 1.2 is
/// refused in the handshake and counted; TLS 1.3 clients are served. The
/// default serves both; an unknown version is a config error.
#[tokio::test(flavor = "multi_thread")]
async fn min_version_tls13_refuses_tls12_clients() {
    let s = setup();
    let up = Upstream::echo("app").await;
    let client = leaf(&s.ca, &[], None, "client", false, false, Alg::Ecdsa);
    let cfg = tls_config(&s, "optional", up.addr, "");
    let strict = cfg.replace(
        "      client_auth:",
        "      min_version: TLSv1.3\n      client_auth:",
    );
    assert!(strict.contains("min_version"), "{strict}");
    for (yaml, tls12_served) in [(&cfg, true), (&strict, false)] {
        let sift = Sift::start(yaml);
        let r = tls_get(
            sift.addr(),
            "localhost",
            client_config(&s.ca.pem, None, &["http/1.1"]),
            "/",
            &[],
        )
        .await
        .expect("a TLS 1.3 client is served");
        assert_eq!(r.status, 200);
        let old = tls_get(
            sift.addr(),
            "localhost",
            client_config_tls12(&s.ca.pem, &client),
            "/",
            &[],
        )
        .await;
        assert_eq!(old.is_ok(), tls12_served, "{:?}", old.err());
        if !tls12_served {
            assert!(
                sift.metric_reaches(
                    r#"sift_tls_handshake_failures_total{listener="main",reason="protocol"}"#,
                    1.0,
                    Duration::from_secs(3)
                )
                .await,
                "the refused handshake is counted"
            );
        }
    }
    let bad = write(
        &s.dir,
        "bad.yaml",
        &cfg.replace(
            "      client_auth:",
            "      min_version: TLSv1.1\n      client_auth:",
        ),
    );
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("listeners[0].tls.min_version")
            && err.contains("TLSv1.3"),
        "{err}"
    );
}
