-- Vacuuming that keeps up with the engine (issue 13). Every step rewrites its run's row (its
-- transition cannot be a HOT update: the columns of the claim's index and of its predicate
-- change), so each finished step leaves a dead row version and a dead entry in the claim's
-- index `runs_runnable`. Those entries sort before every runnable run of their handler (they
-- were due earlier), and every claim walks past the ones vacuum has not removed yet: with
-- PostgreSQL's default (vacuum once a fifth of the table is dead), a table of ten million
-- finished runs lets two million pile up in front of the claims. So `runs` is vacuumed after
-- a fixed number of dead versions whatever its size, and without the cost-based pauses; its
-- statistics are refreshed as often. The append-only tables (history, step instances,
-- messages) are only ever vacuumed for their visibility maps, which PostgreSQL's insert
-- thresholds already do.
ALTER TABLE runs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
