//! The `sift` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sift::app::{self, AppError, Options};
use sift::config;
use sift::reload::Source;

// With `--features mimalloc`: mimalloc instead of glibc malloc. It cut the
// allocator's share of a TLS keep-alive request from ~13 % to ~4 % of
// user-space instructions, but raised RSS under load from 14 to 25 MB and
// its throughput gain was within the host's noise (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sift",
    version,
    about = "A reverse proxy and data-plane filter"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `sift run` without a config file: the dev default, changed by flags.
#[derive(clap::Args)]
struct DevArgs {
    /// Without --config: listen here instead of 127.0.0.1:8080 (PORT,
    /// :PORT, or IP:PORT; a bare port is on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Without --config: forward to this instead of 127.0.0.1:3000 (PORT,
    /// HOST:PORT, http://HOST[:PORT], or https://HOST[:PORT]: TLS checked
    /// against the system's CAs, Host set to the upstream's).
    #[arg(long, value_name = "UPSTREAM")]
    upstream: Option<String>,
    /// Without --config: the admin API here instead of 127.0.0.1:9901.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Without --config: a builtin filter on every request, `spam` or
    /// `cilog`, in mode `annotate` (default), `block` or `shadow`
    /// (`--filter spam:block`). Repeatable.
    #[arg(long, value_name = "KIND[:MODE]")]
    filter: Vec<String>,
}

impl DevArgs {
    fn options(self) -> config::dev::DevOptions {
        config::dev::DevOptions {
            listen: self.listen,
            upstream: self.upstream,
            admin: self.admin,
            filters: self.filter,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run sift. Without --config: the embedded dev default (listen
    /// 127.0.0.1:8080, forward to 127.0.0.1:3000, admin 127.0.0.1:9901).
    Run {
        #[arg(short, long, conflicts_with_all = ["listen", "upstream", "admin", "filter"])]
        config: Option<PathBuf>,
        /// Take the listening sockets over from the sift serving the
        /// config's `upgrade.socket` (a binary upgrade without a refused
        /// connection); it then drains and exits.
        #[arg(long)]
        upgrade: bool,
        #[command(flatten)]
        dev: DevArgs,
    },
    /// Validate a config file; print every error with its YAML path and line
    /// (exit code 2 on errors).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run sift with two built-in echo upstreams ("stable", "canary").
    Demo,
    /// Print the JSON Schema of sift.yaml.
    Schema,
    /// Print the embedded dev default config (with the flags of `sift run`
    /// without --config applied: a start for your own file).
    DefaultConfig {
        #[command(flatten)]
        dev: DevArgs,
    },
    /// Train a classifier model.
    Train {
        #[command(subcommand)]
        what: sift::classify::cli::TrainWhat,
    },
    /// Evaluate a classifier's recipe on public corpora.
    Eval {
        #[command(subcommand)]
        what: sift::classify::cli::EvalWhat,
    },
    /// Classify files (or stdin): one JSON line per input.
    Classify(sift::classify::cli::ClassifyArgs),
    /// Export a classifier's featurized training data (for the ONNX model).
    ExportFeatures {
        #[command(subcommand)]
        what: sift::classify::onnx_cli::ExportWhat,
    },
    /// Evaluate an ONNX spam model: time-split quality and serving speed.
    EvalOnnx(sift::classify::onnx_cli::EvalOnnxArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            upgrade,
            dev,
        } => {
            let source = match config {
                Some(p) => Source::File(p),
                None => match config::dev::dev_config(&dev.options()) {
                    Ok(text) => Source::Inline(Arc::from(text)),
                    Err(e) => {
                        eprintln!("sift: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            serve(Options {
                source,
                demo: false,
                upgrade,
            })
        }
        Cmd::Demo => serve(Options {
            source: Source::Inline(Arc::from(sift::demo::CONFIG)),
            demo: true,
            upgrade: false,
        }),
        Cmd::Check { config } => check(&config),
        Cmd::Schema => match sift::classify::cli::out(config::json_schema()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => sift::classify::cli::stdout_failed(e),
        },
        Cmd::DefaultConfig { dev } => match config::dev::dev_config(&dev.options()) {
            Ok(text) => match sift::classify::cli::out(&text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => sift::classify::cli::stdout_failed(e),
            },
            Err(e) => {
                eprintln!("sift: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Train { what } => sift::classify::cli::run_train(what),
        Cmd::Eval { what } => sift::classify::cli::run_eval(what),
        Cmd::Classify(args) => sift::classify::cli::run_classify(args),
        Cmd::ExportFeatures { what } => sift::classify::onnx_cli::run_export(what),
        Cmd::EvalOnnx(args) => sift::classify::onnx_cli::run_eval_onnx(args),
    }
}

fn serve(opts: Options) -> ExitCode {
    let name = match &opts.source {
        Source::File(p) => p.display().to_string(),
        Source::Inline(_) => "(embedded config)".to_string(),
    };
    match app::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AppError::Config(errs)) => {
            print_errors(&name, &errs);
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sift: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    // Models and TLS files are loaded too, as `sift run` does: a broken
    // model, certificate, key or CA file is a config error.
    let loaded = config::load_file(path).and_then(|c| {
        let error = |path: String, e: &dyn std::fmt::Display| config::ConfigError {
            path,
            line: None,
            message: e.to_string(),
        };
        let mut errs: Vec<config::ConfigError> = Vec::new();
        for (i, l) in c.listeners.iter().enumerate() {
            if let Some(Err(e)) = l.tls.as_ref().map(sift::tls::server_config) {
                errs.push(error(format!("listeners[{i}].tls"), &e));
            }
        }
        for (i, cl) in c.clusters.iter().enumerate() {
            if let Err(e) = sift::upstream::tls_connector(cl) {
                errs.push(error(format!("clusters[{i}].tls"), &e));
            }
        }
        if let Some(Err(e)) = c.redis.clone().map(sift::policy::redis::Redis::new) {
            errs.push(error("redis.tls".into(), &e));
        }
        for (i, f) in c.filters.iter().enumerate() {
            if let Err(e) = sift::filter::build(f) {
                errs.push(error(format!("filters[{i}].model"), &e));
            }
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            Err(config::with_lines(&text, errs))
        }
    });
    match loaded {
        Ok(c) => {
            // `auto` is resolved from this machine: say what it came to.
            let held = c.overload.max_buffered_bytes.map_or_else(
                || "no limit".to_string(),
                |b| format!("{:.1} MiB", b as f64 / 1048576.0),
            );
            sift::say!(
                "{}: ok ({} listener(s), {} route(s), {} cluster(s); request bodies held in memory: {})",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.clusters.len(),
                held
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            print_errors(&path.display().to_string(), &errs);
            ExitCode::from(2)
        }
    }
}

/// `FILE:LINE: path: message`, one per error, then a count (stderr).
fn print_errors(file: &str, errs: &config::ConfigErrors) {
    for e in &errs.0 {
        match e.line {
            Some(l) => eprintln!("{file}:{l}: {}: {}", e.path, e.message),
            None => eprintln!("{file}: {}: {}", e.path, e.message),
        }
    }
    eprintln!("{file}: {} error(s)", errs.0.len());
}
