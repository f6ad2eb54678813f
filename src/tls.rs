//! TLS with rustls (ring provider), owned directly, as ztunnel and
//! linkerd2-proxy do:
//!
//! - listener [`ServerConfig`]s: PEM chains and keys (RSA, ECDSA, Ed25519),
//!   SNI to choose among several certificates, TLS 1.2 and 1.3 only (rustls
//!   offers only AEAD suites with ECDHE), ALPN h2 / http/1.1, client
//!   certificates verified against a CA bundle with CRLs in `require` or
//!   `optional` mode;
//! - the caller's [`Identity`]: SPIFFE ID from the URI SAN, else DNS SAN,
//!   else subject CN; the `x-forwarded-client-cert` value (Envoy's XFCC);
//! - rotation: [`ListenerTls`] watches its files and swaps in a new config
//!   when they change and load; a broken file is rejected and the old
//!   config keeps serving;
//! - upstream client configs (CA, optional client certificate).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Every client must present a certificate from the CA (sidecar default).
    #[default]
    Require,
    /// Verify a certificate when one is presented; allow clients without.
    Optional,
    /// Do not ask for client certificates.
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this certificate answers; empty: the default certificate.
    pub server_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerTlsSpec {
    pub certificates: Vec<CertSpec>,
    pub mode: MtlsMode,
    pub ca: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    /// Stateless session tickets on.
    pub tickets: bool,
    /// Stateful session cache entries (0: none).
    pub session_cache: usize,
    /// Only TLS 1.3 (`min_version: TLSv1.3`); else 1.2 and 1.3.
    pub tls13_only: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpstreamTlsSpec {
    pub ca: PathBuf,
    /// SNI and the name the server certificate must carry (default: the endpoint host).
    pub server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When not empty: the upstream certificate must carry one of these
    /// SANs (URI exactly, DNS case-insensitively) instead of the server
    /// name (Istio's `subjectAltNames`).
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: PathBuf },
    #[error("{path}: not a usable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: the key does not match the certificate")]
    KeyMismatch { path: PathBuf },
    #[error("{path}: not a usable CA bundle: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("{path}: not a usable CRL: {reason}")]
    BadCrl { path: PathBuf, reason: String },
    #[error("TLS config: {0}")]
    Config(String),
    #[error("{label}: the certificate has expired ({until})")]
    Expired { label: String, until: String },
    #[error("{label}: the certificate is not valid before {from}; it will be taken then")]
    NotYetValid { label: String, from: String },
}

/// A Unix time as a certificate shows it (`Jan  1 00:00:00 2027 +00:00`).
fn show_time(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t).map_or_else(|_| t.to_string(), |a| a.to_string())
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Load a certificate chain and its key into a [`CertifiedKey`].
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| TlsError::KeyMismatch {
        path: key.to_path_buf(),
    })?;
    Ok(ck)
}

/// Where the operating system keeps its CA bundle, in the order Go's
/// crypto/x509 looks (Debian, Ubuntu, distroless, Arch; Fedora, RHEL;
/// OpenSUSE; RHEL 7; Alpine).
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA bundle for `ca: system`: `$SSL_CERT_FILE` when set (as
/// OpenSSL and Go read it), else the first of [`SYSTEM_CA_FILES`] that
/// exists.
pub fn system_ca_bundle() -> Result<PathBuf, String> {
    system_ca_bundle_from(std::env::var_os("SSL_CERT_FILE"), SYSTEM_CA_FILES)
}

fn system_ca_bundle_from(
    env: Option<std::ffi::OsString>,
    files: &[&str],
) -> Result<PathBuf, String> {
    if let Some(f) = env.filter(|f| !f.is_empty()) {
        return Ok(PathBuf::from(f));
    }
    files
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no system CA bundle: SSL_CERT_FILE is not set and none of {} exists (install the ca-certificates package, set SSL_CERT_FILE, or give the bundle's path)",
                files.join(", ")
            )
        })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Does server name `sni` (lower-case) match `pattern`: the same name, or
/// for `*.suffix` any name of one more label in front of `suffix`.
pub fn server_name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == sni,
    }
}

/// Chooses the certificate by SNI; the first unnamed (or first) one is the default.
#[derive(Debug)]
struct SniResolver {
    named: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            for (name, ck) in &self.named {
                if server_name_matches(name, &sni) {
                    return Some(ck.clone());
                }
            }
        }
        Some(self.default.clone())
    }
}

/// A loaded listener config and facts about it for metrics.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// (certificate label, not-after as Unix seconds).
    pub expiries: Vec<(String, i64)>,
    /// (certificate label, not-before as Unix seconds).
    pub starts: Vec<(String, i64)>,
    /// The listener's own URI SAN (XFCC `By`).
    pub own_uri: Option<String>,
}

pub fn server_config(spec: &ListenerTlsSpec) -> Result<Loaded, TlsError> {
    let mut named = Vec::new();
    let mut default = None;
    let mut expiries = Vec::new();
    let mut starts = Vec::new();
    let mut own_uri = None;
    for c in &spec.certificates {
        let ck = Arc::new(certified_key(&c.cert, &c.key)?);
        let label = c
            .server_names
            .first()
            .cloned()
            .unwrap_or_else(|| file_label(&c.cert));
        if let Some(leaf) = ck.cert.first() {
            if let Some(info) = CertInfo::parse(leaf.as_ref()) {
                expiries.push((label.clone(), info.not_after));
                starts.push((label.clone(), info.not_before));
                if own_uri.is_none() {
                    own_uri = info.uris.first().cloned();
                }
            }
        }
        if c.server_names.is_empty() && default.is_none() {
            default = Some(ck.clone());
        }
        for n in &c.server_names {
            named.push((n.to_ascii_lowercase(), ck.clone()));
        }
    }
    let default = match default.or_else(|| named.first().map(|(_, ck)| ck.clone())) {
        Some(d) => d,
        None => return Err(TlsError::Config("no certificate configured".into())),
    };
    let resolver = Arc::new(SniResolver { named, default });
    let versions: &[&'static rustls::SupportedProtocolVersion] = if spec.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match (spec.mode, &spec.ca) {
        (MtlsMode::Off, _) => builder.with_no_client_auth().with_cert_resolver(resolver),
        (mode, Some(ca)) => {
            let roots = Arc::new(root_store(ca)?);
            let mut crls = Vec::new();
            for p in &spec.crls {
                let bytes = std::fs::read(p).map_err(|e| read_err(p, e))?;
                let list: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
                    .collect::<Result<_, _>>()
                    .map_err(|e| TlsError::BadCrl {
                        path: p.clone(),
                        reason: e.to_string(),
                    })?;
                crls.extend(list);
            }
            let mut v =
                WebPkiClientVerifier::builder_with_provider(roots, provider()).with_crls(crls);
            if mode == MtlsMode::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| TlsError::BadCa {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(resolver)
        }
        (_, None) => {
            return Err(TlsError::Config(
                "client_auth mode require/optional needs a `ca`".into(),
            ));
        }
    };
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Resumption state belongs to this config alone: a reload (new
    // certificate, CA or CRL) starts with none, so no session made under the
    // old material resumes under the new.
    config.session_storage = if spec.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(spec.session_cache)
    };
    if spec.tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?;
    }
    Ok(Loaded {
        config: Arc::new(config),
        expiries,
        starts,
        own_uri,
    })
}

impl Loaded {
    /// Every certificate is valid at `now` (Unix seconds). Otherwise the
    /// error, and for one not valid yet, when it will be.
    fn check_valid_at(&self, now: i64) -> Result<(), (TlsError, Option<i64>)> {
        if let Some((label, until)) = self.expiries.iter().find(|(_, t)| *t < now) {
            return check_validity(label, i64::MIN, *until, now);
        }
        match self
            .starts
            .iter()
            .filter(|(_, t)| *t > now)
            .max_by_key(|(_, t)| *t)
        {
            Some((label, from)) => check_validity(label, *from, i64::MAX, now),
            None => Ok(()),
        }
    }
}

fn file_label(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cert".into())
}

/// Facts read from a certificate.
#[derive(Clone, Debug, Default)]
pub struct CertInfo {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut info = CertInfo {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            cn: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        info.dns.push((*d).to_owned())
                    }
                    _ => {}
                }
            }
        }
        Some(info)
    }
}

/// Who is calling, from a verified client certificate.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// SPIFFE ID (or other URI SAN), else DNS SAN, else subject CN.
    pub id: String,
    pub trust_domain: Option<String>,
    pub namespace: Option<String>,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// SHA-256 of the certificate, hex.
    pub hash: String,
}

/// A SPIFFE ID's trust domain and Kubernetes namespace (`spiffe://td/ns/N/...`).
fn spiffe_parts(id: &str) -> (Option<String>, Option<String>) {
    match id.strip_prefix("spiffe://") {
        Some(rest) => {
            let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
            let ns = path
                .strip_prefix("ns/")
                .map(|p| p.split('/').next().unwrap_or("").to_owned())
                .filter(|n| !n.is_empty());
            (Some(td.to_owned()), ns)
        }
        None => (None, None),
    }
}

impl Identity {
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let info = CertInfo::parse(der)?;
        // A SPIFFE ID is only ever a URI SAN (X509-SVID). A DNS name or CN
        // that reads like one is no name at all: taken as the identity it
        // would pass for that SPIFFE ID (authorization, overrides, metrics).
        let plain = |n: &&String| {
            !n.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
        };
        let id = info
            .uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .or(info.uris.first())
            .or(info.dns.iter().find(plain))
            .or(info.cn.as_ref().filter(plain))
            .cloned()?;
        let (trust_domain, namespace) = spiffe_parts(&id);
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(Identity {
            id,
            trust_domain,
            namespace,
            uris: info.uris,
            dns: info.dns,
            hash,
        })
    }

    /// The identity a trusted peer (Envoy's ext_authz and ext_proc
    /// calls) names for its client: a SPIFFE ID or other URI SAN, else a
    /// DNS name or CN; no certificate, so no hash. `None` for an empty name.
    pub fn from_principal(id: &str) -> Option<Identity> {
        if id.is_empty() {
            return None;
        }
        let (trust_domain, namespace) = spiffe_parts(id);
        let uri = id.contains("://");
        Some(Identity {
            id: id.to_owned(),
            trust_domain,
            namespace,
            uris: if uri { vec![id.to_owned()] } else { Vec::new() },
            dns: if uri { Vec::new() } else { vec![id.to_owned()] },
            hash: String::new(),
        })
    }

    /// A bounded label for metrics: the trust domain, or the kind of name.
    pub fn metric_label(&self) -> &str {
        match &self.trust_domain {
            Some(td) => td,
            None if !self.dns.is_empty() => "dns",
            None => "cn",
        }
    }

    /// Envoy's `x-forwarded-client-cert` element: `By=…;Hash=…;URI=…;DNS=…`.
    pub fn xfcc(&self, by: Option<&str>) -> String {
        let q = |v: &str| {
            if v.contains([',', ';', '=', '"']) {
                format!("\"{}\"", v.replace('"', "\\\""))
            } else {
                v.to_owned()
            }
        };
        let mut parts = Vec::new();
        if let Some(b) = by {
            parts.push(format!("By={}", q(b)));
        }
        parts.push(format!("Hash={}", self.hash));
        if let Some(u) = self.uris.first() {
            parts.push(format!("URI={}", q(u)));
        }
        for d in &self.dns {
            parts.push(format!("DNS={}", q(d)));
        }
        parts.join(";")
    }
}

/// The bounded reason label of a failed handshake.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "io",
        };
    };
    match err {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown_ca",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::Revoked => "revoked",
            _ => "bad_certificate",
        },
        E::PeerIncompatible(_) | E::PeerMisbehaved(_) => "protocol",
        E::AlertReceived(_) => "alert_received",
        E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::InvalidMessage(_) => "protocol",
        _ => "other",
    }
}

use crate::filter::{Fingerprint, fingerprint};

/// A listener's TLS material, swapped in place when its files change.
pub struct ListenerTls {
    pub spec: ListenerTlsSpec,
    current: ArcSwap<Loaded>,
    /// The files' state last read.
    seen: Seen,
}

/// The state of a TLS config's files when last read, and when a rejected
/// certificate that was not valid yet becomes valid (then they are read
/// again).
struct Seen(Mutex<(Fingerprint, Option<i64>)>);

impl Seen {
    fn new(paths: &[&Path]) -> Seen {
        Seen(Mutex::new((fingerprint(paths), None)))
    }

    /// Whether the files changed, or a wait for validity ended, since the
    /// last look (symlink swaps included); the new state is kept.
    fn changed(&self, paths: &[&Path], now: i64) -> bool {
        let files = fingerprint(paths);
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let due = seen.1.is_some_and(|t| t <= now);
        if seen.0 == files && !due {
            return false;
        }
        *seen = (files, None);
        true
    }

    /// Read the files again at `t` even if they do not change.
    fn again_at(&self, t: i64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(t);
    }
}

/// A certificate valid from `from` until `until` is usable at `now`;
/// otherwise the error, and for one not valid yet, when it will be.
fn check_validity(
    label: &str,
    from: i64,
    until: i64,
    now: i64,
) -> Result<(), (TlsError, Option<i64>)> {
    if until < now {
        let e = TlsError::Expired {
            label: label.to_string(),
            until: show_time(until),
        };
        return Err((e, None));
    }
    if from > now {
        let e = TlsError::NotYetValid {
            label: label.to_string(),
            from: show_time(from),
        };
        return Err((e, Some(from)));
    }
    Ok(())
}

impl ListenerTls {
    pub fn new(spec: ListenerTlsSpec) -> Result<Arc<Self>, TlsError> {
        let seen = Seen::new(&Self::paths(&spec));
        let loaded = server_config(&spec)?;
        Ok(Arc::new(ListenerTls {
            spec,
            current: ArcSwap::from_pointee(loaded),
            seen,
        }))
    }

    fn paths(spec: &ListenerTlsSpec) -> Vec<&Path> {
        let mut v: Vec<&Path> = Vec::new();
        for c in &spec.certificates {
            v.push(&c.cert);
            v.push(&c.key);
        }
        if let Some(ca) = &spec.ca {
            v.push(ca);
        }
        v.extend(spec.crls.iter().map(PathBuf::as_path));
        v
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Reload when any file changed (symlink swaps included). `None`: no
    /// change; `Some(Err)`: the new files were rejected, the old config serves.
    /// A certificate outside its validity is rejected too (it would fail
    /// every handshake); one not valid yet is read again once it is.
    pub fn rotate_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = unix_now();
        if !self.seen.changed(&Self::paths(&self.spec), now) {
            return None;
        }
        let loaded = match server_config(&self.spec) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        if let Err((e, valid_from)) = loaded.check_valid_at(now) {
            if let Some(t) = valid_from {
                self.seen.again_at(t);
            }
            return Some(Err(e));
        }
        self.current.store(Arc::new(loaded));
        Some(Ok(()))
    }
}

/// A client config for an upstream cluster.
pub fn client_config(spec: &UpstreamTlsSpec) -> Result<rustls::ClientConfig, TlsError> {
    let roots = root_store(&spec.ca)?;
    let versions = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if spec.subject_alt_names.is_empty() {
        versions.with_root_certificates(roots)
    } else {
        versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SanVerifier {
                roots: Arc::new(roots),
                names: spec.subject_alt_names.clone(),
                algs: provider().signature_verification_algorithms,
            }))
    };
    match (&spec.cert, &spec.key) {
        (Some(c), Some(k)) => {
            let chain = load_certs(c)?;
            let key = load_key(k)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::BadKey {
                    path: k.clone(),
                    reason: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsError::Config(
            "give both cert and key, or neither".into(),
        )),
    }
}

/// An upstream TLS client (a cluster's): read again when its CA, client
/// certificate or key file changes, as a listener's material is. New
/// connections use the new material; open and pooled ones keep theirs.
pub struct UpstreamTls {
    pub spec: UpstreamTlsSpec,
    /// SNI and checked name from `server_name` (else the endpoint host).
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<UpstreamTlsLoaded>,
    /// The files' state last read.
    seen: Seen,
}

/// One reading of an upstream TLS client's files.
pub struct UpstreamTlsLoaded {
    /// With the cluster's ALPN.
    pub connector: tokio_rustls::TlsConnector,
    /// Without ALPN (the TCP proxy's connections are not HTTP).
    pub raw: tokio_rustls::TlsConnector,
    /// Offering `h2` alone: a `protocol: client` cluster's HTTP/2
    /// requests (its HTTP/1.1 ones use `connector`).
    pub h2: tokio_rustls::TlsConnector,
    /// The client certificate's validity (not before, not after; Unix s).
    pub client_cert: Option<(i64, i64)>,
}

impl UpstreamTls {
    pub fn new(spec: UpstreamTlsSpec, alpn: Vec<Vec<u8>>) -> Result<Arc<Self>, TlsError> {
        let sni = match &spec.server_name {
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| TlsError::Config(format!("server_name: {e}")))?,
            ),
            None => None,
        };
        let seen = Seen::new(&Self::paths(&spec));
        let loaded = Self::load(&spec, &alpn)?;
        Ok(Arc::new(UpstreamTls {
            spec,
            sni,
            alpn,
            current: ArcSwap::from_pointee(loaded),
            seen,
        }))
    }

    fn paths(spec: &UpstreamTlsSpec) -> Vec<&Path> {
        [Some(&spec.ca), spec.cert.as_ref(), spec.key.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }

    fn load(spec: &UpstreamTlsSpec, alpn: &[Vec<u8>]) -> Result<UpstreamTlsLoaded, TlsError> {
        let raw = client_config(spec)?;
        let mut http = raw.clone();
        http.alpn_protocols = alpn.to_vec();
        let mut h2 = raw.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let client_cert = match &spec.cert {
            Some(c) => load_certs(c)?
                .first()
                .and_then(|d| CertInfo::parse(d.as_ref()))
                .map(|i| (i.not_before, i.not_after)),
            None => None,
        };
        Ok(UpstreamTlsLoaded {
            connector: tokio_rustls::TlsConnector::from(Arc::new(http)),
            raw: tokio_rustls::TlsConnector::from(Arc::new(raw)),
            h2: tokio_rustls::TlsConnector::from(Arc::new(h2)),
            client_cert,
        })
    }

    pub fn current(&self) -> Arc<UpstreamTlsLoaded> {
        self.current.load_full()
    }

    /// Read the files again when any changed (symlink swaps included).
    /// `None`: no change; `Some(Err)`: rejected, the old material serves.
    /// A client certificate outside its validity is rejected too (every
    /// upstream would refuse it); one not valid yet is read again once it
    /// is.
    pub fn rotate_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = unix_now();
        if !self.seen.changed(&Self::paths(&self.spec), now) {
            return None;
        }
        let loaded = match Self::load(&self.spec, &self.alpn) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        if let (Some((from, until)), Some(path)) = (loaded.client_cert, &self.spec.cert) {
            if let Err((e, valid_from)) =
                check_validity(&path.display().to_string(), from, until, now)
            {
                if let Some(t) = valid_from {
                    self.seen.again_at(t);
                }
                return Some(Err(e));
            }
        }
        self.current.store(Arc::new(loaded));
        Some(Ok(()))
    }
}

/// Verifies an upstream's certificate chain against the CA as rustls'
/// own verifier does, then its subject alternative names against a list,
/// in place of the server name: how Istio's DestinationRule
/// `subjectAltNames` and Envoy's `match_typed_subject_alt_names` check a
/// mesh peer whose certificate names a workload (a SPIFFE ID), not a host.
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<String>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

/// The upstream certificate's SANs are none of `subject_alt_names`.
#[derive(thiserror::Error)]
#[error("the certificate's SANs {presented:?} match none of subject_alt_names {expected:?}")]
struct SanMismatch {
    presented: Vec<String>,
    expected: Vec<String>,
}

/// rustls shows the reason of a certificate error by `Debug`: the message.
impl std::fmt::Debug for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Does a certificate with these SANs carry one of `names`: a URI SAN
/// exactly, a DNS SAN ignoring ASCII case (as the names are compared).
pub fn san_matches(names: &[String], info: &CertInfo) -> bool {
    names.iter().any(|n| {
        info.uris.iter().any(|u| u == n) || info.dns.iter().any(|d| d.eq_ignore_ascii_case(n))
    })
}

impl rustls::client::danger::ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let info = CertInfo::parse(end_entity.as_ref()).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        )?;
        if san_matches(&self.names, &info) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(SanMismatch {
                presented: info.uris.into_iter().chain(info.dns).collect(),
                expected: self.names.clone(),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_ca_bundle_is_ssl_cert_file_or_the_first_that_exists() {
        let dir = std::env::temp_dir().join(format!("sift-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let second = dir.join("second.pem");
        std::fs::write(&second, "x").unwrap();
        let missing = dir.join("missing.pem");
        let files = [missing.to_str().unwrap(), second.to_str().unwrap()];
        assert_eq!(super::system_ca_bundle_from(None, &files).unwrap(), second);
        assert_eq!(
            super::system_ca_bundle_from(Some("/x/env.pem".into()), &files).unwrap(),
            std::path::PathBuf::from("/x/env.pem"),
            "SSL_CERT_FILE wins"
        );
        assert_eq!(
            super::system_ca_bundle_from(Some("".into()), &files).unwrap(),
            second,
            "an empty SSL_CERT_FILE is unset"
        );
        let err = super::system_ca_bundle_from(None, &files[..1]).unwrap_err();
        assert!(
            err.contains("no system CA bundle") && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    #[test]
    fn xfcc_quotes_values_with_separators() {
        let id = Identity {
            id: "spiffe://td/ns/a/sa/b".into(),
            trust_domain: Some("td".into()),
            namespace: Some("a".into()),
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            dns: vec!["a.example".into()],
            hash: "ab12".into(),
        };
        assert_eq!(
            id.xfcc(Some("spiffe://td/ns/sift/sa/proxy")),
            "By=spiffe://td/ns/sift/sa/proxy;Hash=ab12;URI=spiffe://td/ns/a/sa/b;DNS=a.example"
        );
        assert_eq!(id.metric_label(), "td");
    }
}
