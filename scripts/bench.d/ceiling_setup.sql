DROP TABLE IF EXISTS sc_ceiling_q, sc_ceiling_r;
CREATE TABLE sc_ceiling_q (id bigserial PRIMARY KEY, state int NOT NULL DEFAULT 0, payload text);
CREATE INDEX sc_ceiling_q_pending ON sc_ceiling_q (id) WHERE state = 0;
CREATE TABLE sc_ceiling_r (id bigserial PRIMARY KEY, job bigint NOT NULL,
                           at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO sc_ceiling_q (payload) SELECT 'job ' || i FROM generate_series(1, 300000) i;
VACUUM ANALYZE sc_ceiling_q;
