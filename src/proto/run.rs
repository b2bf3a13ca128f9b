//! The happy path's statements: claiming a run, telling a finished run's parent, and finding
//! work (its transition is persisted by `finish.rs`).

use std::time::{Duration, SystemTime};

use postgres::types::ToSql;
use postgres::{Row, SimpleQueryMessage};
use uuid::Uuid;

use super::{
    Cols, Sql, Statement, StmtId, failure_col, first_row, literal, millis_col, one, run_view,
    u32_col,
};
use crate::core::RunView;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};
use crate::saga::Occurrence;

/// The claim's text, for one run ([`Claim::SQL`]) or for a batch's several
/// (`ClaimMany::SQL`): how many it locks, and for several, which one's `SEEN` it writes (the
/// first's: the others' are written when their steps start, see `ClaimMany`), which are
/// owed one, and in what order they come back.
macro_rules! claim_sql {
    ($limit:literal, $first:literal, $seen_only:literal, $owed:literal, $owed_null:literal,
     $order:literal) => {
        concat!("
WITH clock AS (SELECT clock_timestamp() AS t),
c AS (
    SELECT r.id, r.root_id, r.message_id, r.topic, r.status, r.step_index,
           r.step_iteration, r.instances, r.failed_children, r.started_at IS NOT NULL AS seen,
           r.wake_at, r.cfh_iteration, r.rollback_cursor, r.waited_instance, r.rollback_seen,
           r.failure, r.happy_deadline, r.rollback_deadline, r.absolute_deadline,
           r.context, r.rollback_context, r.poison, r.retries, r.parent_id IS NULL AS top_level,
           r.version
    FROM __S__.runs r
    WHERE r.handler = $1 AND r.status IN ('active', 'rolling_back') AND r.pending_children = 0
      AND r.wake_at <= (SELECT t FROM clock)
      AND (r.version IS NULL OR r.version = ANY (string_to_array($3, ',')))
    ORDER BY r.wake_at, r.id
    LIMIT ", $limit, "
    FOR UPDATE SKIP LOCKED
),", $first, "
seen AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, worker)
    SELECT c.root_id, c.id, c.message_id, 'SEEN', $1, $2
    FROM c
    WHERE NOT c.seen", $seen_only, "
),
later AS (
    SELECT greatest(0, ceil(extract(epoch FROM r.wake_at - clock.t) * 1000))::int8 AS wait_ms
    FROM __S__.runs r, clock
    WHERE NOT EXISTS (SELECT 1 FROM c)
      AND r.handler = $1 AND r.status IN ('active', 'rolling_back') AND r.pending_children = 0
      AND r.wake_at > clock.t
      AND (r.version IS NULL OR r.version = ANY (string_to_array($3, ',')))
    ORDER BY r.wake_at
    LIMIT 1
)
(SELECT c.id, c.root_id, c.message_id, c.topic, c.status, c.step_index,
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
       END AS give_up,
       -- A run without a version (written before any runtime registered its handler, or
       -- before versions existed) is driven by the claimer's newest version, and pinned to it
       -- by the transition that ends its step (see `Finish`): one shape drives it from then
       -- on. (Not updated here: an UPDATE in the claim costs every claim its setup.)
       coalesce(c.version, nullif(split_part($3, ',', 1), '')) AS version,
       -- The claiming transaction's id (its row lock gave it one): after an error in a
       -- round trip that also commits, it tells whether the commit happened.
       pg_current_xact_id()::text AS xact", $owed, "
FROM c JOIN __S__.messages m ON m.id = c.message_id
    -- An occurrence of a stopped chain that has not started gives up.
    LEFT JOIN __S__.chain_stops s ON s.chain = m.chain AND NOT c.seen", $order, ")
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       false, later.wait_ms, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL", $owed_null, "
FROM later")
    };
}
pub(super) use claim_sql;

/// Claims the oldest runnable run of a handler.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    pub(crate) handler: &'a str,
    /// Who claims, for the `SEEN` history entry.
    pub(crate) worker: &'a str,
    /// The saga versions the claimer serves, comma-separated: only their runs are claimed
    /// (and runs from before versions existed, which have none).
    pub(crate) versions: &'a str,
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
    /// its `SEEN`. Runs of saga versions the claimer does not serve are neither claimed nor
    /// waited for: they wait for a runtime that serves them.
    pub(crate) const SQL: &'static str = claim_sql!("1", "", "", "", "", "");
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
    /// The saga version that wrote the run (`None`: from before versions existed).
    pub(crate) version: Option<String>,
    /// The id of the transaction that claimed it.
    pub(crate) xact: Option<u64>,
}

impl Statement for Claim<'_> {
    type Output = Claimed;

    fn id(&self) -> StmtId {
        StmtId::Claim
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handler, &self.worker, &self.versions]
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
        format!(
            "PREPARE {name} (text, text, text) AS {}",
            sql.text(StmtId::Claim)
        )
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
            "EXECUTE {name}({}, {}, {})",
            literal(self.handler),
            literal(self.worker),
            literal(self.versions)
        ));
        // The step's savepoint, right after the claim in the same round trip: the claim's row
        // lock predates it and survives a rollback to it.
        text.push_str("; ");
        text.push_str(super::Savepoint::SQL);
        text
    }

    /// Decodes what [`Claim::simple_text`] returned.
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Claimed> {
        let row = first_row(messages);
        row.as_ref().map_or(Ok(Claimed::Nothing), decode_claimed)
    }
}

/// The claim's one row, in either format.
pub(super) fn decode_claimed(row: &impl Cols) -> Result<Claimed> {
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
        version: row.opt_str("version")?,
        xact: row.opt_str("xact")?.and_then(|x| x.parse().ok()),
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

    /// Decodes the release's result in the simple-query format (see `Conclude`).
    pub(crate) fn decode_simple(
        &self,
        messages: Vec<SimpleQueryMessage>,
    ) -> Result<Option<String>> {
        let row = first_row(messages);
        let row = row.ok_or_else(|| {
            Error::UnexpectedData("the release of a parent returned no row".into())
        })?;
        row.opt_str("woken_parent")
    }
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
    /// Per handler, the versions served (comma-separated): runs of others are not its work.
    pub(crate) served: &'a [&'a str],
}

impl Sweep<'_> {
    /// Handlers with nothing runnable are omitted; `i` is the 1-based position in `$1`.
    pub(crate) const SQL: &'static str = "
SELECT h.i::int8, w.wake_at <= clock_timestamp() AS due,
       greatest(0, ceil(extract(epoch FROM w.wake_at - clock_timestamp()) * 1000))::int8 AS wait_ms
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS h(name, served, i)
CROSS JOIN LATERAL (
    SELECT r.wake_at FROM __S__.runs r
    WHERE r.handler = h.name AND r.status IN ('active', 'rolling_back')
      AND r.pending_children = 0
      AND (r.version IS NULL OR r.version = ANY (string_to_array(h.served, ',')))
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
        vec![&self.handlers, &self.served]
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
