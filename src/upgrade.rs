//! Binary upgrades without a refused connection. A running sift with a
//! top-level `upgrade.socket` serves that Unix socket; a new sift started
//! with `sift run --upgrade` connects to it, receives the listening sockets
//! (SCM_RIGHTS, as HAProxy's `-x` and Pingora's upgrade do) and the canary
//! state, starts serving on the same sockets, then tells the old process
//! to take its hands off: the old one stops accepting and drains its open
//! connections as on SIGTERM (without `shutdown.delay`: the successor is
//! already serving), the new one takes over the upgrade socket.
//!
//! The kernel's accept queue belongs to the socket, not to a process: a
//! connection that arrives at any moment of the switch is accepted by one
//! of the two, never refused.
//!
//! Wire (one connection per upgrade, successor → predecessor):
//! 1. successor: a JSON line `{"protocol": "sift-upgrade/1", "pid": N}`;
//! 2. predecessor: 8 bytes `SIFT` + the offer's length (u32, big endian),
//!    sent with the sockets as SCM_RIGHTS, then the [`Offer`] as JSON;
//! 3. successor, once it serves: the line `{"take_over": true}`;
//! 4. predecessor: stops accepting, removes the socket file, answers
//!    `{"ok": true, "pid": N}` and drains. The successor then binds the
//!    upgrade socket itself.
//!
//! A successor that fails before step 3 (a bad config, a port it cannot
//! bind) closes the connection: the predecessor keeps serving as before.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::state::Shared;

pub const PROTOCOL: &str = "sift-upgrade/1";
/// The most sockets one hand-over carries (the kernel takes 253 per message).
pub const MAX_SOCKETS: usize = 250;
const MAGIC: &[u8; 4] = b"SIFT";
/// The largest offer a successor reads.
const MAX_OFFER: usize = 4 << 20;
/// How long either side waits for a protocol step, except the one below.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a predecessor waits for its successor to start serving (models
/// to load, certificates to read) before it gives up on this successor.
const START_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "upgrade socket {0}: another sift serves it (start this one with `sift run --upgrade` to take over from it)"
    )]
    InUse(PathBuf),
    #[error("upgrade socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// An I/O error on the upgrade socket at `path`.
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> UpgradeError + Copy + '_ {
    move |source| UpgradeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A protocol error on the upgrade socket at `path`.
fn protocol_error(path: &Path) -> impl Fn(String) -> UpgradeError + Copy + '_ {
    move |message| UpgradeError::Protocol {
        path: path.to_path_buf(),
        message,
    }
}

/// What a listening socket is, in an offer (the sockets follow in order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// A listener's name, or `None` for the admin listener.
    pub listener: Option<String>,
    /// The address in the predecessor's config (port 0 allowed).
    pub configured: SocketAddr,
    /// The address the socket is bound to.
    pub local: SocketAddr,
}

/// The predecessor's answer to a successor's hello.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub protocol: String,
    pub pid: u32,
    pub version: String,
    pub sockets: Vec<SocketInfo>,
    #[serde(default)]
    pub canary: Vec<crate::canary::Handoff>,
    /// The predecessor's clock when it made the offer (ns since its epoch).
    #[serde(default)]
    pub clock: u64,
    /// Set when the predecessor cannot hand over (then no sockets).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: String,
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct TakeOver {
    take_over: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    ok: bool,
    pid: u32,
}

// ------------------------------------------------------------ predecessor

/// The sockets a running sift can hand over: its own duplicates of the
/// listening sockets (the serving tasks hold the others).
#[derive(Debug, Default)]
pub struct Sockets {
    held: Mutex<Vec<(SocketInfo, OwnedFd)>>,
}

impl Sockets {
    pub fn add(&self, info: SocketInfo, fd: &impl AsFd) -> std::io::Result<()> {
        let fd = fd.as_fd().try_clone_to_owned()?;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((info, fd));
        Ok(())
    }

    /// Stop offering listener `name`'s socket (a reload removed or moved
    /// it).
    pub fn remove(&self, name: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| i.listener.as_deref() != Some(name));
    }

    /// Every held socket, which this process then no longer offers.
    pub fn take_all(&self) -> Vec<(SocketInfo, OwnedFd)> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn infos(&self) -> Vec<SocketInfo> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(i, _)| i.clone())
            .collect()
    }
}

/// Bind the upgrade socket at `path` (mode 0600). A file left by a process
/// that is gone is replaced; one a live sift serves is an error.
pub fn bind(path: &Path) -> Result<UnixListener, UpgradeError> {
    let io = io_error(path);
    if std::fs::symlink_metadata(path).is_ok() {
        match UnixStream::connect(path) {
            Ok(_) => return Err(UpgradeError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
    }
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serve successors on `listener` until one takes over; then mark the
/// hand-over in `shared` (the listeners and the admin API stop accepting,
/// the connections drain) and return. Runs on the admin thread.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    sockets: Arc<Sockets>,
    shared: Arc<Shared>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "upgrade socket failed");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade connection failed");
                continue;
            }
        };
        let (sockets, shared2, path2) = (sockets.clone(), shared.clone(), path.clone());
        let outcome =
            tokio::task::spawn_blocking(move || hand_over(stream, &path2, &sockets, &shared2))
                .await;
        match outcome {
            Ok(Ok(successor)) => {
                tracing::info!(successor, "handed the listening sockets over; draining");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade not done; still serving");
            }
            Err(e) => tracing::error!(error = %e, "upgrade task failed; still serving"),
        }
    }
}

/// One successor's connection: offer, wait for its take-over, hand over.
/// Returns the successor's pid once it took over.
fn hand_over(
    stream: UnixStream,
    path: &Path,
    sockets: &Sockets,
    shared: &Shared,
) -> Result<u32, UpgradeError> {
    let protocol = protocol_error(path);
    let io = io_error(path);
    stream.set_nonblocking(false).map_err(io)?;
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| io(e.into()))?;
    if peer.uid != rustix::process::geteuid() {
        return Err(protocol(format!(
            "refused a process of user {} (pid {}): only sift's own user may take over",
            peer.uid.as_raw(),
            peer.pid.as_raw_nonzero()
        )));
    }
    stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let hello: Hello = read_line(&mut reader).map_err(protocol)?;
    if hello.protocol != PROTOCOL {
        return Err(protocol(format!(
            "the successor speaks {:?}, this sift {PROTOCOL:?}",
            hello.protocol
        )));
    }
    let held = sockets.infos();
    let snapshot = shared.snapshot.load();
    let now = shared.clock.now();
    let mut offer = Offer {
        protocol: PROTOCOL.into(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        sockets: held,
        canary: canary_handoffs(&snapshot, now),
        clock: now,
        error: None,
    };
    drop(snapshot);
    // The descriptors are duplicated by the kernel as they are sent; the
    // successor's copies outlive this function.
    let fds = {
        let guard = sockets.held.lock().unwrap_or_else(|p| p.into_inner());
        let fds: Vec<OwnedFd> = guard
            .iter()
            .filter_map(|(_, fd)| fd.try_clone().ok())
            .collect();
        fds
    };
    if fds.len() != offer.sockets.len() || fds.len() > MAX_SOCKETS {
        offer.error = Some(format!(
            "{} listening sockets cannot be handed over (at most {MAX_SOCKETS})",
            offer.sockets.len()
        ));
        offer.sockets.clear();
        send_offer(&stream, &offer, &[]).map_err(io)?;
        return Err(protocol(offer.error.unwrap_or_default()));
    }
    send_offer(&stream, &offer, &fds).map_err(io)?;
    drop(fds);
    tracing::info!(
        successor = hello.pid,
        sockets = offer.sockets.len(),
        "upgrade: offered the listening sockets; waiting for the successor to serve"
    );
    stream.set_read_timeout(Some(START_TIMEOUT)).map_err(io)?;
    let take: TakeOver = read_line(&mut reader).map_err(|m| {
        protocol(format!(
            "the successor (pid {}) went away before taking over: {m}",
            hello.pid
        ))
    })?;
    if !take.take_over {
        return Err(protocol("the successor declined to take over".into()));
    }
    // From here on the successor serves: stop accepting, let go of the
    // upgrade socket's path (the successor binds it next), then drain.
    shared.hand_over();
    drop(sockets.take_all());
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove the upgrade socket");
    }
    let done = Done {
        ok: true,
        pid: std::process::id(),
    };
    write_line(&stream, &done).map_err(io)?;
    Ok(hello.pid)
}

fn send_offer(stream: &UnixStream, offer: &Offer, fds: &[OwnedFd]) -> std::io::Result<()> {
    let json = serde_json::to_vec(offer).map_err(std::io::Error::other)?;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(MAGIC);
    head[4..].copy_from_slice(&(json.len() as u32).to_be_bytes());
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&head)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The descriptors went with the first byte; the rest is plain data.
    let mut w = stream;
    w.write_all(&head[sent..])?;
    w.write_all(&json)?;
    w.flush()
}

/// The canary state of every route that has one, for a successor.
fn canary_handoffs(snapshot: &crate::snapshot::Snapshot, now: u64) -> Vec<crate::canary::Handoff> {
    snapshot
        .routes
        .iter()
        .filter_map(|r| {
            let c = r.canary.as_ref()?;
            let backends = r.spec.backends.iter().map(|b| b.cluster.clone()).collect();
            Some(c.hand_off(&r.spec.name, backends, now))
        })
        .collect()
}

// -------------------------------------------------------------- successor

/// A predecessor that offered its sockets; [`Successor::take_over`]
/// completes the upgrade.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
    path: PathBuf,
    pub pid: u32,
    sockets: Vec<(SocketInfo, Option<OwnedFd>)>,
    pub canary: Vec<crate::canary::Handoff>,
}

/// Ask the sift serving `path` for its sockets. `Ok(None)`: no sift serves
/// there (no file, or nobody listening): bind as on a first start.
pub fn connect(path: &Path) -> Result<Option<Successor>, UpgradeError> {
    let protocol = protocol_error(path);
    let io = io_error(path);
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    write_line(
        &stream,
        &Hello {
            protocol: PROTOCOL.into(),
            pid: std::process::id(),
        },
    )
    .map_err(io)?;
    let mut head = [0u8; 8];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut head)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Err(protocol(
            "the running sift closed the connection (is it a sift of this protocol?)".into(),
        ));
    }
    let mut r = &stream;
    r.read_exact(&mut head[got.bytes..]).map_err(io)?;
    if &head[..4] != MAGIC {
        return Err(protocol("the answer is not a sift upgrade offer".into()));
    }
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_OFFER {
        return Err(protocol(format!("an offer of {len} bytes is too large")));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).map_err(io)?;
    let offer: Offer =
        serde_json::from_slice(&json).map_err(|e| protocol(format!("bad offer: {e}")))?;
    if let Some(e) = offer.error {
        return Err(protocol(format!(
            "the running sift (pid {}) cannot hand over: {e}",
            offer.pid
        )));
    }
    if offer.protocol != PROTOCOL {
        return Err(protocol(format!(
            "the running sift speaks {:?}, this one {PROTOCOL:?}",
            offer.protocol
        )));
    }
    if fds.len() != offer.sockets.len() {
        return Err(protocol(format!(
            "{} sockets offered, {} received",
            offer.sockets.len(),
            fds.len()
        )));
    }
    if !crate::clock::Clock::adopt(offer.clock) {
        tracing::debug!("upgrade: the predecessor's clock epoch was not adopted");
    }
    Ok(Some(Successor {
        stream,
        path: path.to_path_buf(),
        pid: offer.pid,
        sockets: offer
            .sockets
            .into_iter()
            .zip(fds.into_iter().map(Some))
            .collect(),
        canary: offer.canary,
    }))
}

impl Successor {
    /// The predecessor's socket for a listener named `name` configured at
    /// `address` (the admin listener: `None`): a socket whose configured or
    /// bound address is `address` (a port-0 address only with the same
    /// listener name). Each socket is given once.
    pub fn socket(
        &mut self,
        name: Option<&str>,
        address: SocketAddr,
    ) -> Option<(SocketAddr, OwnedFd)> {
        let slot = self.sockets.iter_mut().find(|(info, fd)| {
            fd.is_some()
                && if address.port() == 0 {
                    info.configured == address && info.listener.as_deref() == name
                } else {
                    info.configured == address || info.local == address
                }
        })?;
        let local = slot.0.local;
        slot.1.take().map(|fd| (local, fd))
    }

    /// Sockets of the predecessor that this config does not use (they
    /// close when the predecessor exits).
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter(|(_, fd)| fd.is_some())
            .map(|(i, _)| i.local)
            .collect()
    }

    /// Tell the predecessor that this process serves: it stops accepting
    /// and drains. Returns its pid once it let go of the upgrade socket.
    pub fn take_over(self) -> Result<u32, UpgradeError> {
        let path = self.path.clone();
        let protocol = protocol_error(&path);
        let io = io_error(&path);
        drop(self.sockets);
        write_line(&self.stream, &TakeOver { take_over: true }).map_err(io)?;
        let done: Done = read_line(&mut BufReader::new(&self.stream)).map_err(protocol)?;
        if !done.ok {
            return Err(protocol("the running sift did not let go".into()));
        }
        Ok(done.pid)
    }
}

// ------------------------------------------------------------------ lines

fn write_line<T: Serialize>(mut stream: &UnixStream, v: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

/// One JSON line of at most 64 KiB.
fn read_line<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> Result<T, String> {
    let mut line = Vec::new();
    let n = r
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the connection closed".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad message: {e}"))
}
