//! sift: a reverse proxy and data-plane filter.
//!
//! Request path: listener → [`proxy::handle`] (route, limits, header hygiene)
//! → [`upstream::Cluster`] (LB, pool). Everything that changes at run time
//! lives in one immutable [`snapshot::Snapshot`] behind one `ArcSwap`
//! ([`state::Shared`]); [`reload`] builds and publishes new ones. See
//! docs/architecture.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod canary;
pub mod cilog;
pub mod classify;
pub mod clock;
pub mod config;
pub mod demo;
pub mod drain;
pub mod error;
pub mod filter;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod upstream;
