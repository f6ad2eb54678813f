//! sift: a reverse proxy and data-plane filter.
//!
//! Request path: listener → [`proxy::handle`] (route, limits, header hygiene)
//! → [`upstream::Cluster`] (LB, pool). Everything that changes at run time
//! lives in one immutable [`snapshot::Snapshot`] behind one `ArcSwap`
//! ([`state::Shared`]); [`reload`] builds and publishes new ones. See
//! docs/architecture.md.
#![forbid(unsafe_code)]

/// `println!` for the command-line reports: a closed stdout (`sift eval
/// spam | head`) ends the process quietly with success, as `head`'s
/// readers expect, instead of `println!`'s panic; any other write error
/// ends it with the error and failure. Every caller prints after its work
/// is saved (a trained model is written before its summary line).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::classify::cli::say_line(format_args!($($t)*))
    };
}

pub mod access_log;
pub mod admin;
pub mod app;
pub mod basic_auth;
pub mod body;
pub mod budget;
pub mod cache;
pub mod canary;
pub mod cilog;
pub mod classify;
pub mod clock;
pub mod compress;
pub mod config;
pub mod cors;
pub mod csrf;
pub mod demo;
pub mod dns;
pub mod drain;
pub mod error;
pub mod extauth;
pub mod external_auth;
pub mod field;
pub mod filter;
pub mod grpc_web;
pub mod jwks;
pub mod jwt;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod rls_client;
pub mod snapshot;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod upstream;
