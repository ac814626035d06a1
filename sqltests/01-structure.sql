-- 01-structure: the objects of schema sentinel, their comments, their security
-- settings, and the test clock itself.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(35);
\ir _clock.psql

-- Objects.
select has_schema('sentinel', 'schema sentinel exists');
select has_table('sentinel', 'executions', 'table sentinel.executions exists');
select col_is_pk('sentinel', 'executions', array['namespace', 'key'], 'one execution record per (namespace, key)');
select has_sequence('sentinel', 'fence_seq', 'sequence sentinel.fence_seq exists');
select is((select seqcycle from pg_sequence where seqrelid = 'sentinel.fence_seq'::regclass), false,
          'fence_seq never cycles, so a fence is never reused');

-- The public API with its exact argument types (the _v1 signature is frozen).
select has_function('sentinel', 'acquire_v1', array['text', 'text', 'text', 'bigint', 'bigint', 'boolean', 'text'], 'acquire_v1(namespace, key, owner, ttl_ms, hard_ttl_ms, start, fingerprint)');
select has_function('sentinel', 'begin_v1', array['text', 'text', 'bigint'], 'begin_v1(namespace, key, fence)');
select has_function('sentinel', 'heartbeat_v1', array['text', 'text', 'bigint'], 'heartbeat_v1(namespace, key, fence)');
select has_function('sentinel', 'complete_v1', array['text', 'text', 'bigint', 'jsonb'], 'complete_v1(namespace, key, fence, response)');
select has_function('sentinel', 'fail_v1', array['text', 'text', 'bigint', 'jsonb', 'boolean'], 'fail_v1(namespace, key, fence, error, permanent)');
select has_function('sentinel', 'abandon_v1', array['text', 'text', 'bigint', 'text'], 'abandon_v1(namespace, key, fence, reason)');
select has_function('sentinel', 'inspect_v1', array['text', 'text'], 'inspect_v1(namespace, key)');
select has_function('sentinel', 'list_v1', array['text', 'text', 'bigint', 'integer'], 'list_v1(namespace, state, older_than_ms, max_rows)');
select has_function('sentinel', 'reconcile_v1', array['text', 'text', 'text', 'text', 'text', 'jsonb', 'jsonb', 'boolean'], 'reconcile_v1(namespace, key, action, actor, reason, response, error, force)');
select has_function('sentinel', 'purge_v1', array['text', 'bigint', 'integer'], 'purge_v1(namespace, older_than_ms, batch_size)');
select has_function('sentinel', 'schema_version', array[]::text[], 'schema_version()');
select is(sentinel.schema_version(), (select max(id) from sentinel.migrations),
          'schema_version() is the newest migration recorded in the ledger');

-- Result types of the API.
select results_eq(
    $$ select t.typname::text collate "default" from pg_type t
        where t.typnamespace = 'sentinel'::regnamespace and t.typtype = 'c'
          and (select c.relkind from pg_class c where c.oid = t.typrelid) = 'c'
          and t.typname like '%\_v1' order by 1 $$,
    $$ values ('abandon_result_v1'), ('acquire_result_v1'), ('execution_v1'), ('finish_result_v1'),
              ('heartbeat_many_result_v1'), ('heartbeat_result_v1'), ('reconcile_result_v1'), ('stats_v1') $$,
    'the eight _v1 result types exist');

-- Every function comments itself.
select is_empty(
    $$ select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace
          and coalesce(btrim(obj_description(p.oid, 'pg_proc')), '') = '' $$,
    'every function in schema sentinel has a COMMENT');

-- Owner's rights: exactly the protocol functions are SECURITY DEFINER, and
-- every one of them pins search_path to pg_catalog, pg_temp (temp last).
select results_eq(
    $$ select p.proname::text collate "default" from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace and p.prosecdef order by 1 $$,
    $$ values ('abandon_v1'), ('abandon_v2'), ('acquire_v1'), ('acquire_v2'), ('begin_v1'), ('begin_v2'),
              ('complete_v1'), ('complete_v2'), ('complete_v3'), ('events_v1'), ('fail_v1'), ('fail_v2'),
              ('fail_v3'), ('heartbeat_many_v1'), ('heartbeat_v1'), ('heartbeat_v2'),
              ('inspect_v1'), ('list_v1'), ('list_v2'), ('purge_events_v1'), ('purge_expired_v1'), ('purge_v1'),
              ('reconcile_v1'), ('stats_v1'), ('unwatch_v1'), ('watch_v1'), ('watch_v2') $$,
    'exactly the protocol functions are SECURITY DEFINER');
select is_empty(
    $$ select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace and p.prosecdef
          and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false) $$,
    'every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp');
select is_empty(
    $$ select p.oid::regprocedure::text || ': ' || c from pg_proc p, unnest(p.proconfig) c
        where p.pronamespace = 'sentinel'::regnamespace and p.prosecdef
          and c not like 'search\_path=%' and c not like 'lock\_timeout=%' and c <> 'sentinel.writer=protocol' $$,
    'and sets nothing but search_path, lock_timeout and sentinel.writer');
-- Every function that writes sentinel.executions marks its call for the guard (executions_writers), and no other.
select results_eq(
    $$ select p.proname::text collate "default" from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace and 'sentinel.writer=protocol' = any(p.proconfig)
        order by 1 $$,
    $$ values ('abandon_v1'), ('abandon_v2'), ('acquire_v1'), ('acquire_v2'), ('begin_v1'), ('begin_v2'),
              ('complete_v1'), ('complete_v2'), ('complete_v3'), ('fail_v1'), ('fail_v2'), ('fail_v3'),
              ('heartbeat_many_v1'), ('heartbeat_v1'), ('heartbeat_v2'), ('reconcile_v1') $$,
    'exactly the functions that write sentinel.executions set sentinel.writer');
select results_eq(
    $$ select c.relname::text collate "default" from pg_class c
        where c.relnamespace = 'sentinel'::regnamespace and c.relkind = 'v' order by 1 $$,
    $$ values ('decided_v1') $$,
    'the one view: decided_v1');
-- Every other function pins it too: the trigger functions run with the
-- search_path of whoever writes sentinel.executions (a DBA by hand, say), and
-- a helper may be called by the owner directly. No exception: the clock and
-- the result builder of acquire included (their bodies also name the schema of
-- everything, which a hostile search_path shows below).
select is_empty(
    $$ select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace
          and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false) $$,
    'every function of schema sentinel pins search_path, trigger functions, _now() and _acquire_result() included');
create schema evil;
create function evil.always(text, text) returns boolean language sql immutable as $$ select true $$;
create operator evil.= (leftarg = text, rightarg = text, function = evil.always);
select sentinel.complete_v1('evil-test', 'k', (sentinel.acquire_v1('evil-test', 'k', 'o', 60000)).fence,
                            '{"r": 1}') \g /dev/null
create temp table evil_row as select x from sentinel.executions x where x.namespace = 'evil-test';
set local search_path = evil, pg_catalog, public;
create temp table evil_result as
    select (sentinel._acquire_result('completed', r.x, pg_catalog.now())).response from pg_temp.evil_row r;
reset search_path;  -- (pgTAP's own comparisons would meet the planted operator too)
select is((select response from pg_temp.evil_result), '{"r": 1}'::jsonb,
    'an operator planted in a schema of the caller''s search_path changes nothing in _acquire_result');
-- None of the private helpers may be called by anyone but the owner.
select is_empty(
    $$ select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace and p.proname like '\_%'
          and has_function_privilege('public', p.oid, 'EXECUTE') $$,
    'no private helper is executable by PUBLIC (they run only under the protocol functions'' pinned search_path)');

-- Storage invariants enforced by the table itself.
select col_has_check('sentinel', 'executions', 'state', 'state has a CHECK constraint');
select is(
    (select pg_get_constraintdef(c.oid) from pg_constraint c
      where c.conrelid = 'sentinel.executions'::regclass and c.conname = 'executions_lease_within_hard_check'),
    'CHECK ((lease_expires_at <= hard_expires_at))',
    'invariant 6 is a CHECK constraint: lease_expires_at <= hard_expires_at');

-- The test clock: replacing sentinel._now() inside this transaction takes
-- effect at once, in direct calls and inside the SECURITY DEFINER functions.
select is(sentinel._now(), timestamptz '2030-01-01 00:00:00+00', 'the fake clock starts at t0');
call pg_temp.advance(1500);
select is(sentinel._now(), pg_temp.at(1500), 'advance moves the fake clock by exactly 1500 ms');
select results_eq(
    $$ select now, claimed_at, lease_expires_at, hard_expires_at
         from sentinel.acquire_v1('structure', 'clock', 'w1', 1000) $$,
    $$ values (pg_temp.at(1500), pg_temp.at(1500), pg_temp.at(2500), pg_temp.at(2500)) $$,
    'acquire_v1 (SECURITY DEFINER) takes its times from the fake clock');
select results_eq(
    $$ select state, now from sentinel.inspect_v1('structure', 'clock') $$,
    $$ values ('executing', pg_temp.at(1500)) $$,
    'inspect_v1 reads the fake clock too');

-- A second replacement after the functions have run (and cached their plans)
-- takes effect on the next call: the plan cache is invalidated by the change.
create or replace function sentinel._now() returns timestamptz
    language sql volatile
    as $$ select t + interval '1 day' from pg_temp.test_clock $$;
select is((sentinel.acquire_v1('structure', 'clock2', 'w1', 1000)).now, pg_temp.at(1500) + interval '1 day',
          'a replaced sentinel._now() is used by the very next call of acquire_v1');
create or replace function sentinel._now() returns timestamptz
    language sql volatile
    as $$ select t from pg_temp.test_clock $$;
select is((sentinel.acquire_v1('structure', 'clock3', 'w1', 1000)).now, pg_temp.at(1500),
          'restoring the clock is seen at once as well');

select * from finish();
rollback;
