//! The cooperation context: named entries that travel with a run and down its tree.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Names an entry of the [`CooperationContext`] and fixes the type of its value.
///
/// ```
/// use structured_cooperation::{ContextKey, CooperationContext};
///
/// /// The customer's tenant, set by the gateway and read by every service below it.
/// struct Tenant;
/// impl ContextKey for Tenant {
///     const NAME: &'static str = "Tenant";
///     type Value = String;
/// }
///
/// let mut context = CooperationContext::new();
/// context.set::<Tenant>(&"acme".to_owned()).unwrap();
/// assert_eq!(context.get::<Tenant>().unwrap().as_deref(), Some("acme"));
/// ```
pub trait ContextKey {
    /// The entry's name in the stored JSON object. Services that share an entry agree on it.
    const NAME: &'static str;
    /// The entry's value, (de)serialized with serde.
    type Value: Serialize + DeserializeOwned;
}

/// A map of named JSON entries that travels with a run: a step reads and changes it, later
/// steps (and the run's rollback) see the changes, and children receive a copy when they are
/// emitted. Children's changes never flow back up; return values do that.
///
/// Entries are typed through a [`ContextKey`]; entries nobody in this process knows are kept
/// as the exact JSON text they arrived as and passed on unchanged, so a service never destroys
/// another service's context.
///
/// Serialized as a JSON object with the entries in ascending name order. **Merging** (`a` then
/// `b`, see [`merge`](Self::merge)) keeps the entries present on one side only, and for a name
/// present on both, `b`'s entry wins.
#[derive(Clone, Default)]
pub struct CooperationContext {
    entries: BTreeMap<String, Box<RawValue>>,
}

impl CooperationContext {
    /// An empty context.
    pub fn new() -> CooperationContext {
        CooperationContext::default()
    }

    /// A context holding one entry.
    pub fn with<K: ContextKey>(value: &K::Value) -> Result<CooperationContext> {
        let mut context = CooperationContext::new();
        context.set::<K>(value)?;
        Ok(context)
    }

    /// Whether the context has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries the context has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries' names, in ascending order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The value of entry `K`, or `None` if there is none (or it is JSON `null`). An entry that
    /// does not deserialize into `K::Value` is an error naming the entry; the context keeps it.
    pub fn get<K: ContextKey>(&self) -> Result<Option<K::Value>> {
        let Some(raw) = self.entries.get(K::NAME) else {
            return Ok(None);
        };
        if raw.get() == "null" {
            return Ok(None);
        }
        serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|source| Error::ContextEntry {
                key: K::NAME.to_owned(),
                expected: std::any::type_name::<K::Value>(),
                source,
            })
    }

    /// Whether there is an entry called `name` (of any type).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Sets entry `K`, replacing any earlier value.
    pub fn set<K: ContextKey>(&mut self, value: &K::Value) -> Result<()> {
        let raw =
            serde_json::value::to_raw_value(value).map_err(|source| Error::ContextEncode {
                key: K::NAME.to_owned(),
                source,
            })?;
        self.entries.insert(K::NAME.to_owned(), raw);
        Ok(())
    }

    /// Removes entry `K` and returns whether it was there.
    pub fn remove<K: ContextKey>(&mut self) -> bool {
        self.remove_named(K::NAME)
    }

    /// Removes the entry called `name` and returns whether it was there.
    pub fn remove_named(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// The JSON text of the entry called `name`, exactly as it was received or set.
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|raw| raw.get())
    }

    /// Sets the entry called `name` to the JSON text `json`, kept byte for byte. Fails if
    /// `json` is not valid JSON.
    pub fn set_raw(&mut self, name: &str, json: &str) -> Result<()> {
        let raw = RawValue::from_string(json.to_owned()).map_err(|source| Error::ContextEntry {
            key: name.to_owned(),
            expected: "json",
            source,
        })?;
        self.entries.insert(name.to_owned(), raw);
        Ok(())
    }

    /// Adds `other`'s entries to this context; for a name present in both, `other`'s entry
    /// wins.
    pub fn merge(&mut self, other: &CooperationContext) {
        for (name, raw) in &other.entries {
            self.entries.insert(name.clone(), raw.clone());
        }
    }

    /// This context with `other` merged in (see [`merge`](Self::merge)).
    pub fn merged(mut self, other: &CooperationContext) -> CooperationContext {
        self.merge(other);
        self
    }

    /// The context as a JSON object (`{}` when empty), entries in ascending name order and
    /// every entry's JSON exactly as received or set.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(
            2 + self
                .entries
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        out.push('{');
        for (i, (name, raw)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A string always serializes.
            out.push_str(&serde_json::to_string(name).unwrap_or_default());
            out.push(':');
            out.push_str(raw.get());
        }
        out.push('}');
        out
    }

    /// Parses a context from a JSON object (as written by [`to_json`](Self::to_json)). Each
    /// entry's JSON text is kept byte for byte.
    pub fn from_json(json: &str) -> Result<CooperationContext> {
        let entries: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(json).map_err(|source| Error::ContextEntry {
                key: "(the whole context)".to_owned(),
                expected: "a json object",
                source,
            })?;
        Ok(CooperationContext { entries })
    }

    /// For storage: `None` when empty (stored as SQL `NULL`).
    pub(crate) fn to_stored(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.to_json())
    }

    /// From storage: `NULL` is the empty context.
    pub(crate) fn from_stored(json: Option<&str>) -> Result<CooperationContext> {
        json.map_or_else(
            || Ok(CooperationContext::new()),
            CooperationContext::from_json,
        )
    }
}

impl PartialEq for CooperationContext {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((a, x), (b, y))| a == b && x.get() == y.get())
    }
}

impl Eq for CooperationContext {}

impl fmt::Debug for CooperationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl fmt::Display for CooperationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
