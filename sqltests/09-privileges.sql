-- 09-privileges: PUBLIC can execute nothing in schema sentinel; a role that
-- may only EXECUTE the API uses Sentinel fully and cannot write execution rows,
-- call the private helpers, draw fences or move the clock.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(33);
\ir _clock.psql

-- PUBLIC: no EXECUTE on anything (grant_v1 gives roles what they need).
select function_privs_are('sentinel', 'acquire_v1', array['text', 'text', 'text', 'bigint', 'bigint', 'boolean', 'text'], 'public', array[]::name[], 'PUBLIC cannot execute acquire_v1');
select function_privs_are('sentinel', 'begin_v1', array['text', 'text', 'bigint'], 'public', array[]::name[], 'PUBLIC cannot execute begin_v1');
select function_privs_are('sentinel', 'heartbeat_v1', array['text', 'text', 'bigint'], 'public', array[]::name[], 'PUBLIC cannot execute heartbeat_v1');
select function_privs_are('sentinel', 'complete_v1', array['text', 'text', 'bigint', 'jsonb'], 'public', array[]::name[], 'PUBLIC cannot execute complete_v1');
select function_privs_are('sentinel', 'fail_v1', array['text', 'text', 'bigint', 'jsonb', 'boolean'], 'public', array[]::name[], 'PUBLIC cannot execute fail_v1');
select function_privs_are('sentinel', 'abandon_v1', array['text', 'text', 'bigint', 'text'], 'public', array[]::name[], 'PUBLIC cannot execute abandon_v1');
select function_privs_are('sentinel', 'inspect_v1', array['text', 'text'], 'public', array[]::name[], 'PUBLIC cannot execute inspect_v1');
select function_privs_are('sentinel', 'list_v1', array['text', 'text', 'bigint', 'integer'], 'public', array[]::name[], 'PUBLIC cannot execute list_v1');
select function_privs_are('sentinel', 'reconcile_v1', array['text', 'text', 'text', 'text', 'text', 'jsonb', 'jsonb', 'boolean'], 'public', array[]::name[], 'PUBLIC cannot execute reconcile_v1');
select function_privs_are('sentinel', 'purge_v1', array['text', 'bigint', 'integer'], 'public', array[]::name[], 'PUBLIC cannot execute purge_v1');
select function_privs_are('sentinel', 'schema_version', array[]::name[], 'public', array[]::name[], 'PUBLIC cannot execute schema_version() either');
select results_eq(
    $$ select p.oid::regprocedure::text collate "default" from pg_proc p
        where p.pronamespace = 'sentinel'::regnamespace
          and has_function_privilege('public', p.oid, 'EXECUTE') order by 1 $$,
    $$ select f from unnest(array[]::text[]) f $$,
    'PUBLIC executes no function of schema sentinel: no protocol function, no private helper, not _now');
select table_privs_are('sentinel', 'executions', 'public', array[]::name[], 'PUBLIC has no privilege on sentinel.executions');
select sequence_privs_are('sentinel', 'fence_seq', 'public', array[]::name[], 'PUBLIC has no privilege on sentinel.fence_seq');

-- A fresh role with no grants: refused everywhere (42501).
create role sentinel_test_nobody nologin;
set local role sentinel_test_nobody;
select throws_ok($$ insert into sentinel.executions (namespace, key, state, fence, attempt, ttl_ms, claimed_at,
                        lease_expires_at, hard_expires_at, updated_at)
                    values ('priv', 'forged', 'completed', 1, 1, 1, now(), now(), now(), now()) $$,
                 '42501', 'permission denied for schema sentinel', 'a fresh role cannot insert into sentinel.executions');
select throws_ok($$ update sentinel.executions set state = 'completed' $$,
                 '42501', 'permission denied for schema sentinel', 'a fresh role cannot update sentinel.executions');
select throws_ok($$ delete from sentinel.executions $$,
                 '42501', 'permission denied for schema sentinel', 'a fresh role cannot delete from sentinel.executions');
select throws_ok($$ select sentinel.acquire_v1('priv', 'k', 'w', 1000) $$,
                 '42501', 'permission denied for schema sentinel', 'a fresh role cannot call acquire_v1');
reset role;

-- An application role with USAGE on the schema and EXECUTE on the API only.
create role sentinel_test_app nologin;
grant usage on schema sentinel to sentinel_test_app;
grant execute on function
    sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text), sentinel.begin_v1(text, text, bigint),
    sentinel.heartbeat_v1(text, text, bigint), sentinel.complete_v1(text, text, bigint, jsonb),
    sentinel.fail_v1(text, text, bigint, jsonb, boolean), sentinel.abandon_v1(text, text, bigint, text),
    sentinel.inspect_v1(text, text), sentinel.list_v1(text, text, bigint, integer)
    to sentinel_test_app;
-- EXECUTE alone is not a right in a namespace: the functions check sentinel.rights.
set local role sentinel_test_app;
select throws_ok($$ select sentinel.acquire_v1('priv', 'k', 'w', 1000) $$,
                 '42501', 'sentinel: role sentinel_test_app may not claim keys in namespace ''priv''',
                 'EXECUTE without a right on the namespace is refused, naming the role and the namespace');
reset role;
insert into sentinel.rights (role, namespace, kind) values ('sentinel_test_app', 'priv', 'app');
set local role sentinel_test_app;
select fence as f_app from sentinel.acquire_v1('priv', 'pay-1', 'app:1', 1000, start => false) \gset
select is(sentinel.begin_v1('priv', 'pay-1', :f_app), true, 'the app role can claim and begin');
select is((sentinel.heartbeat_v1('priv', 'pay-1', :f_app)).alive, true, 'the app role can heartbeat');
select is((sentinel.complete_v1('priv', 'pay-1', :f_app, '{"ok": true}')).outcome, 'recorded', 'the app role can complete');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('priv', 'pay-1', 'app:2', 1000) $$,
    $$ values ('completed', '{"ok": true}'::jsonb) $$,
    'the app role gets the replay');
select results_eq($$ select key, state from sentinel.inspect_v1('priv', 'pay-1') $$, $$ values ('pay-1', 'completed') $$,
                  'the app role can inspect');
select throws_ok($$ select * from sentinel.executions $$,
                 '42501', 'permission denied for table executions', 'the app role cannot read the table directly');
select throws_ok($$ insert into sentinel.executions (namespace, key, state, fence, attempt, ttl_ms, claimed_at,
                        lease_expires_at, hard_expires_at, updated_at, response)
                    values ('priv', 'forged', 'completed', 1, 1, 1, now(), now(), now(), now(), '{}') $$,
                 '42501', 'permission denied for table executions', 'the app role cannot insert (forge) an execution row');
select throws_ok($$ update sentinel.executions set response = '{"forged": true}' where key = 'pay-1' $$,
                 '42501', 'permission denied for table executions', 'the app role cannot update an execution row');
select throws_ok($$ delete from sentinel.executions where key = 'pay-1' $$,
                 '42501', 'permission denied for table executions', 'the app role cannot delete an execution row');
select throws_ok($$ select sentinel._finish('priv', 'pay-1', 1, null, 'completed', '{}', null, false) $$,
                 '42501', 'permission denied for function _finish', 'the app role cannot call the private _finish helper');
select throws_ok($$ select setval('sentinel.fence_seq', 1) $$,
                 '42501', 'permission denied for sequence fence_seq', 'the app role cannot rewind the fence sequence');
select throws_ok($$ create or replace function sentinel._now() returns timestamptz language sql as 'select now() - interval ''1 day''' $$,
                 '42501', 'permission denied for schema sentinel', 'the app role cannot replace the clock');
select throws_ok($$ select sentinel.reconcile_v1('priv', 'pay-1', 'failed', 'app', 'why', force => true) $$,
                 '42501', 'permission denied for function reconcile_v1', 'operator functions need their own grant');
reset role;
select is(current_user::text, session_user::text, 'reset role: back to the test owner');

select * from finish();
rollback;
