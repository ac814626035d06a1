-- 06-list: list_v1 by effective state, by age of the last change, bounded by
-- max_rows, oldest change first.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(10);
\ir _clock.psql

-- Setup, one key per second: a executing (live), b completed, c executing
-- whose lease lapses at 3000 (effective state uncertain), d claimed (live),
-- e failed permanently, f abandoned (stored uncertain).
do $$
begin
    perform sentinel.acquire_v1('lst', 'a', 'w', 100000);
    call pg_temp.set_clock(1000);
    perform sentinel.complete_v1('lst', 'b', (sentinel.acquire_v1('lst', 'b', 'w', 1000)).fence, '{"b": 1}');
    call pg_temp.set_clock(2000);
    perform sentinel.acquire_v1('lst', 'c', 'w', 1000);
    call pg_temp.set_clock(3000);
    perform sentinel.acquire_v1('lst', 'd', 'w', 100000, start => false);
    call pg_temp.set_clock(4000);
    perform sentinel.fail_v1('lst', 'e', (sentinel.acquire_v1('lst', 'e', 'w', 1000)).fence, '{"e": 1}', true);
    call pg_temp.set_clock(5000);
    perform sentinel.abandon_v1('lst', 'f', (sentinel.acquire_v1('lst', 'f', 'w', 1000)).fence, 'SIGTERM');
end
$$;
call pg_temp.set_clock(10000);

-- All rows, oldest change first, with the effective state.
select results_eq(
    $$ select key, state, stored_state, updated_at, now from sentinel.list_v1('lst') $$,
    $$ values ('a', 'executing', 'executing', pg_temp.at(0), pg_temp.at(10000)),
              ('b', 'completed', 'completed', pg_temp.at(1000), pg_temp.at(10000)),
              ('c', 'uncertain', 'executing', pg_temp.at(2000), pg_temp.at(10000)),
              ('d', 'claimed', 'claimed', pg_temp.at(3000), pg_temp.at(10000)),
              ('e', 'failed', 'failed', pg_temp.at(4000), pg_temp.at(10000)),
              ('f', 'uncertain', 'uncertain', pg_temp.at(5000), pg_temp.at(10000)) $$,
    'list_v1: every row of the namespace, oldest change first, effective state beside the stored one');

-- Filter by effective state.
select results_eq(
    $$ select key, stored_state, uncertain_reason from sentinel.list_v1('lst', state => 'uncertain') $$,
    $$ values ('c', 'executing', 'lease expired'), ('f', 'uncertain', 'SIGTERM') $$,
    'state uncertain: the lapsed execution (not yet marked) and the abandoned one');
select results_eq(
    $$ select key from sentinel.list_v1('lst', state => 'executing') $$,
    $$ values ('a') $$,
    'state executing: only the live execution');
select results_eq(
    $$ select key, response from sentinel.list_v1('lst', state => 'completed') $$,
    $$ values ('b', '{"b": 1}'::jsonb) $$,
    'state completed, with its response');

-- Filter by age of the last change (inclusive bound), and bound the result.
select results_eq(
    $$ select key from sentinel.list_v1('lst', older_than_ms => 7000) $$,
    $$ values ('a'), ('b'), ('c'), ('d') $$,
    'older_than_ms 7000: rows last changed at or before 3000');
select results_eq(
    $$ select (select count(*) from sentinel.list_v1('lst', older_than_ms => 5000))::int,
              (select count(*) from sentinel.list_v1('lst', older_than_ms => 5001))::int $$,
    $$ values (6, 5) $$,
    'the age bound is inclusive: changed exactly 5000 ms ago is listed by 5000, not by 5001');
select results_eq(
    $$ select key from sentinel.list_v1('lst', state => 'uncertain', older_than_ms => 7000) $$,
    $$ values ('c') $$,
    'state and age combine');
select results_eq(
    $$ select key from sentinel.list_v1('lst', max_rows => 2) $$,
    $$ values ('a'), ('b') $$,
    'max_rows 2: the two oldest');

-- Nothing to list, and nothing written.
select is_empty($$ select * from sentinel.list_v1('lst-empty') $$, 'an empty namespace lists nothing');
select is((select state from sentinel.executions where namespace = 'lst' and key = 'c'), 'executing',
          'list_v1 wrote nothing (c is still stored as executing)');

select * from finish();
rollback;
