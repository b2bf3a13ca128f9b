//! A task's session on its leased connection for one drain (see the blocking runtime's
//! `runtime/session.rs`, which this mirrors with `.await`s).

use tokio_postgres::Transaction;

use super::exec;
use crate::core::attempt::{ConcludeError, Output};
use crate::error::{Error, Result};
use crate::proto::{Claim, Conclude, Concluded, Finish, Sql, StmtCache};
use crate::runtime::batch::Batch;
use crate::runtime::session::{RELEASE_SAVEPOINT, aborted_before, conclude_error, unsendable};

/// A task's handle on its leased connection for one drain, as the blocking worker's
/// `Session`: the driver's `Transaction` object is made once and kept, while transactions
/// on the server come and go with the statements sent through it.
pub(super) struct Session<'c> {
    pub(super) tx: Option<Transaction<'c>>,
    /// Whether a transaction may be open on the server.
    pub(super) open: bool,
    /// Whether the step's savepoint exists (see the blocking worker's `Session`).
    pub(super) savepoint: bool,
    pub(super) batch: Batch,
}

impl<'c> Session<'c> {
    pub(super) fn tx(&self) -> &Transaction<'c> {
        self.tx
            .as_ref()
            .expect("the session's transaction is back after user code")
    }

    /// Ends the server's transaction (`COMMIT` or `ROLLBACK`).
    pub(super) async fn end(&mut self, sql: &Sql, statement: &str) -> Result<Output> {
        self.open = false;
        self.savepoint = false;
        let text = self.batch.ending(sql, statement);
        self.batch.unlocked();
        self.tx().batch_execute(&text).await?;
        Ok(Output::Done)
    }

    /// Claims, or takes the next run a batch claimed already (see the blocking worker's
    /// `Session::claim`).
    pub(super) async fn claim(
        &mut self,
        sql: &Sql,
        cache: &mut StmtCache,
        c: &Claim<'_>,
        prefix: &str,
        after: Option<bool>,
    ) -> Result<Output> {
        self.open = true;
        let trip = self.batch.claim_trip(sql, cache, c, prefix, after);
        let answer = if trip.text.is_empty() {
            // The run waiting next, its savepoint taken with the last finish.
            Ok(Vec::new())
        } else {
            self.tx()
                .simple_query(&trip.text)
                .await
                .map_err(Error::from)
        };
        let claimed = self.batch.claim_answer(c, trip, answer, cache);
        self.savepoint = claimed.is_ok();
        claimed.map(Output::Claimed)
    }

    /// Persists the transition, releasing the step's savepoint first in the same round trip
    /// (see the blocking worker's `Session::finish`).
    pub(super) async fn finish(
        &mut self,
        sql: &Sql,
        cache: &mut StmtCache,
        f: &Finish<'_>,
    ) -> Result<Output> {
        let prefix = if self.savepoint {
            RELEASE_SAVEPOINT
        } else {
            ""
        };
        let suffix = self.batch.prime();
        let applied = exec::finish(self.tx(), sql, cache, f, prefix, suffix).await;
        self.savepoint &= applied.as_ref().is_err_and(aborted_before);
        if applied.is_ok() {
            self.batch.primed(suffix);
        }
        applied.map(Output::Applied)
    }

    /// Ends the step in one round trip (see the blocking worker's `Session::conclude`).
    pub(super) async fn conclude(
        &mut self,
        sql: &Sql,
        cache: &mut StmtCache,
        c: &Conclude<'_>,
    ) -> std::result::Result<Concluded, ConcludeError> {
        let prefix = if self.savepoint {
            RELEASE_SAVEPOINT
        } else {
            ""
        };
        let Some((text, prepares)) = c.simple_text(sql, cache, prefix) else {
            return Err(ConcludeError::NotCommitted(unsendable()));
        };
        match self.tx().simple_query(&text).await {
            Ok(messages) => {
                prepares.record(cache);
                self.open = c.claim.is_some();
                self.savepoint = self.open;
                c.decode_simple(messages).map_err(ConcludeError::Committed)
            }
            Err(e) => {
                let e = Error::from(e);
                if self.savepoint && aborted_before(&e) {
                    return Err(ConcludeError::NotCommitted(e));
                }
                self.open = false;
                self.savepoint = false;
                let status = match c.status_text() {
                    Some(t) => self.tx().simple_query(&t).await.ok(),
                    None => None,
                };
                Err(conclude_error(e, status.and_then(Conclude::decode_status)))
            }
        }
    }

    /// Rolls back what may be open; if nothing is, the driver's object (which only borrows
    /// the connection) is forgotten rather than dropped, which would send a `ROLLBACK` with
    /// no transaction to end.
    pub(super) async fn close(mut self) {
        if let Some(tx) = self.tx.take() {
            if self.open {
                let _ = tx.rollback().await;
            } else {
                std::mem::forget(tx);
            }
        }
    }
}
