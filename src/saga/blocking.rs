//! What the blocking edition's sagas take: closures called on worker threads.

use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::{Blocking, ChildFailures, SagaBuilder, SagaOf, StepContext, StepKind, decode};
use crate::core::Next;
use crate::failure::{Failure, StepResult};

impl SagaOf<Blocking> {
    pub(crate) fn run_step(
        &self,
        index: usize,
        ctx: &mut StepContext<'_>,
        payload: &str,
    ) -> StepResult<Next> {
        (self.steps[index].body)(ctx, payload)
    }

    /// Runs step `index`'s compensating action; a step without one compensates nothing.
    pub(crate) fn compensate(
        &self,
        index: usize,
        ctx: &mut StepContext<'_>,
        payload: &str,
        cause: &Failure,
    ) -> StepResult<()> {
        match self.steps.get(index).and_then(|s| s.compensate.as_ref()) {
            Some(compensate) => compensate(ctx, payload, cause),
            None => Ok(()),
        }
    }

    /// Runs step `index`'s child-failure handler; without one, the failure is rethrown.
    pub(crate) fn handle_child_failures(
        &self,
        index: usize,
        ctx: &mut StepContext<'_>,
        payload: &str,
        failures: &ChildFailures,
    ) -> StepResult<Next> {
        match self
            .steps
            .get(index)
            .and_then(|s| s.child_failures.as_ref())
        {
            Some(handle) => handle(ctx, payload, failures),
            None => Err(failures.rethrow()),
        }
    }
}

impl<P: DeserializeOwned + 'static> SagaBuilder<P, Blocking> {
    /// Appends a step named after its index (`"0"`, `"1"`, ...).
    ///
    /// The closure gets the [`StepContext`] (the open transaction, `emit`, ...) and the decoded
    /// payload. Returning `Ok(())` continues with the next step; returning a [`Next`] chooses.
    /// Returning an error, or panicking, fails the run: the step's transaction is discarded,
    /// the failure is recorded, and the run rolls back the steps that did commit.
    pub fn step<F, O>(self, body: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        self.push(None, body)
    }

    /// Appends a step with an explicit name. Names are stored in the history and must be
    /// unique within the saga; renaming a step of a deployed saga strands in-flight runs.
    pub fn step_named<F, O>(self, name: impl Into<String>, body: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        self.push(Some(name.into()), body)
    }

    fn push<F, O>(self, name: Option<String>, body: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        self.push_def(
            name,
            Box::new(move |ctx, raw| {
                let payload: P = decode(ctx, raw)?;
                body(ctx, &payload).map(Into::into)
            }),
        )
    }

    /// Gives the step added last a compensating action: if the run rolls back after this step
    /// committed, it runs (once per committed execution of the step, newest first, in its own
    /// transaction, after the step's children rolled back) with the failure that caused the
    /// rollback. [`StepContext::iteration`] tells which execution it undoes. A compensation
    /// may emit messages; the run waits for them, and if one of them does not commit, the
    /// compensation counts as failed. A compensation that fails or panics ends the run
    /// `ROLLBACK_FAILED`.
    pub fn rollback<F>(mut self, compensate: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P, &Failure) -> StepResult<()> + Send + Sync + 'static,
    {
        if let Some(step) = self.last_step("rollback") {
            step.compensate = Some(Box::new(move |ctx, raw, cause| {
                let payload: P = decode(ctx, raw)?;
                compensate(ctx, &payload, cause)
            }));
        }
        self
    }

    /// Gives the step added last a child-failure handler: it runs when children emitted by the
    /// step failed (they have rolled back by then), with their failures. Returning a [`Next`]
    /// carries on — the handler may emit new children (a retry), which the run awaits, and is
    /// called again, with [`ChildFailures::iteration`] one higher, if those fail too.
    /// Returning an error (for example [`ChildFailures::rethrow`]) fails the run, which then
    /// rolls back. Without a handler, the failure is rethrown.
    pub fn on_child_failures<F>(mut self, handle: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P, &ChildFailures) -> StepResult<Next> + Send + Sync + 'static,
    {
        if let Some(step) = self.last_step("on_child_failures") {
            step.child_failures = Some(Box::new(move |ctx, raw, failures| {
                let payload: P = decode(ctx, raw)?;
                handle(ctx, &payload, failures)
            }));
        }
        self
    }

    /// Appends a step that runs no earlier than `at(payload)`: two steps,
    /// `"<n> (waiting for scheduled time)"` (which waits) and `"<n>"` (which runs `body`),
    /// where `n` is the index of the first. A time in the past runs it at once.
    pub fn scheduled_step<A, F, O>(self, at: A, body: F) -> Self
    where
        A: Fn(&P) -> SystemTime + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        let name = self.steps.len().to_string();
        self.scheduled_step_named(name, at, body)
    }

    /// [`scheduled_step`](Self::scheduled_step) with an explicit name `n`.
    pub fn scheduled_step_named<A, F, O>(self, name: impl Into<String>, at: A, body: F) -> Self
    where
        A: Fn(&P) -> SystemTime + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        let name = name.into();
        self.push_wait_until(name.clone(), at)
            .push(Some(name), body)
    }

    /// Appends a try/finally pair: step `"<n>"` runs `body`, step `"<n+1>"` runs `finally`
    /// (after `body`'s children finished). `finally` runs at most once per execution, and in
    /// every outcome: after `body` on success; inside `body`'s failing transaction if `body`
    /// fails (its database writes and emissions are then discarded with the step; other side
    /// effects remain); or while the saga rolls back, as the compensation of `"<n>"`, if the
    /// saga fails later but before `"<n+1>"` ran.
    pub fn try_finally<F, O, G>(self, body: F, finally: G) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
        G: Fn(&mut StepContext<'_>, &P) -> StepResult<()> + Send + Sync + 'static,
    {
        let finally = Arc::new(finally);
        let (on_failure, on_rollback) = (finally.clone(), finally.clone());
        self.push(None, move |ctx: &mut StepContext<'_>, payload: &P| {
            body(ctx, payload).inspect_err(|_| {
                // The step is failing anyway; finally's own failure must not mask the step's.
                let _ = on_failure(ctx, payload);
            })
        })
        .mark(StepKind::Try)
        .rollback(move |ctx, payload: &P, _cause| {
            if ctx.successor_ran() {
                Ok(())
            } else {
                on_rollback(ctx, payload)
            }
        })
        .push(None, move |ctx: &mut StepContext<'_>, payload: &P| {
            finally(ctx, payload)
        })
        .mark(StepKind::Finally)
    }
}
