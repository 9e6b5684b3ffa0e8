//! The integration suite: one binary, each test against a real server on 127.0.0.1:0 with its
//! own SQLite file. Logs are captured (and searched for secrets); set TEST_LOG=1 to see them.

mod helpers;

mod auth_api;
mod bad_input;
mod cli;
mod expiry;
mod refresh;
mod rules;
mod rules_cli;
mod secrets;
mod startup;
