//! # structured-cooperation
//!
//! Structured concurrency for services that talk through messages, on PostgreSQL, with plain
//! threads.
//!
//! A handler ([`Saga`]) is a sequence of steps. Each step runs in one database transaction and
//! may emit messages. **The next step does not start until every handler of every message
//! emitted in the previous step has finished** — transitively, across services and processes.
//! That one rule is what makes a tree of message handlers behave like structured code.
//!
//! ```no_run
//! use std::time::Duration;
//! use structured_cooperation::{Runtime, Saga, StepContext, StepResult};
//! use serde_json::{json, Value};
//!
//! # fn main() -> structured_cooperation::Result<()> {
//! let order = Saga::builder("order-saga")
//!     .step(|ctx: &mut StepContext<'_>, order: &Value| -> StepResult {
//!         // Business writes commit atomically with the step...
//!         ctx.tx().execute("INSERT INTO orders (body) VALUES ($1)", &[order])?;
//!         // ...and so do the messages it emits.
//!         ctx.emit("payments", &json!({ "amount": order["amount"] }))?;
//!         ctx.emit("shipping", &json!({ "address": order["address"] }))?;
//!         Ok(())
//!     })
//!     .step_named("confirm", |_ctx, _order: &Value| -> StepResult {
//!         // Runs only after every payments and shipping handler has finished.
//!         Ok(())
//!     })
//!     .build()?;
//! let payment = Saga::builder("payment")
//!     .step(|_ctx, _p: &Value| -> StepResult { Ok(()) })
//!     .build()?;
//!
//! let runtime = Runtime::builder("postgres://postgres@127.0.0.1/postgres")
//!     .workers(4)
//!     .subscribe("orders", order)
//!     .subscribe("payments", payment)
//!     .start()?;
//! let root = runtime.launch("orders", &json!({ "amount": 42, "address": "Main St 1" }))?;
//! let outcome = runtime.wait_for(root, Duration::from_secs(30))?;
//! for event in runtime.history(root)? {
//!     println!("{event}"); // EMITTED@-, SEEN@order-saga, EMITTED(0)@order-saga, ...
//! }
//! # let _ = outcome;
//! runtime.shutdown()
//! # }
//! ```
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio` | no | `structured_cooperation::tokio`: the same engine on a tokio runtime over `tokio-postgres` (with a deadpool pool): async steps, an async `Client` and `Runtime`, interoperating with blocking runtimes on one schema |
//! | `cron` | no | `Schedule::cron` and `Schedule::in_timezone`: scheduled chains on cron expressions in IANA time zones (croner, chrono-tz) |
//! | `rustls` | no | TLS for every connection (rustls with ring): `sslmode` (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert` in the URL, read as libpq does |
//! | `cli` | no | the `coop` command-line tool: list, inspect, steer and prune runs (clap) |
//! | `signals` | no | `Runtime::run_until_signal` (both editions): SIGTERM or SIGINT starts a graceful shutdown (signal-hook) |
//!
//! Without features the crate has no async code at all; interval schedules, retries and
//! idempotent launches need none.
//!
//! ## Brief overview
//!
//! * [`Saga`] / [`SagaBuilder`]: define a handler and its steps.
//! * [`StepContext`]: what a step gets — the open [`postgres::Transaction`], [`emit`] for
//!   children, [`launch`] for independent roots.
//! * [`Runtime`] / [`RuntimeBuilder`]: worker threads that run subscribed handlers.
//! * [`Client`]: launch, inspect ([`history`], [`tree`]), wait, and complete out-of-band
//!   handlers, from any process.
//! * [`Failure`]: a recorded failure with its causes, rendered like a cross-service backtrace.
//!
//! ## Implementation
//!
//! * a **pure core** (`core`) decides what a claimed run does next (`decide`, `rollback`),
//!   what operators may do (`operator`), and how the dispatcher schedules work (`schedule`);
//!   `core::attempt` is one claimed run as a state machine that says which I/O to do next and
//!   is told what happened. None of it touches a database, a thread or a clock, and all of it
//!   is tested on its own;
//! * **statements as data** (`proto`): one type per SQL statement, holding its text, its
//!   parameters and its row decoder side by side; no SQL lives anywhere else;
//! * the **blocking runtime** is glue: an executor that runs any statement over
//!   `postgres::GenericClient`, workers that perform what an attempt asks, a dispatcher and a
//!   `LISTEN` connection, connected by `crossbeam-channel`.
//!
//! One row per run holds its state, including its count of unfinished children; claiming is an
//! indexed `FOR UPDATE SKIP LOCKED` lookup that does not slow down as history grows, and the
//! append-only history (in Scoop's vocabulary: `EMITTED`, `SEEN`, `SUSPENDED`, `COMMITTED`, ...)
//! is for people and tests. See `ARCHITECTURE.md` for tables, transitions and lock order.
//!
//! [`emit`]: StepContext::emit
//! [`launch`]: StepContext::launch
//! [`history`]: Client::history
//! [`tree`]: Client::tree

#![forbid(unsafe_code)]

mod client;
mod connect;
mod context;
mod core;
mod deadline;
mod error;
mod failure;
mod ids;
mod inspect;
mod listing;
mod migrate;
mod options;
mod pool;
mod proto;
mod runtime;
mod saga;
mod schedule;
#[cfg(feature = "rustls")]
mod tls;
#[cfg(feature = "tokio")]
pub mod tokio;
mod typed;
mod validate;
mod versions;

pub use crate::client::{Client, ClientBuilder, DEFAULT_SCHEMA};
pub use crate::context::{ContextKey, CooperationContext};
pub use crate::core::{EventKind, Next, RetryPolicy, RunStatus};
pub use crate::deadline::{DeadlineKind, Deadlines};
pub use crate::error::{Error, PoolError, Result};
pub use crate::failure::{Failure, Frame, StepError, StepResult};
pub use crate::ids::{MessageId, RootId, RunId};
pub use crate::inspect::{
    ChainInfo, ChainStop, HistoryEvent, Message, Requested, RootRun, RunInfo, Scope, TreeOutcome,
    TroubledRun, render_tree,
};
pub use crate::listing::{
    Cursor, PruneReport, RunCount, RunFilter, RunPage, RuntimeInfo, TopologyEntry,
};
pub use crate::options::EmitOptions;
pub use crate::pool::{ConnectError, ConnectionManager, Pool};
pub use crate::runtime::{Runtime, RuntimeBuilder, RuntimeStats};
pub use crate::saga::{
    Blocking, ChildFailures, Flavor, Phase, Saga, SagaBuilder, SagaOf, StepContext,
};
pub use crate::schedule::Schedule;
pub use crate::typed::{
    Action, AsReturnName, AsTopic, ChildValue, Handler, Request, ReturnName, Topic,
};
pub use crate::versions::{Migrated, RefusedRun, RunMigration};

/// The `postgres` crate, re-exported so that step code uses the same version.
pub use postgres;
/// The `r2d2` crate, re-exported for building a [`Pool`].
pub use r2d2;

/// The public handles cross threads: a runtime's client goes to other threads, sagas and
/// failures are shared by workers. Checked at compile time so that no change takes it away.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Runtime>();
    assert_send_sync::<RuntimeBuilder>();
    assert_send_sync::<Client>();
    assert_send_sync::<ClientBuilder>();
    assert_send_sync::<Saga>();
    assert_send_sync::<SagaBuilder<serde_json::Value>>();
    assert_send_sync::<Failure>();
    assert_send_sync::<StepError>();
    assert_send_sync::<Error>();
    assert_send_sync::<CooperationContext>();
    assert_send_sync::<Deadlines>();
    assert_send_sync::<EmitOptions>();
    assert_send_sync::<TreeOutcome>();
    assert_send_sync::<HistoryEvent>();
    assert_send_sync::<RuntimeStats>();
};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
