-- The floor of replay.sql: one primary-key select of a small jsonb.
\set i random(1, :nkeys)
select v from bench.floor where k = 'pr-' || :i;
