//! The blocking runtime: worker threads, a dispatcher, and one `LISTEN` connection.
//!
//! ```text
//!   listener ──Hint(h)──┐                       ┌── Task ──> worker 1 ─┐
//!   workers ──Claimed/  ├──> events ──> dispatcher ── Task ──> worker 2 ─┼─> Postgres
//!            Finished/  │     (crossbeam)   (core::schedule) ...          │
//!            Hint(h)  ──┘                       └── Task ──> worker n ─┘
//! ```
//!
//! The dispatcher owns the scheduling state ([`crate::core::schedule`]) and sleeps until an
//! event arrives or its next deadline (a timer, a backoff, the safety-net sweep). Workers block
//! on the task channel. The listener blocks on its connection. An idle runtime therefore
//! sends nothing to the database except one sweep query per safety-net interval.

pub(crate) mod batch;
mod builder;
pub(crate) mod common;
mod dispatcher;
pub(crate) mod exec;
pub(crate) mod limits;
mod listener;
pub(crate) mod logs;
pub(crate) mod session;
#[cfg(all(unix, feature = "signals"))]
pub(crate) mod signals;
pub(crate) mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use postgres::GenericClient;
use serde::Serialize;

use crate::client::{Client, Source};
use crate::error::{Error, Result};
use crate::ids::RootId;
use crate::inspect::{HistoryEvent, TreeOutcome};
use crate::pool::Pool;
use crate::proto::Sweep;
use crate::saga::Blocking;
use crate::typed::AsTopic;

pub use builder::RuntimeBuilder;
pub use common::RuntimeStats;
use common::{Event, Registry, due_handlers};

/// Entry point: `Runtime::builder(url)...start()`.
///
/// A started runtime serves its subscribed handlers until [`shutdown`](Runtime::shutdown) or
/// drop. Several runtimes, in one process or many, can serve the same schema (and the same
/// handlers): row locks decide who runs what.
///
/// ```no_run
/// use std::time::Duration;
/// use structured_cooperation::{Runtime, Saga, StepResult};
///
/// # fn main() -> structured_cooperation::Result<()> {
/// let saga = Saga::builder("greeter")
///     .step(|_ctx, name: &String| -> StepResult {
///         println!("hello, {name}");
///         Ok(())
///     })
///     .build()?;
/// let runtime = Runtime::builder("postgres://postgres@127.0.0.1/postgres")
///     .subscribe("greetings", saga)
///     .start()?;
/// let root = runtime.launch("greetings", "world")?;
/// assert!(runtime.wait_for(root, Duration::from_secs(10))?.is_committed());
/// runtime.shutdown()
/// # }
/// ```
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Option<Threads>,
}

struct Threads {
    dispatcher: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    listener: JoinHandle<()>,
    stop_listener: Sender<()>,
    /// Disconnected once every runtime thread has exited.
    exited: Receiver<()>,
}

impl Runtime {
    /// A builder that connects to `url` (a `postgres://` URL or a `key=value` string).
    pub fn builder(url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::new(Source::Url(url.into()))
    }

    /// A builder that takes connections from an existing pool, which must allow at least
    /// `workers + 1` connections.
    pub fn builder_with_pool(pool: Pool) -> RuntimeBuilder {
        RuntimeBuilder::new(Source::Pool(pool))
    }

    /// The runtime's client (launch, inspect, wait).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// This runtime's instance id, part of the `handler[instance]` source of its failures.
    pub fn instance(&self) -> &str {
        &self.shared.registry.instance
    }

    /// Launches a root; see [`Client::launch`]. Handlers this runtime serves start at once,
    /// without waiting for the notification.
    pub fn launch<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        let root = self.shared.client.launch(topic.topic_name(), payload)?;
        self.hint_topic(topic.topic_name());
        Ok(root)
    }

    fn hint_topic(&self, topic: &str) {
        if let Some(handlers) = self.shared.registry.by_topic.get(topic) {
            for &h in handlers {
                let _ = self.shared.events.send(Event::Hint(h));
            }
        }
    }

    /// Cancels a tree or subtree; see [`Client::cancel`].
    pub fn cancel(
        &self,
        scope: impl Into<crate::Scope>,
        source: &str,
        reason: &str,
    ) -> Result<crate::Requested> {
        self.shared.client.cancel(scope, source, reason)
    }

    /// Launches a root with deadlines and context; see [`Client::launch_with`].
    pub fn launch_with<P: Serialize + ?Sized>(
        &self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<crate::EmitOptions>,
    ) -> Result<RootId> {
        let root = self
            .shared
            .client
            .launch_with(topic.topic_name(), payload, options)?;
        self.hint_topic(topic.topic_name());
        Ok(root)
    }

    /// Launches in the caller's transaction; see [`Client::launch_in`].
    pub fn launch_in<C: GenericClient, P: Serialize + ?Sized>(
        &self,
        client: &mut C,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.shared.client.launch_in(client, topic, payload)
    }

    /// Waits until the root's whole tree has finished or `timeout` passes; see
    /// [`Client::wait_for`]. Wakes as soon as this runtime finishes a root run.
    pub fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        let signals = &self.shared.signals;
        let mut seen = signals.lock().completions;
        self.shared.client.wait_for_with(root, timeout, |pause| {
            let guard = signals.lock();
            let (guard, _) = signals
                .cond
                .wait_timeout_while(guard, pause, |s| s.completions == seen)
                .unwrap_or_else(|p| p.into_inner());
            seen = guard.completions;
        })
    }

    /// The root's history in order; see [`Client::history`].
    pub fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        self.shared.client.history(root)
    }

    /// Waits until this runtime has no due work: nothing running, nothing hinted, and the
    /// database confirms that none of its handlers has a due run. Runs waiting for children
    /// that no one will run (an external handler, a stopped service) do not count as due.
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (names, served) = self.shared.registry.served_versions();
        loop {
            {
                let guard = self.shared.signals.lock();
                let remaining = deadline.saturating_duration_since(Instant::now());
                let (guard, _) = self
                    .shared
                    .signals
                    .cond
                    .wait_timeout_while(guard, remaining, |s| !s.quiescent)
                    .unwrap_or_else(|p| p.into_inner());
                if !guard.quiescent {
                    return Err(Error::NotIdle { waited: timeout });
                }
            }
            let mut conn = self.shared.client.conn()?;
            let sweep = Sweep {
                handlers: &names,
                served: &served,
            };
            let due = due_handlers(exec::run(
                &mut *conn,
                self.shared.client.sql(),
                None,
                &sweep,
            )?);
            if due.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotIdle { waited: timeout });
            }
            // Cleared before hinting, so the next wait sees the dispatcher's answer to them.
            self.shared.signals.set_quiescent(false);
            for h in due {
                let _ = self.shared.events.send(Event::Hint(h));
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> RuntimeStats {
        self.shared.registry.stats.snapshot()
    }

    /// Stops handing out work, lets running steps finish, and joins every thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop(None)
    }

    /// Like [`shutdown`](Self::shutdown), but gives up waiting after `timeout`. Steps still
    /// running then are abandoned: their transactions roll back when they end (or when the
    /// process exits) and another runtime picks their runs up.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Result<()> {
        self.stop(Some(timeout))
    }

    fn stop(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(threads) = self.threads.take() else {
            return Ok(());
        };
        self.shared.registry.stopping.store(true, Ordering::Relaxed);
        let _ = self.shared.events.send(Event::Shutdown);
        drop(threads.stop_listener);
        let all_exited = match timeout {
            None => {
                // Only disconnects once every thread dropped its end.
                let _ = threads.exited.recv();
                true
            }
            Some(t) => matches!(
                threads.exited.recv_timeout(t),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            ),
        };
        if !all_exited {
            return Err(Error::ShutdownFailed(format!(
                "threads still running after {timeout:?}; their steps are abandoned"
            )));
        }
        let mut problems = Vec::new();
        for (name, handle) in std::iter::once(("dispatcher", threads.dispatcher))
            .chain(std::iter::once(("listener", threads.listener)))
            .chain(threads.workers.into_iter().map(|w| ("worker", w)))
        {
            if handle.join().is_err() {
                problems.push(format!("the {name} thread panicked"));
            }
        }
        let instance = &self.shared.registry.instance;
        if let Err(e) = self.shared.client.retire(instance) {
            log::warn!("runtime {instance}: could not remove its heartbeat: {e}");
        }
        log::info!("runtime {instance} stopped");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::ShutdownFailed(problems.join("; ")))
        }
    }
}

/// Dropping a runtime shuts it down like [`Runtime::shutdown`]: it waits for running steps to
/// finish. Errors are logged.
impl Drop for Runtime {
    fn drop(&mut self) {
        if let Err(e) = self.stop(None) {
            log::error!("runtime {}: {e}", self.shared.registry.instance);
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

/// What every runtime thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry<Blocking>,
    pub(crate) client: Client,
    pub(crate) events: Sender<Event>,
    pub(crate) signals: Signals,
}

impl Shared {
    /// Wakes this runtime's handlers among `names` without waiting for a notification.
    pub(crate) fn hint_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for h in self.registry.local(names) {
            let _ = self.events.send(Event::Hint(h));
        }
    }
}

/// Conditions other threads wait on: root completions (for `wait_for`) and quiescence (for
/// `wait_idle`).
#[derive(Debug, Default)]
pub(crate) struct Signals {
    state: Mutex<SignalState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct SignalState {
    completions: u64,
    quiescent: bool,
}

impl Signals {
    fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn root_finished(&self) {
        self.lock().completions += 1;
        self.cond.notify_all();
    }

    pub(crate) fn set_quiescent(&self, quiescent: bool) {
        let mut state = self.lock();
        if state.quiescent != quiescent {
            state.quiescent = quiescent;
            drop(state);
            self.cond.notify_all();
        }
    }
}
