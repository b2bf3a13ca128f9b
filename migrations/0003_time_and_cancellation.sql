-- structured-cooperation schema, version 3: deadlines, cancellation and periodic runs.

ALTER TABLE runs
    -- Effective deadlines (the earliest of the run's own and its parent's); compared with the
    -- database clock.
    ADD COLUMN happy_deadline    timestamptz,
    ADD COLUMN rollback_deadline timestamptz,
    ADD COLUMN absolute_deadline timestamptz,
    -- Every deadline that applied to the run or its ancestors: [{kind, at, source}, ...].
    ADD COLUMN deadline_trace    jsonb;

ALTER TABLE messages
    -- For periodic sagas: how many runs of the chain came before this one.
    ADD COLUMN run_count integer NOT NULL DEFAULT 0;

-- (The functions below resolve table names in this schema whatever the caller's search_path:
-- `SET search_path FROM CURRENT` captures the migrator's setting.)

-- Cancellation requests: a whole root (run_id NULL) or one run and its subtree.
CREATE TABLE cancellations (
    id         bigserial   PRIMARY KEY,
    root_id    uuid        NOT NULL,
    run_id     uuid,
    failure    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX cancellations_root ON cancellations (root_id);

-- The deadlines of a run created by an emission: the emitter's (`emitter` NULL for a new root)
-- combined with the ones given to the emission (`given`: [{kind, at_us | in_us, source}]), the
-- earliest of each kind winning, plus the trace of all of them. Durations are measured with
-- the database clock. A function rather than part of the emitting statement, so that its plan
-- is cached per session and the statement stays cheap to plan; it is only called for
-- emissions that have deadlines.
CREATE FUNCTION child_deadlines(emitter uuid, given jsonb,
                                OUT happy timestamptz, OUT rollback timestamptz,
                                OUT absolute timestamptz, OUT trace jsonb)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    g record;
BEGIN
    IF emitter IS NOT NULL THEN
        SELECT r.happy_deadline, r.rollback_deadline, r.absolute_deadline, r.deadline_trace
          INTO happy, rollback, absolute, trace
          FROM runs r WHERE r.id = emitter;
    END IF;
    FOR g IN
        SELECT d.kind, d.source,
               coalesce(to_timestamp(d.at_us / 1e6),
                        clock_timestamp() + d.in_us * interval '1 microsecond') AS at
        FROM jsonb_to_recordset(coalesce(given, '[]'))
            AS d(kind text, at_us int8, in_us int8, source text)
    LOOP
        IF g.kind = 'happy_path' THEN
            happy := least(happy, g.at);
        ELSIF g.kind = 'rollback' THEN
            rollback := least(rollback, g.at);
        ELSIF g.kind = 'absolute' THEN
            absolute := least(absolute, g.at);
        END IF;
        trace := coalesce(trace, '[]')
                 || jsonb_build_array(jsonb_build_object('kind', g.kind, 'at', g.at,
                                                         'source', g.source));
    END LOOP;
END $$;

-- Why run `run` of root `root` must give up now, as a failure (NULL if it need not): a
-- cancellation of the run or an ancestor (happy path only), a missed happy-path or rollback
-- deadline (by path), or a missed absolute deadline (both paths).
CREATE FUNCTION give_up_reason(root uuid, run uuid, rolling_back boolean)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
DECLARE
    r      record;
    found  jsonb;
    now_ts timestamptz := clock_timestamp();
BEGIN
    IF NOT rolling_back AND EXISTS (SELECT 1 FROM cancellations k WHERE k.root_id = root) THEN
        WITH RECURSIVE chain AS (
            SELECT id, parent_id FROM runs WHERE id = run
            UNION ALL
            SELECT p.id, p.parent_id FROM runs p JOIN chain ON p.id = chain.parent_id
        )
        SELECT k.failure INTO found FROM cancellations k
        WHERE k.root_id = root AND (k.run_id IS NULL OR k.run_id IN (SELECT id FROM chain))
        ORDER BY k.id LIMIT 1;
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END IF;
    SELECT happy_deadline, rollback_deadline, absolute_deadline, deadline_trace, handler
      INTO r FROM runs WHERE id = run;
    IF NOT rolling_back AND r.happy_deadline < now_ts THEN
        RETURN missed_deadline('happy_path', r.happy_deadline, r.deadline_trace);
    ELSIF rolling_back AND r.rollback_deadline < now_ts THEN
        RETURN missed_deadline('rollback', r.rollback_deadline, r.deadline_trace);
    ELSIF r.absolute_deadline < now_ts THEN
        RETURN missed_deadline('absolute', r.absolute_deadline, r.deadline_trace);
    END IF;
    RETURN NULL;
END $$;

-- The failure for a missed deadline, naming it, its source and the whole trace.
CREATE FUNCTION missed_deadline(kind text, at timestamptz, trace jsonb)
RETURNS jsonb LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT jsonb_build_object(
        'type', 'structured_cooperation::MissedDeadline',
        'source', coalesce(src.source, 'unknown'),
        'message', format('missed the %s deadline %s set by %s; deadline trace: %s',
                          replace(kind, '_', ' '), at, coalesce(src.source, 'unknown'),
                          coalesce(trace, '[]'::jsonb)))
    FROM (SELECT (SELECT e->>'source' FROM jsonb_array_elements(coalesce(trace, '[]')) e
                  WHERE e->>'kind' = kind AND (e->>'at')::timestamptz = at
                  LIMIT 1) AS source) src
$$;

-- The check after a step's user code, inside its transaction: holds the root's advisory lock
-- in shared mode until commit (a cancellation takes it exclusively, so no step can commit after
-- a cancellation was recorded without having seen it), and fails the statement with SQLSTATE
-- SC001 if the run must give up.
CREATE FUNCTION check_give_up(root uuid, run uuid, rolling_back boolean)
RETURNS boolean LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    reason jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended(root::text, 1309));
    reason := give_up_reason(root, run, rolling_back);
    IF reason IS NOT NULL THEN
        RAISE EXCEPTION '%', reason::text USING ERRCODE = 'SC001';
    END IF;
    RETURN true;
END $$;
