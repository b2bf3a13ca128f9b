//! Every statement the engine runs, in one place.
//!
//! Templates name tables as `__S__.table`; [`Sql::new`] substitutes the (validated) schema once
//! at start-up, so the runtimes prepare plain static text and bind every value as a parameter.

/// Claims the oldest runnable run of a handler (`$1`), writing its `SEEN` the first time.
///
/// A run is runnable when it is not terminal and none of its latest step's children are
/// unfinished; `runs_runnable` indexes exactly those rows, so the cost does not depend on how
/// much finished work the table holds. The earliest row is returned even when its `wake_at` is
/// still in the future (`due` is then false and the caller rolls back): that tells the runtime
/// when to try again without a second query. `FOR UPDATE SKIP LOCKED` makes concurrent
/// workers (in any process) take different runs; the lock is held until the step commits.
const CLAIM: &str = "
WITH clock AS (SELECT clock_timestamp() AS t),
c AS (
    SELECT r.id, r.root_id, r.message_id, r.topic, r.status, r.step_index,
           r.step_iteration, r.instances, r.failed_children, r.started_at IS NOT NULL AS seen,
           r.wake_at, r.cfh_iteration, r.rollback_cursor, r.waited_instance, r.rollback_seen,
           r.failure, r.happy_deadline, r.rollback_deadline, r.absolute_deadline,
           r.context, r.rollback_context
    FROM __S__.runs r
    WHERE r.handler = $1 AND r.status IN ('active', 'rolling_back') AND r.pending_children = 0
    ORDER BY r.wake_at, r.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
seen AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, worker)
    SELECT c.root_id, c.id, c.message_id, 'SEEN', $1, $2
    FROM c, clock
    WHERE NOT c.seen AND c.wake_at <= clock.t
)
SELECT c.id, c.root_id, c.message_id, c.topic, c.status, c.step_index,
       c.step_iteration, c.instances, c.failed_children, c.cfh_iteration, c.rollback_cursor,
       c.waited_instance, c.rollback_seen, c.failure::text AS failure,
       c.wake_at <= clock.t AS due,
       greatest(0, ceil(extract(epoch FROM c.wake_at - clock.t) * 1000))::int8 AS wait_ms,
       m.payload::text AS payload, m.run_count, c.context, c.rollback_context,
       -- Whether the run must give up (cancelled, a deadline passed). The guard keeps the
       -- common case (no deadlines, no cancellation in the tree) to one index probe.
       CASE WHEN c.happy_deadline IS NULL AND c.rollback_deadline IS NULL
                 AND c.absolute_deadline IS NULL
                 AND NOT EXISTS (SELECT 1 FROM __S__.cancellations k WHERE k.root_id = c.root_id)
            THEN NULL
            ELSE __S__.give_up_reason(c.root_id, c.id, c.status = 'rolling_back')::text
       END AS give_up
FROM c CROSS JOIN clock JOIN __S__.messages m ON m.id = c.message_id";

/// Writes emitted messages, one run per registered handler of each topic, and `EMITTED`
/// history; notifies the handlers that got runs. Used for child emissions (`scoped`), launches
/// on the global scope from a step, and launches from outside (`$5`..`$9` NULL).
///
/// Returns how many child runs were created for the emitting run (`$6`) and which handlers got
/// runs. The count comes from the same statement that inserts the runs, so a handler
/// registering concurrently can never make it disagree with the rows. Handlers in `$12` are
/// not notified: the calling runtime serves them and wakes them itself.
const EMIT: &str = "
WITH checked AS MATERIALIZED (
    -- After user code, before anything it produced is written: see check_give_up.
    SELECT CASE WHEN $14::bool IS NULL THEN true
                ELSE __S__.check_give_up($5::uuid, $6::uuid, $14::bool) END AS ok
),
e AS (
    SELECT e.* FROM checked,
        unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $12::text[], $13::int4[],
               $16::text[])
        WITH ORDINALITY AS e(id, topic, payload, scoped, deadlines, run_count, context, ord)
    WHERE checked.ok
),
ed AS MATERIALIZED (
    -- Deadlines: a child inherits its emitter's, the earliest of each kind wins (see
    -- child_deadlines). Computed only when the emission gives some or the emitter has some.
    SELECT e.id, d.happy, d.rollback, d.absolute, d.trace
    FROM e LEFT JOIN LATERAL (
        SELECT * FROM __S__.child_deadlines(CASE WHEN e.scoped THEN $6::uuid END,
                                            e.deadlines::jsonb)
        WHERE e.deadlines IS NOT NULL
           OR (e.scoped AND EXISTS (SELECT 1 FROM __S__.runs r
                                    WHERE r.id = $6::uuid AND r.deadline_trace IS NOT NULL))
    ) d ON true
),
msg AS (
    INSERT INTO __S__.messages (id, root_id, topic, payload, parent_run_id, parent_instance,
                                run_count)
    SELECT e.id, CASE WHEN e.scoped THEN $5::uuid ELSE e.id END, e.topic, e.payload::jsonb,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END,
           coalesce(e.run_count, 0)
    FROM e
),
child AS (
    INSERT INTO __S__.runs (id, root_id, parent_id, parent_instance, message_id, handler, topic,
                            happy_deadline, rollback_deadline, absolute_deadline, deadline_trace,
                            wake_at, context)
    SELECT __S__.uuid_v7(), CASE WHEN e.scoped THEN $5::uuid ELSE e.id END,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END,
           e.id, h.handler, e.topic, d.happy, d.rollback, d.absolute, d.trace, clock_timestamp(),
           e.context
    FROM e JOIN ed d ON d.id = e.id JOIN __S__.handlers h ON h.topic = e.topic
    RETURNING parent_id, handler
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, worker)
    SELECT CASE WHEN e.scoped THEN $5::uuid ELSE e.id END, CASE WHEN e.scoped THEN $6::uuid END,
           e.id, 'EMITTED', CASE WHEN e.scoped THEN $8::text END,
           CASE WHEN e.scoped THEN $9::text END, $10::text
    FROM e
    ORDER BY e.ord
),
woken AS (SELECT DISTINCT handler FROM child),
notified AS MATERIALIZED (
    SELECT pg_notify($11, w.handler) FROM woken w WHERE w.handler <> ALL($15::text[])
)
SELECT (SELECT count(*) FROM child WHERE parent_id IS NOT NULL)::int4 AS children,
       coalesce((SELECT array_agg(handler) FROM woken), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified";

/// Persists a transition of run `$1`: its new state, the step instance it executed (if any),
/// and its history entries in order. A run that reaches a terminal state while its parent
/// counts it among its unfinished children is marked `release_pending`; the parent's
/// bookkeeping follows in [`RELEASE`], after this transaction committed.
const FINISH: &str = "
WITH checked AS MATERIALIZED (
    -- With `$26` set, the post-step check (see check_give_up) before anything is written.
    SELECT CASE WHEN $26::bool IS NULL THEN true
                ELSE __S__.check_give_up((SELECT root_id FROM __S__.runs WHERE id = $1), $1,
                                         $26::bool) END AS ok
),
run AS (
    UPDATE __S__.runs SET
        status = $2, step_index = $3, step_iteration = $4, instances = $5,
        pending_children = $6, failed_children = 0,
        failure = coalesce($7::text::jsonb, failure),
        rollback_failure = coalesce($8::text::jsonb, rollback_failure),
        cfh_iteration = $9, rollback_cursor = $10, waited_instance = $11,
        rollback_seen = true,
        -- With `$27`, the context becomes `$28` (which includes any pending rollback context).
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

/// Tells the parent of finished run `$1` that one more child finished: one fewer unfinished
/// child (and one more failed one if it did not commit); at zero the parent is runnable again
/// and its handler is notified unless it is in `$3`. The child's `release_pending` flag,
/// cleared in the same statement, makes this happen exactly once.
///
/// It runs as a single statement in its own transaction (autocommit) right after the child's
/// commit, and asks for an asynchronous commit of that transaction (`set_config(...,
/// true)` lasts until its end): siblings finishing together queue on their parent's row only for this statement,
/// not through each other's commit flushes. Losing it in a crash loses nothing: the flag is
/// still set and a sweep performs the release. (Any later synchronous commit, such as the
/// parent's next step, flushes the WAL that contains it.)
///
/// Lock order: the child's row, then its parent's. Every transaction that waits for a row lock
/// holds only rows of descendants of the row it waits for, so none can deadlock.
const RELEASE: &str = "
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
    SELECT pg_notify($2, handler) FROM woke WHERE handler <> ALL($3::text[])
)
SELECT (SELECT handler FROM woke) AS woken_parent, (SELECT count(*) FROM notified)::int4 AS notified,
       (SELECT setting FROM async) AS commit_mode";

/// Finished runs whose release never happened (a crash or a lost connection in between).
const UNRELEASED: &str = "
SELECT id FROM __S__.runs WHERE release_pending LIMIT 1000";

/// The executed step instances of run `$1`, in order.
const INSTANCES: &str = "
SELECT seq, step, iteration, cfh, kind FROM __S__.step_instances WHERE run_id = $1 ORDER BY seq";

/// For each step instance of run `$1` that emitted anything: its messages, and how its child
/// runs ended (committed count, failures of those that rolled back or failed to).
const CHILDREN: &str = "
WITH c AS (
    SELECT parent_instance AS seq,
           count(*) FILTER (WHERE status = 'committed')::int4 AS committed,
           jsonb_agg(failure) FILTER (WHERE status = 'rolled_back' AND failure IS NOT NULL)
               AS rolled_back,
           jsonb_agg(coalesce(rollback_failure, failure))
               FILTER (WHERE status = 'rollback_failed'
                       AND coalesce(rollback_failure, failure) IS NOT NULL) AS rollback_failed
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
       coalesce(c.rollback_failed, '[]')::text AS rollback_failed
FROM c FULL JOIN m ON c.seq = m.seq";

/// Asks the committed children of step instance `$2` of run `$1` to roll back with cause
/// `$3` and the parent's context `$6`; they become runnable, and their handlers are notified
/// unless in `$5`.
///
/// The parent holds its own row and takes its children's with `NOWAIT`: a parent never waits
/// for a descendant's lock (they are finished runs, which nobody else holds; if an operator's
/// request does for an instant, this attempt is retried).
const REQUEST_ROLLBACK: &str = "
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
        rollback_context = $6::text, updated_at = clock_timestamp()
    FROM target WHERE r.id = target.id
    RETURNING r.handler
),
woken AS (SELECT DISTINCT handler FROM marked),
notified AS MATERIALIZED (
    SELECT pg_notify($4, handler) FROM woken WHERE handler <> ALL($5::text[])
)
SELECT (SELECT count(*) FROM marked)::int4 AS requested,
       coalesce((SELECT array_agg(handler) FROM woken), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified";

/// Locks the top-level runs of root `$1` for an operator's rollback.
const LOCK_ROOT_RUNS: &str = "
SELECT id, handler, status, message_id FROM __S__.runs
WHERE message_id = $1 AND parent_id IS NULL
ORDER BY id
FOR UPDATE NOWAIT";

/// Locks run `$1` for an operator's rollback.
const LOCK_RUN: &str = "
SELECT id, handler, status, message_id FROM __S__.runs WHERE id = $1 FOR UPDATE NOWAIT";

/// Unfinished runs in the subtrees of runs `$1` or among their ancestors (at most 5).
const BUSY_AROUND: &str = "
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

/// Starts an operator's rollback of the committed runs `$1` with cause `$2`, recording one
/// `ROLLBACK_EMITTED` per message; notifies their handlers.
const REQUEST_OPERATOR_ROLLBACK: &str = "
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
notified AS MATERIALIZED (SELECT pg_notify($3, handler) FROM (SELECT DISTINCT handler FROM marked) h)
SELECT (SELECT count(*) FROM marked)::int4 AS marked, (SELECT count(*) FROM notified)::int4";

/// The runs of a cancellation's scope still on their happy path: the top-level runs of root
/// `$1` (when `$2` is NULL) or run `$2`, and everything below them.
const CANCEL_SCOPE: &str = "
WITH RECURSIVE sub AS (
    SELECT id, status FROM __S__.runs
    WHERE ($2::uuid IS NULL AND message_id = $1 AND parent_id IS NULL) OR id = $2::uuid
    UNION ALL
    SELECT c.id, c.status FROM __S__.runs c JOIN sub ON c.parent_id = sub.id
)
SELECT id FROM sub WHERE status = 'active'";

/// Records a cancellation of root `$1` (or of run `$2` and its subtree) with failure `$3`
/// (history on message `$4`), wakes the sleeping runs among `$5` so they give up now, and
/// notifies the handlers of those that can run. The caller holds the root's advisory lock.
const RECORD_CANCEL: &str = "
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
    SELECT pg_notify($6, handler) FROM (
        SELECT DISTINCT handler FROM __S__.runs
        WHERE id = ANY($5) AND status = 'active' AND pending_children = 0) x
)
SELECT (SELECT count(*) FROM woken)::int4 AS woken, (SELECT count(*) FROM notified)::int4";

/// The root and message of run `$1`.
const RUN_ORIGIN: &str = "
SELECT root_id, message_id FROM __S__.runs WHERE id = $1";

/// For each handler in `$1` (1-based position returned), whether it has a due run, or how long
/// until its earliest runnable run wakes. Handlers with nothing runnable are omitted.
const SWEEP: &str = "
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

/// Adds (topic, handler) pairs to the durable topology.
const REGISTER: &str = "
INSERT INTO __S__.handlers (topic, handler, kind)
SELECT t.topic, t.handler, $3 FROM unnest($1::text[], $2::text[]) AS t(topic, handler)
ON CONFLICT (topic, handler) DO UPDATE SET kind = excluded.kind, last_started_at = clock_timestamp()";

/// The top-level runs of a root (one per handler of the root message).
const ROOT_RUNS: &str = "
SELECT handler, status, failure::text AS failure, rollback_failure::text AS rollback_failure
FROM __S__.runs WHERE message_id = $1 AND parent_id IS NULL
ORDER BY handler";

/// Every run of a root's tree, parents before children.
const TREE: &str = "
WITH RECURSIVE t AS (
    SELECT r.id, r.parent_id, r.handler, r.topic, r.status, r.step_index, r.pending_children,
           r.failure, r.rollback_failure, r.context, r.created_at, 0 AS depth,
           ARRAY[r.created_at] AS path
    FROM __S__.runs r WHERE r.message_id = $1 AND r.parent_id IS NULL
    UNION ALL
    SELECT c.id, c.parent_id, c.handler, c.topic, c.status, c.step_index, c.pending_children,
           c.failure, c.rollback_failure, c.context, c.created_at, t.depth + 1,
           t.path || c.created_at
    FROM __S__.runs c JOIN t ON c.parent_id = t.id
)
SELECT id, parent_id, handler, topic, status, step_index, pending_children, depth,
       failure::text AS failure, rollback_failure::text AS rollback_failure, context
FROM t ORDER BY path, handler";

/// A root's history in order.
const HISTORY: &str = "
SELECT seq, at, event, handler, step, run_id, message_id, next_step, failure::text AS failure
FROM __S__.history WHERE root_id = $1 ORDER BY seq";

/// One message.
const MESSAGE: &str = "
SELECT id, root_id, topic, payload::text AS payload, created_at
FROM __S__.messages WHERE id = $1";

/// Locks the run of handler `$2` for message `$1` for an out-of-band completion.
const LOCK_EXTERNAL: &str = "
SELECT r.id, r.root_id, r.status, r.step_index, r.step_iteration, r.instances,
       r.failed_children, r.pending_children, r.started_at IS NOT NULL AS seen,
       r.cfh_iteration, r.rollback_cursor, r.waited_instance, r.rollback_seen, h.kind
FROM __S__.runs r
LEFT JOIN __S__.handlers h ON h.topic = r.topic AND h.handler = r.handler
WHERE r.message_id = $1 AND r.handler = $2
FOR UPDATE OF r";

/// The statements with the schema filled in.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) claim: String,
    pub(crate) emit: String,
    pub(crate) finish: String,
    pub(crate) instances: String,
    pub(crate) children: String,
    pub(crate) request_rollback: String,
    pub(crate) lock_root_runs: String,
    pub(crate) lock_run: String,
    pub(crate) busy_around: String,
    pub(crate) request_operator_rollback: String,
    pub(crate) release: String,
    pub(crate) unreleased: String,
    pub(crate) cancel_scope: String,
    pub(crate) record_cancel: String,
    pub(crate) run_origin: String,
    pub(crate) sweep: String,
    pub(crate) register: String,
    pub(crate) root_runs: String,
    pub(crate) tree: String,
    pub(crate) history: String,
    pub(crate) lock_external: String,
    pub(crate) message: String,
    /// Why a run must give up now (see the migration's `give_up_reason`), for step code.
    pub(crate) give_up: std::sync::Arc<str>,
    /// The LISTEN/NOTIFY channel that wakes handlers; payload = handler name.
    pub(crate) channel: String,
}

impl Sql {
    /// `schema` must already be validated as a plain identifier.
    pub(crate) fn new(schema: &str) -> Sql {
        let s = |template: &str| template.replace("__S__", schema);
        Sql {
            claim: s(CLAIM),
            emit: s(EMIT),
            finish: s(FINISH),
            instances: s(INSTANCES),
            children: s(CHILDREN),
            request_rollback: s(REQUEST_ROLLBACK),
            lock_root_runs: s(LOCK_ROOT_RUNS),
            lock_run: s(LOCK_RUN),
            busy_around: s(BUSY_AROUND),
            request_operator_rollback: s(REQUEST_OPERATOR_ROLLBACK),
            release: s(RELEASE),
            unreleased: s(UNRELEASED),
            cancel_scope: s(CANCEL_SCOPE),
            record_cancel: s(RECORD_CANCEL),
            run_origin: s(RUN_ORIGIN),
            sweep: s(SWEEP),
            register: s(REGISTER),
            root_runs: s(ROOT_RUNS),
            tree: s(TREE),
            history: s(HISTORY),
            lock_external: s(LOCK_EXTERNAL),
            message: s(MESSAGE),
            give_up: s("SELECT __S__.give_up_reason($1, $2, $3)::text").into(),
            channel: format!("{schema}_wake"),
        }
    }
}
