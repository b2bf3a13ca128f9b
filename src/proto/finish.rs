//! Persisting a run's transition (`FINISH`): its new state, the step instance it executed and
//! its history, with bound parameters or, to share a round trip with the release of the
//! step's savepoint, as simple-query text.

use std::time::SystemTime;

use postgres::types::ToSql;
use postgres::{Row, SimpleQueryMessage};
use uuid::Uuid;

use super::{
    Cols, ContextWrite, GiveUpCheck, Literals, Sql, Statement, StmtId, failure_json, first_row,
};
use crate::core::Wake;
use crate::core::decide::Transition;
use crate::error::{Error, Result};
use crate::ids::RunId;

/// Persists a transition of a run: its new state, the step instance it executed (if any),
/// and its history entries in order.
#[derive(Debug)]
pub(crate) struct Finish<'a> {
    pub(crate) run: Uuid,
    pub(crate) status: &'static str,
    pub(crate) step_index: i32,
    pub(crate) step_iteration: i32,
    pub(crate) instances: i32,
    pub(crate) pending_children: i32,
    pub(crate) failure: Option<String>,
    pub(crate) rollback_failure: Option<String>,
    pub(crate) cfh_iteration: Option<i32>,
    pub(crate) rollback_cursor: Option<i32>,
    pub(crate) waited_instance: Option<i32>,
    pub(crate) worker: &'a str,
    pub(crate) instance_seq: Option<i32>,
    pub(crate) instance_step: Option<i32>,
    pub(crate) instance_iteration: Option<i32>,
    pub(crate) instance_cfh: Option<i32>,
    pub(crate) instance_kind: Option<&'static str>,
    pub(crate) event_kinds: Vec<&'static str>,
    pub(crate) event_steps: Vec<Option<String>>,
    pub(crate) event_next_steps: Vec<Option<i32>>,
    pub(crate) event_failures: Vec<Option<String>>,
    pub(crate) event_messages: Vec<Option<Uuid>>,
    /// The child messages emitted by the instance the transition records.
    pub(crate) messages: Vec<Uuid>,
    pub(crate) wake_at: Option<SystemTime>,
    pub(crate) wake_in_us: Option<i64>,
    pub(crate) check: Option<bool>,
    pub(crate) write_context: bool,
    pub(crate) context: Option<String>,
    /// The saga version driving the run, recorded if the run had none (see `Claim`).
    pub(crate) version: Option<&'a str>,
}

impl<'a> Finish<'a> {
    /// Persists `t` for `run`. `messages` are the child messages of the instance `t` records.
    pub(crate) fn new(
        run: RunId,
        t: &Transition,
        worker: &'a str,
        messages: Vec<Uuid>,
        check: GiveUpCheck,
        context: ContextWrite<'_>,
    ) -> Result<Finish<'a>> {
        let int = |v: u32| v as i32;
        let instance = t.new_instance.as_ref();
        let (wake_at, wake_in_us) = match t.wake {
            Wake::Now => (None, None),
            Wake::After(d) => (None, Some(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
            Wake::At(at) => (Some(at), None),
        };
        let (write_context, context) = match context {
            ContextWrite::Keep => (false, None),
            ContextWrite::Set(c) => (true, c.map(str::to_owned)),
        };
        Ok(Finish {
            run: run.as_uuid(),
            status: t.status.as_str(),
            step_index: int(t.step_index),
            step_iteration: int(t.step_iteration),
            instances: int(t.instances),
            pending_children: int(t.pending_children),
            failure: failure_json(t.failure.as_ref())?,
            rollback_failure: failure_json(t.rollback_failure.as_ref())?,
            cfh_iteration: t.cfh_iteration.map(int),
            rollback_cursor: t.rollback_cursor.map(int),
            waited_instance: t.waited_instance.map(int),
            worker,
            instance_seq: instance.map(|i| int(i.seq)),
            instance_step: instance.map(|i| i.step as i32),
            instance_iteration: instance.map(|i| int(i.iteration)),
            instance_cfh: instance.and_then(|i| i.cfh.map(int)),
            instance_kind: instance.map(|i| i.kind.as_str()),
            event_kinds: t.events.iter().map(|e| e.kind.as_str()).collect(),
            event_steps: t.events.iter().map(|e| e.step.clone()).collect(),
            event_next_steps: t.events.iter().map(|e| e.next_step).collect(),
            event_failures: t
                .events
                .iter()
                .map(|e| failure_json(e.failure.as_ref()))
                .collect::<Result<_>>()?,
            event_messages: t.events.iter().map(|e| e.message).collect(),
            messages,
            wake_at,
            wake_in_us,
            check: check.param(),
            write_context,
            context,
            version: None,
        })
    }

    /// A run that reaches a terminal state while its parent counts it among its unfinished
    /// children is marked `release_pending`; the parent's bookkeeping follows in [`Release`],
    /// after this transaction committed. With `$26` set, the post-step give-up check runs
    /// before anything is written; with `$27`, the context becomes `$28` (which includes any
    /// pending rollback context) and the pending one is cleared.
    pub(crate) const SQL: &'static str = "
WITH me AS MATERIALIZED (
    SELECT root_id, happy_deadline IS NULL AND rollback_deadline IS NULL
                    AND absolute_deadline IS NULL AS timeless
    FROM __S__.runs WHERE id = $1
),
checked AS MATERIALIZED (
    -- A run without deadlines whose tree nobody cancelled has nothing to give up for: one
    -- index probe instead of the check (see `GiveUpCheck`).
    SELECT CASE WHEN $26::bool IS NULL THEN true
                WHEN me.timeless
                     AND NOT EXISTS (SELECT 1 FROM __S__.cancellations k
                                     WHERE k.root_id = me.root_id) THEN true
                ELSE __S__.check_give_up(me.root_id, $1, $26::bool) END AS ok
    FROM me
),
run AS (
    UPDATE __S__.runs SET
        -- Cast: `status` and `pending_children` are domains (migration 11), and a bound
        -- parameter assigned to one would be typed as the domain, which the driver does not
        -- encode from a string or an integer.
        status = $2::text, step_index = $3, step_iteration = $4, instances = $5,
        pending_children = $6::int4, failed_children = 0,
        failure = coalesce($7::text::jsonb, failure),
        rollback_failure = coalesce($8::text::jsonb, rollback_failure),
        cfh_iteration = $9, rollback_cursor = $10, waited_instance = $11,
        rollback_seen = true,
        retries = 0, infra_failures = 0, last_error = NULL, poison = NULL,
        context = CASE WHEN $27::bool THEN $28::text ELSE context END,
        rollback_context = CASE WHEN $27::bool THEN NULL ELSE rollback_context END,
        -- `$24` not before a time, `$25` microseconds from now; a sleeping run still wakes
        -- for its deadlines (to give up).
        wake_at = least(
            CASE WHEN $24::timestamptz IS NOT NULL THEN greatest($24::timestamptz, clock_timestamp())
                 WHEN $25::int8 IS NOT NULL THEN clock_timestamp() + $25::int8 * interval '1 microsecond'
                 ELSE clock_timestamp() END,
            CASE WHEN $2 = 'active' THEN least(happy_deadline, absolute_deadline) END),
        release_pending = parent_id IS NOT NULL AND awaited
                          AND $2 IN ('committed', 'rolled_back', 'rollback_failed'),
        started_at = coalesce(started_at, clock_timestamp()),
        finished_at = CASE WHEN $2 IN ('committed', 'rolled_back', 'rollback_failed')
                           THEN clock_timestamp() END,
        updated_at = clock_timestamp(),
        -- A run written without a version is pinned to the one that drove its first step.
        version = coalesce(version, $29::text)
    WHERE id = $1 AND (SELECT ok FROM checked)
    RETURNING root_id, parent_id, message_id, handler, release_pending
),
instance AS (
    INSERT INTO __S__.step_instances (run_id, seq, step, iteration, cfh, kind, messages)
    SELECT $1, $13::int4, $14::int4, $15::int4, $16::int4, $17::text, $23::uuid[]
    WHERE $13::int4 IS NOT NULL
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, next_step,
                               failure, worker)
    SELECT run.root_id, $1, coalesce(e.message, run.message_id), e.event, run.handler, e.step,
           e.next_step, e.failure::jsonb, $12
    FROM run, unnest($18::text[], $19::text[], $20::int4[], $21::text[], $22::uuid[])
        WITH ORDINALITY AS e(event, step, next_step, failure, message, ord)
    ORDER BY e.ord
)
SELECT parent_id, release_pending FROM run";
}

impl Finish<'_> {
    /// The parameters' types, in order, for the `PREPARE` of [`Finish::simple_text`].
    const TYPES: &'static str = "uuid, text, int4, int4, int4, int4, text, text, int4, int4, \
        int4, text, int4, int4, int4, int4, text, text[], text[], int4[], text[], uuid[], \
        uuid[], timestamptz, int8, bool, bool, text, text";

    /// The transition as simple-query text: `prefix` (`RELEASE SAVEPOINT ...; `, so the run's
    /// row is updated outside the step's savepoint), then the statement prepared as `name`
    /// (prepared first unless `prepared`) with its parameters as literals. `None` when a
    /// parameter cannot travel inside query text (it holds U+0000): then it runs with bound
    /// parameters.
    pub(crate) fn simple_text(
        &self,
        sql: &Sql,
        name: &str,
        prepared: bool,
        prefix: &str,
    ) -> Option<String> {
        let int = |v: i32| i64::from(v);
        let opt = |v: Option<i32>| v.map(i64::from);
        let args = Literals::default()
            .uuid(&self.run)
            .text(self.status)
            .int(int(self.step_index))
            .int(int(self.step_iteration))
            .int(int(self.instances))
            .int(int(self.pending_children))
            .opt_text(self.failure.as_deref())
            .opt_text(self.rollback_failure.as_deref())
            .opt_int(opt(self.cfh_iteration))
            .opt_int(opt(self.rollback_cursor))
            .opt_int(opt(self.waited_instance))
            .text(self.worker)
            .opt_int(opt(self.instance_seq))
            .opt_int(opt(self.instance_step))
            .opt_int(opt(self.instance_iteration))
            .opt_int(opt(self.instance_cfh))
            .opt_text(self.instance_kind)
            .text_array(&self.event_kinds)
            .opt_text_array(&self.event_steps)
            .opt_int_array(&self.event_next_steps)
            .opt_text_array(&self.event_failures)
            .opt_uuid_array(&self.event_messages)
            .uuid_array(&self.messages)
            .opt_time(self.wake_at)
            .opt_int(self.wake_in_us)
            .opt_bool(self.check)
            .opt_bool(Some(self.write_context))
            .opt_text(self.context.as_deref())
            .opt_text(self.version)
            .done()?;
        let mut text = String::from(prefix);
        if !prepared {
            text.push_str(&format!(
                "PREPARE {name} ({}) AS {}; ",
                Finish::TYPES,
                sql.text(StmtId::Finish)
            ));
        }
        text.push_str(&format!("EXECUTE {name}({args})"));
        Some(text)
    }

    /// Whether every parameter can travel inside query text (none holds U+0000), so that
    /// [`Finish::simple_text`] gives text.
    pub(crate) fn sendable(&self) -> bool {
        let nul = |t: &str| t.contains('\0');
        let opt = |t: &Option<String>| t.as_deref().is_some_and(nul);
        ![&self.failure, &self.rollback_failure, &self.context]
            .into_iter()
            .any(opt)
            && !self.event_steps.iter().any(opt)
            && !self.event_failures.iter().any(opt)
            && ![self.worker, self.status].into_iter().any(nul)
            && !self.version.is_some_and(nul)
    }

    /// Decodes what [`Finish::simple_text`] returned.
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Applied> {
        let row = first_row(messages);
        let row = row.ok_or_else(|| self.gone())?;
        Ok(Applied {
            is_root: row.opt_uuid("parent_id")?.is_none(),
            release_pending: row.bool("release_pending")?,
        })
    }

    /// No row: the run does not exist (the check fails loudly instead of returning none).
    fn gone(&self) -> Error {
        Error::UnexpectedData(format!(
            "run {} is gone: its transition was not applied",
            self.run
        ))
    }
}

/// What persisting a transition revealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The run is a top-level run of its root.
    pub(crate) is_root: bool,
    /// The run finished and its parent must be told, with [`Release`], once this commits.
    pub(crate) release_pending: bool,
}

impl Statement for Finish<'_> {
    type Output = Applied;

    fn id(&self) -> StmtId {
        StmtId::Finish
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.run,
            &self.status,
            &self.step_index,
            &self.step_iteration,
            &self.instances,
            &self.pending_children,
            &self.failure,
            &self.rollback_failure,
            &self.cfh_iteration,
            &self.rollback_cursor,
            &self.waited_instance,
            &self.worker,
            &self.instance_seq,
            &self.instance_step,
            &self.instance_iteration,
            &self.instance_cfh,
            &self.instance_kind,
            &self.event_kinds,
            &self.event_steps,
            &self.event_next_steps,
            &self.event_failures,
            &self.event_messages,
            &self.messages,
            &self.wake_at,
            &self.wake_in_us,
            &self.check,
            &self.write_context,
            &self.context,
            &self.version,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Applied> {
        let row = rows.into_iter().next().ok_or_else(|| self.gone())?;
        let parent: Option<Uuid> = row.try_get("parent_id")?;
        Ok(Applied {
            is_root: parent.is_none(),
            release_pending: row.try_get("release_pending")?,
        })
    }
}
