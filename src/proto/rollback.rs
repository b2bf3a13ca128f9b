//! The rollback path's statements: a run's step instances, how its children ended, and
//! asking children to roll back.

use std::collections::HashMap;

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Statement, StmtId, one, opt_u32_col, u32_col};
use crate::core::decide::ChildrenOf;
use crate::core::{Instance, InstanceKind};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::RunId;

/// The executed step instances of a run, in order.
#[derive(Debug)]
pub(crate) struct Instances {
    run: Uuid,
}

impl Instances {
    pub(crate) fn new(run: RunId) -> Instances {
        Instances { run: run.as_uuid() }
    }

    pub(crate) const SQL: &'static str = "
SELECT seq, step, iteration, cfh, kind FROM __S__.step_instances WHERE run_id = $1 ORDER BY seq";
}

impl Statement for Instances {
    type Output = Vec<Instance>;

    fn id(&self) -> StmtId {
        StmtId::Instances
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<Instance>> {
        rows.iter()
            .map(|row| {
                let kind: &str = row.try_get("kind")?;
                Ok(Instance {
                    seq: u32_col(row, "seq")?,
                    step: u32_col(row, "step")? as usize,
                    iteration: u32_col(row, "iteration")?,
                    cfh: opt_u32_col(row, "cfh")?,
                    kind: InstanceKind::parse(kind).ok_or_else(|| {
                        Error::UnexpectedData(format!("unknown step instance kind {kind:?}"))
                    })?,
                })
            })
            .collect()
    }
}

/// For each step instance of a run that emitted anything: its messages, and how its child
/// runs ended.
#[derive(Debug)]
pub(crate) struct Children {
    run: Uuid,
}

impl Children {
    pub(crate) fn new(run: RunId) -> Children {
        Children { run: run.as_uuid() }
    }

    /// Committed count, and the failures of the children that rolled back or failed to (for
    /// the latter, their rollback failures and, apart, their original failures).
    pub(crate) const SQL: &'static str = "
WITH c AS (
    SELECT parent_instance AS seq,
           count(*) FILTER (WHERE status = 'committed')::int4 AS committed,
           jsonb_agg(failure) FILTER (WHERE status = 'rolled_back' AND failure IS NOT NULL)
               AS rolled_back,
           jsonb_agg(coalesce(rollback_failure, failure))
               FILTER (WHERE status = 'rollback_failed'
                       AND coalesce(rollback_failure, failure) IS NOT NULL) AS rollback_failed,
           jsonb_agg(failure)
               FILTER (WHERE status = 'rollback_failed' AND rollback_failure IS NOT NULL
                       AND failure IS NOT NULL) AS rollback_failed_causes
    FROM __S__.runs WHERE parent_id = $1
    GROUP BY parent_instance
),
m AS (
    SELECT seq, messages FROM __S__.step_instances
    WHERE run_id = $1 AND cardinality(messages) > 0
)
SELECT coalesce(c.seq, m.seq) AS seq, coalesce(m.messages, '{}') AS messages,
       coalesce(c.committed, 0) AS committed,
       coalesce(c.rolled_back, '[]')::text AS rolled_back,
       coalesce(c.rollback_failed, '[]')::text AS rollback_failed,
       coalesce(c.rollback_failed_causes, '[]')::text AS rollback_failed_causes
FROM c FULL JOIN m ON c.seq = m.seq";
}

impl Statement for Children {
    /// By step instance.
    type Output = HashMap<u32, ChildrenOf>;

    fn id(&self) -> StmtId {
        StmtId::Children
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<HashMap<u32, ChildrenOf>> {
        let failures = |row: &Row, column: &str| -> Result<Vec<Failure>> {
            let text: String = row.try_get(column)?;
            Ok(serde_json::from_str(&text)?)
        };
        rows.iter()
            .map(|row| {
                Ok((
                    u32_col(row, "seq")?,
                    ChildrenOf {
                        messages: row.try_get("messages")?,
                        committed: u32_col(row, "committed")?,
                        rolled_back: failures(row, "rolled_back")?,
                        rollback_failed: failures(row, "rollback_failed")?,
                        rollback_failed_causes: failures(row, "rollback_failed_causes")?,
                    },
                ))
            })
            .collect()
    }
}

/// Asks the committed children of one step instance of a run to roll back.
#[derive(Debug)]
pub(crate) struct RequestRollback<'a> {
    pub(crate) run: Uuid,
    pub(crate) instance: i32,
    pub(crate) cause: String,
    /// Handlers not to notify (the calling runtime wakes them itself).
    pub(crate) quiet: &'a [&'a str],
    /// The parent's context, for the children's rollback.
    pub(crate) context: Option<String>,
}

impl<'a> RequestRollback<'a> {
    pub(crate) fn new(
        run: RunId,
        instance: u32,
        cause: &Failure,
        quiet: &'a [&'a str],
        context: Option<String>,
    ) -> Result<RequestRollback<'a>> {
        Ok(RequestRollback {
            run: run.as_uuid(),
            instance: instance as i32,
            cause: super::failure_text(cause)?,
            quiet,
            context,
        })
    }

    /// The children become runnable with cause `$3` and the parent's context `$5`, and their
    /// handlers are notified unless in `$4`.
    ///
    /// The parent holds its own row and takes its children's with `NOWAIT`: a parent never
    /// waits for a descendant's lock (they are finished runs, which nobody else holds; if an
    /// operator's request does for an instant, this attempt is retried).
    pub(crate) const SQL: &'static str = "
WITH target AS (
    SELECT id FROM __S__.runs
    WHERE parent_id = $1 AND parent_instance = $2 AND status = 'committed'
    FOR UPDATE NOWAIT
),
marked AS (
    UPDATE __S__.runs r SET
        status = 'rolling_back', failure = $3::text::jsonb, rollback_cursor = 0,
        rollback_seen = false, awaited = true, waited_instance = NULL, pending_children = 0,
        failed_children = 0, wake_at = clock_timestamp(), finished_at = NULL,
        rollback_context = $5::text, updated_at = clock_timestamp()
    FROM target WHERE r.id = target.id
    RETURNING r.handler
),
woken AS (SELECT DISTINCT handler FROM marked),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', handler) FROM woken WHERE handler <> ALL($4::text[])
)
SELECT (SELECT count(*) FROM marked)::int4 AS requested,
       coalesce((SELECT array_agg(handler) FROM woken), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified";
}

/// What asking children to roll back did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Requested {
    /// Children that will roll back (the parent waits for them).
    pub(crate) children: u32,
    /// Their handlers.
    pub(crate) handlers: Vec<String>,
}

impl Statement for RequestRollback<'_> {
    type Output = Requested;

    fn id(&self) -> StmtId {
        StmtId::RequestRollback
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.run,
            &self.instance,
            &self.cause,
            &self.quiet,
            &self.context,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Requested> {
        let row = one(rows)?;
        Ok(Requested {
            children: u32_col(&row, "requested")?,
            handlers: row.try_get("woken")?,
        })
    }
}
