//! Property tests (proptest, stable toolchain) for the parsers that take outside input: the
//! refresh-token format, the access-token verifier, rule files, the configuration (TOML and
//! environment) and the JSON bodies of the real server. Each property runs a bounded number of
//! cases (`CASES`) so the suite stays fast; failures are shrunk and printed, not persisted.

mod bodies;
mod parsers;

use proptest::test_runner::Config;

pub const CASES: u32 = 256;

pub fn config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    }
}
