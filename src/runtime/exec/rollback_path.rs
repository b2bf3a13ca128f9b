//! The rollback path of a claimed run: compensations, and giving up.

use postgres::Transaction;

use super::{Called, Done, Exec, ROLLBACK_PATH, Written};
use crate::core::rollback::{self, Advance};
use crate::error::Result;
use crate::failure::Failure;
use crate::saga::{Phase, UserStatements};
use crate::store::{self, StmtCache};

impl Exec<'_> {
    /// Takes a rolling-back run as far as it can go in this transaction, running at most one
    /// compensating action.
    pub(crate) fn rollback<'c>(
        &self,
        cache: &mut StmtCache,
        user: &'c mut UserStatements,
        mut tx: Transaction<'c>,
    ) -> Result<(Done, Transaction<'c>)> {
        let sql = self.sql();
        let cause = self.cause()?;
        let instances = store::instances(&mut tx, sql, self.run.id)?;
        let children = store::children(&mut tx, sql, self.run.id)?;
        let plan = rollback::plan(&instances, self.entry.saga.shapes());
        let ctx = self.rollback_ctx(&plan, &cause, &children);
        let pending = match rollback::resume(&ctx) {
            Advance::Done(t) => {
                let done = self.persist(&mut tx, cache, *t, Written::context(None))?;
                return Ok((done, tx));
            }
            Advance::Compensate(pending) => pending,
        };
        let (step, iteration, name) = (
            pending.instance.step,
            pending.instance.iteration,
            pending.name.clone(),
        );
        // Whether the step after the one undone ran after it (try/finally's marker).
        let successor_ran = instances.iter().any(|i| {
            i.seq > pending.instance.seq
                && i.step == step + 1
                && i.kind == crate::core::InstanceKind::Step
        });
        let saga = &self.entry.saga;
        let payload = self.run.payload.as_str();
        let Called {
            mut tx,
            emissions,
            savepoint,
            context,
            result,
            ..
        } = self.call(
            tx,
            user,
            Phase::Compensation,
            step,
            iteration,
            successor_ran,
            |ctx| saga.compensate(step, ctx, payload, &cause),
        )?;
        let outcome = match result {
            Ok(()) => {
                let written = self
                    .emit(&mut tx, cache, &name, &emissions, ROLLBACK_PATH)
                    .and_then(|emitted| {
                        let t = rollback::after_compensation(
                            &ctx,
                            pending.clone(),
                            Ok(()),
                            !emissions.is_empty(),
                            emitted.children,
                        );
                        let written = Written {
                            woken: emitted.handlers,
                            emissions: &emissions,
                            check: ROLLBACK_PATH,
                            context: Some(&context),
                        };
                        self.persist(&mut tx, cache, t, written)
                    });
                match written {
                    Ok(done) => return Ok((done, tx)),
                    Err(e) => Err(self.aborted_by_user(&e, savepoint, &name).ok_or(e)?),
                }
            }
            Err(failure) => Err(failure),
        };
        Self::discard(&mut tx, savepoint)?;
        let t = rollback::after_compensation(&ctx, pending, outcome, false, 0);
        let done = self.persist(&mut tx, cache, t, Written::context(Some(&context)))?;
        Ok((done, tx))
    }

    /// The run must give up: on the happy path it fails and starts its rollback; on the
    /// rollback path its rollback fails where it stands.
    pub(crate) fn give_up<'c>(
        &self,
        cache: &mut StmtCache,
        mut tx: Transaction<'c>,
        step: &str,
        failure: Failure,
    ) -> Result<(Done, Transaction<'c>)> {
        log::info!(
            "{}: run {} gives up: {}",
            self.entry.name,
            self.run.id,
            failure.message()
        );
        if self.run.view.status != crate::core::RunStatus::RollingBack {
            let done = self.fail(&mut tx, cache, step, failure, None)?;
            return Ok((done, tx));
        }
        let cause = self.cause()?;
        let sql = self.sql();
        let instances = store::instances(&mut tx, sql, self.run.id)?;
        let children = store::children(&mut tx, sql, self.run.id)?;
        let plan = rollback::plan(&instances, self.entry.saga.shapes());
        let ctx = self.rollback_ctx(&plan, &cause, &children);
        let done = self.persist(
            &mut tx,
            cache,
            rollback::give_up(&ctx, failure),
            Written::context(None),
        )?;
        Ok((done, tx))
    }

    /// The run's rollback cause.
    fn cause(&self) -> Result<Failure> {
        Ok(self.run.cause()?.unwrap_or_else(|| {
            Failure::new(
                "structured_cooperation::UnknownCause",
                "the run is rolling back but its cause was not recorded",
                self.entry.source.as_str(),
            )
        }))
    }
}
