-- Saga versions (issue 14). A run remembers its next step by index, so it must only ever be
-- driven by the shape of the saga that wrote it. Every run records that version; runtimes
-- claim only runs of the versions they serve.

-- Each version of a handler that a runtime ever served, with its shape (step names and
-- kinds, in order, and which compensate or handle child failures): what an operator's
-- migration of runs between versions maps by name, and what keeps two different shapes from
-- sharing an explicit version.
CREATE TABLE saga_versions (
    handler       text        NOT NULL,
    version       text        NOT NULL,
    steps         jsonb       NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (handler, version)
);

-- The version new runs of a handler get: the newest one the runtime that registered the
-- handler last serves (NULL for external handlers, whose runs no runtime drives).
ALTER TABLE handlers ADD COLUMN version text;

-- The version that wrote the run (NULL: written before versions existed; any version of
-- its handler may drive it).
ALTER TABLE runs ADD COLUMN version text;

-- MIGRATED: an operator moved an unfinished run to another version of its saga.
ALTER TABLE history DROP CONSTRAINT history_event_check;
ALTER TABLE history ADD CONSTRAINT history_event_check
    CHECK (event IN ('EMITTED', 'SEEN', 'SUSPENDED', 'COMMITTED', 'ROLLING_BACK',
                     'ROLLBACK_EMITTED', 'ROLLED_BACK', 'ROLLBACK_FAILED',
                     'CANCELLATION_REQUESTED', 'RETRYING', 'UNHANDLED', 'MIGRATED')) NOT VALID;
