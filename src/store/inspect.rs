//! Reads for people and callers: a root's runs, tree, history and messages, and the lock an
//! out-of-band completion takes.

use std::time::SystemTime;

use postgres::GenericClient;
use uuid::Uuid;

use super::{Sql, failure_col, run_view, status, u32_col};
use crate::context::CooperationContext;
use crate::core::{EventKind, RunStatus, RunView};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};

/// A top-level run of a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RootRunRow {
    pub(crate) handler: String,
    pub(crate) status: RunStatus,
    pub(crate) failure: Option<Failure>,
    pub(crate) rollback_failure: Option<Failure>,
}

pub(crate) fn root_runs(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: RootId,
) -> Result<Vec<RootRunRow>> {
    client
        .query(sql.root_runs.as_str(), &[&root.as_uuid()])?
        .iter()
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

/// One run of a tree, for inspection.
#[derive(Clone, Debug)]
pub(crate) struct TreeRow {
    pub(crate) id: RunId,
    pub(crate) parent_id: Option<RunId>,
    pub(crate) handler: String,
    pub(crate) topic: String,
    pub(crate) status: RunStatus,
    pub(crate) step_index: u32,
    pub(crate) pending_children: u32,
    pub(crate) depth: u32,
    pub(crate) failure: Option<Failure>,
    pub(crate) rollback_failure: Option<Failure>,
    pub(crate) context: CooperationContext,
}

pub(crate) fn tree(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: RootId,
) -> Result<Vec<TreeRow>> {
    client
        .query(sql.tree.as_str(), &[&root.as_uuid()])?
        .iter()
        .map(|row| {
            Ok(TreeRow {
                id: RunId::from_uuid(row.try_get("id")?),
                parent_id: row
                    .try_get::<_, Option<Uuid>>("parent_id")?
                    .map(RunId::from_uuid),
                handler: row.try_get("handler")?,
                topic: row.try_get("topic")?,
                status: status(row, "status")?,
                step_index: u32_col(row, "step_index")?,
                pending_children: u32_col(row, "pending_children")?,
                depth: u32_col(row, "depth")?,
                failure: failure_col(row, "failure")?,
                rollback_failure: failure_col(row, "rollback_failure")?,
                context: CooperationContext::from_stored(row.try_get("context")?)?,
            })
        })
        .collect()
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
}

pub(crate) fn history(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: RootId,
) -> Result<Vec<HistoryRow>> {
    client
        .query(sql.history.as_str(), &[&root.as_uuid()])?
        .iter()
        .map(|row| {
            let event: &str = row.try_get("event")?;
            Ok(HistoryRow {
                seq: row.try_get("seq")?,
                at: row.try_get("at")?,
                kind: EventKind::parse(event).ok_or_else(|| {
                    Error::Config(format!("unknown history event {event:?} in the database"))
                })?,
                handler: row.try_get("handler")?,
                step: row.try_get("step")?,
                run_id: row
                    .try_get::<_, Option<Uuid>>("run_id")?
                    .map(RunId::from_uuid),
                message_id: MessageId::from_uuid(row.try_get("message_id")?),
                next_step: row.try_get("next_step")?,
                failure: failure_col(row, "failure")?,
            })
        })
        .collect()
}

/// A run locked for an out-of-band completion.
#[derive(Debug)]
pub(crate) struct ExternalRun {
    pub(crate) id: RunId,
    pub(crate) view: RunView,
    pub(crate) pending_children: u32,
    pub(crate) seen: bool,
    pub(crate) kind: Option<String>,
}

pub(crate) fn lock_external(
    client: &mut impl GenericClient,
    sql: &Sql,
    message: MessageId,
    handler: &str,
) -> Result<Option<ExternalRun>> {
    let Some(row) =
        client.query_opt(sql.lock_external.as_str(), &[&message.as_uuid(), &handler])?
    else {
        return Ok(None);
    };
    Ok(Some(ExternalRun {
        id: RunId::from_uuid(row.try_get("id")?),
        view: run_view(&row)?,
        pending_children: u32_col(&row, "pending_children")?,
        seen: row.try_get("seen")?,
        kind: row.try_get("kind")?,
    }))
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

pub(crate) fn message(
    client: &mut impl GenericClient,
    sql: &Sql,
    id: MessageId,
) -> Result<Option<MessageRow>> {
    client
        .query_opt(sql.message.as_str(), &[&id.as_uuid()])?
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
