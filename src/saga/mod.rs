//! Saga definitions: a named handler with ordered steps, their compensating actions and their
//! child-failure handlers.

mod context;

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::core::{Next, StepShape};
use crate::error::{Error, Result};
use crate::failure::{Failure, StepError, StepResult};
use crate::validate;

pub use context::{ChildFailures, Phase, StepContext};
pub(crate) use context::{Emission, Engine, StepInfo, UserStatements};

type Decoded<P> = std::result::Result<P, StepError>;
/// A type-erased step body: decodes the payload and runs the user's closure.
type BodyFn = Box<dyn Fn(&mut StepContext<'_>, &str) -> StepResult<Next> + Send + Sync>;
type CompensateFn =
    Box<dyn Fn(&mut StepContext<'_>, &str, &Failure) -> StepResult<()> + Send + Sync>;
type ChildFailuresFn =
    Box<dyn Fn(&mut StepContext<'_>, &str, &ChildFailures) -> StepResult<Next> + Send + Sync>;

struct StepDef {
    name: Option<String>,
    body: BodyFn,
    compensate: Option<CompensateFn>,
    child_failures: Option<ChildFailuresFn>,
}

/// A handler: a name and an ordered list of steps, each run in its own transaction.
///
/// Build one with [`Saga::builder`], then subscribe it to a topic with
/// [`RuntimeBuilder::subscribe`](crate::RuntimeBuilder::subscribe).
pub struct Saga {
    name: String,
    payload_type: &'static str,
    shapes: Vec<StepShape>,
    step_names: Vec<String>,
    steps: Vec<StepDef>,
}

impl Saga {
    /// Starts a saga whose runs are handled by the handler `name`.
    ///
    /// `P` is the payload type every step receives, decoded from the message's JSON with serde;
    /// use `serde_json::Value` to take any JSON. It is usually inferred from the first step's
    /// closure.
    ///
    /// ```
    /// use structured_cooperation::{Saga, StepContext, StepResult};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// let saga = Saga::builder("order-saga")
    ///     .step(|ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
    ///         ctx.emit("payments", &serde_json::json!({ "order": order.id }))?;
    ///         Ok(())
    ///     })
    ///     .step_named("ship", |_ctx, order: &Order| -> StepResult {
    ///         println!("shipping order {}", order.id);
    ///         Ok(())
    ///     })
    ///     .rollback(|_ctx, order: &Order, cause| -> StepResult {
    ///         println!("recalling the shipment of order {} because {}", order.id, cause.message());
    ///         Ok(())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(saga.step_names(), ["0", "ship"]);
    /// ```
    pub fn builder<P: DeserializeOwned + 'static>(name: impl Into<String>) -> SagaBuilder<P> {
        SagaBuilder {
            name: name.into(),
            steps: Vec::new(),
            misplaced: None,
            _payload: PhantomData,
        }
    }

    /// The handler name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step names, in order.
    pub fn step_names(&self) -> &[String] {
        &self.step_names
    }

    /// The Rust type the payload is decoded into.
    pub fn payload_type(&self) -> &'static str {
        self.payload_type
    }

    pub(crate) fn shapes(&self) -> &[StepShape] {
        &self.shapes
    }

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

impl fmt::Debug for Saga {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("payload_type", &self.payload_type)
            .field("steps", &self.step_names)
            .finish()
    }
}

/// Builds a [`Saga`]; see [`Saga::builder`].
pub struct SagaBuilder<P> {
    name: String,
    steps: Vec<StepDef>,
    /// A modifier called before any step exists (reported by `build`).
    misplaced: Option<&'static str>,
    _payload: PhantomData<fn(&P)>,
}

fn decode<P: DeserializeOwned>(ctx: &StepContext<'_>, raw: &str) -> Decoded<P> {
    serde_json::from_str(raw).map_err(|e| {
        StepError::with_kind(
            "structured_cooperation::PayloadMismatch",
            format!(
                "the payload of message {} on topic {:?} does not deserialize into {}: {e}",
                ctx.message_id(),
                ctx.topic(),
                std::any::type_name::<P>()
            ),
        )
    })
}

impl<P: DeserializeOwned + 'static> SagaBuilder<P> {
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

    fn push<F, O>(mut self, name: Option<String>, body: F) -> Self
    where
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next>,
    {
        self.steps.push(StepDef {
            name,
            body: Box::new(move |ctx, raw| {
                let payload: P = decode(ctx, raw)?;
                body(ctx, &payload).map(Into::into)
            }),
            compensate: None,
            child_failures: None,
        });
        self
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
        match self.steps.last_mut() {
            Some(step) => {
                step.compensate = Some(Box::new(move |ctx, raw, cause| {
                    let payload: P = decode(ctx, raw)?;
                    compensate(ctx, &payload, cause)
                }));
            }
            None => self.misplaced = Some("rollback"),
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
        match self.steps.last_mut() {
            Some(step) => {
                step.child_failures = Some(Box::new(move |ctx, raw, failures| {
                    let payload: P = decode(ctx, raw)?;
                    handle(ctx, &payload, failures)
                }));
            }
            None => self.misplaced = Some("on_child_failures"),
        }
        self
    }

    /// Appends a step (named after its index) that does nothing but make the next step wait
    /// `duration` — a durable sleep: it survives restarts, is measured with the database
    /// clock, and ends early for a cancellation or a deadline (the run then gives up).
    pub fn sleep(self, duration: Duration) -> Self {
        self.push(
            None,
            move |ctx: &mut StepContext<'_>, _: &P| -> StepResult {
                ctx.delay_next(duration);
                Ok(())
            },
        )
    }

    /// [`sleep`](Self::sleep) with an explicit step name.
    pub fn sleep_named(self, name: impl Into<String>, duration: Duration) -> Self {
        self.push(
            Some(name.into()),
            move |ctx: &mut StepContext<'_>, _: &P| -> StepResult {
                ctx.delay_next(duration);
                Ok(())
            },
        )
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
        self.push(
            Some(format!("{name} (waiting for scheduled time)")),
            move |ctx: &mut StepContext<'_>, payload: &P| -> StepResult {
                ctx.next_not_before(at(payload));
                Ok(())
            },
        )
        .push(Some(name), body)
    }

    /// Makes the saga periodic: appends `"<n> (sleep)"`, which waits `every`, and
    /// `"<n> (launch next)"`, which launches this saga's message again (same topic and payload)
    /// on the global scope, as an independent tree, until `runs` runs in all happened (forever
    /// with `None`). Steps see their place in the chain with [`StepContext::run_count`].
    ///
    /// Placed first, the next run is scheduled even if this one later fails (and runs may
    /// overlap); placed last, a failing run ends the chain.
    pub fn periodic(self, every: Duration, runs: Option<u32>) -> Self {
        let n = self.steps.len();
        self.sleep_named(format!("{n} (sleep)"), every).push(
            Some(format!("{n} (launch next)")),
            move |ctx: &mut StepContext<'_>, _: &P| -> StepResult {
                if runs.is_none_or(|runs| ctx.run_count() + 1 < runs) {
                    ctx.relaunch_next();
                }
                Ok(())
            },
        )
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
        let finally = std::sync::Arc::new(finally);
        let (on_failure, on_rollback) = (finally.clone(), finally.clone());
        self.push(None, move |ctx: &mut StepContext<'_>, payload: &P| {
            body(ctx, payload).inspect_err(|_| {
                // The step is failing anyway; finally's own failure must not mask the step's.
                let _ = on_failure(ctx, payload);
            })
        })
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
    }

    /// Validates the definition: the handler name must be valid, there must be at least one
    /// step, and step names must be valid and unique.
    pub fn build(self) -> Result<Saga> {
        validate::name("handler", &self.name)?;
        let invalid = |reason: String| Error::InvalidSaga {
            saga: self.name.clone(),
            reason,
        };
        if let Some(modifier) = self.misplaced {
            return Err(invalid(format!(
                "{modifier}() applies to the step added before it, but there is none"
            )));
        }
        if self.steps.is_empty() {
            return Err(invalid("a saga needs at least one step".to_owned()));
        }
        let mut seen = HashSet::new();
        let mut shapes = Vec::with_capacity(self.steps.len());
        for (index, step) in self.steps.iter().enumerate() {
            let name = step.name.clone().unwrap_or_else(|| index.to_string());
            validate::name("step", &name)?;
            if !seen.insert(name.clone()) {
                return Err(invalid(format!(
                    "step name {name:?} is used twice (unnamed steps are named after their index)"
                )));
            }
            shapes.push(StepShape {
                name,
                compensates: step.compensate.is_some(),
                handles_child_failures: step.child_failures.is_some(),
            });
        }
        Ok(Saga {
            name: self.name,
            payload_type: std::any::type_name::<P>(),
            step_names: shapes.iter().map(|s| s.name.clone()).collect(),
            shapes,
            steps: self.steps,
        })
    }
}

impl<P> fmt::Debug for SagaBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("name", &self.name)
            .field("steps", &self.steps.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn noop(_: &mut StepContext<'_>, _: &Value) -> StepResult {
        Ok(())
    }

    #[test]
    fn steps_are_named_by_index_unless_named() {
        let saga = Saga::builder("h")
            .step(noop)
            .step_named("b", noop)
            .step(noop)
            .build()
            .unwrap();
        assert_eq!(saga.step_names(), ["0", "b", "2"]);
        assert_eq!(saga.name(), "h");
    }

    #[test]
    fn compensations_and_handlers_belong_to_the_step_before_them() {
        let saga = Saga::builder("h")
            .step(noop)
            .rollback(|_, _: &Value, _| Ok(()))
            .step(noop)
            .on_child_failures(|_, _: &Value, f| Err(f.rethrow()))
            .build()
            .unwrap();
        let shapes = saga.shapes();
        assert!(shapes[0].compensates && !shapes[0].handles_child_failures);
        assert!(!shapes[1].compensates && shapes[1].handles_child_failures);
        let err = Saga::builder::<Value>("h")
            .rollback(|_, _, _| Ok(()))
            .step(noop)
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("rollback() applies to the step added before it"),
            "{err}"
        );
    }

    #[test]
    fn empty_sagas_and_duplicate_names_are_rejected() {
        let err = Saga::builder::<Value>("h").build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid saga \"h\": a saga needs at least one step"
        );
        let err = Saga::builder("h")
            .step(noop)
            .step_named("0", noop)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("step name \"0\" is used twice"),
            "{err}"
        );
        let err = Saga::builder("").step(noop).build().unwrap_err();
        assert!(err.to_string().starts_with("invalid handler name"), "{err}");
        let err = Saga::builder("h").step_named("", noop).build().unwrap_err();
        assert!(err.to_string().starts_with("invalid step name"), "{err}");
    }
}
