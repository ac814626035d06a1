-- 12-late-failure: a failure reported after the lease was lost never re-opens
-- the key. It stays uncertain, the error is kept as evidence, and only a
-- completion under the still-current fence or a reconcile resolves it.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(19);
\ir _clock.psql

-- A failure while the lease is valid: recorded, retryable, as before.
select fence as f0 from sentinel.acquire_v1('late', 'valid', 'w1', 1000) \gset
call pg_temp.advance(999);
select results_eq(
    format($$ select outcome, state from sentinel.fail_v1('late', 'valid', %s, '{"e": "boom"}') $$, :f0),
    $$ values ('recorded', 'failed') $$,
    'a failure 1 ms before the lease lapses: recorded, failed');
select is((sentinel.acquire_v1('late', 'valid', 'w2', 1000)).outcome, 'acquired', 'and the key runs again');

-- The execution was marked uncertain (a caller was told so), then its owner fails.
call pg_temp.set_clock(10000);
select fence as f1 from sentinel.acquire_v1('late', 'k1', 'w1', 1000) \gset
call pg_temp.advance(1000);
select is((sentinel.acquire_v1('late', 'k1', 'w2', 1000)).outcome, 'uncertain', 'k1: a caller was told uncertain');
call pg_temp.advance(50);
select results_eq(
    format($$ select outcome, state, fence from sentinel.fail_v1('late', 'k1', %s, '{"type": "LeaseLost"}') $$, :f1),
    format($$ values ('uncertain', 'uncertain', %s::bigint) $$, :f1),
    'the late fail_v1 answers uncertain');
select results_eq(
    $$ select state, error, uncertain_reason, error_permanent from sentinel.inspect_v1('late', 'k1') $$,
    $$ values ('uncertain', '{"type": "LeaseLost"}'::jsonb, 'lease expired', false) $$,
    'the key stays uncertain; the error is kept as evidence, the reason is unchanged');
select is((sentinel.acquire_v1('late', 'k1', 'w3', 1000)).outcome, 'uncertain', 'the next caller does not run it again');
select results_eq(
    $$ select from_state, to_state, details->>'late_failure', details->'error' from sentinel.events
        where namespace = 'late' and key = 'k1' order by id desc limit 1 $$,
    $$ values ('uncertain', 'uncertain', 'true', '{"type": "LeaseLost"}'::jsonb) $$,
    'the late failure is in the event log with its error');
select is((sentinel.fail_v1('late', 'k1', :f1, '{"type": "LeaseLost"}')).outcome, 'uncertain',
          'a retry of the late failure answers uncertain again');
select is((select count(*)::int from sentinel.events where namespace = 'late' and key = 'k1'
            and details ? 'late_failure'), 1, 'and logs nothing new');
select is((sentinel.fail_v2('late', 'k1', :f1, '{"e": 1}', true, 1000)).outcome, 'uncertain',
          'fail_v2, even permanent: uncertain');
select is((sentinel.inspect_v1('late', 'k1')).error_permanent, false, 'the late failure is never permanent');

-- A completion under the still-current fence resolves it: the truth is known.
select results_eq(
    format($$ select outcome, state from sentinel.complete_v2('late', 'k1', %s, '{"done": true}') $$, :f1),
    $$ values ('recorded', 'completed') $$,
    'the owner''s late completion with its current fence: recorded');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('late', 'k1', 'w3', 1000) $$,
    $$ values ('completed', '{"done": true}'::jsonb) $$,
    'and replayed');

-- The lease lapsed but nobody marked the row yet: the late failure marks it uncertain.
call pg_temp.set_clock(20000);
select fence as f2 from sentinel.acquire_v1('late', 'k2', 'w1', 1000) \gset
call pg_temp.advance(1500);
select results_eq(
    format($$ select outcome, state from sentinel.fail_v2('late', 'k2', %s, '{"type": "Timeout"}') $$, :f2),
    $$ values ('uncertain', 'uncertain') $$,
    'a fail after the lease lapsed, with the row still executing: uncertain');
select results_eq(
    $$ select stored_state, uncertain_reason, error from sentinel.inspect_v1('late', 'k2') $$,
    $$ values ('uncertain', 'lease expired', '{"type": "Timeout"}'::jsonb) $$,
    'stored uncertain, reason lease expired, error kept');

-- A reconcile resolves it.
select results_eq(
    $$ select previous_state, state from sentinel.reconcile_v1('late', 'k2', 'release', 'ops', 'provider shows nothing') $$,
    $$ values ('uncertain', 'failed') $$,
    'the operator''s reconcile releases it');
select is((sentinel.acquire_v1('late', 'k2', 'w2', 1000)).outcome, 'acquired', 'after the reconcile the key runs again');

-- A failure of a claim that never began is still recorded: nothing ran.
select fence as f3 from sentinel.acquire_v1('late', 'k3', 'w1', 1000, start => false) \gset
call pg_temp.advance(5000);
select is((sentinel.fail_v1('late', 'k3', :f3, '{"prepare": "failed"}')).outcome, 'recorded',
          'a lapsed claim that never began fails: recorded');

-- A stale fence is still stale.
select is((sentinel.fail_v1('late', 'k1', :f1 - 1, '{"x": 1}')).outcome, 'stale', 'a stale fence: stale');

select * from finish();
rollback;
