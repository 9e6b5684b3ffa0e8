//! The integration suite: one binary, each test against a real server on 127.0.0.1:0 with its
//! own SQLite file (or its own PostgreSQL database, see `pg.rs`). Logs are captured (and
//! searched for secrets); set TEST_LOG=1 to see them.

mod helpers;
mod jose;
mod pg;

mod admin;
mod auth_api;
mod bad_input;
mod browser;
mod cli;
mod devices;
mod dpop;
mod expiry;
mod export;
mod jobs;
mod migration;
mod nodes;
mod oauth;
mod openapi;
mod ops;
mod postgres_surfaces;
mod refresh;
mod rules;
mod rules_cli;
mod secrets;
mod shutdown;
mod startup;
mod store_contract;
mod webhooks;
