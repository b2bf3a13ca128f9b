-- The hot tables' CHECK constraints become domains (issue 13). PostgreSQL re-reads a table's
-- CHECK constraints from their stored text, and plans them again, in every statement that
-- writes the table: for `runs`, `history` and `step_instances`, written by every step, that
-- was some 5 % of the server's time (the lists of allowed values are stored as arrays,
-- parsed byte by byte). A domain's constraint is read once per connection and kept. The
-- values allowed are the same; the error says "value for domain ... violates check
-- constraint" instead of "new row ... violates check constraint".
--
-- The domains get their constraints after the columns change type, and NOT VALID: changing
-- a column from text to a domain without constraints rewrites nothing (the rows already
-- passed the CHECK being dropped), where a domain with constraints would rewrite the whole
-- table. The partial indexes whose predicates read `status` or `pending_children` are
-- rebuilt (they hold only unfinished runs, or roots).
CREATE DOMAIN run_status AS text;
CREATE DOMAIN child_count AS integer;
CREATE DOMAIN history_event AS text;
CREATE DOMAIN instance_kind AS text;

ALTER TABLE runs
    DROP CONSTRAINT runs_status_check,
    DROP CONSTRAINT runs_pending_children_check,
    ALTER COLUMN status TYPE run_status,
    ALTER COLUMN pending_children TYPE child_count;
ALTER TABLE history
    DROP CONSTRAINT history_event_check,
    ALTER COLUMN event TYPE history_event;
ALTER TABLE step_instances
    DROP CONSTRAINT step_instances_kind_check,
    ALTER COLUMN kind TYPE instance_kind;

ALTER DOMAIN run_status ADD CONSTRAINT run_status_check
    CHECK (VALUE IN ('active', 'rolling_back', 'committed', 'rolled_back', 'rollback_failed'))
    NOT VALID;
ALTER DOMAIN child_count ADD CONSTRAINT child_count_check CHECK (VALUE >= 0) NOT VALID;
ALTER DOMAIN history_event ADD CONSTRAINT history_event_check
    CHECK (VALUE IN ('EMITTED', 'SEEN', 'SUSPENDED', 'COMMITTED', 'ROLLING_BACK',
                     'ROLLBACK_EMITTED', 'ROLLED_BACK', 'ROLLBACK_FAILED',
                     'CANCELLATION_REQUESTED', 'RETRYING', 'UNHANDLED', 'MIGRATED'))
    NOT VALID;
ALTER DOMAIN instance_kind ADD CONSTRAINT instance_kind_check
    CHECK (VALUE IN ('step', 'child_failures', 'compensation')) NOT VALID;
