-- 04-leases-and-deadline: heartbeat_v1, the hard deadline (invariant 6), and
-- the effective state that inspect_v1 derives from a lapsed lease.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(29);
\ir _clock.psql

-- heartbeat_v1 renews the lease to now + ttl_ms ...
select fence as f1 from sentinel.acquire_v1('lease', 'h1', 'w1', 1000, hard_ttl_ms => 2500) \gset
call pg_temp.set_clock(300);
select results_eq(
    format($$ select alive, state, lease_expires_at, hard_expires_at, now from sentinel.heartbeat_v1('lease', 'h1', %s) $$, :f1),
    $$ values (true, 'executing', pg_temp.at(1300), pg_temp.at(2500), pg_temp.at(300)) $$,
    'heartbeat: alive, lease renewed to now + ttl_ms');
select results_eq(
    $$ select lease_expires_at, updated_at from sentinel.executions where namespace = 'lease' and key = 'h1' $$,
    $$ values (pg_temp.at(1300), pg_temp.at(300)) $$,
    'the renewed lease is stored');

-- ... but never past hard_expires_at: capped exactly at the hard deadline.
call pg_temp.set_clock(1200);
select results_eq(
    format($$ select alive, lease_expires_at from sentinel.heartbeat_v1('lease', 'h1', %s) $$, :f1),
    $$ values (true, pg_temp.at(2200)) $$,
    'heartbeat again before the lease lapses: lease at 2200');
call pg_temp.set_clock(1800);
select results_eq(
    format($$ select alive, lease_expires_at from sentinel.heartbeat_v1('lease', 'h1', %s) $$, :f1),
    $$ values (true, pg_temp.at(2500)) $$,
    'heartbeat near the hard deadline: lease capped at hard_expires_at (2500, not 2800)');
call pg_temp.set_clock(2499);
select results_eq(
    format($$ select alive, lease_expires_at from sentinel.heartbeat_v1('lease', 'h1', %s) $$, :f1),
    $$ values (true, pg_temp.at(2500)) $$,
    'heartbeat 1 ms before the hard deadline: still alive, lease still capped');

-- After the hard deadline: alive false, the execution becomes uncertain.
call pg_temp.set_clock(2500);
select results_eq(
    format($$ select alive, state, lease_expires_at, hard_expires_at, now from sentinel.heartbeat_v1('lease', 'h1', %s) $$, :f1),
    $$ values (false, 'uncertain', pg_temp.at(2500), pg_temp.at(2500), pg_temp.at(2500)) $$,
    'heartbeat at the hard deadline: alive false, state uncertain');
select results_eq(
    $$ select state, uncertain_reason, fence, updated_at from sentinel.executions where namespace = 'lease' and key = 'h1' $$,
    format($$ values ('uncertain', 'hard deadline passed', %s::bigint, pg_temp.at(2500)) $$, :f1),
    'stored: uncertain, reason hard deadline passed, fence unchanged');
select is((sentinel.acquire_v1('lease', 'h1', 'w2', 1000)).outcome, 'uncertain', 'the next caller gets uncertain');

-- A heartbeat after the lease lapsed (before the hard deadline): uncertain, reason lease expired.
call pg_temp.set_clock(0);
select fence as f2 from sentinel.acquire_v1('lease', 'h2', 'w1', 1000, hard_ttl_ms => 10000) \gset
call pg_temp.set_clock(1000);
select results_eq(
    format($$ select alive, state from sentinel.heartbeat_v1('lease', 'h2', %s) $$, :f2),
    $$ values (false, 'uncertain') $$,
    'heartbeat after the lease lapsed: alive false, uncertain');
select is((select uncertain_reason from sentinel.executions where namespace = 'lease' and key = 'h2'), 'lease expired',
          'stored reason: lease expired');

-- A whole run of heartbeats: no lease ever passes the hard deadline, and the
-- first heartbeat to fail is the one at the hard deadline.
create temp table beats (at_ms int, alive boolean, lease timestamptz, hard timestamptz);
call pg_temp.set_clock(0);
select fence as f_run from sentinel.acquire_v1('lease', 'run', 'w1', 700, hard_ttl_ms => 2000) \gset
do $$
declare
    f bigint := pg_temp.fence_of('lease', 'run');
    r sentinel.heartbeat_result_v1;
begin
    for ms in 100..3000 by 100 loop
        call pg_temp.set_clock(ms);
        r := sentinel.heartbeat_v1('lease', 'run', f);
        insert into pg_temp.beats values (ms, r.alive, r.lease_expires_at, r.hard_expires_at);
    end loop;
end
$$;
select results_eq(
    $$ select bool_and(lease <= hard), max(lease), min(at_ms) filter (where not alive),
              bool_and(alive) filter (where at_ms < 2000), bool_or(alive) filter (where at_ms >= 2000)
         from pg_temp.beats $$,
    $$ values (true, pg_temp.at(2000), 2000, true, false) $$,
    'heartbeats every 100 ms (ttl 700, hard 2000): alive until 1900, dead from 2000, lease never past 2000');
select is((select uncertain_reason from sentinel.executions where namespace = 'lease' and key = 'run'), 'hard deadline passed',
          'the run ended uncertain at the hard deadline');

-- hard_ttl_ms defaults to ttl_ms, and then a heartbeat cannot extend the lease at all.
call pg_temp.set_clock(0);
select fence as f3 from sentinel.acquire_v1('lease', 'h3', 'w1', 1000, hard_ttl_ms => null) \gset
select is((select hard_expires_at from sentinel.executions where namespace = 'lease' and key = 'h3'), pg_temp.at(1000),
          'hard_ttl_ms NULL: hard_expires_at = claimed_at + ttl_ms');
call pg_temp.set_clock(500);
select results_eq(
    format($$ select alive, lease_expires_at from sentinel.heartbeat_v1('lease', 'h3', %s) $$, :f3),
    $$ values (true, pg_temp.at(1000)) $$,
    'with hard = ttl a heartbeat keeps the lease at the hard deadline');

-- heartbeat_v1 of a claim: renews it; once lapsed, alive false and nothing changes (nothing ran).
call pg_temp.set_clock(0);
select fence as f4 from sentinel.acquire_v1('lease', 'h4', 'w1', 1000, hard_ttl_ms => 5000, start => false) \gset
call pg_temp.set_clock(500);
select results_eq(
    format($$ select alive, state, lease_expires_at from sentinel.heartbeat_v1('lease', 'h4', %s) $$, :f4),
    $$ values (true, 'claimed', pg_temp.at(1500)) $$,
    'heartbeat of a live claim: alive, lease renewed');
call pg_temp.set_clock(1500);
select pg_temp.snap('lease', 'h4') as snap_h4 \gset
select results_eq(
    format($$ select alive, state from sentinel.heartbeat_v1('lease', 'h4', %s) $$, :f4),
    $$ values (false, 'claimed') $$,
    'heartbeat of a lapsed claim: alive false, still claimed');
select is(pg_temp.snap('lease', 'h4'), :'snap_h4'::jsonb, 'the lapsed claim is not marked uncertain (nothing ran)');

-- begin_v1 renews the lease, capped at the hard deadline too.
call pg_temp.set_clock(0);
select fence as f5 from sentinel.acquire_v1('lease', 'h5', 'w1', 1000, hard_ttl_ms => 1500, start => false) \gset
call pg_temp.set_clock(900);
select is(sentinel.begin_v1('lease', 'h5', :f5), true, 'begin_v1 900 ms into a 1000 ms claim: true');
select results_eq(
    $$ select lease_expires_at, hard_expires_at from sentinel.executions where namespace = 'lease' and key = 'h5' $$,
    $$ values (pg_temp.at(1500), pg_temp.at(1500)) $$,
    'begin_v1 renews the lease to min(now + ttl_ms, hard_expires_at)');

-- Only the functions write the table: a direct update, even by the table owner, is refused (SN017) ...
select throws_ok(
    $$ update sentinel.executions set lease_expires_at = lease_expires_at where namespace = 'lease' and key = 'h5' $$,
    'SN017',
    'sentinel: UPDATE of sentinel.executions outside the Sentinel functions refused: the event log would miss the change',
    'a direct update of sentinel.executions is refused (SN017): it would change a record without its event');
-- ... unless the DBA marks the transaction as a writer, and the CHECK constraint still rejects a lease past the
-- hard deadline then.
set local sentinel.writer = 'protocol';
select throws_ok(
    $$ update sentinel.executions set lease_expires_at = hard_expires_at + interval '1 millisecond'
        where namespace = 'lease' and key = 'h5' $$,
    '23514',
    'new row for relation "executions" violates check constraint "executions_lease_within_hard_check"',
    'a direct update with lease_expires_at > hard_expires_at violates the CHECK constraint (23514)');
reset sentinel.writer;

-- inspect_v1: the effective state of an executing row whose lease lapsed is uncertain.
call pg_temp.set_clock(50000);
select fence as f6 from sentinel.acquire_v1('lease', 'h6', 'w1', 1000) \gset
call pg_temp.set_clock(50999);
select results_eq(
    $$ select state, stored_state, uncertain_reason, fence, owner, attempt, lease_expires_at, now
         from sentinel.inspect_v1('lease', 'h6') $$,
    format($$ values ('executing', 'executing', null::text, %s::bigint, 'w1', 1, pg_temp.at(51000), pg_temp.at(50999)) $$, :f6),
    'inspect_v1 of a live execution: executing');
call pg_temp.set_clock(51000);
select results_eq(
    $$ select state, stored_state, uncertain_reason from sentinel.inspect_v1('lease', 'h6') $$,
    $$ values ('uncertain', 'executing', 'lease expired') $$,
    'inspect_v1 once the lease lapsed: state uncertain, stored_state still executing');
select is((select state from sentinel.executions where namespace = 'lease' and key = 'h6'), 'executing',
          'inspect_v1 wrote nothing');
select results_eq(
    $$ select state, stored_state from sentinel.inspect_v1('lease', 'h4') $$,
    $$ values ('claimed', 'claimed') $$,
    'inspect_v1 of a lapsed claim: still claimed (it will be taken over, not uncertain)');
select results_eq(
    $$ select namespace, key, state, response, finished_at from sentinel.inspect_v1('lease', 'h1') $$,
    $$ values ('lease', 'h1', 'uncertain', null::jsonb, null::timestamptz) $$,
    'inspect_v1 of a stored uncertain execution');
select is_empty($$ select * from sentinel.inspect_v1('lease', 'no-such-key') $$, 'inspect_v1 of an unknown key: no row');

-- A late complete after the hard deadline is still accepted while the fence is current.
select is((sentinel.complete_v1('lease', 'h1', :f1, '{"done": 1}')).outcome, 'recorded',
          'the owner of h1 (uncertain after the hard deadline) completes late: recorded');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('lease', 'h1', 'w2', 1000) $$,
    $$ values ('completed', '{"done": 1}'::jsonb) $$,
    'and it is replayed');

select * from finish();
rollback;
