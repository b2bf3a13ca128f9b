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
           r.wake_at
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
       c.step_iteration, c.instances, c.failed_children, c.wake_at <= clock.t AS due,
       greatest(0, ceil(extract(epoch FROM c.wake_at - clock.t) * 1000))::int8 AS wait_ms,
       m.payload::text AS payload
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
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[])
        WITH ORDINALITY AS e(id, topic, payload, scoped, ord)
),
msg AS (
    INSERT INTO __S__.messages (id, root_id, topic, payload, parent_run_id, parent_instance)
    SELECT e.id, CASE WHEN e.scoped THEN $5::uuid ELSE e.id END, e.topic, e.payload::jsonb,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END
    FROM e
),
child AS (
    INSERT INTO __S__.runs (id, root_id, parent_id, parent_instance, message_id, handler, topic)
    SELECT __S__.uuid_v7(), CASE WHEN e.scoped THEN $5::uuid ELSE e.id END,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END,
           e.id, h.handler, e.topic
    FROM e JOIN __S__.handlers h ON h.topic = e.topic
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
    SELECT pg_notify($11, w.handler) FROM woken w WHERE w.handler <> ALL($12::text[])
)
SELECT (SELECT count(*) FROM child WHERE parent_id IS NOT NULL)::int4 AS children,
       coalesce((SELECT array_agg(handler) FROM woken), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified";

/// Persists a transition of run `$1`: its new state and its history entries in order. A run
/// that reaches a terminal state and has a parent is marked `release_pending`; its parent's
/// bookkeeping follows in [`RELEASE`], after this transaction committed.
const FINISH: &str = "
WITH run AS (
    UPDATE __S__.runs SET
        status = $2, step_index = $3, step_iteration = $4, instances = $5,
        pending_children = $6, failed_children = 0,
        failure = coalesce($7::text::jsonb, failure),
        wake_at = clock_timestamp(),
        release_pending = parent_id IS NOT NULL
                          AND $2 IN ('committed', 'rolled_back', 'rollback_failed'),
        started_at = coalesce(started_at, clock_timestamp()),
        finished_at = CASE WHEN $2 IN ('committed', 'rolled_back', 'rollback_failed')
                           THEN clock_timestamp() END,
        updated_at = clock_timestamp()
    WHERE id = $1
    RETURNING root_id, parent_id, message_id, handler, release_pending
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, next_step,
                               failure, worker)
    SELECT run.root_id, $1, run.message_id, e.event, run.handler, e.step, e.next_step,
           e.failure::jsonb, $8
    FROM run, unnest($9::text[], $10::text[], $11::int4[], $12::text[])
        WITH ORDINALITY AS e(event, step, next_step, failure, ord)
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
    UPDATE __S__.runs SET release_pending = false
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
SELECT handler, status, failure::text AS failure
FROM __S__.runs WHERE message_id = $1 AND parent_id IS NULL
ORDER BY handler";

/// Every run of a root's tree, parents before children.
const TREE: &str = "
WITH RECURSIVE t AS (
    SELECT r.id, r.parent_id, r.handler, r.topic, r.status, r.step_index, r.pending_children,
           r.failure, r.created_at, 0 AS depth, ARRAY[r.created_at] AS path
    FROM __S__.runs r WHERE r.message_id = $1 AND r.parent_id IS NULL
    UNION ALL
    SELECT c.id, c.parent_id, c.handler, c.topic, c.status, c.step_index, c.pending_children,
           c.failure, c.created_at, t.depth + 1, t.path || c.created_at
    FROM __S__.runs c JOIN t ON c.parent_id = t.id
)
SELECT id, parent_id, handler, topic, status, step_index, pending_children, depth,
       failure::text AS failure
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
       h.kind
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
    pub(crate) release: String,
    pub(crate) unreleased: String,
    pub(crate) sweep: String,
    pub(crate) register: String,
    pub(crate) root_runs: String,
    pub(crate) tree: String,
    pub(crate) history: String,
    pub(crate) lock_external: String,
    pub(crate) message: String,
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
            release: s(RELEASE),
            unreleased: s(UNRELEASED),
            sweep: s(SWEEP),
            register: s(REGISTER),
            root_runs: s(ROOT_RUNS),
            tree: s(TREE),
            history: s(HISTORY),
            lock_external: s(LOCK_EXTERNAL),
            message: s(MESSAGE),
            channel: format!("{schema}_wake"),
        }
    }
}
