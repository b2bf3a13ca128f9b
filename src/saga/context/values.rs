//! Return values: what a run stores for its parent, and how the parent reads them. Encoding,
//! decoding and requests are written once for both runtimes; the blocking edition's reads
//! and writes are here too (the tokio edition's are in `tokio.rs`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Blocking, Flavor, StepContext};
use crate::error::{Error, Result};
use crate::ids::MessageId;
use crate::options::EmitOptions;
use crate::proto::{ChildValueRow, ChildValues, StoreValue};
use crate::typed::{AsReturnName, AsTopic, ChildValue, Request};
use crate::validate;

/// How a request is written: the same JSON as [`Request`], without owning the input.
#[derive(Serialize)]
struct RequestRef<'a, I: ?Sized> {
    #[serde(rename = "returnTo")]
    return_to: &'a str,
    input: &'a I,
}

impl<X: Flavor> StepContext<'_, X> {
    /// Asks an [`Action`](crate::Action) for a value: emits `input` on the action's `topic` as
    /// a child, with the answer to be returned under `into`. The next step reads it with
    /// `child_value` or `child_values`.
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

    /// A value to store, checked and encoded: its name, and its JSON.
    pub(super) fn encode_value<'n, T: Serialize + ?Sized>(
        &self,
        name: &'n str,
        value: &T,
    ) -> Result<(&'n str, String)> {
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
        Ok((name, json))
    }

    /// The statement that stores an encoded value.
    pub(super) fn store_statement<'a>(&self, name: &'a str, json: &'a str) -> StoreValue<'a> {
        StoreValue::new(self.info.run_id, name, json)
    }

    /// `stored` is what the store statement said: false means the name was taken.
    pub(super) fn stored(&self, stored: bool, name: &str) -> Result<()> {
        if stored {
            return Ok(());
        }
        Err(Error::ReturnValueExists {
            run: self.info.run_id,
            handler: self.info.handler.to_string(),
            name: name.to_owned(),
        })
    }

    /// The statement that reads the children's values of a name.
    pub(super) fn values_statement<'a>(&self, name: &'a str) -> ChildValues<'a> {
        ChildValues::new(self.info.run_id, name)
    }
}

/// Decodes the children's values of `name` into `T`, naming the value, handler and run of one
/// that does not deserialize.
pub(super) fn decode_values<T: DeserializeOwned>(
    name: &str,
    rows: Vec<ChildValueRow>,
) -> Result<Vec<ChildValue<T>>> {
    rows.into_iter()
        .map(|row| {
            let value = serde_json::from_str(&row.json).map_err(|source| Error::ReturnValue {
                name: name.to_owned(),
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

/// The one value of `handler` among `values`, if there is one.
pub(super) fn one_value<T>(
    name: &str,
    handler: &str,
    values: Vec<ChildValue<T>>,
) -> Result<Option<T>> {
    let mut values: Vec<ChildValue<T>> = values
        .into_iter()
        .filter(|v| v.handler == handler)
        .collect();
    match values.len() {
        0 => Ok(None),
        1 => Ok(values.pop().map(|v| v.value)),
        count => Err(Error::AmbiguousReturnValue {
            name: name.to_owned(),
            handler: handler.to_owned(),
            count,
        }),
    }
}

impl StepContext<'_, Blocking> {
    /// Stores `value` under `name` for this run's parent to read (see
    /// [`child_values`](Self::child_values)). It is written with the step: if the step fails,
    /// it is gone with it. A run stores at most one value per name; a second store is an error
    /// ([`Error::ReturnValueExists`]) that leaves the transaction usable.
    pub fn store_value<T: Serialize + ?Sized>(
        &mut self,
        name: impl AsReturnName<T>,
        value: &T,
    ) -> Result<()> {
        let (name, json) = self.encode_value(name.return_name(), value)?;
        let stored = self.run(&self.store_statement(name, &json))?;
        self.stored(stored, name)
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
        let name = name.return_name();
        let rows = self.run(&self.values_statement(name))?;
        decode_values(name, rows)
    }

    /// The value named `name` stored by this run's child of handler `handler`, if it stored
    /// one. An error if several children of that handler did
    /// ([`Error::AmbiguousReturnValue`]): read those with [`child_values`](Self::child_values).
    pub fn child_value<T: DeserializeOwned>(
        &mut self,
        name: impl AsReturnName<T>,
        handler: &str,
    ) -> Result<Option<T>> {
        let name = name.return_name();
        let values = self.child_values(name)?;
        one_value(name, handler, values)
    }

    /// Answers `request` (in an [`Action`](crate::Action)'s step): stores `output` where the
    /// caller asked for it.
    pub fn respond<I, O: Serialize>(&mut self, request: &Request<I, O>, output: &O) -> Result<()> {
        self.store_value(request.return_to.as_str(), output)
    }
}
