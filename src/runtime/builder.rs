//! Configuring and starting a runtime.

use crate::runtime::limits::check_connection_limits;
use std::sync::Arc;
use std::time::Duration;

use super::common::{Settings, refuse_conflicts};
use super::{Runtime, Shared, Signals, Threads, dispatcher, listener, worker};
use crate::client::{Client, Source, build_pool};
use crate::core::schedule::Backoff;
use crate::error::{Error, Result};
use crate::proto::{Register, UnservedRuns};
use crate::saga::{Blocking, Saga};
use crate::typed::{Action, Handler};

/// Builds and starts a [`Runtime`]. Every setting documents its default.
#[derive(Debug)]
pub struct RuntimeBuilder {
    source: Source,
    settings: Settings<Blocking>,
}

impl RuntimeBuilder {
    pub(super) fn new(source: Source) -> RuntimeBuilder {
        RuntimeBuilder {
            source,
            settings: Settings::new(),
        }
    }

    /// Worker threads, i.e. how many steps this runtime runs at once. Defaults to 4.
    pub fn workers(mut self, workers: usize) -> Self {
        self.settings.workers = workers;
        self
    }

    /// Connections in the pool when the runtime builds it. Each worker keeps one connection
    /// (with its prepared statements) and the listener keeps one, so this must be at least
    /// `workers + 1`. Defaults to `workers + 3`. Ignored with
    /// [`Runtime::builder_with_pool`], whose pool must be at least as large.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.settings.pool_size = Some(size);
        self
    }

    /// The schema holding the engine's tables; created and migrated at start. Lowercase
    /// letters, digits and `_`, at most 48 bytes. Defaults to `scoop`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.settings.schema = schema.into();
        self
    }

    /// How often the runtime asks the database for due work even when no notification
    /// arrived. Correctness never depends on notifications, only latency does: this bounds
    /// the delay after a lost one. Defaults to 30 seconds.
    pub fn safety_net_interval(mut self, interval: Duration) -> Self {
        self.settings.safety_net = interval;
        self
    }

    /// How long to wait for a database connection before failing. Defaults to 10 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long to wait before retrying after an infrastructure error (a lost connection, a
    /// deadlock or serialization failure reported by PostgreSQL): `base` after the first
    /// consecutive error, doubling up to `max`, each delay shortened by a random part of up to
    /// half. Such errors never fail a run: it is retried from its last committed state (so step
    /// code can run more than once; its database effects commit once). They are logged and
    /// counted in [`RuntimeStats::infra_errors`](crate::RuntimeStats::infra_errors). Defaults to 50 ms and 5 s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff { base, max };
        self
    }

    /// The largest payload, context or return value accepted, in bytes of JSON. Defaults to
    /// 2 MiB. Step code that emits or stores anything larger gets [`Error::TooLarge`] (naming
    /// what was too large) before anything is written.
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.settings.max_json_bytes = limit;
        self
    }

    /// Whether a step's emission on a topic that no handler is registered for fails the step
    /// (a failure of type `structured_cooperation::UnhandledTopic`: nothing of the step is
    /// kept, the run takes its rollback path), and a launch through this runtime fails with
    /// [`Error::Unhandled`]. Off by default: such a message is written, nobody runs it and
    /// nobody waits for it, and the runtime says so (a warning in the log, an `UNHANDLED`
    /// entry in the root's history, [`RuntimeStats::unhandled`](crate::RuntimeStats)). One
    /// emission can say otherwise with [`EmitOptions::strict`](crate::EmitOptions::strict).
    pub fn strict_topics(mut self, strict: bool) -> Self {
        self.settings.strict_topics = strict;
        self
    }

    /// Prunes finished trees automatically: at every safety-net sweep, trees whose runs all
    /// finished more than `keep` ago are deleted as by [`Client::prune`] (for up to a second
    /// per sweep, one runtime of the schema at a time, under an advisory lock). Off by
    /// default: history is kept until something prunes it.
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

    /// Steps per commit (opt-in; 1 by default): a worker draining a handler claims up to `k`
    /// of its runnable runs with one statement, runs their steps one after another in that
    /// transaction, each under its own savepoint, and commits them together; at most 32.
    ///
    /// A step that fails rolls back only to its savepoint and its failure is recorded as
    /// usual (the batch then commits the steps before it; the runs it had not reached are
    /// unlocked untouched, and claimed again). What changes: a step's writes (its own, and
    /// the messages it emits) become visible, and the batch's row locks are released, only
    /// when the batch commits, i.e. after up to `k - 1` further steps; a crash or lost connection loses (and so retries)
    /// the whole batch, not one step; and a step that finishes a child commits the batch at
    /// once (its parent is released after the commit). Effects stay exactly once: every step
    /// of a batch commits, or none does. Use it for handlers with many short, independent
    /// runs, where the commit's flush dominates: throughput grows with `k` (see
    /// BENCHMARKS.md; 8 to 16 is a good start), latency by about `k` steps' time.
    pub fn steps_per_commit(mut self, k: usize) -> Self {
        self.settings.steps_per_commit = k;
        self
    }

    /// Whether [`start`](Self::start) brings the schema up to date (the default). Turned off,
    /// start only checks that the schema is at the version this library needs and fails with
    /// [`Error::SchemaOutdated`] if it is not: for teams that migrate in a deploy step (with
    /// [`Client::migrate`] or the SQL of [`Client::pending_migrations_sql`]).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.settings.migrate = migrate;
        self
    }

    /// Subscribes a typed [`Handler`] in one call: a saga named [`Handler::NAME`], built by
    /// [`Handler::saga`], on [`Handler::TOPIC`]. A saga that does not build is reported by
    /// [`start`](Self::start).
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        let saga = handler.saga(Saga::builder(H::NAME)).build();
        self.settings.subscribe_built(H::TOPIC.name(), saga);
        self
    }

    /// Subscribes a typed [`Action`] in one call, like [`handler`](Self::handler).
    pub fn action<A: Action>(mut self, action: A) -> Self {
        let saga = action.saga(Saga::builder(A::NAME)).build();
        self.settings.subscribe_built(A::TOPIC.name(), saga);
        self
    }

    /// Subscribes `saga` to `topic`; up to `workers` of its runs may execute at once.
    pub fn subscribe(mut self, topic: impl Into<String>, saga: Saga) -> Self {
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
    pub fn also_serve(mut self, topic: impl Into<String>, older: Saga) -> Self {
        self.settings.older.push((topic.into(), older));
        self
    }

    /// Subscribes `saga` to `topic` with at most `concurrency` of its runs executing at once
    /// in this runtime (must be >= 1).
    pub fn subscribe_with(
        mut self,
        topic: impl Into<String>,
        saga: Saga,
        concurrency: usize,
    ) -> Self {
        self.settings
            .subscribe(topic.into(), saga, Some(concurrency));
        self
    }

    /// Connects, migrates the schema, registers the subscriptions in the durable topology and
    /// starts the threads. Fails with a clear error, within the connect timeout, if the
    /// database cannot be reached.
    pub fn start(mut self) -> Result<Runtime> {
        let settings = &mut self.settings;
        settings.validate()?;
        let needed = settings.workers as u32 + 1;
        let pool = match self.source {
            Source::Url(ref url) => build_pool(
                url,
                settings.pool_size_for(needed)?,
                settings.connect_timeout,
            )?,
            Source::Pool(ref pool) => {
                if pool.max_size() < needed {
                    return Err(Error::Config(format!(
                        "the pool's max size {} is too small for {} workers: at least {needed} \
                         connections are needed",
                        pool.max_size(),
                        settings.workers
                    )));
                }
                pool.clone()
            }
        };
        let client = Client::new(pool, settings.schema.clone(), settings.client_options())?;
        if !settings.migrate {
            client.require_current_schema()?;
        }
        let limits = client.connection_limits()?;
        if let Some(warning) = check_connection_limits(&limits, settings.workers)? {
            log::warn!("{warning}");
        }
        let registry = settings.registry("blocking");
        {
            let served = registry.served();
            let mut conn = client.conn()?;
            if !served.is_empty() {
                // In a transaction, rolled back if a version is recorded with another shape.
                let register = Register::runtime(&served);
                let mut tx = conn.transaction()?;
                refuse_conflicts(&super::exec::run(&mut tx, client.sql(), None, &register)?)?;
                tx.commit()?;
                let (handlers, served) = registry.served_versions();
                let unserved = UnservedRuns { handlers, served };
                registry.warn_unserved(&super::exec::run(
                    &mut *conn,
                    client.sql(),
                    None,
                    &unserved,
                )?);
            }
            super::exec::run(&mut *conn, client.sql(), None, &registry.heartbeat())?;
        }
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            registry,
            client,
            events: events_tx,
            signals: Signals::default(),
        });
        let settings = &self.settings;
        let (exit_tx, exit_rx) = crossbeam_channel::bounded::<()>(0);
        let (tasks_tx, tasks_rx) = crossbeam_channel::bounded(settings.workers);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let exit = exit_tx.clone();
            std::thread::Builder::new().name(name).spawn(move || {
                let _exit = exit; // dropped when the thread ends, however it ends
                body();
            })
        };
        let listener = {
            let shared = shared.clone();
            spawn(
                "sc-listener".to_owned(),
                Box::new(move || listener::run(shared, stop_rx, ready_tx)),
            )
            .map_err(Error::Spawn)?
        };
        match ready_rx.recv_timeout(settings.connect_timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Connect(
                    "the listener connection did not come up in time".to_owned(),
                ));
            }
        }
        let mut workers = Vec::with_capacity(settings.workers);
        for i in 0..settings.workers {
            let shared = shared.clone();
            let tasks = tasks_rx.clone();
            workers.push(
                spawn(
                    format!("sc-worker-{i}"),
                    Box::new(move || worker::run(shared, tasks)),
                )
                .map_err(Error::Spawn)?,
            );
        }
        let dispatcher = {
            let shared = shared.clone();
            let workers = settings.workers;
            let (safety_net, backoff) = (settings.safety_net, settings.backoff);
            spawn(
                "sc-dispatcher".to_owned(),
                Box::new(move || {
                    dispatcher::run(shared, events_rx, tasks_tx, workers, safety_net, backoff)
                }),
            )
            .map_err(Error::Spawn)?
        };
        drop(exit_tx);
        log::info!(
            "runtime {} started: schema {}, {} workers, handlers {:?}",
            shared.registry.instance,
            shared.client.schema(),
            settings.workers,
            shared.registry.names()
        );
        Ok(Runtime {
            shared,
            threads: Some(Threads {
                dispatcher,
                workers,
                listener,
                stop_listener: stop_tx,
                exited: exit_rx,
            }),
        })
    }
}
