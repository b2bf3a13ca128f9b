//! Worker threads: each performs what an attempt ([`crate::core::attempt`]) asks, over a
//! connection it keeps for life, and tells the dispatcher how its tasks ended.

use crate::runtime::common::{PRUNE_BUDGET, auto_prune_batch, vacuum_due, vacuumed};
use crate::runtime::logs::StepLog;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use r2d2::PooledConnection;

use super::common::{self, Event, SweepEnd, bump, sweep_entries};
use super::{Shared, exec};
use crate::core::Next;
use crate::core::attempt::{Attempt, CallKind, Io, Outcome, Output, Report, Stmt, UserCall};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::proto::Claimed;
use crate::proto::{
    Release, RollbackToSavepoint, Sql, StmtCache, Sweep, Unreleased, UnservedRuns, Vacuum,
    WorkerSession,
};
use crate::runtime::batch::Settle;
use crate::runtime::session::Session;
use crate::saga::{Engine, StepContext, UserStatements};

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
    slot: &mut Option<WorkerConn>,
    h: usize,
    generation: u64,
    end: &mut ClaimEnd<'_>,
) -> ClaimResult {
    let name = &shared.registry.handlers[h].name;
    let drained = match connection(shared, slot) {
        Ok(conn) => drain_on(shared, conn, h, generation, end),
        Err(e) => Err(e),
    };
    drained.unwrap_or_else(|e| {
        infra_error(shared, slot, &e, name);
        ClaimResult::Failed
    })
}

/// [`drain`] over one session on the worker's connection.
fn drain_on<'e>(
    shared: &'e Shared,
    conn: &'e mut WorkerConn,
    h: usize,
    generation: u64,
    end: &mut ClaimEnd<'_>,
) -> Result<ClaimResult> {
    let WorkerConn {
        client,
        cache,
        user,
    } = conn;
    let mut session = Session::begin(client, shared.registry.steps_per_commit)?;
    let started = Instant::now();
    let mut ran = 0;
    let mut carried = None;
    // Reports of steps whose writes wait for the batch's commit (see `runtime::batch`).
    let mut held: Vec<Report> = Vec::new();
    let result = loop {
        // A commit claims the next run only while the drain has room for it and no failure is
        // owed to the handler's runs; a claim carried over is always run.
        let chain = ran + 1 < BATCH_STEPS
            && started.elapsed() < BATCH_TIME
            && !shared.registry.is_stopping()
            && !shared.registry.handlers[h].owes();
        let mut report = attempt(shared, &mut session, cache, user, h, end, carried, chain);
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
            Outcome::Failed(e) => break Err(e),
        }
    };
    session.close();
    result
}

/// Acts on an attempt's report once what it reports is committed (or failed): counters,
/// local wake-ups, waiters of finished roots.
fn settle(shared: &Shared, h: usize, report: Report, cache: &mut StmtCache) -> Outcome {
    let quiet = shared.registry.quiet_handlers();
    let settled = shared.registry.settle(h, report, &quiet);
    for h in settled.hints {
        let _ = shared.events.send(Event::Hint(h));
    }
    if settled.root_finished {
        shared.signals.root_finished();
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
/// attempt's commit); its report, with the next claim if its commit made one.
#[allow(clippy::too_many_arguments)]
fn attempt<'e: 'c, 'c>(
    shared: &'e Shared,
    session: &mut Session<'c>,
    cache: &mut StmtCache,
    user: &mut UserStatements,
    h: usize,
    end: &mut ClaimEnd<'_>,
    carried: Option<Claimed>,
    chain: bool,
) -> Report {
    let entry = &shared.registry.handlers[h];
    let quiet = shared.registry.quiet_handlers();
    let handler = entry.attempt_ref();
    let registry = &shared.registry;
    let now = std::time::SystemTime::now();
    let attempt = Attempt::new(handler, &registry.instance, &quiet, registry.backoff, now)
        .strict_topics(registry.strict_topics)
        .chain_claims(chain)
        .conclude_steps(registry.steps_per_commit <= 1);
    let mut attempt = match carried {
        Some(claimed) => attempt.resume(claimed),
        None => attempt.owing(entry.take_owed()),
    };
    let mut announce = || {
        if !end.claimed {
            // Lets the dispatcher put another worker on this handler while this one is busy.
            end.claimed = true;
            let _ = shared.events.send(Event::Claimed(h));
        }
    };
    let mut driver = Driver {
        sql: shared.client.sql(),
        session,
        cache,
        user,
        handler: entry,
        max_json_bytes: shared.client.max_json_bytes(),
        stopping: &shared.registry.stopping,
    };
    driver.drive(&mut attempt, &mut announce)
}

/// What performing an attempt's I/O needs: the runtime's shared parts (`'e`, which outlive
/// the connection's session `'c`, since step contexts hold both) and the worker's own (`'w`).
struct Driver<'e, 'w, 'c> {
    sql: &'e Sql,
    session: &'w mut Session<'c>,
    cache: &'w mut StmtCache,
    user: &'w mut UserStatements,
    handler: &'e crate::runtime::common::HandlerEntry<crate::saga::Blocking>,
    max_json_bytes: usize,
    stopping: &'e std::sync::atomic::AtomicBool,
}

impl<'e: 'c, 'c> Driver<'e, '_, 'c> {
    /// Performs what the attempt asks until it is done.
    fn drive(&mut self, attempt: &mut Attempt<'_>, announce: &mut dyn FnMut()) -> Report {
        let sql = self.sql;
        loop {
            match attempt.poll() {
                Io::Claim(c) => {
                    // The session's first claim finds the transaction `Session::begin` opened.
                    let prefix = if self.session.open { "" } else { "BEGIN; " };
                    attempt.handle_output(self.session.claim(sql, self.cache, &c, prefix, None));
                }
                Io::CommitClaim(_) if self.handler.owes() => {
                    // A failure is owed to a run of the handler (its attempt lost its
                    // connection): commit without claiming, so that the next attempt starts
                    // afresh and records it before it could claim that run again.
                    let out = self.session.end(sql, "COMMIT");
                    self.session.batch.ended(out.is_ok(), false);
                    attempt.handle_output(out);
                }
                Io::CommitClaim(c) => {
                    // The commit, or (while the batch has room) only the step's savepoint.
                    let (prefix, commits) = self.session.batch.next_claim(self.session.savepoint);
                    let out = self
                        .session
                        .claim(sql, self.cache, &c, prefix, Some(commits));
                    self.session.batch.claimed(commits, out.is_ok());
                    attempt.handle_output(out);
                }
                Io::Run(Stmt::Finish(f)) => {
                    attempt.handle_output(self.session.finish(sql, self.cache, &f));
                }
                Io::Run(Stmt::Emit(e)) => {
                    let out = exec::emit(self.session.tx(), sql, self.cache, &e, true);
                    attempt.handle_output(out.map(Output::Emitted));
                }
                Io::Run(s) | Io::RunAutocommit(s) => {
                    // Autocommit statements come only when no transaction is open.
                    let out = exec::run(self.session.tx(), sql, Some(self.cache), &s);
                    attempt.handle_output(out);
                }
                Io::Announce => {
                    announce();
                    attempt.handle_announced();
                }
                Io::CallUser(call) => {
                    let log = StepLog::start(&call);
                    let outcome = self.call(call);
                    if let Some(log) = log {
                        log.end(&outcome);
                    }
                    attempt.handle_user(outcome);
                }
                Io::RollbackToSavepoint => {
                    let rolled_back = exec::run(self.session.tx(), sql, None, &RollbackToSavepoint);
                    attempt.handle_output(rolled_back.map(|()| Output::Done));
                }
                Io::Commit => {
                    let out = self.session.end(sql, "COMMIT");
                    self.session.batch.ended(out.is_ok(), false);
                    attempt.handle_output(out);
                }
                Io::Conclude(mut c) => {
                    if self.handler.owes() {
                        // As for `CommitClaim`: the next attempt starts afresh.
                        c.claim = None;
                    }
                    match self.session.conclude(sql, self.cache, &c) {
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
                    let out = self.session.end(sql, text);
                    if out.is_err() {
                        // The rollback to the savepoint may have failed before its commit.
                        self.session.open = true;
                    }
                    self.session.batch.ended(out.is_ok(), text == "ROLLBACK");
                    attempt.handle_output(out);
                }
                Io::Done(report) => {
                    // After an error a transaction may be open: it is rolled back, as
                    // dropping it would (with any finished steps of the batch in it). A
                    // commit that claimed the next run keeps its own.
                    if self.session.open && report.next_claim.is_none() {
                        let _ = self.session.end(sql, "ROLLBACK");
                        self.session.batch.ended(true, true);
                    }
                    return report;
                }
            }
        }
    }

    /// Calls user code with a step context over the session's transaction, catching panics.
    /// The context borrows the connection's statement caches for the call.
    fn call(&mut self, call: UserCall) -> crate::core::attempt::UserOutcome {
        let UserCall {
            kind,
            info,
            context,
        } = call;
        let saga = self.handler.saga_for(info.version.as_deref());
        let (index, payload) = (info.step_index, info.payload.clone());
        let engine = Engine {
            sql: self.sql,
            cache: std::mem::take(self.cache),
            statements: std::mem::take(self.user),
            max_json_bytes: self.max_json_bytes,
            stopping: self.stopping,
        };
        let tx = self
            .session
            .tx
            .take()
            .expect("the session has its transaction");
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
        self.session.tx = Some(tx);
        *self.cache = engine.cache;
        *self.user = engine.statements;
        outcome
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
    if let Some(dead) = vacuum_due(&shared.registry) {
        if let Some(found) = exec::run(client, sql, Some(&mut conn.cache), &dead)? {
            exec::run(client, sql, Some(&mut conn.cache), &Vacuum)?;
            vacuumed(&shared.registry, found);
        }
    }
    let (names, served) = shared.registry.served_versions();
    let unserved = UnservedRuns {
        handlers: names.clone(),
        served: served.clone(),
    };
    let unserved = exec::run(client, sql, Some(&mut conn.cache), &unserved)?;
    shared.registry.count_unserved(&unserved);
    let sweep = Sweep {
        handlers: &names,
        served: &served,
    };
    Ok(sweep_entries(exec::run(
        client,
        sql,
        Some(&mut conn.cache),
        &sweep,
    )?))
}
