//! Reads and writes of the rollback path: a run's step instances, how its children ended,
//! asking children to roll back, and operators' rollback requests.

use std::collections::HashMap;

use postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{Sql, opt_u32_col, status, u32_col};
use crate::core::decide::ChildrenOf;
use crate::core::{Instance, InstanceKind, RunStatus};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{RootId, RunId};

/// The executed step instances of `run`, in order.
pub(crate) fn instances(
    client: &mut impl GenericClient,
    sql: &Sql,
    run: RunId,
) -> Result<Vec<Instance>> {
    client
        .query(sql.instances.as_str(), &[&run.as_uuid()])?
        .iter()
        .map(|row| {
            let kind: &str = row.try_get("kind")?;
            Ok(Instance {
                seq: u32_col(row, "seq")?,
                step: u32_col(row, "step")? as usize,
                iteration: u32_col(row, "iteration")?,
                cfh: opt_u32_col(row, "cfh")?,
                kind: InstanceKind::parse(kind).ok_or_else(|| {
                    Error::Config(format!(
                        "unknown step instance kind {kind:?} in the database"
                    ))
                })?,
            })
        })
        .collect()
}

/// What the children of each step instance of `run` ended as, by instance.
pub(crate) fn children(
    client: &mut impl GenericClient,
    sql: &Sql,
    run: RunId,
) -> Result<HashMap<u32, ChildrenOf>> {
    let failures = |row: &Row, column: &str| -> Result<Vec<Failure>> {
        let text: String = row.try_get(column)?;
        Ok(serde_json::from_str(&text)?)
    };
    client
        .query(sql.children.as_str(), &[&run.as_uuid()])?
        .iter()
        .map(|row| {
            Ok((
                u32_col(row, "seq")?,
                ChildrenOf {
                    messages: row.try_get("messages")?,
                    committed: u32_col(row, "committed")?,
                    rolled_back: failures(row, "rolled_back")?,
                    rollback_failed: failures(row, "rollback_failed")?,
                },
            ))
        })
        .collect()
}

/// What asking children to roll back did.
#[derive(Debug)]
pub(crate) struct Requested {
    /// Children that will roll back (the parent waits for them).
    pub(crate) children: u32,
    /// Their handlers.
    pub(crate) handlers: Vec<String>,
}

/// Asks the committed children of step instance `instance` of `run` to roll back.
pub(crate) fn request_rollback(
    client: &mut impl GenericClient,
    sql: &Sql,
    run: RunId,
    instance: u32,
    cause: &Failure,
    context: Option<&str>,
    quiet: &[&str],
) -> Result<Requested> {
    let cause = serde_json::to_string(cause)?;
    let row = client.query_one(
        sql.request_rollback.as_str(),
        &[
            &run.as_uuid(),
            &(instance as i32),
            &cause,
            &sql.channel,
            &quiet,
            &context,
        ],
    )?;
    Ok(Requested {
        children: u32_col(&row, "requested")?,
        handlers: row.try_get("woken")?,
    })
}

/// A run an operator asked to roll back.
#[derive(Debug)]
pub(crate) struct TargetRun {
    pub(crate) id: RunId,
    pub(crate) handler: String,
    pub(crate) status: RunStatus,
}

/// Locks the runs an operator's rollback addresses (the top-level runs of a root, or one run).
/// `Ok(None)` means one of them is locked right now, i.e. being processed.
pub(crate) fn lock_targets(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: Option<RootId>,
    run: Option<RunId>,
) -> Result<Option<Vec<TargetRun>>> {
    let rows = match (root, run) {
        (Some(root), _) => client.query(sql.lock_root_runs.as_str(), &[&root.as_uuid()]),
        (None, Some(run)) => client.query(sql.lock_run.as_str(), &[&run.as_uuid()]),
        (None, None) => return Ok(Some(Vec::new())),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    rows.iter()
        .map(|row| {
            Ok(TargetRun {
                id: RunId::from_uuid(row.try_get("id")?),
                handler: row.try_get("handler")?,
                status: status(row, "status")?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Unfinished runs around `runs` (their subtrees and ancestors): `(handler, status)`.
pub(crate) fn busy_around(
    client: &mut impl GenericClient,
    sql: &Sql,
    runs: &[RunId],
) -> Result<Vec<(String, RunStatus)>> {
    let ids: Vec<Uuid> = runs.iter().map(RunId::as_uuid).collect();
    client
        .query(sql.busy_around.as_str(), &[&ids])?
        .iter()
        .map(|row| Ok((row.try_get("handler")?, status(row, "status")?)))
        .collect()
}

/// Starts an operator's rollback of the committed runs among `runs`; returns how many.
pub(crate) fn request_operator_rollback(
    client: &mut impl GenericClient,
    sql: &Sql,
    runs: &[RunId],
    cause: &Failure,
) -> Result<u32> {
    let ids: Vec<Uuid> = runs.iter().map(RunId::as_uuid).collect();
    let cause = serde_json::to_string(cause)?;
    let row = client.query_one(
        sql.request_operator_rollback.as_str(),
        &[&ids, &cause, &sql.channel],
    )?;
    u32_col(&row, "marked")
}

/// The root and message of `run`, if it exists.
pub(crate) fn run_origin(
    client: &mut impl GenericClient,
    sql: &Sql,
    run: RunId,
) -> Result<Option<(RootId, crate::ids::MessageId)>> {
    client
        .query_opt(sql.run_origin.as_str(), &[&run.as_uuid()])?
        .map(|row| {
            Ok((
                RootId::from_uuid(row.try_get("root_id")?),
                crate::ids::MessageId::from_uuid(row.try_get("message_id")?),
            ))
        })
        .transpose()
}

/// Takes the root's advisory lock exclusively: waits until every step of the tree that already
/// passed its post-step check has committed, and keeps new ones from passing it until this
/// transaction ends.
pub(crate) fn lock_root_exclusively(client: &mut impl GenericClient, root: RootId) -> Result<()> {
    client.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 1309))",
        &[&root.as_uuid()],
    )?;
    Ok(())
}

/// The runs of a cancellation's scope still on their happy path.
pub(crate) fn cancel_scope(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: RootId,
    run: Option<RunId>,
) -> Result<Vec<RunId>> {
    client
        .query(
            sql.cancel_scope.as_str(),
            &[&root.as_uuid(), &run.map(|r| r.as_uuid())],
        )?
        .iter()
        .map(|row| Ok(RunId::from_uuid(row.try_get("id")?)))
        .collect()
}

/// Records a cancellation (see `RECORD_CANCEL`).
pub(crate) fn record_cancel(
    client: &mut impl GenericClient,
    sql: &Sql,
    root: RootId,
    run: Option<RunId>,
    message: crate::ids::MessageId,
    failure: &Failure,
    runs: &[RunId],
) -> Result<()> {
    let failure = serde_json::to_string(failure)?;
    let ids: Vec<Uuid> = runs.iter().map(RunId::as_uuid).collect();
    client.query_one(
        sql.record_cancel.as_str(),
        &[
            &root.as_uuid(),
            &run.map(|r| r.as_uuid()),
            &failure,
            &message.as_uuid(),
            &ids,
            &sql.channel,
        ],
    )?;
    Ok(())
}
