-- 14-lock-timeouts: every protocol function bounds its own wait for a row
-- lock, whatever the caller's session says (the behaviour under a real lock,
-- from another session, is tested in tests/test_stalls.py).
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(11);

create function pg_temp.lock_timeout_of(p_signature text) returns text
    language sql stable
    set search_path = pg_catalog, pg_temp
    as $$
    select substr(c, length('lock_timeout=') + 1)
      from pg_proc p, unnest(p.proconfig) c
     where p.oid = p_signature::regprocedure and c like 'lock_timeout=%'
$$;

select is(pg_temp.lock_timeout_of('sentinel.heartbeat_v1(text, text, bigint)'), '100ms', 'heartbeat_v1: 100 ms');
select is(pg_temp.lock_timeout_of('sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)'), '5s',
          'acquire_v1: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text)'),
          '5s', 'acquire_v2: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.begin_v1(text, text, bigint)'), '5s', 'begin_v1: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.complete_v1(text, text, bigint, jsonb)'), '5s', 'complete_v1: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.complete_v2(text, text, bigint, jsonb, bigint)'), '5s', 'complete_v2: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.fail_v1(text, text, bigint, jsonb, boolean)'), '5s', 'fail_v1: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint)'), '5s',
          'fail_v2: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.abandon_v1(text, text, bigint, text)'), '5s', 'abandon_v1: 5 s');
select is(pg_temp.lock_timeout_of('sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)'), '5s',
          'reconcile_v1: 5 s');

-- The function's own bound wins over the session's.
set local lock_timeout = 0;
select is((sentinel.acquire_v1('lt', 'k', 'w', 1000)).outcome, 'acquired', 'and the functions still work');

select * from finish();
rollback;
