//! The happy path's statements: claiming a run, writing what its step emitted, persisting its
//! transition, telling a finished run's parent, and finding work.

use std::time::{Duration, SystemTime};

use postgres::types::ToSql;
use postgres::{Row, SimpleQueryMessage};
use uuid::Uuid;

use super::{
    Cols, ContextWrite, GiveUpCheck, Literals, Sql, Statement, StmtId, failure_col, failure_json,
    literal, millis_col, one, run_view, u32_col,
};
use crate::core::decide::Transition;
use crate::core::{RunView, Wake};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};
use crate::saga::Occurrence;

/// Claims the oldest runnable run of a handler.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    pub(crate) handler: &'a str,
    /// Who claims, for the `SEEN` history entry.
    pub(crate) worker: &'a str,
}

impl Claim<'_> {
    /// A run is runnable when it is not terminal and none of its latest step's children are
    /// unfinished; `runs_runnable` indexes exactly those rows, so the cost does not depend on
    /// how much finished work the table holds. Only a *due* run (`wake_at` passed) is locked,
    /// with `FOR UPDATE SKIP LOCKED`, so concurrent workers (in any process) take different
    /// runs and hold them until the step commits. A run that is not due yet is never locked
    /// here: a cancellation waking sleeping runs skips locked rows, and must find only runs
    /// in a step (whose end-of-step check catches it) locked. When nothing is due, the second
    /// branch says, without locking, how long until the earliest runnable run wakes, so the
    /// runtime knows when to try again without another query. The first claim of a run writes
    /// its `SEEN`.
    pub(crate) const SQL: &'static str = "
WITH clock AS (SELECT clock_timestamp() AS t),
c AS (
    SELECT r.id, r.root_id, r.message_id, r.topic, r.status, r.step_index,
           r.step_iteration, r.instances, r.failed_children, r.started_at IS NOT NULL AS seen,
           r.wake_at, r.cfh_iteration, r.rollback_cursor, r.waited_instance, r.rollback_seen,
           r.failure, r.happy_deadline, r.rollback_deadline, r.absolute_deadline,
           r.context, r.rollback_context, r.poison, r.retries, r.parent_id IS NULL AS top_level
    FROM __S__.runs r
    WHERE r.handler = $1 AND r.status IN ('active', 'rolling_back') AND r.pending_children = 0
      AND r.wake_at <= (SELECT t FROM clock)
    ORDER BY r.wake_at, r.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
seen AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, worker)
    SELECT c.root_id, c.id, c.message_id, 'SEEN', $1, $2
    FROM c
    WHERE NOT c.seen
),
later AS (
    SELECT greatest(0, ceil(extract(epoch FROM r.wake_at - clock.t) * 1000))::int8 AS wait_ms
    FROM __S__.runs r, clock
    WHERE NOT EXISTS (SELECT 1 FROM c)
      AND r.handler = $1 AND r.status IN ('active', 'rolling_back') AND r.pending_children = 0
      AND r.wake_at > clock.t
    ORDER BY r.wake_at
    LIMIT 1
)
SELECT c.id, c.root_id, c.message_id, c.topic, c.status, c.step_index,
       c.step_iteration, c.instances, c.failed_children, c.cfh_iteration, c.rollback_cursor,
       c.waited_instance, c.rollback_seen, c.failure::text AS failure,
       true AS due, 0::int8 AS wait_ms,
       m.payload::text AS payload, m.run_count, c.context, c.rollback_context,
       c.poison::text AS poison, c.retries, c.top_level, m.context AS launch_context,
       m.chain, m.schedule,
       (extract(epoch FROM m.scheduled_for) * 1000000)::int8 AS scheduled_for_us,
       s.source AS stop_source, s.reason AS stop_reason,
       -- Whether the run must give up (cancelled, a deadline passed). The guard keeps the
       -- common case (no deadlines, no cancellation in the tree) to one index probe.
       CASE WHEN c.happy_deadline IS NULL AND c.rollback_deadline IS NULL
                 AND c.absolute_deadline IS NULL
                 AND NOT EXISTS (SELECT 1 FROM __S__.cancellations k WHERE k.root_id = c.root_id)
            THEN NULL
            ELSE __S__.give_up_reason(c.root_id, c.id, c.status = 'rolling_back')::text
       END AS give_up
FROM c JOIN __S__.messages m ON m.id = c.message_id
    -- An occurrence of a stopped chain that has not started gives up.
    LEFT JOIN __S__.chain_stops s ON s.chain = m.chain AND NOT c.seen
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       false, later.wait_ms, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL
FROM later";
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// No runnable run.
    Nothing,
    /// No due run; the earliest runnable one wakes in this long.
    Later(Duration),
    /// A due run, now locked by the claiming transaction.
    Due(Box<ClaimedRun>),
}

/// A claimed run, as [`Claim`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimedRun {
    pub(crate) id: RunId,
    pub(crate) root_id: RootId,
    pub(crate) message_id: MessageId,
    pub(crate) topic: String,
    pub(crate) view: RunView,
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
    /// A failure the run's own data caused in the engine's statements: the run fails with it.
    pub(crate) poison: Option<Failure>,
    /// Retries of the run's current code so far (transient failures).
    pub(crate) retries: u32,
    /// The run is a top-level run of its root (not a child).
    pub(crate) top_level: bool,
    /// The context its message was launched with.
    pub(crate) launch_context: Option<String>,
    /// For an occurrence of a scheduled chain: which, and when it was due.
    pub(crate) occurrence: Option<Occurrence>,
    /// Its chain was stopped before it started: it gives up with this.
    pub(crate) chain_stop: Option<Failure>,
}

impl Statement for Claim<'_> {
    type Output = Claimed;

    fn id(&self) -> StmtId {
        StmtId::Claim
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handler, &self.worker]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Claimed> {
        rows.first().map_or(Ok(Claimed::Nothing), decode_claimed)
    }
}

impl Claim<'_> {
    /// Prepares the claim under `name` on the session (a prepared statement outlives the
    /// transaction it is made in), so that the simple-query protocol can execute it without
    /// planning it again: see [`Claim::simple_text`].
    pub(crate) fn prepare_text(sql: &Sql, name: &str) -> String {
        format!("PREPARE {name} (text, text) AS {}", sql.text(StmtId::Claim))
    }

    /// The claim as simple-query text: executes the statement prepared as `name` (preparing
    /// it first unless `prepared`), then takes the step's savepoint, after `prefix`
    /// (`BEGIN; `, or `COMMIT; BEGIN; `: one round trip ends a step and claims the next run).
    pub(crate) fn simple_text(
        &self,
        sql: &Sql,
        name: &str,
        prepared: bool,
        prefix: &str,
    ) -> String {
        let mut text = String::from(prefix);
        if !prepared {
            text.push_str(&Claim::prepare_text(sql, name));
            text.push_str("; ");
        }
        text.push_str(&format!(
            "EXECUTE {name}({}, {})",
            literal(self.handler),
            literal(self.worker)
        ));
        // The step's savepoint, right after the claim in the same round trip: the claim's row
        // lock predates it and survives a rollback to it.
        text.push_str("; ");
        text.push_str(super::Savepoint::SQL);
        text
    }

    /// Decodes what [`Claim::simple_text`] returned.
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Claimed> {
        let row = messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        row.as_ref().map_or(Ok(Claimed::Nothing), decode_claimed)
    }
}

/// The claim's one row, in either format.
fn decode_claimed(row: &impl Cols) -> Result<Claimed> {
    if !row.bool("due")? {
        return Ok(Claimed::Later(millis_col(row, "wait_ms")?));
    }
    Ok(Claimed::Due(Box::new(ClaimedRun {
        id: RunId::from_uuid(row.uuid("id")?),
        root_id: RootId::from_uuid(row.uuid("root_id")?),
        message_id: MessageId::from_uuid(row.uuid("message_id")?),
        topic: row.str("topic")?,
        view: run_view(row)?,
        payload: row.str("payload")?,
        failure: row.opt_str("failure")?,
        give_up: failure_col(row, "give_up")?,
        run_count: u32_col(row, "run_count")?,
        context: row.opt_str("context")?,
        rollback_context: row.opt_str("rollback_context")?,
        poison: failure_col(row, "poison")?,
        retries: u32_col(row, "retries")?,
        top_level: row.bool("top_level")?,
        launch_context: row.opt_str("launch_context")?,
        occurrence: occurrence(row)?,
        chain_stop: chain_stop(row)?,
    })))
}

/// The chain, schedule and time of a claimed occurrence, if it is one.
fn occurrence(row: &impl Cols) -> Result<Option<Occurrence>> {
    let chain = row.opt_str("chain")?;
    let schedule = row.opt_str("schedule")?;
    let at = row.opt_i64("scheduled_for_us")?.map(|us| {
        let since = Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            SystemTime::UNIX_EPOCH + since
        } else {
            SystemTime::UNIX_EPOCH - since
        }
    });
    Ok(match (chain, schedule, at) {
        (Some(chain), Some(schedule), Some(at)) => Some(Occurrence {
            chain,
            schedule,
            at,
        }),
        _ => None,
    })
}

/// Why a claimed occurrence gives up: its chain was stopped.
fn chain_stop(row: &impl Cols) -> Result<Option<Failure>> {
    let source = row.opt_str("stop_source")?;
    let reason = row.opt_str("stop_reason")?;
    Ok(source.zip(reason).map(|(source, reason)| {
        Failure::new("structured_cooperation::ChainStopped", reason, source)
    }))
}

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
        status = $2, step_index = $3, step_iteration = $4, instances = $5,
        pending_children = $6, failed_children = 0,
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
        updated_at = clock_timestamp()
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
        uuid[], timestamptz, int8, bool, bool, text";

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

    /// Decodes what [`Finish::simple_text`] returned.
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Applied> {
        let row = messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
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

/// Tells the parent of a finished run (whose transaction committed) that one more child
/// finished. Must run outside a transaction block.
#[derive(Debug)]
pub(crate) struct Release<'a> {
    pub(crate) run: Uuid,
    /// Handlers not to notify (the calling runtime wakes them itself).
    pub(crate) quiet: &'a [&'a str],
}

impl<'a> Release<'a> {
    pub(crate) fn new(run: RunId, quiet: &'a [&'a str]) -> Release<'a> {
        Release {
            run: run.as_uuid(),
            quiet,
        }
    }

    /// One fewer unfinished child (and one more failed one if it did not commit); at zero the
    /// parent is runnable again and its handler is notified unless it is in `$2`. The child's
    /// `release_pending` flag, cleared in the same statement, makes this happen exactly once.
    ///
    /// It runs as a single statement in its own transaction (autocommit) right after the
    /// child's commit, and asks for an asynchronous commit of that transaction
    /// (`set_config(..., true)` lasts until its end): siblings finishing together queue on
    /// their parent's row only for this statement, not through each other's commit flushes.
    /// Losing it in a crash loses nothing: the flag is still set and a sweep performs the
    /// release. (Any later synchronous commit, such as the parent's next step, flushes the WAL
    /// that contains it.)
    ///
    /// Lock order: the child's row, then its parent's. Every transaction that waits for a row
    /// lock holds only rows of descendants of the row it waits for, so none can deadlock.
    pub(crate) const SQL: &'static str = "
WITH async AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS setting),
child AS (
    UPDATE __S__.runs SET release_pending = false, awaited = false
    WHERE id = $1 AND release_pending
    RETURNING parent_id, status
),
parent AS (
    UPDATE __S__.runs p SET
        pending_children = p.pending_children - 1,
        failed_children = p.failed_children + (child.status <> 'committed')::int4,
        wake_at = CASE WHEN p.pending_children = 1 THEN clock_timestamp() ELSE p.wake_at END,
        updated_at = clock_timestamp()
    FROM child
    WHERE p.id = child.parent_id
    RETURNING p.handler, p.pending_children
),
woke AS (SELECT handler FROM parent WHERE pending_children = 0),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', handler) FROM woke WHERE handler <> ALL($2::text[])
)
SELECT (SELECT handler FROM woke) AS woken_parent, (SELECT count(*) FROM notified)::int4 AS notified,
       (SELECT setting FROM async) AS commit_mode";
}

impl Statement for Release<'_> {
    /// The parent's handler, if the parent became runnable.
    type Output = Option<String>;

    fn id(&self) -> StmtId {
        StmtId::Release
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run, &self.quiet]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<String>> {
        Ok(one(rows)?.try_get("woken_parent")?)
    }
}

/// Finished runs whose release never happened (a crash or a lost connection in between).
#[derive(Debug)]
pub(crate) struct Unreleased;

impl Unreleased {
    pub(crate) const SQL: &'static str = "
SELECT id FROM __S__.runs WHERE release_pending LIMIT 1000";
}

impl Statement for Unreleased {
    type Output = Vec<RunId>;

    fn id(&self) -> StmtId {
        StmtId::Unreleased
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<RunId>> {
        rows.iter()
            .map(|row| Ok(RunId::from_uuid(row.try_get("id")?)))
            .collect()
    }
}

/// For each of some handlers, whether it has a due run, or how long until its earliest
/// runnable run wakes.
#[derive(Debug)]
pub(crate) struct Sweep<'a> {
    pub(crate) handlers: &'a [&'a str],
}

impl Sweep<'_> {
    /// Handlers with nothing runnable are omitted; `i` is the 1-based position in `$1`.
    pub(crate) const SQL: &'static str = "
SELECT h.i::int8, w.wake_at <= clock_timestamp() AS due,
       greatest(0, ceil(extract(epoch FROM w.wake_at - clock_timestamp()) * 1000))::int8 AS wait_ms
FROM unnest($1::text[]) WITH ORDINALITY AS h(name, i)
CROSS JOIN LATERAL (
    SELECT r.wake_at FROM __S__.runs r
    WHERE r.handler = h.name AND r.status IN ('active', 'rolling_back')
      AND r.pending_children = 0
    ORDER BY r.wake_at
    LIMIT 1
) w";
}

/// What a sweep found for one handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SweepRow {
    /// Index into the swept handlers.
    pub(crate) handler: usize,
    /// `None` if it has a due run, else how long until its earliest one wakes.
    pub(crate) wait: Option<Duration>,
}

impl Statement for Sweep<'_> {
    type Output = Vec<SweepRow>;

    fn id(&self) -> StmtId {
        StmtId::Sweep
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handlers]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<SweepRow>> {
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get("i")?;
                let due: bool = row.try_get("due")?;
                let wait = millis_col(row, "wait_ms")?;
                Ok(SweepRow {
                    handler: usize::try_from(position - 1).unwrap_or(0),
                    wait: (!due).then_some(wait),
                })
            })
            .collect()
    }
}
