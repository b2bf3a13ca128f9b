//! Claiming several runs at once, for a batch of steps per commit (`steps_per_commit`): one
//! statement locks as many runnable runs as the batch holds, and the worker steps through
//! them one by one in the same transaction, instead of claiming each with a statement of its
//! own (whose fixed cost, not the rows it reads, is most of a claim's).
//!
//! The claim writes every run's `SEEN`, as a claim of one does. A batch may end before it
//! reaches all of them (a step rolled back to its savepoint commits what came before; a
//! finished child commits at once; the drain ends): the `SEEN` of the runs it did not reach
//! is then deleted ([`Unseen`]) in the same round trip, before the commit, so that nothing
//! says they were seen; they are simply unlocked, and claimed again later.

use super::run::{claim_sql, decode_claimed};
use super::{Claim, Claimed, ClaimedRun, Cols, Sql, StmtId, literal};
use crate::error::{Error, Result};

/// [`Claim`] for up to `$4` runs, in the order they are to be stepped through.
#[derive(Debug)]
pub(crate) struct ClaimMany;

/// A run claimed by [`ClaimMany`] and waiting, locked, for its turn in the batch.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) run: Box<ClaimedRun>,
    /// The claim wrote its first `SEEN`: to be deleted if its step does not start (see
    /// [`Unseen`]).
    pub(crate) seen_written: bool,
}

impl ClaimMany {
    /// As [`Claim::SQL`], locking up to `__LIMIT__` due runs and writing each one's `SEEN`;
    /// answers them in claiming order, each saying whether its `SEEN` was written now.
    /// The limit is written into the text when it is prepared, not passed: with a parameter
    /// there, PostgreSQL's generic plan assumes a tenth of the runnable runs are wanted, finds
    /// itself costlier than a plan made for the value, and plans every execution afresh.
    pub(crate) const SQL: &'static str = claim_sql!(
        "__LIMIT__",
        "",
        "",
        ",
       NOT c.seen AS seen_written",
        ", NULL",
        "
ORDER BY c.wake_at, c.id"
    );

    /// The claim as simple-query text after `prefix`, then the first run's savepoint (as
    /// [`Claim::simple_text`]); prepares it as `name`, for up to `limit` runs, unless
    /// `prepared` (a session's batches all have the same size).
    pub(crate) fn simple_text(
        c: &Claim<'_>,
        sql: &Sql,
        name: &str,
        prepared: bool,
        prefix: &str,
        limit: usize,
    ) -> String {
        let mut text = String::from(prefix);
        if !prepared {
            text.push_str(&format!(
                "PREPARE {name} (text, text, text) AS {}; ",
                sql.text(StmtId::ClaimMany)
                    .replace("__LIMIT__", &limit.to_string())
            ));
        }
        text.push_str(&format!(
            "EXECUTE {name}({}, {}, {}); {}",
            literal(c.handler),
            literal(c.worker),
            literal(c.versions),
            super::Savepoint::SQL
        ));
        text
    }

    /// Decodes what [`simple_text`](Self::simple_text) returned: what the claim found (the
    /// first run, to step through now), and the runs that wait their turn.
    pub(crate) fn decode_simple(
        messages: Vec<postgres::SimpleQueryMessage>,
    ) -> Result<(Claimed, Vec<Queued>)> {
        let mut rows = messages.into_iter().filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        let Some(first) = rows.next() else {
            return Ok((Claimed::Nothing, Vec::new()));
        };
        let claimed = decode_claimed(&first)?;
        let mut queued = Vec::new();
        for row in rows {
            let Claimed::Due(run) = decode_claimed(&row)? else {
                return Err(Error::UnexpectedData(
                    "a claim of several runs answered a run that is not due".into(),
                ));
            };
            queued.push(Queued {
                run,
                seen_written: row.bool("seen_written")?,
            });
        }
        Ok((claimed, queued))
    }
}

/// Deletes the `SEEN` a [`ClaimMany`] wrote for runs whose steps did not start before their
/// batch ended (they are unlocked by its end, and claimed again later).
#[derive(Debug)]
pub(crate) struct Unseen;

impl Unseen {
    /// `__RUNS__`: the runs, `__ROOTS__`: their roots (for the history's index), as `uuid[]`
    /// literals.
    pub(crate) const SQL: &'static str = "
DELETE FROM __S__.history
WHERE root_id = ANY (__ROOTS__) AND run_id = ANY (__RUNS__) AND event = 'SEEN'";

    /// The delete as simple-query text, ending in `; `, for `runs`; `None` if there are none.
    pub(crate) fn simple_text<'r>(
        sql: &Sql,
        runs: impl Iterator<Item = &'r ClaimedRun>,
    ) -> Option<String> {
        let (mut ids, mut roots) = (Vec::new(), Vec::new());
        for run in runs {
            ids.push(format!("'{}'", run.id.as_uuid()));
            roots.push(format!("'{}'", run.root_id.as_uuid()));
        }
        if ids.is_empty() {
            return None;
        }
        let array = |items: Vec<String>| format!("ARRAY[{}]::uuid[]", items.join(", "));
        let text = sql
            .text(StmtId::Unseen)
            .replace("__ROOTS__", &array(roots))
            .replace("__RUNS__", &array(ids));
        Some(format!("{}; ", text.trim()))
    }
}
