//! Logs: one JSON object per line in production (`log.format: json`), a
//! human format in dev and the demo. Access-log lines have target
//! `sift::access`. Writes go through a non-blocking writer thread that never
//! drops a line (it applies backpressure instead).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

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

/// Keep the returned guard alive until exit: it flushes the writer.
pub fn init(cfg: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    // The writer's queue is preallocated (32 bytes a slot) and touched at
    // start: the default 128 000 lines cost 4 MB of resident memory. 8 192
    // lines are plenty; when full, writers wait (lossless), never drop.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(8_192)
        .finish(std::io::stdout());
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok());
    let text = env.clone().unwrap_or_else(|| level_filter(&cfg.level));
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    let result = match cfg.format {
        LogFormat::Json => {
            let b = base
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let h = b.reload_handle();
            b.try_init()
                .map(|()| Box::new(move |f| h.reload(f).map_err(|e| e.to_string())) as SetFilter)
        }
        LogFormat::Text => {
            let b = base.with_target(false).compact().with_filter_reloading();
            let h = b.reload_handle();
            b.try_init()
                .map(|()| Box::new(move |f| h.reload(f).map_err(|e| e.to_string())) as SetFilter)
        }
    };
    match result {
        Ok(set) => {
            let _ = CONTROL.set(Control {
                set,
                current: Mutex::new(text),
                from_env: env.is_some(),
            });
        }
        Err(_) => eprintln!("sift: a logger was already installed; keeping it"),
    }
    guard
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
