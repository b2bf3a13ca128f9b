-- structured-cooperation schema, version 5: retries, runs the database cannot store,
-- idempotent launches and scheduled chains.

ALTER TABLE runs
    -- Attempts of the run's current code (a step, a child-failure handler or a compensation)
    -- that failed with a transient error and were retried. Reset by the run's next transition.
    ADD COLUMN retries        integer NOT NULL DEFAULT 0,
    -- Consecutive attempts that ended in an infrastructure error (a lost connection, a
    -- statement of the engine's that failed); each one pushes wake_at further out. Reset by
    -- the run's next transition.
    ADD COLUMN infra_failures integer NOT NULL DEFAULT 0,
    -- The latest of those errors (or of the retried failures), for operators.
    ADD COLUMN last_error     text,
    -- A failure the run's own data caused in the engine's statements (a data exception, such
    -- as a value PostgreSQL cannot store): the run fails with it when it is claimed next.
    ADD COLUMN poison         jsonb;

-- Runs that are retrying or failing, for listings (few rows: only runs in trouble).
CREATE INDEX runs_troubled ON runs (updated_at)
    WHERE (retries > 0 OR infra_failures > 0) AND status IN ('active', 'rolling_back');

-- RETRYING: a step failed transiently and runs again; UNHANDLED: a message was emitted on a
-- topic that no handler was registered for (nobody ran it, nobody waited for it). NOT VALID:
-- the rows already there satisfy it, and a large history need not be scanned.
ALTER TABLE history DROP CONSTRAINT history_event_check;
ALTER TABLE history ADD CONSTRAINT history_event_check
    CHECK (event IN ('EMITTED', 'SEEN', 'SUSPENDED', 'COMMITTED', 'ROLLING_BACK',
                     'ROLLBACK_EMITTED', 'ROLLED_BACK', 'ROLLBACK_FAILED',
                     'CANCELLATION_REQUESTED', 'RETRYING', 'UNHANDLED')) NOT VALID;

ALTER TABLE messages
    -- A launch's idempotency key: a second launch with the same key returns the first
    -- launch's root instead of creating another. Kept as long as the message is.
    ADD COLUMN idempotency_key text;

CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE messages
    -- For launches: the cooperation context given at launch (a periodic saga's next run, and
    -- a schedule's next occurrence, start from it).
    ADD COLUMN context       text,
    -- For occurrences of a scheduled chain: the chain's key, its schedule (as stored by the
    -- library) and the time this occurrence was scheduled for. `run_count` numbers them.
    ADD COLUMN chain         text,
    ADD COLUMN schedule      text,
    ADD COLUMN scheduled_for timestamptz;

-- One message per occurrence of a chain (a second launch of it writes nothing), and the
-- chain's latest occurrence by index.
CREATE UNIQUE INDEX messages_chain ON messages (chain, run_count) WHERE chain IS NOT NULL;

-- Stopped chains: no further occurrence is launched, and one that has not started gives up.
CREATE TABLE chain_stops (
    chain      text        PRIMARY KEY,
    source     text        NOT NULL,
    reason     text        NOT NULL,
    stopped_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
