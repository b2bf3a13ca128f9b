//! Integration tests against a real PostgreSQL (see `tests/it/util.rs` for the fixture).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

/// Happy-path scenarios of the reference (HP-*).
mod happy_path;
/// Shared fixtures.
mod util;
