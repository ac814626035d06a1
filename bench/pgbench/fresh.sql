-- Sentinel, a fresh key, as once() sends it: acquire_v1 (straight to
-- executing, with a 43-character fingerprint like the driver's default) then
-- complete_v2 (what the driver records with): two round trips, two commits.
-- Run with -M prepared. The key is client-unique and random.
\set r random(1, 9000000000000000000)
select fence from sentinel.acquire_v1('bench-pgbench', 'f-' || :client_id || '-' || :r, 'pgbench', 3000, 3000, true, 'v1:0000000000000000000000000000000000000000') \gset
select outcome from sentinel.complete_v2('bench-pgbench', 'f-' || :client_id || '-' || :r, :fence, '{"ok": true}');
