-- structured-cooperation schema, version 2: the rollback path.

-- Every executed step instance of a run, in order: the rollback plan is built from these.
CREATE TABLE step_instances (
    run_id     uuid    NOT NULL,
    seq        integer NOT NULL,
    -- Index of the step (for compensations: of the step being compensated).
    step       integer NOT NULL,
    -- Consecutive earlier executions of that step (what its closure saw as its iteration).
    iteration  integer NOT NULL,
    -- For invocations of handle_child_failures: which one (0, 1, ...).
    cfh        integer,
    kind       text    NOT NULL CHECK (kind IN ('step', 'child_failures', 'compensation')),
    -- The child messages it emitted (one ROLLBACK_EMITTED each when it is undone). Kept here,
    -- where the row is written anyway, rather than in an index over all messages.
    messages   uuid[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);

ALTER TABLE runs
    -- Invocations of handle_child_failures for the current step (NULL: none yet).
    ADD COLUMN cfh_iteration     integer,
    -- Position in the rollback plan of the next rollback sub-step (NULL on the happy path).
    ADD COLUMN rollback_cursor   integer,
    -- The step instance whose children the run is waiting for.
    ADD COLUMN waited_instance   integer,
    -- False while a requested rollback (by a parent or an operator) has not written its
    -- ROLLING_BACK yet; the run's first rollback claim writes it.
    ADD COLUMN rollback_seen     boolean NOT NULL DEFAULT true,
    -- The parent counts this run among its unfinished children: set when the run is created and
    -- when its parent asks it to roll back, cleared by its release. An operator's rollback of
    -- a subtree leaves it false, so the (finished) parent is not touched.
    ADD COLUMN awaited           boolean NOT NULL DEFAULT true,
    -- Why the rollback failed (the `failure` column keeps why the rollback started).
    ADD COLUMN rollback_failure  jsonb;
