-- 16-size-caps: responses and errors over their cap in sentinel.limits are
-- refused (SN015) before anything is written; list_v2 leaves bodies out.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(11);
\ir _clock.psql

update sentinel.limits set value = 4096 where name = 'max_response_bytes';
update sentinel.limits set value = 2048 where name = 'max_error_bytes';

select fence as f from sentinel.acquire_v1('cap', 'big', 'w', 60000) \gset
select pg_temp.snap('cap', 'big') as before \gset
select throws_ok(
    format($$ select sentinel.complete_v2('cap', 'big', %s, jsonb_build_object('blob', repeat('x', 5000))) $$, :f),
    'SN015', NULL, 'a response over max_response_bytes: SN015');
select is(pg_temp.snap('cap', 'big'), :'before'::jsonb, 'and nothing was written');
select throws_ok(
    format($$ select sentinel.fail_v1('cap', 'big', %s, jsonb_build_object('message', repeat('e', 3000))) $$, :f),
    'SN015', NULL, 'an error over max_error_bytes: SN015');
select is(pg_temp.snap('cap', 'big'), :'before'::jsonb, 'and nothing was written');
select is((sentinel.complete_v2('cap', 'big', :f, jsonb_build_object('blob', repeat('x', 3000)))).outcome, 'recorded',
          'a response under the cap is recorded');
select is((sentinel.acquire_v1('cap', 'big', 'w2', 60000)).response ->> 'blob', repeat('x', 3000),
          'and replayed whole');

-- A compressible document is measured as stored (pg_column_size), not as text.
select fence as g from sentinel.acquire_v1('cap', 'small', 'w', 60000) \gset
select is((sentinel.complete_v1('cap', 'small', :g, '{"ok": true}')).outcome, 'recorded', 'small documents pass');

select throws_ok($$ update sentinel.limits set value = 10 where name = 'max_response_bytes' $$, '23514', NULL,
                 'a cap under 1 KiB is refused');

-- list_v2: no bodies unless asked.
select is((select count(*) from sentinel.list_v2('cap') where response is not null), 0::bigint,
          'list_v2 leaves the responses out');
select is((select count(*) from sentinel.list_v2('cap', bodies => true) where response is not null), 2::bigint,
          'bodies => true includes them');
select is((select count(*) from sentinel.list_v1('cap') where response is not null), 2::bigint,
          'list_v1 is unchanged');

select * from finish();
rollback;
