//! The tokio runtime's work: one task per claim or sweep, performing what an attempt
//! ([`crate::core::attempt`]) asks over a leased connection, as the blocking worker does with
//! `.await`s. Connections (with their prepared statements) are leased per task from a small
//! set, so a runtime may run more tasks than it has connections.

use crate::runtime::common::{PRUNE_BUDGET, auto_prune_batch, vacuum_due, vacuumed};
use crate::runtime::logs::StepLog;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use futures_util::FutureExt;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};

use super::exec;
use super::runtime::Shared;
use super::session::Session;
use crate::core::Next;
use crate::core::attempt::{
    Attempt, CallKind, Io, Outcome, Output, Report, Stmt, UserCall, UserOutcome,
};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::proto::{
    Claimed, Release, RollbackToSavepoint, Sql, StmtCache, Sweep, Unreleased, UnservedRuns, Vacuum,
    WorkerSession,
};
use crate::runtime::batch::{Batch, Settle};
use crate::runtime::common::{self, Event, SweepEnd, bump, sweep_entries};
use crate::saga::{Engine, StepContext, Tokio, UserStatements};

/// As in the blocking runtime: a task keeps claiming runs of its handler until none is due,
/// or for this many steps or this long.
const BATCH_STEPS: usize = 64;
const BATCH_TIME: Duration = Duration::from_millis(100);

/// A worker connection with its prepared statements.
struct WorkerConn {
    client: Object,
    cache: StmtCache,
    user: UserStatements,
}

/// The runtime's worker connections: at most `permits` in use, idle ones kept for reuse.
#[derive(Debug)]
pub(crate) struct Conns {
    idle: Mutex<Vec<WorkerConn>>,
    permits: Semaphore,
}

impl std::fmt::Debug for WorkerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConn").finish_non_exhaustive()
    }
}

impl Conns {
    pub(crate) fn new(connections: usize) -> Conns {
        Conns {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(connections),
        }
    }

    /// A connection for one task; it returns to the idle set when the lease ends (unless
    /// discarded). The lock is never held across an await.
    async fn lease<'a>(&'a self, shared: &Shared) -> Result<Lease<'a>> {
        let permit =
            self.permits.acquire().await.map_err(|_| {
                Error::ShutdownFailed("the runtime's connections are closed".into())
            })?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => {
                let client = shared
                    .client
                    .conn_within(crate::runtime::worker::WORKER_CONNECT_WAIT)
                    .await?;
                exec::run(&**client, shared.client.sql(), None, &WorkerSession).await?;
                WorkerConn {
                    client,
                    cache: StmtCache::default(),
                    user: UserStatements::default(),
                }
            }
        };
        Ok(Lease {
            conns: self,
            conn: Some(conn),
            _permit: permit,
        })
    }
}

struct Lease<'a> {
    conns: &'a Conns,
    conn: Option<WorkerConn>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// Closes the connection instead of keeping it (after a step timeout, whose query may
    /// still be running, or an error that left it in doubt).
    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn.client));
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.conns
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
        }
    }
}

/// Runs one task of the dispatcher's.
pub(crate) async fn run_task(shared: Arc<Shared>, task: Task) {
    match task {
        Task::Claim {
            handler,
            generation,
        } => {
            let mut end = ClaimEnd::new(&shared.events, handler);
            let result = AssertUnwindSafe(drain(&shared, handler, generation, &mut end))
                .catch_unwind()
                .await;
            match result {
                Ok(result) => end.result = Some(result),
                Err(_) => {
                    log::error!("internal panic in a worker task; the work is retried");
                    bump(&shared.registry.stats.infra_errors);
                }
            }
        }
        Task::Sweep => {
            let mut end = SweepEnd::new(&shared.events);
            bump(&shared.registry.stats.sweeps);
            match sweep(&shared).await {
                Ok(found) => end.found = Some(found),
                Err(e) => shared.registry.infra_error(&e, "sweep"),
            }
        }
    }
}

/// The claim guard this runtime's tasks use; it reports also when the task is dropped.
type ClaimEnd<'a> = common::ClaimEnd<'a, mpsc::UnboundedSender<Event>>;

async fn drain(shared: &Shared, h: usize, generation: u64, end: &mut ClaimEnd<'_>) -> ClaimResult {
    let name = &shared.registry.handlers[h].name;
    let mut lease = match shared.conns.lease(shared).await {
        Ok(lease) => lease,
        Err(e) => {
            shared.registry.infra_error(&e, name);
            return ClaimResult::Failed;
        }
    };
    let drained = match lease.conn.as_mut() {
        Some(conn) => drain_on(shared, conn, h, generation, end).await,
        None => Err(Ended::Failed(Error::ShutdownFailed(
            "no worker connection".into(),
        ))),
    };
    match drained {
        Ok(result) => result,
        Err(ended) => {
            let e = match ended {
                // The step timed out: its query was cancelled and the connection is
                // discarded.
                Ended::TimedOut(e) => {
                    lease.discard();
                    e
                }
                Ended::Failed(e) => {
                    match &mut lease.conn {
                        Some(conn) if !conn.client.is_closed() => {
                            conn.cache.clear();
                            conn.user = UserStatements::default();
                        }
                        _ => lease.discard(),
                    }
                    e
                }
            };
            shared.registry.infra_error(&e, name);
            ClaimResult::Failed
        }
    }
}

/// Why a drain ended early.
enum Ended {
    /// An infrastructure error.
    Failed(Error),
    /// A step timed out; its connection must not be reused.
    TimedOut(Error),
}

/// [`drain`] over one session on a leased connection.
async fn drain_on<'e>(
    shared: &'e Shared,
    conn: &'e mut WorkerConn,
    h: usize,
    generation: u64,
    end: &mut ClaimEnd<'_>,
) -> std::result::Result<ClaimResult, Ended> {
    let WorkerConn {
        client,
        cache,
        user,
    } = conn;
    let pg: &mut tokio_postgres::Client = client;
    let tx = pg
        .transaction()
        .await
        .map_err(|e| Ended::Failed(e.into()))?;
    let mut session = Session {
        tx: Some(tx),
        open: true,
        savepoint: false,
        batch: Batch::new(shared.registry.steps_per_commit),
    };
    let started = Instant::now();
    let mut ran = 0;
    let mut carried = None;
    // Reports of steps whose writes wait for the batch's commit (see `runtime::batch`).
    let mut held: Vec<Report> = Vec::new();
    let result = loop {
        let chain = ran + 1 < BATCH_STEPS
            && started.elapsed() < BATCH_TIME
            && !shared.registry.is_stopping()
            && !shared.registry.handlers[h].owes();
        let attempted = attempt(shared, &mut session, cache, user, h, end, carried, chain).await;
        let mut report = match attempted {
            Ok(report) => report,
            Err(e) => break Err(Ended::TimedOut(e)),
        };
        carried = report.next_claim.take();
        match session.batch.take() {
            Settle::Committed => {
                for report in held.drain(..) {
                    settle(shared, h, report, cache);
                }
            }
            Settle::Voided => held.clear(),
            Settle::Nothing => {}
        }
        let outcome = if session.batch.holding() {
            held.push(report);
            Outcome::Ran
        } else {
            settle(shared, h, report, cache)
        };
        match outcome {
            Outcome::Ran => {
                ran += 1;
                if carried.is_none()
                    && (ran >= BATCH_STEPS
                        || started.elapsed() >= BATCH_TIME
                        || shared.registry.is_stopping())
                {
                    break Ok(ClaimResult::Ran);
                }
            }
            Outcome::Empty(next_wake) => {
                break Ok(ClaimResult::Empty {
                    generation,
                    next_wake,
                });
            }
            Outcome::Failed(e) => break Err(Ended::Failed(e)),
        }
    };
    session.close().await;
    result
}

/// Acts on an attempt's report once what it reports is committed (or failed).
fn settle(shared: &Shared, h: usize, report: Report, cache: &mut StmtCache) -> Outcome {
    let quiet = shared.registry.quiet_handlers();
    let settled = shared.registry.settle(h, report, &quiet);
    for h in settled.hints {
        let _ = shared.events.send(Event::Hint(h));
    }
    if settled.root_finished {
        shared.root_finished();
    }
    if settled.release_failed {
        cache.clear();
        let _ = shared.events.send(Event::SweepRequested);
    }
    if settled.sweep_soon {
        let _ = shared.events.send(Event::SweepRequested);
    }
    settled.outcome
}

/// One attempt at a due run of handler `h` (or at the run `carried` over from the previous
/// attempt's commit); its report, with the next claim if its commit made one. `Err` when a
/// step timed out: the attempt is abandoned (as in a crash).
#[allow(clippy::too_many_arguments)]
async fn attempt<'e: 'c, 'c>(
    shared: &'e Shared,
    session: &mut Session<'c>,
    cache: &mut StmtCache,
    user: &mut UserStatements,
    h: usize,
    end: &mut ClaimEnd<'_>,
    carried: Option<Claimed>,
    chain: bool,
) -> Result<Report> {
    let entry = &shared.registry.handlers[h];
    let quiet = shared.registry.quiet_handlers();
    let handler = entry.attempt_ref();
    let registry = &shared.registry;
    let now = std::time::SystemTime::now();
    let attempt = Attempt::new(handler, &registry.instance, &quiet, registry.backoff, now)
        .strict_topics(registry.strict_topics)
        .chain_claims(chain)
        .conclude_steps(shared.registry.steps_per_commit <= 1);
    let mut attempt = match carried {
        Some(claimed) => attempt.resume(claimed),
        None => attempt.owing(entry.take_owed()),
    };
    let mut driver = Driver {
        sql: shared.client.sql(),
        session,
        cache,
        user,
        handler: entry,
        max_json_bytes: shared.client.max_json_bytes(),
        stopping: &shared.registry.stopping,
        step_timeout: shared.step_timeout,
        endpoint: &shared.endpoint,
    };
    driver.drive(&mut attempt, shared, end).await
}

/// What performing an attempt's I/O needs: the runtime's shared parts (`'e`, outliving the
/// session `'c`) and the task's own (`'w`).
struct Driver<'e, 'w, 'c> {
    sql: &'e Sql,
    session: &'w mut Session<'c>,
    cache: &'w mut StmtCache,
    user: &'w mut UserStatements,
    handler: &'e crate::runtime::common::HandlerEntry<Tokio>,
    max_json_bytes: usize,
    stopping: &'e std::sync::atomic::AtomicBool,
    step_timeout: Option<Duration>,
    endpoint: &'e super::client::Endpoint,
}

impl<'e: 'c, 'c> Driver<'e, '_, 'c> {
    /// Performs what the attempt asks until it is done. `Err` when a step timed out.
    async fn drive(
        &mut self,
        attempt: &mut Attempt<'_>,
        shared: &Shared,
        end: &mut ClaimEnd<'_>,
    ) -> Result<Report> {
        let sql = self.sql;
        loop {
            match attempt.poll() {
                Io::Claim(c) => {
                    let prefix = if self.session.open { "" } else { "BEGIN; " };
                    let out = self.session.claim(sql, self.cache, &c, prefix, None).await;
                    attempt.handle_output(out);
                }
                Io::CommitClaim(_) if self.handler.owes() => {
                    // A failure is owed to a run of the handler (its attempt lost its
                    // connection): commit without claiming, so that the next attempt starts
                    // afresh and records it before it could claim that run again.
                    let out = self.session.end(sql, "COMMIT").await;
                    self.session.batch.ended(out.is_ok(), false);
                    attempt.handle_output(out);
                }
                Io::CommitClaim(c) => {
                    // The commit, or (while the batch has room) only the step's savepoint.
                    let (prefix, commits) = self.session.batch.next_claim(self.session.savepoint);
                    let out = self
                        .session
                        .claim(sql, self.cache, &c, prefix, Some(commits))
                        .await;
                    self.session.batch.claimed(commits, out.is_ok());
                    attempt.handle_output(out);
                }
                Io::Run(Stmt::Finish(f)) => {
                    let out = self.session.finish(sql, self.cache, &f).await;
                    attempt.handle_output(out);
                }
                Io::Run(Stmt::Emit(e)) => {
                    let out = exec::emit(self.session.tx(), sql, self.cache, &e).await;
                    attempt.handle_output(out.map(Output::Emitted));
                }
                Io::Run(s) | Io::RunAutocommit(s) => {
                    let out = exec::run(self.session.tx(), sql, Some(self.cache), &s).await;
                    attempt.handle_output(out);
                }
                Io::Announce => {
                    if !end.claimed {
                        // Lets the dispatcher put another task on this handler meanwhile.
                        end.claimed = true;
                        let _ = shared.events.send(Event::Claimed(end.handler));
                    }
                    attempt.handle_announced();
                }
                Io::CallUser(call) => {
                    let log = StepLog::start(&call);
                    let outcome = self.call(call).await?;
                    if let Some(log) = log {
                        log.end(&outcome);
                    }
                    attempt.handle_user(outcome);
                }
                Io::RollbackToSavepoint => {
                    let tx = self.session.tx();
                    let rolled_back = exec::run(tx, sql, None, &RollbackToSavepoint).await;
                    attempt.handle_output(rolled_back.map(|()| Output::Done));
                }
                Io::Commit => {
                    let out = self.session.end(sql, "COMMIT").await;
                    self.session.batch.ended(out.is_ok(), false);
                    attempt.handle_output(out);
                }
                Io::Conclude(mut c) => {
                    if self.handler.owes() {
                        // As for `CommitClaim`: the next attempt starts afresh.
                        c.claim = None;
                    }
                    match self.session.conclude(sql, self.cache, &c).await {
                        Ok(concluded) => attempt.handle_output(Ok(Output::Concluded(concluded))),
                        Err(e) => attempt.handle_conclude_error(e),
                    }
                }
                Io::Rollback if !self.session.open => {
                    // A failed conclusion ended the transaction already.
                    attempt.handle_output(Ok(Output::Done));
                }
                Io::Rollback => {
                    // With finished steps in the transaction, only the attempt's own part.
                    let text = self.session.batch.rollback_text(self.session.savepoint);
                    let out = self.session.end(sql, text).await;
                    if out.is_err() {
                        self.session.open = true;
                    }
                    self.session.batch.ended(out.is_ok(), text == "ROLLBACK");
                    attempt.handle_output(out);
                }
                Io::Done(report) => {
                    if self.session.open && report.next_claim.is_none() {
                        let _ = self.session.end(sql, "ROLLBACK").await;
                        self.session.batch.ended(true, true);
                    }
                    return Ok(report);
                }
            }
        }
    }

    /// Calls user code with a step context over the session's transaction, catching panics,
    /// within the step timeout. On timeout the query in flight is cancelled on the server and
    /// `Err` says so (the transaction is dropped with the context).
    async fn call(&mut self, call: UserCall) -> Result<UserOutcome> {
        let UserCall {
            kind,
            info,
            context,
        } = call;
        let saga = self.handler.saga_for(info.version.as_deref());
        let (index, payload) = (info.step_index, info.payload.clone());
        let (handler, step) = (info.handler.clone(), info.step_name.clone());
        let tx = self
            .session
            .tx
            .take()
            .expect("the session has its transaction");
        let token = tx.cancel_token();
        let engine = Engine {
            sql: self.sql,
            cache: std::mem::take(self.cache),
            statements: std::mem::take(self.user),
            max_json_bytes: self.max_json_bytes,
            stopping: self.stopping,
        };
        let mut ctx = StepContext::<Tokio>::new(tx, info, engine, context);
        let code = AssertUnwindSafe(async {
            match &kind {
                CallKind::Step => saga.run_step(index, &mut ctx, &payload).await,
                CallKind::ChildFailures(failures) => {
                    saga.handle_child_failures(index, &mut ctx, &payload, failures)
                        .await
                }
                CallKind::Compensation(cause) => saga
                    .compensate(index, &mut ctx, &payload, cause)
                    .await
                    .map(|()| Next::Continue),
            }
        })
        .catch_unwind();
        let result = match self.step_timeout {
            None => code.await,
            Some(limit) => match ::tokio::time::timeout(limit, code).await {
                Ok(result) => result,
                Err(_) => {
                    drop(ctx);
                    self.session.open = false;
                    self.endpoint.cancel(&token).await;
                    return Err(Error::StepTimeout {
                        handler: handler.to_string(),
                        step,
                        after: limit,
                    });
                }
            },
        };
        let (tx, engine, outcome) = ctx.finish(result);
        self.session.tx = Some(tx);
        *self.cache = engine.cache;
        *self.user = engine.statements;
        Ok(outcome)
    }
}

async fn sweep(shared: &Shared) -> Result<Vec<SweepEntry>> {
    let mut lease = shared.conns.lease(shared).await?;
    let Some(conn) = lease.conn.as_mut() else {
        return Err(Error::ShutdownFailed("no worker connection".into()));
    };
    let sql = shared.client.sql();
    let result = async {
        // Finish releases that a crash or a lost connection interrupted (normally none).
        for run in exec::run(&**conn.client, sql, Some(&mut conn.cache), &Unreleased).await? {
            let release = Release::new(run, &[]);
            let woken = exec::run(&**conn.client, sql, Some(&mut conn.cache), &release).await?;
            log::info!("sweep: released the parent of run {run}");
            shared.hint_names(woken.as_deref());
        }
        let heartbeat = shared.registry.heartbeat();
        exec::run(&**conn.client, sql, Some(&mut conn.cache), &heartbeat).await?;
        if let Some(keep) = shared.registry.prune_after {
            let started = std::time::Instant::now();
            let mut trees = 0;
            loop {
                let batch = auto_prune_batch(keep, shared.client.schema());
                let pruned = exec::run(&**conn.client, sql, Some(&mut conn.cache), &batch).await?;
                trees += pruned.trees;
                if pruned.trees == 0 || started.elapsed() >= PRUNE_BUDGET {
                    break;
                }
            }
            if trees > 0 {
                log::info!("sweep: pruned {trees} finished trees");
            }
        }
        if let Some(dead) = vacuum_due(&shared.registry) {
            let client = &**conn.client;
            if let Some(found) = exec::run(client, sql, Some(&mut conn.cache), &dead).await? {
                exec::run(client, sql, Some(&mut conn.cache), &Vacuum).await?;
                vacuumed(&shared.registry, found);
            }
        }
        let (names, served) = shared.registry.served_versions();
        let unserved = UnservedRuns {
            handlers: names.clone(),
            served: served.clone(),
        };
        let client = &**conn.client;
        let unserved = exec::run(client, sql, Some(&mut conn.cache), &unserved).await?;
        shared.registry.count_unserved(&unserved);
        let sweep = Sweep {
            handlers: &names,
            served: &served,
        };
        let rows = exec::run(&**conn.client, sql, Some(&mut conn.cache), &sweep).await?;
        Ok(sweep_entries(rows))
    }
    .await;
    if result.is_err() {
        conn.cache.clear();
    }
    result
}

/// The work a runtime spawns must be `Send` to run on a multi-thread tokio runtime; this
/// fails to compile if it is not.
#[allow(dead_code)]
fn assert_tasks_are_send(shared: Arc<Shared>) {
    fn check<T: Send>(_: T) {}
    check(run_task(shared, Task::Sweep));
}
