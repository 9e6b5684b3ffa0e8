//! Property tests (proptest, stable toolchain) for the parsers that take outside input: the
//! refresh-token format, the access-token verifier, rule files, the configuration (TOML and
//! environment) and the JSON bodies of the real server. Each property runs a bounded number of
//! cases (`CASES`, or `PROPTEST_CASES` to run more by hand) so the suite stays fast; failures
//! are shrunk and printed, not persisted.

mod bodies;
mod parsers;

use proptest::test_runner::Config;

pub const CASES: u32 = 256;

pub fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..Config::default()
    }
}
