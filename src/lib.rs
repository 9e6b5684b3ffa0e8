//! sessiond: logins, short-lived JWT access tokens, single-use rotating refresh tokens with
//! reuse detection, and an append-only, hash-chained event log from which all session state is
//! derived. See `DESIGN.md` in the shared folder and the README for the picture.

pub mod app;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod context;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod passwords;
pub mod projection;
pub mod rules;
pub mod service;
pub mod store;
pub mod tokens;

pub use app::{App, StartError};
pub use config::Config;
