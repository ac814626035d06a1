-- 11-events: the append-only event log. Every transition of an execution record
-- writes exactly one event in the same transaction; renewals and replays write
-- none; nobody changes or deletes events except purge_events_v1.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(16);
\ir _clock.psql

create function pg_temp.chain(ns text, k text) returns text[]
    language sql stable
    as $$ select coalesce(array_agg(coalesce(from_state, '-') || '>' || to_state || '@' || fence || ':' ||
                                     coalesce(actor, '') || ':' || coalesce(reason, '') order by id), '{}')
            from sentinel.events where namespace = ns and key = k $$;

-- A fresh run: one event for the claim, one for the completion.
select fence as f1 from sentinel.acquire_v1('ev', 'run', 'w1', 1000, 5000) \gset
call pg_temp.advance(300);
select alive from sentinel.heartbeat_v1('ev', 'run', :f1) \gset
select is(:'alive'::text, 't', 'the heartbeat renewed the lease');
select is(pg_temp.chain('ev', 'run'), array[format('->executing@%s:w1:', :f1)],
          'the claim is one event; a heartbeat writes none');
select outcome from sentinel.complete_v1('ev', 'run', :f1, '{"ok": 1}') \gset
select outcome as replay from sentinel.acquire_v1('ev', 'run', 'w2', 1000) \gset
select is(:'replay'::text, 'completed', 'replayed');
select is(pg_temp.chain('ev', 'run'),
          array[format('->executing@%s:w1:', :f1), format('executing>completed@%s:w1:', :f1)],
          'the completion is one event; the replay writes none');
select is((select at from sentinel.events where namespace = 'ev' and key = 'run' order by id desc limit 1),
          pg_temp.at(300), 'events carry the database clock of the transition');

-- Claim, begin, lapse, takeover: each a transition of its own.
select fence as c1 from sentinel.acquire_v1('ev', 'claim', 'w1', 1000, start => false) \gset
call pg_temp.advance(2000);
select fence as c2 from sentinel.acquire_v1('ev', 'claim', 'w2', 1000, start => false) \gset
select sentinel.begin_v1('ev', 'claim', :c2) \gset
select is(pg_temp.chain('ev', 'claim'),
          array[format('->claimed@%s:w1:', :c1), format('claimed>claimed@%s:w2:', :c2),
                format('claimed>executing@%s:w2:', :c2)],
          'claim, takeover under a new fence, begin');
select is((select details->>'previous_fence' from sentinel.events
            where namespace = 'ev' and key = 'claim' and fence = :c2 and from_state = 'claimed'
              and to_state = 'claimed'), :'c1', 'the takeover names the previous fence');

-- Uncertain (lease lapsed, met by a caller), then a reconcile by an operator.
call pg_temp.advance(2000);
select outcome as unc from sentinel.acquire_v1('ev', 'claim', 'w3', 1000) \gset
select is(:'unc'::text, 'uncertain', 'the lapsed execution reads uncertain');
select fence as c3 from sentinel.reconcile_v1('ev', 'claim', 'completed', 'alice@ops', 'found it', '{"r": 1}') \gset
select is((pg_temp.chain('ev', 'claim'))[4:5],
          array[format('executing>uncertain@%s:w2:lease expired', :c2),
                format('uncertain>completed@%s:alice@ops:found it', :c3)],
          'marking uncertain and the reconcile are one event each, with actor and reason');
select ok((select (details->>'reconciled')::boolean from sentinel.events
            where namespace = 'ev' and key = 'claim' and fence = :c3), 'the reconcile is flagged');

-- A failure, marked permanent.
select fence as p1 from sentinel.acquire_v1('ev', 'perm', 'w1', 1000) \gset
select outcome from sentinel.fail_v1('ev', 'perm', :p1, '{"e": 1}', true) \gset
select is((select details->>'permanent' from sentinel.events where namespace = 'ev' and key = 'perm'
            and to_state = 'failed'), 'true', 'a permanent failure is flagged');

-- Append-only, even for the owner; only purge_events_v1 deletes.
select throws_ok($$ update sentinel.events set reason = 'edited' $$, 'SN013', NULL, 'no UPDATE of events');
select throws_ok($$ delete from sentinel.events $$, 'SN013', NULL, 'no DELETE of events');
select throws_ok($$ truncate sentinel.events $$, 'SN013', NULL, 'no TRUNCATE of events');
call pg_temp.advance(60000);
select fence as n1 from sentinel.acquire_v1('ev', 'new', 'w1', 1000) \gset
select count(*) as old_events from sentinel.events where at <= pg_temp.at(34300) \gset
select count(*) as all_events from sentinel.events \gset
select results_eq($$ select sentinel.purge_events_v1(30000) $$, format('values (%s::bigint)', :old_events),
                  'purge_events_v1 deletes the events older than the retention');
select is((select count(*) from sentinel.events), (:all_events - :old_events)::bigint,
          'and keeps the newer ones');

select * from finish();
rollback;
