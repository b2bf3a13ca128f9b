//! The tokio runtime's work: one task per claim or sweep, performing what an attempt
//! ([`crate::core::attempt`]) asks over a leased connection, as the blocking worker does with
//! `.await`s. Connections (with their prepared statements) are leased per task from a small
//! set, so a runtime may run more tasks than it has connections.

use crate::runtime::common::{PRUNE_BUDGET, auto_prune_batch};
use crate::runtime::logs::StepLog;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use futures_util::FutureExt;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_postgres::Transaction;

use super::exec;
use super::runtime::Shared;
use crate::core::Next;
use crate::core::attempt::{
    Attempt, CallKind, HandlerRef, Io, Outcome, Output, Report, UserCall, UserOutcome,
};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::proto::{
    Release, RollbackToSavepoint, Sql, StmtCache, Sweep, Unreleased, WorkerSession,
};
use crate::runtime::common::{self, Event, SweepEnd, bump, sweep_entries};
use crate::saga::{Engine, SagaOf, StepContext, Tokio, UserStatements};

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
    let started = Instant::now();
    let mut ran = 0;
    loop {
        match attempt(shared, &mut lease, h, end).await {
            Outcome::Ran => {
                ran += 1;
                if ran >= BATCH_STEPS
                    || started.elapsed() >= BATCH_TIME
                    || shared.registry.is_stopping()
                {
                    return ClaimResult::Ran;
                }
            }
            Outcome::Empty(next_wake) => {
                return ClaimResult::Empty {
                    generation,
                    next_wake,
                };
            }
            Outcome::Failed(e) => {
                shared.registry.infra_error(&e, name);
                match &mut lease.conn {
                    Some(conn) if !conn.client.is_closed() => {
                        conn.cache.clear();
                        conn.user = UserStatements::default();
                    }
                    _ => lease.discard(),
                }
                return ClaimResult::Failed;
            }
        }
    }
}

/// One attempt at a due run of handler `h`, and what its report asks of the runtime.
async fn attempt(
    shared: &Shared,
    lease: &mut Lease<'_>,
    h: usize,
    end: &mut ClaimEnd<'_>,
) -> Outcome {
    let entry = &shared.registry.handlers[h];
    let Some(conn) = lease.conn.as_mut() else {
        return Outcome::Failed(Error::ShutdownFailed("no worker connection".into()));
    };
    let quiet = shared.registry.quiet_handlers();
    let handler = HandlerRef {
        name: &entry.name,
        source: &entry.source,
        steps: entry.saga.shapes(),
    };
    let registry = &shared.registry;
    let now = std::time::SystemTime::now();
    let mut attempt = Attempt::new(handler, &registry.instance, &quiet, registry.backoff, now)
        .strict_topics(registry.strict_topics)
        .owing(entry.take_owed());
    let driven = drive(&mut attempt, conn, shared, &entry.saga, end).await;
    let report = match driven {
        Ok(report) => report,
        Err(e) => {
            // The step timed out: its query was cancelled and the connection is discarded.
            lease.discard();
            return Outcome::Failed(e);
        }
    };
    let settled = shared.registry.settle(h, report, &quiet);
    for h in settled.hints {
        let _ = shared.events.send(Event::Hint(h));
    }
    if settled.root_finished {
        shared.root_finished();
    }
    if settled.release_failed {
        conn.cache.clear();
        let _ = shared.events.send(Event::SweepRequested);
    }
    settled.outcome
}

/// Performs what the attempt asks until it is done. `Err` when a step timed out: the
/// attempt is abandoned (as in a crash) and its connection must not be reused.
async fn drive(
    attempt: &mut Attempt<'_>,
    conn: &mut WorkerConn,
    shared: &Shared,
    saga: &SagaOf<Tokio>,
    end: &mut ClaimEnd<'_>,
) -> Result<Report> {
    let sql = shared.client.sql();
    loop {
        match attempt.poll() {
            Io::Begin => match (**conn.client).transaction().await {
                Ok(tx) => {
                    attempt.handle_output(Ok(Output::Done));
                    let mut open = Open {
                        sql,
                        cache: &mut conn.cache,
                        user: &mut conn.user,
                        saga,
                        max_json_bytes: shared.client.max_json_bytes(),
                        stopping: &shared.registry.stopping,
                        step_timeout: shared.step_timeout,
                        endpoint: &shared.endpoint,
                    };
                    if let Some(report) = open.serve(attempt, tx, shared, end).await? {
                        return Ok(report);
                    }
                }
                Err(e) => attempt.handle_output(Err(e.into())),
            },
            Io::RunAutocommit(s) => {
                let out = exec::run(&**conn.client, sql, Some(&mut conn.cache), &s).await;
                attempt.handle_output(out);
            }
            Io::Done(report) => return Ok(report),
            other => panic!("attempt asked for {other:?} outside its transaction"),
        }
    }
}

/// What serving an open transaction needs.
struct Open<'a> {
    sql: &'a Sql,
    cache: &'a mut StmtCache,
    user: &'a mut UserStatements,
    saga: &'a SagaOf<Tokio>,
    max_json_bytes: usize,
    stopping: &'a std::sync::atomic::AtomicBool,
    step_timeout: Option<Duration>,
    endpoint: &'a super::client::Endpoint,
}

impl<'a> Open<'a> {
    /// Serves the attempt while its transaction is open: until it commits or rolls back
    /// (`None`), or ends (`Some`; dropping the transaction rolls it back).
    async fn serve<'t>(
        &mut self,
        attempt: &mut Attempt<'_>,
        mut tx: Transaction<'t>,
        shared: &Shared,
        end: &mut ClaimEnd<'_>,
    ) -> Result<Option<Report>>
    where
        'a: 't,
    {
        loop {
            match attempt.poll() {
                Io::Run(s) => {
                    let out = exec::run(&tx, self.sql, Some(self.cache), &s).await;
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
                    let (back, outcome) = self.call(tx, call).await?;
                    if let Some(log) = log {
                        log.end(&outcome);
                    }
                    tx = back;
                    attempt.handle_user(outcome);
                }
                Io::RollbackToSavepoint => {
                    let rolled_back = exec::run(&tx, self.sql, None, &RollbackToSavepoint).await;
                    attempt.handle_output(rolled_back.map(|()| Output::Done));
                }
                Io::Commit => {
                    let committed = tx.commit().await.map(|()| Output::Done);
                    attempt.handle_output(committed.map_err(Error::from));
                    return Ok(None);
                }
                Io::Rollback => {
                    let rolled_back = tx.rollback().await.map(|()| Output::Done);
                    attempt.handle_output(rolled_back.map_err(Error::from));
                    return Ok(None);
                }
                Io::Done(report) => return Ok(Some(report)),
                other => panic!("attempt asked for {other:?} inside its transaction"),
            }
        }
    }

    /// Calls user code with a step context over `tx`, catching panics, within the step
    /// timeout. On timeout the query in flight is cancelled on the server and `Err` says so.
    async fn call<'t>(
        &mut self,
        tx: Transaction<'t>,
        call: UserCall,
    ) -> Result<(Transaction<'t>, UserOutcome)>
    where
        'a: 't,
    {
        let UserCall {
            kind,
            info,
            context,
        } = call;
        let (saga, index, payload) = (self.saga, info.step_index, info.payload.clone());
        let (handler, step) = (info.handler.clone(), info.step_name.clone());
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
        *self.cache = engine.cache;
        *self.user = engine.statements;
        Ok((tx, outcome))
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
        let names = shared.registry.names();
        let sweep = Sweep { handlers: &names };
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
