//! Saga definitions: a named handler with ordered steps, their compensating actions and their
//! child-failure handlers. `Saga`, `SagaBuilder` and `StepContext` are written once for both
//! runtimes, parameterised by a [`Flavor`]; the closures each flavor takes are added in
//! `blocking.rs` and `tokio.rs`.

mod blocking;
mod context;
mod flavor;
#[cfg(feature = "tokio")]
mod tokio;
mod version;

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::core::{Next, RetryPolicy, StepShape};
use crate::error::{Error, Result};
use crate::failure::{StepError, StepResult};
use crate::validate;

pub use context::{ChildFailures, Phase, StepContext};
pub(crate) use context::{Emission, Engine, Occurrence, StepInfo, UserStatements};
#[cfg(feature = "tokio")]
pub use flavor::Tokio;
pub use flavor::{Blocking, Flavor};
pub(crate) use version::StepKind;

type Decoded<P> = std::result::Result<P, StepError>;

struct StepDef<X: Flavor> {
    name: Option<String>,
    kind: StepKind,
    body: X::Body,
    compensate: Option<X::Compensate>,
    child_failures: Option<X::OnChildFailures>,
    retry: Option<RetryPolicy>,
}

/// A handler of the blocking edition: a name and an ordered list of steps, each run in its
/// own transaction.
///
/// Build one with [`Saga::builder`], then subscribe it to a topic with
/// [`RuntimeBuilder::subscribe`](crate::RuntimeBuilder::subscribe). Its methods are
/// [`SagaOf`]'s, which serves both editions (`structured_cooperation::tokio::Saga` is
/// `SagaOf<Tokio>`).
pub type Saga = SagaOf<Blocking>;

/// A handler: a name and an ordered list of steps, each run in its own transaction. The
/// flavor `X` says which runtime runs its code; name it as [`Saga`] (blocking) or, with the
/// `tokio` feature, `structured_cooperation::tokio::Saga`. (Two names rather than a default
/// type parameter, so that `Saga::builder(..)` needs no annotation in either edition.)
pub struct SagaOf<X: Flavor> {
    name: String,
    payload_type: &'static str,
    /// Explicit, or the fingerprint of the shape (see `version.rs`).
    version: String,
    shapes: Vec<StepShape>,
    step_names: Vec<String>,
    kinds: Vec<StepKind>,
    steps: Vec<StepDef<X>>,
}

impl SagaOf<Blocking> {
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
        SagaBuilder::named(name.into())
    }
}

impl<X: Flavor> SagaOf<X> {
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

    /// The saga's version: the one given to [`SagaBuilder::version`], or else a fingerprint
    /// of its shape (`fp-` and 16 hex digits) computed from its step names, their kinds (step,
    /// sleep, scheduled wait, try, finally, periodic launch) and which of them compensate or
    /// handle child failures, in order. Every run records the version that created it, and
    /// only a runtime serving that version drives it (see the README's "Upgrading sagas").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The shape the topology records for this version (step names, kinds, handlers).
    pub(crate) fn shape_json(&self) -> String {
        version::shape_json(&self.shapes, &self.kinds)
    }

    pub(crate) fn shapes(&self) -> &[StepShape] {
        &self.shapes
    }
}

impl<X: Flavor> fmt::Debug for SagaOf<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("payload_type", &self.payload_type)
            .field("version", &self.version)
            .field("steps", &self.step_names)
            .finish()
    }
}

/// Builds a [`Saga`] (or, with `X = Tokio`, a `tokio::Saga`); see [`Saga::builder`].
pub struct SagaBuilder<P, X: Flavor = Blocking> {
    name: String,
    steps: Vec<StepDef<X>>,
    default_retry: RetryPolicy,
    version: Option<String>,
    /// A modifier called before any step exists (reported by `build`).
    misplaced: Option<&'static str>,
    _payload: PhantomData<fn(&P)>,
}

fn decode<P: DeserializeOwned, X: Flavor>(ctx: &StepContext<'_, X>, raw: &str) -> Decoded<P> {
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

impl<P: DeserializeOwned + 'static, X: Flavor> SagaBuilder<P, X> {
    pub(crate) fn named(name: String) -> SagaBuilder<P, X> {
        SagaBuilder {
            name,
            steps: Vec::new(),
            default_retry: RetryPolicy::default(),
            version: None,
            misplaced: None,
            _payload: PhantomData,
        }
    }

    /// Appends a step (named after its index) that does nothing but make the next step wait
    /// `duration` — a durable sleep: it survives restarts, is measured with the database
    /// clock, and ends early for a cancellation or a deadline (the run then gives up).
    pub fn sleep(self, duration: Duration) -> Self {
        self.push_sync(None, move |ctx, _| {
            ctx.delay_next(duration);
            Ok(Next::Continue)
        })
        .mark(StepKind::Sleep)
    }

    /// [`sleep`](Self::sleep) with an explicit step name.
    pub fn sleep_named(self, name: impl Into<String>, duration: Duration) -> Self {
        self.push_sync(Some(name.into()), move |ctx, _| {
            ctx.delay_next(duration);
            Ok(Next::Continue)
        })
        .mark(StepKind::Sleep)
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
        self.sleep_named(format!("{n} (sleep)"), every)
            .push_sync(Some(format!("{n} (launch next)")), move |ctx, _| {
                if runs.is_none_or(|runs| ctx.run_count() + 1 < runs) {
                    ctx.relaunch_next();
                }
                Ok(Next::Continue)
            })
            .mark(StepKind::LaunchNext)
    }

    /// Appends a built-in step that runs `f` synchronously: it only buffers (a delay, a
    /// launch), so either runtime runs it without awaiting anything.
    fn push_sync(
        self,
        name: Option<String>,
        f: impl Fn(&mut StepContext<'_, X>, &str) -> StepResult<Next> + Send + Sync + 'static,
    ) -> Self {
        self.push_def(name, X::sync_body(Box::new(f)))
    }

    /// The waiting half of a scheduled step: the next step runs no earlier than
    /// `at(payload)`.
    fn push_wait_until<A>(self, name: String, at: A) -> Self
    where
        A: Fn(&P) -> SystemTime + Send + Sync + 'static,
    {
        self.push_sync(
            Some(format!("{name} (waiting for scheduled time)")),
            move |ctx, raw| {
                let payload: P = decode(ctx, raw)?;
                ctx.next_not_before(at(&payload));
                Ok(Next::Continue)
            },
        )
        .mark(StepKind::WaitUntil)
    }

    fn push_def(mut self, name: Option<String>, body: X::Body) -> Self {
        self.steps.push(StepDef {
            name,
            kind: StepKind::Step,
            body,
            compensate: None,
            child_failures: None,
            retry: None,
        });
        self
    }

    /// Says what kind of step the step added last is (they are all plain steps at first).
    fn mark(mut self, kind: StepKind) -> Self {
        if let Some(step) = self.steps.last_mut() {
            step.kind = kind;
        }
        self
    }

    /// Gives the saga an explicit version instead of the fingerprint of its shape (see
    /// [`SagaOf::version`]): 1 to 64 ASCII letters, digits, `.`, `_` or `-`. Use it to name
    /// releases ("2", "2026-12-orders"). A version names one shape: a runtime whose saga has
    /// a shape that differs from the one already recorded for its explicit version refuses
    /// to start (give the changed saga a new version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// How the step added last is retried after transient failures (see [`RetryPolicy`]),
    /// instead of the saga's [default](Self::default_retry).
    ///
    /// ```
    /// use std::time::Duration;
    /// use structured_cooperation::{RetryPolicy, Saga, StepError, StepResult};
    ///
    /// let saga = Saga::builder("charge")
    ///     .step(|_ctx, order: &serde_json::Value| -> StepResult {
    ///         // Say the payment provider timed out: worth another try.
    ///         Err(StepError::transient(StepError::msg(format!("timeout charging {order}"))))
    ///     })
    ///     .retry(RetryPolicy::attempts(5).backoff(Duration::from_secs(1), Duration::from_secs(60)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = saga;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        if let Some(step) = self.last_step("retry") {
            step.retry = Some(policy);
        }
        self
    }

    /// How this saga's steps are retried after transient failures unless a step says
    /// otherwise with [`retry`](Self::retry). Defaults to [`RetryPolicy::default`] (three
    /// attempts); [`RetryPolicy::NEVER`] turns retries off.
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = policy;
        self
    }

    /// The step added last, for a modifier; `None` (reported by `build`) if there is none.
    fn last_step(&mut self, modifier: &'static str) -> Option<&mut StepDef<X>> {
        if self.steps.is_empty() {
            self.misplaced = Some(modifier);
        }
        self.steps.last_mut()
    }

    /// Validates the definition: the handler name must be valid, there must be at least one
    /// step, and step names must be valid and unique.
    pub fn build(self) -> Result<SagaOf<X>> {
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
                retry: step.retry.unwrap_or(self.default_retry),
            });
        }
        let kinds: Vec<StepKind> = self.steps.iter().map(|s| s.kind).collect();
        let version = match self.version {
            Some(explicit) => {
                version::check_explicit(&self.name, &explicit)?;
                explicit
            }
            None => version::fingerprint(&shapes, &kinds),
        };
        Ok(SagaOf {
            name: self.name,
            payload_type: std::any::type_name::<P>(),
            version,
            step_names: shapes.iter().map(|s| s.name.clone()).collect(),
            shapes,
            kinds,
            steps: self.steps,
        })
    }
}

impl<P, X: Flavor> fmt::Debug for SagaBuilder<P, X> {
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
    fn the_version_is_a_fingerprint_of_the_shape_unless_given() {
        let other = |_: &mut StepContext<'_>, _: &Value| -> StepResult { Err(StepError::msg("x")) };
        let version = |b: SagaBuilder<Value>| b.build().unwrap().version().to_owned();
        let base = version(
            Saga::builder("h")
                .step_named("a", noop)
                .step_named("b", noop),
        );
        // Different code in the same shape: the same version.
        assert_eq!(
            base,
            version(
                Saga::builder("h")
                    .step_named("a", other)
                    .step_named("b", noop)
            )
        );
        // Reordered, renamed, a sleep instead of a step, a compensation added: new versions.
        let reordered = version(
            Saga::builder("h")
                .step_named("b", noop)
                .step_named("a", noop),
        );
        let renamed = version(
            Saga::builder("h")
                .step_named("a", noop)
                .step_named("c", noop),
        );
        let slept = version(
            Saga::builder("h")
                .step_named("a", noop)
                .sleep_named("b", Duration::from_secs(1)),
        );
        let compensated = version(
            Saga::builder("h")
                .step_named("a", noop)
                .rollback(|_, _: &Value, _| Ok(()))
                .step_named("b", noop),
        );
        for changed in [&reordered, &renamed, &slept, &compensated] {
            assert_ne!(&base, changed);
        }
        assert!(base.starts_with("fp-"), "{base}");
        let explicit = Saga::builder("h").version("2").step(noop).build().unwrap();
        assert_eq!(explicit.version(), "2");
        let err = Saga::builder("h")
            .version("no spaces")
            .step(noop)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
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
