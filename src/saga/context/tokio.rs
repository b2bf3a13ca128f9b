//! What only the tokio edition's step context does: the asynchronous transaction, and the
//! helpers that run statements on it. Each is the blocking method of the same name, async.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::{Statement, Transaction};

use super::values::{decode_values, one_value};
use super::{MAX_USER_STATEMENTS, Phase, StepContext};
use crate::error::Result;
use crate::failure::{Failure, StepError, StepResult};
use crate::proto::{self, GiveUpReason};
use crate::saga::Tokio;
use crate::tokio::exec;
use crate::typed::{AsReturnName, ChildValue, Request};

impl<'c> StepContext<'c, Tokio> {
    /// The step's open transaction. Like [`crate::StepContext::tx`], but async.
    ///
    /// Do not commit or roll it back yourself. If one of your statements fails, return the
    /// error (or use a nested savepoint): an aborted transaction cannot record the step's
    /// completion, and the step is then failed. Statements run concurrently on the returned
    /// `&Transaction` (`join!`) are pipelined on the one connection.
    pub async fn tx(&mut self) -> &Transaction<'c> {
        self.touch();
        &self.tx
    }

    /// Runs an engine statement in the step's transaction (after the savepoint), prepared
    /// once per connection.
    async fn run<S: proto::Statement + Sync>(&mut self, s: &S) -> Result<S::Output> {
        self.touch();
        exec::run(&self.tx, self.engine.sql, Some(&mut self.engine.cache), s).await
    }

    /// Like [`crate::StepContext::prepare_cached`], but async.
    pub async fn prepare_cached(
        &mut self,
        sql: &str,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.engine.statements.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx().await.prepare(sql).await?;
        let cache = &mut self.engine.statements.0;
        if cache.len() >= MAX_USER_STATEMENTS {
            cache.clear();
        }
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Like [`crate::StepContext::should_give_up`], but async.
    pub async fn should_give_up(&mut self) -> std::result::Result<bool, tokio_postgres::Error> {
        Ok(self.give_up_reason().await?.is_some())
    }

    /// Like [`crate::StepContext::give_up_if_necessary`], but async.
    pub async fn give_up_if_necessary(&mut self) -> StepResult<()> {
        match self.give_up_reason().await? {
            Some(failure) => Err(StepError::from_failure(failure)),
            None => Ok(()),
        }
    }

    async fn give_up_reason(
        &mut self,
    ) -> std::result::Result<Option<Failure>, tokio_postgres::Error> {
        let rolling_back = self.info.phase == Phase::Compensation;
        let stmt = GiveUpReason::new(self.info.root_id, self.info.run_id, rolling_back);
        self.touch();
        let rows = exec::query(
            &self.tx,
            self.engine.sql,
            Some(&mut self.engine.cache),
            &stmt,
        )
        .await?;
        Ok(proto::Statement::decode(&stmt, rows).ok().flatten())
    }

    /// Like [`crate::StepContext::store_value`], but async.
    pub async fn store_value<T: Serialize + ?Sized>(
        &mut self,
        name: impl AsReturnName<T>,
        value: &T,
    ) -> Result<()> {
        let (name, json) = self.encode_value(name.return_name(), value)?;
        let stmt = self.store_statement(name, &json);
        let stored = self.run(&stmt).await?;
        self.stored(stored, name)
    }

    /// Like [`crate::StepContext::child_values`], but async.
    pub async fn child_values<T: DeserializeOwned>(
        &mut self,
        name: impl AsReturnName<T>,
    ) -> Result<Vec<ChildValue<T>>> {
        let name = name.return_name();
        let stmt = self.values_statement(name);
        let rows = self.run(&stmt).await?;
        decode_values(name, rows)
    }

    /// Like [`crate::StepContext::child_value`], but async.
    pub async fn child_value<T: DeserializeOwned>(
        &mut self,
        name: impl AsReturnName<T>,
        handler: &str,
    ) -> Result<Option<T>> {
        let name = name.return_name();
        let values = self.child_values(name).await?;
        one_value(name, handler, values)
    }

    /// Like [`crate::StepContext::respond`], but async.
    pub async fn respond<I, O: Serialize>(
        &mut self,
        request: &Request<I, O>,
        output: &O,
    ) -> Result<()> {
        self.store_value(request.return_to.as_str(), output).await
    }
}
