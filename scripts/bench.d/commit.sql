-- The least a launch in its own transaction can cost: one row inserted and committed.
INSERT INTO sc_ceiling_one (at) VALUES (clock_timestamp());
