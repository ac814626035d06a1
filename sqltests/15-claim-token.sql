-- 15-claim-token: acquire_v2 recognises a retry of the same call by its token
-- and gives it its claim back (same fence, nothing written); nobody else can.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(12);
\ir _clock.psql

\set t1 '''call-token-0000000001'''
\set t2 '''call-token-0000000002'''

select fence as f from sentinel.acquire_v2('tok', 'k', 'w1', 1000, token => :t1) \gset
select count(*) as n0 from sentinel.events where namespace = 'tok' \gset
call pg_temp.advance(500);
select results_eq(
    $$ select outcome, fence, state from sentinel.acquire_v2('tok', 'k', 'w1', 1000, token => 'call-token-0000000001') $$,
    format($$ values ('acquired'::text, %s::bigint, 'executing'::text) $$, :f),
    'the same token while the claim lives: acquired again, same fence');
select is((select count(*) from sentinel.events where namespace = 'tok'), :n0::bigint, 'and nothing was written');
select is((sentinel.acquire_v2('tok', 'k', 'w2', 1000, token => :t2)).outcome, 'alive', 'another token: alive');
select is((sentinel.acquire_v2('tok', 'k', 'w1', 1000)).outcome, 'alive', 'no token: alive');
select is((sentinel.acquire_v1('tok', 'k', 'w1', 1000)).outcome, 'alive', 'acquire_v1, even by the same owner: alive');
select is((sentinel.complete_v1('tok', 'k', :f, '"done"')).outcome, 'recorded', 'the claim completes');
select is((sentinel.acquire_v2('tok', 'k', 'w1', 1000, token => :t1)).outcome, 'completed',
          'the same token after completion: a replay');

-- A lapsed claim is not handed back: the function may have started.
select fence as g from sentinel.acquire_v2('tok', 'lapsed', 'w1', 1000, token => :t1) \gset
call pg_temp.advance(1000);
select is((sentinel.acquire_v2('tok', 'lapsed', 'w1', 1000, token => :t1)).outcome, 'uncertain',
          'the same token after the lease lapsed: uncertain, as for anyone');

-- The token is never shown.
select is((select count(*) from sentinel.inspect_v1('tok', 'k') i where to_jsonb(i)::text like '%call-token%'),
          0::bigint, 'inspect_v1 does not show the token');
select is((select count(*) from sentinel.events e where e.namespace = 'tok' and to_jsonb(e)::text like '%call-token%'),
          0::bigint, 'nor does the event log');

select throws_ok($$ select sentinel.acquire_v2('tok', 'x', 'w1', 1000, token => 'short') $$, 'SN004', NULL,
                 'a token under 16 characters: SN004');
select is((sentinel.acquire_v2('tok', 'y', 'w1', 1000)).outcome, 'acquired', 'no token: as acquire_v1');

select * from finish();
rollback;
