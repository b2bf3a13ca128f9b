-- Vacuums of `runs` always clean its indexes (issue 13). PostgreSQL skips the index pass when
-- fewer than 2 % of the table's pages hold dead rows, which on a table with a long history is
-- every vacuum that migration 7's threshold starts: the claim's small index `runs_runnable`
-- then keeps its dead entries, which sort before every runnable run of their handler and
-- which every claim walks past, until 2 % of a large table is dead. Cleaning the indexes
-- costs a pass over each of them per vacuum; a claim that stays as cheap as on an empty
-- table is worth it.
ALTER TABLE runs SET (vacuum_index_cleanup = on);
