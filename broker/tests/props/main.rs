//! Property tests of the broker's edges against hostile input: the MQTT
//! framing ([`codec`]) and the chat request path on a real RocksDB
//! ([`requests`]).
//!
//! `PROPTEST_CASES=N` overrides every test's number of cases (the defaults
//! keep the suite fast); failures are shrunk and their seeds saved under
//! `proptest-regressions/` by proptest as usual.

mod codec;
mod requests;

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
