//! Operations over many trees: listing runs, counting the unfinished, and pruning finished
//! trees. Each is shaped to use an index (see migration 6), so its cost does not grow with
//! the history the tables hold.

use std::time::SystemTime;

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::inspect::{TreeRow, tree_row};
use super::{Statement, StmtId, status};
use crate::core::RunStatus;
use crate::error::Result;

/// The columns of a listed run, as `tree_row` decodes them (`depth` 0: not placed in a tree).
macro_rules! run_columns {
    () => {
        "
SELECT r.id, r.parent_id, r.root_id, r.handler, r.topic, r.status, r.step_index,
       r.pending_children, 0 AS depth, r.failure::text AS failure,
       r.rollback_failure::text AS rollback_failure, r.context, r.retries, r.infra_failures,
       r.last_error, r.created_at, r.started_at, r.finished_at, r.version
"
    };
}

/// Runs matching a filter, newest first, after a keyset cursor. A filter left `NULL` (or an
/// empty status list) matches everything; the client prepares this statement afresh for
/// every call, so PostgreSQL plans it with the values and drops the unused conditions.
#[derive(Debug)]
pub(crate) struct ListRuns {
    pub(crate) handler: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) statuses: Vec<String>,
    pub(crate) roots_only: bool,
    pub(crate) created_from: Option<SystemTime>,
    pub(crate) created_until: Option<SystemTime>,
    pub(crate) finished_from: Option<SystemTime>,
    pub(crate) finished_until: Option<SystemTime>,
    pub(crate) failure_type: Option<String>,
    /// The last row of the previous page: `(created_at, id)`.
    pub(crate) after_created: Option<SystemTime>,
    pub(crate) after_id: Option<Uuid>,
    pub(crate) limit: i64,
}

impl ListRuns {
    pub(crate) const SQL: &'static str = concat!(
        run_columns!(),
        "FROM __S__.runs r
WHERE ($1::text IS NULL OR r.handler = $1)
  AND ($2::text IS NULL OR r.topic = $2)
  AND (cardinality($3::text[]) = 0 OR r.status = ANY ($3::text[]))
  AND (NOT $4::bool OR r.parent_id IS NULL)
  AND ($5::timestamptz IS NULL OR r.created_at >= $5)
  AND ($6::timestamptz IS NULL OR r.created_at < $6)
  AND ($7::timestamptz IS NULL OR r.finished_at >= $7)
  AND ($8::timestamptz IS NULL OR r.finished_at < $8)
  AND ($9::text IS NULL OR r.failure ->> 'type' = $9)
  AND ($10::timestamptz IS NULL OR (r.created_at, r.id) < ($10, $11::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT $12"
    );
}

impl Statement for ListRuns {
    type Output = Vec<TreeRow>;

    fn id(&self) -> StmtId {
        StmtId::ListRuns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.handler,
            &self.topic,
            &self.statuses,
            &self.roots_only,
            &self.created_from,
            &self.created_until,
            &self.finished_from,
            &self.finished_until,
            &self.failure_type,
            &self.after_created,
            &self.after_id,
            &self.limit,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<TreeRow>> {
        rows.iter().map(tree_row).collect()
    }
}

/// One run, by id.
#[derive(Debug)]
pub(crate) struct RunById {
    pub(crate) id: Uuid,
}

impl RunById {
    pub(crate) const SQL: &'static str =
        concat!(run_columns!(), "FROM __S__.runs r WHERE r.id = $1");
}

impl Statement for RunById {
    type Output = Option<TreeRow>;

    fn id(&self) -> StmtId {
        StmtId::RunById
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.id]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<TreeRow>> {
        rows.first().map(tree_row).transpose()
    }
}

/// Unfinished runs per handler and status, with the oldest one's creation time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnfinishedCounts;

impl UnfinishedCounts {
    pub(crate) const SQL: &'static str = "
SELECT handler, version, status, count(*) AS runs, min(created_at) AS oldest,
       count(*) FILTER (WHERE pending_children = 0 AND wake_at <= now()) AS due
FROM __S__.runs WHERE status IN ('active', 'rolling_back')
GROUP BY handler, version, status ORDER BY handler, version, status";
}

/// One line of [`UnfinishedCounts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CountRow {
    pub(crate) handler: String,
    pub(crate) version: Option<String>,
    pub(crate) status: RunStatus,
    pub(crate) runs: i64,
    pub(crate) due: i64,
    pub(crate) oldest: SystemTime,
}

impl Statement for UnfinishedCounts {
    type Output = Vec<CountRow>;

    fn id(&self) -> StmtId {
        StmtId::UnfinishedCounts
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<CountRow>> {
        rows.iter()
            .map(|row| {
                Ok(CountRow {
                    handler: row.try_get("handler")?,
                    version: row.try_get("version")?,
                    status: status(row, "status")?,
                    runs: row.try_get("runs")?,
                    due: row.try_get("due")?,
                    oldest: row.try_get("oldest")?,
                })
            })
            .collect()
    }
}

/// Top-level runs created since `$1`, per handler and status (through `runs_roots`, so the
/// cost follows the window, not the history).
#[derive(Debug)]
pub(crate) struct RootCounts {
    pub(crate) since: SystemTime,
}

impl RootCounts {
    pub(crate) const SQL: &'static str = "
SELECT handler, NULL::text AS version, status, count(*) AS runs, min(created_at) AS oldest,
       count(*) FILTER (WHERE status IN ('active', 'rolling_back') AND pending_children = 0
                        AND wake_at <= now()) AS due
FROM __S__.runs WHERE parent_id IS NULL AND created_at >= $1
GROUP BY handler, status ORDER BY handler, status";
}

impl Statement for RootCounts {
    type Output = Vec<CountRow>;

    fn id(&self) -> StmtId {
        StmtId::RootCounts
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.since]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<CountRow>> {
        UnfinishedCounts.decode(rows)
    }
}

/// Deletes up to `$2` finished trees whose top-level runs all finished before `$1`, every
/// row of them (history, cancellations, step instances, return values, runs, messages with
/// their idempotency keys), in one transaction. Roots whose runs someone holds locked (an
/// operator's rollback request being written) are skipped; roots launched on a topic nobody
/// handled (`messages.unhandled`, no runs) go once they are older than `$1`. The messages of a tree are found through
/// its history, which has an `EMITTED` entry for each (including children nobody handled).
#[derive(Debug)]
pub(crate) struct PruneBatch {
    pub(crate) before: SystemTime,
    pub(crate) limit: i64,
    /// With a key, the batch runs only if it gets this advisory lock (for the transaction),
    /// so that runtimes pruning automatically take turns instead of competing.
    pub(crate) lock: Option<String>,
}

impl PruneBatch {
    pub(crate) const SQL: &'static str = "
WITH gate AS MATERIALIZED (
    SELECT $3::text IS NULL OR pg_try_advisory_xact_lock(hashtextextended($3::text, 0)) AS open
),
finished AS MATERIALIZED (
    SELECT r.message_id AS root
    FROM __S__.runs r
    WHERE (SELECT open FROM gate)
      AND r.parent_id IS NULL AND r.status IN ('committed', 'rolled_back', 'rollback_failed')
      AND r.finished_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM __S__.runs o
          WHERE o.message_id = r.message_id AND o.parent_id IS NULL
            AND (o.status NOT IN ('committed', 'rolled_back', 'rollback_failed')
                 OR o.finished_at >= $1))
    ORDER BY r.finished_at
    LIMIT $2
    FOR UPDATE OF r SKIP LOCKED
),
bare AS MATERIALIZED (
    SELECT m.id AS root FROM __S__.messages m
    WHERE (SELECT open FROM gate) AND m.unhandled AND m.root_id = m.id AND m.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM __S__.runs r WHERE r.message_id = m.id)
    ORDER BY m.created_at
    LIMIT $2
    FOR UPDATE OF m SKIP LOCKED
),
roots AS MATERIALIZED (SELECT root FROM finished UNION SELECT root FROM bare),
tree AS MATERIALIZED (
    WITH RECURSIVE t AS (
        SELECT r.id FROM __S__.runs r JOIN roots ON r.message_id = roots.root
        WHERE r.parent_id IS NULL
        UNION ALL
        SELECT c.id FROM __S__.runs c JOIN t ON c.parent_id = t.id
    )
    SELECT id FROM t
),
messages AS MATERIALIZED (
    SELECT DISTINCT h.message_id AS id FROM __S__.history h JOIN roots ON h.root_id = roots.root
    UNION SELECT root FROM roots
),
history AS (DELETE FROM __S__.history h USING roots WHERE h.root_id = roots.root),
cancellations AS (DELETE FROM __S__.cancellations c USING roots WHERE c.root_id = roots.root),
instances AS (DELETE FROM __S__.step_instances s USING tree WHERE s.run_id = tree.id),
return_values AS (DELETE FROM __S__.return_values v USING tree WHERE v.run_id = tree.id),
runs AS (DELETE FROM __S__.runs r USING tree WHERE r.id = tree.id RETURNING 1),
deleted AS (DELETE FROM __S__.messages m USING messages WHERE m.id = messages.id RETURNING 1)
SELECT (SELECT count(*) FROM roots) AS trees, (SELECT count(*) FROM runs) AS runs,
       (SELECT count(*) FROM deleted) AS messages";
}

/// What one [`PruneBatch`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub(crate) trees: i64,
    pub(crate) runs: i64,
    pub(crate) messages: i64,
}

impl Statement for PruneBatch {
    type Output = Pruned;

    fn id(&self) -> StmtId {
        StmtId::PruneBatch
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.before, &self.limit, &self.lock]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Pruned> {
        let row = super::one(rows)?;
        Ok(Pruned {
            trees: row.try_get("trees")?,
            runs: row.try_get("runs")?,
            messages: row.try_get("messages")?,
        })
    }
}
