//! What only the blocking edition's step context does: the synchronous transaction, and the
//! helpers that run statements on it.

use postgres::{Statement, Transaction};

use super::{Blocking, MAX_USER_STATEMENTS, Phase, StepContext};
use crate::error::Result;
use crate::failure::{Failure, StepError};
use crate::proto::{self, GiveUpReason};
use crate::runtime::exec;

impl<'c> StepContext<'c, Blocking> {
    /// The step's open transaction. Write your business data here: it commits together with
    /// the step, and is discarded if the step fails.
    ///
    /// Do not commit or roll it back yourself. If one of your statements fails, return the
    /// error (or use a nested savepoint with [`Transaction::transaction`]): an aborted
    /// transaction cannot record the step's completion, and the step is then failed.
    pub fn tx(&mut self) -> &mut Transaction<'c> {
        self.touch();
        &mut self.tx
    }

    /// Runs an engine statement in the step's transaction (after the savepoint, like step
    /// code's own statements), prepared once per connection.
    pub(super) fn run<S: proto::Statement>(&mut self, s: &S) -> Result<S::Output> {
        self.touch();
        exec::run(
            &mut self.tx,
            self.engine.sql,
            Some(&mut self.engine.cache),
            s,
        )
    }

    /// Prepares `sql` once per worker connection and returns the statement, for use with
    /// [`tx`](Self::tx)'s `query`/`execute`. Saves the round trip that preparing an ad-hoc
    /// `&str` query costs on every call.
    ///
    /// ```no_run
    /// # use structured_cooperation::{StepContext, StepResult};
    /// fn record(ctx: &mut StepContext<'_>, amount: i64) -> StepResult {
    ///     let insert = ctx.prepare_cached("INSERT INTO payments (amount) VALUES ($1)")?;
    ///     ctx.tx().execute(&insert, &[&amount])?;
    ///     Ok(())
    /// }
    /// ```
    pub fn prepare_cached(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.engine.statements.0.get(sql) {
            return Ok(statement.clone());
        }
        // Through tx(): a failing Parse aborts the transaction, so the savepoint must exist.
        let statement = self.tx().prepare(sql)?;
        let cache = &mut self.engine.statements.0;
        if cache.len() >= MAX_USER_STATEMENTS {
            cache.clear();
        }
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Whether the run should stop: it was cancelled (on the happy path) or one of its
    /// deadlines passed. A long step can ask now and then, and return early; the runtime also
    /// checks before and after every step.
    pub fn should_give_up(&mut self) -> std::result::Result<bool, postgres::Error> {
        Ok(self.give_up_reason()?.is_some())
    }

    /// Fails the step with the reason the run should stop (see
    /// [`should_give_up`](Self::should_give_up)), if there is one.
    pub fn give_up_if_necessary(&mut self) -> crate::failure::StepResult<()> {
        match self.give_up_reason()? {
            Some(failure) => Err(StepError::from_failure(failure)),
            None => Ok(()),
        }
    }

    fn give_up_reason(&mut self) -> std::result::Result<Option<Failure>, postgres::Error> {
        let rolling_back = self.info.phase == Phase::Compensation;
        let stmt = GiveUpReason::new(self.info.root_id, self.info.run_id, rolling_back);
        self.touch();
        // The helpers that ask promise a `postgres::Error`, so this one goes by the rows.
        let rows = exec::query(
            &mut self.tx,
            self.engine.sql,
            Some(&mut self.engine.cache),
            &stmt,
        )?;
        Ok(proto::Statement::decode(&stmt, rows).ok().flatten())
    }
}
