//! A worker's session on its connection for one drain: the driver's `Transaction` object,
//! kept while the server's transactions come and go through it, and what is open on the
//! server (a transaction, the step's savepoint, a batch of steps).

use postgres::Transaction;

use super::exec;
use crate::core::attempt::{ConcludeError, Output};
use crate::error::{Error, Result};
use crate::proto::{Claim, Conclude, Concluded, Finish, Sql, StmtCache};
use crate::runtime::batch::Batch;

/// Ends the step's savepoint, keeping what the step wrote.
pub(crate) const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT structured_cooperation_step; ";

/// Whether `e` says the transaction was already aborted when the statement came.
pub(crate) fn aborted_before(e: &Error) -> bool {
    matches!(e, Error::Postgres(pg)
        if pg.code() == Some(&postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION))
}

/// The error a failed [`Conclude`] ends with, given whether its commit happened.
pub(crate) fn conclude_error(e: Error, committed: Option<bool>) -> ConcludeError {
    match committed {
        Some(true) => ConcludeError::Committed(e),
        Some(false) => ConcludeError::NotCommitted(e),
        None => ConcludeError::Unknown(e),
    }
}

/// A conclusion whose parameters cannot travel in query text (the attempt asks for one only
/// when they can).
pub(crate) fn unsendable() -> Error {
    Error::UnexpectedData("a step's conclusion cannot travel as query text".into())
}

/// The worker's handle on its connection for one drain. The driver's `Transaction` object
/// is made once (`BEGIN`) and then kept, while the transactions on the server come and go
/// with the statements sent through it (`COMMIT; BEGIN; <claim>` ends one step and starts
/// the next in one round trip); user code always gets this object. `open` tracks the
/// server's side: whether a transaction may be open there.
pub(crate) struct Session<'c> {
    pub(crate) tx: Option<Transaction<'c>>,
    pub(crate) open: bool,
    /// Whether the step's savepoint exists (taken with the claim, released once the step's
    /// code succeeded).
    pub(crate) savepoint: bool,
    pub(crate) batch: Batch,
}

impl<'c> Session<'c> {
    pub(crate) fn begin(
        client: &'c mut postgres::Client,
        steps_per_commit: usize,
    ) -> Result<Session<'c>> {
        Ok(Session {
            tx: Some(client.transaction()?),
            open: true,
            savepoint: false,
            batch: Batch::new(steps_per_commit),
        })
    }

    pub(crate) fn tx(&mut self) -> &mut Transaction<'c> {
        self.tx
            .as_mut()
            .expect("the session's transaction is back after user code")
    }

    /// Ends the server's transaction with `COMMIT` or `ROLLBACK`. Afterwards none is open,
    /// whatever the answer (a failed commit ends the transaction too).
    /// The `SEEN` of runs a batch claimed but did not reach are deleted first (see
    /// [`Batch::ending`]).
    pub(crate) fn end(&mut self, sql: &Sql, statement: &str) -> Result<Output> {
        self.open = false;
        self.savepoint = false;
        let text = self.batch.ending(sql, statement);
        self.batch.unlocked();
        self.tx().batch_execute(&text)?;
        Ok(Output::Done)
    }

    /// Claims in a new transaction (or, after a commit, in the next one), or takes the
    /// next run a batch claimed already (see [`Batch::claim_trip`]; `after` as there).
    pub(crate) fn claim(
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
            self.tx().simple_query(&trip.text).map_err(Error::from)
        };
        let claimed = self.batch.claim_answer(c, trip, answer, cache);
        self.savepoint = claimed.is_ok();
        claimed.map(Output::Claimed)
    }

    /// Persists the transition, releasing the step's savepoint first in the same round trip:
    /// the claimed run's row is updated outside it, since an update inside it would make
    /// PostgreSQL record the claim's lock and the update together as a multixact, which
    /// every later reader of the row (other workers' claims skipping it, among them) must
    /// look up.
    pub(crate) fn finish(
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
        let applied = exec::finish(self.tx(), sql, cache, f, prefix, suffix);
        // It is released unless the release itself failed: the code left the transaction
        // aborted, and the savepoint is still there to roll back to.
        self.savepoint &= applied.as_ref().is_err_and(aborted_before);
        if applied.is_ok() {
            self.batch.primed(suffix);
        }
        applied.map(Output::Applied)
    }

    /// Ends the step in one round trip (see [`Conclude`]): the savepoint's release, the
    /// transition, the commit, and what the conclusion asks to follow. After an error, ends
    /// the transaction left open and asks whether the step's commit happened.
    pub(crate) fn conclude(
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
        match self.tx().simple_query(&text) {
            Ok(messages) => {
                prepares.record(cache);
                self.open = c.claim.is_some();
                self.savepoint = self.open;
                c.decode_simple(messages).map_err(ConcludeError::Committed)
            }
            Err(e) => {
                let e = Error::from(e);
                if self.savepoint && aborted_before(&e) {
                    // The code left the transaction aborted: nothing else ran, and the
                    // savepoint is there to roll back to.
                    return Err(ConcludeError::NotCommitted(e));
                }
                self.open = false;
                self.savepoint = false;
                let status = c
                    .status_text()
                    .and_then(|t| self.tx().simple_query(&t).ok());
                Err(conclude_error(e, status.and_then(Conclude::decode_status)))
            }
        }
    }

    /// Done with the connection for now: rolls back what may be open; if nothing is, the
    /// driver's object is forgotten rather than dropped, since dropping it would send a
    /// `ROLLBACK` with no transaction to end (a round trip and a server warning). It owns no
    /// resources: it only borrows the connection.
    pub(crate) fn close(mut self) {
        if let Some(tx) = self.tx.take() {
            if self.open {
                let _ = tx.rollback();
            } else {
                std::mem::forget(tx);
            }
        }
    }
}
