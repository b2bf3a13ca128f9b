//! One attempt at a handler's next run, as a state machine with no I/O: claim a run, decide
//! what it does, have user code called if it must, persist the outcome, commit, and release
//! a finished run's parent. Every runtime drives the same machine; only the I/O differs.

mod code;
mod io;
mod run;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use super::decide::{ChildrenOf, Transition};
use super::rollback::{Compensation, Plan};
use super::schedule::Backoff;
use super::state::{Instance, Next, StepShape, VersionShape, Wake};
use crate::context::CooperationContext;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::RunId;
use crate::proto::{Applied, Claim, Claimed, ClaimedRun, Fault, GiveUpCheck, Postpone};
use crate::saga::Phase;

pub(crate) use io::{
    CallKind, ConcludeError, Io, Outcome, Output, Report, RunNews, SavepointState, Stmt, UserCall,
    UserOutcome,
};

/// The handler an attempt is for, as the machine needs to know it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandlerRef<'h> {
    pub(crate) name: &'h Arc<str>,
    /// `handler[instance]`: the source of the failures its code raises.
    pub(crate) source: &'h str,
    /// The steps of the version the attempt's run was written by (the newest served until a
    /// run is claimed).
    pub(crate) steps: &'h [StepShape],
    /// Every version of the saga this runtime serves, newest first.
    pub(crate) versions: &'h [VersionShape],
    /// Their names, comma-separated, for the claim.
    pub(crate) served: &'h str,
}

/// What stays the same for the whole attempt.
#[derive(Clone, Copy, Debug)]
struct Env<'h> {
    handler: HandlerRef<'h>,
    /// Who is working, for the history.
    worker: &'h str,
    /// Handlers not to notify: the runtime wakes them itself.
    quiet: &'h [&'h str],
    /// How far a run is pushed back after infrastructure errors.
    backoff: Backoff,
    /// The time the attempt started, given by the driver (for a schedule's next time).
    now: SystemTime,
    /// Whether emissions on topics without handlers fail the step, unless they say.
    strict: bool,
    /// Whether a commit may also claim the handler's next run (see [`Io::CommitClaim`]).
    chain: bool,
    /// Whether a transition is written together with its commit ([`Io::Conclude`]).
    conclude: bool,
}

/// One attempt at the next due run of a handler, from `BEGIN` to the release after `COMMIT`.
///
/// # Calling contract
///
/// The driver (a runtime's worker) repeats: call [`poll`](Self::poll), do exactly what the
/// returned [`Io`] says, and report the result with the matching `handle_*` method, until
/// `poll` returns [`Io::Done`]. Never call `poll` twice without an answer in between; never
/// answer what was not asked. The answers:
///
/// * [`Io::Claim`], [`Io::Run`], [`Io::RollbackToSavepoint`], [`Io::Commit`],
///   [`Io::CommitClaim`], [`Io::Rollback`], [`Io::RunAutocommit`]:
///   [`handle_output`](Self::handle_output) with the
///   statement's decoded output (`Output::Done` for the others), or the error as it came
///   from the database. Errors are classified here, not by the driver: a failed give-up
///   check ends the attempt and discards the step, an aborted transaction after user code
///   that took the savepoint is the user's failure (and is recorded as such), anything else
///   ends the attempt as an infrastructure failure to be retried.
/// * [`Io::Announce`]: tell the scheduler a run was claimed, then
///   [`handle_announced`](Self::handle_announced).
/// * [`Io::CallUser`]: call the user code it names inside the open transaction, catching
///   panics, and answer [`handle_user`](Self::handle_user) with what the code left behind.
/// * [`Io::Done`]: stop; drop a transaction that is still open (it only is after an error),
///   which rolls it back, and act on the [`Report`].
///
/// The machine reads no clock (every time is the database's) and does no I/O, so a driver
/// may be blocking or asynchronous; dropping it at any point is a crash at that point, which
/// the protocol tolerates.
#[derive(Debug)]
pub(crate) struct Attempt<'h> {
    env: Env<'h>,
    next: Option<Io<'h>>,
    state: State,
    report: Report,
}

#[derive(Debug)]
enum State {
    /// Recording, before anything else, the failures earlier attempts could not record (the
    /// one being recorded first).
    Owed(Vec<(RunId, String)>),
    Claim,
    /// Nothing due: rolling back, then done.
    Empty(Option<std::time::Duration>),
    Claimed(Box<Run>),
    Over,
}

impl<'h> Attempt<'h> {
    /// An attempt at `handler`'s next due run, by `worker`, not notifying `quiet` handlers,
    /// pushing a run back by `backoff` after an infrastructure error; `now` is when it starts
    /// (the only clock reading the machine uses: the next time of a scheduled chain).
    pub(crate) fn new(
        handler: HandlerRef<'h>,
        worker: &'h str,
        quiet: &'h [&'h str],
        backoff: Backoff,
        now: SystemTime,
    ) -> Attempt<'h> {
        Attempt {
            env: Env {
                handler,
                worker,
                quiet,
                backoff,
                now,
                strict: false,
                chain: false,
                conclude: false,
            },
            next: Some(Io::Claim(claim_of(handler, worker))),
            state: State::Claim,
            report: Report::new(),
        }
    }

    /// Lets the attempt's commit claim the handler's next run in the same round trip
    /// ([`Io::CommitClaim`]), when nothing else is to follow the commit. The driver that
    /// allows it continues with [`resume`](Self::resume) on what [`Report::next_claim`]
    /// holds, in the transaction the commit opened.
    pub(crate) fn chain_claims(mut self, chain: bool) -> Attempt<'h> {
        self.env.chain = chain;
        self
    }

    /// Lets the attempt write a step's transition, commit it, release the parent and claim
    /// the next run (if [`chain_claims`](Self::chain_claims)) in one round trip
    /// ([`Io::Conclude`]). Only for drivers that commit every step on its own.
    pub(crate) fn conclude_steps(mut self, conclude: bool) -> Attempt<'h> {
        self.env.conclude = conclude;
        self
    }

    /// Starts the attempt from a claim made already (by the previous attempt's
    /// [`Io::CommitClaim`]), in the transaction that claim left open. Instead of
    /// [`owing`](Self::owing): failures owed are recorded by an attempt that starts afresh.
    pub(crate) fn resume(mut self, claimed: Claimed) -> Attempt<'h> {
        self.on_output(Output::Claimed(claimed));
        self
    }

    /// Makes emissions on topics without handlers fail their step (unless the emission says
    /// otherwise); by default they are written and reported in [`Report::unhandled`].
    pub(crate) fn strict_topics(mut self, strict: bool) -> Attempt<'h> {
        self.env.strict = strict;
        self
    }

    /// Makes the attempt first record `owed`: runs whose earlier attempts ended in an
    /// infrastructure error that could not be recorded on them then (the connection was
    /// gone), each with its error. Each is pushed back like any other (see `Postpone`); one
    /// that cannot be recorded now either is reported again in [`Report::unrecorded`].
    pub(crate) fn owing(mut self, mut owed: Vec<(RunId, String)>) -> Attempt<'h> {
        owed.reverse();
        if let Some(io) = self.next_owed(&owed) {
            self.next = Some(io);
            self.state = State::Owed(owed);
        }
        self
    }

    /// The postponement for the last of `owed` (which is in reverse order), if any.
    fn next_owed(&self, owed: &[(RunId, String)]) -> Option<Io<'h>> {
        let (run, error) = owed.last()?;
        let b = self.env.backoff;
        Some(Io::RunAutocommit(Stmt::Postpone(Postpone::new(
            *run, error, b.base, b.max,
        ))))
    }

    /// An owed record was written (or not: `failed`); on to the next, or to the attempt.
    fn after_owed(&mut self, mut owed: Vec<(RunId, String)>, failed: bool) -> Io<'h> {
        let done = owed.pop();
        if failed {
            // The connection is likely gone again: owe them all still.
            self.report.unrecorded.extend(done);
            self.report.unrecorded.extend(owed.into_iter().rev());
            self.state = State::Claim;
            return Io::Claim(claim_of(self.env.handler, self.env.worker));
        }
        match self.next_owed(&owed) {
            Some(io) => {
                self.state = State::Owed(owed);
                io
            }
            None => {
                self.state = State::Claim;
                Io::Claim(claim_of(self.env.handler, self.env.worker))
            }
        }
    }

    /// What to do next.
    ///
    /// # Panics
    ///
    /// When called again before the previous [`Io`] was answered (a driver bug).
    pub(crate) fn poll(&mut self) -> Io<'h> {
        self.next
            .take()
            .expect("Attempt::poll called twice without an answer in between")
    }

    /// Answers [`Io::Claim`], [`Io::Run`], [`Io::RollbackToSavepoint`], [`Io::Commit`],
    /// [`Io::CommitClaim`], [`Io::Rollback`] and [`Io::RunAutocommit`].
    pub(crate) fn handle_output(&mut self, result: Result<Output>) {
        match result {
            Ok(output) => self.on_output(output),
            Err(e) => self.handle_fault(Fault::from(e)),
        }
    }

    /// Like an error given to [`handle_output`](Self::handle_output), already classified.
    pub(crate) fn handle_fault(&mut self, fault: Fault) {
        let io = match std::mem::replace(&mut self.state, State::Over) {
            State::Claimed(mut run) => {
                let io = run.on_fault(self.env, &mut self.report, fault);
                self.state = State::Claimed(run);
                io
            }
            State::Owed(owed) => self.after_owed(owed, true),
            _ => done(&mut self.report, Outcome::Failed(fault.into_error())),
        };
        self.set_next(io);
    }

    /// Answers [`Io::Conclude`] that failed, with what the driver found out about the
    /// commit.
    pub(crate) fn handle_conclude_error(&mut self, failure: ConcludeError) {
        let failure = match failure {
            ConcludeError::NotCommitted(e) => {
                // A constraint checked at the commit (deferred) refused what the step wrote:
                // that is the run's own data, as a value the database refuses is.
                let integrity = matches!(&e, Error::Postgres(pg)
                    if pg.code().is_some_and(|c| c.code().starts_with("23")));
                let fault = if integrity {
                    Fault::Data(e)
                } else {
                    Fault::from(e)
                };
                return self.handle_fault(fault);
            }
            other => other,
        };
        let io = match std::mem::replace(&mut self.state, State::Over) {
            State::Claimed(mut run) => {
                let io = run.on_conclude_error(&mut self.report, failure);
                self.state = State::Claimed(run);
                io
            }
            other => unexpected("handle_conclude_error", &other),
        };
        self.set_next(io);
    }

    /// Answers [`Io::Announce`].
    pub(crate) fn handle_announced(&mut self) {
        let io = match &mut self.state {
            State::Claimed(run) => run.on_announced(self.env, &mut self.report),
            other => unexpected("handle_announced", other),
        };
        self.set_next(io);
    }

    /// Answers [`Io::CallUser`].
    pub(crate) fn handle_user(&mut self, outcome: UserOutcome) {
        let io = match &mut self.state {
            State::Claimed(run) => run.on_user(self.env, &mut self.report, outcome),
            other => unexpected("handle_user", other),
        };
        self.set_next(io);
    }

    fn on_output(&mut self, output: Output) {
        let env = self.env;
        let io = match (std::mem::replace(&mut self.state, State::Over), output) {
            (State::Owed(owed), Output::Postponed(_)) => self.after_owed(owed, false),
            (State::Claim, Output::Claimed(Claimed::Nothing)) => {
                self.state = State::Empty(None);
                Io::Rollback
            }
            (State::Claim, Output::Claimed(Claimed::Later(wait))) => {
                self.state = State::Empty(Some(wait));
                Io::Rollback
            }
            (State::Claim, Output::Claimed(Claimed::Due(run))) => {
                // The run is driven by the version that wrote it (the claim only returns runs
                // of served versions; a run from before versions existed gets the newest).
                if let Some(shape) = (run.version.as_deref())
                    .and_then(|v| self.env.handler.versions.iter().find(|s| s.version == v))
                {
                    self.env.handler.steps = &shape.steps;
                }
                self.state = State::Claimed(Box::new(Run::new(*run)));
                Io::Announce
            }
            (State::Empty(wait), Output::Done) => done(&mut self.report, Outcome::Empty(wait)),
            (State::Claimed(mut run), output) => {
                let io = run.on_output(env, &mut self.report, output);
                self.state = State::Claimed(run);
                io
            }
            (state, output) => unexpected(&format!("{output:?}"), &state),
        };
        self.set_next(io);
    }

    fn set_next(&mut self, io: Io<'h>) {
        if matches!(io, Io::Done(_)) {
            self.state = State::Over;
        }
        self.next = Some(io);
    }
}

/// The claim of `handler`'s next due run by `worker`.
fn claim_of<'h>(handler: HandlerRef<'h>, worker: &'h str) -> Claim<'h> {
    Claim {
        handler: handler.name,
        worker,
        versions: handler.served,
    }
}

/// An answer that does not fit the question: the driver broke the contract.
fn unexpected(answer: &str, state: &State) -> ! {
    panic!("attempt protocol violated: got {answer} while in {state:?}")
}

/// Ends the attempt.
fn done<'h>(report: &mut Report, outcome: Outcome) -> Io<'h> {
    report.outcome = outcome;
    Io::Done(std::mem::replace(report, Report::new()))
}

/// A claimed, due run being processed.
#[derive(Debug)]
struct Run {
    claimed: ClaimedRun,
    payload: Arc<str>,
    /// The run's context, with the context of a pending rollback request merged in.
    context: CooperationContext,
    /// The run's step instances and how their children ended, read when needed.
    facts: Facts,
    instances: Vec<Instance>,
    children: HashMap<u32, ChildrenOf>,
    wait: Await,
    /// The next occurrence of its chain is written (or there is none to write).
    next_scheduled: bool,
    /// What the transition being written changes that the log should tell (once committed).
    news: Option<RunNews>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Facts {
    Unread,
    InstancesRead,
    Read,
}

/// What the machine waits for while a run is claimed.
#[derive(Debug)]
enum Await {
    Announce,
    Instances(Then),
    Children(Then),
    User(Code),
    Emit {
        ran: Box<Ran>,
        next: Next,
    },
    /// Rolling back to the savepoint after user code failed.
    Discard {
        ran: Box<Ran>,
        failure: Failure,
    },
    RequestRollback(Box<Persist>),
    /// The next occurrence of the run's chain is being written, before its last transition.
    ScheduleNext(Box<Persist>),
    Finish {
        terminal: bool,
        /// The code whose results are being written, when a transaction it left aborted is
        /// its own failure.
        blame: Option<Box<Ran>>,
    },
    /// The transition, its commit and what follows ([`Io::Conclude`]).
    Conclude {
        terminal: bool,
        blame: Option<Box<Ran>>,
        /// The parent's release was part of it.
        release: bool,
    },
    Commit {
        applied: Applied,
        terminal: bool,
    },
    Release,
    /// Rolling back to the savepoint after user code failed transiently, then scheduling the
    /// retry.
    DiscardForRetry {
        ran: Box<Ran>,
        failure: Failure,
        delay: std::time::Duration,
    },
    /// The retry is being written.
    Retry,
    /// Rolling back a transaction that is to leave no trace, then done.
    Rollback,
    /// Rolling back after a fault, then recording it on the run: as its poison (a data
    /// exception, with the failure to fail with) or as one more infrastructure failure.
    Recover {
        poison: Option<Failure>,
        error: Error,
    },
    /// The fault is being recorded on the run (outside a transaction).
    Recorded {
        error: Error,
    },
    /// Between two states.
    Nothing,
}

/// What to do once the run's instances and children are read.
#[derive(Debug)]
enum Then {
    ChildFailures,
    Rollback,
    GiveUpRollingBack(Failure),
    /// Start the rollback: the run failed in `step`, after code that left `ran` (if any).
    Fail {
        step: String,
        failure: Failure,
        ran: Option<Box<Ran>>,
    },
}

/// The rollback a run is on: its plan and why.
#[derive(Debug)]
struct Rolling {
    plan: Plan,
    cause: Failure,
}

/// Which user code runs.
#[derive(Debug)]
enum Code {
    Step(usize),
    ChildFailures { latest: Instance, cfh: u32 },
    Compensation(Box<Compensating>),
}

/// A compensating action that runs, within the rollback it is part of.
#[derive(Debug)]
struct Compensating {
    pending: Compensation,
    rolling: Rolling,
}

impl Code {
    fn index(&self) -> usize {
        match self {
            Code::Step(index) => *index,
            Code::ChildFailures { latest, .. } => latest.step,
            Code::Compensation(c) => c.pending.instance.step,
        }
    }

    fn phase(&self) -> Phase {
        match self {
            Code::Step(_) => Phase::Step,
            Code::ChildFailures { .. } => Phase::ChildFailures,
            Code::Compensation(_) => Phase::Compensation,
        }
    }
}

/// What user code left behind, until its outcome is written.
#[derive(Debug)]
struct Ran {
    code: Code,
    /// The name its history entries carry: the step's, or the compensation sub-step's.
    step: String,
    savepoint: bool,
    wake: Wake,
    context: CooperationContext,
    /// Its child messages, recorded with the instance it becomes.
    messages: Vec<Uuid>,
}

/// A transition on its way to the database.
#[derive(Debug)]
struct Persist {
    t: Transition,
    check: GiveUpCheck,
    /// The code whose outcome this is, if code ran: its context is saved.
    code: Option<Ran>,
    /// Whether a transaction found aborted is the code's failure (only when writing the
    /// results of code that succeeded).
    blame: bool,
}

impl Persist {
    fn bookkeeping(t: Transition, check: GiveUpCheck) -> Persist {
        Persist {
            t,
            check,
            code: None,
            blame: false,
        }
    }
}

#[cfg(test)]
#[path = "attempt_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "attempt_rollback_tests.rs"]
mod rollback_tests;

#[cfg(test)]
#[path = "attempt_retry_tests.rs"]
mod retry_tests;

#[cfg(test)]
#[path = "attempt_conclude_tests.rs"]
mod conclude_tests;
