-- The history loses its primary key (issue 13). Nothing looks an entry up by `seq` alone:
-- every reader goes through `history_root (root_id, seq)`, which also orders a root's story,
-- and `seq` stays unique by its sequence. The key cost every step two more index insertions
-- (its `SEEN` and its transition's entries) and an index to open and lock in each statement
-- that writes history. Deletes (pruning) stay publishable to logical replication with the
-- whole row as the replica identity (which costs nothing below `wal_level = logical`).
ALTER TABLE history DROP CONSTRAINT history_pkey;
ALTER TABLE history REPLICA IDENTITY FULL;
