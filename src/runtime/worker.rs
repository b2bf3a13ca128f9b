//! Worker threads: each performs what an attempt ([`crate::core::attempt`]) asks, over a
//! connection it keeps for life, and tells the dispatcher how its tasks ended.

use crate::runtime::common::{PRUNE_BUDGET, auto_prune_batch};
use crate::runtime::logs::StepLog;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use postgres::Transaction;
use r2d2::PooledConnection;

use super::common::{self, Event, SweepEnd, bump, sweep_entries};
use super::{Shared, exec};
use crate::core::Next;
use crate::core::attempt::{Attempt, CallKind, HandlerRef, Io, Outcome, Output, Report, UserCall};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::proto::{
    Release, RollbackToSavepoint, Sql, StmtCache, Sweep, Unreleased, WorkerSession,
};
use crate::saga::{Engine, Saga, StepContext, UserStatements};

/// A worker keeps claiming runs of the handler it was given until none is due, or until it
/// has run this many (or for `BATCH_TIME`), then goes back to the dispatcher so other
/// handlers get their turn.
const BATCH_STEPS: usize = 64;
const BATCH_TIME: Duration = Duration::from_millis(100);

/// How long a worker without a connection waits for one before it gives its handler back
/// (the handler is retried after the backoff, by whichever worker is free).
pub(crate) const WORKER_CONNECT_WAIT: Duration = Duration::from_millis(500);

/// A worker's own connection, kept for its whole life so its prepared statements stay valid.
struct WorkerConn {
    client: PooledConnection<crate::pool::ConnectionManager>,
    cache: StmtCache,
    user: UserStatements,
}

pub(crate) fn run(shared: Arc<Shared>, tasks: Receiver<Task>) {
    let mut conn: Option<WorkerConn> = None;
    for task in tasks.iter() {
        // Our own bugs must not kill the thread; the guards tell the dispatcher either way.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| match task {
            Task::Claim {
                handler,
                generation,
            } => {
                let mut end = ClaimEnd::new(&shared.events, handler);
                end.result = Some(drain(&shared, &mut conn, handler, generation, &mut end));
            }
            Task::Sweep => {
                let mut end = SweepEnd::new(&shared.events);
                bump(&shared.registry.stats.sweeps);
                match sweep(&shared, &mut conn) {
                    Ok(found) => end.found = Some(found),
                    Err(e) => infra_error(&shared, &mut conn, &e, "sweep"),
                }
            }
        }));
        if outcome.is_err() {
            // The transaction was dropped, i.e. rolled back; the run is retried.
            log::error!("internal panic in a worker; the work is retried");
            bump(&shared.registry.stats.infra_errors);
            conn = None;
        }
    }
}

/// The claim guard this runtime's workers use.
type ClaimEnd<'a> = common::ClaimEnd<'a, Sender<Event>>;

/// Runs attempts at handler `h` until none is due or the batch is used up.
fn drain(
    shared: &Shared,
    conn: &mut Option<WorkerConn>,
    h: usize,
    generation: u64,
    end: &mut ClaimEnd<'_>,
) -> ClaimResult {
    let started = Instant::now();
    let mut ran = 0;
    loop {
        match attempt(shared, conn, h, end) {
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
                infra_error(shared, conn, &e, &shared.registry.handlers[h].name);
                return ClaimResult::Failed;
            }
        }
    }
}

/// One attempt at a due run of handler `h`, and what its report asks of the runtime.
fn attempt(
    shared: &Shared,
    slot: &mut Option<WorkerConn>,
    h: usize,
    end: &mut ClaimEnd<'_>,
) -> Outcome {
    let entry = &shared.registry.handlers[h];
    let conn = match connection(shared, slot) {
        Ok(conn) => conn,
        Err(e) => return Outcome::Failed(e),
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
    let mut announce = || {
        if !end.claimed {
            // Lets the dispatcher put another worker on this handler while this one is busy.
            end.claimed = true;
            let _ = shared.events.send(Event::Claimed(h));
        }
    };
    let report = drive(&mut attempt, conn, shared, &entry.saga, &mut announce);
    let settled = shared.registry.settle(h, report, &quiet);
    for h in settled.hints {
        let _ = shared.events.send(Event::Hint(h));
    }
    if settled.root_finished {
        shared.signals.root_finished();
    }
    if settled.release_failed {
        conn.cache.clear();
        let _ = shared.events.send(Event::SweepRequested);
    }
    settled.outcome
}

/// Performs what the attempt asks until it is done.
fn drive(
    attempt: &mut Attempt<'_>,
    conn: &mut WorkerConn,
    shared: &Shared,
    saga: &Saga,
    announce: &mut dyn FnMut(),
) -> Report {
    let sql = shared.client.sql();
    loop {
        match attempt.poll() {
            Io::Begin => match conn.client.transaction() {
                Ok(tx) => {
                    attempt.handle_output(Ok(Output::Done));
                    let mut open = Open {
                        sql,
                        cache: &mut conn.cache,
                        user: &mut conn.user,
                        saga,
                        max_json_bytes: shared.client.max_json_bytes(),
                        stopping: &shared.registry.stopping,
                    };
                    if let Some(report) = open.serve(attempt, tx, announce) {
                        return report;
                    }
                }
                Err(e) => attempt.handle_output(Err(e.into())),
            },
            Io::RunAutocommit(s) => {
                attempt.handle_output(exec::run(&mut *conn.client, sql, Some(&mut conn.cache), &s))
            }
            Io::Done(report) => return report,
            other => panic!("attempt asked for {other:?} outside its transaction"),
        }
    }
}

/// What serving an open transaction needs.
struct Open<'a> {
    sql: &'a Sql,
    cache: &'a mut StmtCache,
    user: &'a mut UserStatements,
    saga: &'a Saga,
    max_json_bytes: usize,
    stopping: &'a std::sync::atomic::AtomicBool,
}

impl<'a> Open<'a> {
    /// Serves the attempt while its transaction is open: until it commits or rolls back
    /// (`None`), or ends (`Some`, the transaction is dropped, i.e. rolled back).
    fn serve<'t>(
        &mut self,
        attempt: &mut Attempt<'_>,
        mut tx: Transaction<'t>,
        announce: &mut dyn FnMut(),
    ) -> Option<Report>
    where
        'a: 't,
    {
        loop {
            match attempt.poll() {
                Io::Run(s) => {
                    attempt.handle_output(exec::run(&mut tx, self.sql, Some(self.cache), &s))
                }
                Io::Announce => {
                    announce();
                    attempt.handle_announced();
                }
                Io::CallUser(call) => {
                    let log = StepLog::start(&call);
                    let (back, outcome) = self.call(tx, call);
                    if let Some(log) = log {
                        log.end(&outcome);
                    }
                    tx = back;
                    attempt.handle_user(outcome);
                }
                Io::RollbackToSavepoint => {
                    let rolled_back = exec::run(&mut tx, self.sql, None, &RollbackToSavepoint);
                    attempt.handle_output(rolled_back.map(|()| Output::Done));
                }
                Io::Commit => {
                    attempt.handle_output(tx.commit().map(|()| Output::Done).map_err(Error::from));
                    return None;
                }
                Io::Rollback => {
                    attempt
                        .handle_output(tx.rollback().map(|()| Output::Done).map_err(Error::from));
                    return None;
                }
                Io::Done(report) => return Some(report),
                other => panic!("attempt asked for {other:?} inside its transaction"),
            }
        }
    }

    /// Calls user code with a step context over `tx`, catching panics. The context borrows
    /// the connection's statement caches for the call.
    fn call<'t>(
        &mut self,
        tx: Transaction<'t>,
        call: UserCall,
    ) -> (Transaction<'t>, crate::core::attempt::UserOutcome)
    where
        'a: 't,
    {
        let UserCall {
            kind,
            info,
            context,
        } = call;
        let (saga, index, payload) = (self.saga, info.step_index, info.payload.clone());
        let engine = Engine {
            sql: self.sql,
            cache: std::mem::take(self.cache),
            statements: std::mem::take(self.user),
            max_json_bytes: self.max_json_bytes,
            stopping: self.stopping,
        };
        let mut ctx = StepContext::new(tx, info, engine, context);
        let result = panic::catch_unwind(AssertUnwindSafe(|| match &kind {
            CallKind::Step => saga.run_step(index, &mut ctx, &payload),
            CallKind::ChildFailures(failures) => {
                saga.handle_child_failures(index, &mut ctx, &payload, failures)
            }
            CallKind::Compensation(cause) => saga
                .compensate(index, &mut ctx, &payload, cause)
                .map(|()| Next::Continue),
        }));
        let (tx, engine, outcome) = ctx.finish(result);
        *self.cache = engine.cache;
        *self.user = engine.statements;
        (tx, outcome)
    }
}

fn infra_error(shared: &Shared, conn: &mut Option<WorkerConn>, e: &Error, what: &str) {
    shared.registry.infra_error(e, what);
    if let Some(c) = conn {
        c.cache.clear();
        c.user = UserStatements::default();
        if c.client.is_closed() {
            *conn = None;
        }
    }
}

fn connection<'a>(shared: &Shared, slot: &'a mut Option<WorkerConn>) -> Result<&'a mut WorkerConn> {
    match slot {
        Some(conn) => Ok(conn),
        None => {
            let mut client = shared.client.conn_within(WORKER_CONNECT_WAIT)?;
            exec::run(&mut *client, shared.client.sql(), None, &WorkerSession)?;
            Ok(slot.insert(WorkerConn {
                client,
                cache: StmtCache::default(),
                user: UserStatements::default(),
            }))
        }
    }
}

fn sweep(shared: &Shared, slot: &mut Option<WorkerConn>) -> Result<Vec<SweepEntry>> {
    let conn = connection(shared, slot)?;
    let sql = shared.client.sql();
    let client = &mut *conn.client;
    // Finish releases that a crash or a lost connection interrupted (normally none).
    for run in exec::run(client, sql, Some(&mut conn.cache), &Unreleased)? {
        let woken = exec::run(client, sql, Some(&mut conn.cache), &Release::new(run, &[]))?;
        log::info!("sweep: released the parent of run {run}");
        shared.hint_names(woken.as_deref());
    }
    let heartbeat = shared.registry.heartbeat();
    exec::run(client, sql, Some(&mut conn.cache), &heartbeat)?;
    if let Some(keep) = shared.registry.prune_after {
        let started = Instant::now();
        let mut trees = 0;
        loop {
            let batch = auto_prune_batch(keep, shared.client.schema());
            let pruned = exec::run(client, sql, Some(&mut conn.cache), &batch)?;
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
    Ok(sweep_entries(exec::run(
        client,
        sql,
        Some(&mut conn.cache),
        &sweep,
    )?))
}
