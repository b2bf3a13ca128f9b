//! Configuring and starting a runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use super::{
    Counters, HandlerEntry, Runtime, Shared, Signals, Threads, dispatcher, listener, worker,
};
use crate::client::{Client, DEFAULT_SCHEMA, Source, build_pool};
use crate::core::schedule::Backoff;
use crate::error::{Error, Result};
use crate::proto::Register;
use crate::saga::Saga;
use crate::typed::{Action, Handler};
use crate::validate;

/// Builds and starts a [`Runtime`]. Every setting documents its default.
#[derive(Debug)]
pub struct RuntimeBuilder {
    source: Source,
    schema: String,
    workers: usize,
    pool_size: Option<u32>,
    safety_net: Duration,
    connect_timeout: Duration,
    backoff: Backoff,
    max_json_bytes: usize,
    subscriptions: Vec<Subscription>,
    /// The first error met while building a typed handler's saga (reported by `start`).
    deferred: Option<Error>,
}

#[derive(Debug)]
struct Subscription {
    topic: String,
    saga: Saga,
    concurrency: Option<usize>,
}

impl RuntimeBuilder {
    pub(super) fn new(source: Source) -> RuntimeBuilder {
        RuntimeBuilder {
            source,
            schema: DEFAULT_SCHEMA.to_owned(),
            workers: 4,
            pool_size: None,
            safety_net: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_json_bytes: validate::DEFAULT_MAX_JSON_BYTES,
            subscriptions: Vec::new(),
            deferred: None,
        }
    }

    /// Worker threads, i.e. how many steps this runtime runs at once. Defaults to 4.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Connections in the pool when the runtime builds it. Each worker keeps one connection
    /// (with its prepared statements) and the listener keeps one, so this must be at least
    /// `workers + 1`. Defaults to `workers + 3`. Ignored with
    /// [`Runtime::builder_with_pool`], whose pool must be at least as large.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// The schema holding the engine's tables; created and migrated at start. Lowercase
    /// letters, digits and `_`, at most 48 bytes. Defaults to `scoop`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How often the runtime asks the database for due work even when no notification
    /// arrived. Correctness never depends on notifications, only latency does: this bounds
    /// the delay after a lost one. Defaults to 30 seconds.
    pub fn safety_net_interval(mut self, interval: Duration) -> Self {
        self.safety_net = interval;
        self
    }

    /// How long to wait for a database connection before failing. Defaults to 10 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait before retrying after an infrastructure error (a lost connection, a
    /// deadlock or serialization failure reported by PostgreSQL): `base` after the first
    /// consecutive error, doubling up to `max`, each delay shortened by a random part of up to
    /// half. Such errors never fail a run: it is retried from its last committed state (so step
    /// code can run more than once; its database effects commit once). They are logged and
    /// counted in [`RuntimeStats::infra_errors`](crate::RuntimeStats::infra_errors). Defaults to 50 ms and 5 s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff { base, max };
        self
    }

    /// The largest payload, context or return value accepted, in bytes of JSON. Defaults to
    /// 2 MiB. Step code that emits or stores anything larger gets [`Error::TooLarge`] (naming
    /// what was too large) before anything is written.
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.max_json_bytes = limit;
        self
    }

    /// Subscribes a typed [`Handler`] in one call: a saga named [`Handler::NAME`], built by
    /// [`Handler::saga`], on [`Handler::TOPIC`]. A saga that does not build is reported by
    /// [`start`](Self::start).
    pub fn handler<H: Handler>(self, handler: H) -> Self {
        let saga = handler.saga(Saga::builder(H::NAME)).build();
        self.subscribe_built(H::TOPIC.name(), saga)
    }

    /// Subscribes a typed [`Action`] in one call, like [`handler`](Self::handler).
    pub fn action<A: Action>(self, action: A) -> Self {
        let saga = action.saga(Saga::builder(A::NAME)).build();
        self.subscribe_built(A::TOPIC.name(), saga)
    }

    fn subscribe_built(mut self, topic: &str, saga: Result<Saga>) -> Self {
        match saga {
            Ok(saga) => self.subscribe(topic, saga),
            Err(e) => {
                self.deferred.get_or_insert(e);
                self
            }
        }
    }

    /// Subscribes `saga` to `topic`; up to `workers` of its runs may execute at once.
    pub fn subscribe(mut self, topic: impl Into<String>, saga: Saga) -> Self {
        self.subscriptions.push(Subscription {
            topic: topic.into(),
            saga,
            concurrency: None,
        });
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
        self.subscriptions.push(Subscription {
            topic: topic.into(),
            saga,
            concurrency: Some(concurrency),
        });
        self
    }

    fn validate(&mut self) -> Result<()> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        validate::schema(&self.schema)?;
        if self.workers == 0 {
            return Err(Error::Config("workers must be >= 1".to_owned()));
        }
        if self.safety_net.is_zero() {
            return Err(Error::Config(
                "the safety-net interval must be positive".to_owned(),
            ));
        }
        if self.backoff.base.is_zero() || self.backoff.max < self.backoff.base {
            return Err(Error::Config(
                "retry backoff needs 0 < base <= max".to_owned(),
            ));
        }
        let mut names = HashMap::new();
        for sub in &self.subscriptions {
            validate::name("topic", &sub.topic)?;
            if sub.concurrency == Some(0) {
                return Err(Error::Config(format!(
                    "concurrency for handler {:?} must be >= 1",
                    sub.saga.name()
                )));
            }
            if let Some(topic) = names.insert(sub.saga.name(), &sub.topic) {
                return Err(Error::Config(format!(
                    "handler {:?} is subscribed twice (to {topic:?} and {:?}); \
                     a handler name identifies one saga",
                    sub.saga.name(),
                    sub.topic
                )));
            }
        }
        Ok(())
    }

    /// Connects, migrates the schema, registers the subscriptions in the durable topology and
    /// starts the threads. Fails with a clear error, within the connect timeout, if the
    /// database cannot be reached.
    pub fn start(mut self) -> Result<Runtime> {
        self.validate()?;
        let needed = self.workers as u32 + 1;
        let pool = match self.source {
            Source::Url(ref url) => {
                let size = self.pool_size.unwrap_or(needed + 2);
                if size < needed {
                    return Err(Error::Config(format!(
                        "pool size {size} is too small for {} workers: each worker and the \
                         listener keep a connection, so at least {needed} are needed",
                        self.workers
                    )));
                }
                build_pool(url, size, self.connect_timeout)?
            }
            Source::Pool(ref pool) => {
                if pool.max_size() < needed {
                    return Err(Error::Config(format!(
                        "the pool's max size {} is too small for {} workers: at least {needed} \
                         connections are needed",
                        pool.max_size(),
                        self.workers
                    )));
                }
                pool.clone()
            }
        };
        let client = Client::new(pool, self.schema.clone(), self.max_json_bytes)?;
        let instance = crate::ids::new_uuid().to_string();
        let handlers: Vec<HandlerEntry> = self
            .subscriptions
            .into_iter()
            .map(|sub| HandlerEntry {
                last_notified: AtomicU64::new(0),
                name: Arc::from(sub.saga.name()),
                source: format!("{}[{instance}]", sub.saga.name()),
                concurrency: sub.concurrency.unwrap_or(self.workers).min(self.workers),
                topic: sub.topic,
                saga: sub.saga,
            })
            .collect();
        {
            let pairs: Vec<(&str, &str)> = handlers
                .iter()
                .map(|h| (h.topic.as_str(), &*h.name))
                .collect();
            if !pairs.is_empty() {
                let mut conn = client.conn()?;
                let register = Register::new(&pairs, "runtime");
                super::exec::run(&mut *conn, client.sql(), None, &register)?;
            }
        }
        let by_name = handlers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.to_string(), i))
            .collect();
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, h) in handlers.iter().enumerate() {
            by_topic.entry(h.topic.clone()).or_default().push(i);
        }
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            client,
            instance,
            handlers,
            by_name,
            by_topic,
            events: events_tx,
            stats: Counters::default(),
            signals: Signals::default(),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        });
        let (exit_tx, exit_rx) = crossbeam_channel::bounded::<()>(0);
        let (tasks_tx, tasks_rx) = crossbeam_channel::bounded(self.workers);
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
        match ready_rx.recv_timeout(self.connect_timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Connect(
                    "the listener connection did not come up in time".to_owned(),
                ));
            }
        }
        let mut workers = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
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
            let workers = self.workers;
            let (safety_net, backoff) = (self.safety_net, self.backoff);
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
            shared.instance,
            shared.client.schema(),
            self.workers,
            shared.handlers.iter().map(|h| &*h.name).collect::<Vec<_>>()
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
