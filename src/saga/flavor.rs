//! Which runtime runs a saga's code: blocking closures on worker threads (the default), or
//! futures on a tokio runtime. One `Saga`, `SagaBuilder` and `StepContext` serve both; what
//! differs is the transaction step code gets and the shape of the closures.

use crate::core::Next;
use crate::failure::{Failure, StepResult};

use super::{ChildFailures, StepContext};

mod sealed {
    pub trait Sealed {}
}

/// How a saga's code runs: [`Blocking`] (the default everywhere a flavor can be named) or,
/// with the `tokio` feature, `Tokio`. Sealed: the crate provides both and no other.
pub trait Flavor: sealed::Sealed + Sized + Send + Sync + 'static {
    /// The step's transaction, as step code sees it.
    #[doc(hidden)]
    type Tx<'t>;
    /// A step body, type-erased: decodes the payload and runs the user's code.
    #[doc(hidden)]
    type Body: Send + Sync;
    /// A compensating action, type-erased.
    #[doc(hidden)]
    type Compensate: Send + Sync;
    /// A child-failure handler, type-erased.
    #[doc(hidden)]
    type OnChildFailures: Send + Sync;
    /// A body that runs `f` synchronously (the built-in steps, which only buffer).
    #[doc(hidden)]
    fn sync_body(f: SyncBody<Self>) -> Self::Body;
}

/// A synchronous step body over either flavor's context.
pub(crate) type SyncBody<X> =
    Box<dyn Fn(&mut StepContext<'_, X>, &str) -> StepResult<Next> + Send + Sync>;

/// The blocking edition: steps are closures called on worker threads, with a
/// [`postgres::Transaction`].
#[derive(Debug)]
pub enum Blocking {}

impl sealed::Sealed for Blocking {}

impl Flavor for Blocking {
    type Tx<'t> = postgres::Transaction<'t>;
    type Body = SyncBody<Blocking>;
    type Compensate =
        Box<dyn Fn(&mut StepContext<'_>, &str, &Failure) -> StepResult<()> + Send + Sync>;
    type OnChildFailures =
        Box<dyn Fn(&mut StepContext<'_>, &str, &ChildFailures) -> StepResult<Next> + Send + Sync>;

    fn sync_body(f: SyncBody<Self>) -> Self::Body {
        f
    }
}

/// The tokio edition: steps are futures run on a tokio runtime, with a
/// [`tokio_postgres::Transaction`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub enum Tokio {}

#[cfg(feature = "tokio")]
mod tokio_flavor {
    use futures_util::future::BoxFuture;

    use super::{ChildFailures, Failure, Flavor, Next, StepContext, StepResult, SyncBody, Tokio};

    impl super::sealed::Sealed for Tokio {}

    /// An async step body over the tokio flavor's context.
    pub(crate) type AsyncBody = Box<
        dyn for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c str) -> BoxFuture<'c, StepResult<Next>>
            + Send
            + Sync,
    >;

    impl Flavor for Tokio {
        type Tx<'t> = tokio_postgres::Transaction<'t>;
        type Body = AsyncBody;
        type Compensate = Box<
            dyn for<'c> Fn(
                    &'c mut StepContext<'_, Tokio>,
                    &'c str,
                    &'c Failure,
                ) -> BoxFuture<'c, StepResult<()>>
                + Send
                + Sync,
        >;
        type OnChildFailures = Box<
            dyn for<'c> Fn(
                    &'c mut StepContext<'_, Tokio>,
                    &'c str,
                    &'c ChildFailures,
                ) -> BoxFuture<'c, StepResult<Next>>
                + Send
                + Sync,
        >;

        fn sync_body(f: SyncBody<Self>) -> Self::Body {
            Box::new(move |ctx, raw| {
                let result = f(ctx, raw);
                Box::pin(std::future::ready(result))
            })
        }
    }
}
