-- The floor of fresh.sql: the cheapest SQL with the same two committed round
-- trips: insert one row into a plain table, then update it with a small jsonb.
\set r random(1, 9000000000000000000)
insert into bench.floor (k) values ('pf-' || :client_id || '-' || :r);
update bench.floor set v = '{"ok": true}' where k = 'pf-' || :client_id || '-' || :r;
