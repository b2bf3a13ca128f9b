//! Talking to the engine without running handlers: launching, inspecting and waiting here;
//! operators' requests (rollback, cancel, out-of-band completion) in `client/operate.rs`.

pub(crate) mod chains;
mod launch;
mod list;
mod operate;

#[cfg_attr(not(feature = "tokio"), allow(unused_imports))]
pub(crate) use launch::{Launched, Launches, check_launch, key_vanished};

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ids::{MessageId, RootId};
use crate::inspect::{HistoryEvent, Message, RootRun, RunInfo, TreeOutcome, TroubledRun};
use crate::migrate;
pub(crate) use crate::pool::build_pool;
use crate::pool::{self, ConnectionManager, Pool};
use crate::proto::{self, Sql};
use crate::runtime::exec;
use crate::validate;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "scoop";

/// Who wrote history entries that come from a [`Client`] rather than a runtime.
pub(crate) const CLIENT_WORKER: &str = "client";

/// A handle for launching roots and reading their state. Cheap to clone.
///
/// Every [`Runtime`](crate::Runtime) has one ([`Runtime::client`](crate::Runtime::client));
/// processes that only launch or inspect can build their own with [`Client::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::Client;
///
/// # fn main() -> structured_cooperation::Result<()> {
/// let client = Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
/// let root = client.launch("orders", &serde_json::json!({ "id": 7 }))?;
/// // Some runtime, in this process or another, serves "orders".
/// let outcome = client.wait_for(root, Duration::from_secs(30))?;
/// println!("{root}: committed = {}", outcome.is_committed());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sql: Sql,
    schema: Arc<str>,
    options: Options,
}

/// What a client of either edition is set up with besides its pool and schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) max_json_bytes: usize,
    /// Whether a launch on a topic without handlers is refused.
    pub(crate) strict_topics: bool,
    /// Whether connecting brings the schema up to date; if not, it is left alone.
    pub(crate) migrate: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_json_bytes: validate::DEFAULT_MAX_JSON_BYTES,
            strict_topics: false,
            migrate: true,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_json_bytes == 0 {
            return Err(Error::Config("max_json_bytes must be >= 1".to_owned()));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("schema", &self.inner.schema)
            .field("pool", &self.inner.pool.state())
            .finish()
    }
}

/// Where connections come from.
pub(crate) enum Source {
    Url(String),
    Pool(Pool),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password.
            Source::Url(_) => f.write_str("Url(..)"),
            Source::Pool(p) => write!(f, "Pool({:?})", p.state()),
        }
    }
}

/// Builds a [`Client`].
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::Client;
///
/// # fn main() -> structured_cooperation::Result<()> {
/// let client = Client::builder("postgres://postgres@127.0.0.1/postgres")
///     .schema("orders_engine")
///     .pool_size(2)
///     .connect_timeout(Duration::from_secs(3))
///     .max_json_bytes(64 * 1024)
///     .connect()?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ClientBuilder {
    source: Source,
    schema: String,
    pool_size: u32,
    connect_timeout: Duration,
    options: Options,
}

impl ClientBuilder {
    /// The schema holding the engine's tables. Defaults to `scoop`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connections in the pool (ignored when built from an existing pool). Defaults to 4.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a connection before giving up. Defaults to 10 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest payload, context or return value accepted, in bytes of JSON. Defaults to
    /// 2 MiB. Anything larger is refused with [`Error::TooLarge`] before it is written.
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.options.max_json_bytes = limit;
        self
    }

    /// Whether a launch on a topic that no handler is registered for fails with
    /// [`Error::Unhandled`] (writing nothing) instead of being written with a warning. Off by
    /// default; one launch can say otherwise with
    /// [`EmitOptions::strict`](crate::EmitOptions::strict).
    pub fn strict_topics(mut self, strict: bool) -> Self {
        self.options.strict_topics = strict;
        self
    }

    /// Whether [`connect`](Self::connect) brings the schema up to date (the default). Teams
    /// that migrate in a deploy step turn it off and run [`Client::migrate`] there (or apply
    /// [`Client::pending_migrations_sql`] with their own tool); then connecting touches
    /// nothing.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.options.migrate = migrate;
        self
    }

    /// Connects and, unless told otherwise, brings the schema up to date.
    pub fn connect(self) -> Result<Client> {
        validate::schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(Error::Config("pool size must be >= 1".to_owned()));
        }
        let pool = match self.source {
            Source::Url(url) => build_pool(&url, self.pool_size, self.connect_timeout)?,
            Source::Pool(pool) => pool,
        };
        Client::new(pool, self.schema, self.options)
    }
}

impl Client {
    /// A builder connecting to `url` (a `postgres://` URL or a `key=value` string).
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// let client = structured_cooperation::Client::builder("host=127.0.0.1 user=postgres")
    ///     .connect()?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            source: Source::Url(url.into()),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            options: Options::default(),
        }
    }

    /// A client over an existing pool, using `schema` (created and migrated if needed).
    ///
    /// ```no_run
    /// use structured_cooperation::{Client, ConnectionManager, r2d2};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = ConnectionManager::from_url("postgres://postgres@127.0.0.1/postgres")?;
    /// let pool = r2d2::Pool::builder().max_size(4).build(manager)?;
    /// let client = Client::from_pool(pool, "scoop")?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pool(pool: Pool, schema: impl Into<String>) -> Result<Client> {
        let schema = schema.into();
        validate::schema(&schema)?;
        Client::new(pool, schema, Options::default())
    }

    pub(crate) fn new(pool: Pool, schema: String, options: Options) -> Result<Client> {
        options.validate()?;
        let sql = Sql::new(&schema);
        // The first connection is where an unreachable database shows, as when building the
        // pool from a URL.
        let mut conn = pool.get().map_err(|e| Error::Connect(e.to_string()))?;
        if options.migrate {
            migrate::migrate(&mut *conn, &sql, &schema)?;
        }
        drop(conn);
        Ok(Client {
            inner: Arc::new(Inner {
                sql,
                pool,
                schema: schema.into(),
                options,
            }),
        })
    }

    /// Brings the schema up to date: creates it if needed and applies the migrations it
    /// lacks, in one transaction, under a lock that makes concurrent migrators wait for each
    /// other. Returns the versions applied (empty when it was up to date). Connecting does
    /// this by itself unless [`ClientBuilder::migrate`] turned it off.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// // In a deploy step:
    /// let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres")
    ///     .migrate(false)
    ///     .connect()?;
    /// let applied = client.migrate()?;
    /// println!("applied migrations {applied:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn migrate(&self) -> Result<Vec<i32>> {
        let mut conn = self.conn()?;
        migrate::migrate(&mut *conn, self.sql(), self.schema())
    }

    /// The SQL that [`migrate`](Self::migrate) would run now, as one script (a transaction)
    /// for a migration tool or a review; empty when the schema is up to date.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").migrate(false).connect()?;
    /// print!("{}", client.pending_migrations_sql()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pending_migrations_sql(&self) -> Result<String> {
        let mut conn = self.conn()?;
        let version = migrate::applied_version(&mut *conn, self.schema())?;
        migrate::script(self.schema(), version)
    }

    /// What the server allows in connections (checked by runtimes at start).
    pub(crate) fn connection_limits(&self) -> Result<proto::Limits> {
        self.run(&proto::ConnectionLimits)
    }

    /// [`Error::SchemaOutdated`] (or [`Error::SchemaTooNew`]) unless the schema is at the
    /// version this library needs (a runtime told not to migrate).
    pub(crate) fn require_current_schema(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let version = migrate::applied_version(&mut *conn, self.schema())?;
        migrate::require_current(self.schema(), version)
    }

    /// The schema.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// assert_eq!(client.schema(), structured_cooperation::DEFAULT_SCHEMA);
    /// # Ok(())
    /// # }
    /// ```
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The largest payload, context or return value accepted, in bytes of JSON.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// assert_eq!(client.max_json_bytes(), 2 * 1024 * 1024);
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_json_bytes(&self) -> usize {
        self.inner.options.max_json_bytes
    }

    /// Whether launches on topics without handlers are refused (see
    /// [`ClientBuilder::strict_topics`]).
    pub fn strict_topics(&self) -> bool {
        self.inner.options.strict_topics
    }

    /// The connection pool, for the application's own queries (for example to launch inside
    /// its own transaction with [`launch_in`](Self::launch_in)).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let conn = client.pool().get()?;
    /// assert!(!conn.is_closed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) fn conn(&self) -> Result<r2d2::PooledConnection<ConnectionManager>> {
        pool::checked_out(&self.inner.pool, None)
    }

    /// A pooled connection, waiting at most `wait` (a worker that cannot get one gives its
    /// handler back rather than hold it for the whole connection timeout).
    pub(crate) fn conn_within(
        &self,
        wait: Duration,
    ) -> Result<r2d2::PooledConnection<ConnectionManager>> {
        pool::checked_out(&self.inner.pool, Some(wait))
    }

    /// Runs one statement on a pooled connection, outside any transaction.
    fn run<S: proto::Statement>(&self, s: &S) -> Result<S::Output> {
        let mut conn = self.conn()?;
        exec::run(&mut *conn, self.sql(), None, s)
    }

    /// A message by id, or `None` if there is no such message.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let root = client.launch("orders", &serde_json::json!({ "id": 7 }))?;
    /// let message = client.message(root.message_id())?.expect("just launched");
    /// assert_eq!(message.payload["id"], 7);
    /// # Ok(())
    /// # }
    /// ```
    pub fn message(&self, id: MessageId) -> Result<Option<Message>> {
        self.run(&proto::Message::new(id))?
            .map(Message::from_row)
            .transpose()
    }

    /// The root's history, in order.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// # let root = client.launch("orders", &7)?;
    /// for event in client.history(root)? {
    ///     println!("{event}"); // EMITTED@-, SEEN@order-saga, SUSPENDED(0)@order-saga, ...
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        let rows = self.run(&proto::History::new(root))?;
        self.found(root, !rows.is_empty())?;
        Ok(rows.into_iter().map(HistoryEvent::from_row).collect())
    }

    /// Every run of the root's tree, parents before their children.
    ///
    /// ```no_run
    /// use structured_cooperation::render_tree;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// # let root = client.launch("orders", &7)?;
    /// print!("{}", render_tree(&client.tree(root)?));
    /// # Ok(())
    /// # }
    /// ```
    pub fn tree(&self, root: RootId) -> Result<Vec<RunInfo>> {
        let rows = self.run(&proto::Tree::new(root))?;
        self.found(root, !rows.is_empty())?;
        Ok(rows.into_iter().map(RunInfo::from_row).collect())
    }

    /// [`Error::NotFound`] when a read of `root` found nothing (`any` false) and no such root
    /// was launched; a root whose topic had no handler exists but has no runs.
    fn found(&self, root: RootId, any: bool) -> Result<()> {
        if any || self.run(&proto::RootExists::new(root))? {
            Ok(())
        } else {
            Err(not_found(root))
        }
    }

    /// Unfinished runs that are being retried after transient failures or keep failing with
    /// infrastructure errors, most recently changed first, at most `limit` of them. A run
    /// leaves the list as soon as it moves on.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// for run in client.troubled_runs(20)? {
    ///     println!("{} {}: {} retries, {} errors: {:?}", run.handler, run.id, run.retries,
    ///              run.infra_failures, run.last_error);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn troubled_runs(&self, limit: usize) -> Result<Vec<TroubledRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .run(&proto::Troubled { limit })?
            .into_iter()
            .map(TroubledRun::from_row)
            .collect())
    }

    /// The current state of the root's top-level runs.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// # let root = client.launch("orders", &7)?;
    /// let outcome = client.outcome(root)?;
    /// if !outcome.is_finished() {
    ///     println!("still running: {:?}", outcome.runs());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn outcome(&self, root: RootId) -> Result<TreeOutcome> {
        let rows = self.run(&proto::RootRuns::new(root))?;
        self.found(root, !rows.is_empty())?;
        Ok(TreeOutcome::new(
            root,
            rows.into_iter().map(RootRun::from_row).collect(),
        ))
    }

    /// Waits until every run of the root's tree has finished, or `timeout` passes
    /// ([`Error::Timeout`], saying what is still unfinished).
    ///
    /// A [`Runtime`](crate::Runtime) wakes such waiters as soon as it finishes a root run; a
    /// bare client re-reads the state with a backoff of up to 100 ms.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let root = client.launch("orders", &serde_json::json!({ "id": 7 }))?;
    /// let outcome = client.wait_for(root, Duration::from_secs(30))?;
    /// for run in outcome.runs() {
    ///     println!("{}: {}", run.handler, run.status);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        self.wait_for_with(root, timeout, std::thread::sleep)
    }

    pub(crate) fn wait_for_with(
        &self,
        root: RootId,
        timeout: Duration,
        mut pause: impl FnMut(Duration),
    ) -> Result<TreeOutcome> {
        let mut waiting = Waiting::new(root, timeout);
        loop {
            match waiting.after(self.outcome(root)?)? {
                ControlFlow::Break(outcome) => return Ok(outcome),
                ControlFlow::Continue(wait) => pause(wait),
            }
        }
    }
}

/// The error for a root id that names nothing.
pub(crate) fn not_found(root: RootId) -> Error {
    Error::NotFound {
        what: "root",
        id: root.to_string(),
    }
}

/// How `wait_for` paces its re-reads of a tree's state (both editions): from 2 ms, doubling
/// up to 100 ms, until the timeout.
pub(crate) struct Waiting {
    root: RootId,
    start: Instant,
    timeout: Duration,
    backoff: Duration,
}

impl Waiting {
    pub(crate) fn new(root: RootId, timeout: Duration) -> Waiting {
        Waiting {
            root,
            start: Instant::now(),
            timeout,
            backoff: Duration::from_millis(2),
        }
    }

    /// What to do after reading `outcome`: return it (finished), pause this long and read
    /// again, or give up with [`Error::Timeout`].
    pub(crate) fn after(
        &mut self,
        outcome: TreeOutcome,
    ) -> Result<ControlFlow<TreeOutcome, Duration>> {
        if outcome.is_finished() {
            return Ok(ControlFlow::Break(outcome));
        }
        let waited = self.start.elapsed();
        if waited >= self.timeout {
            return Err(Error::Timeout {
                root: self.root,
                waited,
                detail: outcome.unfinished(),
            });
        }
        let pause = self.backoff.min(self.timeout - waited);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(100));
        Ok(ControlFlow::Continue(pause))
    }
}
