//! The tokio runtime's handle: launching, waiting, stopping. Its tasks (a dispatcher, a
//! listener, and one task per claim or sweep) are spawned on the caller's tokio runtime.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::GenericClient;

use super::builder::{RuntimeBuilder, Source};
use super::client::{Client, Pool};
use super::exec;
use super::worker::Conns;
use crate::client::Waiting;
use crate::error::{Error, Result};
use crate::ids::RootId;
use crate::inspect::{HistoryEvent, Requested, Scope, TreeOutcome};
use crate::options::EmitOptions;
use crate::proto::Sweep;
use crate::runtime::RuntimeStats;
use crate::runtime::common::{Event, Registry, due_handlers};
use crate::saga::Tokio;
use crate::typed::AsTopic;

/// Like [`crate::Runtime`], on tokio: tasks that run subscribed handlers' async steps.
///
/// Started with `Runtime::builder(url)...start().await` from within a tokio runtime, whose
/// threads then run the engine's tasks (a dispatcher, the `LISTEN` connection's task, and a
/// task per claim). It interoperates with blocking runtimes on the same schema: same
/// statements, same history, same failures.
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::StepResult;
/// use structured_cooperation::tokio::{Runtime, Saga};
///
/// # async fn example() -> structured_cooperation::Result<()> {
/// let saga = Saga::builder("greeter")
///     .step(|_ctx, name: &String| Box::pin(async move {
///         println!("hello, {name}");
///         StepResult::Ok(())
///     }))
///     .build()?;
/// let runtime = Runtime::builder("postgres://postgres@127.0.0.1/postgres")
///     .subscribe("greetings", saga)
///     .start()
///     .await?;
/// let root = runtime.launch("greetings", "world").await?;
/// assert!(runtime.wait_for(root, Duration::from_secs(10)).await?.is_committed());
/// runtime.shutdown().await
/// # }
/// ```
pub struct Runtime {
    pub(super) shared: Arc<Shared>,
    pub(super) tasks: Option<Tasks>,
}

pub(super) struct Tasks {
    pub(super) dispatcher: JoinHandle<()>,
    pub(super) listener: JoinHandle<()>,
    pub(super) stop_listener: watch::Sender<bool>,
}

/// What every task of a runtime shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry<Tokio>,
    pub(crate) client: Client,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Root runs finished by this runtime (for `wait_for`).
    pub(crate) completions: watch::Sender<u64>,
    /// Whether the dispatcher believes there is no due work (for `wait_idle`).
    pub(crate) quiescent: watch::Sender<bool>,
    /// The workers' connections.
    pub(crate) conns: Conns,
    /// Longest a step's user code may run.
    pub(crate) step_timeout: Option<Duration>,
    /// Where the listener connects, and how queries are cancelled.
    pub(crate) endpoint: super::client::Endpoint,
}

impl Shared {
    /// Wakes this runtime's handlers among `names` without waiting for a notification.
    pub(crate) fn hint_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for h in self.registry.local(names) {
            let _ = self.events.send(Event::Hint(h));
        }
    }

    pub(crate) fn root_finished(&self) {
        self.completions.send_modify(|n| *n += 1);
    }
}

impl Runtime {
    /// Like [`crate::Runtime::builder`].
    pub fn builder(url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::new(Source::Url(url.into()))
    }

    /// Like [`crate::Runtime::builder_with_pool`], over a deadpool-postgres pool. `url` is
    /// still needed: the runtime's `LISTEN` connection is one of its own, because a pooled
    /// connection never delivers notifications.
    pub fn builder_with_pool(pool: Pool, url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::new(Source::Pool(pool, url.into()))
    }

    /// The runtime's client (launch, inspect, wait).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// This runtime's instance id, part of the `handler[instance]` source of its failures.
    pub fn instance(&self) -> &str {
        &self.shared.registry.instance
    }

    /// Like [`crate::Runtime::launch`], but async.
    pub async fn launch<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.launch_with(topic, payload, EmitOptions::new()).await
    }

    /// Like [`crate::Runtime::launch_with`], but async.
    pub async fn launch_with<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        let name = topic.topic_name().to_owned();
        let root = self
            .shared
            .client
            .launch_with(topic, payload, options)
            .await?;
        self.hint_topic(&name);
        Ok(root)
    }

    fn hint_topic(&self, topic: &str) {
        if let Some(handlers) = self.shared.registry.by_topic.get(topic) {
            for &h in handlers {
                let _ = self.shared.events.send(Event::Hint(h));
            }
        }
    }

    /// Like [`crate::Runtime::launch_in`], but async.
    pub async fn launch_in<C: GenericClient + Sync, P: Serialize + ?Sized>(
        &self,
        client: &C,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.shared.client.launch_in(client, topic, payload).await
    }

    /// Like [`crate::Runtime::cancel`], but async.
    pub async fn cancel(
        &self,
        scope: impl Into<Scope>,
        source: &str,
        reason: &str,
    ) -> Result<Requested> {
        self.shared.client.cancel(scope, source, reason).await
    }

    /// Like [`crate::Runtime::wait_for`], but async. Wakes as soon as this runtime finishes a
    /// root run.
    pub async fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        let mut completions = self.shared.completions.subscribe();
        let mut waiting = Waiting::new(root, timeout);
        loop {
            completions.mark_unchanged();
            match waiting.after(self.shared.client.outcome(root).await?)? {
                ControlFlow::Break(outcome) => return Ok(outcome),
                ControlFlow::Continue(wait) => {
                    let _ = ::tokio::time::timeout(wait, completions.changed()).await;
                }
            }
        }
    }

    /// Like [`crate::Runtime::history`], but async.
    pub async fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        self.shared.client.history(root).await
    }

    /// Like [`crate::Runtime::wait_idle`], but async.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut quiescent = self.shared.quiescent.subscribe();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // The `Ref` that `wait_for` returns holds the channel's lock: drop it at once.
            let idle = matches!(
                ::tokio::time::timeout(remaining, quiescent.wait_for(|q| *q)).await,
                Ok(Ok(_))
            );
            if !idle {
                return Err(Error::NotIdle { waited: timeout });
            }
            let (names, served) = self.shared.registry.served_versions();
            let conn = self.shared.client.conn().await?;
            let sweep = Sweep {
                handlers: &names,
                served: &served,
            };
            let due =
                due_handlers(exec::run(&**conn, self.shared.client.sql(), None, &sweep).await?);
            if due.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotIdle { waited: timeout });
            }
            // Cleared before hinting, so the next wait sees the dispatcher's answer to them.
            self.shared.quiescent.send_replace(false);
            for h in due {
                let _ = self.shared.events.send(Event::Hint(h));
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> RuntimeStats {
        self.shared.registry.stats.snapshot()
    }

    /// Like [`crate::Runtime::shutdown`], but async: stops handing out work, lets running
    /// steps finish, and waits for every task.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop(None).await
    }

    /// Like [`crate::Runtime::shutdown_timeout`], but async. Steps still running after
    /// `timeout` are dropped: their transactions roll back (as after a crash at that point)
    /// and another runtime picks their runs up.
    pub async fn shutdown_timeout(mut self, timeout: Duration) -> Result<()> {
        self.stop(Some(timeout)).await
    }

    /// Like [`crate::Runtime::run_until_signal`], but async: serves until SIGTERM or SIGINT,
    /// then shuts down giving running steps up to `grace`. Needs the `signals` feature.
    ///
    /// ```no_run
    /// # async fn example(runtime: structured_cooperation::tokio::Runtime) -> structured_cooperation::Result<()> {
    /// runtime.run_until_signal(std::time::Duration::from_secs(20)).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(all(unix, feature = "signals"))]
    pub async fn run_until_signal(self, grace: Duration) -> Result<()> {
        use crate::runtime::signals::{name, termination_signals};
        let (mut signals, second) = termination_signals()?;
        let received = ::tokio::task::spawn_blocking(move || signals.forever().next())
            .await
            .ok()
            .flatten();
        second.store(true, Ordering::SeqCst);
        log::info!(
            "{}: shutting down; running steps have {grace:?} to finish",
            received.map_or("signals closed", name)
        );
        self.shutdown_timeout(grace).await
    }

    async fn stop(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(tasks) = self.tasks.take() else {
            return Ok(());
        };
        self.begin_stop(&tasks);
        let Tasks {
            mut dispatcher,
            listener,
            ..
        } = tasks;
        let finished = match timeout {
            None => Some((&mut dispatcher).await),
            Some(t) => ::tokio::time::timeout(t, &mut dispatcher).await.ok(),
        };
        let mut problems = Vec::new();
        match finished {
            None => {
                // Dropping the dispatcher drops its tasks: a crash at that point.
                dispatcher.abort();
                problems.push(format!(
                    "tasks still running after {timeout:?}; their steps are abandoned"
                ));
            }
            Some(Err(e)) if e.is_panic() => problems.push("the dispatcher panicked".to_owned()),
            Some(_) => {}
        }
        if let Err(e) = listener.await {
            if e.is_panic() {
                problems.push("the listener panicked".to_owned());
            }
        }
        let instance = &self.shared.registry.instance;
        if let Err(e) = self.shared.client.retire(instance).await {
            log::warn!("runtime {instance}: could not remove its heartbeat: {e}");
        }
        log::info!("runtime {instance} stopped");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::ShutdownFailed(problems.join("; ")))
        }
    }

    fn begin_stop(&self, tasks: &Tasks) {
        self.shared.registry.stopping.store(true, Ordering::Relaxed);
        let _ = self.shared.events.send(Event::Shutdown);
        let _ = tasks.stop_listener.send(true);
    }
}

/// Dropping a runtime asks it to stop, like [`Runtime::shutdown`], but cannot wait: running
/// steps finish in the background on the tokio runtime. Call `shutdown().await` to wait.
impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            self.begin_stop(&tasks);
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("instance", &self.shared.registry.instance)
            .field("schema", &self.shared.client.schema())
            .field("handlers", &self.shared.registry.names())
            .finish()
    }
}
