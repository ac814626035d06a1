-- 18-batched-heartbeats: heartbeat_many_v1 gives each claim the answer, and
-- leaves each row as, heartbeat_v2 does (twin keys in the same state, one
-- renewed each way); the rights are checked once for the namespace; a row
-- another session holds locked is skipped and reported, without waiting.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

-- How this session reached the server, for the second session (dblink) that holds a row lock.
\getenv pghost PGHOST
\getenv pgport PGPORT
\getenv pguser PGUSER
\getenv pgpassword PGPASSWORD
\if :{?pghost}
\else
\set pghost ''
\endif
\if :{?pgport}
\else
\set pgport ''
\endif
\if :{?pguser}
\else
\set pguser ''
\endif
\if :{?pgpassword}
\else
\set pgpassword ''
\endif

begin;
select plan(26);
\ir _clock.psql

\set tok '''token-of-the-owner-000001'''
\set bad '''token-of-someone-else-01'''

-- Twins: for each case, 'v2-<case>' (renewed with heartbeat_v2) and 'many-<case>' (heartbeat_many_v1), claimed
-- alike at t = 0. fence: the fence each heartbeat presents; token: the token it presents.
create temp table twins (name text primary key, v2_fence bigint, many_fence bigint, token text);
create function pg_temp.twin(p_name text, p_ttl bigint, p_hard bigint, p_start boolean) returns void
    language sql
    as $$
    insert into pg_temp.twins
    select p_name,
           (sentinel.acquire_v2('hbm', 'v2-' || p_name, 'w1', p_ttl, p_hard, p_start, null,
                                'token-of-the-owner-000001')).fence,
           (sentinel.acquire_v2('hbm', 'many-' || p_name, 'w1', p_ttl, p_hard, p_start, null,
                                'token-of-the-owner-000001')).fence,
           'token-of-the-owner-000001'
$$;

call pg_temp.set_clock(0);
select pg_temp.twin('live', 1000, 10000, true);         -- renewed to now + ttl
select pg_temp.twin('token', 1000, 10000, true);        -- a live execution, asked with another token
select pg_temp.twin('capped', 1000, 1500, true);        -- renewed only up to the hard deadline
select pg_temp.twin('lapsed', 500, 10000, true);        -- the lease lapsed: uncertain, lease expired
select pg_temp.twin('hard', 500, 500, true);            -- the hard deadline passed: uncertain, hard deadline passed
select pg_temp.twin('claim', 500, 10000, false);        -- a claim (not begun) whose lease lapsed: lost, stays claimed
select pg_temp.twin('stale', 500, 10000, false);        -- a claim taken over: the old fence is stale
update pg_temp.twins set token = :bad where name = 'token';
insert into pg_temp.twins values ('none', 12345, 12345, :tok);  -- no record at all
call pg_temp.set_clock(600);
select sentinel.acquire_v2('hbm', 'v2-stale', 'w2', 10000, token => 'token-of-the-taker-00001') \g /dev/null
select sentinel.acquire_v2('hbm', 'many-stale', 'w2', 10000, token => 'token-of-the-taker-00001') \g /dev/null
select ok((select count(*) from pg_temp.twins t
            where pg_temp.fence_of('hbm', 'v2-' || t.name) is distinct from t.v2_fence) = 2,
          'the setup: the stale claims were taken over under new fences, and "none" has no record');

select pg_temp.snap('hbm', 'many-token') as snap_token, pg_temp.snap('hbm', 'many-stale') as snap_stale,
       pg_temp.snap('hbm', 'many-claim') as snap_claim \gset
select count(*) filter (where key like 'v2-%') as ev_v2, count(*) filter (where key like 'many-%') as ev_many
  from sentinel.events where namespace = 'hbm' \gset

call pg_temp.set_clock(900);
create temp table by_v2 as
select t.name, h.* from pg_temp.twins t, sentinel.heartbeat_v2('hbm', 'v2-' || t.name, t.v2_fence, t.token) h;
create temp table by_many as
select * from sentinel.heartbeat_many_v1(
    'hbm',
    (select array_agg('many-' || t.name order by t.name) from pg_temp.twins t),
    (select array_agg(t.many_fence order by t.name) from pg_temp.twins t),
    (select array_agg(t.token order by t.name) from pg_temp.twins t));

select results_eq(
    $$ select m.ord, m.key, m.outcome, m.state from by_many m order by m.ord $$,
    $$ values (1, 'many-capped'::text, 'renewed'::text, 'executing'::text), (2, 'many-claim', 'lost', 'claimed'),
              (3, 'many-hard', 'lost', 'uncertain'), (4, 'many-lapsed', 'lost', 'uncertain'),
              (5, 'many-live', 'renewed', 'executing'), (6, 'many-none', 'lost', null),
              (7, 'many-stale', 'lost', 'executing'), (8, 'many-token', 'lost', 'executing') $$,
    'one row per claim, in the order asked: renewed, or lost, with the state of the key now');
select results_eq(
    $$ select m.key, m.lease_expires_at, m.now from by_many m where m.outcome = 'renewed' order by 1 $$,
    $$ values ('many-capped'::text, pg_temp.at(1500), pg_temp.at(900)), ('many-live', pg_temp.at(1900), pg_temp.at(900)) $$,
    'a renewal: now + ttl_ms, never past the hard deadline');
select results_eq(
    $$ select v.name, v.alive, v.state, v.lease_expires_at, v.hard_expires_at, v.now from by_v2 v order by 1 $$,
    $$ select substr(m.key, 6), m.outcome = 'renewed', m.state, m.lease_expires_at, m.hard_expires_at, m.now
         from by_many m order by 1 $$,
    'each claim gets the answer heartbeat_v2 gives its twin');
select results_eq(
    $$ select substr(x.key, 4), x.state, x.uncertain_reason, x.lease_expires_at, x.hard_expires_at, x.updated_at,
              x.owner, x.attempt
         from sentinel.executions x where x.namespace = 'hbm' and x.key like 'v2-%' order by 1 $$,
    $$ select substr(x.key, 6), x.state, x.uncertain_reason, x.lease_expires_at, x.hard_expires_at, x.updated_at,
              x.owner, x.attempt
         from sentinel.executions x where x.namespace = 'hbm' and x.key like 'many-%' order by 1 $$,
    'and each row is left as heartbeat_v2 leaves its twin');
select results_eq(
    $$ select x.key, x.uncertain_reason from sentinel.executions x
        where x.namespace = 'hbm' and x.key like 'many-%' and x.state = 'uncertain' order by 1 $$,
    $$ values ('many-hard'::text, 'hard deadline passed'::text), ('many-lapsed', 'lease expired') $$,
    'a lapsed execution of the caller is marked uncertain, with the reason heartbeat_v2 gives');
select is((select count(*) filter (where key like 'many-%') - :ev_many from sentinel.events where namespace = 'hbm'),
          (select count(*) filter (where key like 'v2-%') - :ev_v2 from sentinel.events where namespace = 'hbm'),
          'the marking logs the same events');
select is((select count(*) from sentinel.events
            where namespace = 'hbm' and key like 'many-%' and to_state = 'uncertain'), 2::bigint,
          'one transition event per execution marked uncertain');
select is(pg_temp.snap('hbm', 'many-token'), :'snap_token'::jsonb, 'another token changes nothing');
select is(pg_temp.snap('hbm', 'many-stale'), :'snap_stale'::jsonb, 'a stale fence changes nothing');
select is(pg_temp.snap('hbm', 'many-claim'), :'snap_claim'::jsonb, 'a lapsed claim is not marked (nothing ran)');
select is((select count(*) from sentinel.heartbeat_many_v1('hbm', '{}', '{}', '{}')), 0::bigint,
          'no claims: no rows');

-- Misuse raises, as heartbeat_v2 does, naming the first bad element.
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', array['a', 'b'], array[1], array['token-of-the-owner-000001']) $$,
                 'SN006', null, 'arrays of different lengths: SN006');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', null, null, null) $$, 'SN006', null,
                 'NULL arrays: SN006');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', array_fill('k'::text, array[10001]),
                                                              array_fill(1::bigint, array[10001]),
                                                              array_fill('token-of-the-owner-000001'::text, array[10001])) $$,
                 'SN006', null, 'more than 10000 claims in one call: SN006');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', array['a', ''], array[1, 2], array['token-of-the-owner-000001', 'token-of-the-owner-000001']) $$,
                 'SN001', 'sentinel: key must be a non-empty text', 'an empty key: SN001');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('Bad NS', array['a'], array[1], array['token-of-the-owner-000001']) $$,
                 'SN002', null, 'a bad namespace: SN002');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', array['a'], array[1], array['short']) $$,
                 'SN004', null, 'a token under 16 characters: SN004');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('hbm', array['a'], array[0], array['token-of-the-owner-000001']) $$,
                 'SN005', null, 'a fence that is not positive: SN005');

-- The rights: the app right on the namespace, checked for the role acting.
create role hbm_pay nologin;
select sentinel.grant_v2('hbm_pay', 'payments') \g /dev/null
select ok(has_function_privilege('hbm_pay', 'sentinel.heartbeat_many_v1(text, text[], bigint[], text[])', 'execute'),
          'grant_v2 grants heartbeat_many_v1 with the app right');
set local role hbm_pay;
select fence as fp from sentinel.acquire_v2('payments', 'p-1', 'w1', 1000, 10000, token => :tok) \gset
select results_eq(
    format($$ select outcome from sentinel.heartbeat_many_v1('payments', array['p-1'], array[%s::bigint], array[%L]) $$,
           :fp, :tok),
    $$ values ('renewed'::text) $$, 'the app of payments renews its claims');
select throws_ok($$ select * from sentinel.heartbeat_many_v1('shipping', array['s-1'], array[1], array['token-of-the-owner-000001']) $$,
                 '42501', 'sentinel: role hbm_pay may not run the protocol in namespace ''shipping''',
                 'and may not call it in another namespace');
reset role;

-- A row another session holds locked: skipped without waiting, reported locked, nothing changed; the other
-- claims of the call are renewed. (The second session commits its own claim, on the real clock.)
create extension if not exists dblink;
select format('dbname=%s%s%s%s%s', quote_literal(current_database()),
              coalesce(' host=' || quote_literal(nullif(:'pghost', '')), ''),
              coalesce(' port=' || quote_literal(nullif(:'pgport', '')), ''),
              coalesce(' user=' || quote_literal(nullif(:'pguser', '')), ''),
              coalesce(' password=' || quote_literal(nullif(:'pgpassword', '')), '')) as conninfo,
       'locked-' || md5(random()::text) as lk \gset
select dblink_connect('locker', :'conninfo') \g /dev/null
select f as fl from dblink('locker', format($$ select fence from sentinel.acquire_v2('hbm-locked', %L, 'w1', 60000,
                                               token => 'token-of-the-owner-000001') $$, :'lk')) r(f bigint) \gset
select dblink_exec('locker', 'begin') \g /dev/null
select k from dblink('locker', format($$ select key from sentinel.executions
                                          where namespace = 'hbm-locked' and key = %L for update $$, :'lk')) r(k text) \g /dev/null
select fence as fm from sentinel.acquire_v2('hbm-locked', 'mine', 'w1', 60000, token => :tok) \gset
select pg_temp.snap('hbm-locked', :'lk') as snap_locked, clock_timestamp() as t0 \gset
select results_eq(
    format($$ select key, outcome, state from sentinel.heartbeat_many_v1('hbm-locked', array[%L, 'mine'],
                                                                         array[%s, %s]::bigint[], array[%L, %L]) $$,
           :'lk', :fl, :fm, :tok, :tok),
    format($$ values (%L::text, 'locked'::text, null::text), ('mine', 'renewed', 'executing') $$, :'lk'),
    'a row locked by another session: locked; the other claim of the call is renewed');
select ok(clock_timestamp() - :'t0'::timestamptz < interval '100 ms',
          'without waiting for the lock (heartbeat_v2 waits 100 ms)');
select is(pg_temp.snap('hbm-locked', :'lk'), :'snap_locked'::jsonb, 'and the locked row is unchanged');
select throws_ok(format($$ select sentinel.heartbeat_v2('hbm-locked', %L, %s, %L) $$, :'lk', :fl, :tok), '55P03',
                 null, 'heartbeat_v2 for the same claim waits for the lock, then gives up (lock timeout)');
select dblink_exec('locker', 'rollback') \g /dev/null
select dblink_exec('locker', format($$ delete from sentinel.executions where namespace = 'hbm-locked' and key = %L $$,
                                    :'lk')) \g /dev/null
select dblink_disconnect('locker') \g /dev/null

select * from finish();
rollback;
