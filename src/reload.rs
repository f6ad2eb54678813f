//! Hot reload: file watch (polling, so Kubernetes ConfigMap symlink swaps and
//! editors' rename-on-save are seen), SIGHUP and POST /reload all end in
//! [`Reloader::reload`]: parse → validate → build a snapshot → one
//! `ArcSwap::store`. A bad config is rejected, logged and counted, and the
//! old snapshot keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::snapshot::Snapshot;
use crate::state::Shared;

#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    /// Built-in text (the dev default, the demo): nothing to re-read.
    Inline(Arc<str>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { generation: u64 },
    Unchanged,
}

pub struct Reloader {
    source: Source,
    shared: Arc<Shared>,
    lock: Mutex<()>,
    /// The running accept loops: a reload adds, moves and removes
    /// listeners through them. Without them, listener changes need a
    /// restart.
    listeners: std::sync::OnceLock<Arc<crate::listener::Listeners>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish()
    }
}

impl Source {
    pub fn read(&self) -> Result<Arc<str>, ConfigErrors> {
        match self {
            Source::Inline(t) => Ok(t.clone()),
            Source::File(p) => std::fs::read_to_string(p).map(Arc::from).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    path: "(file)".into(),
                    line: None,
                    message: format!("cannot read {}: {e}", p.display()),
                }])
            }),
        }
    }
}

impl Reloader {
    pub fn new(source: Source, shared: Arc<Shared>) -> Self {
        Reloader {
            source,
            shared,
            lock: Mutex::new(()),
            listeners: std::sync::OnceLock::new(),
        }
    }

    pub fn set_listeners(&self, l: Arc<crate::listener::Listeners>) {
        let _ = self.listeners.set(l);
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Load the source again and, when it changed and is valid, publish a new
    /// snapshot. `trigger` names the cause in logs (file, sighup, admin).
    pub fn reload(&self, trigger: &'static str) -> Result<Outcome, ConfigErrors> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let metrics = &self.shared.metrics;
        let result = self.try_reload();
        match &result {
            Ok(Outcome::Applied { generation }) => {
                metrics.config_reloads.with_label_values(&["success"]).inc();
                metrics.config_last_reload_success.set(unix_now());
                tracing::info!(trigger, generation, "config reloaded");
            }
            Ok(Outcome::Unchanged) => {
                metrics
                    .config_reloads
                    .with_label_values(&["unchanged"])
                    .inc();
                tracing::debug!(trigger, "config unchanged");
            }
            Err(errs) => {
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                for e in &errs.0 {
                    tracing::error!(trigger, error = %e, "config reload rejected");
                }
                tracing::warn!(
                    trigger,
                    errors = errs.0.len(),
                    "config reload rejected; the previous config keeps serving"
                );
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Outcome, ConfigErrors> {
        let text = self.source.read()?;
        let current = self.shared.snapshot.load();
        // Same text, and every JWKS file still holds the keys in force.
        if *current.source == *text && !jwks_changed(&current.config) {
            return Ok(Outcome::Unchanged);
        }
        let config = config::load_str(&text)?;
        let listeners = self.listeners.get();
        restart_only_changes(&current.config, &config, listeners.is_none())
            .map_err(|e| config::with_lines(&text, e.0))?;
        // New addresses are bound before anything is published: a port in
        // use rejects the reload (the sockets bound so far close with
        // the plan).
        let plan = match listeners {
            Some(l) => Some(
                l.prepare(&config)
                    .map_err(|e| config::with_lines(&text, e))?,
            ),
            None => None,
        };
        let now = self.shared.clock.now();
        let snap = Snapshot::build(
            config,
            text.clone(),
            Some(&current),
            &self.shared.metrics,
            now,
        )
        .map_err(|e| config::with_lines(&text, e))?;
        let generation = snap.generation;
        // Another access log file: opened before anything is published,
        // so one that cannot be opened rejects the reload.
        if let Some(p) = &snap.config.log.access_log_path {
            crate::logging::move_access_log(p).map_err(|message| {
                config::with_lines(
                    &text,
                    vec![ConfigError {
                        path: "log.access_log_path".into(),
                        line: None,
                        message,
                    }],
                )
            })?;
        }
        let level = (snap.config.log.level != current.config.log.level)
            .then(|| snap.config.log.level.clone());
        snap.start_background();
        self.shared.snapshot.store(Arc::new(snap));
        if let (Some(l), Some(plan)) = (listeners, plan) {
            if !plan.is_empty() {
                l.apply(plan);
            }
        }
        if let Some(level) = level {
            crate::logging::config_level_changed(&level);
        }
        Ok(Outcome::Applied { generation })
    }

    /// Build the snapshot again from the config in force, for a change
    /// outside the config text (a strict_dns name's addresses): clusters
    /// whose endpoints did not change are kept as they are.
    pub fn rebuild(&self, trigger: &'static str) {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.shared.snapshot.load_full();
        let now = self.shared.clock.now();
        match Snapshot::build(
            (*current.config).clone(),
            current.source.clone(),
            Some(&current),
            &self.shared.metrics,
            now,
        ) {
            Ok(snap) => {
                let generation = snap.generation;
                snap.start_background();
                self.shared.snapshot.store(Arc::new(snap));
                tracing::info!(trigger, generation, "endpoints changed; snapshot rebuilt");
            }
            Err(errs) => {
                for e in &errs {
                    tracing::error!(trigger, error = %e, "snapshot rebuild failed; the previous one keeps serving");
                }
            }
        }
    }

    /// Poll the config file every `reload.interval` and reload when its
    /// identity (resolved path, inode, size, mtime) changes. Runs until the
    /// process ends; a no-op for inline sources or `reload.watch: false`.
    pub async fn watch(self: Arc<Self>) {
        let Source::File(path) = &self.source else {
            return;
        };
        let mut last = fingerprint(path);
        let jwks = |s: &crate::snapshot::Snapshot| {
            jwks_files(&s.config)
                .iter()
                .map(|p| fingerprint(std::path::Path::new(p)))
                .collect::<Vec<_>>()
        };
        let mut last_jwks = jwks(&self.shared.snapshot.load());
        // The file may have changed between the first load and this task's
        // start: then its text differs from what the snapshot was built from.
        let differs =
            std::fs::read_to_string(path).is_ok_and(|t| *t != *self.shared.snapshot.load().source);
        if differs {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload("file")).await;
        }
        loop {
            let (watch, interval) = {
                let s = self.shared.snapshot.load();
                (s.config.reload.watch, s.config.reload.interval.0)
            };
            tokio::time::sleep(interval).await;
            if !watch {
                continue;
            }
            let now = fingerprint(path);
            let now_jwks = jwks(&self.shared.snapshot.load());
            let trigger = if now != last {
                Some("file")
            } else if now_jwks != last_jwks {
                // A rotated key set or a changed htpasswd file: rebuilt
                // with the same config text.
                Some("watched_file")
            } else {
                None
            };
            last = now;
            if let Some(trigger) = trigger {
                let this = self.clone();
                // Reading and building run off the async workers.
                let _ = tokio::task::spawn_blocking(move || this.reload(trigger)).await;
                last_jwks = jwks(&self.shared.snapshot.load());
            }
        }
    }
}

/// Changes that cannot take effect without a restart make the reload fail, so
/// the running config and the file never silently disagree.
fn restart_only_changes(
    old: &Config,
    new: &Config,
    listeners_fixed: bool,
) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let ident = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address, l.protocol, l.serve))
            .collect::<Vec<_>>()
    };
    if listeners_fixed && ident(old) != ident(new) {
        errs.push(ConfigError {
            path: "listeners".into(),
            line: None,
            message:
                "listener names, addresses, protocols, `serve` or their order changed: these need a restart"
                    .into(),
        });
    }
    if old.admin.address != new.admin.address {
        errs.push(ConfigError {
            path: "admin.address".into(),
            line: None,
            message: "the admin address changed: this needs a restart".into(),
        });
    }
    if old.filter_pool != new.filter_pool {
        errs.push(ConfigError {
            path: "filter_pool".into(),
            line: None,
            message: "filter_pool changed: this needs a restart".into(),
        });
    }
    let exporter = |c: &Config| c.tracing.as_ref().map(|t| t.exporter_key());
    if exporter(old) != exporter(new) {
        errs.push(ConfigError {
            path: "tracing".into(),
            line: None,
            message: "tracing (other than sampling) changed, or was added or removed: this needs a restart".into(),
        });
    }
    if old.upgrade != new.upgrade {
        errs.push(ConfigError {
            path: "upgrade".into(),
            line: None,
            message: "upgrade changed, or was added or removed: this needs a restart (or a `sift run --upgrade`)".into(),
        });
    }
    if old.workers != new.workers {
        errs.push(ConfigError {
            path: "workers".into(),
            line: None,
            message: "workers changed: this needs a restart".into(),
        });
    }
    // access_log is read per request and level is set in place; the
    // format is the installed logger's.
    if old.log.access_log_path.is_some() != new.log.access_log_path.is_some() {
        errs.push(ConfigError {
            path: "log.access_log_path".into(),
            line: None,
            message: "log.access_log_path was added or removed (access-log lines between stdout and a file): this needs a restart; another path is applied by a reload".into(),
        });
    }
    if old.log.format != new.log.format {
        errs.push(ConfigError {
            path: "log.format".into(),
            line: None,
            message: "log.format changed: this needs a restart".into(),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

type Fingerprint = Option<(PathBuf, u64, u64, Option<SystemTime>)>;

/// The files the routes of `c` read at load besides the config: JWKS
/// files and `basic_auth` htpasswd files (a change reloads).
fn jwks_files(c: &Config) -> Vec<String> {
    let mut out: Vec<String> = c
        .routes
        .iter()
        .filter_map(|r| r.jwt.as_ref())
        .filter(|j| j.provider.jwks_source != "inline" && j.provider.remote.is_none())
        .map(|j| j.provider.jwks_source.clone())
        .chain(
            c.routes
                .iter()
                .filter_map(|r| r.basic_auth.as_ref()?.users_file.clone()),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Some JWKS file no longer holds the keys in force, or some `basic_auth`
/// file the users in force: other contents, or none readable (then the
/// rebuild fails with the file's error, and the running ones keep serving).
fn jwks_changed(c: &Config) -> bool {
    let keys = c.routes.iter().filter_map(|r| r.jwt.as_ref()).any(|j| {
        j.provider.jwks_source != "inline"
            && j.provider.remote.is_none()
            && std::fs::read_to_string(&j.provider.jwks_source)
                .ok()
                .and_then(|t| crate::jwt::parse_jwks(&t).ok())
                .is_none_or(|keys| keys != j.provider.keys)
    });
    keys || c
        .routes
        .iter()
        .filter_map(|r| r.basic_auth.as_ref())
        .any(|b| {
            b.users_file.as_ref().is_some_and(|f| {
                std::fs::read_to_string(f)
                    .ok()
                    .and_then(|t| crate::basic_auth::Users::parse(&t).ok())
                    .is_none_or(|u| u != b.users)
            })
        })
}

fn fingerprint(path: &std::path::Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&resolved).ok()?;
    Some((resolved, m.ino(), m.len(), m.modified().ok()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

/// Reload on SIGHUP until the process ends.
/// SIGUSR1 reopens the access log file, as nginx's `reopen` signal does.
pub async fn on_sigusr1(mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        match crate::logging::reopen_access_log() {
            Ok(Some(p)) => {
                tracing::info!(path = %p.display(), trigger = "sigusr1", "access log reopened")
            }
            Ok(None) => tracing::info!(
                trigger = "sigusr1",
                "access-log lines go to stdout: no file to reopen"
            ),
            Err(e) => tracing::error!(
                error = %e,
                trigger = "sigusr1",
                "access log not reopened; the old file stays in use"
            ),
        }
    }
}

pub async fn on_sighup(reloader: Arc<Reloader>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload("sighup")).await;
    }
}
