//! What the tokio edition's sagas take: closures returning boxed futures, which borrow the
//! step context and the payload (`|ctx, order: &Order| Box::pin(async move { .. })`).

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::{ChildFailures, SagaBuilder, SagaOf, StepContext, StepKind, Tokio, decode};
use crate::core::Next;
use crate::failure::{Failure, StepResult};

impl SagaOf<Tokio> {
    /// Like [`crate::Saga::builder`], for a saga whose steps are async.
    ///
    /// ```
    /// use structured_cooperation::StepResult;
    /// use structured_cooperation::tokio::Saga;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// let saga = Saga::builder("order-saga")
    ///     .step(|ctx, order: &Order| Box::pin(async move {
    ///         ctx.emit("payments", &serde_json::json!({ "order": order.id }))?;
    ///         StepResult::Ok(())
    ///     }))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(saga.step_names(), ["0"]);
    /// ```
    pub fn builder<P: DeserializeOwned + 'static>(
        name: impl Into<String>,
    ) -> SagaBuilder<P, Tokio> {
        SagaBuilder::named(name.into())
    }

    pub(crate) fn run_step<'c>(
        &'c self,
        index: usize,
        ctx: &'c mut StepContext<'_, Tokio>,
        payload: &'c str,
    ) -> BoxFuture<'c, StepResult<Next>> {
        (self.steps[index].body)(ctx, payload)
    }

    /// Runs step `index`'s compensating action; a step without one compensates nothing.
    pub(crate) fn compensate<'c>(
        &'c self,
        index: usize,
        ctx: &'c mut StepContext<'_, Tokio>,
        payload: &'c str,
        cause: &'c Failure,
    ) -> BoxFuture<'c, StepResult<()>> {
        match self.steps.get(index).and_then(|s| s.compensate.as_ref()) {
            Some(compensate) => compensate(ctx, payload, cause),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    /// Runs step `index`'s child-failure handler; without one, the failure is rethrown.
    pub(crate) fn handle_child_failures<'c>(
        &'c self,
        index: usize,
        ctx: &'c mut StepContext<'_, Tokio>,
        payload: &'c str,
        failures: &'c ChildFailures,
    ) -> BoxFuture<'c, StepResult<Next>> {
        match self
            .steps
            .get(index)
            .and_then(|s| s.child_failures.as_ref())
        {
            Some(handle) => handle(ctx, payload, failures),
            None => Box::pin(std::future::ready(Err(failures.rethrow()))),
        }
    }
}

impl<P: DeserializeOwned + Send + Sync + 'static> SagaBuilder<P, Tokio> {
    /// Like [`crate::SagaBuilder::step`], with an async step: the closure returns a boxed
    /// future (`Box::pin(async move { .. })`) that may borrow the context and the payload.
    pub fn step<F, O>(self, body: F) -> Self
    where
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + 'static,
    {
        self.push(None, body)
    }

    /// Like [`crate::SagaBuilder::step_named`], with an async step.
    pub fn step_named<F, O>(self, name: impl Into<String>, body: F) -> Self
    where
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + 'static,
    {
        self.push(Some(name.into()), body)
    }

    fn push<F, O>(self, name: Option<String>, body: F) -> Self
    where
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + 'static,
    {
        let body = Arc::new(body);
        self.push_def(
            name,
            Box::new(move |ctx, raw| {
                let payload: StepResult<P> = decode(ctx, raw);
                let body = body.clone();
                Box::pin(async move {
                    let payload = payload?;
                    body(ctx, &payload).await.map(Into::into)
                })
            }),
        )
    }

    /// Like [`crate::SagaBuilder::rollback`], with an async compensating action.
    pub fn rollback<F>(mut self, compensate: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut StepContext<'_, Tokio>,
                &'c P,
                &'c Failure,
            ) -> BoxFuture<'c, StepResult<()>>
            + Send
            + Sync
            + 'static,
    {
        let compensate = Arc::new(compensate);
        if let Some(step) = self.last_step("rollback") {
            step.compensate = Some(Box::new(move |ctx, raw, cause| {
                let payload: StepResult<P> = decode(ctx, raw);
                let compensate = compensate.clone();
                Box::pin(async move {
                    let payload = payload?;
                    compensate(ctx, &payload, cause).await
                })
            }));
        }
        self
    }

    /// Like [`crate::SagaBuilder::on_child_failures`], with an async handler.
    pub fn on_child_failures<F>(mut self, handle: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut StepContext<'_, Tokio>,
                &'c P,
                &'c ChildFailures,
            ) -> BoxFuture<'c, StepResult<Next>>
            + Send
            + Sync
            + 'static,
    {
        let handle = Arc::new(handle);
        if let Some(step) = self.last_step("on_child_failures") {
            step.child_failures = Some(Box::new(move |ctx, raw, failures| {
                let payload: StepResult<P> = decode(ctx, raw);
                let handle = handle.clone();
                Box::pin(async move {
                    let payload = payload?;
                    handle(ctx, &payload, failures).await
                })
            }));
        }
        self
    }

    /// Like [`crate::SagaBuilder::scheduled_step`], with an async step.
    pub fn scheduled_step<A, F, O>(self, at: A, body: F) -> Self
    where
        A: Fn(&P) -> SystemTime + Send + Sync + 'static,
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + 'static,
    {
        let name = self.steps.len().to_string();
        self.scheduled_step_named(name, at, body)
    }

    /// Like [`crate::SagaBuilder::scheduled_step_named`], with an async step.
    pub fn scheduled_step_named<A, F, O>(self, name: impl Into<String>, at: A, body: F) -> Self
    where
        A: Fn(&P) -> SystemTime + Send + Sync + 'static,
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + 'static,
    {
        let name = name.into();
        self.push_wait_until(name.clone(), at)
            .push(Some(name), body)
    }

    /// Like [`crate::SagaBuilder::try_finally`], with async `body` and `finally`.
    pub fn try_finally<F, O, G>(self, body: F, finally: G) -> Self
    where
        F: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<O>>
            + Send
            + Sync
            + 'static,
        O: Into<Next> + Send + 'static,
        G: for<'c> Fn(&'c mut StepContext<'_, Tokio>, &'c P) -> BoxFuture<'c, StepResult<()>>
            + Send
            + Sync
            + 'static,
    {
        let body = Arc::new(body);
        let finally = Arc::new(finally);
        let (on_failure, on_rollback) = (finally.clone(), finally.clone());
        self.push(None, move |ctx, payload: &P| {
            let (body, on_failure) = (body.clone(), on_failure.clone());
            Box::pin(async move {
                match body(ctx, payload).await {
                    Ok(next) => Ok(next),
                    Err(e) => {
                        // The step is failing anyway; finally's own failure must not mask it.
                        let _ = on_failure(ctx, payload).await;
                        Err(e)
                    }
                }
            })
        })
        .mark(StepKind::Try)
        .rollback(move |ctx, payload: &P, _cause| {
            let on_rollback = on_rollback.clone();
            Box::pin(async move {
                if ctx.successor_ran() {
                    Ok(())
                } else {
                    on_rollback(ctx, payload).await
                }
            })
        })
        .push(None, move |ctx, payload: &P| finally(ctx, payload))
        .mark(StepKind::Finally)
    }
}
