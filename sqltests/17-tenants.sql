-- 17-tenants: rights per role and namespace, the proof of a claim, the narrow
-- probe and purge rights, watchers owned by their role, and who is recorded on
-- each event. Roles act through SET LOCAL ROLE, as an application behind a
-- shared login would; every function checks the role it acts for.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(53);
\ir _clock.psql

create role t_pay_app nologin;
create role t_pay_app2 nologin;
create role t_ship_app nologin;
create role t_pay_probe nologin;
create role t_pay_op nologin;
create role t_pay_purge nologin;
create role t_legacy nologin;
create role t_pay_member nologin in role t_pay_app;
select sentinel.grant_v2('t_pay_app', 'payments') \g /dev/null
select sentinel.grant_v2('t_pay_app2', 'payments', array['app']) \g /dev/null
select sentinel.grant_v2('t_ship_app', 'shipping') \g /dev/null
select sentinel.grant_v2('t_pay_probe', 'payments', array['probe']) \g /dev/null
select sentinel.grant_v2('t_pay_op', 'payments', array['operator']) \g /dev/null
select sentinel.grant_v2('t_pay_purge', 'payments', array['purge']) \g /dev/null
select sentinel.grant_v1('t_legacy') \g /dev/null

\set tok '''token-of-the-owner-000001'''
\set bad '''token-of-someone-else-01'''

-- The grants themselves.
select results_eq(
    $$ select namespace, kind from sentinel.rights where role = 't_pay_app'::regrole $$,
    $$ values ('payments'::text, 'app'::text) $$, 'grant_v2 records the app right on one namespace');
select results_eq(
    $$ select namespace, kind from sentinel.rights where role = 't_legacy'::regrole $$,
    $$ values ('*'::text, 'app'::text) $$, 'grant_v1 records the app right on every namespace');
select ok(not has_function_privilege('t_pay_app', 'sentinel.complete_v1(text, text, bigint, jsonb)', 'execute')
          and not has_function_privilege('t_pay_app', 'sentinel.heartbeat_v1(text, text, bigint)', 'execute')
          and not has_function_privilege('t_pay_app', 'sentinel.watch_v1(text, text, bigint)', 'execute')
          and has_function_privilege('t_pay_app', 'sentinel.complete_v3(text, text, bigint, text, jsonb, bigint)', 'execute'),
          'grant_v2 never grants the legacy calls that change a claim without its token');
select ok(not has_function_privilege('t_pay_app', 'sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', 'execute')
          and has_function_privilege('t_pay_probe', 'sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', 'execute')
          and not has_function_privilege('t_pay_op', 'sentinel.purge_v1(text, bigint, integer)', 'execute')
          and has_function_privilege('t_pay_purge', 'sentinel.purge_v1(text, bigint, integer)', 'execute'),
          'reconcile comes with probe and operator, purge only with purge');
select throws_ok($$ select sentinel.grant_v2('t_pay_app', 'payments', array['admin']) $$, 'SN006', null,
                 'an unknown right is refused');
select throws_ok($$ select sentinel.grant_v2('nobody_at_all', 'payments') $$, 'SN012', null,
                 'an unknown role is refused');
select throws_ok($$ select sentinel.grant_v2('t_pay_app', 'Payments!') $$, 'SN002', null,
                 'an invalid namespace is refused');

-- The app right: one namespace, nothing else.
set local role t_pay_app;
select fence as f from sentinel.acquire_v2('payments', 'pay-1', 'w1', 60000, token => :tok) \gset
select ok(:f > 0, 'the payments app claims a payments key');
reset role;
set local role t_ship_app;
select throws_ok($$ select sentinel.acquire_v2('payments', 'x', 'w', 1000) $$, '42501',
                 'sentinel: role t_ship_app may not claim keys in namespace ''payments''',
                 'the shipping app cannot claim in payments');
select throws_ok($$ select * from sentinel.inspect_v1('payments', 'pay-1') $$, '42501', null,
                 'nor inspect a payments key (its fence, owner, response)');
select throws_ok($$ select * from sentinel.list_v2('payments') $$, '42501', null, 'nor list payments');
select throws_ok($$ select * from sentinel.events_v1('payments', 'pay-1') $$, '42501', null,
                 'nor read its events');
select throws_ok($$ select * from sentinel.stats_v1('payments') $$, '42501', null, 'nor count its records');
select throws_ok(format($$ select sentinel.complete_v3('payments', 'pay-1', %s, %L, '"forged"') $$, :f, :bad),
                 '42501', null, 'nor complete a payments claim, even with its fence');
select throws_ok(format($$ select sentinel.complete_v1('payments', 'pay-1', %s, '"forged"') $$, :f),
                 '42501', 'permission denied for function complete_v1', 'and has no tokenless complete at all');
select throws_ok($$ select sentinel.watch_v2('payments', 'pay-1', 1000, 'sentinel_w_0123456789abcdef0123456789abcdef') $$,
                 '42501', null, 'nor watch a payments key');
select is((sentinel.acquire_v2('shipping', 'ship-1', 'w', 1000)).outcome, 'acquired', 'its own namespace works');
reset role;

-- The proof of a claim: the fence is public, the token is not.
set local role t_pay_app2;
select is((select state from sentinel.inspect_v1('payments', 'pay-1')), 'executing',
          'another payments app may read the record and its fence');
select is((sentinel.complete_v3('payments', 'pay-1', :f, :bad, '"forged"')).outcome, 'stale',
          'but complete_v3 with the fence and another token is stale');
select is((sentinel.fail_v3('payments', 'pay-1', :f, :bad, '{"e": 1}')).outcome, 'stale', 'fail_v3 too');
select is((sentinel.abandon_v2('payments', 'pay-1', :f, :bad, 'forged')).outcome, 'stale', 'abandon_v2 too');
select is((sentinel.heartbeat_v2('payments', 'pay-1', :f, :bad)).alive, false,
          'heartbeat_v2 with another token does not renew');
select throws_ok(format($$ select sentinel.complete_v3('payments', 'pay-1', %s, null, '"forged"') $$, :f),
                 'SN004', null, 'complete_v3 without a token is refused');
select is((select state from sentinel.inspect_v1('payments', 'pay-1')), 'executing', 'the claim is untouched');
reset role;
set local role t_pay_member;
select is((sentinel.heartbeat_v2('payments', 'pay-1', :f, :tok)).alive, true,
          'the holder (here a member of the app role) renews with its token');
select is((sentinel.complete_v3('payments', 'pay-1', :f, :tok, '"paid"')).outcome, 'recorded', 'and completes');
select is((sentinel.complete_v3('payments', 'pay-1', :f, :tok, '"paid"')).outcome, 'already_recorded',
          'a retry with the same response: already_recorded');
select is((sentinel.complete_v3('payments', 'pay-1', :f, :tok, '"other"')).outcome, 'conflict',
          'a retry with another response: conflict');
select is((sentinel.acquire_v2('payments', 'pay-1', 'w9', 1000)).response, '"paid"'::jsonb,
          'and every replay serves the response the holder recorded');
reset role;

-- begin_v2 for a claim that did not start.
set local role t_pay_app;
select fence as g from sentinel.acquire_v2('payments', 'pay-2', 'w1', 60000, start => false, token => :tok) \gset
select is(sentinel.begin_v2('payments', 'pay-2', :g, :bad), false, 'begin_v2 with another token: false');
select is(sentinel.begin_v2('payments', 'pay-2', :g, :tok), true, 'with the token: true');
-- an uncertain key and a failed key, for the probe.
select fence as u from sentinel.acquire_v2('payments', 'pay-u', 'w1', 1000, token => :tok) \gset
select fence as p from sentinel.acquire_v2('payments', 'pay-f', 'w1', 1000, token => :tok) \gset
select is((sentinel.fail_v3('payments', 'pay-f', :p, :tok, '{"e": 1}', permanent => true)).outcome, 'recorded',
          'a permanent failure is recorded');
reset role;
call pg_temp.advance(2000);

-- The probe right: uncertain keys of its namespaces, without force.
set local role t_pay_probe;
select throws_ok($$ select sentinel.reconcile_v1('payments', 'pay-f', 'release', 'probe', 'retry it') $$, '42501',
                 'sentinel: role t_pay_probe may only resolve uncertain keys of namespace ''payments'', without force (payments/pay-f is failed)',
                 'a probe may not resolve a failed key');
select throws_ok($$ select sentinel.reconcile_v1('payments', 'pay-u', 'completed', 'probe', 'seen', '"x"', force => true) $$,
                 '42501', null, 'nor use force');
select is((sentinel.reconcile_v1('payments', 'pay-u', 'completed', 'probe', 'the provider says paid', '"x"')).state,
          'completed', 'a probe resolves an uncertain key of its namespace');
select throws_ok($$ select sentinel.purge_v1('payments', 0) $$, '42501', 'permission denied for function purge_v1',
                 'a probe cannot purge');
reset role;

-- The operator right: any key of its namespaces, not purge, not other namespaces.
set local role t_pay_op;
select is((sentinel.reconcile_v1('payments', 'pay-f', 'release', 'alice', 'retry it')).state, 'failed',
          'an operator resolves a failed key');
select throws_ok($$ select sentinel.reconcile_v1('shipping', 'ship-1', 'release', 'alice', 'x', force => true) $$,
                 '42501', null, 'but not in another namespace');
select throws_ok($$ select sentinel.purge_v1('payments', 0) $$, '42501', 'permission denied for function purge_v1',
                 'and reconciling does not grant purging');
select throws_ok($$ delete from sentinel.events $$, '42501', 'permission denied for table events',
                 'the event log cannot be deleted by an operator');
select throws_ok($$ select set_config('sentinel.purging_events', 'on', true); delete from sentinel.events $$,
                 '42501', 'permission denied for table events', 'not even with the purge setting on');
reset role;

-- The purge right.
set local role t_pay_purge;
select ok(sentinel.purge_v1('payments', 0) >= 1, 'the purge right purges its namespace');
select throws_ok($$ select sentinel.purge_v1('shipping', 0) $$, '42501', null, 'not another one');
select throws_ok($$ select sentinel.purge_events_v1(0) $$, '42501', null,
                 'and the event log of every namespace needs the purge right on every namespace');
reset role;

-- A legacy role (grant_v1) keeps every namespace and the tokenless calls, until revoked.
set local role t_legacy;
select fence as l from sentinel.acquire_v1('anything', 'k', 'w', 60000) \gset
select is((sentinel.complete_v1('anything', 'k', :l, '1')).outcome, 'recorded', 'a legacy role still completes with v1');
reset role;
select sentinel.revoke_v1('t_legacy', legacy => true) \g /dev/null
set local role t_legacy;
select throws_ok($$ select sentinel.complete_v1('anything', 'k', 1, '1') $$, '42501',
                 'permission denied for function complete_v1', 'after revoke_v1(legacy => true) it no longer can');
reset role;
select sentinel.revoke_v1('t_ship_app', 'shipping') \g /dev/null
set local role t_ship_app;
select throws_ok($$ select sentinel.acquire_v2('shipping', 'ship-2', 'w', 1000) $$, '42501', null,
                 'a role whose last right is revoked can do nothing');
reset role;

-- Watchers belong to their role and are bounded.
set local role t_pay_app;
select sentinel.watch_v2('payments', 'pay-9', 60000, 'sentinel_w_0123456789abcdef0123456789abcdef') as w \gset
select throws_ok($$ select sentinel.watch_v2('payments', 'pay-9', 60000, 'sentinel_payments') $$, 'SN004', null,
                 'a guessable channel is refused');
reset role;
set local role t_pay_app2;
select is(sentinel.unwatch_v1(:w), false, 'another role cannot remove the watcher');
reset role;
select is((select count(*) from sentinel.watchers where id = :w), 1::bigint, 'which is still there');
update sentinel.limits set value = 2 where name = 'max_watchers_per_role';
set local role t_pay_app;
select sentinel.watch_v2('payments', 'pay-10', 60000, 'sentinel_w_0123456789abcdef0123456789abcdef') \g /dev/null
select throws_ok($$ select sentinel.watch_v2('payments', 'pay-11', 60000, 'sentinel_w_0123456789abcdef0123456789abcdef') $$,
                 'SN016', null, 'a role holds at most max_watchers_per_role live watchers');
select is(sentinel.unwatch_v1(:w), true, 'its own role removes it');
reset role;

-- Who caused each event: the login role and the role set.
select is(
    (select string_agg(format('%s/%s/%s', db_user, db_role, actor), ' ' order by id) from sentinel.events
      where namespace = 'payments' and key = 'pay-u'),
    format('%s/t_pay_app/w1 %s/t_pay_probe/probe', session_user, session_user),
    'each event records session_user and the role set, beside the actor the caller claimed');

select * from finish();
rollback;
