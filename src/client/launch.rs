//! Launching roots: one at a time (on a pooled connection whose launch statement is prepared
//! once, or on the caller's transaction) or many in one transaction. What a batch of
//! launches is, and what the statement's answer means for it, is shared by both editions.

use postgres::GenericClient;
use r2d2::PooledConnection;
use serde::Serialize;
use uuid::Uuid;

use super::{CLIENT_WORKER, Client};
use crate::error::{Error, Result};
use crate::ids::RootId;
use crate::options::EmitOptions;
use crate::pool::ConnectionManager;
use crate::proto::{Emit, Emitted, GiveUpCheck, KeyedRoot, StmtCache};
use crate::runtime::exec;
use crate::saga::Emission;
use crate::typed::AsTopic;

impl Client {
    /// Launches `payload` on `topic` (a [`Topic`](crate::Topic), which fixes the payload type,
    /// or a name) on the global scope, in its own transaction, and returns the new root. Every
    /// handler registered for the topic gets a run.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let root = client.launch("orders", &serde_json::json!({ "id": 7, "amount": 42 }))?;
    /// println!("launched {root}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn launch<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_with(topic, payload, EmitOptions::new())
    }

    /// Like [`launch`](Self::launch), with deadlines (inherited by every run in the tree) and
    /// a cooperation context for the new root.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::{Deadlines, EmitOptions};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let options = EmitOptions::new()
    ///     .deadlines(Deadlines::new().happy_path_within(Duration::from_secs(60), "checkout"));
    /// let root = client.launch_with("orders", &serde_json::json!({ "id": 7 }), options)?;
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub fn launch_with<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        launches.add(topic.topic_name(), payload, &options.into())?;
        let mut conn = self.conn()?;
        let mut cache = take_cache(&mut conn);
        let written = self.write(&mut *conn, Some(&mut cache), Alone::Yes, &launches);
        put_cache(&mut conn, cache, written.is_ok());
        Ok(written?[0])
    }

    /// Like [`launch`](Self::launch), but on the caller's connection or transaction, so the
    /// launch commits (and handlers are notified) together with the caller's own writes.
    ///
    /// ```no_run
    /// # use structured_cooperation::postgres::{self, Transaction};
    /// # fn save_order(_: &mut Transaction<'_>, _: i64) -> Result<(), postgres::Error> { Ok(()) }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let mut conn = client.pool().get()?;
    /// let mut tx = conn.transaction()?;
    /// save_order(&mut tx, 7)?; // the application's own write
    /// let root = client.launch_in(&mut tx, "orders", &serde_json::json!({ "id": 7 }))?;
    /// tx.commit()?; // the order row and its saga appear together, or neither does
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub fn launch_in<C: GenericClient, P: Serialize + ?Sized>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_in_with(client, topic, payload, EmitOptions::new())
    }

    /// [`launch_in`](Self::launch_in) with deadlines and context.
    ///
    /// ```no_run
    /// use structured_cooperation::{CooperationContext, EmitOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let mut context = CooperationContext::new();
    /// context.set_raw("tenant", r#""acme""#)?;
    /// let mut conn = client.pool().get()?;
    /// let mut tx = conn.transaction()?;
    /// let root = client.launch_in_with(&mut tx, "orders", &7, EmitOptions::new().context(context))?;
    /// tx.commit()?;
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub fn launch_in_with<C: GenericClient, P: Serialize + ?Sized>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        launches.add(topic.topic_name(), payload, &options.into())?;
        let roots = self.write(client, None, Alone::No, &launches)?;
        Ok(roots[0])
    }

    /// Launches one root per payload on `topic`, in one transaction of their own (all or
    /// none), and returns the roots in the payloads' order. Much faster than launching one at
    /// a time: the messages and runs of up to 2,000 roots are written by one
    /// statement, and the whole batch commits once.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let orders: Vec<_> = (0..1000).map(|id| serde_json::json!({ "id": id })).collect();
    /// let roots = client.launch_many("orders", &orders)?;
    /// assert_eq!(roots.len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn launch_many<'p, P: Serialize + 'p>(
        &self,
        topic: impl AsTopic<P>,
        payloads: impl IntoIterator<Item = &'p P>,
    ) -> Result<Vec<RootId>> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        let (topic, options) = (topic.topic_name(), EmitOptions::new());
        for payload in payloads {
            launches.add(topic, payload, &options)?;
        }
        if launches.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let mut cache = take_cache(&mut conn);
        let written = conn.transaction().map_err(Error::from).and_then(|mut tx| {
            let roots = self.write(&mut tx, Some(&mut cache), Alone::No, &launches)?;
            tx.commit()?;
            Ok(roots)
        });
        put_cache(&mut conn, cache, written.is_ok());
        written
    }

    /// Like [`launch_many`](Self::launch_many), on the caller's connection or transaction, so
    /// the launches commit together with the caller's own writes.
    pub fn launch_many_in<'p, C: GenericClient, P: Serialize + 'p>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payloads: impl IntoIterator<Item = &'p P>,
    ) -> Result<Vec<RootId>> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        let (topic, options) = (topic.topic_name(), EmitOptions::new());
        for payload in payloads {
            launches.add(topic, payload, &options)?;
        }
        self.write(client, None, Alone::No, &launches)
    }

    /// Writes `launches` on `client`, prepared through `cache` if given, and returns their
    /// roots (for a keyed launch whose key was taken, the root that holds the key).
    fn write(
        &self,
        client: &mut impl GenericClient,
        mut cache: Option<&mut StmtCache>,
        alone: Alone,
        launches: &Launches,
    ) -> Result<Vec<RootId>> {
        let mut roots = Vec::with_capacity(launches.len());
        for chunk in launches.chunks() {
            let emit = chunk.emit();
            let emitted = match (alone, cache.as_deref_mut()) {
                (Alone::Yes, Some(cache)) => exec::emit(client, self.sql(), cache, &emit, false)?,
                (_, cache) => exec::run(client, self.sql(), cache, &emit)?,
            };
            for root in chunk.roots(&emitted)? {
                roots.push(match root {
                    Launched::Root(root) => root,
                    // Another launch holds the key: its root is the answer. (A new statement,
                    // so it sees a launch that committed while this one waited for it.)
                    Launched::Keyed(key) => {
                        let found = exec::run(client, self.sql(), None, &KeyedRoot { key })?;
                        found.ok_or_else(|| key_vanished(key))?
                    }
                });
            }
        }
        Ok(roots)
    }
}

/// The statements prepared on a pooled connection for launches, kept with the connection
/// (in its r2d2 extensions) for as long as the pool keeps it.
/// Whether a launch is written in a transaction of its own, on a connection outside any
/// transaction: then it travels as one simple query (see `exec::emit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alone {
    Yes,
    No,
}

fn take_cache(conn: &mut PooledConnection<ConnectionManager>) -> StmtCache {
    PooledConnection::extensions_mut(conn)
        .remove::<StmtCache>()
        .unwrap_or_default()
}

/// Gives the cache back to its connection; after an error its statements are forgotten
/// (they may be what failed, e.g. after a migration changed a table).
fn put_cache(conn: &mut PooledConnection<ConnectionManager>, mut cache: StmtCache, ok: bool) {
    if !ok {
        cache.clear();
    }
    PooledConnection::extensions_mut(conn).insert(cache);
}

/// Launches to write together, validated and encoded (both editions).
#[derive(Debug)]
pub(crate) struct Launches {
    emissions: Vec<Emission>,
    max_json_bytes: usize,
    strict: bool,
}

/// What became of one launch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Launched<'a> {
    Root(RootId),
    /// Its idempotency key was taken: the root holding it is to be looked up.
    Keyed(&'a str),
}

impl Launches {
    /// The most launches one statement writes; bigger batches take several, in the same
    /// transaction.
    pub(crate) const CHUNK: usize = 2_000;

    pub(crate) fn new(max_json_bytes: usize, strict: bool) -> Launches {
        Launches {
            emissions: Vec::new(),
            max_json_bytes,
            strict,
        }
    }

    /// Adds a launch, validating and encoding it now (so nothing is written if one is bad).
    pub(crate) fn add<P: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        payload: &P,
        options: &EmitOptions,
    ) -> Result<()> {
        let emission = Emission::new(topic, payload, options, self.max_json_bytes)?;
        self.emissions.push(emission);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.emissions.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.emissions.is_empty()
    }

    /// The batch in pieces of at most [`CHUNK`](Self::CHUNK).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = Chunk<'_>> {
        self.emissions.chunks(Self::CHUNK).map(|emissions| Chunk {
            emissions,
            strict: self.strict,
        })
    }
}

/// Launches written by one statement.
#[derive(Debug)]
pub(crate) struct Chunk<'a> {
    emissions: &'a [Emission],
    strict: bool,
}

impl<'a> Chunk<'a> {
    pub(crate) fn emit(&self) -> Emit<'static> {
        Emit::new(
            None,
            self.emissions.to_vec(),
            CLIENT_WORKER,
            &[],
            GiveUpCheck::Skip,
            self.strict,
        )
    }

    /// What the statement's answer means for each launch, in order: refused if strict and
    /// nobody handles a topic (nothing was written), a warning if nobody does and they were
    /// written anyway.
    pub(crate) fn roots(&self, emitted: &Emitted) -> Result<Vec<Launched<'a>>> {
        if emitted.refused {
            let topic = emitted.unhandled.first().cloned().unwrap_or_default();
            return Err(Error::Unhandled { topic });
        }
        let mut warned: Vec<&str> = Vec::new();
        for topic in &emitted.unhandled {
            if !warned.contains(&topic.as_str()) {
                warned.push(topic);
                let n = emitted.unhandled.iter().filter(|t| *t == topic).count();
                log::warn!(
                    target: "structured_cooperation::unhandled",
                    topic = topic.as_str(), roots = n;
                    "{n} root(s) launched on topic {topic:?}, which no handler is registered \
                     for: nothing will run for them"
                );
            }
        }
        Ok(self
            .emissions
            .iter()
            .map(|e| match &e.key {
                Some(key) if !written(emitted, e.id) => Launched::Keyed(key),
                _ => Launched::Root(RootId::from_uuid(e.id)),
            })
            .collect())
    }
}

fn written(emitted: &Emitted, id: Uuid) -> bool {
    emitted.written.contains(&id)
}

/// A keyed launch was refused as a duplicate, yet no message holds the key (it was deleted
/// in between).
pub(crate) fn key_vanished(key: &str) -> Error {
    Error::UnexpectedData(format!(
        "a launch with idempotency key {key:?} was refused as a duplicate, but no launch holds \
         the key any more"
    ))
}

/// What a launch of a chain's occurrence wrote, as its caller sees it (both editions):
/// refused if strict and nobody handles the topic; a warning if nobody does and it was
/// written anyway.
pub(crate) fn check_launch(emitted: &Emitted, topic: &str, id: RootId) -> Result<()> {
    if emitted.refused {
        return Err(Error::Unhandled {
            topic: topic.to_owned(),
        });
    }
    if !emitted.unhandled.is_empty() {
        log::warn!(
            target: "structured_cooperation::unhandled",
            topic = topic, root:% = id;
            "root {id} launched on topic {topic:?}, which no handler is registered for: \
             nothing will run for it"
        );
    }
    Ok(())
}
