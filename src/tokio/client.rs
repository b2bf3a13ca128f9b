//! The tokio edition's client: launching, inspecting and waiting here; operators' requests in
//! `client/operate.rs`. Each method runs the same statements as the blocking client's.

mod chains;
mod launch;
mod list;
mod operate;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, RecyclingMethod};
use tokio_postgres::NoTls;

use super::exec;
use crate::client::{CLIENT_WORKER, DEFAULT_SCHEMA, Options, Waiting};
use crate::connect::{FirstConnection, Target, Tls};
use crate::error::{Error, PoolError, Result, with_sources};
use crate::ids::{MessageId, RootId};
use crate::inspect::{HistoryEvent, Message, RootRun, RunInfo, TreeOutcome, TroubledRun};
use crate::proto::{
    self, ApplyMigration, LATEST_MIGRATION, MIGRATIONS, MigrationLock, MigrationSetup,
    MigrationVersion, RecordMigration, Sql,
};
use crate::validate;

/// The connection pool the tokio edition uses (and accepts): deadpool-postgres's.
pub type Pool = deadpool_postgres::Pool;

/// Like [`crate::Client`], but async: a handle for launching roots and reading their state.
/// Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::tokio::Client;
///
/// # async fn example() -> structured_cooperation::Result<()> {
/// let client = Client::builder("postgres://postgres@127.0.0.1/postgres").connect().await?;
/// let root = client.launch("orders", &serde_json::json!({ "id": 7 })).await?;
/// let outcome = client.wait_for(root, Duration::from_secs(30)).await?;
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

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("schema", &self.inner.schema)
            .field("pool", &self.inner.pool.status())
            .finish()
    }
}

/// Where the tokio edition connects: the driver's configuration and the TLS connector the
/// URL's `sslmode` calls for.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: Tls,
}

/// Parses a `postgres://` URL or a `key=value` string, with `connect_timeout` unless the
/// configuration sets its own.
pub(crate) fn parse_config(url: &str, connect_timeout: Duration) -> Result<Endpoint> {
    let target = Target::parse(url)?;
    let mut config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e| Error::Config(format!("invalid database url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    Ok(Endpoint {
        config,
        tls: target.tls,
    })
}

impl Endpoint {
    /// Connects once, retrying transient failures until `timeout` (see
    /// `crate::connect::first_connection`), and drops the connection: the pool's first
    /// connection is where a wrong password or an unknown database shows, at once.
    pub(crate) async fn check(&self, timeout: Duration) -> Result<()> {
        let mut retry = FirstConnection::new(timeout);
        loop {
            let attempt = match &self.tls {
                Tls::Plain => self.config.connect(NoTls).await.map(drop),
                #[cfg(feature = "rustls")]
                Tls::Rustls(tls) => self.config.connect(tls.clone()).await.map(drop),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => ::tokio::time::sleep(retry.after(&e)?).await,
            }
        }
    }

    /// Cancels the query running on the connection of `token`, over the same TLS settings.
    pub(crate) async fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let _ = match &self.tls {
            Tls::Plain => token.cancel_query(NoTls).await,
            #[cfg(feature = "rustls")]
            Tls::Rustls(tls) => token.cancel_query(tls.clone()).await,
        };
    }
}

/// Builds a deadpool pool of `size` connections for `endpoint`, after a first connection
/// (see [`Endpoint::check`]).
pub(crate) async fn build_pool(
    endpoint: Endpoint,
    size: u32,
    connect_timeout: Duration,
) -> Result<Pool> {
    endpoint.check(connect_timeout).await?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match endpoint.tls {
        Tls::Plain => Manager::from_config(endpoint.config, NoTls, manager_config),
        #[cfg(feature = "rustls")]
        Tls::Rustls(tls) => Manager::from_config(endpoint.config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size as usize)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Config(format!("could not build the connection pool: {e}")))
}

/// A deadpool error as the crate's: only waiting too long is a timeout.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    let timeout = matches!(e, deadpool_postgres::PoolError::Timeout(_));
    Error::Pool(PoolError::new(timeout, Box::new(e)))
}

/// Like [`crate::ClientBuilder`]: builds a [`Client`].
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::tokio::Client;
///
/// # async fn example() -> structured_cooperation::Result<()> {
/// let client = Client::builder("postgres://postgres@127.0.0.1/postgres")
///     .schema("orders_engine")
///     .pool_size(2)
///     .connect_timeout(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
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

    /// Connections in the pool. Defaults to 4.
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
    /// 2 MiB.
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.options.max_json_bytes = limit;
        self
    }

    /// Like [`crate::ClientBuilder::strict_topics`]. Off by default.
    pub fn strict_topics(mut self, strict: bool) -> Self {
        self.options.strict_topics = strict;
        self
    }

    /// Like [`crate::ClientBuilder::migrate`]. On by default.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.options.migrate = migrate;
        self
    }

    /// Connects and brings the schema up to date.
    pub async fn connect(self) -> Result<Client> {
        validate::schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(Error::Config("pool size must be >= 1".to_owned()));
        }
        let endpoint = parse_config(&self.url, self.connect_timeout)?;
        let pool = build_pool(endpoint, self.pool_size, self.connect_timeout).await?;
        Client::new(pool, self.schema, self.options).await
    }
}

impl Client {
    /// Like [`crate::Client::builder`].
    ///
    /// ```no_run
    /// # async fn example() -> structured_cooperation::Result<()> {
    /// let client = structured_cooperation::tokio::Client::builder("host=127.0.0.1 user=postgres")
    ///     .connect()
    ///     .await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            options: Options::default(),
        }
    }

    /// Like [`crate::Client::from_pool`], over a deadpool-postgres pool.
    ///
    /// ```no_run
    /// use structured_cooperation::tokio::Client;
    /// use deadpool_postgres::{Manager, Pool};
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = "postgres://postgres@127.0.0.1/postgres".parse()?;
    /// let manager = Manager::new(config, tokio_postgres::NoTls);
    /// let pool = Pool::builder(manager).max_size(4).build()?;
    /// let client = Client::from_pool(pool, "scoop").await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_pool(pool: Pool, schema: impl Into<String>) -> Result<Client> {
        let schema = schema.into();
        validate::schema(&schema)?;
        Client::new(pool, schema, Options::default()).await
    }

    pub(crate) async fn new(pool: Pool, schema: String, options: Options) -> Result<Client> {
        options.validate()?;
        let sql = Sql::new(&schema);
        // The first connection is where an unreachable database shows.
        let mut conn = pool
            .get()
            .await
            .map_err(|e| Error::Connect(with_sources(&e)))?;
        if options.migrate {
            migrate(&mut conn, &sql, &schema).await?;
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

    /// Like [`crate::Client::migrate`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let applied = client.migrate().await?;
    /// # let _ = applied;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let mut conn = self.conn().await?;
        migrate(&mut conn, self.sql(), self.schema()).await
    }

    /// Like [`crate::Client::pending_migrations_sql`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// print!("{}", client.pending_migrations_sql().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pending_migrations_sql(&self) -> Result<String> {
        let version = self.applied_version().await?;
        crate::migrate::script(self.schema(), version)
    }

    /// Like `crate::Client::connection_limits`.
    pub(crate) async fn connection_limits(&self) -> Result<proto::Limits> {
        self.run(&proto::ConnectionLimits).await
    }

    /// Like `crate::Client::require_current_schema`.
    pub(crate) async fn require_current_schema(&self) -> Result<()> {
        let version = self.applied_version().await?;
        crate::migrate::require_current(self.schema(), version)
    }

    /// Like `crate::migrate::applied_version`.
    async fn applied_version(&self) -> Result<i32> {
        let conn = self.conn().await?;
        let query = proto::version_query(self.schema());
        match conn.query_one(&query, &[]).await {
            Ok(row) => Ok(row.try_get(0)?),
            Err(e) if crate::migrate::is_undefined_table(&e) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Like [`crate::Client::schema`].
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Like [`crate::Client::max_json_bytes`].
    pub fn max_json_bytes(&self) -> usize {
        self.inner.options.max_json_bytes
    }

    /// Like [`crate::Client::strict_topics`].
    pub fn strict_topics(&self) -> bool {
        self.inner.options.strict_topics
    }

    /// Like [`crate::Client::pool`]: the deadpool pool, for the application's own queries.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) async fn conn(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// Like `crate::Client::conn_within`.
    pub(crate) async fn conn_within(&self, wait: Duration) -> Result<Object> {
        let mut timeouts = self.inner.pool.timeouts();
        timeouts.wait = Some(wait);
        self.inner
            .pool
            .timeout_get(&timeouts)
            .await
            .map_err(pool_error)
    }

    /// Runs one statement on a pooled connection, outside any transaction.
    async fn run<S: proto::Statement + Sync>(&self, s: &S) -> Result<S::Output> {
        let conn = self.conn().await?;
        exec::run(&**conn, self.sql(), None, s).await
    }

    /// Like [`crate::Client::message`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let root = client.launch("orders", &7).await?;
    /// assert!(client.message(root.message_id()).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn message(&self, id: MessageId) -> Result<Option<Message>> {
        self.run(&proto::Message::new(id))
            .await?
            .map(Message::from_row)
            .transpose()
    }

    /// Like [`crate::Client::history`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, root: structured_cooperation::RootId) -> structured_cooperation::Result<()> {
    /// for event in client.history(root).await? {
    ///     println!("{event}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        let rows = self.run(&proto::History::new(root)).await?;
        self.found(root, !rows.is_empty()).await?;
        Ok(rows.into_iter().map(HistoryEvent::from_row).collect())
    }

    /// Like [`crate::Client::tree`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, root: structured_cooperation::RootId) -> structured_cooperation::Result<()> {
    /// print!("{}", structured_cooperation::render_tree(&client.tree(root).await?));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn tree(&self, root: RootId) -> Result<Vec<RunInfo>> {
        let rows = self.run(&proto::Tree::new(root)).await?;
        self.found(root, !rows.is_empty()).await?;
        Ok(rows.into_iter().map(RunInfo::from_row).collect())
    }

    /// Like `crate::Client::found`: [`Error::NotFound`] when nothing was read and no such
    /// root was launched.
    async fn found(&self, root: RootId, any: bool) -> Result<()> {
        if any || self.run(&proto::RootExists::new(root)).await? {
            Ok(())
        } else {
            Err(crate::client::not_found(root))
        }
    }

    /// Like [`crate::Client::troubled_runs`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let troubled = client.troubled_runs(20).await?;
    /// # let _ = troubled;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn troubled_runs(&self, limit: usize) -> Result<Vec<TroubledRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.run(&proto::Troubled { limit }).await?;
        Ok(rows.into_iter().map(TroubledRun::from_row).collect())
    }

    /// Like [`crate::Client::outcome`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, root: structured_cooperation::RootId) -> structured_cooperation::Result<()> {
    /// let finished = client.outcome(root).await?.is_finished();
    /// # let _ = finished;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn outcome(&self, root: RootId) -> Result<TreeOutcome> {
        let rows = self.run(&proto::RootRuns::new(root)).await?;
        self.found(root, !rows.is_empty()).await?;
        let runs = rows.into_iter().map(RootRun::from_row).collect();
        Ok(TreeOutcome::new(root, runs))
    }

    /// Like [`crate::Client::wait_for`], but async: re-reads the state with a backoff of up to
    /// 100 ms (a [`Runtime`](super::Runtime) wakes its waiters as soon as it finishes a root
    /// run).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let root = client.launch("orders", &7).await?;
    /// let outcome = client.wait_for(root, Duration::from_secs(30)).await?;
    /// # let _ = outcome;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        let mut waiting = Waiting::new(root, timeout);
        loop {
            match waiting.after(self.outcome(root).await?)? {
                ControlFlow::Break(outcome) => return Ok(outcome),
                ControlFlow::Continue(wait) => ::tokio::time::sleep(wait).await,
            }
        }
    }
}

/// Like `crate::migrate::migrate`, async: brings `schema` up to date in one transaction
/// under the migrations' advisory lock.
async fn migrate(conn: &mut Object, sql: &Sql, schema: &str) -> Result<Vec<i32>> {
    let tx = conn.transaction().await?;
    exec::run(&*tx, sql, None, &MigrationLock::new(schema)).await?;
    exec::run(&*tx, sql, None, &MigrationSetup).await?;
    let found = exec::run(&*tx, sql, None, &MigrationVersion).await?;
    if found > LATEST_MIGRATION {
        return Err(Error::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            known: LATEST_MIGRATION,
        });
    }
    let mut applied = Vec::new();
    for (index, &(version, name, _)) in MIGRATIONS.iter().enumerate() {
        if version <= found {
            continue;
        }
        exec::run(&*tx, sql, None, &ApplyMigration { index }).await?;
        exec::run(&*tx, sql, None, &RecordMigration { version, name }).await?;
        applied.push(version);
    }
    tx.commit().await?;
    if !applied.is_empty() {
        log::info!("schema {schema}: applied migrations {applied:?}");
    }
    Ok(applied)
}
