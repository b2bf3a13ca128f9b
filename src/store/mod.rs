//! Persistence: the statements of [`sql`] executed over any `postgres::GenericClient`, with row
//! decoding in one place.
//!
//! Functions take a [`StmtCache`] where they run on the hot path (workers keep their connection
//! and its prepared statements for their whole life); the rest prepare per call.

mod inspect;
mod rollback;
mod sql;

use std::time::Duration;

use postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

use crate::core::decide::{Event, Transition};
use crate::core::{RunStatus, RunView, Wake};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};
use crate::saga::Emission;

pub(crate) use inspect::{history, lock_external, message, root_runs, tree};
pub(crate) use rollback::{
    busy_around, cancel_scope, children, instances, lock_root_exclusively, lock_targets,
    record_cancel, request_operator_rollback, request_rollback, run_origin,
};
pub(crate) use sql::Sql;

/// Identifies a cached statement.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stmt {
    Claim = 0,
    Emit,
    Finish,
    Release,
    Sweep,
}

const CACHED: usize = 5;

/// Prepared statements of one connection.
#[derive(Debug, Default)]
pub(crate) struct StmtCache {
    stmts: [Option<Statement>; CACHED],
}

impl StmtCache {
    fn get(&mut self, client: &mut impl GenericClient, sql: &Sql, id: Stmt) -> Result<Statement> {
        if let Some(stmt) = &self.stmts[id as usize] {
            return Ok(stmt.clone());
        }
        let text = match id {
            Stmt::Claim => &sql.claim,
            Stmt::Emit => &sql.emit,
            Stmt::Finish => &sql.finish,
            Stmt::Release => &sql.release,
            Stmt::Sweep => &sql.sweep,
        };
        let stmt = client.prepare(text)?;
        self.stmts[id as usize] = Some(stmt.clone());
        Ok(stmt)
    }

    /// Forgets every statement (after an error that may have left them unusable).
    pub(crate) fn clear(&mut self) {
        self.stmts = Default::default();
    }
}

/// A claimed run, as read by [`claim`].
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) id: RunId,
    pub(crate) root_id: RootId,
    pub(crate) message_id: MessageId,
    pub(crate) topic: String,
    pub(crate) view: RunView,
    pub(crate) due: bool,
    pub(crate) wait: Duration,
    pub(crate) payload: String,
    /// The run's rollback cause, as stored (decoded only on the rollback path).
    pub(crate) failure: Option<String>,
    /// Why the run must give up now, if it must (a cancellation, a missed deadline).
    pub(crate) give_up: Option<Failure>,
    /// For periodic sagas: how many runs of the chain came before this one.
    pub(crate) run_count: u32,
    /// The run's cooperation context, as stored (`None` = empty).
    pub(crate) context: Option<String>,
    /// The context a parent's rollback request carried, not merged in yet.
    pub(crate) rollback_context: Option<String>,
}

impl Claimed {
    /// The rollback cause.
    pub(crate) fn cause(&self) -> Result<Option<Failure>> {
        self.failure
            .as_deref()
            .map(|f| serde_json::from_str(f).map_err(Error::from))
            .transpose()
    }
}

pub(super) fn status(row: &Row, column: &str) -> Result<RunStatus> {
    let s: &str = row.try_get(column)?;
    RunStatus::parse(s)
        .ok_or_else(|| Error::Config(format!("unknown run status {s:?} in the database")))
}

pub(super) fn u32_col(row: &Row, column: &str) -> Result<u32> {
    let v: i32 = row.try_get(column)?;
    Ok(u32::try_from(v).unwrap_or(0))
}

pub(super) fn opt_u32_col(row: &Row, column: &str) -> Result<Option<u32>> {
    let v: Option<i32> = row.try_get(column)?;
    Ok(v.map(|v| u32::try_from(v).unwrap_or(0)))
}

/// The columns the core needs, shared by every query that hands a run to the core.
pub(super) fn run_view(row: &Row) -> Result<RunView> {
    Ok(RunView {
        status: status(row, "status")?,
        step_index: u32_col(row, "step_index")?,
        step_iteration: u32_col(row, "step_iteration")?,
        instances: u32_col(row, "instances")?,
        failed_children: u32_col(row, "failed_children")?,
        cfh_iteration: opt_u32_col(row, "cfh_iteration")?,
        rollback_cursor: opt_u32_col(row, "rollback_cursor")?,
        waited_instance: opt_u32_col(row, "waited_instance")?,
        rollback_seen: row.try_get("rollback_seen")?,
    })
}

pub(super) fn failure_col(row: &Row, column: &str) -> Result<Option<Failure>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(Error::from))
        .transpose()
}

/// Claims the next runnable run of `handler`, if any.
pub(crate) fn claim(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: &mut StmtCache,
    handler: &str,
    worker: &str,
) -> Result<Option<Claimed>> {
    let stmt = cache.get(client, sql, Stmt::Claim)?;
    let Some(row) = client.query_opt(&stmt, &[&handler, &worker])? else {
        return Ok(None);
    };
    let wait_ms: i64 = row.try_get("wait_ms")?;
    Ok(Some(Claimed {
        id: RunId::from_uuid(row.try_get("id")?),
        root_id: RootId::from_uuid(row.try_get("root_id")?),
        message_id: MessageId::from_uuid(row.try_get("message_id")?),
        topic: row.try_get("topic")?,
        view: run_view(&row)?,
        due: row.try_get("due")?,
        wait: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
        payload: row.try_get("payload")?,
        failure: row.try_get("failure")?,
        give_up: failure_col(&row, "give_up")?,
        run_count: u32_col(&row, "run_count")?,
        context: row.try_get("context")?,
        rollback_context: row.try_get("rollback_context")?,
    }))
}

/// Who emits: the run, its step instance, and names for the history.
#[derive(Debug)]
pub(crate) struct Emitter<'a> {
    pub(crate) root_id: RootId,
    pub(crate) run_id: RunId,
    pub(crate) instance: u32,
    pub(crate) handler: &'a str,
    pub(crate) step: &'a str,
}

/// What an emission created.
#[derive(Debug, Default)]
pub(crate) struct Emitted {
    /// Child runs created for the emitting run.
    pub(crate) children: u32,
    /// Handlers that got new runs.
    pub(crate) handlers: Vec<String>,
}

/// Writes emissions (children of `emitter`, or global launches when `emitter` is `None`).
/// Handlers in `quiet` get runs but no notification. With `check` set (whether the emitter is
/// rolling back), the emitter's give-up check runs first (see [`is_give_up`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    emitter: Option<&Emitter<'_>>,
    emissions: &[Emission],
    worker: &str,
    quiet: &[&str],
    check: Option<bool>,
) -> Result<Emitted> {
    if emissions.is_empty() {
        return Ok(Emitted::default());
    }
    let ids: Vec<Uuid> = emissions.iter().map(|e| e.id).collect();
    let topics: Vec<&str> = emissions.iter().map(|e| e.topic.as_str()).collect();
    let payloads: Vec<&str> = emissions.iter().map(|e| e.payload.as_str()).collect();
    let scoped: Vec<bool> = emissions
        .iter()
        .map(|e| e.scoped && emitter.is_some())
        .collect();
    let root = emitter.map(|e| e.root_id.as_uuid());
    let run = emitter.map(|e| e.run_id.as_uuid());
    let instance = emitter.map(|e| e.instance as i32);
    let handler = emitter.map(|e| e.handler);
    let step = emitter.map(|e| e.step);
    let deadlines: Vec<Option<&str>> = emissions.iter().map(|e| e.deadlines.as_deref()).collect();
    let run_counts: Vec<i32> = emissions.iter().map(|e| e.run_count as i32).collect();
    let contexts: Vec<Option<&str>> = emissions.iter().map(|e| e.context.as_deref()).collect();
    let params: [&(dyn postgres::types::ToSql + Sync); 16] = [
        &ids,
        &topics,
        &payloads,
        &scoped,
        &root,
        &run,
        &instance,
        &handler,
        &step,
        &worker,
        &sql.channel,
        &deadlines,
        &run_counts,
        &check,
        &quiet,
        &contexts,
    ];
    let row = match cache {
        Some(cache) => {
            let stmt = cache.get(client, sql, Stmt::Emit)?;
            client.query_one(&stmt, &params)?
        }
        None => client.query_one(sql.emit.as_str(), &params)?,
    };
    Ok(Emitted {
        children: u32::try_from(row.try_get::<_, i32>("children")?).unwrap_or(0),
        handlers: row.try_get("woken")?,
    })
}

/// What persisting a transition revealed.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The run is a top-level run of its root.
    pub(crate) is_root: bool,
    /// The run finished and its parent must be told, with [`release`], once this commits.
    pub(crate) release_pending: bool,
}

/// Persists `t` for run `run`. `messages` are the child messages emitted by the instance `t`
/// records, if any. With `check` set (whether the run is rolling back), the run's give-up
/// check runs first (see [`is_give_up`]). With `context` set, the run's context becomes it
/// (`Some(None)`: empty) and any pending rollback context is cleared.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    run: RunId,
    t: &Transition,
    worker: &str,
    messages: &[Uuid],
    check: Option<bool>,
    context: Option<Option<&str>>,
) -> Result<Applied> {
    let json = |f: &Option<Failure>| f.as_ref().map(serde_json::to_string).transpose();
    let failure = json(&t.failure)?;
    let rollback_failure = json(&t.rollback_failure)?;
    let kinds: Vec<&str> = t.events.iter().map(|e: &Event| e.kind.as_str()).collect();
    let steps: Vec<Option<&str>> = t.events.iter().map(|e| e.step.as_deref()).collect();
    let next_steps: Vec<Option<i32>> = t.events.iter().map(|e| e.next_step).collect();
    let failures: Vec<Option<String>> = t
        .events
        .iter()
        .map(|e| json(&e.failure))
        .collect::<std::result::Result<_, _>>()?;
    let event_messages: Vec<Option<Uuid>> = t.events.iter().map(|e| e.message).collect();
    let int = |v: u32| v as i32;
    let instance = t.new_instance.as_ref();
    let (wake_at, wake_in_us) = match t.wake {
        Wake::Now => (None, None),
        Wake::After(d) => (None, Some(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
        Wake::At(at) => (Some(at), None),
    };
    let write_context = context.is_some();
    let context = context.flatten();
    let params: [&(dyn postgres::types::ToSql + Sync); 28] = [
        &run.as_uuid(),
        &t.status.as_str(),
        &int(t.step_index),
        &int(t.step_iteration),
        &int(t.instances),
        &int(t.pending_children),
        &failure,
        &rollback_failure,
        &t.cfh_iteration.map(int),
        &t.rollback_cursor.map(int),
        &t.waited_instance.map(int),
        &worker,
        &instance.map(|i| int(i.seq)),
        &instance.map(|i| i.step as i32),
        &instance.map(|i| int(i.iteration)),
        &instance.and_then(|i| i.cfh.map(int)),
        &instance.map(|i| i.kind.as_str()),
        &kinds,
        &steps,
        &next_steps,
        &failures,
        &event_messages,
        &messages,
        &wake_at,
        &wake_in_us,
        &check,
        &write_context,
        &context,
    ];
    let row = match cache {
        Some(cache) => {
            let stmt = cache.get(client, sql, Stmt::Finish)?;
            client.query_opt(&stmt, &params)?
        }
        None => client.query_opt(sql.finish.as_str(), &params)?,
    };
    let Some(row) = row else {
        // The check stopped the update without failing (it always fails instead); be safe.
        return Err(Error::Config(
            "the run's transition was not applied".to_owned(),
        ));
    };
    let parent: Option<Uuid> = row.try_get("parent_id")?;
    Ok(Applied {
        is_root: parent.is_none(),
        release_pending: row.try_get("release_pending")?,
    })
}

/// Tells the parent of the finished run `run` (whose transaction must have committed) that it
/// finished. Must run outside a transaction block. Returns the parent's handler if the parent
/// became runnable; it is notified unless it is in `quiet`.
pub(crate) fn release(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    run: RunId,
    quiet: &[&str],
) -> Result<Option<String>> {
    let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&run.as_uuid(), &sql.channel, &quiet];
    let row = match cache {
        Some(cache) => {
            let stmt = cache.get(client, sql, Stmt::Release)?;
            client.query_one(&stmt, &params)?
        }
        None => client.query_one(sql.release.as_str(), &params)?,
    };
    Ok(row.try_get("woken_parent")?)
}

/// Finished runs whose parent was never told (to be released by a sweep).
pub(crate) fn unreleased(client: &mut impl GenericClient, sql: &Sql) -> Result<Vec<RunId>> {
    client
        .query(sql.unreleased.as_str(), &[])?
        .iter()
        .map(|row| Ok(RunId::from_uuid(row.try_get("id")?)))
        .collect()
}

/// For each of `handlers`, whether it has a due run or when its earliest runnable run wakes.
/// Returns `(index into handlers, None if due / Some(wait))`.
pub(crate) fn sweep(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    handlers: &[&str],
) -> Result<Vec<(usize, Option<Duration>)>> {
    let rows = match cache {
        Some(cache) => {
            let stmt = cache.get(client, sql, Stmt::Sweep)?;
            client.query(&stmt, &[&handlers])?
        }
        None => client.query(sql.sweep.as_str(), &[&handlers])?,
    };
    rows.iter()
        .map(|row| {
            let position: i64 = row.try_get(0)?;
            let due: bool = row.try_get(1)?;
            let wait_ms: i64 = row.try_get(2)?;
            let index = usize::try_from(position - 1).unwrap_or(0);
            Ok((
                index,
                (!due).then(|| Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))),
            ))
        })
        .collect()
}

/// Registers `(topic, handler)` pairs of the given kind (`runtime` or `external`).
pub(crate) fn register(
    client: &mut impl GenericClient,
    sql: &Sql,
    pairs: &[(&str, &str)],
    kind: &str,
) -> Result<()> {
    let topics: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let handlers: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    client.execute(sql.register.as_str(), &[&topics, &handlers, &kind])?;
    Ok(())
}

/// The SQLSTATE of the post-step check: the run must give up (the message holds the failure).
const GIVE_UP: &str = "SC001";

/// If `e` is the post-step check saying the run must give up, the failure it gives.
pub(crate) fn is_give_up(e: &Error) -> Option<Failure> {
    let Error::Postgres(pg) = e else {
        return None;
    };
    let db = pg.as_db_error()?;
    (db.code().code() == GIVE_UP)
        .then(|| serde_json::from_str(db.message()).ok())
        .flatten()
}
