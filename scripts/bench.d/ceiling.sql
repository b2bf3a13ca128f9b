-- One minimal queue step: claim a pending row, mark it, record a result, commit.
BEGIN;
WITH c AS (
    SELECT id FROM sc_ceiling_q WHERE state = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
)
UPDATE sc_ceiling_q SET state = 1 FROM c WHERE sc_ceiling_q.id = c.id;
INSERT INTO sc_ceiling_r (job) VALUES (1);
COMMIT;
