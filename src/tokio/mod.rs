//! The tokio edition: the same protocol, statements and decisions as the blocking runtime,
//! driven by tasks on a tokio runtime over `tokio-postgres`. Enabled by the `tokio` feature.

pub(crate) mod exec;

pub use crate::saga::Tokio;

/// A saga whose steps are async; see [`crate::Saga`].
pub type Saga = crate::SagaOf<Tokio>;
/// Builds a [`Saga`]; see [`crate::SagaBuilder`].
pub type SagaBuilder<P> = crate::SagaBuilder<P, Tokio>;
/// What an async step gets; see [`crate::StepContext`].
pub type StepContext<'t> = crate::StepContext<'t, Tokio>;
