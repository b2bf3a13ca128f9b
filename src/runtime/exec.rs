//! Running user code for a claimed run — a step body, a child-failure handler, or a
//! compensating action — inside the run's transaction, and persisting what the core decides.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use postgres::Transaction;

use super::{HandlerEntry, Shared, bump};
use crate::context::CooperationContext;
use crate::core::decide::{self, ChildFailurePlan, ChildrenOf, Transition};
use crate::core::rollback;
use crate::core::{Next, Wake};
use crate::error::{Error, Result};
use crate::failure::{Failure, StepResult};
use crate::saga::{
    ChildFailures, Parts, Phase, SAVEPOINT, SavepointState, StepContext, StepInfo, UserStatements,
};
use crate::store::{self, Applied, Claimed, Emitter, StmtCache};

mod rollback_path;

/// What a processed run leaves for after the commit.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) transition: Transition,
    /// Handlers that got runs (emissions) or were asked to roll back.
    pub(crate) woken: Vec<String>,
    pub(crate) applied: Applied,
}

/// One claimed run being processed.
pub(crate) struct Exec<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) entry: &'a HandlerEntry,
    pub(crate) run: &'a Claimed,
    pub(crate) quiet: &'a [&'a str],
    /// The run's context, with the context of a pending rollback request merged in.
    pub(crate) context: CooperationContext,
}

/// How user code ended, with what it left behind.
struct Called<'c, T> {
    tx: Transaction<'c>,
    emissions: Vec<crate::saga::Emission>,
    savepoint: bool,
    /// When the run's next step may start, as the code asked.
    wake: Wake,
    /// The context as the code left it.
    context: CooperationContext,
    result: std::result::Result<T, Failure>,
}

/// What a transition is persisted with, besides the transition itself.
struct Written<'w> {
    /// Handlers that got runs from emissions.
    woken: Vec<String>,
    /// What the user code of the instance the transition records emitted.
    emissions: &'w [crate::saga::Emission],
    /// The give-up check to run first, if any.
    check: Option<bool>,
    /// The run's context after the code that ran (`None`: unchanged).
    context: Option<&'w CooperationContext>,
}

impl<'w> Written<'w> {
    /// No emissions and no check; only the context (if code ran).
    fn context(context: Option<&'w CooperationContext>) -> Written<'w> {
        Written {
            woken: Vec::new(),
            emissions: &[],
            check: None,
            context,
        }
    }
}

/// Which give-up check runs before the results of user code are written: none, or the
/// happy path's or the rollback path's.
const HAPPY_PATH: Option<bool> = Some(false);
const ROLLBACK_PATH: Option<bool> = Some(true);

impl<'a> Exec<'a> {
    fn sql(&self) -> &'a store::Sql {
        self.shared.client.sql()
    }

    fn step_name(&self, index: usize) -> String {
        self.entry
            .saga
            .shapes()
            .get(index)
            .map_or_else(|| format!("#{index}"), |s| s.name.clone())
    }

    /// Runs `body` with a step context over `tx`, catching panics. `successor_ran` matters
    /// only to compensations (see `StepContext::successor_ran`).
    #[allow(clippy::too_many_arguments)]
    fn call<'c, T>(
        &self,
        tx: Transaction<'c>,
        user: &'c mut UserStatements,
        phase: Phase,
        index: usize,
        iteration: u32,
        successor_ran: bool,
        body: impl FnOnce(&mut StepContext<'_>) -> StepResult<T>,
    ) -> Result<Called<'c, T>> {
        let step = self.step_name(index);
        let info = StepInfo {
            handler: self.entry.name.clone(),
            run_id: self.run.id,
            root_id: self.run.root_id,
            message_id: self.run.message_id,
            topic: self.run.topic.clone(),
            step_name: step.clone(),
            step_index: index,
            iteration,
            phase,
            run_count: self.run.run_count,
            payload: Arc::from(self.run.payload.as_str()),
            successor_ran,
            give_up_sql: self.sql().give_up.clone(),
            schema: self.shared.client.schema_arc(),
            max_json_bytes: self.shared.client.max_json_bytes(),
        };
        let mut ctx = StepContext::new(tx, info, user, self.context.clone());
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&mut ctx)));
        let Parts {
            tx,
            emissions,
            savepoint,
            wake,
            context,
        } = ctx.into_parts();
        let savepoint = match savepoint {
            SavepointState::Failed(e) => return Err(e.into()),
            SavepointState::Taken => true,
            SavepointState::NotTaken => false,
        };
        let source = self.entry.source.as_str();
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Failure::from_step_error(err, source, &step)),
            Err(payload) => Err(Failure::from_panic(&*payload, source, &step)),
        };
        if let Err(failure) = &result {
            bump(&self.shared.stats.step_failures);
            log::warn!(
                "{}: {phase:?} of step {step:?} of run {} failed: {failure}",
                self.entry.name,
                self.run.id
            );
        }
        Ok(Called {
            tx,
            emissions,
            savepoint,
            wake,
            context,
            result,
        })
    }

    /// Discards what failed user code wrote (everything after the savepoint).
    fn discard(tx: &mut Transaction<'_>, savepoint: bool) -> Result<()> {
        if savepoint {
            tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))?;
        }
        Ok(())
    }

    /// Writes the emissions of user code that succeeded, as children of the run's next
    /// instance, attributed to `step` in the history.
    fn emit(
        &self,
        tx: &mut Transaction<'_>,
        cache: &mut StmtCache,
        step: &str,
        emissions: &[crate::saga::Emission],
        check: Option<bool>,
    ) -> Result<store::Emitted> {
        let emitter = Emitter {
            root_id: self.run.root_id,
            run_id: self.run.id,
            instance: self.run.view.instances,
            handler: &self.entry.name,
            step,
        };
        store::emit(
            tx,
            self.sql(),
            Some(cache),
            Some(&emitter),
            emissions,
            &self.shared.instance,
            self.quiet,
            check,
        )
    }

    /// Persists `t` (first asking children to roll back, if it says so). `emissions` are what
    /// the user code of the instance `t` records emitted; `check` is the give-up check to run
    /// first, if any.
    /// Writes what happy-path user code produced: its emissions, then the transition the core
    /// derives from how many children they created (`decide`), with the delay the code asked
    /// for. `Ok(Err(failure))` when the core rejects the outcome (the step then fails).
    #[allow(clippy::too_many_arguments)]
    fn write_happy_path(
        &self,
        tx: &mut Transaction<'_>,
        cache: &mut StmtCache,
        step: &str,
        emissions: &[crate::saga::Emission],
        wake: Wake,
        context: &CooperationContext,
        decide: impl FnOnce(u32) -> std::result::Result<Transition, Failure>,
    ) -> Result<std::result::Result<Done, Failure>> {
        let emitted = self.emit(tx, cache, step, emissions, HAPPY_PATH)?;
        match decide(emitted.children) {
            Ok(mut t) => {
                t.wake = wake;
                let written = Written {
                    woken: emitted.handlers,
                    emissions,
                    check: HAPPY_PATH,
                    context: Some(context),
                };
                self.persist(tx, cache, t, written).map(Ok)
            }
            Err(failure) => Ok(Err(failure)),
        }
    }

    fn persist(
        &self,
        tx: &mut Transaction<'_>,
        cache: &mut StmtCache,
        mut t: Transition,
        written: Written<'_>,
    ) -> Result<Done> {
        let Written {
            mut woken,
            emissions,
            check,
            context,
        } = written;
        // A pending rollback context is merged into `self.context`: save that even when user
        // code did not run.
        let context =
            context.or_else(|| self.run.rollback_context.is_some().then_some(&self.context));
        if let Some((instance, cause)) = &t.rollback_request {
            let current = context.unwrap_or(&self.context).to_stored();
            let requested = store::request_rollback(
                tx,
                self.sql(),
                self.run.id,
                *instance,
                cause,
                current.as_deref(),
                self.quiet,
            )?;
            t.pending_children = requested.children;
            woken.extend(requested.handlers);
        }
        let stored = context.map(CooperationContext::to_stored);
        let messages: Vec<uuid::Uuid> = emissions
            .iter()
            .filter(|e| e.scoped)
            .map(|e| e.id)
            .collect();
        let applied = store::apply(
            tx,
            self.sql(),
            Some(cache),
            self.run.id,
            &t,
            &self.shared.instance,
            &messages,
            check,
            stored.as_ref().map(Option::as_deref),
        )?;
        Ok(Done {
            transition: t,
            woken,
            applied,
        })
    }

    /// The run fails in `step` with `failure`: record it and start its rollback.
    /// `context` is the failing code's context, if code ran: the rollback starts from it.
    fn fail(
        &self,
        tx: &mut Transaction<'_>,
        cache: &mut StmtCache,
        step: &str,
        failure: Failure,
        context: Option<&CooperationContext>,
    ) -> Result<Done> {
        let instances = store::instances(tx, self.sql(), self.run.id)?;
        let children = store::children(tx, self.sql(), self.run.id)?;
        let plan = rollback::plan(&instances, self.entry.saga.shapes());
        let ctx = self.rollback_ctx(&plan, &failure, &children);
        self.persist(
            tx,
            cache,
            rollback::begin(&ctx, step),
            Written::context(context),
        )
    }

    fn rollback_ctx<'p>(
        &'p self,
        plan: &'p rollback::Plan,
        cause: &'p Failure,
        children: &'p HashMap<u32, ChildrenOf>,
    ) -> rollback::Ctx<'p> {
        rollback::Ctx {
            run: &self.run.view,
            steps: self.entry.saga.shapes(),
            plan,
            cause,
            children,
            source: &self.entry.source,
        }
    }

    /// After user code succeeded: if writing its results fails because user code left the
    /// transaction aborted (a failed statement it ignored), that is the user's failure.
    fn aborted_by_user(&self, e: &Error, savepoint: bool, step: &str) -> Option<Failure> {
        let aborted = matches!(e, Error::Postgres(pg)
            if pg.code() == Some(&postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION));
        (savepoint && aborted).then(|| {
            bump(&self.shared.stats.step_failures);
            Failure::new(
                "structured_cooperation::TransactionAborted",
                format!(
                    "the step returned successfully but a statement it ran had failed, leaving \
                     its transaction aborted ({e}); return the statement's error, or run it \
                     inside a nested savepoint"
                ),
                self.entry.source.as_str(),
            )
            .with_step(step)
        })
    }

    /// Runs step `index` and persists its outcome.
    pub(crate) fn step<'c>(
        &self,
        cache: &mut StmtCache,
        user: &'c mut UserStatements,
        tx: Transaction<'c>,
        index: usize,
        iteration: u32,
    ) -> Result<(Done, Transaction<'c>)> {
        let saga = &self.entry.saga;
        let payload = self.run.payload.as_str();
        let called = self.call(tx, user, Phase::Step, index, iteration, false, |ctx| {
            saga.run_step(index, ctx, payload)
        })?;
        let Called {
            mut tx,
            emissions,
            savepoint,
            wake,
            context,
            result,
        } = called;
        let step = self.step_name(index);
        let shapes = saga.shapes();
        // A bad `Next` fails the step before anything of it is written.
        let result = result
            .and_then(|next| decide::target(next, index, shapes, &self.entry.source).map(|_| next));
        let failure = match result {
            Ok(next) => {
                let written = self.write_happy_path(
                    &mut tx,
                    cache,
                    &step,
                    &emissions,
                    wake,
                    &context,
                    |children| {
                        decide::after_step(
                            &self.run.view,
                            shapes,
                            index,
                            next,
                            children,
                            &self.entry.source,
                        )
                    },
                );
                match written {
                    Ok(Ok(done)) => return Ok((done, tx)),
                    Ok(Err(failure)) => failure,
                    Err(e) => self.aborted_by_user(&e, savepoint, &step).ok_or(e)?,
                }
            }
            Err(failure) => failure,
        };
        Self::discard(&mut tx, savepoint)?;
        let done = self.fail(&mut tx, cache, &step, failure, Some(&context))?;
        Ok((done, tx))
    }

    /// Children of the latest step instance failed: run the step's handler (or rethrow).
    pub(crate) fn child_failures<'c>(
        &self,
        cache: &mut StmtCache,
        user: &'c mut UserStatements,
        mut tx: Transaction<'c>,
    ) -> Result<(Done, Transaction<'c>)> {
        let sql = self.sql();
        let instances = store::instances(&mut tx, sql, self.run.id)?;
        let Some(latest) = instances.last().copied() else {
            // Nothing ran, so no child can have failed: a corrupt count. Don't loop on it.
            let failure = Failure::new(
                "structured_cooperation::InconsistentState",
                "children failed but the run has no step instances",
                self.entry.source.as_str(),
            );
            let done = self.fail(&mut tx, cache, &self.step_name(0), failure, None)?;
            return Ok((done, tx));
        };
        let children = store::children(&mut tx, sql, self.run.id)?;
        let of_latest = children.get(&latest.seq).cloned().unwrap_or_default();
        let shapes = self.entry.saga.shapes();
        let plan = decide::child_failures(
            &self.run.view,
            shapes,
            &latest,
            &of_latest,
            &self.entry.source,
        );
        let (index, iteration, cfh, next, failure) = match plan {
            ChildFailurePlan::Rethrow { step, failure } => {
                let done = self.fail(&mut tx, cache, &step, failure, None)?;
                return Ok((done, tx));
            }
            ChildFailurePlan::Run {
                index,
                iteration,
                cfh,
                next,
                failure,
            } => (index, iteration, cfh, next, failure),
        };
        let failures = ChildFailures::new(failure, next, cfh);
        let saga = &self.entry.saga;
        let payload = self.run.payload.as_str();
        let Called {
            mut tx,
            emissions,
            savepoint,
            wake,
            context,
            result,
        } = self.call(
            tx,
            user,
            Phase::ChildFailures,
            index,
            iteration,
            false,
            |ctx| saga.handle_child_failures(index, ctx, payload, &failures),
        )?;
        let step = self.step_name(index);
        let result = result.and_then(|next: Next| {
            decide::target(next, index, shapes, &self.entry.source).map(|_| next)
        });
        let failure = match result {
            Ok(next) => {
                let written = self.write_happy_path(
                    &mut tx,
                    cache,
                    &step,
                    &emissions,
                    wake,
                    &context,
                    |children| {
                        decide::after_child_failures(
                            &self.run.view,
                            shapes,
                            &latest,
                            cfh,
                            next,
                            children,
                            &self.entry.source,
                        )
                    },
                );
                match written {
                    Ok(Ok(done)) => return Ok((done, tx)),
                    Ok(Err(failure)) => failure,
                    Err(e) => self.aborted_by_user(&e, savepoint, &step).ok_or(e)?,
                }
            }
            Err(failure) => failure,
        };
        Self::discard(&mut tx, savepoint)?;
        let done = self.fail(&mut tx, cache, &step, failure, Some(&context))?;
        Ok((done, tx))
    }

    /// Persists a transition that runs no user code (with the happy path's give-up check when
    /// `check` is set: a commit must not happen after a cancellation was recorded).
    pub(crate) fn bookkeeping(
        &self,
        cache: &mut StmtCache,
        tx: &mut Transaction<'_>,
        t: Transition,
        check: bool,
    ) -> Result<Done> {
        let written = Written {
            check: check.then_some(false),
            ..Written::context(None)
        };
        self.persist(tx, cache, t, written)
    }
}
