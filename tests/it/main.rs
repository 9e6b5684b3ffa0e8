//! The integration suite: one binary, each test against a real server on 127.0.0.1:0 with its
//! own SQLite file (or its own PostgreSQL database, see `pg.rs`). Logs are captured (and
//! searched for secrets); set TEST_LOG=1 to see them.

mod helpers;
mod jose;
mod pg;

mod admin;
mod admin_stream;
mod auth_api;
mod backchannel;
mod bad_input;
mod browser;
mod browser_code_flow;
mod cli;
mod code_flow;
mod code_flow_step_up;
mod crash;
mod devices;
mod dpop;
mod expiry;
mod export;
mod files_roles;
mod integrity;
mod jobs;
mod journeys;
mod late_retry;
mod migration;
mod migration_0008;
mod nodes;
mod oauth;
mod observability;
mod oidc_discovery;
mod openapi;
mod ops;
mod pipeline;
mod postgres_surfaces;
mod privacy;
mod privacy_migrate;
mod props;
mod races;
mod refresh;
mod rules;
mod rules_cli;
mod secrets;
mod secure_defaults;
mod shared_memory;
mod shedding;
mod shutdown;
mod signout;
mod startup;
mod step_up;
mod store_contract;
mod throttle;
mod tls;
mod webhook_transport;
mod webhooks;
