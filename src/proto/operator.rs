//! Operators' statements: locking what a rollback addresses, checking the tree around it,
//! starting it; finding and recording a cancellation.

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Statement, StmtId, one, status, u32_col};
use crate::core::RunStatus;
use crate::error::Result;
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};

fn ids(runs: &[RunId]) -> Vec<Uuid> {
    runs.iter().map(RunId::as_uuid).collect()
}

/// Locks the runs an operator's rollback addresses: the top-level runs of a root, or one
/// run. Fails with `LOCK_NOT_AVAILABLE` when one of them is locked (being processed).
#[derive(Debug)]
pub(crate) enum LockTargets {
    Root(Uuid),
    Run(Uuid),
}

impl LockTargets {
    pub(crate) fn root(root: RootId) -> LockTargets {
        LockTargets::Root(root.as_uuid())
    }

    pub(crate) fn run(run: RunId) -> LockTargets {
        LockTargets::Run(run.as_uuid())
    }

    pub(crate) const ROOT_SQL: &'static str = "
SELECT id, handler, status, message_id FROM __S__.runs
WHERE message_id = $1 AND parent_id IS NULL
ORDER BY id
FOR UPDATE NOWAIT";

    pub(crate) const RUN_SQL: &'static str = "
SELECT id, handler, status, message_id FROM __S__.runs WHERE id = $1 FOR UPDATE NOWAIT";
}

/// A run an operator asked to roll back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TargetRun {
    pub(crate) id: RunId,
    pub(crate) handler: String,
    pub(crate) status: RunStatus,
}

impl Statement for LockTargets {
    type Output = Vec<TargetRun>;

    fn id(&self) -> StmtId {
        match self {
            LockTargets::Root(_) => StmtId::LockRootRuns,
            LockTargets::Run(_) => StmtId::LockRun,
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            LockTargets::Root(id) | LockTargets::Run(id) => vec![id],
        }
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<TargetRun>> {
        rows.iter()
            .map(|row| {
                Ok(TargetRun {
                    id: RunId::from_uuid(row.try_get("id")?),
                    handler: row.try_get("handler")?,
                    status: status(row, "status")?,
                })
            })
            .collect()
    }
}

/// Unfinished runs around some runs: in their subtrees or among their ancestors (at most 5).
#[derive(Debug)]
pub(crate) struct BusyAround {
    runs: Vec<Uuid>,
}

impl BusyAround {
    pub(crate) fn new(runs: &[RunId]) -> BusyAround {
        BusyAround { runs: ids(runs) }
    }

    pub(crate) const SQL: &'static str = "
WITH RECURSIVE sub AS (
    SELECT id FROM __S__.runs WHERE id = ANY($1)
    UNION ALL
    SELECT c.id FROM __S__.runs c JOIN sub ON c.parent_id = sub.id
),
anc AS (
    SELECT parent_id AS id FROM __S__.runs WHERE id = ANY($1) AND parent_id IS NOT NULL
    UNION
    SELECT r.parent_id FROM __S__.runs r JOIN anc ON r.id = anc.id WHERE r.parent_id IS NOT NULL
)
SELECT handler, status FROM __S__.runs
WHERE (id IN (SELECT id FROM sub) OR id IN (SELECT id FROM anc))
  AND (status IN ('active', 'rolling_back') OR release_pending)
LIMIT 5";
}

impl Statement for BusyAround {
    /// `(handler, status)` of each.
    type Output = Vec<(String, RunStatus)>;

    fn id(&self) -> StmtId {
        StmtId::BusyAround
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.runs]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<(String, RunStatus)>> {
        rows.iter()
            .map(|row| Ok((row.try_get("handler")?, status(row, "status")?)))
            .collect()
    }
}

/// Starts an operator's rollback of committed runs.
#[derive(Debug)]
pub(crate) struct RequestOperatorRollback {
    runs: Vec<Uuid>,
    cause: String,
}

impl RequestOperatorRollback {
    pub(crate) fn new(runs: &[RunId], cause: &Failure) -> Result<RequestOperatorRollback> {
        Ok(RequestOperatorRollback {
            runs: ids(runs),
            cause: super::failure_text(cause)?,
        })
    }

    /// Marks the committed runs among `$1` with cause `$2`, records one `ROLLBACK_EMITTED`
    /// per message, and notifies their handlers.
    pub(crate) const SQL: &'static str = "
WITH marked AS (
    UPDATE __S__.runs SET
        status = 'rolling_back', failure = $2::text::jsonb, rollback_cursor = 0,
        rollback_seen = false, awaited = false, waited_instance = NULL, pending_children = 0,
        failed_children = 0, wake_at = clock_timestamp(), finished_at = NULL,
        updated_at = clock_timestamp()
    WHERE id = ANY($1) AND status = 'committed'
    RETURNING root_id, message_id, handler
),
hist AS (
    INSERT INTO __S__.history (root_id, message_id, event, failure, worker)
    SELECT DISTINCT root_id, message_id, 'ROLLBACK_EMITTED', $2::text::jsonb, 'operator'
    FROM marked
),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', handler) FROM (SELECT DISTINCT handler FROM marked) h
)
SELECT (SELECT count(*) FROM marked)::int4 AS marked, (SELECT count(*) FROM notified)::int4";
}

impl Statement for RequestOperatorRollback {
    /// How many runs will roll back.
    type Output = u32;

    fn id(&self) -> StmtId {
        StmtId::RequestOperatorRollback
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.runs, &self.cause]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<u32> {
        u32_col(&one(rows)?, "marked")
    }
}

/// The runs of a cancellation's scope still on their happy path: the top-level runs of a root
/// and everything below them, or one run and its subtree.
#[derive(Debug)]
pub(crate) struct CancelScope {
    root: Uuid,
    run: Option<Uuid>,
}

impl CancelScope {
    pub(crate) fn new(root: RootId, run: Option<RunId>) -> CancelScope {
        CancelScope {
            root: root.as_uuid(),
            run: run.map(|r| r.as_uuid()),
        }
    }

    pub(crate) const SQL: &'static str = "
WITH RECURSIVE sub AS (
    SELECT id, status FROM __S__.runs
    WHERE ($2::uuid IS NULL AND message_id = $1 AND parent_id IS NULL) OR id = $2::uuid
    UNION ALL
    SELECT c.id, c.status FROM __S__.runs c JOIN sub ON c.parent_id = sub.id
)
SELECT id FROM sub WHERE status = 'active'";
}

impl Statement for CancelScope {
    type Output = Vec<RunId>;

    fn id(&self) -> StmtId {
        StmtId::CancelScope
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root, &self.run]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<RunId>> {
        rows.iter()
            .map(|row| Ok(RunId::from_uuid(row.try_get("id")?)))
            .collect()
    }
}

/// Records a cancellation. The caller holds the root's advisory lock ([`LockRoot`]).
#[derive(Debug)]
pub(crate) struct RecordCancel {
    root: Uuid,
    run: Option<Uuid>,
    failure: String,
    message: Uuid,
    runs: Vec<Uuid>,
}

impl RecordCancel {
    pub(crate) fn new(
        root: RootId,
        run: Option<RunId>,
        message: MessageId,
        failure: &Failure,
        runs: &[RunId],
    ) -> Result<RecordCancel> {
        Ok(RecordCancel {
            root: root.as_uuid(),
            run: run.map(|r| r.as_uuid()),
            failure: super::failure_text(failure)?,
            message: message.as_uuid(),
            runs: ids(runs),
        })
    }

    /// Records a cancellation of root `$1` (or of run `$2` and its subtree) with failure
    /// `$3` (history on message `$4`), wakes the sleeping runs among `$5` so they give up
    /// now, and notifies the handlers of those that can run. Sleeping runs locked by someone
    /// else are skipped: only a step holds a runnable run's lock (a claim locks due runs only),
    /// and its end-of-step check sees the cancellation.
    pub(crate) const SQL: &'static str = "
WITH k AS (
    INSERT INTO __S__.cancellations (root_id, run_id, failure) VALUES ($1, $2, $3::text::jsonb)
),
h AS (
    INSERT INTO __S__.history (root_id, message_id, event, failure, worker)
    VALUES ($1, $4, 'CANCELLATION_REQUESTED', $3::text::jsonb, 'operator')
),
woken AS (
    UPDATE __S__.runs SET wake_at = clock_timestamp()
    WHERE id IN (SELECT id FROM __S__.runs
                 WHERE id = ANY($5) AND status = 'active' AND pending_children = 0
                   AND wake_at > clock_timestamp()
                 FOR UPDATE SKIP LOCKED)
    RETURNING handler
),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', handler) FROM (
        SELECT DISTINCT handler FROM __S__.runs
        WHERE id = ANY($5) AND status = 'active' AND pending_children = 0) x
)
SELECT (SELECT count(*) FROM woken)::int4 AS woken, (SELECT count(*) FROM notified)::int4";
}

impl Statement for RecordCancel {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::RecordCancel
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.root,
            &self.run,
            &self.failure,
            &self.message,
            &self.runs,
        ]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// The root and message of a run, if it exists.
#[derive(Debug)]
pub(crate) struct RunOrigin {
    run: Uuid,
}

impl RunOrigin {
    pub(crate) fn new(run: RunId) -> RunOrigin {
        RunOrigin { run: run.as_uuid() }
    }

    pub(crate) const SQL: &'static str = "
SELECT root_id, message_id FROM __S__.runs WHERE id = $1";
}

impl Statement for RunOrigin {
    type Output = Option<(RootId, MessageId)>;

    fn id(&self) -> StmtId {
        StmtId::RunOrigin
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<(RootId, MessageId)>> {
        rows.into_iter()
            .next()
            .map(|row| {
                Ok((
                    RootId::from_uuid(row.try_get("root_id")?),
                    MessageId::from_uuid(row.try_get("message_id")?),
                ))
            })
            .transpose()
    }
}

/// Takes a root's advisory lock exclusively: waits until every step of the tree that already
/// passed its post-step check has committed, and keeps new ones from passing it until this
/// transaction ends. (`check_give_up` takes the same lock shared.)
#[derive(Debug)]
pub(crate) struct LockRoot {
    root: Uuid,
}

impl LockRoot {
    pub(crate) fn new(root: RootId) -> LockRoot {
        LockRoot {
            root: root.as_uuid(),
        }
    }

    pub(crate) const SQL: &'static str =
        "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 1309))";
}

impl Statement for LockRoot {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::LockRoot
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}
