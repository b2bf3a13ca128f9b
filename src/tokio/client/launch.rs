//! Launching roots (the tokio edition of `client/launch.rs`): one at a time, with the launch
//! statement prepared once per pooled connection, or many in one transaction.

use deadpool_postgres::Object;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Statement};

use super::Client;
use crate::client::{Launched, Launches, key_vanished};
use crate::error::Result;
use crate::ids::RootId;
use crate::options::EmitOptions;
use crate::proto::{Emit, Emitted, KeyedRoot, Statement as _};
use crate::tokio::exec;
use crate::typed::AsTopic;

impl Client {
    /// Like [`crate::Client::launch`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let root = client.launch("orders", &serde_json::json!({ "id": 7 })).await?;
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_with(topic, payload, EmitOptions::new()).await
    }

    /// Like [`crate::Client::launch_with`], but async.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::{Deadlines, EmitOptions};
    ///
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let options = EmitOptions::new()
    ///     .deadlines(Deadlines::new().happy_path_within(Duration::from_secs(60), "checkout"));
    /// let root = client.launch_with("orders", &7, options).await?;
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch_with<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        launches.add(topic.topic_name(), payload, &options.into())?;
        let conn = self.conn().await?;
        let roots = self
            .write(&**conn, Some(Cached::Alone(&conn)), &launches)
            .await?;
        Ok(roots[0])
    }

    /// Like [`crate::Client::launch_in`], but async, on the caller's connection or
    /// transaction.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut conn = client.pool().get().await?;
    /// let tx = conn.transaction().await?;
    /// let root = client.launch_in(&*tx, "orders", &7).await?;
    /// tx.commit().await?; // the launch commits with the caller's own writes
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch_in<C: GenericClient + Sync, P: Serialize + ?Sized>(
        &self,
        client: &C,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_in_with(client, topic, payload, EmitOptions::new())
            .await
    }

    /// Like [`crate::Client::launch_in_with`], but async.
    ///
    /// ```no_run
    /// use structured_cooperation::EmitOptions;
    ///
    /// # async fn example(client: structured_cooperation::tokio::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = client.pool().get().await?;
    /// let root = client.launch_in_with(&**conn, "orders", &7, EmitOptions::new()).await?;
    /// # let _ = root;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch_in_with<C: GenericClient + Sync, P: Serialize + ?Sized>(
        &self,
        client: &C,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        launches.add(topic.topic_name(), payload, &options.into())?;
        let roots = self.write(client, None, &launches).await?;
        Ok(roots[0])
    }

    /// Like [`crate::Client::launch_many`], but async: one root per payload on `topic`, in
    /// one transaction of their own.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let orders: Vec<_> = (0..1000).map(|id| serde_json::json!({ "id": id })).collect();
    /// let roots = client.launch_many("orders", &orders).await?;
    /// assert_eq!(roots.len(), 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch_many<'p, P: Serialize + 'p>(
        &self,
        topic: impl AsTopic<P>,
        payloads: impl IntoIterator<Item = &'p P>,
    ) -> Result<Vec<RootId>> {
        let launches = self.batch(topic, payloads)?;
        if launches.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let roots = self.write(&*tx, Some(Cached::InTx(&tx)), &launches).await?;
        tx.commit().await?;
        Ok(roots)
    }

    /// Like [`crate::Client::launch_many_in`], but async.
    pub async fn launch_many_in<'p, C: GenericClient + Sync, P: Serialize + 'p>(
        &self,
        client: &C,
        topic: impl AsTopic<P>,
        payloads: impl IntoIterator<Item = &'p P>,
    ) -> Result<Vec<RootId>> {
        let launches = self.batch(topic, payloads)?;
        self.write(client, None, &launches).await
    }

    fn batch<'p, P: Serialize + 'p>(
        &self,
        topic: impl AsTopic<P>,
        payloads: impl IntoIterator<Item = &'p P>,
    ) -> Result<Launches> {
        let mut launches = Launches::new(self.max_json_bytes(), self.strict_topics());
        let (topic, options) = (topic.topic_name(), EmitOptions::new());
        for payload in payloads {
            launches.add(topic, payload, &options)?;
        }
        Ok(launches)
    }

    /// Writes `launches` on `client`, with the launch statement prepared once per pooled
    /// connection (deadpool's statement cache) when `cached` is that connection.
    async fn write<C: GenericClient + Sync>(
        &self,
        client: &C,
        cached: Option<Cached<'_>>,
        launches: &Launches,
    ) -> Result<Vec<RootId>> {
        let mut roots = Vec::with_capacity(launches.len());
        for chunk in launches.chunks() {
            let emit = chunk.emit();
            let alone = match cached {
                Some(Cached::Alone(conn)) => self.emit_alone(conn, &emit).await?,
                _ => None,
            };
            let emitted = match (alone, cached) {
                (Some(emitted), _) => emitted,
                (None, Some(Cached::Alone(conn))) => {
                    let statement = conn.prepared(emit.text(self.sql())).await?;
                    emit.decode(client.query(&statement, &emit.params()).await?)?
                }
                (None, Some(Cached::InTx(tx))) => {
                    let statement = tx.prepared(emit.text(self.sql())).await?;
                    emit.decode(client.query(&statement, &emit.params()).await?)?
                }
                (None, None) => exec::run(client, self.sql(), None, &emit).await?,
            };
            for root in chunk.roots(&emitted)? {
                roots.push(match root {
                    Launched::Root(root) => root,
                    // Another launch holds the key (see `crate::Client::launch_in_with`).
                    Launched::Keyed(key) => {
                        let found = exec::run(client, self.sql(), None, &KeyedRoot { key }).await?;
                        found.ok_or_else(|| key_vanished(key))?
                    }
                });
            }
        }
        Ok(roots)
    }
}

/// A connection that keeps prepared statements (deadpool's, or one of its transactions).
/// Where a launch's statement may be prepared: a pooled connection outside any transaction
/// (then a single launch travels as one simple query, see [`Client::emit_alone`]), or a
/// transaction of the client's own.
#[derive(Clone, Copy)]
enum Cached<'a> {
    Alone(&'a Object),
    InTx(&'a deadpool_postgres::Transaction<'a>),
}

impl Client {
    /// A launch in a transaction of its own as one simple query with generic plans (as the
    /// blocking client's, see `Emit::simple_text`). A deadpool connection keeps no memory of
    /// what was prepared on it with SQL `PREPARE`, so the statement has one name per schema
    /// and is prepared the first time its `EXECUTE` finds it missing (nothing was written
    /// then: the query's implicit transaction failed as a whole). `None` when a parameter
    /// cannot travel in query text.
    async fn emit_alone(&self, conn: &Object, emit: &Emit<'_>) -> Result<Option<Emitted>> {
        let name = format!("sc_{}_{}", emit.simple_kind().kind(), self.schema());
        let Some(text) = emit.simple_text(self.sql(), &name, true, false) else {
            return Ok(None);
        };
        let messages = match conn.simple_query(&text).await {
            Ok(messages) => messages,
            Err(e) if e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => {
                let Some(text) = emit.simple_text(self.sql(), &name, false, false) else {
                    return Ok(None);
                };
                conn.simple_query(&text).await?
            }
            Err(e) => return Err(e.into()),
        };
        emit.decode_simple(messages).map(Some)
    }
}

trait Prepares {
    fn prepared<'a>(
        &'a self,
        text: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Statement, tokio_postgres::Error>>
                + Send
                + 'a,
        >,
    >;
}

impl Prepares for Object {
    fn prepared<'a>(
        &'a self,
        text: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Statement, tokio_postgres::Error>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(self.prepare_cached(text))
    }
}

impl Prepares for deadpool_postgres::Transaction<'_> {
    fn prepared<'a>(
        &'a self,
        text: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Statement, tokio_postgres::Error>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(self.prepare_cached(text))
    }
}
