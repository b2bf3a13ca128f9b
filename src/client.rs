//! Talking to the engine without running handlers: launching, inspecting, waiting, and
//! completing out-of-band handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use serde::Serialize;

use crate::core::RunStatus;
use crate::core::decide;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};
use crate::inspect::{HistoryEvent, Message, Requested, RootRun, RunInfo, Scope, TreeOutcome};
use crate::migrate;
use crate::options::EmitOptions;
use crate::saga::Emission;
use crate::store::{self, Sql};
use crate::typed::AsTopic;
use crate::validate;

/// The connection pool type the engine uses (and accepts).
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "scoop";

/// Who wrote history entries that come from a [`Client`] rather than a runtime.
const CLIENT_WORKER: &str = "client";

/// A handle for launching roots and reading their state. Cheap to clone.
///
/// Every [`Runtime`](crate::Runtime) has one ([`Runtime::client`](crate::Runtime::client));
/// processes that only launch or inspect can build their own with [`Client::builder`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sql: Sql,
    schema: Arc<str>,
    max_json_bytes: usize,
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

/// Builds an r2d2 pool for `url`, failing within `connect_timeout` if the database cannot be
/// reached.
pub(crate) fn build_pool(url: &str, size: u32, connect_timeout: Duration) -> Result<Pool> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| Error::Config(format!("invalid database url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    let manager = PostgresConnectionManager::new(config, NoTls);
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(connect_timeout)
        .build(manager)
        .map_err(|e| Error::Connect(e.to_string()))
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    source: Source,
    schema: String,
    pool_size: u32,
    connect_timeout: Duration,
    max_json_bytes: usize,
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
        self.max_json_bytes = limit;
        self
    }

    /// Connects and brings the schema up to date.
    pub fn connect(self) -> Result<Client> {
        validate::schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(Error::Config("pool size must be >= 1".to_owned()));
        }
        let pool = match self.source {
            Source::Url(url) => build_pool(&url, self.pool_size, self.connect_timeout)?,
            Source::Pool(pool) => pool,
        };
        Client::new(pool, self.schema, self.max_json_bytes)
    }
}

impl Client {
    /// A builder connecting to `url` (a `postgres://` URL or a `key=value` string).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            source: Source::Url(url.into()),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            max_json_bytes: validate::DEFAULT_MAX_JSON_BYTES,
        }
    }

    /// A client over an existing pool, using `schema`.
    pub fn from_pool(pool: Pool, schema: impl Into<String>) -> Result<Client> {
        let schema = schema.into();
        validate::schema(&schema)?;
        Client::new(pool, schema, validate::DEFAULT_MAX_JSON_BYTES)
    }

    pub(crate) fn new(pool: Pool, schema: String, max_json_bytes: usize) -> Result<Client> {
        if max_json_bytes == 0 {
            return Err(Error::Config("max_json_bytes must be >= 1".to_owned()));
        }
        let mut conn = pool.get().map_err(|e| Error::Connect(e.to_string()))?;
        migrate::migrate(&mut *conn, &schema)?;
        Ok(Client {
            inner: Arc::new(Inner {
                sql: Sql::new(&schema),
                pool,
                schema: schema.into(),
                max_json_bytes,
            }),
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    pub(crate) fn schema_arc(&self) -> Arc<str> {
        self.inner.schema.clone()
    }

    /// The largest payload, context or return value accepted, in bytes of JSON.
    pub fn max_json_bytes(&self) -> usize {
        self.inner.max_json_bytes
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        Ok(self.inner.pool.get()?)
    }

    /// Launches `payload` on `topic` (a [`Topic`](crate::Topic), which fixes the payload type,
    /// or a name) on the global scope, in its own transaction, and returns the new root. Every
    /// handler registered for the topic gets a run.
    pub fn launch<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        let mut conn = self.conn()?;
        self.launch_in(&mut *conn, topic, payload)
    }

    /// Like [`launch`](Self::launch), with deadlines (inherited by every run in the tree) and
    /// a cooperation context for the new root.
    pub fn launch_with<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let mut conn = self.conn()?;
        self.launch_in_with(&mut *conn, topic, payload, options)
    }

    /// Like [`launch`](Self::launch), but on the caller's connection or transaction, so the
    /// launch commits (and handlers are notified) together with the caller's own writes.
    pub fn launch_in<C: GenericClient, P: Serialize + ?Sized>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_in_with(client, topic, payload, EmitOptions::new())
    }

    /// [`launch_in`](Self::launch_in) with deadlines and context.
    pub fn launch_in_with<C: GenericClient, P: Serialize + ?Sized>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let emission = Emission::new(
            topic.topic_name(),
            payload,
            &options.into(),
            self.max_json_bytes(),
        )?;
        let id = emission.id;
        store::emit(
            client,
            self.sql(),
            None,
            None,
            &[emission],
            CLIENT_WORKER,
            &[],
            None,
        )?;
        Ok(RootId::from_uuid(id))
    }

    /// A message by id, or `None` if there is no such message.
    pub fn message(&self, id: MessageId) -> Result<Option<Message>> {
        let mut conn = self.conn()?;
        store::message(&mut *conn, self.sql(), id)?
            .map(|m| {
                Ok(Message {
                    id: m.id,
                    root_id: m.root_id,
                    topic: m.topic,
                    payload: serde_json::from_str(&m.payload)?,
                    created_at: m.created_at,
                })
            })
            .transpose()
    }

    /// The root's history, in order.
    pub fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        let mut conn = self.conn()?;
        Ok(store::history(&mut *conn, self.sql(), root)?
            .into_iter()
            .map(|r| HistoryEvent {
                seq: r.seq,
                at: r.at,
                kind: r.kind,
                handler: r.handler,
                step: r.step,
                run_id: r.run_id,
                message_id: r.message_id,
                next_step: r.next_step,
                failure: r.failure,
            })
            .collect())
    }

    /// Every run of the root's tree, parents before their children.
    pub fn tree(&self, root: RootId) -> Result<Vec<RunInfo>> {
        let mut conn = self.conn()?;
        Ok(store::tree(&mut *conn, self.sql(), root)?
            .into_iter()
            .map(|r| RunInfo {
                id: r.id,
                parent_id: r.parent_id,
                handler: r.handler,
                topic: r.topic,
                status: r.status,
                step_index: r.step_index,
                pending_children: r.pending_children,
                depth: r.depth,
                failure: r.failure,
                rollback_failure: r.rollback_failure,
                context: r.context,
            })
            .collect())
    }

    /// The current state of the root's top-level runs.
    pub fn outcome(&self, root: RootId) -> Result<TreeOutcome> {
        let mut conn = self.conn()?;
        let runs = store::root_runs(&mut *conn, self.sql(), root)?
            .into_iter()
            .map(|r| RootRun {
                handler: r.handler,
                status: r.status,
                failure: r.failure,
                rollback_failure: r.rollback_failure,
            })
            .collect();
        Ok(TreeOutcome::new(root, runs))
    }

    /// Waits until every run of the root's tree has finished, or `timeout` passes.
    ///
    /// A [`Runtime`](crate::Runtime) wakes such waiters as soon as it finishes a root run; a
    /// bare client re-reads the state with a backoff of up to 100 ms.
    pub fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        self.wait_for_with(root, timeout, std::thread::sleep)
    }

    pub(crate) fn wait_for_with(
        &self,
        root: RootId,
        timeout: Duration,
        mut pause: impl FnMut(Duration),
    ) -> Result<TreeOutcome> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(2);
        loop {
            let outcome = self.outcome(root)?;
            if outcome.is_finished() {
                return Ok(outcome);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    root,
                    waited,
                    detail: outcome.unfinished(),
                });
            }
            pause(backoff.min(timeout - waited));
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Asks finished work to compensate: every top-level run of a root (`Scope::Root`), or one
    /// run and its subtree (`Scope::Run`), rolls back as if it had failed after its last step:
    /// its committed steps are undone newest first, each after its children rolled back.
    /// `source` and `reason` become the failure the runs roll back for
    /// (`structured_cooperation::RollbackRequested`).
    ///
    /// Refused, with the reason, while any run of the tree (below the target, or above it) is
    /// still in progress, when there is no such root or run, or when nothing committed is left
    /// to undo. Nothing changes when it is refused.
    pub fn rollback(
        &self,
        scope: impl Into<Scope>,
        source: &str,
        reason: &str,
    ) -> Result<Requested> {
        let refuse = |reason: String| Ok(Requested::Refused { reason });
        let (root, run): (Option<RootId>, Option<RunId>) = match scope.into() {
            Scope::Root(root) => (Some(root), None),
            Scope::Run(run) => (None, Some(run)),
        };
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let sql = self.sql();
        let Some(targets) = store::lock_targets(&mut tx, sql, root, run)? else {
            return refuse("one of its runs is being processed right now".to_owned());
        };
        if targets.is_empty() {
            return refuse(match root {
                Some(root) => format!("root {root} has no runs"),
                None => "there is no such run".to_owned(),
            });
        }
        let ids: Vec<RunId> = targets.iter().map(|t| t.id).collect();
        let busy = store::busy_around(&mut tx, sql, &ids)?;
        if !busy.is_empty() {
            let busy: Vec<String> = busy
                .iter()
                .map(|(handler, status)| format!("{handler} is {status}"))
                .collect();
            return refuse(format!(
                "the tree is still in progress: {}",
                busy.join(", ")
            ));
        }
        let committed: Vec<RunId> = targets
            .iter()
            .filter(|t| t.status == RunStatus::Committed)
            .map(|t| t.id)
            .collect();
        if committed.is_empty() {
            let ended: Vec<String> = targets
                .iter()
                .map(|t| format!("{} ended {}", t.handler, t.status))
                .collect();
            return refuse(format!(
                "nothing committed to roll back: {}",
                ended.join(", ")
            ));
        }
        let cause = Failure::rollback_requested(reason, source);
        let runs = store::request_operator_rollback(&mut tx, sql, &committed, &cause)?;
        tx.commit()?;
        Ok(Requested::Recorded { runs })
    }

    /// Cancels a whole tree (`Scope::Root`) or one run and its subtree (`Scope::Run`): every
    /// run of it still on its happy path gives up at its next step boundary (a step that is
    /// running when the cancellation is recorded is discarded if it finishes after) and rolls
    /// back; sleeping runs wake to do so at once. Rollbacks already under way are not
    /// affected. The failure the runs roll back for is
    /// `structured_cooperation::Cancelled`, with `reason` and `source`.
    ///
    /// Refused, with the reason, when there is no such root or run or when nothing in its scope
    /// is on its happy path any more (a finished tree); nothing is recorded then.
    pub fn cancel(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested> {
        let refuse = |reason: String| Ok(Requested::Refused { reason });
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let sql = self.sql();
        let (root, run, message) = match scope.into() {
            Scope::Root(root) => {
                if store::message(&mut tx, sql, root.message_id())?.is_none() {
                    return refuse(format!("there is no root {root}"));
                }
                (root, None, root.message_id())
            }
            Scope::Run(run) => match store::run_origin(&mut tx, sql, run)? {
                Some((root, message)) => (root, Some(run), message),
                None => return refuse(format!("there is no run {run}")),
            },
        };
        store::lock_root_exclusively(&mut tx, root)?;
        let runs = store::cancel_scope(&mut tx, sql, root, run)?;
        if runs.is_empty() {
            return refuse("nothing to cancel: no run of it is on its happy path".to_owned());
        }
        let failure = Failure::cancelled(reason, source);
        store::record_cancel(&mut tx, sql, root, run, message, &failure, &runs)?;
        tx.commit()?;
        Ok(Requested::Recorded {
            runs: u32::try_from(runs.len()).unwrap_or(u32::MAX),
        })
    }

    /// Registers `handler` as a listener of `topic` in the durable topology without starting
    /// a runtime, so that messages launched from now on get a run of it (which waits until a
    /// runtime serving the handler starts). Runtimes register their subscriptions themselves
    /// at start; this is for declaring the topology ahead of deployment or of a backlog.
    pub fn register_handler(&self, topic: &str, handler: &str) -> Result<()> {
        validate::name("topic", topic)?;
        validate::name("handler", handler)?;
        let mut conn = self.conn()?;
        store::register(&mut *conn, self.sql(), &[(topic, handler)], "runtime")
    }

    /// Registers `handler` as an out-of-band listener of `topic`: messages on the topic get a
    /// run of it, which no runtime executes; parents wait for it until someone calls
    /// [`complete_external`](Self::complete_external) (a person approving, an external
    /// system answering).
    pub fn register_external_handler(&self, topic: &str, handler: &str) -> Result<()> {
        validate::name("topic", topic)?;
        validate::name("handler", handler)?;
        let mut conn = self.conn()?;
        store::register(&mut *conn, self.sql(), &[(topic, handler)], "external")
    }

    /// Finishes the run of the external `handler` for `message`: `Ok(())` commits it,
    /// `Err(failure)` records the failure and rolls it back. Either way its parent is released
    /// once its other children have finished too.
    pub fn complete_external(
        &self,
        message: MessageId,
        handler: &str,
        result: std::result::Result<(), Failure>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let refuse = |reason| Error::NotCompletable {
            handler: handler.to_owned(),
            message,
            reason,
        };
        let run = store::lock_external(&mut tx, self.sql(), message, handler)?
            .ok_or_else(|| refuse("there is no such run"))?;
        if run.kind.as_deref() != Some("external") {
            return Err(refuse("the handler is not registered as external"));
        }
        if run.view.status.is_terminal() || run.pending_children > 0 {
            return Err(refuse("the run has already finished"));
        }
        let t = decide::complete_external(&run.view, !run.seen, result.err());
        let applied = store::apply(
            &mut tx,
            self.sql(),
            None,
            run.id,
            &t,
            CLIENT_WORKER,
            &[],
            None,
            None,
        )?;
        tx.commit()?;
        if applied.release_pending {
            // If this fails, the run stays marked and a runtime's sweep releases it.
            store::release(&mut *conn, self.sql(), None, run.id, &[])?;
        }
        Ok(())
    }
}
