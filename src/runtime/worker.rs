//! Worker threads: claim a run, ask the core what to do, run user code in the step's
//! transaction, persist the transition, commit, and tell the dispatcher.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use postgres::{NoTls, Transaction};
use r2d2::PooledConnection;
use r2d2_postgres::PostgresConnectionManager;

use super::dispatcher::Event;
use super::{HandlerEntry, Shared, bump};
use crate::core::decide::{self, Action, StepOutcome, Transition};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::RunId;
use crate::saga::{SAVEPOINT, SavepointState, StepContext, StepInfo, UserStatements};
use crate::store::{self, Applied, Claimed, Emitted, Emitter, StmtCache};

/// A worker keeps claiming runs of the handler it was given until none is due, or until it
/// has run this many (or for `BATCH_TIME`), then goes back to the dispatcher so other
/// handlers get their turn.
const BATCH_STEPS: usize = 64;
const BATCH_TIME: Duration = Duration::from_millis(100);

/// A worker's own connection, kept for its whole life so its prepared statements stay valid.
struct WorkerConn {
    client: PooledConnection<PostgresConnectionManager<NoTls>>,
    cache: StmtCache,
    user: UserStatements,
}

/// How one claim attempt ended.
enum Processed {
    Ran,
    Empty(Option<Duration>),
}

pub(crate) fn run(shared: Arc<Shared>, tasks: Receiver<Task>) {
    let mut conn: Option<WorkerConn> = None;
    for task in tasks.iter() {
        match task {
            Task::Claim {
                handler,
                generation,
            } => {
                let (announced, result) = drain(&shared, &mut conn, handler, generation);
                let _ = shared.events.send(Event::Finished {
                    handler,
                    claimed: announced,
                    result,
                });
            }
            Task::Sweep => {
                bump(&shared.stats.sweeps);
                let found = match sweep(&shared, &mut conn) {
                    Ok(found) => Some(found),
                    Err(e) => {
                        infra_error(&shared, &mut conn, &e, "sweep");
                        None
                    }
                };
                let _ = shared.events.send(Event::SweepDone(found));
            }
        }
    }
}

/// Processes runs of handler `h` one transaction at a time until none is due or the batch is
/// used up. Returns whether a claim was announced to the dispatcher, and how it ended.
fn drain(
    shared: &Shared,
    conn: &mut Option<WorkerConn>,
    h: usize,
    generation: u64,
) -> (bool, ClaimResult) {
    let started = Instant::now();
    let mut announced = false;
    let mut ran = 0;
    loop {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            process(shared, conn, h, &mut announced)
        }));
        match outcome {
            Ok(Ok(Processed::Ran)) => {
                ran += 1;
                if ran >= BATCH_STEPS || started.elapsed() >= BATCH_TIME || shared.is_stopping() {
                    return (announced, ClaimResult::Ran);
                }
            }
            Ok(Ok(Processed::Empty(next_wake))) => {
                return (
                    announced,
                    ClaimResult::Empty {
                        generation,
                        next_wake,
                    },
                );
            }
            Ok(Err(e)) => {
                infra_error(shared, conn, &e, &shared.handlers[h].name);
                return (announced, ClaimResult::Failed);
            }
            Err(_) => {
                // Our own bug, not user code (which is caught closer to it). The transaction
                // was dropped, i.e. rolled back; keep the thread alive.
                log::error!("internal panic while processing a run; it will be retried");
                bump(&shared.stats.infra_errors);
                *conn = None;
                return (announced, ClaimResult::Failed);
            }
        }
    }
}

fn infra_error(shared: &Shared, conn: &mut Option<WorkerConn>, e: &Error, what: &str) {
    bump(&shared.stats.infra_errors);
    if e.is_transient() {
        log::warn!("{what}: {e}; retrying from the last committed state");
    } else {
        log::error!("{what}: {e}; retrying from the last committed state");
    }
    if let Some(c) = conn {
        c.cache.clear();
        if c.client.is_closed() {
            *conn = None;
        }
    }
}

fn connection<'a>(shared: &Shared, slot: &'a mut Option<WorkerConn>) -> Result<&'a mut WorkerConn> {
    match slot {
        Some(conn) => Ok(conn),
        None => Ok(slot.insert(WorkerConn {
            client: shared.client.conn()?,
            cache: StmtCache::default(),
            user: UserStatements::default(),
        })),
    }
}

fn sweep(shared: &Shared, slot: &mut Option<WorkerConn>) -> Result<Vec<SweepEntry>> {
    let conn = connection(shared, slot)?;
    let sql = shared.client.sql();
    // Finish releases that a crash or a lost connection interrupted (normally none).
    for run in store::unreleased(&mut *conn.client, sql)? {
        let woken = store::release(&mut *conn.client, sql, Some(&mut conn.cache), run, &[])?;
        log::info!("sweep: released the parent of run {run}");
        shared.hint_names(woken.as_deref());
    }
    let names: Vec<&str> = shared.handlers.iter().map(|h| &*h.name).collect();
    let found = store::sweep(&mut *conn.client, sql, Some(&mut conn.cache), &names)?;
    Ok(found
        .into_iter()
        .map(|(h, wait)| match wait {
            None => SweepEntry::Due(h),
            Some(wait) => SweepEntry::Wait(h, wait),
        })
        .collect())
}

/// Claims and processes at most one run of handler `h`.
fn process(
    shared: &Shared,
    slot: &mut Option<WorkerConn>,
    h: usize,
    announced: &mut bool,
) -> Result<Processed> {
    let entry = &shared.handlers[h];
    let sql = shared.client.sql();
    let WorkerConn {
        client,
        cache,
        user,
    } = connection(shared, slot)?;
    let mut tx = client.transaction()?;
    let Some(run) = store::claim(&mut tx, sql, cache, &entry.name, &shared.instance)? else {
        tx.rollback()?;
        bump(&shared.stats.empty_claims);
        return Ok(Processed::Empty(None));
    };
    if !run.due {
        tx.rollback()?;
        bump(&shared.stats.empty_claims);
        return Ok(Processed::Empty(Some(run.wait)));
    }
    if !*announced {
        // Lets the dispatcher put another worker on this handler while this one is busy.
        *announced = true;
        let _ = shared.events.send(Event::Claimed(h));
    }

    let quiet = shared.quiet_handlers();
    let steps = entry.saga.step_names();
    let ((transition, emitted, applied), tx) =
        match decide::next_action(&run.view, steps, &entry.source) {
            Action::RunStep { index, iteration } => {
                let step = Step {
                    shared,
                    entry,
                    run: &run,
                    index,
                    iteration,
                    quiet: &quiet,
                };
                step.run(cache, user, tx)?
            }
            action => {
                let t = match action {
                    Action::Commit => decide::commit(&run.view, steps),
                    Action::Abandon(failure) => {
                        log::error!("{}: run {}: {failure}", entry.name, run.id);
                        decide::finish_rollback(&run.view, steps, Some(failure))
                    }
                    _ => decide::finish_rollback(&run.view, steps, None),
                };
                let applied =
                    store::apply(&mut tx, sql, Some(cache), run.id, &t, &shared.instance)?;
                ((t, Emitted::default(), applied), tx)
            }
        };
    tx.commit()?;
    bump(&shared.stats.steps);
    let woken_parent = if applied.release_pending {
        release(shared, client, cache, run.id, &quiet)
    } else {
        None
    };

    let woken = emitted
        .handlers
        .iter()
        .map(String::as_str)
        .chain(woken_parent.as_deref());
    shared.record_notified(woken.clone(), &quiet);
    // Wake local handlers now rather than after the notification's round trip. This worker
    // goes on claiming for its own handler, so it needs no hint.
    shared.hint_names(woken.filter(|&name| name != &*entry.name));
    if applied.is_root && transition.status.is_terminal() {
        shared.signals.root_finished();
    }
    Ok(Processed::Ran)
}

/// Tells a finished run's parent, right after the run's transaction committed. If that fails
/// the run stays marked `release_pending`, and a sweep (asked for here) finishes the job.
fn release(
    shared: &Shared,
    client: &mut PooledConnection<PostgresConnectionManager<NoTls>>,
    cache: &mut StmtCache,
    run: RunId,
    quiet: &[&str],
) -> Option<String> {
    match store::release(&mut **client, shared.client.sql(), Some(cache), run, quiet) {
        Ok(woken) => woken,
        Err(e) => {
            bump(&shared.stats.infra_errors);
            cache.clear();
            log::warn!("releasing the parent of run {run}: {e}; a sweep will retry");
            let _ = shared.events.send(Event::SweepRequested);
            None
        }
    }
}

type Done<'c> = ((Transition, Emitted, Applied), Transaction<'c>);

/// A user step about to run.
struct Step<'a> {
    shared: &'a Shared,
    entry: &'a HandlerEntry,
    run: &'a Claimed,
    index: usize,
    iteration: u32,
    quiet: &'a [&'a str],
}

impl Step<'_> {
    /// Runs the user's step and persists its outcome in the same transaction.
    fn run<'c>(
        &self,
        cache: &mut StmtCache,
        user: &'c mut UserStatements,
        tx: Transaction<'c>,
    ) -> Result<Done<'c>> {
        let (entry, run, shared) = (self.entry, self.run, self.shared);
        let steps = entry.saga.step_names();
        let step = &steps[self.index];
        let info = StepInfo {
            handler: entry.name.clone(),
            run_id: run.id,
            root_id: run.root_id,
            message_id: run.message_id,
            topic: run.topic.clone(),
            step_name: step.clone(),
            step_index: self.index,
            iteration: self.iteration,
        };
        let mut ctx = StepContext::new(tx, info, user);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            entry.saga.run_step(self.index, &mut ctx, &run.payload)
        }));
        let (mut tx, emissions, savepoint) = ctx.into_parts();
        let savepoint_taken = match savepoint {
            SavepointState::Failed(e) => return Err(e.into()),
            SavepointState::Taken => true,
            SavepointState::NotTaken => false,
        };
        let outcome = match result {
            Ok(Ok(next)) => StepOutcome::Completed(next),
            Ok(Err(err)) => StepOutcome::Failed(Failure::from_step_error(err, &entry.source, step)),
            Err(payload) => {
                StepOutcome::Failed(Failure::from_panic(&*payload, &entry.source, step))
            }
        };
        let sql = shared.client.sql();
        let failure = match outcome {
            StepOutcome::Completed(next) => {
                let emitter = Emitter {
                    root_id: run.root_id,
                    run_id: run.id,
                    instance: run.view.instances,
                    handler: &entry.name,
                    step,
                };
                let completed = (|| {
                    let emitted = store::emit(
                        &mut tx,
                        sql,
                        Some(cache),
                        Some(&emitter),
                        &emissions,
                        &shared.instance,
                        self.quiet,
                    )?;
                    let t = decide::after_step(
                        &run.view,
                        steps,
                        self.index,
                        StepOutcome::Completed(next),
                        emitted.children,
                        &entry.source,
                    );
                    let applied =
                        store::apply(&mut tx, sql, Some(cache), run.id, &t, &shared.instance)?;
                    Ok::<_, Error>((t, emitted, applied))
                })();
                match completed {
                    Ok(done) => return Ok((done, tx)),
                    Err(e) if savepoint_taken && left_aborted(&e) => Failure::new(
                        "structured_cooperation::TransactionAborted",
                        format!(
                            "the step returned successfully but a statement it ran had failed, \
                             leaving its transaction aborted ({e}); return the statement's \
                             error, or run it inside a nested savepoint"
                        ),
                        entry.source.as_str(),
                    )
                    .with_step(step.as_str()),
                    Err(e) => return Err(e),
                }
            }
            StepOutcome::Failed(failure) => failure,
        };
        if savepoint_taken {
            tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))?;
        }
        bump(&shared.stats.step_failures);
        log::warn!(
            "{}: step {step:?} of run {} failed: {failure}",
            entry.name,
            run.id
        );
        let t = decide::after_step(
            &run.view,
            steps,
            self.index,
            StepOutcome::Failed(failure),
            0,
            &entry.source,
        );
        let applied = store::apply(&mut tx, sql, Some(cache), run.id, &t, &shared.instance)?;
        Ok(((t, Emitted::default(), applied), tx))
    }
}

/// The first statement after user code failed because user code left the transaction
/// aborted.
fn left_aborted(e: &Error) -> bool {
    matches!(e, Error::Postgres(pg)
        if pg.code() == Some(&postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION))
}
