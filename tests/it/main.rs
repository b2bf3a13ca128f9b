//! Integration tests against a real PostgreSQL (see `tests/it/util.rs` for the fixture).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

/// Atomicity of a step's writes (AT-*).
mod atomicity;
/// Steps per commit.
mod batching;
/// Cancellation (CN-*).
mod cancellation;
/// Scheduled chains and periodic sagas' context.
mod chains;
/// Child failures and their handlers (CF-*).
mod child_failures;
/// Compensations across a tree, failed rollbacks, operator requests.
mod compensation;
/// A step's conclusion in one round trip, when it fails.
mod conclude;
/// Bad configuration gives clear errors.
mod config;
/// Connecting: fast, clear failures; connection limits.
mod connecting;
/// The cooperation context (CX-*).
mod context;
/// Unknown context entries survive three services (property test).
mod context_roundtrip;
/// Deadlines (DL-*).
mod deadlines;
/// One harness for both runtimes.
mod engine;
/// Failing steps are recorded and release their parents.
mod failures;
/// Jumps (LP-08..15).
mod goto;
/// Happy-path scenarios of the reference (HP-*).
mod happy_path;
/// Idempotent launches.
mod idempotency;
/// The tokio runtime, alone and beside the blocking one.
#[cfg(feature = "tokio")]
mod interop;
/// Launching many roots at once; prepared launches.
mod launching;
/// Loops (LP-01..06).
mod loops;
/// The queue API and several instances of one handler (MQ-*).
mod messaging;
/// Operations over many trees: listing, counting, pruning.
mod operations;
/// Data PostgreSQL refuses, and runs failing on infrastructure errors.
mod poison;
/// Lost notifications, deep trees, concurrent siblings.
mod resilience;
/// Retries after transient failures.
mod retries;
/// Return values (RV-*).
mod return_values;
/// The rollback path, child failures, distributed failures (RB-*, CF-*, EX-*, IR-*).
mod rollback;
/// Shutdown as a long step sees it.
mod shutdown;
/// Durable time: sleep, schedules, periodic sagas (SL-*).
mod time;
/// try/finally (TF-*).
mod try_finally;
/// The typed layer and oversized input.
mod typed;
/// Shared fixtures.
mod util;
/// The runtime's own vacuum of `runs` when autovacuum is off.
mod vacuum;
/// Saga versions: side by side, rollback with the old version, migration (VE-*).
mod versions;
/// Safe defaults: unhandled topics, unknown ids, migrations left to a deploy step.
mod visibility;
