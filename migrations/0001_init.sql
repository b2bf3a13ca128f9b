-- structured-cooperation schema, version 1.
-- Applied by src/migrate.rs inside one transaction, under an advisory lock, with
-- search_path set to the target schema (so the names below are unqualified).

-- A time-ordered UUID (version 7): 48 bits of Unix milliseconds, then random bits. Run ids
-- are minted in SQL (their number depends on the topology at emission), and time order keeps
-- primary-key inserts at the right edge of the index instead of scattering them.
CREATE FUNCTION uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Every emitted message: immutable once written.
CREATE TABLE messages (
    id              uuid        PRIMARY KEY,
    -- The cooperation root the message belongs to (for a global launch: the message itself).
    root_id         uuid        NOT NULL,
    topic           text        NOT NULL,
    payload         jsonb       NOT NULL,
    -- For child messages: the emitting run and which of its step instances emitted it.
    parent_run_id   uuid,
    parent_instance integer,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The durable topology: who listens to which topic. A message fans out to every handler
-- registered here, whether or not a runtime serving it is up.
CREATE TABLE handlers (
    topic           text        NOT NULL,
    handler         text        NOT NULL,
    -- 'runtime': served by runtimes; 'external': completed out of band through the API.
    kind            text        NOT NULL DEFAULT 'runtime' CHECK (kind IN ('runtime', 'external')),
    registered_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, handler)
);

-- One row per run (handler x message): the state the scheduler works from.
CREATE TABLE runs (
    id               uuid        PRIMARY KEY,
    root_id          uuid        NOT NULL,
    parent_id        uuid,
    parent_instance  integer,
    message_id       uuid        NOT NULL REFERENCES messages (id),
    handler          text        NOT NULL,
    topic            text        NOT NULL,
    status           text        NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'rolling_back', 'committed', 'rolled_back', 'rollback_failed')),
    -- Happy path: index of the next step to run (= number of steps once the last one ran).
    step_index       integer     NOT NULL DEFAULT 0,
    -- Consecutive earlier executions of the step at step_index (loops).
    step_iteration   integer     NOT NULL DEFAULT 0,
    -- Step instances executed so far; children record which instance emitted them.
    instances        integer     NOT NULL DEFAULT 0,
    -- Children of the latest step instance that have not reached a terminal state. The run
    -- is claimable only at zero: this is the structured-cooperation rule.
    pending_children integer     NOT NULL DEFAULT 0 CHECK (pending_children >= 0),
    -- Children of the latest step instance that ended without committing.
    failed_children  integer     NOT NULL DEFAULT 0,
    -- When the run becomes (or became) claimable; compared with the database clock.
    wake_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Terminal, but its parent's bookkeeping (pending_children - 1) is not done yet. Set by the
    -- run's final step transaction and cleared, together with the parent's update, by a short
    -- follow-up transaction (or by a sweep, if that one never happened).
    release_pending  boolean     NOT NULL DEFAULT false,
    context          jsonb,
    failure          jsonb,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (message_id, handler)
);

-- Claiming: only runnable rows are in this index, so a claim costs the same however much
-- finished history the table holds.
CREATE INDEX runs_runnable ON runs (handler, wake_at, id)
    WHERE status IN ('active', 'rolling_back') AND pending_children = 0;

-- Children of a run (and of one of its step instances): rollback and cancellation walk these.
CREATE INDEX runs_children ON runs (parent_id, parent_instance) WHERE parent_id IS NOT NULL;

-- Finished runs whose parent has not been told yet (normally empty, or nearly).
CREATE INDEX runs_unreleased ON runs (id) WHERE release_pending;

-- The append-only story of every run, in Scoop's vocabulary. For people and tests: the
-- scheduler never reads it.
CREATE TABLE history (
    seq         bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    root_id     uuid        NOT NULL,
    -- The run that wrote the event (for EMITTED: the emitting run; NULL for global launches).
    run_id      uuid,
    message_id  uuid        NOT NULL,
    event       text        NOT NULL CHECK (event IN ('EMITTED', 'SEEN', 'SUSPENDED', 'COMMITTED',
                    'ROLLING_BACK', 'ROLLBACK_EMITTED', 'ROLLED_BACK', 'ROLLBACK_FAILED',
                    'CANCELLATION_REQUESTED')),
    handler     text,
    step        text,
    next_step   integer,
    failure     jsonb,
    -- The runtime instance that wrote the event (informational).
    worker      text
);

CREATE INDEX history_root ON history (root_id, seq);
