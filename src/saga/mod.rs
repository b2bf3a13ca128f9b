//! Saga definitions: a named handler with ordered steps.

mod context;

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::core::Next;
use crate::error::{Error, Result};
use crate::failure::{StepError, StepResult};
use crate::validate;

pub use context::StepContext;
pub(crate) use context::{Emission, SAVEPOINT, SavepointState, StepInfo, UserStatements};

/// A type-erased step body: decodes the payload and runs the user's closure.
type StepFn = Box<dyn Fn(&mut StepContext<'_>, &str) -> StepResult<Next> + Send + Sync>;

/// A handler: a name and an ordered list of steps, each run in its own transaction.
///
/// Build one with [`Saga::builder`], then subscribe it to a topic with
/// [`RuntimeBuilder::subscribe`](crate::RuntimeBuilder::subscribe).
pub struct Saga {
    name: String,
    payload_type: &'static str,
    step_names: Vec<String>,
    steps: Vec<StepFn>,
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
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(saga.step_names(), ["0", "ship"]);
    /// ```
    pub fn builder<P: DeserializeOwned + 'static>(name: impl Into<String>) -> SagaBuilder<P> {
        SagaBuilder {
            name: name.into(),
            steps: Vec::new(),
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

    pub(crate) fn run_step(
        &self,
        index: usize,
        ctx: &mut StepContext<'_>,
        payload: &str,
    ) -> StepResult<Next> {
        (self.steps[index])(ctx, payload)
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
    steps: Vec<(Option<String>, StepFn)>,
    _payload: PhantomData<fn(&P)>,
}

impl<P: DeserializeOwned + 'static> SagaBuilder<P> {
    /// Appends a step named after its index (`"0"`, `"1"`, ...).
    ///
    /// The closure gets the [`StepContext`] (the open transaction, `emit`, ...) and the decoded
    /// payload. Returning `Ok(())` continues with the next step; returning a [`Next`] chooses.
    /// Returning an error, or panicking, fails the run: the step's transaction is discarded
    /// and the failure is recorded.
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
        let erased: StepFn = Box::new(move |ctx, raw| {
            let payload: P = serde_json::from_str(raw).map_err(|e| {
                StepError::with_kind(
                    "structured_cooperation::PayloadMismatch",
                    format!(
                        "the payload of message {} on topic {:?} does not deserialize into {}: {e}",
                        ctx.message_id(),
                        ctx.topic(),
                        std::any::type_name::<P>()
                    ),
                )
            })?;
            body(ctx, &payload).map(Into::into)
        });
        self.steps.push((name, erased));
        self
    }

    /// Validates the definition: the handler name must be valid, there must be at least one
    /// step, and step names must be valid and unique.
    pub fn build(self) -> Result<Saga> {
        validate::name("handler", &self.name)?;
        let invalid = |reason: String| Error::InvalidSaga {
            saga: self.name.clone(),
            reason,
        };
        if self.steps.is_empty() {
            return Err(invalid("a saga needs at least one step".to_owned()));
        }
        let mut seen = HashSet::new();
        let mut step_names = Vec::with_capacity(self.steps.len());
        for (index, (name, _)) in self.steps.iter().enumerate() {
            let name = name.clone().unwrap_or_else(|| index.to_string());
            validate::name("step", &name)?;
            if !seen.insert(name.clone()) {
                return Err(invalid(format!(
                    "step name {name:?} is used twice (unnamed steps are named after their index)"
                )));
            }
            step_names.push(name);
        }
        Ok(Saga {
            name: self.name,
            payload_type: std::any::type_name::<P>(),
            step_names,
            steps: self.steps.into_iter().map(|(_, f)| f).collect(),
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
