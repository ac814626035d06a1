-- 10-namespaces: invariant 8. The same key in two namespaces is two
-- independent records; no function acting on one namespace touches another.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(12);
\ir _clock.psql

-- The same key claimed in two namespaces: two records, two fences, two outcomes.
select fence as f_pay from sentinel.acquire_v1('payments', 'order-789', 'w1', 1000) \gset
select fence as f_mail from sentinel.acquire_v1('emails', 'order-789', 'w2', 1000, start => false) \gset
select results_eq(
    $$ select namespace, state, owner from sentinel.executions where key = 'order-789' order by namespace $$,
    $$ values ('emails', 'claimed', 'w2'), ('payments', 'executing', 'w1') $$,
    'acquire in the second namespace is a new claim, not alive');
select isnt(:f_pay::bigint, :f_mail::bigint, 'the two records have different fences');
select is((sentinel.complete_v1('emails', 'order-789', :f_pay, '{"wrong": "namespace"}')).outcome, 'stale',
          'a fence of payments is stale in emails');
select is((sentinel.complete_v1('payments', 'order-789', :f_pay, '{"charge": "ch_1"}')).outcome, 'recorded',
          'payments/order-789 completes');
select is((sentinel.fail_v1('emails', 'order-789', :f_mail, '{"smtp": 550}', true)).outcome, 'recorded',
          'emails/order-789 fails permanently');
select results_eq(
    $$ select (sentinel.acquire_v1('payments', 'order-789', 'w3', 1000)).outcome,
              (sentinel.acquire_v1('payments', 'order-789', 'w3', 1000)).response,
              (sentinel.acquire_v1('emails', 'order-789', 'w3', 1000)).outcome,
              (sentinel.acquire_v1('emails', 'order-789', 'w3', 1000)).error $$,
    $$ values ('completed', '{"charge": "ch_1"}'::jsonb, 'failed', '{"smtp": 550}'::jsonb) $$,
    'each namespace replays its own outcome');

-- Operators act on one namespace only.
select fence as f_u from sentinel.acquire_v1('payments', 'refund-1', 'w1', 1000) \gset
select fence as f_u2 from sentinel.acquire_v1('emails', 'refund-1', 'w1', 1000) \gset
call pg_temp.set_clock(5000);
select results_eq(
    $$ select key, state from sentinel.list_v1('payments') $$,
    $$ values ('order-789', 'completed'), ('refund-1', 'uncertain') $$,
    'list_v1 shows only its namespace');
select lives_ok($$ select sentinel.reconcile_v1('payments', 'refund-1', 'completed', 'ops', 'refund seen', response => '{"refund": "re_1"}') $$,
                'reconcile payments/refund-1');
select results_eq(
    $$ select state, stored_state, fence, reconciled_by from sentinel.inspect_v1('emails', 'refund-1') $$,
    format($$ values ('uncertain', 'executing', %s::bigint, null::text) $$, :f_u2),
    'emails/refund-1 is untouched by the reconcile in payments');
select is(sentinel.purge_v1('payments', 0), 2::bigint, 'purge in payments removes its two finished rows');
select results_eq(
    $$ select namespace, key, state from sentinel.executions where namespace in ('payments', 'emails') order by 1, 2 $$,
    $$ values ('emails', 'order-789', 'failed'), ('emails', 'refund-1', 'executing') $$,
    'the finished row of emails survives the purge of payments');
select throws_ok($$ select sentinel.reconcile_v1('payments', 'order-789', 'release', 'ops', 'x') $$,
                 'SN007', 'sentinel: no execution record for payments/order-789',
                 'a key purged in payments is gone there, while emails still has its own');

select * from finish();
rollback;
