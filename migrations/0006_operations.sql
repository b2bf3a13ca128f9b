-- Operations over many trees (listing, pruning), index-backed so that their cost does not
-- grow with the finished history. Every one of these columns is written once per run (or
-- is already in another index's predicate), so they cost inserts a little and take no HOT
-- update away.

-- Roots, newest first (listing).
CREATE INDEX runs_roots ON runs (created_at DESC, id DESC) WHERE parent_id IS NULL;

-- Failed roots, newest first (the listing an operator asks for most).
CREATE INDEX runs_failed_roots ON runs (created_at DESC, id DESC)
    WHERE parent_id IS NULL AND status IN ('rolled_back', 'rollback_failed');

-- Finished roots by finish time (pruning).
CREATE INDEX runs_finished_roots ON runs (finished_at)
    WHERE parent_id IS NULL AND status IN ('committed', 'rolled_back', 'rollback_failed');

-- Messages written on a topic nobody handled (they have no runs), and among them the roots,
-- by time: pruning finds them without looking at every root.
ALTER TABLE messages ADD COLUMN unhandled boolean NOT NULL DEFAULT false;
CREATE INDEX messages_unhandled_roots ON messages (created_at) WHERE unhandled AND root_id = id;

-- Which runtimes are alive: each records itself at start and at every safety-net sweep, and
-- deletes its row when it shuts down cleanly. A row not refreshed for three intervals is a
-- runtime that is gone; rows are deleted after ten intervals (at least five minutes).
CREATE TABLE runtimes (
    instance    text        PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    edition     text        NOT NULL,
    handlers    text[]      NOT NULL,
    workers     integer     NOT NULL,
    interval_ms bigint      NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen   timestamptz NOT NULL DEFAULT clock_timestamp()
);
