-- 05-fencing: invariant 4 (a mutation with a stale fence is rejected and
-- changes nothing) and the fence's strict growth over a key's whole life.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(24);
\ir _clock.psql

-- Setup: w1's claim lapses and w2 takes the key over; w1's fence is stale.
select fence as f_old from sentinel.acquire_v1('fence', 'k', 'w1', 1000, start => false) \gset
call pg_temp.set_clock(1000);
select fence as f_new from sentinel.acquire_v1('fence', 'k', 'w2', 60000) \gset
call pg_temp.set_clock(1500);
select pg_temp.snap('fence', 'k') as snap_k \gset

-- Each mutation with the stale fence: refused, and the row is byte for byte the same.
select results_eq(
    format($$ select outcome, state, fence from sentinel.complete_v1('fence', 'k', %s, '{"forged": true}') $$, :f_old),
    format($$ values ('stale', 'executing', %s::bigint) $$, :f_new),
    'complete_v1 with a stale fence: stale, reporting the current state and fence');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'stale complete_v1 changed nothing');
select results_eq(
    format($$ select outcome, state, fence from sentinel.fail_v1('fence', 'k', %s, '{"forged": true}', true) $$, :f_old),
    format($$ values ('stale', 'executing', %s::bigint) $$, :f_new),
    'fail_v1 with a stale fence: stale');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'stale fail_v1 changed nothing');
select results_eq(
    format($$ select alive, state from sentinel.heartbeat_v1('fence', 'k', %s) $$, :f_old),
    $$ values (false, 'executing') $$,
    'heartbeat_v1 with a stale fence: alive false');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'stale heartbeat_v1 changed nothing (no lease renewed, not marked uncertain)');
select is(sentinel.begin_v1('fence', 'k', :f_old), false, 'begin_v1 with a stale fence: false');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'stale begin_v1 changed nothing');
select results_eq(
    format($$ select outcome, state, fence from sentinel.abandon_v1('fence', 'k', %s, 'forged') $$, :f_old),
    format($$ values ('stale', 'executing', %s::bigint) $$, :f_new),
    'abandon_v1 with a stale fence: stale');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'stale abandon_v1 changed nothing');

-- A fence that was never this key's (far in the future): the same.
select results_eq(
    $$ select (sentinel.complete_v1('fence', 'k', 9000000000000000000, '1')).outcome,
              (sentinel.fail_v1('fence', 'k', 9000000000000000000, '1')).outcome,
              (sentinel.heartbeat_v1('fence', 'k', 9000000000000000000)).alive,
              sentinel.begin_v1('fence', 'k', 9000000000000000000),
              (sentinel.abandon_v1('fence', 'k', 9000000000000000000, 'x')).outcome $$,
    $$ values ('stale', 'stale', false, false, 'stale') $$,
    'an unknown fence: complete, fail and abandon stale, heartbeat and begin false');
select is(pg_temp.snap('fence', 'k'), :'snap_k'::jsonb, 'the unknown fence changed nothing');

-- A key without a row: every mutation is refused and no row appears.
select results_eq(
    format($$ select c.outcome, c.state, c.fence, h.alive, h.state, b, a.outcome, f.outcome
                from sentinel.complete_v1('fence', 'ghost', %1$s, '1') c,
                     sentinel.heartbeat_v1('fence', 'ghost', %1$s) h,
                     sentinel.begin_v1('fence', 'ghost', %1$s) b,
                     sentinel.abandon_v1('fence', 'ghost', %1$s, 'x') a,
                     sentinel.fail_v1('fence', 'ghost', %1$s, '1') f $$, :f_new),
    $$ values ('stale', null::text, null::bigint, false, null::text, false, 'stale', 'stale') $$,
    'a key without a row: stale / false everywhere, with NULL state and fence');
select is_empty($$ select 1 from sentinel.executions where namespace = 'fence' and key = 'ghost' $$,
                'no row was created for the unknown key');

-- After a reconcile takes a new fence, the late owner is fenced out.
call pg_temp.set_clock(10000);
select fence as f_late from sentinel.acquire_v1('fence', 'late', 'w1', 1000) \gset
call pg_temp.advance(1000);
select is((sentinel.acquire_v1('fence', 'late', 'w2', 1000)).outcome, 'uncertain', 'late: the lease lapsed, uncertain');
select is((sentinel.reconcile_v1('fence', 'late', 'completed', 'ops:alice', 'charge found in PSP dashboard',
                                 response => '{"charge": "ch_op"}')).state, 'completed',
          'an operator reconciles late as completed (new fence)');
select pg_temp.snap('fence', 'late') as snap_late \gset
select results_eq(
    format($$ select outcome from sentinel.complete_v1('fence', 'late', %1$s, '{"charge": "ch_late"}')
              union all
              select outcome from sentinel.fail_v1('fence', 'late', %1$s, '{"late": true}') $$, :f_late),
    $$ values ('stale'), ('stale') $$,
    'the late owner''s complete_v1 and fail_v1 after the reconcile: stale');
select is(pg_temp.snap('fence', 'late'), :'snap_late'::jsonb, 'the reconciled row is unchanged');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('fence', 'late', 'w3', 1000) $$,
    $$ values ('completed', '{"charge": "ch_op"}'::jsonb) $$,
    'the operator''s response is the one replayed');

-- Fences grow strictly over a key's whole life: takeover, failed retry,
-- uncertain + reconcile, forced reconcile, purge and a fresh claim.
create temp table fences (step int primary key, what text, fence bigint);
call pg_temp.set_clock(100000);
insert into pg_temp.fences select 1, 'first claim', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w1', 1000, start => false);
call pg_temp.advance(1000);
insert into pg_temp.fences select 2, 'takeover', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w2', 1000);
select lives_ok($$ select sentinel.fail_v1('fence-mono', 'mono', pg_temp.fence_of('fence-mono', 'mono'), '{"e": 1}') $$, 'mono: w2 fails');
insert into pg_temp.fences select 3, 'failed retry', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w3', 1000);
call pg_temp.advance(1000);
insert into pg_temp.fences select 4, 'marked uncertain (same fence)', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w4', 1000);
insert into pg_temp.fences select 5, 'reconcile release', fence from sentinel.reconcile_v1('fence-mono', 'mono', 'release', 'ops', 'retry it');
insert into pg_temp.fences select 6, 'claim after release', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w5', 1000);
select lives_ok($$ select sentinel.complete_v1('fence-mono', 'mono', pg_temp.fence_of('fence-mono', 'mono'), '{"v": 1}') $$, 'mono: w5 completes');
insert into pg_temp.fences select 7, 'forced reconcile', fence
  from sentinel.reconcile_v1('fence-mono', 'mono', 'completed', 'ops', 'correct the response', response => '{"v": 2}', force => true);
call pg_temp.advance(1);
select is(sentinel.purge_v1('fence-mono', 0), 1::bigint, 'mono: purged');
insert into pg_temp.fences select 8, 'fresh claim after purge', fence from sentinel.acquire_v1('fence-mono', 'mono', 'w6', 1000);
select results_eq(
    $$ select count(*)::int, count(*) filter (where fence > prev)::int, count(*) filter (where fence = prev)::int
         from (select step, fence, lag(fence) over (order by step) as prev from pg_temp.fences) s
        where prev is not null $$,
    $$ values (7, 6, 1) $$,
    'every new claim and every reconcile took a strictly larger fence; only marking uncertain kept it');
select is((select attempt from sentinel.executions where namespace = 'fence-mono' and key = 'mono'), 1,
          'after the purge the key starts over at attempt 1, with a never-seen fence');

select * from finish();
rollback;
