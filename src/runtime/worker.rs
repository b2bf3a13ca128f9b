//! Worker threads: claim a run, ask the core what to do, run user code in the step's
//! transaction, persist the transition, commit, and tell the dispatcher.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use postgres::NoTls;
use r2d2::PooledConnection;
use r2d2_postgres::PostgresConnectionManager;

use super::dispatcher::Event;
use super::exec::Exec;
use super::{Shared, bump};
use crate::context::CooperationContext;
use crate::core::decide::{self, Action};
use crate::core::schedule::{ClaimResult, SweepEntry, Task};
use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::saga::UserStatements;
use crate::store::{self, StmtCache};

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
        None => {
            let mut client = shared.client.conn()?;
            // Lets operators (and tests) find the runtime's connections in pg_stat_activity.
            client.batch_execute(&format!(
                "SET application_name = 'sc-worker:{}'",
                shared.client.schema()
            ))?;
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
    // A parent's rollback request carried its context: it wins over the run's own.
    let context = CooperationContext::from_stored(run.context.as_deref())?.merged(
        &CooperationContext::from_stored(run.rollback_context.as_deref())?,
    );
    let exec = Exec {
        shared,
        entry,
        run: &run,
        quiet: &quiet,
        context,
    };
    let shapes = entry.saga.shapes();
    // In a block of its own, so that nothing borrowing the connection outlives the commit.
    let done = {
        let outcome =
            match decide::next_action(&run.view, shapes, run.give_up.clone(), &entry.source) {
                Action::RunStep { index, iteration } => {
                    exec.step(cache, user, tx, index, iteration)
                }
                Action::GiveUp { step, failure } => exec.give_up(cache, tx, &step, failure),
                Action::HandleChildFailures => exec.child_failures(cache, user, tx),
                Action::Rollback => exec.rollback(cache, user, tx),
                Action::Commit => exec
                    .bookkeeping(cache, &mut tx, decide::commit(&run.view, shapes), true)
                    .map(|done| (done, tx)),
                Action::Abandon(failure) => {
                    log::error!("{}: run {}: {failure}", entry.name, run.id);
                    exec.bookkeeping(cache, &mut tx, decide::abandon(&run.view, failure), false)
                        .map(|done| (done, tx))
                }
                Action::Nothing => {
                    tx.rollback()?;
                    return Ok(Processed::Ran);
                }
            };
        match outcome {
            Ok((done, tx)) => {
                tx.commit()?;
                done
            }
            Err(e) => {
                if store::is_give_up(&e).is_some() {
                    // The run was cancelled (or missed a deadline) while its step ran: the step's
                    // transaction is discarded, and the run, claimed again, gives up.
                    bump(&shared.stats.gave_up_after_step);
                    return Ok(Processed::Ran);
                }
                return Err(e);
            }
        }
    };
    bump(&shared.stats.steps);
    let woken_parent = if done.applied.release_pending {
        release(shared, client, cache, run.id, &quiet)
    } else {
        None
    };

    let woken = done
        .woken
        .iter()
        .map(String::as_str)
        .chain(woken_parent.as_deref());
    shared.record_notified(woken.clone(), &quiet);
    // Wake local handlers now rather than after the notification's round trip. This worker
    // goes on claiming for its own handler, so it needs no hint.
    shared.hint_names(woken.filter(|&name| name != &*entry.name));
    if done.applied.is_root && done.transition.status.is_terminal() {
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
