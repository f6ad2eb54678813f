//! Global rate limits counted in Redis, so every sift replica in front of
//! an app shares one quota (what Envoy's global rate limit service does
//! with Redis behind it).
//!
//! - One round trip per policy and request: `EVALSHA` of a script that
//!   runs the generic cell rate algorithm (GCRA) on one key, on Redis's own
//!   clock (`TIME`), so the replicas' clocks do not matter and a policy is
//!   the same token bucket as a local one (rate, burst), with its
//!   remaining tokens and times for the RateLimit headers. The key holds
//!   one number (the theoretical arrival time) and expires once the bucket
//!   would be full again: idle keys cost Redis nothing.
//! - A small client of RESP2 over TCP (the few commands used here), a pool
//!   of at most `max_connections` connections, each request bounded by
//!   `timeout` from asking for a connection to the answer. A failed or
//!   late exchange drops its connection; the caller applies
//!   `failure_mode`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::config::file::FailureMode;
use crate::config::units::Dur;

/// The validated `redis` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedisSpec {
    pub address: String,
    pub timeout: Dur,
    pub failure_mode: FailureMode,
    pub key_prefix: String,
    pub max_connections: usize,
    pub username: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<String>,
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
}

fn redacted<S: serde::Serializer>(p: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

/// Take tokens: GCRA on KEYS[1] with ARGV[1] µs per token, a burst of
/// ARGV[2], ARGV[3] tokens (0: only look, allowed while one is left).
/// Answers {allowed, remaining, µs until allowed, µs until full}.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local need = math.min(math.max(n, 1), burst)
local allow_at = tat + need * interval - burst * interval
if now < allow_at or n > burst then
  return {0, math.max(0, math.floor((now - (tat - burst * interval)) / interval)), math.ceil(math.max(allow_at - now, 1)), math.ceil(tat - now)}
end
local new_tat = tat + n * interval
if n > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
return {1, math.floor((now - (new_tat - burst * interval)) / interval), 0, math.ceil(new_tat - now)}
";

/// Take tokens from several buckets at once, all or nothing: for key i,
/// ARGV[4i-3..4i] are µs per token, burst, tokens (0: only look) and 1 if
/// the bucket is in shadow mode (its refusal refuses nothing). If a
/// bucket not in shadow mode refuses, nothing is taken from any. A key
/// given twice sees the first take. Answers, per key, {allowed, remaining,
/// µs until allowed, µs until full, taken}, flat.
const TAKE_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local cur = {}
local writes = {}
local refused = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local n = tonumber(ARGV[4 * i - 1])
  local shadow = ARGV[4 * i] == '1'
  local tat = cur[key] or tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local need = math.min(math.max(n, 1), burst)
  local allow_at = tat + need * interval - burst * interval
  local b = 5 * i - 4
  if now < allow_at or n > burst then
    if not shadow then refused = true end
    out[b] = 0
    out[b + 1] = math.max(0, math.floor((now - (tat - burst * interval)) / interval))
    out[b + 2] = math.ceil(math.max(allow_at - now, 1))
    out[b + 3] = math.ceil(tat - now)
    out[b + 4] = 0
  else
    local new_tat = tat + n * interval
    cur[key] = new_tat
    out[b] = 1
    out[b + 1] = math.floor((now - (new_tat - burst * interval)) / interval)
    out[b + 2] = 0
    out[b + 3] = math.ceil(new_tat - now)
    out[b + 4] = 0
    if n > 0 then writes[#writes + 1] = {key, b, n} end
  end
end
if not refused then
  for _, w in ipairs(writes) do
    local tat = cur[w[1]]
    redis.call('SET', w[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    out[w[2] + 4] = 1
  end
else
  -- Nothing taken: an admitted bucket reports what it has.
  for _, w in ipairs(writes) do
    out[w[2] + 1] = out[w[2] + 1] + w[3]
  end
end
return out
";

/// The scripts, by index: take, give, take_all.
const SCRIPTS: [&str; 3] = [TAKE, GIVE, TAKE_ALL];

/// Most buckets in one [`Redis::take_all`] (5 integers each in a reply of
/// at most MAX_ARRAY).
pub const TAKE_ALL_MAX: usize = MAX_ARRAY / 5;

/// Give a token back (a later policy refused the request).
const GIVE: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local back = tat - tonumber(ARGV[1])
if back <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', math.ceil((back - now) / 1000) + 1000)
end
return 1
";

/// Why an exchange with Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis answered an error: {0}")]
    Server(String),
    #[error("redis protocol: {0}")]
    Protocol(&'static str),
}

impl RedisError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RedisError::Timeout(_) => "timeout",
            RedisError::Io(_) => "connection",
            RedisError::Server(_) => "server_error",
            RedisError::Protocol(_) => "protocol",
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Largest bulk string or array accepted from the server.
const MAX_BULK: usize = 1 << 20;
const MAX_ARRAY: usize = 1024;

/// Parse one reply from the front of `b`: `Ok(None)` when more bytes are
/// needed, else the reply and the bytes it took.
pub fn parse(b: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    parse_at(b, 0)
}

fn parse_at(b: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    if depth > 4 {
        return Err(RedisError::Protocol("replies nested too deep"));
    }
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        if b.len() > 64 * 1024 {
            return Err(RedisError::Protocol("line too long"));
        }
        return Ok(None);
    };
    let Some((&kind, rest)) = b[..end].split_first() else {
        return Err(RedisError::Protocol("empty line"));
    };
    let line = std::str::from_utf8(rest).map_err(|_| RedisError::Protocol("line not UTF-8"))?;
    let int = || {
        line.parse::<i64>()
            .map_err(|_| RedisError::Protocol("bad integer"))
    };
    let head = end + 2;
    Ok(Some(match kind {
        b'+' => (Reply::Status(line.to_string()), head),
        b'-' => (Reply::Error(line.to_string()), head),
        b':' => (Reply::Int(int()?), head),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), head)));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(RedisError::Protocol("bulk string too long"));
            }
            if b.len() < head + n + 2 {
                return Ok(None);
            }
            if &b[head + n..head + n + 2] != b"\r\n" {
                return Err(RedisError::Protocol("bulk string not ended by CRLF"));
            }
            (Reply::Bulk(Some(b[head..head + n].to_vec())), head + n + 2)
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), head)));
            }
            let n = n as usize;
            if n > MAX_ARRAY {
                return Err(RedisError::Protocol("array too long"));
            }
            let mut at = head;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                match parse_at(&b[at..], depth + 1)? {
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), at)
        }
        _ => return Err(RedisError::Protocol("unknown reply type")),
    }))
}

/// A command as RESP: an array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Plain TCP or TLS to Redis.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b).await,
            Stream::Tls(s) => s.write_all(b).await,
        }
    }

    async fn read_buf(&mut self, b: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(b).await,
            Stream::Tls(s) => s.read_buf(b).await,
        }
    }
}

/// The TLS client (its files watched, as a cluster's) and the name
/// Redis's certificate must carry.
struct Tls {
    client: Arc<crate::tls::UpstreamTls>,
    name: rustls::pki_types::ServerName<'static>,
}

/// One command waiting for its reply on a lane.
struct Job {
    cmd: Vec<u8>,
    reply: oneshot::Sender<Result<Reply, RedisError>>,
}

/// What the lanes share.
struct Inner {
    spec: RedisSpec,
    tls: Option<Tls>,
}

/// Open a connection: connect (TLS if configured), AUTH, and make sure
/// the server has both scripts (`SCRIPT LOAD`; their SHA1s must be ours).
async fn open(inner: &Inner) -> Result<(Stream, BytesMut), RedisError> {
    let spec = &inner.spec;
    let tcp = TcpStream::connect(spec.address.as_str()).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match &inner.tls {
        None => Stream::Tcp(tcp),
        Some(t) => Stream::Tls(Box::new(
            t.client.current().raw.connect(t.name.clone(), tcp).await?,
        )),
    };
    let mut buf = BytesMut::with_capacity(4096);
    let call = |args: Vec<&[u8]>| {
        let mut out = Vec::new();
        encode(&mut out, &args);
        out
    };
    let mut setup = Vec::new();
    if let Some(p) = &spec.password {
        setup.push(match &spec.username {
            Some(u) => call(vec![b"AUTH", u.as_bytes(), p.as_bytes()]),
            None => call(vec![b"AUTH", p.as_bytes()]),
        });
    }
    for script in SCRIPTS {
        setup.push(call(vec![b"SCRIPT", b"LOAD", script.as_bytes()]));
    }
    stream.write_all(&setup.concat()).await?;
    let mut replies = Vec::new();
    while replies.len() < setup.len() {
        match parse(&buf)? {
            Some((r, used)) => {
                buf.advance(used);
                replies.push(r);
            }
            None => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
    let shas = SCRIPTS.map(sha1_hex);
    let first = setup.len() - SCRIPTS.len();
    for (i, r) in replies.into_iter().enumerate() {
        match r {
            Reply::Error(e) => return Err(RedisError::Server(e)),
            Reply::Bulk(Some(sha)) if i >= first && sha != shas[i - first].as_bytes() => {
                return Err(RedisError::Protocol("SCRIPT LOAD answered another SHA1"));
            }
            _ => {}
        }
    }
    Ok((stream, buf))
}

fn sha1_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Most commands written in one go.
const BATCH: usize = 256;

/// A lane: one connection that carries many requests at once (pipelined:
/// commands are written as they come, several per write, and the replies,
/// which Redis sends in order, are matched to the oldest waiting command).
/// Connected on first use and again after a failure; a connection whose
/// oldest command has waited longer than `timeout` is closed (a hung
/// Redis), failing what waits on it.
async fn lane(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let timeout = inner.spec.timeout.0;
    let mut conn: Option<(Stream, BytesMut)> = None;
    let mut waiting: VecDeque<(Job, Instant)> = VecDeque::new();
    let mut out = Vec::new();
    // The client still exists (it may send more).
    let mut open_rx = true;
    loop {
        // Nothing in flight: wait for work (the lane ends with its client).
        if waiting.is_empty() {
            let job = if open_rx { rx.recv().await } else { None };
            let Some(job) = job else { return };
            waiting.push_back((job, Instant::now()));
        }
        if conn.is_none() {
            match tokio::time::timeout(timeout, open(&inner)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    fail(&mut waiting, &mut rx, || clone_err(&e));
                    continue;
                }
                Err(_) => {
                    fail(&mut waiting, &mut rx, || RedisError::Timeout(timeout));
                    continue;
                }
            }
        }
        let Some((stream, buf)) = conn.as_mut() else {
            continue;
        };
        // Write every command not written yet, with whatever else queued.
        let unsent = waiting.iter().filter(|(j, _)| !j.cmd.is_empty()).count();
        if unsent > 0 {
            out.clear();
            for (j, _) in waiting.iter_mut() {
                out.append(&mut j.cmd);
            }
            while waiting.len() < BATCH {
                match rx.try_recv() {
                    Ok(mut j) => {
                        out.append(&mut j.cmd);
                        waiting.push_back((j, Instant::now()));
                    }
                    Err(_) => break,
                }
            }
            let e = match tokio::time::timeout(timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(RedisError::Io(e)),
                Err(_) => Some(RedisError::Timeout(timeout)),
            };
            if let Some(e) = e {
                conn = None;
                fail(&mut waiting, &mut rx, || clone_err(&e));
                continue;
            }
        }
        let oldest = waiting.front().map_or_else(Instant::now, |(_, t)| *t);
        let deadline = tokio::time::Instant::from_std(oldest + timeout);
        tokio::select! {
            job = rx.recv(), if open_rx && waiting.len() < BATCH => match job {
                Some(j) => waiting.push_back((j, Instant::now())),
                None => open_rx = false,
            },
            r = stream.read_buf(buf) => {
                let ok = match r {
                    Ok(0) => Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => deliver(buf, &mut waiting),
                    Err(e) => Err(RedisError::Io(e)),
                };
                if let Err(e) = ok {
                    conn = None;
                    fail(&mut waiting, &mut rx, || clone_err(&e));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                conn = None;
                fail(&mut waiting, &mut rx, || RedisError::Timeout(timeout));
            }
        }
    }
}

/// Hand each complete reply in `buf` to the oldest waiting command.
fn deliver(buf: &mut BytesMut, waiting: &mut VecDeque<(Job, Instant)>) -> Result<(), RedisError> {
    while let Some((r, used)) = parse(buf)? {
        buf.advance(used);
        let Some((job, _)) = waiting.pop_front() else {
            return Err(RedisError::Protocol("a reply nobody asked for"));
        };
        let _ = job.reply.send(match r {
            Reply::Error(e) => Err(RedisError::Server(e)),
            r => Ok(r),
        });
    }
    Ok(())
}

/// Fail what waits on a lane and what is queued for it.
fn fail(
    waiting: &mut VecDeque<(Job, Instant)>,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    e: impl Fn() -> RedisError,
) {
    for (j, _) in waiting.drain(..) {
        let _ = j.reply.send(Err(e()));
    }
    while let Ok(j) = rx.try_recv() {
        let _ = j.reply.send(Err(e()));
    }
}

fn clone_err(e: &RedisError) -> RedisError {
    match e {
        RedisError::Timeout(d) => RedisError::Timeout(*d),
        RedisError::Io(e) => RedisError::Io(std::io::Error::new(e.kind(), e.to_string())),
        RedisError::Server(s) => RedisError::Server(s.clone()),
        RedisError::Protocol(p) => RedisError::Protocol(p),
    }
}

/// What Redis decided for one request and policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Taken {
    pub allowed: bool,
    pub remaining: u64,
    /// µs until a request would be allowed (0 when allowed).
    pub retry_after_us: u64,
    /// µs until the bucket is full again.
    pub reset_us: u64,
}

impl Taken {
    /// The decision in whole seconds, with the bucket's quota and window
    /// for the RateLimit headers.
    pub fn decision(&self, quota: u64, window: u64) -> crate::policy::ratelimit::Decision {
        let secs = |us: u64| us.div_ceil(1_000_000);
        crate::policy::ratelimit::Decision {
            allowed: self.allowed,
            remaining: self.remaining,
            retry_after: if self.allowed {
                0
            } else {
                secs(self.retry_after_us).max(1)
            },
            reset: secs(self.reset_us),
            quota,
            window,
        }
    }
}

/// The shared client (kept across reloads while its spec is unchanged):
/// `max_connections` lanes, each one pipelined connection, requests
/// spread over them in turn.
pub struct Redis {
    pub spec: RedisSpec,
    inner: Arc<Inner>,
    lanes: Vec<OnceLock<mpsc::UnboundedSender<Job>>>,
    next: AtomicUsize,
    shas: [String; 3],
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("address", &self.spec.address)
            .finish()
    }
}

impl Redis {
    /// The client; its TLS files are read here (a bad file is a config
    /// error, the old client keeps serving). Lanes connect on first use.
    pub fn new(spec: RedisSpec) -> Result<Redis, crate::tls::TlsError> {
        let tls = match &spec.tls {
            None => None,
            Some(t) => {
                let client = crate::tls::UpstreamTls::new(t.clone(), Vec::new())?;
                let host = t.server_name.clone().unwrap_or_else(|| {
                    spec.address
                        .rsplit_once(':')
                        .map_or(spec.address.as_str(), |(h, _)| h)
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                });
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| crate::tls::TlsError::Config(format!("server_name: {e}")))?;
                Some(Tls { client, name })
            }
        };
        Ok(Redis {
            lanes: (0..spec.max_connections).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
            shas: SCRIPTS.map(sha1_hex),
            inner: Arc::new(Inner {
                spec: spec.clone(),
                tls,
            }),
            spec,
        })
    }

    /// The TLS client, when Redis is reached over TLS (its files are
    /// watched with the listeners' and clusters').
    pub fn tls(&self) -> Option<&Arc<crate::tls::UpstreamTls>> {
        self.inner.tls.as_ref().map(|t| &t.client)
    }

    /// Send one command on the next lane and wait for its reply, within
    /// `timeout` from now.
    async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let tx = self.lanes[i].get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(self.inner.clone(), rx));
            tx
        });
        let mut cmd = Vec::with_capacity(128);
        encode(&mut cmd, args);
        let (reply, rx) = oneshot::channel();
        tx.send(Job { cmd, reply })
            .map_err(|_| RedisError::Protocol("client closed"))?;
        let t = self.spec.timeout.0;
        match tokio::time::timeout(t, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RedisError::Protocol("client closed")),
            Err(_) => Err(RedisError::Timeout(t)),
        }
    }

    /// EVALSHA of script `which` (0 take, 1 give), or EVAL if the server
    /// lost it (SCRIPT FLUSH) since the lane connected.
    async fn run(&self, which: usize, key: &str, args: [&str; 3]) -> Result<Reply, RedisError> {
        self.run_keys(which, &[key.as_bytes()], &args.map(str::as_bytes))
            .await
    }

    /// EVALSHA of script `which` on `keys` with `args`, or EVAL if the
    /// server lost it.
    async fn run_keys(
        &self,
        which: usize,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply, RedisError> {
        let sha = self.shas[which].as_bytes();
        let n = keys.len().to_string();
        let mut rest: Vec<&[u8]> = Vec::with_capacity(1 + keys.len() + args.len());
        rest.push(n.as_bytes());
        rest.extend_from_slice(keys);
        rest.extend_from_slice(args);
        match self
            .call(&[&[b"EVALSHA".as_slice(), sha][..], &rest].concat())
            .await
        {
            Err(RedisError::Server(e)) if e.starts_with("NOSCRIPT") => {
                self.call(&[&[b"EVAL".as_slice(), SCRIPTS[which].as_bytes()][..], &rest].concat())
                    .await
            }
            r => r,
        }
    }

    /// Take from several buckets at once, all or nothing (a refusal by a
    /// bucket not in shadow mode takes nothing from any): per bucket its
    /// key, µs per token, burst, tokens and shadow mode. At most
    /// [`TAKE_ALL_MAX`] buckets. Answers each bucket's decision and
    /// whether its tokens were taken.
    pub async fn take_all(
        &self,
        items: &[(String, f64, u64, u64, bool)],
    ) -> Result<Vec<(Taken, bool)>, RedisError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if items.len() > TAKE_ALL_MAX {
            return Err(RedisError::Protocol("too many buckets in one call"));
        }
        let args: Vec<String> = items
            .iter()
            .flat_map(|(_, interval, burst, hits, shadow)| {
                [
                    format!("{interval:.3}"),
                    burst.to_string(),
                    hits.to_string(),
                    if *shadow { "1" } else { "0" }.to_string(),
                ]
            })
            .collect();
        let keys: Vec<&[u8]> = items.iter().map(|i| i.0.as_bytes()).collect();
        let argv: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
        let r = self.run_keys(2, &keys, &argv).await?;
        let Reply::Array(Some(v)) = r else {
            return Err(RedisError::Protocol("the script did not answer an array"));
        };
        if v.len() != 5 * items.len() {
            return Err(RedisError::Protocol("the script answered the wrong length"));
        }
        let n: Vec<i64> = v
            .iter()
            .map(|x| match x {
                Reply::Int(v) => Ok(*v),
                _ => Err(RedisError::Protocol("the script answered a non-integer")),
            })
            .collect::<Result<_, _>>()?;
        Ok(n.chunks(5)
            .map(|c| {
                (
                    Taken {
                        allowed: c[0] == 1,
                        remaining: c[1].max(0) as u64,
                        retry_after_us: c[2].max(0) as u64,
                        reset_us: c[3].max(0) as u64,
                    },
                    c[4] == 1,
                )
            })
            .collect())
    }

    /// Take a token from `key`'s bucket: `interval_us` per token, `burst`.
    pub async fn take(&self, key: &str, interval_us: f64, burst: u64) -> Result<Taken, RedisError> {
        self.take_n(key, interval_us, burst, 1).await
    }

    /// Take `hits` tokens from `key`'s bucket (0: only look), all or none.
    pub async fn take_n(
        &self,
        key: &str,
        interval_us: f64,
        burst: u64,
        hits: u64,
    ) -> Result<Taken, RedisError> {
        let (i, b, n) = (
            format!("{interval_us:.3}"),
            burst.to_string(),
            hits.to_string(),
        );
        let r = self.run(0, key, [&i, &b, &n]).await?;
        let Reply::Array(Some(items)) = r else {
            return Err(RedisError::Protocol("the script did not answer an array"));
        };
        let n: Vec<i64> = items
            .iter()
            .map(|x| match x {
                Reply::Int(v) => Ok(*v),
                _ => Err(RedisError::Protocol("the script answered a non-integer")),
            })
            .collect::<Result<_, _>>()?;
        let [allowed, remaining, retry, reset] = n[..] else {
            return Err(RedisError::Protocol("the script answered the wrong length"));
        };
        Ok(Taken {
            allowed: allowed == 1,
            remaining: remaining.max(0) as u64,
            retry_after_us: retry.max(0) as u64,
            reset_us: reset.max(0) as u64,
        })
    }

    /// Give back the token `take` took from `key`.
    pub async fn give(&self, key: &str, interval_us: f64) -> Result<(), RedisError> {
        let i = format!("{interval_us:.3}");
        self.run(1, key, [&i, "0", "0"]).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_redis_answers_and_waits_for_the_rest() {
        let all = b"*4\r\n:1\r\n:41\r\n:0\r\n:60000000\r\n";
        let (r, used) = parse(all).unwrap().unwrap();
        assert_eq!(used, all.len());
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Int(41),
                Reply::Int(0),
                Reply::Int(60_000_000)
            ]))
        );
        for cut in 0..all.len() {
            assert!(parse(&all[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (r, _) = parse(b"$40\r\n0123456789012345678901234567890123456789\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(r, Reply::Bulk(Some(v)) if v.len() == 40));
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n")
                .unwrap()
                .unwrap()
                .0,
            Reply::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(parse(b"$-1\r\n").unwrap().unwrap().0, Reply::Bulk(None));
    }

    #[test]
    fn refuses_hostile_replies() {
        for bad in [
            &b"?what\r\n"[..],
            b"$99999999999\r\n",
            b"*99999\r\n",
            b":12x\r\n",
            b"$3\r\nabcXY",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&vec![b'+'; 70 * 1024]).is_err(), "endless line");
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
