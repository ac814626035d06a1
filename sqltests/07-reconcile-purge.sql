-- 07-reconcile-purge: the operator's resolution of stuck keys, and retention.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(26);
\ir _clock.psql

-- reconcile completed on an uncertain key: new fence, response stored, who/when/why recorded, replayed.
select fence as f_u1 from sentinel.acquire_v1('rec', 'u1', 'w1', 60000) \gset
select (sentinel.abandon_v1('rec', 'u1', :f_u1, 'SIGKILL')).outcome as abandoned_u1 \gset
call pg_temp.set_clock(1000);
select results_eq(
    $$ select previous_state, state, previous_fence, now
         from sentinel.reconcile_v1('rec', 'u1', 'completed', 'ops:alice', 'charge ch_9 seen in the PSP', response => '{"charge": "ch_9"}') $$,
    format($$ values ('uncertain', 'completed', %s::bigint, pg_temp.at(1000)) $$, :f_u1),
    'reconcile completed: previous state uncertain, now completed');
select cmp_ok(pg_temp.fence_of('rec', 'u1'), '>', :f_u1::bigint, 'the reconcile took a strictly larger fence');
select results_eq(
    $$ select state, response, error, error_permanent, owner, finished_at, lease_expires_at,
              reconciled_by, reconciled_at, reconcile_reason, updated_at
         from sentinel.executions where namespace = 'rec' and key = 'u1' $$,
    $$ values ('completed', '{"charge": "ch_9"}'::jsonb, null::jsonb, false, null::text, pg_temp.at(1000), pg_temp.at(1000),
               'ops:alice', pg_temp.at(1000), 'charge ch_9 seen in the PSP', pg_temp.at(1000)) $$,
    'stored: response, no owner, lease ended, reconciled_by/at/reason recorded');
select results_eq(
    $$ select outcome, fence, response from sentinel.acquire_v1('rec', 'u1', 'w2', 1000) $$,
    format($$ values ('completed', %s::bigint, '{"charge": "ch_9"}'::jsonb) $$, pg_temp.fence_of('rec', 'u1')),
    'the reconciled response is replayed');

-- reconcile failed: replayed as a permanent failure (default error document, or the given one).
select fence as f_u2 from sentinel.acquire_v1('rec', 'u2', 'w1', 60000) \gset
select (sentinel.abandon_v1('rec', 'u2', :f_u2, 'SIGKILL')).outcome as abandoned_u2 \gset
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('rec', 'u2', 'failed', 'ops:bob', 'never reached the PSP') $$,
    $$ values ('uncertain', 'failed') $$,
    'reconcile failed: previous state uncertain, now failed');
select results_eq(
    $$ select outcome, state, error from sentinel.acquire_v1('rec', 'u2', 'w2', 1000) $$,
    $$ values ('failed', 'failed', '{"reconciled": true, "reason": "never reached the PSP"}'::jsonb) $$,
    'reconciled as failed: replayed as outcome failed with the default error document');
select fence as f_u3 from sentinel.acquire_v1('rec', 'u3', 'w1', 60000) \gset
select (sentinel.abandon_v1('rec', 'u3', :f_u3, 'SIGKILL')).outcome as abandoned_u3 \gset
select (sentinel.reconcile_v1('rec', 'u3', 'failed', 'ops:bob', 'refunded', error => '{"code": "refunded"}')).state as rec_u3 \gset
select results_eq(
    $$ select outcome, error from sentinel.acquire_v1('rec', 'u3', 'w2', 1000) $$,
    $$ values ('failed', '{"code": "refunded"}'::jsonb) $$,
    'the explicit error is replayed');

-- reconcile release: a retryable failure; the next acquire claims the key again.
select fence as f_u4 from sentinel.acquire_v1('rec', 'u4', 'w1', 60000) \gset
select (sentinel.abandon_v1('rec', 'u4', :f_u4, 'SIGKILL')).outcome as abandoned_u4 \gset
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('rec', 'u4', 'release', 'ops:carol', 'safe to retry') $$,
    $$ values ('uncertain', 'failed') $$,
    'reconcile release: previous state uncertain, now failed (retryable)');
select results_eq(
    $$ select state, error, error_permanent, reconciled_by, reconcile_reason from sentinel.inspect_v1('rec', 'u4') $$,
    $$ values ('failed', '{"released": true, "reason": "safe to retry"}'::jsonb, false, 'ops:carol', 'safe to retry') $$,
    'stored as a retryable failure with the reason');
select fence as f_u4r from sentinel.executions where namespace = 'rec' and key = 'u4' \gset
select results_eq(
    $$ select outcome, state, attempt, owner from sentinel.acquire_v1('rec', 'u4', 'w2', 1000) $$,
    $$ values ('acquired', 'executing', 2, 'w2') $$,
    'after release the next acquire claims the key again (attempt 2)');
select cmp_ok(pg_temp.fence_of('rec', 'u4'), '>', :f_u4r::bigint, 'with a fence larger than the reconcile''s');

-- Other stuck states accepted without force: a lapsed execution, a failure, a lapsed claim.
call pg_temp.set_clock(10000);
select (sentinel.acquire_v1('rec', 'u5', 'w1', 1000)).outcome as acq_u5 \gset
select fence as f_u6 from sentinel.acquire_v1('rec', 'u6', 'w1', 1000) \gset
select (sentinel.fail_v1('rec', 'u6', :f_u6, '{"e": "transient"}')).outcome as fail_u6 \gset
select (sentinel.acquire_v1('rec', 'u7', 'w1', 1000, start => false)).outcome as acq_u7 \gset
call pg_temp.set_clock(11000);
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('rec', 'u5', 'completed', 'ops', 'verified', response => '"ok"')
       union all
       select previous_state, state from sentinel.reconcile_v1('rec', 'u6', 'completed', 'ops', 'verified', response => '"ok"')
       union all
       select previous_state, state from sentinel.reconcile_v1('rec', 'u7', 'release', 'ops', 'worker gone') $$,
    $$ values ('uncertain', 'completed'), ('failed', 'completed'), ('claimed', 'failed') $$,
    'accepted: a lapsed execution (effective state uncertain), a failure, a lapsed claim');
select is((sentinel.acquire_v1('rec', 'u7', 'w2', 1000)).outcome, 'acquired', 'the released claim is claimed again');

-- Refused without force (SN008): a live execution, a live claim, a completed key.
select (sentinel.acquire_v1('rec', 'live-exec', 'w1', 60000)).outcome as acq_live_exec,
       (sentinel.acquire_v1('rec', 'live-claim', 'w1', 60000, start => false)).outcome as acq_live_claim \gset
select throws_ok(
    $$ select sentinel.reconcile_v1('rec', 'live-exec', 'completed', 'ops', 'hurry', response => '1') $$,
    'SN008', 'sentinel: rec/live-exec is executing (not uncertain, failed or a lapsed claim); pass force => true to override',
    'reconcile of a live execution without force: SN008');
select throws_ok(
    $$ select sentinel.reconcile_v1('rec', 'live-claim', 'release', 'ops', 'hurry') $$,
    'SN008', 'sentinel: rec/live-claim is claimed (not uncertain, failed or a lapsed claim); pass force => true to override',
    'reconcile of a live claim without force: SN008');
select throws_ok(
    $$ select sentinel.reconcile_v1('rec', 'u1', 'failed', 'ops', 'hurry') $$,
    'SN008', 'sentinel: rec/u1 is completed (not uncertain, failed or a lapsed claim); pass force => true to override',
    'reconcile of a completed key without force: SN008');

-- Accepted with force; the running owner is fenced out.
select fence as f_live from sentinel.executions where namespace = 'rec' and key = 'live-exec' \gset
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('rec', 'live-exec', 'completed', 'ops', 'forced', response => '{"forced": true}', force => true) $$,
    $$ values ('executing', 'completed') $$,
    'reconcile of a live execution with force: accepted');
select results_eq(
    format($$ select h.alive, c.outcome from sentinel.heartbeat_v1('rec', 'live-exec', %1$s) h, sentinel.complete_v1('rec', 'live-exec', %1$s, '{"mine": true}') c $$, :f_live),
    $$ values (false, 'stale') $$,
    'the fenced-out owner: heartbeat alive false, complete stale');
select results_eq(
    $$ select response, lease_expires_at from sentinel.executions where namespace = 'rec' and key = 'live-exec' $$,
    $$ values ('{"forced": true}'::jsonb, pg_temp.at(11000)) $$,
    'the forced response stands and the lease ended at the reconcile');
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('rec', 'u1', 'completed', 'ops', 'corrected', response => '{"charge": "ch_10"}', force => true) $$,
    $$ values ('completed', 'completed') $$,
    'reconcile of a completed key with force: accepted');
select results_eq(
    $$ select response, reconcile_reason from sentinel.executions where namespace = 'rec' and key = 'u1' $$,
    $$ values ('{"charge": "ch_10"}'::jsonb, 'corrected') $$,
    'the corrected response and the new reason are stored');

-- purge_v1: only completed/failed rows finished at or before the cutoff, in batches, in its namespace.
call pg_temp.set_clock(0);
-- Rows in every state, written directly (the owner marks the transaction as a writer; no events needed here).
set local sentinel.writer = 'protocol';
insert into sentinel.executions (namespace, key, state, fence, owner, attempt, ttl_ms, claimed_at, started_at,
                                 lease_expires_at, hard_expires_at, finished_at, response, error, error_permanent, updated_at)
select 'pur', k, s, nextval('sentinel.fence_seq'), 'w', 1, 1000, pg_temp.at(0), pg_temp.at(0),
       pg_temp.at(fin), pg_temp.at(100000), case when s in ('completed', 'failed') then pg_temp.at(fin) end,
       case when s = 'completed' then '{}'::jsonb end, case when s = 'failed' then '{}'::jsonb end, k = 'p1', pg_temp.at(fin)
  from (values ('c1', 'completed', 0), ('c2', 'completed', 100), ('c3', 'completed', 200), ('f1', 'failed', 300),
               ('p1', 'failed', 400), ('c4', 'completed', 5000), ('u1', 'uncertain', 0), ('e1', 'executing', 0),
               ('cl', 'claimed', 0)) v(k, s, fin);
reset sentinel.writer;
-- pur-other/c1: completed at 0 in another namespace.
select (sentinel.complete_v1('pur-other', 'c1', (sentinel.acquire_v1('pur-other', 'c1', 'w', 1000)).fence, '{}')).outcome as other_c1 \gset
call pg_temp.set_clock(10000);
select results_eq(
    $$ select sentinel.purge_v1('pur', 5001, 2) union all select sentinel.purge_v1('pur', 5001, 2)
       union all select sentinel.purge_v1('pur', 5001, 2) union all select sentinel.purge_v1('pur', 5001, 2) $$,
    $$ values (2::bigint), (2::bigint), (1::bigint), (0::bigint) $$,
    'purge in batches of 2: 2, 2, 1, then 0 (five rows finished at or before 4999)');
select results_eq(
    $$ select key::text from sentinel.executions where namespace = 'pur' order by key $$,
    $$ values ('c4'), ('cl'), ('e1'), ('u1') $$,
    'left: the young completed row and every unfinished row');
select is(sentinel.purge_v1('pur', 5000), 1::bigint, 'the cutoff is inclusive: finished exactly 5000 ms ago is purged by 5000');
select is(sentinel.purge_v1('pur', 0), 0::bigint, 'claimed, executing and uncertain rows are never purged, however old');
select results_eq($$ select key, state, finished_at from sentinel.executions where namespace = 'pur-other' $$,
                  $$ values ('c1', 'completed', pg_temp.at(0)) $$,
                  'the other namespace is untouched (its old completed row stays)');

select * from finish();
rollback;
