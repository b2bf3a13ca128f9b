-- structured-cooperation schema, version 4: cooperation context and return values.

-- The run's cooperation context as exact JSON text (NULL = empty): entries written by other
-- services must come back byte for byte, which jsonb (it re-renders) would not do.
ALTER TABLE runs ALTER COLUMN context TYPE text USING context::text;

ALTER TABLE runs
    -- The context a parent's rollback request carried: merged over the run's own context
    -- (the request wins) by the run's next transition, which then clears it.
    ADD COLUMN rollback_context text;

-- Named values a run stores for its parent (at most one per name and run). Written by the
-- storing step's transaction; never deleted, not even when the storing run rolls back later.
CREATE TABLE return_values (
    run_id     uuid        NOT NULL REFERENCES runs (id),
    name       text        NOT NULL,
    -- The storing run's parent (NULL for a top-level run), for the parent's lookups.
    parent_id  uuid,
    handler    text        NOT NULL,
    -- Exact JSON text, as the storing step serialized it.
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, name)
);

CREATE INDEX return_values_parent ON return_values (parent_id, name) WHERE parent_id IS NOT NULL;
