//! The tokio edition: the same protocol, statements and decisions as the blocking runtime,
//! driven by tasks on a tokio runtime over `tokio-postgres` (with a deadpool pool). Enabled
//! by the `tokio` feature.
//!
//! Everything here mirrors a blocking item of the same name: [`Runtime`] is
//! [`crate::Runtime`] with async methods, [`Client`] is [`crate::Client`], [`Saga`] and
//! [`SagaBuilder`] take async steps, [`StepContext`] lends the step's
//! [`tokio_postgres::Transaction`]. Both runtimes can serve one schema at once: a blocking
//! parent waits for tokio children and the reverse, since everything they share lives in the
//! database.
//!
//! A step is a closure returning a boxed future that may borrow the context and the payload:
//!
//! ```no_run
//! use std::time::Duration;
//! use structured_cooperation::StepResult;
//! use structured_cooperation::tokio::{Runtime, Saga};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: i64 }
//!
//! # async fn example() -> structured_cooperation::Result<()> {
//! let saga = Saga::builder("order-saga")
//!     .step(|ctx, order: &Order| Box::pin(async move {
//!         let write = ctx.prepare_cached("insert into orders (id) values ($1)").await?;
//!         ctx.tx().await.execute(&write, &[&order.id]).await?;
//!         ctx.emit("payments", &serde_json::json!({ "order": order.id }))?; // buffered
//!         StepResult::Ok(())
//!     }))
//!     .build()?;
//! let runtime = Runtime::builder("postgres://postgres@127.0.0.1/postgres")
//!     .subscribe("orders", saga)
//!     .start()
//!     .await?;
//! let root = runtime.launch("orders", &serde_json::json!({ "id": 7 })).await?;
//! runtime.wait_for(root, Duration::from_secs(30)).await?;
//! runtime.shutdown().await
//! # }
//! ```
//!
//! **Blocking calls inside a tokio runtime.** The blocking [`crate::Client`] and
//! [`crate::Runtime`] run their own single-threaded tokio runtime inside `postgres`, and tokio
//! forbids starting one from a thread that drives async tasks: called from async code they
//! panic with "Cannot start a runtime from within a runtime". Use this module's [`Client`]
//! from async code, or move the blocking call off the async threads with
//! `tokio::task::spawn_blocking`.

mod builder;
mod client;
mod dispatcher;
pub(crate) mod exec;
mod listener;
mod runtime;
mod session;
mod typed;
mod worker;

pub use builder::RuntimeBuilder;
pub use client::{Client, ClientBuilder, Pool};
pub use runtime::Runtime;
pub use typed::{Action, Handler};

pub use crate::saga::Tokio;

/// A saga whose steps are async; see [`crate::SagaOf`].
pub type Saga = crate::SagaOf<Tokio>;
/// Builds a [`Saga`]; see [`crate::SagaBuilder`].
pub type SagaBuilder<P> = crate::SagaBuilder<P, Tokio>;
/// What an async step gets; see [`crate::StepContext`].
pub type StepContext<'t> = crate::StepContext<'t, Tokio>;

/// The tokio edition's public handles cross tasks and threads too.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Runtime>();
    assert_send_sync::<RuntimeBuilder>();
    assert_send_sync::<Client>();
    assert_send_sync::<ClientBuilder>();
    assert_send_sync::<Saga>();
    assert_send_sync::<SagaBuilder<serde_json::Value>>();
};
