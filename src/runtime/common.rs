//! What both runtimes share beyond the core: their settings and their validation, the
//! registry of subscribed handlers with its notification quiet window, the counters, the
//! dispatcher's events, and what an attempt's report asks of a runtime. None of it does I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::VersionShape;
use crate::core::attempt::{Outcome, Report};
use crate::core::schedule::{Backoff, ClaimResult, Jitter, Scheduler, SweepEntry};
use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::saga::{Flavor, SagaOf};
use crate::validate;

/// Counters of a runtime's activity since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Step transactions committed (user steps and bookkeeping-only steps such as commits).
    pub steps: u64,
    /// User steps that failed (error or panic) and were recorded as failures.
    pub step_failures: u64,
    /// Claims that found nothing due.
    pub empty_claims: u64,
    /// Attempts that ended in an infrastructure error (lost connection, deadlock, ...) and
    /// were retried from the last committed state.
    pub infra_errors: u64,
    /// Safety-net sweeps.
    pub sweeps: u64,
    /// Times the `LISTEN` connection was re-established.
    pub listener_reconnects: u64,
    /// Steps whose results were discarded because the run was cancelled (or missed a deadline)
    /// while they ran.
    pub gave_up_after_step: u64,
    /// Attempts of user code that failed transiently and were scheduled to run again (see
    /// [`RetryPolicy`](crate::RetryPolicy)).
    pub retries: u64,
    /// Runs whose own data the database refused in the engine's statements (a data
    /// exception): each fails with that error instead of being retried.
    pub data_errors: u64,
    /// Messages emitted by this runtime's steps on topics that no handler was registered
    /// for: nobody ran them and their emitters did not wait (each is logged at warn and
    /// marked `UNHANDLED` in its root's history).
    pub unhandled: u64,
    /// Times this runtime vacuumed the `runs` table itself because autovacuum does not (see
    /// [`RuntimeBuilder::vacuum_runs_after`](crate::RuntimeBuilder::vacuum_runs_after)).
    pub vacuums: u64,
    /// Runnable runs of this runtime's handlers written by saga versions it does not serve,
    /// as its last sweep counted them: they wait for a runtime that serves their version
    /// (see [`RuntimeBuilder::also_serve`](crate::RuntimeBuilder::also_serve)).
    pub unserved_runs: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) steps: AtomicU64,
    pub(crate) step_failures: AtomicU64,
    pub(crate) empty_claims: AtomicU64,
    pub(crate) infra_errors: AtomicU64,
    pub(crate) sweeps: AtomicU64,
    pub(crate) listener_reconnects: AtomicU64,
    pub(crate) gave_up_after_step: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) data_errors: AtomicU64,
    pub(crate) unhandled: AtomicU64,
    pub(crate) vacuums: AtomicU64,
    pub(crate) unserved_runs: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RuntimeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuntimeStats {
            steps: get(&self.steps),
            step_failures: get(&self.step_failures),
            empty_claims: get(&self.empty_claims),
            infra_errors: get(&self.infra_errors),
            sweeps: get(&self.sweeps),
            listener_reconnects: get(&self.listener_reconnects),
            gave_up_after_step: get(&self.gave_up_after_step),
            retries: get(&self.retries),
            data_errors: get(&self.data_errors),
            unhandled: get(&self.unhandled),
            vacuums: get(&self.vacuums),
            unserved_runs: get(&self.unserved_runs),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A subscription as the builder collects it.
#[derive(Debug)]
pub(crate) struct Subscription<X: Flavor> {
    pub(crate) topic: String,
    pub(crate) saga: SagaOf<X>,
    pub(crate) concurrency: Option<usize>,
}

/// What both runtime builders configure, with the same defaults and the same rules.
#[derive(Debug)]
pub(crate) struct Settings<X: Flavor> {
    pub(crate) schema: String,
    pub(crate) workers: usize,
    pub(crate) pool_size: Option<u32>,
    pub(crate) safety_net: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) max_json_bytes: usize,
    pub(crate) strict_topics: bool,
    pub(crate) migrate: bool,
    /// Prune finished trees this old at every sweep.
    pub(crate) prune_after: Option<Duration>,
    /// Steps per commit when a worker drains a handler (see `runtime::batch`).
    pub(crate) steps_per_commit: usize,
    /// Vacuum `runs` at a sweep when autovacuum does not and this many dead versions piled up.
    pub(crate) vacuum_after: Option<u64>,
    pub(crate) subscriptions: Vec<Subscription<X>>,
    /// Older versions of subscribed handlers, served beside them: (topic, saga).
    pub(crate) older: Vec<(String, SagaOf<X>)>,
    /// The first error met while building a typed handler's saga (reported by `start`).
    pub(crate) deferred: Option<Error>,
}

impl<X: Flavor> Settings<X> {
    pub(crate) fn new() -> Settings<X> {
        Settings {
            schema: crate::client::DEFAULT_SCHEMA.to_owned(),
            workers: 4,
            pool_size: None,
            safety_net: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_json_bytes: validate::DEFAULT_MAX_JSON_BYTES,
            strict_topics: false,
            migrate: true,
            prune_after: None,
            steps_per_commit: 1,
            vacuum_after: Some(DEFAULT_VACUUM_AFTER),
            subscriptions: Vec::new(),
            older: Vec::new(),
            deferred: None,
        }
    }

    pub(crate) fn subscribe(&mut self, topic: String, saga: SagaOf<X>, concurrency: Option<usize>) {
        self.subscriptions.push(Subscription {
            topic,
            saga,
            concurrency,
        });
    }

    /// Subscribes a typed handler's saga, or keeps its error for `start`.
    pub(crate) fn subscribe_built(&mut self, topic: &str, saga: Result<SagaOf<X>>) {
        match saga {
            Ok(saga) => self.subscribe(topic.to_owned(), saga, None),
            Err(e) => {
                self.deferred.get_or_insert(e);
            }
        }
    }

    pub(crate) fn validate(&mut self) -> Result<()> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        validate::schema(&self.schema)?;
        if !(1..=MAX_STEPS_PER_COMMIT).contains(&self.steps_per_commit) {
            return Err(Error::Config(format!(
                "steps_per_commit must be between 1 and {MAX_STEPS_PER_COMMIT}, not {}",
                self.steps_per_commit
            )));
        }
        if self.workers == 0 {
            return Err(Error::Config("workers must be >= 1".to_owned()));
        }
        if self.vacuum_after == Some(0) {
            return Err(Error::Config(
                "vacuum_runs_after needs a positive number of dead versions (None turns it off)"
                    .to_owned(),
            ));
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
        self.validate_older()
    }

    /// Older versions must belong to a subscribed handler, on its topic, and every version of
    /// a handler must differ.
    fn validate_older(&self) -> Result<()> {
        for (topic, old) in &self.older {
            validate::name("topic", topic)?;
            let Some(sub) = (self.subscriptions.iter()).find(|s| s.saga.name() == old.name())
            else {
                return Err(Error::Config(format!(
                    "also_serve: handler {:?} is not subscribed; subscribe its newest version, \
                     then add older ones beside it",
                    old.name()
                )));
            };
            if &sub.topic != topic {
                return Err(Error::Config(format!(
                    "also_serve: handler {:?} is subscribed to {:?}, not {topic:?}",
                    old.name(),
                    sub.topic
                )));
            }
        }
        for sub in &self.subscriptions {
            let mut seen = HashSet::from([sub.saga.version()]);
            for (_, old) in self
                .older
                .iter()
                .filter(|(_, o)| o.name() == sub.saga.name())
            {
                if !seen.insert(old.version()) {
                    return Err(Error::Config(format!(
                        "handler {:?} serves version {:?} twice (two sagas of the same shape, \
                         or the same explicit version)",
                        old.name(),
                        old.version()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The pool size when the runtime builds its pool: `needed` connections at least.
    pub(crate) fn pool_size_for(&self, needed: u32) -> Result<u32> {
        let size = self.pool_size.unwrap_or(needed + 2);
        if size < needed {
            return Err(Error::Config(format!(
                "pool size {size} is too small for {} workers: each worker and the \
                 listener keep a connection, so at least {needed} are needed",
                self.workers
            )));
        }
        Ok(size)
    }

    /// The registry of a runtime of `edition` (`blocking`, `tokio`) with a new instance id.
    pub(crate) fn registry(&mut self, edition: &'static str) -> Registry<X> {
        let instance = crate::ids::new_uuid().to_string();
        let workers = self.workers;
        let mut older = std::mem::take(&mut self.older);
        let handlers: Vec<HandlerEntry<X>> = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .map(|sub| {
                let (mine, rest) = std::mem::take(&mut older)
                    .into_iter()
                    .partition(|(_, o)| o.name() == sub.saga.name());
                older = rest;
                let older: Vec<SagaOf<X>> = mine.into_iter().map(|(_, o)| o).collect();
                let versions: Vec<VersionShape> = std::iter::once(&sub.saga)
                    .chain(&older)
                    .map(|s| VersionShape {
                        version: s.version().to_owned(),
                        steps: s.shapes().to_vec(),
                    })
                    .collect();
                let served = (versions.iter().map(|v| v.version.as_str()))
                    .collect::<Vec<_>>()
                    .join(",");
                HandlerEntry {
                    last_notified: AtomicU64::new(0),
                    owed: Mutex::new(Vec::new()),
                    name: Arc::from(sub.saga.name()),
                    source: format!("{}[{instance}]", sub.saga.name()),
                    concurrency: sub.concurrency.unwrap_or(workers).min(workers),
                    topic: sub.topic,
                    saga: sub.saga,
                    older,
                    versions,
                    served,
                }
            })
            .collect();
        let by_name = handlers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.to_string(), i))
            .collect();
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, h) in handlers.iter().enumerate() {
            by_topic.entry(h.topic.clone()).or_default().push(i);
        }
        Registry {
            instance,
            handlers,
            by_name,
            by_topic,
            stats: Counters::default(),
            started: Instant::now(),
            backoff: self.backoff,
            strict_topics: self.strict_topics,
            prune_after: self.prune_after,
            vacuum_after: self.vacuum_after,
            steps_per_commit: self.steps_per_commit,
            stopping: AtomicBool::new(false),
            alive: Alive {
                host: host_name(),
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                edition,
                workers: i32::try_from(self.workers).unwrap_or(i32::MAX),
                interval_ms: i64::try_from(self.safety_net.as_millis()).unwrap_or(i64::MAX),
            },
        }
    }

    /// What the runtime's client is set up with: no migration there (the runtime migrates,
    /// or checks the version, itself).
    pub(crate) fn client_options(&self) -> crate::client::Options {
        crate::client::Options {
            max_json_bytes: self.max_json_bytes,
            strict_topics: self.strict_topics,
            migrate: self.migrate,
        }
    }
}

/// One subscribed handler.
#[derive(Debug)]
pub(crate) struct HandlerEntry<X: Flavor> {
    pub(crate) name: Arc<str>,
    pub(crate) topic: String,
    /// The newest version: new runs of the handler get it.
    pub(crate) saga: SagaOf<X>,
    /// Older versions served beside it (to drain their runs and roll back their trees).
    pub(crate) older: Vec<SagaOf<X>>,
    /// Every served version's steps, newest first, for the attempt machine.
    pub(crate) versions: Vec<VersionShape>,
    /// The served versions, comma-separated, for the claim.
    pub(crate) served: String,
    /// `handler[instance]`, the source of failures raised by its steps.
    pub(crate) source: String,
    pub(crate) concurrency: usize,
    /// When this runtime last notified other runtimes about the handler's new runs
    /// (milliseconds since start, plus one; 0 = never).
    pub(crate) last_notified: AtomicU64,
    /// Runs of this handler whose infrastructure failure could not be recorded on them when
    /// it happened (the connection was gone), with the error; the next attempt records them.
    owed: Mutex<Vec<(RunId, String)>>,
}

impl<X: Flavor> HandlerEntry<X> {
    /// The saga of `version` (the newest for a run without one, or an unknown version, which
    /// the claim never returns).
    pub(crate) fn saga_for(&self, version: Option<&str>) -> &SagaOf<X> {
        version
            .and_then(|v| self.older.iter().find(|s| s.version() == v))
            .unwrap_or(&self.saga)
    }

    /// What the attempt machine knows of the handler.
    pub(crate) fn attempt_ref(&self) -> crate::core::attempt::HandlerRef<'_> {
        crate::core::attempt::HandlerRef {
            name: &self.name,
            source: &self.source,
            steps: self.saga.shapes(),
            versions: &self.versions,
            served: &self.served,
        }
    }

    /// Takes the failures owed to runs of this handler (see [`Attempt::owing`]).
    ///
    /// [`Attempt::owing`]: crate::core::attempt::Attempt::owing
    pub(crate) fn take_owed(&self) -> Vec<(RunId, String)> {
        std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether failures are owed to runs of this handler: then a worker's next attempt starts
    /// afresh (recording them first) rather than from a claim its commit made, which could
    /// pick the very run whose failure is owed before it is pushed back.
    pub(crate) fn owes(&self) -> bool {
        !self
            .owed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// While a handler served here was notified this recently, further notifications for it are
/// skipped: this runtime wakes it in-process, and other runtimes serving it are already awake
/// and draining. Notifying commits serialize on a lock that PostgreSQL holds through the
/// commit, so notifying every emission would cost throughput for nothing.
const NOTIFY_QUIET_WINDOW: Duration = Duration::from_millis(100);

/// The most steps one commit may carry: each runs under its own savepoint, and a backend
/// keeps at most 64 subtransactions in its shared cache before every snapshot in the
/// database gets slower (subtransaction overflow).
pub(crate) const MAX_STEPS_PER_COMMIT: usize = 32;

/// A runtime's handlers and counters, whichever runtime drives them.
#[derive(Debug)]
pub(crate) struct Registry<X: Flavor> {
    pub(crate) instance: String,
    pub(crate) handlers: Vec<HandlerEntry<X>>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) by_topic: HashMap<String, Vec<usize>>,
    pub(crate) stats: Counters,
    pub(crate) started: Instant,
    /// How far a run is pushed back after infrastructure errors (and the scheduler backs off).
    pub(crate) backoff: Backoff,
    /// Whether steps' emissions on topics without handlers fail the step.
    pub(crate) strict_topics: bool,
    /// Finished trees this old are pruned at every sweep.
    pub(crate) prune_after: Option<Duration>,
    /// Dead versions of `runs` after which a sweep vacuums it when autovacuum does not.
    pub(crate) vacuum_after: Option<u64>,
    /// Steps per commit when a worker drains a handler.
    pub(crate) steps_per_commit: usize,
    /// Set when shutdown begins, so workers stop draining early.
    pub(crate) stopping: AtomicBool,
    /// What its heartbeat records.
    alive: Alive,
}

impl<X: Flavor> Registry<X> {
    /// The handlers to register, with every version they serve (newest first).
    pub(crate) fn served(&self) -> Vec<crate::proto::Served<'_>> {
        self.handlers
            .iter()
            .map(|h| crate::proto::Served {
                topic: &h.topic,
                handler: &h.name,
                versions: std::iter::once(&h.saga)
                    .chain(&h.older)
                    .map(|s| (s.version(), s.shape_json()))
                    .collect(),
            })
            .collect()
    }

    /// The handler names and their served versions (comma-separated), in parallel.
    pub(crate) fn served_versions(&self) -> (Vec<&str>, Vec<&str>) {
        self.handlers
            .iter()
            .map(|h| (&*h.name, h.served.as_str()))
            .unzip()
    }

    /// Records what a sweep counted of runs waiting for versions this runtime does not serve.
    pub(crate) fn count_unserved(&self, rows: &[crate::proto::UnservedRow]) {
        let runs = rows
            .iter()
            .map(|r| u64::try_from(r.runs).unwrap_or(0))
            .sum();
        self.stats.unserved_runs.store(runs, Ordering::Relaxed);
    }

    /// Logs, at start, the runnable runs of this runtime's handlers that were written by
    /// versions it does not serve: they wait for a runtime that serves them.
    pub(crate) fn warn_unserved(&self, rows: &[crate::proto::UnservedRow]) {
        for row in rows {
            log::warn!(
                "handler {:?}: {} runnable runs were written by version {:?}, which this \
                 runtime does not serve (it serves {}); they wait for a runtime that does \
                 (serve it beside the new one with also_serve, or migrate them)",
                row.handler,
                row.runs,
                row.version,
                self.handlers
                    .iter()
                    .find(|h| *h.name == *row.handler)
                    .map_or("", |h| h.served.as_str())
            );
        }
    }
}

/// Fails a start whose saga versions are recorded with other shapes.
pub(crate) fn refuse_conflicts(conflicts: &[(String, String)]) -> Result<()> {
    match conflicts.first() {
        None => Ok(()),
        Some((handler, version)) => Err(Error::Config(format!(
            "version {version:?} of handler {handler:?} is already recorded with another shape \
             (steps, their kinds or handlers differ): give the changed saga a new version, or \
             none to use its fingerprint; nothing was registered"
        ))),
    }
}

/// What a runtime's heartbeat records about it besides its instance and handlers.
#[derive(Debug)]
struct Alive {
    host: String,
    pid: i32,
    edition: &'static str,
    workers: i32,
    /// The safety-net interval: heartbeats come with sweeps.
    interval_ms: i64,
}

/// The machine's name, for the heartbeat (`unknown` where it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl<X: Flavor> Registry<X> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// The statement that records this runtime as alive (at start and with every sweep).
    pub(crate) fn heartbeat(&self) -> crate::proto::Heartbeat<'_> {
        crate::proto::Heartbeat {
            instance: &self.instance,
            host: &self.alive.host,
            pid: self.alive.pid,
            edition: self.alive.edition,
            handlers: self.names(),
            workers: self.alive.workers,
            interval_ms: self.alive.interval_ms,
        }
    }

    /// The handlers' names, in order.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.handlers.iter().map(|h| &*h.name).collect()
    }

    /// Local handlers notified within the quiet window: don't notify them again yet.
    pub(crate) fn quiet_handlers(&self) -> Vec<&str> {
        let now = self.now_ms();
        let window = NOTIFY_QUIET_WINDOW.as_millis() as u64;
        self.handlers
            .iter()
            .filter(|h| {
                let last = h.last_notified.load(Ordering::Relaxed);
                last != 0 && now.saturating_sub(last) < window
            })
            .map(|h| &*h.name)
            .collect()
    }

    /// Records that the local handlers among `woken`, except those in `quiet`, were notified.
    pub(crate) fn record_notified<'a>(
        &self,
        woken: impl IntoIterator<Item = &'a str>,
        quiet: &[&str],
    ) {
        let now = self.now_ms();
        for name in woken {
            if !quiet.contains(&name) {
                if let Some(&h) = self.by_name.get(name) {
                    self.handlers[h].last_notified.store(now, Ordering::Relaxed);
                }
            }
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The local handlers among `names`.
    pub(crate) fn local<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        names
            .into_iter()
            .filter_map(|name| self.by_name.get(name).copied())
            .collect()
    }

    /// Counts what an attempt's report says, and tells what the runtime must do about it.
    /// `h` is the handler the attempt was for; `quiet` the handlers it did not notify.
    pub(crate) fn settle(&self, h: usize, report: Report, quiet: &[&str]) -> Settled {
        let stats = &self.stats;
        stats
            .step_failures
            .fetch_add(u64::from(report.step_failures), Ordering::Relaxed);
        if report.gave_up_after_step {
            bump(&stats.gave_up_after_step);
        }
        stats
            .retries
            .fetch_add(u64::from(report.retried), Ordering::Relaxed);
        if report.poisoned {
            bump(&stats.data_errors);
        }
        if !report.unrecorded.is_empty() {
            let mut owed = self.handlers[h]
                .owed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            owed.extend(report.unrecorded);
        }
        if let Some(news) = &report.news {
            super::logs::run_news(&self.handlers[h].name, news);
        }
        for u in &report.unhandled {
            bump(&stats.unhandled);
            let handler = &*self.handlers[h].name;
            let step = u.step.as_deref().unwrap_or("-");
            log::warn!(
                target: "structured_cooperation::unhandled",
                topic = u.topic.as_str(), handler = handler, step = step, run:% = u.run;
                "{handler}: step {step:?} of run {} emitted on topic {:?}, which no handler is \
                 registered for: nothing runs it and the run does not wait for it",
                u.run,
                u.topic
            );
        }
        if let Some((run, postponed)) = report.postponed {
            log::warn!(
                "{}: run {run} failed {} times in a row on infrastructure errors; next try in {:?}",
                self.handlers[h].name,
                postponed.failures,
                postponed.wait
            );
        }
        let mut settled = Settled {
            outcome: report.outcome,
            hints: Vec::new(),
            root_finished: false,
            release_failed: false,
            sweep_soon: false,
        };
        if report.committed {
            let steps = stats.steps.fetch_add(1, Ordering::Relaxed) + 1;
            // A sweep checks whether `runs` needs a vacuum; between the safety net's sweeps,
            // ask for one every time this runtime's own steps could have left enough dead
            // versions for it.
            settled.sweep_soon = self.vacuum_after.is_some_and(|n| steps % n.max(1) == 0);
            let woken = report.woken.iter().map(String::as_str);
            self.record_notified(woken.clone(), quiet);
            // Wake local handlers now rather than after the notification's round trip. The
            // worker goes on claiming for its own handler, so it needs no hint.
            settled.hints = self.local(woken);
            settled.hints.retain(|&w| w != h);
            settled.root_finished = report.root_finished;
        }
        if let Some((run, e)) = report.release_error {
            // The run stays marked `release_pending`; a sweep finishes the job.
            bump(&stats.infra_errors);
            log::warn!("releasing the parent of run {run}: {e}; a sweep will retry");
            settled.release_failed = true;
        }
        if let Outcome::Empty(_) = settled.outcome {
            bump(&stats.empty_claims);
        }
        settled
    }

    /// Counts and logs an infrastructure error.
    pub(crate) fn infra_error(&self, e: &Error, what: &str) {
        bump(&self.stats.infra_errors);
        if e.is_transient() {
            log::warn!("{what}: {e}; retrying from the last committed state");
        } else {
            log::error!("{what}: {e}; retrying from the last committed state");
        }
    }
}

/// Dead versions of `runs` after which a runtime vacuums it when autovacuum does not: the
/// threshold migration 7 gives autovacuum.
pub(crate) const DEFAULT_VACUUM_AFTER: u64 = 10_000;

/// How long one sweep may spend pruning (batch after batch) before it yields to the work.
pub(crate) const PRUNE_BUDGET: Duration = Duration::from_secs(1);

/// One batch of a runtime's automatic pruning of `schema`: trees finished more than `keep`
/// ago, under an advisory lock so that one runtime at a time prunes.
pub(crate) fn auto_prune_batch(keep: Duration, schema: &str) -> crate::proto::PruneBatch {
    crate::proto::PruneBatch {
        before: std::time::SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(std::time::UNIX_EPOCH),
        limit: crate::listing::PRUNE_BATCH,
        lock: Some(format!("structured-cooperation prune {schema}")),
    }
}

/// The check a sweep runs to see whether `runs` needs the runtime's vacuum (`None`: the
/// runtime never vacuums).
pub(crate) fn vacuum_due<X: Flavor>(registry: &Registry<X>) -> Option<crate::proto::VacuumDue> {
    registry.vacuum_after.map(|n| crate::proto::VacuumDue {
        dead: i64::try_from(n).unwrap_or(i64::MAX),
    })
}

/// Counts and logs a vacuum the sweep ran over `dead` dead versions.
pub(crate) fn vacuumed<X: Flavor>(registry: &Registry<X>, dead: i64) {
    bump(&registry.stats.vacuums);
    log::info!("sweep: vacuumed the runs table ({dead} dead row versions; autovacuum is off)");
}

/// What a settled report asks of the runtime.
#[derive(Debug)]
pub(crate) struct Settled {
    pub(crate) outcome: Outcome,
    /// Local handlers to hint.
    pub(crate) hints: Vec<usize>,
    /// A top-level run finished: wake those waiting for roots.
    pub(crate) root_finished: bool,
    /// The release after the commit failed: clear the connection's statement cache and ask
    /// for a sweep.
    pub(crate) release_failed: bool,
    /// A sweep is worth running soon (to see whether `runs` needs a vacuum).
    pub(crate) sweep_soon: bool,
}

/// What the dispatcher hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// Handler `h` may have due work.
    Hint(usize),
    /// A probe of handler `h` claimed a run.
    Claimed(usize),
    /// A claim task of handler `h` ended.
    Finished {
        handler: usize,
        claimed: bool,
        result: ClaimResult,
    },
    /// A sweep ended (`None`: it failed).
    SweepDone(Option<Vec<SweepEntry>>),
    /// Notifications may have been lost: sweep soon.
    SweepRequested,
    /// Stop handing out work and exit once running tasks are done.
    Shutdown,
}

/// Feeds one event to the scheduler.
pub(crate) fn handle(sched: &mut Scheduler, event: Event, now: Instant, jitter: &mut Jitter) {
    match event {
        Event::Hint(h) => sched.hint(h),
        Event::Claimed(h) => sched.on_claimed(h),
        Event::Finished {
            handler,
            claimed,
            result,
        } => sched.on_finished(handler, claimed, result, now, jitter.next()),
        Event::SweepDone(found) => sched.on_sweep_done(found.as_deref(), now, jitter.next()),
        Event::SweepRequested => sched.request_sweep(),
        Event::Shutdown => sched.shut_down(),
    }
}

/// A jitter generator seeded per runtime, so that runtimes started together do not retry in
/// lockstep.
pub(crate) fn seeded_jitter() -> Jitter {
    Jitter::new(crate::ids::new_uuid().as_u64_pair().1)
}

/// The handlers a sweep found with due runs (`wait_idle` hints them and looks again).
pub(crate) fn due_handlers(rows: Vec<crate::proto::SweepRow>) -> Vec<usize> {
    rows.into_iter()
        .filter(|row| row.wait.is_none())
        .map(|row| row.handler)
        .collect()
}

/// What a sweep's rows mean to the scheduler.
pub(crate) fn sweep_entries(rows: Vec<crate::proto::SweepRow>) -> Vec<SweepEntry> {
    rows.into_iter()
        .map(|row| match row.wait {
            None => SweepEntry::Due(row.handler),
            Some(wait) => SweepEntry::Wait(row.handler, wait),
        })
        .collect()
}

/// Where a runtime's events go: a crossbeam channel (blocking) or a tokio one.
pub(crate) trait EventSink {
    /// Sends `event`; a dispatcher that is gone (the runtime stopped) needs nothing more.
    fn post(&self, event: Event);
}

impl EventSink for crossbeam_channel::Sender<Event> {
    fn post(&self, event: Event) {
        let _ = self.send(event);
    }
}

#[cfg(feature = "tokio")]
impl EventSink for ::tokio::sync::mpsc::UnboundedSender<Event> {
    fn post(&self, event: Event) {
        let _ = self.send(event);
    }
}

/// Tells the dispatcher how a claim task ended, however it ends: a task that unwinds, or a
/// future that is dropped, before saying so ended `Failed`.
pub(crate) struct ClaimEnd<'a, S: EventSink> {
    events: &'a S,
    pub(crate) handler: usize,
    /// Whether a claim was announced (the dispatcher counts the worker as busy, not probing).
    pub(crate) claimed: bool,
    pub(crate) result: Option<ClaimResult>,
}

impl<'a, S: EventSink> ClaimEnd<'a, S> {
    pub(crate) fn new(events: &'a S, handler: usize) -> ClaimEnd<'a, S> {
        ClaimEnd {
            events,
            handler,
            claimed: false,
            result: None,
        }
    }
}

impl<S: EventSink> Drop for ClaimEnd<'_, S> {
    fn drop(&mut self) {
        self.events.post(Event::Finished {
            handler: self.handler,
            claimed: self.claimed,
            result: self.result.take().unwrap_or(ClaimResult::Failed),
        });
    }
}

/// Tells the dispatcher a sweep ended, however it ends (`found: None`: it failed).
pub(crate) struct SweepEnd<'a, S: EventSink> {
    events: &'a S,
    pub(crate) found: Option<Vec<SweepEntry>>,
}

impl<'a, S: EventSink> SweepEnd<'a, S> {
    pub(crate) fn new(events: &'a S) -> SweepEnd<'a, S> {
        SweepEnd {
            events,
            found: None,
        }
    }
}

impl<S: EventSink> Drop for SweepEnd<'_, S> {
    fn drop(&mut self) {
        self.events.post(Event::SweepDone(self.found.take()));
    }
}
