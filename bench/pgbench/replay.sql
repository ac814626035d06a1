-- Sentinel, a replay: acquire_v1 on one of :nkeys completed keys (r-1 .. r-N,
-- prepared by bench/run.py with the same fingerprint), as once() sends it.
-- One round trip that writes nothing.
\set i random(1, :nkeys)
select response from sentinel.acquire_v1('bench-pgbench', 'r-' || :i, 'pgbench', 3000, 3000, true, 'v1:0000000000000000000000000000000000000000');
