//! Reads for people and callers (a root's runs, tree, history and messages), and the lock an
//! out-of-band completion takes.

use std::time::SystemTime;

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Statement, StmtId, failure_col, one, run_view, status, u32_col};
use crate::context::CooperationContext;
use crate::core::{EventKind, RunStatus, RunView};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};

/// The top-level runs of a root (one per handler of the root message).
#[derive(Debug)]
pub(crate) struct RootRuns {
    root: Uuid,
}

impl RootRuns {
    pub(crate) fn new(root: RootId) -> RootRuns {
        RootRuns {
            root: root.as_uuid(),
        }
    }

    pub(crate) const SQL: &'static str = "
SELECT handler, status, failure::text AS failure, rollback_failure::text AS rollback_failure
FROM __S__.runs WHERE message_id = $1 AND parent_id IS NULL
ORDER BY handler";
}

/// Whether a root (a message launched on the global scope) exists.
#[derive(Debug)]
pub(crate) struct RootExists {
    root: Uuid,
}

impl RootExists {
    pub(crate) fn new(root: RootId) -> RootExists {
        RootExists {
            root: root.as_uuid(),
        }
    }

    pub(crate) const SQL: &'static str = "
SELECT EXISTS (SELECT 1 FROM __S__.messages WHERE id = $1 AND root_id = id) AS found";
}

impl Statement for RootExists {
    type Output = bool;

    fn id(&self) -> StmtId {
        StmtId::RootExists
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<bool> {
        Ok(one(rows)?.try_get("found")?)
    }
}

/// A top-level run of a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RootRunRow {
    pub(crate) handler: String,
    pub(crate) status: RunStatus,
    pub(crate) failure: Option<Failure>,
    pub(crate) rollback_failure: Option<Failure>,
}

impl Statement for RootRuns {
    type Output = Vec<RootRunRow>;

    fn id(&self) -> StmtId {
        StmtId::RootRuns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<RootRunRow>> {
        rows.iter()
            .map(|row| {
                Ok(RootRunRow {
                    handler: row.try_get("handler")?,
                    status: status(row, "status")?,
                    failure: failure_col(row, "failure")?,
                    rollback_failure: failure_col(row, "rollback_failure")?,
                })
            })
            .collect()
    }
}

/// Every run of a root's tree, parents before children.
#[derive(Debug)]
pub(crate) struct Tree {
    root: Uuid,
}

impl Tree {
    pub(crate) fn new(root: RootId) -> Tree {
        Tree {
            root: root.as_uuid(),
        }
    }

    pub(crate) const SQL: &'static str = "
WITH RECURSIVE t AS (
    SELECT r.id, r.parent_id, r.root_id, r.handler, r.topic, r.status, r.step_index,
           r.pending_children, r.failure, r.rollback_failure, r.context, r.retries,
           r.infra_failures, r.last_error, r.created_at, r.started_at, r.finished_at,
           r.version, 0 AS depth, ARRAY[r.created_at] AS path
    FROM __S__.runs r WHERE r.message_id = $1 AND r.parent_id IS NULL
    UNION ALL
    SELECT c.id, c.parent_id, c.root_id, c.handler, c.topic, c.status, c.step_index,
           c.pending_children, c.failure, c.rollback_failure, c.context, c.retries,
           c.infra_failures, c.last_error, c.created_at, c.started_at, c.finished_at,
           c.version, t.depth + 1, t.path || c.created_at
    FROM __S__.runs c JOIN t ON c.parent_id = t.id
)
SELECT id, parent_id, root_id, handler, topic, status, step_index, pending_children, depth,
       failure::text AS failure, rollback_failure::text AS rollback_failure, context, retries,
       infra_failures, last_error, created_at, started_at, finished_at, version
FROM t ORDER BY path, handler";
}

/// One run of a tree, for inspection.
#[derive(Clone, Debug)]
pub(crate) struct TreeRow {
    pub(crate) id: RunId,
    pub(crate) parent_id: Option<RunId>,
    pub(crate) root_id: RootId,
    pub(crate) created_at: SystemTime,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) handler: String,
    pub(crate) topic: String,
    pub(crate) status: RunStatus,
    pub(crate) step_index: u32,
    pub(crate) pending_children: u32,
    pub(crate) depth: u32,
    pub(crate) failure: Option<Failure>,
    pub(crate) rollback_failure: Option<Failure>,
    pub(crate) context: CooperationContext,
    pub(crate) retries: u32,
    pub(crate) infra_failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) version: Option<String>,
}

impl Statement for Tree {
    type Output = Vec<TreeRow>;

    fn id(&self) -> StmtId {
        StmtId::Tree
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<TreeRow>> {
        rows.iter().map(tree_row).collect()
    }
}

/// Decodes a run as [`Tree`] and the listings select it.
pub(crate) fn tree_row(row: &Row) -> Result<TreeRow> {
    Ok(TreeRow {
        id: RunId::from_uuid(row.try_get("id")?),
        parent_id: row
            .try_get::<_, Option<Uuid>>("parent_id")?
            .map(RunId::from_uuid),
        root_id: RootId::from_uuid(row.try_get("root_id")?),
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        handler: row.try_get("handler")?,
        topic: row.try_get("topic")?,
        status: status(row, "status")?,
        step_index: u32_col(row, "step_index")?,
        pending_children: u32_col(row, "pending_children")?,
        depth: u32_col(row, "depth")?,
        failure: failure_col(row, "failure")?,
        rollback_failure: failure_col(row, "rollback_failure")?,
        context: CooperationContext::from_stored(row.try_get("context")?)?,
        retries: u32_col(row, "retries")?,
        infra_failures: u32_col(row, "infra_failures")?,
        last_error: row.try_get("last_error")?,
        version: row.try_get("version")?,
    })
}

/// A root's history in order.
#[derive(Debug)]
pub(crate) struct History {
    root: Uuid,
}

impl History {
    pub(crate) fn new(root: RootId) -> History {
        History {
            root: root.as_uuid(),
        }
    }

    pub(crate) const SQL: &'static str = "
SELECT seq, at, event, handler, step, run_id, message_id, next_step, failure::text AS failure,
       worker
FROM __S__.history WHERE root_id = $1 ORDER BY seq";
}

/// One history row.
#[derive(Clone, Debug)]
pub(crate) struct HistoryRow {
    pub(crate) seq: i64,
    pub(crate) at: SystemTime,
    pub(crate) kind: EventKind,
    pub(crate) handler: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) run_id: Option<RunId>,
    pub(crate) message_id: MessageId,
    pub(crate) next_step: Option<i32>,
    pub(crate) failure: Option<Failure>,
    pub(crate) worker: Option<String>,
}

impl Statement for History {
    type Output = Vec<HistoryRow>;

    fn id(&self) -> StmtId {
        StmtId::History
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<HistoryRow>> {
        rows.iter()
            .map(|row| {
                let event: &str = row.try_get("event")?;
                Ok(HistoryRow {
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    kind: EventKind::parse(event).ok_or_else(|| {
                        Error::UnexpectedData(format!("unknown history event {event:?}"))
                    })?,
                    handler: row.try_get("handler")?,
                    step: row.try_get("step")?,
                    run_id: row
                        .try_get::<_, Option<Uuid>>("run_id")?
                        .map(RunId::from_uuid),
                    message_id: MessageId::from_uuid(row.try_get("message_id")?),
                    next_step: row.try_get("next_step")?,
                    failure: failure_col(row, "failure")?,
                    worker: row.try_get("worker")?,
                })
            })
            .collect()
    }
}

/// One message, if it exists.
#[derive(Debug)]
pub(crate) struct Message {
    id: Uuid,
}

impl Message {
    pub(crate) fn new(id: MessageId) -> Message {
        Message { id: id.as_uuid() }
    }

    pub(crate) const SQL: &'static str = "
SELECT id, root_id, topic, payload::text AS payload, created_at
FROM __S__.messages WHERE id = $1";
}

/// A stored message.
#[derive(Clone, Debug)]
pub(crate) struct MessageRow {
    pub(crate) id: MessageId,
    pub(crate) root_id: RootId,
    pub(crate) topic: String,
    pub(crate) payload: String,
    pub(crate) created_at: SystemTime,
}

impl Statement for Message {
    type Output = Option<MessageRow>;

    fn id(&self) -> StmtId {
        StmtId::Message
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.id]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<MessageRow>> {
        rows.into_iter()
            .next()
            .map(|row| {
                Ok(MessageRow {
                    id: MessageId::from_uuid(row.try_get("id")?),
                    root_id: RootId::from_uuid(row.try_get("root_id")?),
                    topic: row.try_get("topic")?,
                    payload: row.try_get("payload")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .transpose()
    }
}

/// Locks the run of a handler for a message, for an out-of-band completion.
#[derive(Debug)]
pub(crate) struct LockExternal<'a> {
    message: Uuid,
    handler: &'a str,
}

impl<'a> LockExternal<'a> {
    pub(crate) fn new(message: MessageId, handler: &'a str) -> LockExternal<'a> {
        LockExternal {
            message: message.as_uuid(),
            handler,
        }
    }

    pub(crate) const SQL: &'static str = "
SELECT r.id, r.root_id, r.status, r.step_index, r.step_iteration, r.instances,
       r.failed_children, r.pending_children, r.started_at IS NOT NULL AS seen,
       r.cfh_iteration, r.rollback_cursor, r.waited_instance, r.rollback_seen, h.kind
FROM __S__.runs r
LEFT JOIN __S__.handlers h ON h.topic = r.topic AND h.handler = r.handler
WHERE r.message_id = $1 AND r.handler = $2
FOR UPDATE OF r";
}

/// A run locked for an out-of-band completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExternalRun {
    pub(crate) id: RunId,
    pub(crate) view: RunView,
    pub(crate) pending_children: u32,
    pub(crate) seen: bool,
    /// How its handler is registered (`runtime`, `external`), if it still is.
    pub(crate) kind: Option<String>,
}

impl Statement for LockExternal<'_> {
    type Output = Option<ExternalRun>;

    fn id(&self) -> StmtId {
        StmtId::LockExternal
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.message, &self.handler]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<ExternalRun>> {
        rows.into_iter()
            .next()
            .map(|row| {
                Ok(ExternalRun {
                    id: RunId::from_uuid(row.try_get("id")?),
                    view: run_view(&row)?,
                    pending_children: u32_col(&row, "pending_children")?,
                    seen: row.try_get("seen")?,
                    kind: row.try_get("kind")?,
                })
            })
            .transpose()
    }
}
