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
use crate::{admin, demo, listener, logging};

#[derive(Debug)]
pub struct Options {
    pub source: Source,
    /// Also start the demo's echo upstreams and print what to try.
    pub demo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot bind {what} on {addr}: {source} (is another process using that port?)")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Run sift until it is told to stop. Blocks the calling thread.
pub fn run(opts: Options) -> Result<(), AppError> {
    let text = opts.source.read().map_err(AppError::Config)?;
    let config = config::load_str(&text).map_err(AppError::Config)?;
    let _log_guard = logging::init(&config.log);
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

    let mut bound = Vec::new();
    for l in &config.listeners {
        let tcp = tokio::net::TcpListener::bind(l.address)
            .await
            .map_err(|source| AppError::Bind {
                what: format!("listener {:?}", l.name),
                addr: l.address,
                source,
            })?;
        let address = tcp.local_addr()?;
        tracing::info!(listener = %l.name, %address, "listener bound");
        bound.push((Arc::<str>::from(l.name.as_str()), tcp));
    }
    let admin_tcp =
        std::net::TcpListener::bind(config.admin.address).map_err(|source| AppError::Bind {
            what: "admin".into(),
            addr: config.admin.address,
            source,
        })?;
    admin_tcp.set_nonblocking(true)?;
    tracing::info!(address = %admin_tcp.local_addr()?, "admin bound");

    let clock = crate::clock::Clock::new();
    let snapshot = Snapshot::build(config, text.clone(), None, &metrics, clock.now())
        .map_err(|e| AppError::Config(config::with_lines(&text, e)))?;
    let shared = Shared::new(snapshot, metrics, clock);
    shared.metrics.config_last_reload_success.set(unix_now());
    let reloader = Arc::new(Reloader::new(opts.source, shared.clone()));
    spawn_admin_thread(admin_tcp, shared.clone(), reloader)?;

    let drain = Drain::new();
    for (name, tcp) in bound {
        tokio::spawn(listener::serve(tcp, name, shared.clone(), drain.clone()));
    }
    shared.ready.store(true, Ordering::Release);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "sift ready");
    if opts.demo {
        // A hint for the person at the terminal: a closed stdout must not
        // stop (or panic) the server.
        let _ = crate::classify::cli::out_line(demo::TRY);
    }

    let mut signals = Signals::new()?;
    let which = signals.next().await;
    shared.draining.store(true, Ordering::Release);
    let (delay, timeout) = {
        let s = shared.snapshot.load();
        (s.config.shutdown.delay.0, s.config.shutdown.drain_timeout.0)
    };
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
    // SIGHUP's default action ends the process: the handler is installed
    // before this returns, so a reload signal is never fatal once ready.
    let hup = {
        let _ctx = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
