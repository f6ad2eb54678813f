//! Wiring: load the config, bind the listeners, start the admin thread
//! (admin API, file watch, SIGHUP), serve, and drain on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{self, ConfigErrors};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::reload::{Reloader, Source};
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::{admin, demo, listener, logging, upgrade};

#[derive(Debug)]
pub struct Options {
    pub source: Source,
    /// Also start the demo's echo upstreams and print what to try.
    pub demo: bool,
    /// Take the listening sockets over from the sift serving the config's
    /// `upgrade.socket` (a binary upgrade), instead of binding them.
    pub upgrade: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot bind {what} on {addr}: {source} (is another process using that port?{hint})")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{0}")]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error(
        "--upgrade needs a top-level `upgrade.socket` in the config: the running sift's socket"
    )]
    UpgradeNotConfigured,
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Run sift until it is told to stop. Blocks the calling thread.
pub fn run(opts: Options) -> Result<(), AppError> {
    let text = opts.source.read().map_err(AppError::Config)?;
    let config = config::load_str(&text).map_err(AppError::Config)?;
    let _log_guards =
        logging::init(&config.log).map_err(|e| AppError::Io(std::io::Error::other(e)))?;
    let rt = match config.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    let result = rt.block_on(serve(opts, text, config));
    if let Err(e) = &result {
        tracing::error!(error = %e, "sift stopped");
    }
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

async fn serve(opts: Options, text: Arc<str>, config: config::Config) -> Result<(), AppError> {
    if opts.demo {
        demo::spawn_echo("stable", demo::STABLE_ADDR).await?;
        demo::spawn_echo("canary", demo::CANARY_ADDR).await?;
    }
    let metrics = Arc::new(Metrics::new());

    // A binary upgrade: the running sift's listening sockets, when it has
    // them; otherwise this process binds its own, the upgrade socket first
    // (a live sift behind it is an error: use --upgrade).
    let upgrade_path = config.upgrade.as_ref().map(|u| u.socket.clone());
    let mut successor = match (&upgrade_path, opts.upgrade) {
        (None, true) => return Err(AppError::UpgradeNotConfigured),
        (Some(path), true) => match upgrade::connect(path)? {
            Some(s) => {
                tracing::info!(predecessor = s.pid, path = %path.display(), "upgrade: received the running sift's listening sockets");
                Some(s)
            }
            None => {
                tracing::warn!(path = %path.display(), "upgrade: no sift serves the upgrade socket; binding the listeners");
                None
            }
        },
        _ => None,
    };
    let mut upgrade_listener = match (&upgrade_path, &successor) {
        (Some(path), None) => Some(upgrade::bind(path)?),
        _ => None,
    };
    let hint = if upgrade_path.is_some() && !opts.upgrade {
        " to replace a running sift, start this one with --upgrade"
    } else {
        ""
    };
    let handable = Arc::new(upgrade::Sockets::default());

    let mut bound = Vec::new();
    for l in &config.listeners {
        let inherited = successor
            .as_mut()
            .and_then(|s| s.socket(Some(&l.name), l.address));
        let taken = inherited.is_some();
        let tcp = match inherited {
            Some((_, fd)) => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(std)?
            }
            None => tokio::net::TcpListener::bind(l.address)
                .await
                .map_err(|source| AppError::Bind {
                    what: format!("listener {:?}", l.name),
                    addr: l.address,
                    source,
                    hint,
                })?,
        };
        let address = tcp.local_addr()?;
        tracing::info!(listener = %l.name, %address, inherited = taken, "listener bound");
        if upgrade_path.is_some() {
            let info = upgrade::SocketInfo {
                listener: Some(l.name.clone()),
                configured: l.address,
                local: address,
            };
            handable.add(info, &tcp)?;
        }
        bound.push((Arc::<str>::from(l.name.as_str()), l.address, tcp));
    }
    let admin_tcp = match successor
        .as_mut()
        .and_then(|s| s.socket(None, config.admin.address))
    {
        Some((_, fd)) => std::net::TcpListener::from(fd),
        None => {
            std::net::TcpListener::bind(config.admin.address).map_err(|source| AppError::Bind {
                what: "admin".into(),
                addr: config.admin.address,
                source,
                hint,
            })?
        }
    };
    admin_tcp.set_nonblocking(true)?;
    let admin_address = admin_tcp.local_addr()?;
    tracing::info!(address = %admin_address, "admin bound");
    if upgrade_path.is_some() {
        let info = upgrade::SocketInfo {
            listener: None,
            configured: config.admin.address,
            local: admin_address,
        };
        handable.add(info, &admin_tcp)?;
    }
    if let Some(s) = &successor {
        for address in s.unused() {
            tracing::info!(%address, "upgrade: a socket of the running sift that this config does not use; it closes when that sift exits");
        }
    }

    let clock = crate::clock::Clock::new();
    let snapshot = Snapshot::build(config, text.clone(), None, &metrics, clock.now())
        .map_err(|e| AppError::Config(config::with_lines(&text, e)))?;
    let shared = Shared::new(snapshot, metrics, clock);
    if let Some(s) = &successor {
        take_canary_state(&shared, &s.canary);
    }
    shared.metrics.config_last_reload_success.set(unix_now());
    let drain = Drain::new();
    let listeners = listener::Listeners::new(
        tokio::runtime::Handle::current(),
        drain.clone(),
        shared.clone(),
        upgrade_path.is_some().then(|| handable.clone()),
    );
    let reloader = Arc::new(Reloader::new(opts.source, shared.clone()));
    reloader.set_listeners(listeners.clone());
    for (name, configured, tcp) in bound {
        listeners.start(name, configured, tcp.into_std()?)?;
    }
    spawn_admin_thread(admin_tcp, shared.clone(), reloader)?;
    shared.ready.store(true, Ordering::Release);
    if let (Some(s), Some(path)) = (successor.take(), &upgrade_path) {
        // This process serves now: the predecessor may stop.
        match tokio::task::spawn_blocking(move || s.take_over()).await {
            Ok(Ok(pid)) => {
                tracing::info!(
                    predecessor = pid,
                    "upgrade: took over; the predecessor drains"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: the predecessor did not confirm"),
            Err(e) => tracing::warn!(error = %e, "upgrade: the take-over task failed"),
        }
        upgrade_listener = Some(upgrade::bind(path)?);
    }
    if let (Some(l), Some(path)) = (upgrade_listener, &upgrade_path) {
        tokio::spawn(upgrade::serve(
            l,
            path.clone(),
            handable.clone(),
            shared.clone(),
        ));
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "sift ready");
    if opts.demo {
        // A hint for the person at the terminal: a closed stdout must not
        // stop (or panic) the server.
        let _ = crate::classify::cli::out_line(demo::TRY);
    }

    let mut signals = Signals::new()?;
    let which = tokio::select! {
        s = signals.next() => Some(s),
        () = shared.until_quit() => Some("POST /quitquitquit"),
        () = shared.until_handed_over() => None,
    };
    shared.draining.store(true, Ordering::Release);
    let (delay, timeout) = {
        let s = shared.snapshot.load();
        (s.config.shutdown.delay.0, s.config.shutdown.drain_timeout.0)
    };
    if let Some(which) = which {
        // A stopping sift hands nothing over: its sockets close with it.
        drop(handable.take_all());
        if let Some(path) = &upgrade_path {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(
            signal = which,
            ?delay,
            ?timeout,
            "shutting down: not ready, draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            s = signals.next() => tracing::warn!(signal = s, "another signal: skipping the shutdown delay"),
        }
    } else {
        // The successor accepts on the same sockets: no delay is needed.
        tracing::info!(?timeout, "handed over to the successor: draining");
    }
    let left = tokio::select! {
        left = drain.drain(timeout) => left,
        s = signals.next() => {
            tracing::warn!(signal = s, "another signal: stopping without waiting for the drain");
            drain.open_connections()
        }
    };
    if left == 0 {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!(
            open_connections = left,
            "drain ended with connections still open; closing them"
        );
    }
    Ok(())
}

fn spawn_admin_thread(
    tcp: std::net::TcpListener,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // SIGHUP's and SIGUSR1's default action ends the process: the handlers
    // are installed before this returns, so a reload or reopen signal is
    // never fatal once ready.
    let (hup, usr1) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _ctx = rt.enter();
        (
            signal(SignalKind::hangup())?,
            signal(SignalKind::user_defined1())?,
        )
    };
    std::thread::Builder::new()
        .name("sift-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let tcp = match tokio::net::TcpListener::from_std(tcp) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                shared.snapshot.load().start_background();
                if let Some(t) = &shared.tracer {
                    t.start();
                }
                tokio::spawn(reloader.clone().watch());
                tokio::spawn(crate::dns::refresh_loop(shared.clone(), reloader.clone()));
                tokio::spawn(crate::reload::on_sighup(reloader.clone(), hup));
                tokio::spawn(crate::reload::on_sigusr1(usr1));
                tokio::spawn(crate::admin::canary_controller(shared.clone()));
                tokio::spawn(crate::admin::tls_watcher(shared.clone()));
                tokio::spawn(crate::admin::filter_watcher(shared.clone()));
                admin::serve(tcp, shared, reloader).await;
            });
        })?;
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A predecessor's canary state (weights, rollout phase) for the routes
/// that have the same backends, file weights and canary spec here.
fn take_canary_state(shared: &Shared, handoffs: &[crate::canary::Handoff]) {
    let snapshot = shared.snapshot.load();
    let now = shared.clock.now();
    for h in handoffs {
        let route = snapshot.routes.iter().find(|r| r.spec.name == h.route);
        let Some((route, state)) = route.and_then(|r| Some((r, r.canary.as_ref()?))) else {
            continue;
        };
        let backends: Vec<String> = route
            .spec
            .backends
            .iter()
            .map(|b| b.cluster.clone())
            .collect();
        if state.take_over(h, &backends, now) {
            tracing::info!(route = %h.route, weights = ?h.weights, "upgrade: canary state taken over");
        } else {
            tracing::info!(route = %h.route, "upgrade: the route's canary changed; its state starts anew");
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
