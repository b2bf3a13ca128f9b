//! Claiming several runs at once, for a batch of steps per commit (`steps_per_commit`): one
//! statement locks as many runnable runs as the batch has room for, and the worker steps
//! through them one by one in the same transaction, instead of claiming each with a
//! statement of its own (whose fixed cost, not the rows it reads, is most of a claim's).
//!
//! Only the first run's `SEEN` is written with the claim. Each of the others gets its own
//! (`Seen`) right before its step starts, in the round trip that takes the step's savepoint:
//! the batch may end early (a step rolled back to its savepoint commits what came before),
//! and then the runs still waiting are simply unlocked, with no trace of having been seen.

use uuid::Uuid;

use super::run::{claim_sql, decode_claimed};
use super::{Claim, Claimed, ClaimedRun, Cols, Simple, Sql, StmtCache, StmtId, literal};
use crate::error::{Error, Result};

/// [`Claim`] for up to `$4` runs, in the order they are to be stepped through.
#[derive(Debug)]
pub(crate) struct ClaimMany;

/// A run claimed by [`ClaimMany`] and waiting, locked, for its turn in the batch.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) run: Box<ClaimedRun>,
    /// Its `SEEN` is still to be written (see [`Seen`]).
    pub(crate) seen_owed: bool,
}

impl ClaimMany {
    /// As [`Claim::SQL`], locking up to `__LIMIT__` due runs; answers them in claiming
    /// order, the first with its `SEEN` written, the others saying whether they are owed one.
    /// The limit is written into the text when it is prepared, not passed: with a parameter
    /// there, PostgreSQL's generic plan assumes a tenth of the runnable runs are wanted, finds
    /// itself costlier than a plan made for the value, and plans every execution afresh.
    pub(crate) const SQL: &'static str = claim_sql!(
        "__LIMIT__",
        "
first AS MATERIALIZED (SELECT id FROM c ORDER BY wake_at, id LIMIT 1),",
        "
      AND c.id = (SELECT id FROM first)",
        ",
       NOT c.seen AND c.id <> (SELECT id FROM first) AS seen_owed",
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
                seen_owed: row.bool("seen_owed")?,
            });
        }
        Ok((claimed, queued))
    }
}

/// The `SEEN` of a run [`ClaimMany`] claimed, written when its step starts.
#[derive(Debug)]
pub(crate) struct Seen;

impl Seen {
    /// `$1` root, `$2` run, `$3` message, `$4` handler, `$5` worker.
    pub(crate) const SQL: &'static str = "
INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, worker)
VALUES ($1, $2, $3, 'SEEN', $4, $5)";

    /// The insert as simple-query text (preparing it first, unless the cache has it), and
    /// what it prepared, to record in the cache once the text ran.
    pub(crate) fn simple_text(
        run: &ClaimedRun,
        c: &Claim<'_>,
        sql: &Sql,
        cache: &StmtCache,
    ) -> (String, Option<(Simple, String)>) {
        let (name, prepared) = cache.simple_name(Simple::Seen);
        let uuid = |u: Uuid| format!("'{u}'");
        let mut text = String::new();
        if !prepared {
            text.push_str(&format!(
                "PREPARE {name} (uuid, uuid, uuid, text, text) AS {}; ",
                sql.text(StmtId::Seen)
            ));
        }
        text.push_str(&format!(
            "EXECUTE {name}({}, {}, {}, {}, {}); ",
            uuid(run.root_id.as_uuid()),
            uuid(run.id.as_uuid()),
            uuid(run.message_id.as_uuid()),
            literal(c.handler),
            literal(c.worker)
        ));
        (text, (!prepared).then_some((Simple::Seen, name)))
    }
}
