//! Logs: one JSON object per line in production (`log.format: json`), a
//! human format in dev and the demo. Access-log lines have target
//! `sift::access`; they go to stdout with the rest, or to their own file
//! (`log.access_log_path`), reopened on SIGUSR1 or `POST /reopen_logs`.
//! Writes go through non-blocking writer threads that never drop a line
//! (they apply backpressure instead).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

use crate::config::file::LogFormat;
use crate::config::model::LogConfig;

/// Changes the installed filter at run time (`POST /logging`, a reload
/// that changes `log.level`): the reload handle, whose type depends on the
/// format, behind one function.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

struct Control {
    set: SetFilter,
    /// The filter in force, as written.
    current: Mutex<String>,
    /// `RUST_LOG` chose the filter at start: a config reload leaves it.
    from_env: bool,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// The filter a `log.level` stands for.
pub fn level_filter(level: &str) -> String {
    format!("{level},hyper=warn,h2=warn")
}

/// The log writers' guards: keep them alive until exit, they flush the
/// writer threads.
pub struct Guards {
    _stdout: tracing_appender::non_blocking::WorkerGuard,
    _access: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// An output behind a writer thread: lossless (when its queue is full,
/// loggers wait, never drop). The queue is preallocated (32 bytes a slot)
/// and touched at start: the default 128 000 lines cost 4 MB of resident
/// memory; 8 192 lines are plenty.
fn writer<W: std::io::Write + Send + 'static>(
    w: W,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    // The writer thread takes every line queued, then flushes: buffered,
    // a burst of lines is one write(2), not one per line (stdout is
    // line-buffered, the access file was not buffered at all), and a
    // line never waits for more once the queue is empty.
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(8_192)
        .finish(std::io::BufWriter::with_capacity(64 << 10, w))
}

/// A formatting layer in `format` onto `w`.
fn fmt_layer<S>(
    format: LogFormat,
    w: tracing_appender::non_blocking::NonBlocking,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let base = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(w);
    match format {
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => base.with_target(false).compact().boxed(),
    }
}

fn is_access(m: &tracing::Metadata<'_>) -> bool {
    m.target() == ACCESS_TARGET
}

/// The target of access-log lines.
pub const ACCESS_TARGET: &str = "sift::access";

/// The writer access-log lines go to (stdout's, or the access file's),
/// and whether the log format is JSON. [`crate::access_log`] writes JSON
/// and combined lines there itself, at a fraction of a tracing event's
/// cost; text-format lines stay tracing events. Unset when sift did not
/// install the logger.
static ACCESS_OUT: OnceLock<(tracing_appender::non_blocking::NonBlocking, bool)> = OnceLock::new();

/// The access-log writer, whatever the format (combined lines).
pub fn access_writer() -> Option<tracing_appender::non_blocking::NonBlocking> {
    ACCESS_OUT.get().map(|(w, _)| w.clone())
}

/// The access-log writer when the log format is JSON (JSON access lines
/// are then written directly); `None` with the text format.
pub fn access_json_writer() -> Option<tracing_appender::non_blocking::NonBlocking> {
    ACCESS_OUT
        .get()
        .filter(|(_, json)| *json)
        .map(|(w, _)| w.clone())
}

/// Install the logger: every line on stdout, or, with
/// `log.access_log_path`, access-log lines in that file and the rest on
/// stdout. Keep the returned guards alive until exit. An access log file
/// that cannot be opened is an error (nothing is installed).
pub fn init(cfg: &LogConfig) -> Result<Guards, String> {
    let access_file = match &cfg.access_log_path {
        Some(p) => Some(AccessFile::open(p)?),
        None => None,
    };
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok());
    let text = env.clone().unwrap_or_else(|| level_filter(&cfg.level));
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let (out, out_guard) = writer(std::io::stdout());
    let ansi = std::io::stdout().is_terminal();
    let json = matches!(cfg.format, LogFormat::Json);
    let (stdout_layer, access_layer, access_guard) = match access_file {
        Some(f) => {
            let f = Arc::new(f);
            let _ = ACCESS.set(f.clone());
            let (w, g) = writer(AccessWriter(f));
            let _ = ACCESS_OUT.set((w.clone(), json));
            (
                fmt_layer(cfg.format, out, ansi)
                    .with_filter(filter_fn(|m| !is_access(m)))
                    .boxed(),
                Some(
                    fmt_layer(cfg.format, w, false)
                        .with_filter(filter_fn(is_access))
                        .boxed(),
                ),
                Some(g),
            )
        }
        None => {
            let _ = ACCESS_OUT.set((out.clone(), json));
            (fmt_layer(cfg.format, out, ansi), None, None)
        }
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(access_layer)
        .try_init();
    match installed {
        Ok(()) => {
            let set: SetFilter = Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
            let _ = CONTROL.set(Control {
                set,
                current: Mutex::new(text),
                from_env: env.is_some(),
            });
        }
        Err(_) => eprintln!("sift: a logger was already installed; keeping it"),
    }
    Ok(Guards {
        _stdout: out_guard,
        _access: access_guard,
    })
}

/// The access log file (`log.access_log_path`): written by its writer
/// thread only; reopened (logrotate moved it) or moved to another path
/// (a reload) by swapping the open file under the lock.
struct AccessFile {
    /// The path in force and the file open at it.
    open: Mutex<(PathBuf, std::fs::File)>,
}

static ACCESS: OnceLock<Arc<AccessFile>> = OnceLock::new();

impl AccessFile {
    fn open(path: &Path) -> Result<Self, String> {
        Ok(AccessFile {
            open: Mutex::new((path.to_path_buf(), open_append(path)?)),
        })
    }
}

/// Open `path` to append (created mode 0640 if missing).
fn open_append(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))
}

struct AccessWriter(Arc<AccessFile>);

impl std::io::Write for AccessWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        g.1.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let mut g = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        g.1.flush()
    }
}

/// Open the access log file again at its path (SIGUSR1, `POST
/// /reopen_logs`), as nginx's `reopen` after logrotate moved it: lines
/// queued from now on go to the new file. `Ok(None)`: access lines go to
/// stdout, nothing to reopen. On failure the old file stays in use.
pub fn reopen_access_log() -> Result<Option<PathBuf>, String> {
    let Some(a) = ACCESS.get() else {
        return Ok(None);
    };
    let path = a.open.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
    let file = open_append(&path)?;
    a.open.lock().unwrap_or_else(|p| p.into_inner()).1 = file;
    Ok(Some(path))
}

/// A reload names another `log.access_log_path`: open it (before the
/// config is published: failing rejects the reload) and write there.
/// Nothing to do when the path is the one in force, or there is no file.
pub fn move_access_log(path: &Path) -> Result<(), String> {
    let Some(a) = ACCESS.get() else {
        return Ok(());
    };
    if a.open.lock().unwrap_or_else(|p| p.into_inner()).0 == path {
        return Ok(());
    }
    let file = open_append(path)?;
    *a.open.lock().unwrap_or_else(|p| p.into_inner()) = (path.to_path_buf(), file);
    Ok(())
}

/// The filter in force (`None`: sift did not install the logger).
pub fn current_filter() -> Option<String> {
    let c = CONTROL.get()?;
    Some(c.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Replace the filter (EnvFilter directives, `RUST_LOG`'s syntax). A bad
/// directive is an error and the filter in force stays.
pub fn set_filter(text: &str) -> Result<(), String> {
    let c = CONTROL
        .get()
        .ok_or_else(|| "sift did not install the logger".to_string())?;
    let f = EnvFilter::builder()
        .with_regex(false)
        .parse(text)
        .map_err(|e| format!("{text:?} is not a log filter: {e}"))?;
    (c.set)(f)?;
    *c.current.lock().unwrap_or_else(|p| p.into_inner()) = text.to_string();
    Ok(())
}

/// A reload changed `log.level`: its filter, unless `RUST_LOG` chose one.
pub fn config_level_changed(level: &str) {
    let Some(c) = CONTROL.get() else { return };
    if c.from_env {
        tracing::warn!(
            level,
            "log.level changed, but RUST_LOG sets the filter: not applied"
        );
        return;
    }
    let text = level_filter(level);
    match set_filter(&text) {
        Ok(()) => tracing::info!(filter = %text, "log filter changed by a reload"),
        Err(e) => tracing::error!(error = %e, "log filter not changed"),
    }
}
