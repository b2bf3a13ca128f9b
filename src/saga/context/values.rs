//! Return values: what a run stores for its parent, and how the parent reads them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StepContext;
use crate::error::{Error, Result};
use crate::ids::MessageId;
use crate::options::EmitOptions;
use crate::proto::{ChildValues, StoreValue};
use crate::typed::{AsReturnName, AsTopic, ChildValue, Request};
use crate::validate;

/// How a request is written: the same JSON as [`Request`], without owning the input.
#[derive(Serialize)]
struct RequestRef<'a, I: ?Sized> {
    #[serde(rename = "returnTo")]
    return_to: &'a str,
    input: &'a I,
}

impl StepContext<'_> {
    /// Stores `value` under `name` for this run's parent to read (see
    /// [`child_values`](Self::child_values)). It is written with the step: if the step fails,
    /// it is gone with it. A run stores at most one value per name; a second store is an error
    /// ([`Error::ReturnValueExists`]) that leaves the transaction usable.
    pub fn store_value<T: Serialize + ?Sized>(
        &mut self,
        name: impl AsReturnName<T>,
        value: &T,
    ) -> Result<()> {
        let name = name.return_name();
        validate::name("return value", name)?;
        let json = serde_json::to_string(value).map_err(|source| Error::Encode {
            topic: format!("return value {name:?}"),
            source,
        })?;
        validate::size(
            || format!("the return value {name:?}"),
            &json,
            self.engine.max_json_bytes,
        )?;
        let run = self.info.run_id;
        if !self.run(&StoreValue::new(run, name, &json))? {
            return Err(Error::ReturnValueExists {
                run,
                handler: self.info.handler.to_string(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// The values named `name` that this run's direct children (of any earlier step) stored,
    /// one per child run, oldest first. When a step runs, the children of the previous step
    /// have all finished, so their values are there.
    ///
    /// Values stay readable after the child that stored them rolled back (its compensations
    /// may have undone what the value describes): check [`ChildValue::status`]. A child whose
    /// storing step failed stored nothing. A value that does not deserialize into `T` is an
    /// error naming the value, the handler and the run ([`Error::ReturnValue`]).
    pub fn child_values<T: DeserializeOwned>(
        &mut self,
        name: impl AsReturnName<T>,
    ) -> Result<Vec<ChildValue<T>>> {
        let name = name.return_name().to_owned();
        let rows = self.run(&ChildValues::new(self.info.run_id, &name))?;
        rows.into_iter()
            .map(|row| {
                let value =
                    serde_json::from_str(&row.json).map_err(|source| Error::ReturnValue {
                        name: name.clone(),
                        handler: row.handler.clone(),
                        run: row.run,
                        expected: std::any::type_name::<T>(),
                        source,
                    })?;
                Ok(ChildValue {
                    run: row.run,
                    status: row.status,
                    handler: row.handler,
                    value,
                })
            })
            .collect()
    }

    /// The value named `name` stored by this run's child of handler `handler`, if it stored
    /// one. An error if several children of that handler did
    /// ([`Error::AmbiguousReturnValue`]): read those with [`child_values`](Self::child_values).
    pub fn child_value<T: DeserializeOwned>(
        &mut self,
        name: impl AsReturnName<T>,
        handler: &str,
    ) -> Result<Option<T>> {
        let name = name.return_name().to_owned();
        let mut values: Vec<ChildValue<T>> = self
            .child_values(name.as_str())?
            .into_iter()
            .filter(|v| v.handler == handler)
            .collect();
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop().map(|v| v.value)),
            count => Err(Error::AmbiguousReturnValue {
                name,
                handler: handler.to_owned(),
                count,
            }),
        }
    }

    /// Asks an [`Action`](crate::Action) for a value: emits `input` on the action's `topic` as
    /// a child, with the answer to be returned under `into`. The next step reads it with
    /// [`child_value`](Self::child_value) or [`child_values`](Self::child_values).
    pub fn request<I: Serialize, O>(
        &mut self,
        topic: impl AsTopic<Request<I, O>>,
        into: impl AsReturnName<O>,
        input: &I,
    ) -> Result<MessageId> {
        let request = RequestRef {
            return_to: into.return_name(),
            input,
        };
        self.push(topic.topic_name(), &request, true, &EmitOptions::new())
            .map(MessageId::from_uuid)
    }

    /// Answers `request` (in an [`Action`](crate::Action)'s step): stores `output` where the
    /// caller asked for it.
    pub fn respond<I, O: Serialize>(&mut self, request: &Request<I, O>, output: &O) -> Result<()> {
        self.store_value(request.return_to.as_str(), output)
    }
}
