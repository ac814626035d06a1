-- 03-lifecycle: begin_v1, complete_v1, fail_v1 and abandon_v1 by the owner of
-- a claim, and the late completion of an execution that went uncertain.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(36);
\ir _clock.psql

-- begin_v1 on your own live claim: true, executing, lease renewed from now.
select fence as f1 from sentinel.acquire_v1('life', 'k1', 'w1', 1000, hard_ttl_ms => 10000, start => false) \gset
call pg_temp.set_clock(400);
select is(sentinel.begin_v1('life', 'k1', :f1), true, 'begin_v1 on the own live claim: true');
select results_eq(
    $$ select state, fence, started_at, lease_expires_at, hard_expires_at, updated_at
         from sentinel.executions where namespace = 'life' and key = 'k1' $$,
    format($$ values ('executing', %s::bigint, pg_temp.at(400), pg_temp.at(1400), pg_temp.at(10000), pg_temp.at(400)) $$, :f1),
    'begun: executing under the same fence, started now, lease renewed to now + ttl_ms, hard deadline kept');
select is(sentinel.begin_v1('life', 'k1', :f1), false, 'begin_v1 a second time: false (already begun)');

-- begin_v1 on a claim whose lease lapsed: false, nothing changes.
call pg_temp.set_clock(0);
select fence as f2 from sentinel.acquire_v1('life', 'k2', 'w1', 1000, start => false) \gset
call pg_temp.set_clock(1000);
select pg_temp.snap('life', 'k2') as snap_k2 \gset
select is(sentinel.begin_v1('life', 'k2', :f2), false, 'begin_v1 on the own lapsed claim: false');
select is(pg_temp.snap('life', 'k2'), :'snap_k2'::jsonb, 'the lapsed claim is unchanged');

-- begin_v1 after a takeover: false for the old owner, true for the new one.
call pg_temp.set_clock(0);
select fence as f3a from sentinel.acquire_v1('life', 'k3', 'w1', 1000, start => false) \gset
call pg_temp.set_clock(1500);
select fence as f3b from sentinel.acquire_v1('life', 'k3', 'w2', 1000, start => false) \gset
select is(sentinel.begin_v1('life', 'k3', :f3a), false, 'begin_v1 with a taken-over claim: false, do not run');
select is(sentinel.begin_v1('life', 'k3', :f3b), true, 'begin_v1 by the new owner: true');

-- complete_v1: recorded, stored, replayed; a retry of the same call is already_recorded.
call pg_temp.set_clock(900);
select results_eq(
    format($$ select outcome, state, fence, now from sentinel.complete_v1('life', 'k1', %s, '{"charge": "ch_1"}') $$, :f1),
    format($$ values ('recorded', 'completed', %s::bigint, pg_temp.at(900)) $$, :f1),
    'complete_v1 by the owner: recorded');
select results_eq(
    $$ select state, response, error, finished_at, updated_at, owner
         from sentinel.executions where namespace = 'life' and key = 'k1' $$,
    $$ values ('completed', '{"charge": "ch_1"}'::jsonb, null::jsonb, pg_temp.at(900), pg_temp.at(900), 'w1') $$,
    'the response, finished_at and updated_at are stored');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('life', 'k1', 'w2', 1000) $$,
    $$ values ('completed', '{"charge": "ch_1"}'::jsonb) $$,
    'the next acquire replays the response');
select pg_temp.snap('life', 'k1') as snap_k1 \gset
call pg_temp.advance(50);
select is((sentinel.complete_v1('life', 'k1', :f1, '{"charge": "ch_2"}')).outcome, 'already_recorded',
          'complete_v1 again with the same fence: already_recorded');
select is(pg_temp.snap('life', 'k1'), :'snap_k1'::jsonb, 'the first response stands (the second one is ignored)');

-- The JSON value null is a response like any other (SQL NULL is refused, see 08-errors).
select fence as f4 from sentinel.acquire_v1('life', 'k4', 'w1', 1000) \gset
select is((sentinel.complete_v1('life', 'k4', :f4, 'null'::jsonb)).outcome, 'recorded', 'complete_v1 with JSON null: recorded');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('life', 'k4', 'w2', 1000) $$,
    $$ values ('completed', 'null'::jsonb) $$,
    'JSON null is replayed as JSON null, not as a missing response');

-- fail_v1: recorded and stored; a retry of the same call is already_recorded.
call pg_temp.set_clock(10000);
select fence as f5 from sentinel.acquire_v1('life', 'k5', 'w1', 1000) \gset
call pg_temp.advance(20);
select results_eq(
    format($$ select outcome, state, fence from sentinel.fail_v1('life', 'k5', %s, '{"type": "ValueError"}') $$, :f5),
    format($$ values ('recorded', 'failed', %s::bigint) $$, :f5),
    'fail_v1 by the owner: recorded');
select results_eq(
    $$ select state, error, error_permanent, response, finished_at from sentinel.executions where namespace = 'life' and key = 'k5' $$,
    $$ values ('failed', '{"type": "ValueError"}'::jsonb, false, null::jsonb, pg_temp.at(10020)) $$,
    'the error is stored, retryable by default');
select is((sentinel.fail_v1('life', 'k5', :f5, '{"type": "ValueError"}')).outcome, 'already_recorded',
          'fail_v1 again with the same fence: already_recorded');
select pg_temp.snap('life', 'k5') as snap_k5 \gset
select isnt((sentinel.complete_v1('life', 'k5', :f5, '{"late": true}')).outcome, 'recorded',
            'complete_v1 after fail_v1 with the same fence is not recorded');
select is(pg_temp.snap('life', 'k5'), :'snap_k5'::jsonb, 'the recorded failure stands');

-- fail_v1 on a claim that never began (preparation failed): recorded, the key is claimed again later.
select fence as f6 from sentinel.acquire_v1('life', 'k6', 'w1', 1000, start => false) \gset
select is((sentinel.fail_v1('life', 'k6', :f6, '{"prepare": "failed"}')).outcome, 'recorded', 'fail_v1 on a claim that never began: recorded');
select results_eq(
    $$ select outcome, state, attempt from sentinel.acquire_v1('life', 'k6', 'w2', 1000) $$,
    $$ values ('acquired', 'executing', 2) $$,
    'the next acquire claims the key again (attempt 2)');

-- abandon_v1 of an execution: uncertain with the reason (the function may have had effects).
call pg_temp.set_clock(20000);
select fence as f7 from sentinel.acquire_v1('life', 'k7', 'w1', 60000) \gset
call pg_temp.advance(5);
select results_eq(
    format($$ select outcome, state, fence, now from sentinel.abandon_v1('life', 'k7', %s, 'KeyboardInterrupt') $$, :f7),
    format($$ values ('uncertain', 'uncertain', %s::bigint, pg_temp.at(20005)) $$, :f7),
    'abandon_v1 while executing: uncertain');
select results_eq(
    $$ select state, uncertain_reason, updated_at, lease_expires_at from sentinel.executions where namespace = 'life' and key = 'k7' $$,
    $$ values ('uncertain', 'KeyboardInterrupt', pg_temp.at(20005), pg_temp.at(80000)) $$,
    'the reason is stored as uncertain_reason');
select results_eq(
    $$ select outcome, fence from sentinel.acquire_v1('life', 'k7', 'w2', 1000) $$,
    format($$ values ('uncertain', %s::bigint) $$, :f7),
    'the next caller gets uncertain at once, without waiting for the lease');

-- abandon_v1 of a claim that never began: released; the next acquire takes over at once.
select fence as f8 from sentinel.acquire_v1('life', 'k8', 'w1', 60000, start => false) \gset
select results_eq(
    format($$ select outcome, state, fence from sentinel.abandon_v1('life', 'k8', %s, 'config missing') $$, :f8),
    format($$ values ('released', 'claimed', %s::bigint) $$, :f8),
    'abandon_v1 of a claim: released');
select is((select lease_expires_at from sentinel.executions where namespace = 'life' and key = 'k8'), pg_temp.at(20005),
          'the released claim''s lease ends now');
select results_eq(
    $$ select outcome, owner, attempt from sentinel.acquire_v1('life', 'k8', 'w2', 1000, start => false) $$,
    $$ values ('acquired', 'w2', 2) $$,
    'the next acquire, at the same instant, takes the released claim over');
select cmp_ok(pg_temp.fence_of('life', 'k8'), '>', :f8::bigint, 'with a larger fence');

-- abandon_v1 of a finished execution: stale, nothing changes.
select pg_temp.snap('life', 'k1') as snap_k1 \gset
select results_eq(
    format($$ select outcome, state, fence from sentinel.abandon_v1('life', 'k1', %s, 'too late') $$, :f1),
    format($$ values ('stale', 'completed', %s::bigint) $$, :f1),
    'abandon_v1 of a completed execution: stale');
select is(pg_temp.snap('life', 'k1'), :'snap_k1'::jsonb, 'the completed row is unchanged');

-- A late complete by the original owner of an uncertain execution whose fence is still current.
call pg_temp.set_clock(30000);
select fence as f9 from sentinel.acquire_v1('life', 'k9', 'w1', 1000) \gset
call pg_temp.advance(1000);
select is((sentinel.acquire_v1('life', 'k9', 'w2', 1000)).outcome, 'uncertain', 'k9: the lease lapsed, a caller saw uncertain');
call pg_temp.advance(4000);
select results_eq(
    format($$ select outcome, state, fence from sentinel.complete_v1('life', 'k9', %s, '{"late": "but true"}') $$, :f9),
    format($$ values ('recorded', 'completed', %s::bigint) $$, :f9),
    'the original owner completes late with its still-current fence: recorded');
select results_eq(
    $$ select outcome, state, response from sentinel.acquire_v1('life', 'k9', 'w2', 1000) $$,
    $$ values ('completed', 'completed', '{"late": "but true"}'::jsonb) $$,
    'from then on the late response is replayed');

-- A late fail of an uncertain execution whose fence is still current: the function may have had
-- effects before it raised, so the key stays uncertain (12-late-failure.sql has the whole rule).
select fence as f10 from sentinel.acquire_v1('life', 'k10', 'w1', 1000) \gset
select is((sentinel.abandon_v1('life', 'k10', :f10, 'lost connection')).outcome, 'uncertain', 'k10: abandoned while executing');
select results_eq(
    format($$ select outcome, state from sentinel.fail_v1('life', 'k10', %s, '{"type": "Timeout"}', true) $$, :f10),
    $$ values ('uncertain', 'uncertain') $$,
    'the original owner reports the failure late: the key stays uncertain');
select results_eq(
    $$ select outcome, error from sentinel.acquire_v1('life', 'k10', 'w2', 1000) $$,
    $$ values ('uncertain', '{"type": "Timeout"}'::jsonb) $$,
    'and the next caller is told uncertain, with the late error as evidence');

select * from finish();
rollback;
