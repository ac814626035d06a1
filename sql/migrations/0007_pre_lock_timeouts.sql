-- Sentinel migration 0007 (pre): no protocol call waits without limit for a
-- row lock.
--
-- A session that locks an execution row and leaves its transaction open (an
-- operator's `begin; select sentinel.acquire_v1(...)` in psql, a
-- `select ... for update` of sentinel.executions, a long transaction()
-- block) used to make every other call on that key wait for as long as the
-- transaction stayed open: acquire blocked its callers without limit, and a
-- worker's heartbeat, which renews the leases of all its executions one by
-- one on one connection, stalled until every other lease of that worker
-- lapsed.
--
-- From this migration on, each protocol function carries its own
-- lock_timeout, so every client (Python, Node, psql, a DBA's script) gets
-- the same bound whatever its session settings, and through a
-- transaction-pooling PgBouncer too:
-- * heartbeat_v1: 100 ms. A renewal that cannot take the row lock at once
--   fails with SQLSTATE 55P03 (lock_not_available); the driver retries that
--   key soon and goes on renewing the others. The lease itself is decided
--   here as always: a renewal that comes too late finds it lapsed.
-- * acquire_v1, begin_v1, complete_v1/v2, fail_v1/v2, abandon_v1,
--   reconcile_v1: 5 s. A call behind a transaction held open longer fails
--   with 55P03 and changes nothing; a recording call is retried by the
--   drivers until the hard deadline. Concurrent callers of a key claimed in
--   a transaction() block now wait up to 5 s for it.
-- A DBA may change a bound with `alter function ... set lock_timeout = ...`.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

alter function sentinel.heartbeat_v1(text, text, bigint) set lock_timeout = '100ms';
alter function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) set lock_timeout = '5s';
alter function sentinel.begin_v1(text, text, bigint) set lock_timeout = '5s';
alter function sentinel.complete_v1(text, text, bigint, jsonb) set lock_timeout = '5s';
alter function sentinel.complete_v2(text, text, bigint, jsonb, bigint) set lock_timeout = '5s';
alter function sentinel.fail_v1(text, text, bigint, jsonb, boolean) set lock_timeout = '5s';
alter function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) set lock_timeout = '5s';
alter function sentinel.abandon_v1(text, text, bigint, text) set lock_timeout = '5s';
alter function sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean) set lock_timeout = '5s';

comment on function sentinel.heartbeat_v1(text, text, bigint) is
    'Renews the lease of your claim or execution by its ttl_ms, never past hard_expires_at. '
    'alive false: the lease lapsed, the hard deadline passed, or the fence is no longer current; stop when you can. '
    'An execution of yours whose lease lapsed is marked uncertain. Waits at most 100 ms for the row lock '
    '(SQLSTATE 55P03 after that: retry soon). Raises SN001, SN002, SN005.';

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 7 $$;
