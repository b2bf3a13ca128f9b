//! Configuring and starting a tokio runtime: the same settings, defaults and rules as the
//! blocking [`crate::RuntimeBuilder`], plus how many connections the workers share and an
//! optional step timeout.

use crate::runtime::limits::check_connection_limits;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::client::{Client, Pool, build_pool, parse_config};
use super::runtime::{Runtime, Shared, Tasks};
use super::typed::{Action, Handler};
use super::worker::Conns;
use super::{dispatcher, exec, listener};
use crate::core::schedule::Backoff;
use crate::error::{Error, Result};
use crate::proto::{Register, UnservedRuns};
use crate::runtime::common::{Settings, refuse_conflicts};
use crate::saga::{SagaOf, Tokio};

/// Where connections come from.
pub(crate) enum Source {
    Url(String),
    /// A pool, and the URL the `LISTEN` connection uses.
    Pool(Pool, String),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password.
            Source::Url(_) => f.write_str("Url(..)"),
            Source::Pool(p, _) => write!(f, "Pool({:?})", p.status()),
        }
    }
}

/// Like [`crate::RuntimeBuilder`]: builds and starts a tokio [`Runtime`]. Every setting
/// documents its default.
#[derive(Debug)]
pub struct RuntimeBuilder {
    source: Source,
    settings: Settings<Tokio>,
    connections: Option<usize>,
    step_timeout: Option<Duration>,
}

impl RuntimeBuilder {
    pub(super) fn new(source: Source) -> RuntimeBuilder {
        RuntimeBuilder {
            source,
            settings: Settings::new(),
            connections: None,
            step_timeout: None,
        }
    }

    /// How many steps this runtime runs at once (tasks, not threads). Defaults to 4.
    pub fn workers(mut self, workers: usize) -> Self {
        self.settings.workers = workers;
        self
    }

    /// How many connections the workers share (each running step holds one, with its
    /// transaction, for as long as it runs). Defaults to `workers`; more tasks than
    /// connections only helps when tasks spend time outside steps.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = Some(connections);
        self
    }

    /// Like [`crate::RuntimeBuilder::pool_size`]: connections in the pool when the runtime
    /// builds it; at least the workers' `connections` + 1 (launches and inspection; the
    /// `LISTEN` connection is not pooled). Defaults to `connections + 2`.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.settings.pool_size = Some(size);
        self
    }

    /// Like [`crate::RuntimeBuilder::schema`]. Defaults to `scoop`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.settings.schema = schema.into();
        self
    }

    /// Like [`crate::RuntimeBuilder::safety_net_interval`]. Defaults to 30 seconds.
    pub fn safety_net_interval(mut self, interval: Duration) -> Self {
        self.settings.safety_net = interval;
        self
    }

    /// Like [`crate::RuntimeBuilder::connect_timeout`]. Defaults to 10 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Like [`crate::RuntimeBuilder::retry_backoff`]. Defaults to 50 ms and 5 s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff { base, max };
        self
    }

    /// Like [`crate::RuntimeBuilder::max_json_bytes`]. Defaults to 2 MiB.
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.settings.max_json_bytes = limit;
        self
    }

    /// Like [`crate::RuntimeBuilder::strict_topics`]. Off by default.
    pub fn strict_topics(mut self, strict: bool) -> Self {
        self.settings.strict_topics = strict;
        self
    }

    /// Like [`crate::RuntimeBuilder::prune_finished_after`]. Off by default.
    pub fn prune_finished_after(mut self, keep: Duration) -> Self {
        self.settings.prune_after = Some(keep);
        self
    }

    /// Vacuums the `runs` table from the runtime when PostgreSQL's autovacuum does not (it
    /// is off on the server, or for the table): at a sweep, once at least `dead_versions`
    /// dead row versions piled up (10,000 by default, and a sweep is asked for every time
    /// this runtime committed that many steps), one runtime at a time, with
    /// `VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON)`. Every finished step leaves a dead version of
    /// its run and a dead entry in the claim's index, which every later claim of that
    /// handler walks past until a vacuum removes it; without any vacuum, claims slow down as
    /// history grows. Where autovacuum runs, the schema's own settings (vacuum after 10,000
    /// dead versions) already keep up, and the runtime leaves it alone. It needs a role that
    /// owns the table (others only check). `None` turns it off: then vacuum `runs` yourself.
    pub fn vacuum_runs_after(mut self, dead_versions: Option<u64>) -> Self {
        self.settings.vacuum_after = dead_versions;
        self
    }

    /// Like [`crate::RuntimeBuilder::steps_per_commit`]: up to `k` steps of one handler per
    /// transaction (1 by default, at most 32).
    pub fn steps_per_commit(mut self, k: usize) -> Self {
        self.settings.steps_per_commit = k;
        self
    }

    /// Like [`crate::RuntimeBuilder::migrate`]. On by default.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.settings.migrate = migrate;
        self
    }

    /// The longest a step's code (a step, a child-failure handler, a compensation) may run.
    /// When it runs longer, its future is dropped, its query in flight is cancelled on the
    /// server, its connection is closed, and the run is retried from its last committed state
    /// after the retry backoff (counted in `RuntimeStats::infra_errors`). Off by default.
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }

    /// Like [`crate::RuntimeBuilder::handler`], for a tokio [`Handler`].
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        let saga = handler.saga(SagaOf::<Tokio>::builder(H::NAME)).build();
        self.settings.subscribe_built(H::TOPIC.name(), saga);
        self
    }

    /// Like [`crate::RuntimeBuilder::action`], for a tokio [`Action`].
    pub fn action<A: Action>(mut self, action: A) -> Self {
        let saga = action.saga(SagaOf::<Tokio>::builder(A::NAME)).build();
        self.settings.subscribe_built(A::TOPIC.name(), saga);
        self
    }

    /// Like [`crate::RuntimeBuilder::subscribe`].
    pub fn subscribe(mut self, topic: impl Into<String>, saga: SagaOf<Tokio>) -> Self {
        self.settings.subscribe(topic.into(), saga, None);
        self
    }

    /// Serves an older version of a subscribed handler beside its newest one (the saga given
    /// to `subscribe`, which new runs get): the old version drives the runs it wrote until
    /// they finish, and runs its own compensations when one of its finished trees is rolled
    /// back. Same handler name and topic as the subscription, a different
    /// [`version`](crate::SagaOf::version). Drop it once no run of it is unfinished and
    /// none of its finished trees can still be rolled back (see the README's "Upgrading
    /// sagas").
    pub fn also_serve(mut self, topic: impl Into<String>, older: SagaOf<Tokio>) -> Self {
        self.settings.older.push((topic.into(), older));
        self
    }

    /// Like [`crate::RuntimeBuilder::subscribe_with`].
    pub fn subscribe_with(
        mut self,
        topic: impl Into<String>,
        saga: SagaOf<Tokio>,
        concurrency: usize,
    ) -> Self {
        self.settings
            .subscribe(topic.into(), saga, Some(concurrency));
        self
    }

    /// Like [`crate::RuntimeBuilder::start`], but async, on the current tokio runtime.
    pub async fn start(mut self) -> Result<Runtime> {
        let settings = &mut self.settings;
        settings.validate()?;
        let connections = self.connections.unwrap_or(settings.workers);
        if connections == 0 {
            return Err(Error::Config("connections must be >= 1".to_owned()));
        }
        let needed = connections as u32 + 1;
        let (pool, url) = match self.source {
            Source::Url(url) => {
                let endpoint = parse_config(&url, settings.connect_timeout)?;
                let size = settings.pool_size_for(needed)?;
                (
                    build_pool(endpoint, size, settings.connect_timeout).await?,
                    url,
                )
            }
            Source::Pool(pool, url) => {
                let max = pool.status().max_size;
                if max < needed as usize {
                    return Err(Error::Config(format!(
                        "the pool's max size {max} is too small for {connections} worker \
                         connections: at least {needed} are needed"
                    )));
                }
                (pool, url)
            }
        };
        let endpoint = parse_config(&url, settings.connect_timeout)?;
        let client = Client::new(pool, settings.schema.clone(), settings.client_options()).await?;
        if !settings.migrate {
            client.require_current_schema().await?;
        }
        let limits = client.connection_limits().await?;
        if let Some(warning) = check_connection_limits(&limits, connections)? {
            log::warn!("{warning}");
        }
        let registry = settings.registry("tokio");
        {
            let served = registry.served();
            let mut conn = client.conn().await?;
            if !served.is_empty() {
                // In a transaction, rolled back if a version is recorded with another shape.
                let register = Register::runtime(&served);
                let tx = conn.transaction().await?;
                refuse_conflicts(&exec::run(&*tx, client.sql(), None, &register).await?)?;
                tx.commit().await?;
                let (handlers, served) = registry.served_versions();
                let unserved = UnservedRuns { handlers, served };
                registry.warn_unserved(&exec::run(&**conn, client.sql(), None, &unserved).await?);
            }
            exec::run(&**conn, client.sql(), None, &registry.heartbeat()).await?;
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry,
            client,
            events: events_tx,
            completions: watch::channel(0).0,
            quiescent: watch::channel(false).0,
            conns: Conns::new(connections),
            step_timeout: self.step_timeout,
            endpoint: endpoint.clone(),
        });
        let settings = &self.settings;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let listener = ::tokio::spawn(listener::run(shared.clone(), endpoint, stop_rx, ready_tx));
        let wait = settings.connect_timeout + Duration::from_secs(1);
        match ::tokio::time::timeout(wait, ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            _ => {
                listener.abort();
                return Err(Error::Connect(
                    "the listener connection did not come up in time".to_owned(),
                ));
            }
        }
        let dispatcher = ::tokio::spawn(dispatcher::run(
            shared.clone(),
            events_rx,
            settings.workers,
            settings.safety_net,
            settings.backoff,
        ));
        log::info!(
            "tokio runtime {} started: schema {}, {} workers on {connections} connections, \
             handlers {:?}",
            shared.registry.instance,
            shared.client.schema(),
            settings.workers,
            shared.registry.names()
        );
        Ok(Runtime {
            shared,
            tasks: Some(Tasks {
                dispatcher,
                listener,
                stop_listener: stop_tx,
            }),
        })
    }
}
