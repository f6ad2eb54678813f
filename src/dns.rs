//! DNS for upstream endpoints.
//!
//! A cluster's DNS names are found one of two ways, as in Envoy:
//! - `logical_dns` (the default for names): resolved again for each new
//!   connection; the cluster has one endpoint per configured name.
//! - `strict_dns`: every address a name resolves to is an endpoint of its
//!   own (a Kubernetes headless Service gives one per pod), balanced,
//!   health-checked and ejected apart. The names are resolved when a
//!   snapshot is built and again every `dns_refresh_rate` by
//!   [`refresh_loop`]; when the addresses change, the snapshot is rebuilt
//!   from the same config (clusters whose endpoints did not change are
//!   kept, the others keep each remaining endpoint's health and outlier
//!   state). A failed lookup keeps the last addresses; a name that does not
//!   exist (NXDOMAIN, or no record of the family) has none.
//!
//! Lookups use the system's resolver (getaddrinfo: /etc/hosts,
//! resolv.conf and its search domains) unless the top-level `dns.resolvers`
//! names servers: then sift asks them itself over UDP (TCP when an answer
//! is truncated), with [`query`] and [`parse_answer`], and no search list.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::file::DnsFamily;
use crate::config::model::{ClusterSpec, Endpoint};
use crate::config::units::Dur;

/// The top-level `dns`: which servers to ask, and how long to wait.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolverSpec {
    /// Empty: the system's resolver.
    pub servers: Vec<SocketAddr>,
    /// Per query and server.
    pub timeout: Dur,
}

impl Default for ResolverSpec {
    fn default() -> Self {
        ResolverSpec {
            servers: Vec::new(),
            timeout: Dur::secs(2),
        }
    }
}

/// A `strict_dns` cluster's configured names (the cluster's `endpoints`
/// are what they resolve to).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrictDns {
    /// Each configured endpoint with its weight, unresolved.
    pub names: Vec<(Endpoint, u32, u8)>,
    pub refresh: Dur,
    pub family: DnsFamily,
    /// Look again when the records' TTL runs out (at least 1 s apart)
    /// instead of every `refresh`.
    pub respect_ttl: bool,
    /// How soon to look again after a failed lookup.
    pub failure_refresh: Dur,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("{0:?} is not a DNS name sift can ask for")]
    BadName(String),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("server answered rcode {0}")]
    Rcode(u8),
    #[error("{0}")]
    Io(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

/// A recursive query for `name`'s records of `qtype`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let bad = || DnsError::BadName(name.to_owned());
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]); // IN
    Ok(q)
}

/// What one answer says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The addresses of the asked type (empty: the name has none of it),
    /// and the smallest TTL of their records (seconds).
    Addrs(Vec<IpAddr>, Option<u32>),
    /// NXDOMAIN: the name does not exist.
    NoName,
    /// The answer did not fit a UDP datagram: ask again over TCP.
    Truncated,
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, DnsError> {
    m.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Malformed("short message"))
}

/// The offset after the (possibly compressed) name at `at`.
fn skip_name(m: &[u8], mut at: usize) -> Result<usize, DnsError> {
    for _ in 0..128 {
        let len = *m.get(at).ok_or(DnsError::Malformed("name past the end"))?;
        match len & 0xC0 {
            0 if len == 0 => return Ok(at + 1),
            0 => at += 1 + usize::from(len),
            0xC0 => {
                m.get(at + 1)
                    .ok_or(DnsError::Malformed("name past the end"))?;
                return Ok(at + 2);
            }
            _ => return Err(DnsError::Malformed("bad label type")),
        }
    }
    Err(DnsError::Malformed("name too long"))
}

/// Read the answer to query `id` for records of `qtype`. Records of other
/// types (a CNAME chain) are skipped.
pub fn parse_answer(m: &[u8], id: u16, qtype: u16) -> Result<Answer, DnsError> {
    if m.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    if u16_at(m, 0)? != id {
        return Err(DnsError::Malformed("another query's id"));
    }
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Ok(Answer::Truncated);
    }
    match (flags & 0x000F) as u8 {
        0 => {}
        3 => return Ok(Answer::NoName),
        r => return Err(DnsError::Rcode(r)),
    }
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(m, at)? + 4;
    }
    let mut out = Vec::new();
    let mut ttl: Option<u32> = None;
    for _ in 0..an {
        at = skip_name(m, at)?;
        let rtype = u16_at(m, at)?;
        let class = u16_at(m, at + 2)?;
        let record_ttl = u32::from(u16_at(m, at + 4)?) << 16 | u32::from(u16_at(m, at + 6)?);
        let len = usize::from(u16_at(m, at + 8)?);
        let data = m
            .get(at + 10..at + 10 + len)
            .ok_or(DnsError::Malformed("record past the end"))?;
        at += 10 + len;
        if class != 1 || rtype != qtype {
            continue;
        }
        ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
        match (rtype, data.len()) {
            (TYPE_A, 4) => out.push(IpAddr::from([data[0], data[1], data[2], data[3]])),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push(IpAddr::from(b));
            }
            _ => return Err(DnsError::Malformed("address of the wrong length")),
        }
    }
    Ok(Answer::Addrs(out, ttl))
}

async fn exchange(server: SocketAddr, q: &[u8]) -> Result<Vec<u8>, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(format!("{server}: {e}"));
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    sock.send(q).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        // A stray datagram (another query's id) is not the answer.
        if n >= 2 && buf[..2] == q[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(server: SocketAddr, q: &[u8]) -> Result<Vec<u8>, DnsError> {
    let io = |e: std::io::Error| DnsError::Io(format!("{server} (tcp): {e}"));
    let mut s = tokio::net::TcpStream::connect(server).await.map_err(io)?;
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
    framed.extend_from_slice(q);
    s.write_all(&framed).await.map_err(io)?;
    let len = s.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// Ask the configured servers, in order, until one answers.
async fn ask(spec: &ResolverSpec, name: &str, qtype: u16) -> Result<Answer, DnsError> {
    let mut last = DnsError::Io("no DNS server configured".into());
    for &server in &spec.servers {
        let id = fastrand::u16(..);
        let q = query(id, name, qtype)?;
        let t = spec.timeout.0;
        let got = match tokio::time::timeout(t, exchange(server, &q)).await {
            Ok(Ok(m)) => parse_answer(&m, id, qtype),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DnsError::Timeout(t)),
        };
        let got = match got {
            Ok(Answer::Truncated) => {
                match tokio::time::timeout(t, exchange_tcp(server, &q)).await {
                    Ok(Ok(m)) => parse_answer(&m, id, qtype),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(DnsError::Timeout(t)),
                }
            }
            other => other,
        };
        match got {
            Ok(Answer::Truncated) => last = DnsError::Malformed("truncated over TCP"),
            Ok(a) => return Ok(a),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn v4(a: &IpAddr) -> bool {
    a.is_ipv4()
}

/// The addresses `name` has for `family`, sorted (DNS servers rotate
/// their answers; the order must not look like a change). Empty when the
/// name does not exist or has no address of the family; an error when no
/// server could say.
pub async fn resolve(
    spec: &ResolverSpec,
    name: &str,
    family: DnsFamily,
) -> Result<Vec<IpAddr>, DnsError> {
    resolve_ttl(spec, name, family).await.map(|(a, _)| a)
}

/// [`resolve`], and the smallest TTL of the records that gave the
/// addresses (`None` from the system's resolver, which does not say).
pub async fn resolve_ttl(
    spec: &ResolverSpec,
    name: &str,
    family: DnsFamily,
) -> Result<(Vec<IpAddr>, Option<u32>), DnsError> {
    let ttl = std::sync::Mutex::new(None::<u32>);
    let mut out = if spec.servers.is_empty() {
        system(spec, name, family).await?
    } else {
        let ttl = &ttl;
        let get = |qtype| async move {
            match ask(spec, name, qtype).await? {
                Answer::Addrs(a, t) => {
                    if let (Some(t), Ok(mut min)) = (t, ttl.lock()) {
                        *min = Some(min.map_or(t, |m| m.min(t)));
                    }
                    Ok(a)
                }
                Answer::NoName | Answer::Truncated => Ok(Vec::new()),
            }
        };
        match family {
            DnsFamily::V4Only => get(TYPE_A).await?,
            DnsFamily::V6Only => get(TYPE_AAAA).await?,
            DnsFamily::Auto => {
                let six = get(TYPE_AAAA).await?;
                if six.is_empty() {
                    get(TYPE_A).await?
                } else {
                    six
                }
            }
            DnsFamily::V4Preferred => {
                let four = get(TYPE_A).await?;
                if four.is_empty() {
                    get(TYPE_AAAA).await?
                } else {
                    four
                }
            }
            DnsFamily::All => {
                let mut a = get(TYPE_A).await?;
                a.extend(get(TYPE_AAAA).await?);
                a
            }
        }
    };
    out.sort_unstable();
    out.dedup();
    let ttl = ttl.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((out, ttl))
}

async fn system(
    spec: &ResolverSpec,
    name: &str,
    family: DnsFamily,
) -> Result<Vec<IpAddr>, DnsError> {
    let t = spec.timeout.0.max(Duration::from_secs(5));
    let all: Vec<IpAddr> = match tokio::time::timeout(t, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(it)) => it.map(|s| s.ip()).collect(),
        Ok(Err(e)) => return Err(DnsError::Io(format!("{name}: {e}"))),
        Err(_) => return Err(DnsError::Timeout(t)),
    };
    let (four, six): (Vec<IpAddr>, Vec<IpAddr>) = all.into_iter().partition(v4);
    Ok(match family {
        DnsFamily::V4Only => four,
        DnsFamily::V6Only => six,
        DnsFamily::Auto if six.is_empty() => four,
        DnsFamily::Auto => six,
        DnsFamily::V4Preferred if four.is_empty() => six,
        DnsFamily::V4Preferred => four,
        DnsFamily::All => four.into_iter().chain(six).collect(),
    })
}

/// What is known of each (name, family): the addresses, or that the last
/// lookup failed before any succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    Addrs(Vec<IpAddr>),
    Failed(String),
}

/// Resolved names, shared by a snapshot and its successors while the
/// resolver configuration is the same.
#[derive(Debug)]
pub struct Cache {
    pub resolver: ResolverSpec,
    entries: Mutex<HashMap<(String, DnsFamily), Known>>,
}

impl Cache {
    pub fn new(resolver: ResolverSpec) -> Self {
        Cache {
            resolver,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, name: &str, family: DnsFamily) -> Option<Known> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.get(&(name.to_owned(), family)).cloned()
    }

    /// Record a lookup's result; true when the addresses changed. A failure
    /// keeps the last addresses (as Envoy keeps its hosts).
    pub fn record(
        &self,
        name: &str,
        family: DnsFamily,
        got: &Result<Vec<IpAddr>, DnsError>,
    ) -> bool {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.to_owned(), family);
        match (got, e.get(&key)) {
            (Ok(a), Some(Known::Addrs(old))) if old == a => false,
            (Ok(a), _) => {
                e.insert(key, Known::Addrs(a.clone()));
                true
            }
            (Err(_), Some(Known::Addrs(_))) => false,
            (Err(err), _) => {
                e.insert(key, Known::Failed(err.to_string()));
                false
            }
        }
    }
}

/// Run `fut` to completion from synchronous code, inside a runtime or not
/// (snapshots are built on the main thread at start and on the admin
/// runtime on reload): on a thread of its own with a small runtime.
fn block_on<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> Option<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
                .map(|rt| rt.block_on(fut))
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Is this endpoint a name to resolve (not an IP literal)?
fn is_name(e: &Endpoint) -> bool {
    e.host.parse::<IpAddr>().is_err()
}

/// Fill each `strict_dns` cluster's endpoints from the cache, first
/// looking up (concurrently, waiting for the answers) the names the cache
/// has never seen. An address a name had is an endpoint with that name's
/// weight; the name stays its host (SNI, Host for HTTP/1.0, logs).
pub fn expand(clusters: &mut [ClusterSpec], cache: &Cache) {
    let mut missing: Vec<(String, DnsFamily)> = Vec::new();
    for c in clusters.iter() {
        let Some(d) = &c.strict_dns else { continue };
        for (e, _, _) in &d.names {
            let key = (e.host.clone(), d.family);
            if is_name(e) && cache.get(&key.0, key.1).is_none() && !missing.contains(&key) {
                missing.push(key);
            }
        }
    }
    if !missing.is_empty() {
        let spec = cache.resolver.clone();
        let results = block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (name, family) in missing.clone() {
                let spec = spec.clone();
                set.spawn(async move {
                    let r = resolve(&spec, &name, family).await;
                    (name, family, r)
                });
            }
            let mut out = Vec::new();
            while let Some(Ok(r)) = set.join_next().await {
                out.push(r);
            }
            out
        })
        .unwrap_or_default();
        for (name, family, r) in &results {
            if let Err(e) = r {
                tracing::warn!(name = %name, error = %e, "DNS lookup failed; the name has no endpoints until it resolves");
            }
            cache.record(name, *family, r);
        }
    }
    for c in clusters.iter_mut() {
        let Some(d) = &c.strict_dns else { continue };
        let mut endpoints = Vec::new();
        let mut weights = Vec::new();
        let mut priorities = Vec::new();
        for (e, w, p) in &d.names {
            if !is_name(e) {
                endpoints.push(e.clone());
                weights.push(*w);
                priorities.push(*p);
                continue;
            }
            if let Some(Known::Addrs(addrs)) = cache.get(&e.host, d.family) {
                for ip in addrs {
                    let mut x = e.clone();
                    x.addr = Some(SocketAddr::new(ip, e.port));
                    endpoints.push(x);
                    weights.push(*w);
                    priorities.push(*p);
                }
            }
        }
        c.endpoints = endpoints;
        c.weights = weights;
        c.priorities = priorities;
    }
}

/// Re-resolve the `strict_dns` clusters' names every `dns_refresh_rate`
/// and rebuild the snapshot when an address set changed. Runs on the admin
/// thread until the process ends.
pub async fn refresh_loop(
    shared: Arc<crate::state::Shared>,
    reloader: Arc<crate::reload::Reloader>,
) {
    let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        // What is due, read from the snapshot in force, which is then let
        // go: an old snapshot kept alive (through a lookup or a sleep)
        // would keep its clusters, and their health probes, running after
        // a reload removed them.
        let now = tokio::time::Instant::now();
        let mut next = now + Duration::from_secs(1);
        let mut work: Vec<(String, Vec<String>, StrictDns)> = Vec::new();
        let cache = {
            let snap = shared.snapshot.load_full();
            let mut seen = Vec::new();
            for c in &snap.config.clusters {
                let Some(d) = &c.strict_dns else { continue };
                seen.push(c.name.clone());
                // First seen: resolved while the snapshot was built, unless
                // that failed.
                let when = *due.entry(c.name.clone()).or_insert_with(|| {
                    let failed = d.names.iter().any(|(e, _, _)| {
                        is_name(e)
                            && !matches!(snap.dns.get(&e.host, d.family), Some(Known::Addrs(_)))
                    });
                    if failed { now } else { now + d.refresh.0 }
                });
                if when <= now {
                    let names = d
                        .names
                        .iter()
                        .filter(|(e, _, _)| is_name(e))
                        .map(|(e, _, _)| e.host.clone())
                        .collect();
                    work.push((c.name.clone(), names, d.clone()));
                } else {
                    next = next.min(when);
                }
            }
            due.retain(|k, _| seen.contains(k));
            snap.dns.clone()
        };
        let mut changed = false;
        for (cluster, names, d) in work {
            let family = d.family;
            let mut wait = d.refresh.0;
            let mut failed = false;
            let mut ttl: Option<u32> = None;
            for name in &names {
                let got = resolve_ttl(&cache.resolver, name, family).await;
                if let Ok((_, Some(t))) = &got {
                    ttl = Some(ttl.map_or(*t, |m| m.min(*t)));
                }
                failed |= got.is_err();
                let got = got.map(|(a, _)| a);
                let moved = cache.record(name, family, &got);
                let result = match &got {
                    Err(err) => {
                        tracing::warn!(cluster = %cluster, name = %name, error = %err, "DNS refresh failed; keeping the last addresses");
                        "failure"
                    }
                    Ok(_) if moved => "changed",
                    Ok(_) => "unchanged",
                };
                shared
                    .metrics
                    .dns_resolutions
                    .with_label_values(&[cluster.as_str(), result])
                    .inc();
                changed |= moved;
            }
            if failed {
                wait = d.failure_refresh.0;
            } else if let (true, Some(t)) = (d.respect_ttl, ttl) {
                wait = Duration::from_secs(u64::from(t).max(1));
            }
            let when = tokio::time::Instant::now() + wait;
            due.insert(cluster, when);
            next = next.min(when);
        }
        if changed {
            reloader.rebuild("dns");
        }
        tokio::time::sleep_until(next.max(tokio::time::Instant::now() + Duration::from_millis(10)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's answer to `q` with the given A records (the question
    /// echoed, the first record's name a pointer to it).
    fn answer(q: &[u8], rcode: u8, addrs: &[[u8; 4]]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(addrs.len() as u16 + 1).to_be_bytes());
        // A CNAME first, which is skipped.
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        for a in addrs {
            m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(a);
        }
        m
    }

    #[test]
    fn query_is_what_a_server_expects() {
        let q = query(0x1234, "app.ns.svc.cluster.local.", TYPE_A).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..16], b"\x03app");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
        assert!(query(1, "a..b", TYPE_A).is_err());
        assert!(query(1, &"x".repeat(64), TYPE_A).is_err());
        assert!(query(1, "", TYPE_A).is_err());
    }

    #[test]
    fn answers_are_read_and_hostile_ones_refused() {
        let q = query(7, "app.example", TYPE_A).unwrap();
        let m = answer(&q, 0, &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        assert_eq!(
            parse_answer(&m, 7, TYPE_A).unwrap(),
            Answer::Addrs(
                vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
                Some(60)
            )
        );
        // The smallest TTL of the records asked for.
        let mut short = m.clone();
        let last_ttl = short.len() - 4 - 2 - 1;
        short[last_ttl] = 7;
        short[last_ttl - 1] = 0;
        assert!(matches!(
            parse_answer(&short, 7, TYPE_A),
            Ok(Answer::Addrs(_, Some(7)))
        ));
        assert_eq!(
            parse_answer(&m, 8, TYPE_A),
            Err(DnsError::Malformed("another query's id"))
        );
        assert_eq!(
            parse_answer(&answer(&q, 3, &[]), 7, TYPE_A).unwrap(),
            Answer::NoName
        );
        assert_eq!(
            parse_answer(&answer(&q, 2, &[]), 7, TYPE_A),
            Err(DnsError::Rcode(2))
        );
        let mut tc = answer(&q, 0, &[]);
        tc[2] |= 0x02;
        assert_eq!(parse_answer(&tc, 7, TYPE_A).unwrap(), Answer::Truncated);
        // Every truncation of a good answer is an error or fewer records,
        // never a panic.
        for n in 0..m.len() {
            let _ = parse_answer(&m[..n], 7, TYPE_A);
        }
        // A pointer loop or a label type sift does not know.
        let mut bad = m.clone();
        bad[12] = 0x80;
        assert!(parse_answer(&bad, 7, TYPE_A).is_err());
        // An A record of the wrong size.
        let mut short = answer(&q, 0, &[[1, 2, 3, 4]]);
        let at = short.len() - 5;
        short[at] = 3;
        short.pop();
        assert!(parse_answer(&short, 7, TYPE_A).is_err());
    }

    #[test]
    fn the_cache_keeps_addresses_through_failures() {
        let c = Cache::new(ResolverSpec::default());
        let a: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        assert!(c.record("x", DnsFamily::V4Only, &Ok(a.clone())));
        assert!(!c.record("x", DnsFamily::V4Only, &Ok(a.clone())));
        assert!(!c.record(
            "x",
            DnsFamily::V4Only,
            &Err(DnsError::Timeout(Duration::from_secs(1)))
        ));
        assert_eq!(c.get("x", DnsFamily::V4Only), Some(Known::Addrs(a)));
        assert!(c.record("x", DnsFamily::V4Only, &Ok(Vec::new())));
        assert!(!c.record("y", DnsFamily::V4Only, &Err(DnsError::Rcode(2))));
        assert!(matches!(
            c.get("y", DnsFamily::V4Only),
            Some(Known::Failed(_))
        ));
    }
}
