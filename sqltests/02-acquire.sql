-- 02-acquire: every row of the SPEC state table as acquire_v1 sees it, the
-- fingerprint check, and the promise that a replay writes nothing.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(38);
\ir _clock.psql

-- How many transaction ids this backend holds: every (sub)transaction that is
-- given an id holds a lock on it (locktype transactionid) while it is open, so
-- it is counted inside the savepoint. Works on every supported version.
create function pg_temp.subxacts() returns integer
    language sql volatile
    as $$
    select count(*)::integer from pg_locks
     where pid = pg_backend_pid() and locktype = 'transactionid' and granted
$$;

-- The stored row with its system columns: ctid moves on any UPDATE, xmax is
-- set by any row lock (SELECT ... FOR UPDATE) as well as by UPDATE/DELETE.
create function pg_temp.snapx(ns text, k text) returns jsonb
    language sql stable
    as $$
    select to_jsonb(x) || jsonb_build_object('ctid', x.ctid::text, 'xmin', x.xmin::text, 'xmax', x.xmax::text)
      from sentinel.executions x
     where x.namespace = ns and x.key = k
$$;

-- (no row) -> acquired; start => true goes straight to executing.
select results_eq(
    $$ select outcome, state, attempt, response, error, claimed_at, lease_expires_at, hard_expires_at, owner, now
         from sentinel.acquire_v1('acq', 'fresh', 'w1', 1000) $$,
    $$ values ('acquired', 'executing', 1, null::jsonb, null::jsonb,
               pg_temp.at(0), pg_temp.at(1000), pg_temp.at(1000), 'w1', pg_temp.at(0)) $$,
    'no row: acquired, executing, attempt 1, lease and hard deadline (hard_ttl_ms defaults to ttl_ms) at now + 1000 ms');
select is(pg_temp.fence_of('acq', 'fresh'), (select last_value from sentinel.fence_seq),
          'the new claim carries the newest fence of fence_seq');
select results_eq(
    $$ select state, owner, attempt, ttl_ms, fingerprint, started_at, finished_at, updated_at
         from sentinel.executions where namespace = 'acq' and key = 'fresh' $$,
    $$ values ('executing', 'w1', 1, 1000::bigint, null::text, pg_temp.at(0), null::timestamptz, pg_temp.at(0)) $$,
    'the stored row: executing, started_at = claimed_at = now');

-- (no row) -> acquired; start => false only claims.
select results_eq(
    $$ select outcome, state, attempt, claimed_at, lease_expires_at, hard_expires_at
         from sentinel.acquire_v1('acq', 'c1', 'w1', 1000, hard_ttl_ms => 5000, start => false) $$,
    $$ values ('acquired', 'claimed', 1, pg_temp.at(0), pg_temp.at(1000), pg_temp.at(5000)) $$,
    'no row, start false: acquired, claimed, lease at +ttl_ms, hard deadline at +hard_ttl_ms');
select is((select started_at from sentinel.executions where namespace = 'acq' and key = 'c1'), null,
          'a claim that has not begun has no started_at');

-- claimed + live lease -> alive, nothing changes.
select fence as f_c1, pg_temp.snap('acq', 'c1') as snap_c1 from sentinel.executions where namespace = 'acq' and key = 'c1' \gset
call pg_temp.set_clock(999);
select results_eq(
    $$ select outcome, fence, state, owner, attempt, lease_expires_at from sentinel.acquire_v1('acq', 'c1', 'w2', 1000) $$,
    format($$ values ('alive', %s::bigint, 'claimed', 'w1', 1, pg_temp.at(1000)) $$, :f_c1),
    'claimed with a live lease (1 ms left): alive, with the holder''s fence and owner');
select is(pg_temp.snap('acq', 'c1'), :'snap_c1'::jsonb, 'alive changed nothing in the row');

-- claimed + lapsed lease -> taken over: new fence, attempt + 1.
call pg_temp.set_clock(1000);
select results_eq(
    $$ select outcome, state, owner, attempt, claimed_at, lease_expires_at, hard_expires_at
         from sentinel.acquire_v1('acq', 'c1', 'w2', 2000, start => false) $$,
    $$ values ('acquired', 'claimed', 'w2', 2, pg_temp.at(1000), pg_temp.at(3000), pg_temp.at(3000)) $$,
    'claimed whose lease lapsed exactly now: taken over by w2, attempt 2, fresh deadlines');
select cmp_ok(pg_temp.fence_of('acq', 'c1'), '>', :f_c1::bigint, 'the takeover took a strictly larger fence');

-- executing + live lease -> alive; executing + lapsed lease -> uncertain, never re-run.
select fence as f_e1 from sentinel.acquire_v1('acq', 'e1', 'w1', 1000) \gset
call pg_temp.set_clock(1999);
select results_eq(
    $$ select outcome, fence, state, owner from sentinel.acquire_v1('acq', 'e1', 'w2', 1000) $$,
    format($$ values ('alive', %s::bigint, 'executing', 'w1') $$, :f_e1),
    'executing with a live lease: alive');
call pg_temp.set_clock(2000);
select results_eq(
    $$ select outcome, fence, state, attempt, owner from sentinel.acquire_v1('acq', 'e1', 'w2', 1000) $$,
    format($$ values ('uncertain', %s::bigint, 'uncertain', 1, 'w1') $$, :f_e1),
    'executing whose lease lapsed: uncertain, same fence, not taken over');
select results_eq(
    $$ select state, uncertain_reason, updated_at, started_at from sentinel.executions where namespace = 'acq' and key = 'e1' $$,
    $$ values ('uncertain', 'lease expired', pg_temp.at(2000), pg_temp.at(1000)) $$,
    'the stored state became uncertain (reason lease expired)');
call pg_temp.set_clock(100000);
select results_eq(
    $$ select outcome, fence, state, attempt from sentinel.acquire_v1('acq', 'e1', 'w3', 1000) $$,
    format($$ values ('uncertain', %s::bigint, 'uncertain', 1) $$, :f_e1),
    'uncertain stays uncertain for every later caller (never re-run automatically)');

-- completed -> the stored response, replayed.
select fence as f_done from sentinel.acquire_v1('acq', 'done', 'w1', 1000) \gset
select is((sentinel.complete_v1('acq', 'done', :f_done, '{"amount": 9900, "ok": true}')).outcome, 'recorded', 'done: completed by w1');
call pg_temp.advance(5000);
select results_eq(
    $$ select outcome, fence, state, attempt, response, error, owner from sentinel.acquire_v1('acq', 'done', 'w2', 1000) $$,
    format($$ values ('completed', %s::bigint, 'completed', 1, '{"amount": 9900, "ok": true}'::jsonb, null::jsonb, 'w1') $$, :f_done),
    'completed: the stored response is replayed with the original fence');

-- failed (not permanent) -> a new claim: new fence, attempt + 1, old error cleared.
select fence as f_retry from sentinel.acquire_v1('acq', 'retry', 'w1', 1000) \gset
select is((sentinel.fail_v1('acq', 'retry', :f_retry, '{"msg": "boom"}')).outcome, 'recorded', 'retry: failed by w1 (retryable)');
call pg_temp.advance(10);
select results_eq(
    $$ select outcome, state, attempt, owner, response, error, claimed_at from sentinel.acquire_v1('acq', 'retry', 'w2', 1000) $$,
    $$ values ('acquired', 'executing', 2, 'w2', null::jsonb, null::jsonb, pg_temp.at(100000 + 5000 + 10)) $$,
    'failed (retryable): a new claim for the next caller, attempt 2');
select cmp_ok(pg_temp.fence_of('acq', 'retry'), '>', :f_retry::bigint, 'the retry took a strictly larger fence');
select results_eq(
    $$ select error, error_permanent, finished_at from sentinel.executions where namespace = 'acq' and key = 'retry' $$,
    $$ values (null::jsonb, false, null::timestamptz) $$,
    'the new attempt starts clean: no error, not finished');

-- failed permanent -> outcome failed with the error replayed.
select fence as f_perm from sentinel.acquire_v1('acq', 'perm', 'w1', 1000) \gset
select is((sentinel.fail_v1('acq', 'perm', :f_perm, '{"code": "card_declined"}', permanent => true)).outcome, 'recorded',
          'perm: failed permanently by w1');
select results_eq(
    $$ select outcome, fence, state, attempt, response, error from sentinel.acquire_v1('acq', 'perm', 'w2', 1000) $$,
    format($$ values ('failed', %s::bigint, 'failed', 1, null::jsonb, '{"code": "card_declined"}'::jsonb) $$, :f_perm),
    'failed permanently: outcome failed, the error replayed, no new claim');

-- Fingerprints: same -> normal; different -> mismatch revealing nothing; NULL on either side -> no check.
select fence as f_fp from sentinel.acquire_v1('acq', 'fp', 'w1', 1000, fingerprint => 'sha:aaa') \gset
select is((sentinel.complete_v1('acq', 'fp', :f_fp, '{"secret": 42}')).outcome, 'recorded', 'fp: completed under fingerprint sha:aaa');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('acq', 'fp', 'w2', 1000, fingerprint => 'sha:aaa') $$,
    $$ values ('completed', '{"secret": 42}'::jsonb) $$,
    'same fingerprint: the normal replay');
select results_eq(
    $$ select outcome, state, response, error from sentinel.acquire_v1('acq', 'fp', 'w2', 1000, fingerprint => 'sha:bbb') $$,
    $$ values ('mismatch', 'completed', null::jsonb, null::jsonb) $$,
    'different fingerprint: mismatch, and the stored response is not leaked');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('acq', 'fp', 'w2', 1000) $$,
    $$ values ('completed', '{"secret": 42}'::jsonb) $$,
    'caller without fingerprint: no check, the normal replay');
select fence as f_fpp from sentinel.acquire_v1('acq', 'fp-perm', 'w1', 1000, fingerprint => 'sha:aaa') \gset
select lives_ok(format($$ select sentinel.fail_v1('acq', 'fp-perm', %s, '{"secret": "card 4242"}', true) $$, :f_fpp),
                'fp-perm: failed permanently under sha:aaa');
select results_eq(
    $$ select outcome, response, error from sentinel.acquire_v1('acq', 'fp-perm', 'w2', 1000, fingerprint => 'sha:bbb') $$,
    $$ values ('mismatch', null::jsonb, null::jsonb) $$,
    'different fingerprint on a permanent failure: mismatch, the stored error is not leaked');
select fence as f_fpn from sentinel.acquire_v1('acq', 'fp-null', 'w1', 1000) \gset
select lives_ok(format($$ select sentinel.complete_v1('acq', 'fp-null', %s, '"v"') $$, :f_fpn), 'fp-null: completed without fingerprint');
select results_eq(
    $$ select outcome, response from sentinel.acquire_v1('acq', 'fp-null', 'w2', 1000, fingerprint => 'sha:zzz') $$,
    $$ values ('completed', '"v"'::jsonb) $$,
    'stored fingerprint NULL: no check, the normal replay');
select fence as f_fpr from sentinel.acquire_v1('acq', 'fp-retry', 'w1', 1000, fingerprint => 'sha:aaa') \gset
select is((sentinel.fail_v1('acq', 'fp-retry', :f_fpr, '{"msg": "retry me"}')).outcome, 'recorded', 'fp-retry: failed (retryable) under sha:aaa');
select results_eq(
    $$ select outcome, attempt from sentinel.acquire_v1('acq', 'fp-retry', 'w2', 1000) $$,
    $$ values ('acquired', 2) $$,
    'a retry without fingerprint claims again');
select is((select fingerprint from sentinel.executions where namespace = 'acq' and key = 'fp-retry'), 'sha:aaa',
          'the new claim keeps the stored fingerprint');
select results_eq(
    $$ select outcome, owner, response, error from sentinel.acquire_v1('acq', 'fp-retry', 'w3', 1000, fingerprint => 'sha:bbb') $$,
    $$ values ('mismatch', 'w2', null::jsonb, null::jsonb) $$,
    'a different fingerprint on a live execution: mismatch rather than alive');

-- A replay writes nothing.
--
-- pg_current_xact_id_if_assigned() cannot show it here: the setup above
-- already gave this (never committed) transaction an id. So the replays run in
-- a savepoint and we count the subtransactions that were given a transaction
-- id (each holds a transactionid lock). PostgreSQL assigns a (sub)transaction id
-- on the first INSERT/UPDATE/DELETE and on the first row lock (SELECT ... FOR
-- UPDATE); a count unchanged across the savepoint proves the replays wrote and
-- locked nothing at all. nextval() is the one write that takes the top-level
-- id instead, so fence_seq is compared as well, and the rows are compared with
-- their system columns (ctid, xmin, xmax). No pgTAP call runs inside the
-- savepoint (pgTAP writes its own temp tables).
call pg_temp.set_clock(200000);
select fence as f_alive from sentinel.acquire_v1('acq', 'alive', 'w1', 60000) \gset
select pg_temp.subxacts() as sx0,
       (select last_value from sentinel.fence_seq) as seq0,
       jsonb_build_array(pg_temp.snapx('acq', 'done'), pg_temp.snapx('acq', 'alive'),
                         pg_temp.snapx('acq', 'e1'), pg_temp.snapx('acq', 'perm')) as rows0 \gset
savepoint replay;
select (sentinel.acquire_v1('acq', 'done', 'r', 1000)).outcome as o_done,
       (sentinel.acquire_v1('acq', 'alive', 'r', 1000)).outcome as o_alive,
       (sentinel.acquire_v1('acq', 'e1', 'r', 1000)).outcome as o_unc,
       (sentinel.acquire_v1('acq', 'perm', 'r', 1000)).outcome as o_perm \gset
select pg_temp.subxacts() as sx1 \gset
release savepoint replay;
select
       (select last_value from sentinel.fence_seq) as seq1,
       jsonb_build_array(pg_temp.snapx('acq', 'done'), pg_temp.snapx('acq', 'alive'),
                         pg_temp.snapx('acq', 'e1'), pg_temp.snapx('acq', 'perm')) as rows1 \gset
select is(array[:'o_done', :'o_alive', :'o_unc', :'o_perm'], array['completed', 'alive', 'uncertain', 'failed'],
          'the replays answered completed, alive, uncertain and failed');
select is(:sx1, :sx0, 'the replays took no transaction id: no insert, update, delete or row lock');
select is(:seq1::bigint, :seq0::bigint, 'the replays drew no fence');
select is(:'rows1'::jsonb, :'rows0'::jsonb, 'the replayed rows are untouched (same ctid, xmin, xmax and values)');

-- Control: the same measurement does see a write (a takeover of a lapsed claim).
select fence as f_ctl from sentinel.acquire_v1('acq', 'control', 'w1', 1000, start => false) \gset
call pg_temp.advance(1000);
select pg_temp.subxacts() as sx2 \gset
savepoint takeover;
select (sentinel.acquire_v1('acq', 'control', 'w2', 1000)).outcome as o_ctl \gset
select pg_temp.subxacts() as sx3 \gset
release savepoint takeover;
select results_eq(
    format($$ select %s - %s, %L::text $$, :sx3, :sx2, :'o_ctl'),
    $$ values (1, 'acquired') $$,
    'control: a takeover run the same way is seen (one more subtransaction with an id)');

select * from finish();
rollback;
