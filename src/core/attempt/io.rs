//! The attempt's vocabulary with its driver: what it asks for ([`Io`]), and what the driver
//! answers ([`Output`], [`UserOutcome`]) and finally hears ([`Report`]).

use std::collections::HashMap;
use std::time::Duration;

use postgres::Row;
use postgres::types::ToSql;

use crate::context::CooperationContext;
use crate::core::decide::ChildrenOf;
use crate::core::{Instance, Next, Wake};
use crate::error::{Error, Result};
use crate::failure::{Failure, StepResult};
use crate::ids::RunId;
use crate::proto::{
    Applied, Children, Claim, Claimed, Conclude, Concluded, Emit, Emitted, Finish, Instances,
    Poison, Postpone, Postponed, Release, RequestRollback, Requested, ScheduleRetry, Statement,
    StmtId,
};
use crate::saga::{ChildFailures, Emission, StepInfo};

/// What the attempt asks its driver to do next. Each is answered with exactly one call (see
/// [`Attempt`](super::Attempt)), except `Done`, which ends the attempt.
#[derive(Debug)]
pub(crate) enum Io<'h> {
    /// Open the transaction, claim the handler's next due run in it, and take the step's
    /// savepoint (one round trip after `BEGIN`: `Claim::simple_text`). Answer:
    /// `handle_output` with `Output::Claimed`, or the error.
    Claim(Claim<'h>),
    /// Run this statement inside the transaction. Answer: `handle_output` with what the
    /// statement decoded into (`Statement::decode` of this very value gives it).
    Run(Stmt<'h>),
    /// A run was claimed: tell the scheduler (so it can put another worker on the handler),
    /// then `handle_announced()`.
    Announce,
    /// Run user code inside the transaction (a step body, a child-failure handler or a
    /// compensating action), catching panics. Answer: `handle_user`.
    CallUser(UserCall),
    /// Roll back to the savepoint user code took (discarding what it wrote, keeping the
    /// claim's row lock). Answer: `handle_output(Ok(Output::Done))` or the error.
    RollbackToSavepoint,
    /// Commit the transaction. Answer: `handle_output(Ok(Output::Done))` or the error.
    Commit,
    /// Commit the transaction, then open the next one and claim the handler's next due run
    /// in it, taking the step's savepoint, all in one round trip (`COMMIT; BEGIN; ...`).
    /// Answer: `handle_output` with `Output::Claimed` (the commit happened), `Output::Done`
    /// if the driver committed without claiming (as for `Commit`), or the error (whether the
    /// commit happened is then unknown, as for `Commit`). The claim ends up in
    /// [`Report::next_claim`]; the driver keeps the new transaction open for the attempt it
    /// resumes with it. Only asked of drivers that allowed it (`Attempt::chain_claims`).
    CommitClaim(Claim<'h>),
    /// Persist the transition and commit, then (each in the same round trip, as asked)
    /// release the run's parent in a transaction of its own and claim the handler's next run
    /// in the next one (leaving it open, as for `CommitClaim`; a driver whose handler owes a
    /// failure leaves the claim out). Answer: `handle_output` with `Output::Concluded`, or
    /// `handle_conclude_error` with whether the commit happened, which the driver finds out
    /// (`Conclude::status_text`) after ending whatever transaction the error left open, except
    /// when the statement before the transition found the transaction already aborted: then
    /// nothing ran and the transaction stays open with its savepoint (`NotCommitted`).
    /// Only asked of drivers that allowed it (`Attempt::conclude_steps`).
    Conclude(Conclude<'h>),
    /// Roll the transaction back. Answer: `handle_output(Ok(Output::Done))` or the error. A
    /// driver with no transaction open (after a failed `Conclude`) answers `Done` at once.
    Rollback,
    /// Run this statement on its own, outside any transaction (autocommit): the release of a
    /// finished run's parent after the run's commit, or the record of a failed attempt after
    /// its transaction ended. Answer: `handle_output`.
    RunAutocommit(Stmt<'h>),
    /// The attempt is over. A transaction still open (only after an error) is to be dropped,
    /// which rolls it back.
    Done(Report),
}

/// A statement an attempt runs.
#[derive(Debug)]
pub(crate) enum Stmt<'h> {
    Instances(Instances),
    Children(Children),
    Emit(Emit<'h>),
    RequestRollback(RequestRollback<'h>),
    Finish(Finish<'h>),
    Release(Release<'h>),
    ScheduleRetry(ScheduleRetry<'h>),
    Postpone(Postpone),
    Poison(Poison),
}

/// What the driver reports back for everything but user code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// `Begin`, `RollbackToSavepoint`, `Commit` and `Rollback` succeeded.
    Done,
    Claimed(Claimed),
    Instances(Vec<Instance>),
    Children(HashMap<u32, ChildrenOf>),
    Emitted(Emitted),
    Requested(Requested),
    Applied(Applied),
    Released(Option<String>),
    Retried(u32),
    Postponed(Option<Postponed>),
    /// Whether the run was marked, and if so whether for the first time.
    Poisoned(Option<bool>),
    Concluded(Concluded),
}

/// How an [`Io::Conclude`] failed, as far as the driver could tell.
#[derive(Debug)]
pub(crate) enum ConcludeError {
    /// Nothing was committed (the transition, or its commit, failed).
    NotCommitted(Error),
    /// The step committed; what followed its commit failed.
    Committed(Error),
    /// Whether the step committed is unknown (the connection is gone).
    Unknown(Error),
}

impl Statement for Stmt<'_> {
    type Output = Output;

    fn id(&self) -> StmtId {
        match self {
            Stmt::Instances(s) => s.id(),
            Stmt::Children(s) => s.id(),
            Stmt::Emit(s) => s.id(),
            Stmt::RequestRollback(s) => s.id(),
            Stmt::Finish(s) => s.id(),
            Stmt::Release(s) => s.id(),
            Stmt::ScheduleRetry(s) => s.id(),
            Stmt::Postpone(s) => s.id(),
            Stmt::Poison(s) => s.id(),
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Stmt::Instances(s) => s.params(),
            Stmt::Children(s) => s.params(),
            Stmt::Emit(s) => s.params(),
            Stmt::RequestRollback(s) => s.params(),
            Stmt::Finish(s) => s.params(),
            Stmt::Release(s) => s.params(),
            Stmt::ScheduleRetry(s) => s.params(),
            Stmt::Postpone(s) => s.params(),
            Stmt::Poison(s) => s.params(),
        }
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Output> {
        Ok(match self {
            Stmt::Instances(s) => Output::Instances(s.decode(rows)?),
            Stmt::Children(s) => Output::Children(s.decode(rows)?),
            Stmt::Emit(s) => Output::Emitted(s.decode(rows)?),
            Stmt::RequestRollback(s) => Output::Requested(s.decode(rows)?),
            Stmt::Finish(s) => Output::Applied(s.decode(rows)?),
            Stmt::Release(s) => Output::Released(s.decode(rows)?),
            Stmt::ScheduleRetry(s) => Output::Retried(s.decode(rows)?),
            Stmt::Postpone(s) => Output::Postponed(s.decode(rows)?),
            Stmt::Poison(s) => Output::Poisoned(s.decode(rows)?),
        })
    }
}

/// Which user code to call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// The step body of `info.step_index`.
    Step,
    /// The step's child-failure handler, with the failures.
    ChildFailures(ChildFailures),
    /// The step's compensating action, with the rollback's cause.
    Compensation(Failure),
}

/// User code to call, and everything its step context starts from.
#[derive(Debug)]
pub(crate) struct UserCall {
    pub(crate) kind: CallKind,
    pub(crate) info: StepInfo,
    /// The run's cooperation context as the code starts with it.
    pub(crate) context: CooperationContext,
}

/// Whether user code touched the transaction (the step's savepoint is taken with the claim,
/// so a rollback to it is needed only if the code may have written something).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SavepointState {
    Untouched,
    Touched,
}

/// How user code ended, with what it left behind in its step context.
#[derive(Debug)]
pub(crate) struct UserOutcome {
    /// What it returned (a compensation's `Ok(())` as `Next::Continue`), or its panic.
    pub(crate) result: std::thread::Result<StepResult<Next>>,
    /// Messages it emitted or launched, to be written if it succeeded.
    pub(crate) emissions: Vec<Emission>,
    pub(crate) savepoint: SavepointState,
    /// When the run's next step may start, as the code asked.
    pub(crate) wake: Wake,
    /// The context as the code left it.
    pub(crate) context: CooperationContext,
}

/// How an attempt ended, for the scheduler.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing was due; `Some` says how long until the handler's earliest run wakes.
    Empty(Option<Duration>),
    /// A run was processed (its transition committed, or it was discarded to be retried).
    Ran,
    /// An infrastructure error ended the attempt; the run is untouched and is retried from
    /// its last committed state.
    Failed(Error),
}

/// What the driver needs to know once the attempt is over.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) outcome: Outcome,
    /// A transition committed.
    pub(crate) committed: bool,
    /// User code that failed (an error, a panic, a transaction it left aborted).
    pub(crate) step_failures: u32,
    /// The post-step check found the run must give up: its step was discarded.
    pub(crate) gave_up_after_step: bool,
    /// Handlers that got runs (emissions, rollback requests, a parent made runnable): wake
    /// those served locally.
    pub(crate) woken: Vec<String>,
    /// A top-level run reached a terminal state: wake whoever waits for roots.
    pub(crate) root_finished: bool,
    /// The release of this run's parent after the commit failed; the run stays marked and a
    /// sweep finishes it.
    pub(crate) release_error: Option<(RunId, Error)>,
    /// User code failed transiently and its run was scheduled to try again.
    pub(crate) retried: u32,
    /// The run's own data was refused by the database: it was marked to fail.
    pub(crate) poisoned: bool,
    /// The run was pushed back after an infrastructure error.
    pub(crate) postponed: Option<(RunId, Postponed)>,
    /// Runs whose infrastructure failure could not be recorded on them (the connection was
    /// gone), with the error: a later attempt at the handler records them (see
    /// `Attempt::owing`).
    pub(crate) unrecorded: Vec<(RunId, String)>,
    /// Messages written on topics without any registered handler (one entry per message):
    /// nobody runs them, nobody waits for them.
    pub(crate) unhandled: Vec<Unhandled>,
    /// What the committed transition changed, for the log.
    pub(crate) news: Option<RunNews>,
    /// What the commit's claim found ([`Io::CommitClaim`]), in the transaction it opened.
    pub(crate) next_claim: Option<Claimed>,
}

/// A committed transition worth a log line beyond the step's own: a run that failed (and
/// starts rolling back), whose rollback failed, or that finished.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunNews {
    pub(crate) run: RunId,
    pub(crate) root: crate::ids::RootId,
    pub(crate) status: crate::core::RunStatus,
    /// Why it failed (entering its rollback path), why its rollback failed, or (with
    /// `retry_in`) why its code runs again.
    pub(crate) failure: Option<Failure>,
    /// The code failed transiently and runs again after this long.
    pub(crate) retry_in: Option<Duration>,
}

/// A message written on a topic that no handler was registered for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unhandled {
    pub(crate) topic: String,
    /// The run whose step (or whose end, for a chain's next occurrence) emitted it.
    pub(crate) run: RunId,
    pub(crate) step: Option<String>,
}

impl Report {
    pub(super) fn new() -> Report {
        Report {
            outcome: Outcome::Ran,
            committed: false,
            step_failures: 0,
            gave_up_after_step: false,
            woken: Vec::new(),
            root_finished: false,
            release_error: None,
            retried: 0,
            poisoned: false,
            postponed: None,
            unrecorded: Vec::new(),
            unhandled: Vec::new(),
            news: None,
            next_claim: None,
        }
    }
}
