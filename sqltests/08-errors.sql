-- 08-errors: misuse raises the documented SQLSTATE (class SN) with a clear
-- message, before anything is written or a fence is drawn.
\set ON_ERROR_STOP true
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

begin;
select plan(40);
\ir _clock.psql

-- The newest fence drawn so far (0 when fence_seq was never used).
select coalesce(pg_sequence_last_value('sentinel.fence_seq'), 0) as seq0 \gset

-- SN001: the key.
select throws_ok($$ select sentinel.acquire_v1('err', '', 'w', 1000) $$,
                 'SN001', 'sentinel: key must be a non-empty text', 'SN001: empty key');
select throws_ok(format($$ select sentinel.acquire_v1('err', %L, 'w', 1000) $$, repeat('k', 1025)),
                 'SN001', 'sentinel: key is 1025 bytes long; the maximum is 1024 bytes (UTF-8)', 'SN001: key of 1025 bytes');
select throws_ok(format($$ select sentinel.acquire_v1('err', %L, 'w', 1000) $$, repeat('é', 513)),
                 'SN001', 'sentinel: key is 1026 bytes long; the maximum is 1024 bytes (UTF-8)',
                 'SN001: key of 513 characters but 1026 bytes (the limit counts UTF-8 bytes)');
select lives_ok(format($$ select sentinel.acquire_v1('err', %L, 'w', 1000) $$, repeat('é', 512)),
                'a key of exactly 1024 bytes is accepted');

-- SN002: the namespace.
select throws_ok($$ select sentinel.acquire_v1('Payments', 'k', 'w', 1000) $$,
                 'SN002', 'sentinel: invalid namespace ''Payments'': use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
                 'SN002: uppercase namespace');
select throws_ok($$ select sentinel.acquire_v1('', 'k', 'w', 1000) $$,
                 'SN002', 'sentinel: invalid namespace '''': use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
                 'SN002: empty namespace');
select throws_ok(format($$ select sentinel.acquire_v1(%L, 'k', 'w', 1000) $$, repeat('n', 64)),
                 'SN002', format('sentinel: invalid namespace %L: use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit', repeat('n', 64)),
                 'SN002: namespace of 64 characters');
select throws_ok($$ select sentinel.inspect_v1('-payments', 'k') $$,
                 'SN002', 'sentinel: invalid namespace ''-payments'': use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
                 'SN002: namespace starting with "-"');
select throws_ok($$ select sentinel.list_v1(null) $$,
                 'SN002', 'sentinel: invalid namespace NULL: use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
                 'SN002: NULL namespace');
select lives_ok(format($$ select sentinel.acquire_v1(%L, 'k', 'w', 1000) $$, 'a.b_c-' || repeat('9', 57)),
                'a namespace of 63 characters using a-z, 0-9, ".", "_" and "-" is accepted');

-- SN003: ttl_ms and hard_ttl_ms (1 ms to 30 days, hard >= ttl), older_than_ms.
select throws_ok($$ select sentinel.acquire_v1('err', 'ttl', 'w', 0) $$,
                 'SN003', 'sentinel: ttl_ms must be between 1 and 2592000000 (30 days), got 0', 'SN003: ttl_ms 0');
select throws_ok($$ select sentinel.acquire_v1('err', 'ttl', 'w', -1000) $$,
                 'SN003', 'sentinel: ttl_ms must be between 1 and 2592000000 (30 days), got -1000', 'SN003: negative ttl_ms');
select throws_ok($$ select sentinel.acquire_v1('err', 'ttl', 'w', 2592000001) $$,
                 'SN003', 'sentinel: ttl_ms must be between 1 and 2592000000 (30 days), got 2592000001', 'SN003: ttl_ms over 30 days');
select throws_ok($$ select sentinel.acquire_v1('err', 'ttl', 'w', 1000, hard_ttl_ms => 999) $$,
                 'SN003', 'sentinel: hard_ttl_ms must be between ttl_ms (1000) and 2592000000 (30 days), got 999', 'SN003: hard_ttl_ms < ttl_ms');
select throws_ok($$ select sentinel.purge_v1('err', -1) $$,
                 'SN003', 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)', 'SN003: negative older_than_ms for purge_v1');
select lives_ok($$ select sentinel.acquire_v1('err', 'ttl-max', 'w', 2592000000) $$, 'ttl_ms of exactly 30 days is accepted');

-- SN004: owner, fingerprint, actor, reason.
select throws_ok($$ select sentinel.acquire_v1('err', 'own', '', 1000) $$,
                 'SN004', 'sentinel: owner must be a non-empty text', 'SN004: empty owner');
select throws_ok(format($$ select sentinel.acquire_v1('err', 'own', %L, 1000) $$, repeat('o', 201)),
                 'SN004', 'sentinel: owner is 201 characters long; the maximum is 200', 'SN004: owner of 201 characters');
select throws_ok($$ select sentinel.acquire_v1('err', 'own', 'w', 1000, fingerprint => '') $$,
                 'SN004', 'sentinel: fingerprint must be NULL or 1 to 200 characters', 'SN004: empty fingerprint');
select throws_ok($$ select sentinel.reconcile_v1('err', 'k', 'release', 'ops', ' ') $$,
                 'SN004', 'sentinel: reason must be a non-empty text', 'SN004: blank reconcile reason');
select lives_ok(format($$ select sentinel.acquire_v1('err', 'own-max', %L, 1000) $$, repeat('o', 200)),
                'an owner of 200 characters is accepted');

-- SN005: the fence.
select throws_ok($$ select sentinel.complete_v1('err', 'k', 0, '1') $$,
                 'SN005', 'sentinel: fence must be a positive bigint, got 0', 'SN005: fence 0');
select throws_ok($$ select sentinel.heartbeat_v1('err', 'k', null) $$,
                 'SN005', 'sentinel: fence must be a positive bigint, got NULL', 'SN005: NULL fence');
select throws_ok($$ select sentinel.begin_v1('err', 'k', -7) $$,
                 'SN005', 'sentinel: fence must be a positive bigint, got -7', 'SN005: negative fence');

-- SN006: enumerations and bounds.
select throws_ok($$ select sentinel.list_v1('err', state => 'running') $$,
                 'SN006', 'sentinel: unknown state ''running''; use claimed, executing, completed, failed or uncertain', 'SN006: unknown list state');
select throws_ok($$ select sentinel.reconcile_v1('err', 'k', 'retry', 'ops', 'why') $$,
                 'SN006', 'sentinel: unknown reconcile action ''retry''; use completed, failed or release', 'SN006: unknown reconcile action');
select throws_ok($$ select sentinel.list_v1('err', max_rows => 10001) $$,
                 'SN006', 'sentinel: max_rows must be between 1 and 10000', 'SN006: max_rows out of range');
select throws_ok($$ select sentinel.purge_v1('err', 0, 0) $$,
                 'SN006', 'sentinel: batch_size must be between 1 and 100000', 'SN006: batch_size out of range');

-- SN007: reconcile of a key without a record.
select throws_ok($$ select sentinel.reconcile_v1('err', 'nope', 'release', 'ops', 'why') $$,
                 'SN007', 'sentinel: no execution record for err/nope', 'SN007: reconcile of an unknown key');

-- SN008: reconcile of a key that is not stuck (more in 07-reconcile-purge).
select lives_ok($$ select sentinel.acquire_v1('err', 'busy', 'w', 60000) $$, 'err/busy: a live execution');
select throws_ok($$ select sentinel.reconcile_v1('err', 'busy', 'release', 'ops', 'why') $$,
                 'SN008', 'sentinel: err/busy is executing (not uncertain, failed or a lapsed claim); pass force => true to override',
                 'SN008: reconcile of a live execution without force');

-- SN009: SQL NULL where a document is required.
select throws_ok($$ select sentinel.complete_v1('err', 'busy', pg_temp.fence_of('err', 'busy'), null) $$,
                 'SN009', 'sentinel: response must not be SQL NULL (use the JSON value null)', 'SN009: complete_v1 with a NULL response');
select throws_ok($$ select sentinel.fail_v1('err', 'busy', pg_temp.fence_of('err', 'busy'), null) $$,
                 'SN009', 'sentinel: error must not be SQL NULL', 'SN009: fail_v1 with a NULL error');
select throws_ok($$ select sentinel.reconcile_v1('err', 'busy', 'completed', 'ops', 'why', force => true) $$,
                 'SN009', 'sentinel: reconcile as completed needs a response (jsonb)', 'SN009: reconcile completed without a response');

-- SN011: complete_v1 of a claim that was never begun.
select fence as f_cl from sentinel.acquire_v1('err', 'claimed', 'w', 60000, start => false) \gset
select pg_temp.snap('err', 'claimed') as snap_cl \gset
select throws_ok(format($$ select sentinel.complete_v1('err', 'claimed', %s, '{"too": "early"}') $$, :f_cl),
                 'SN011', format('sentinel: cannot complete err/claimed: fence %s was claimed but never begun (call begin_v1 first)', :f_cl),
                 'SN011: complete_v1 on a claimed, never-begun fence');
select is(pg_temp.snap('err', 'claimed'), :'snap_cl'::jsonb, 'the claim is unchanged after SN011');

-- older_than_ms has no documented upper bound: a huge retention ("keep about
-- forever") must either be refused with a documented SN code or simply match
-- nothing; it must not surface a raw 22008 interval/timestamp overflow.
create function pg_temp.documented(q text) returns text
    language plpgsql volatile
    as $$
begin
    execute q;
    return 'documented';
exception when others then
    if sqlstate like 'SN%' then
        return 'documented';
    end if;
    return sqlstate || ': ' || sqlerrm;
end
$$;
select is(pg_temp.documented($$ select sentinel.purge_v1('err', 9223372036854775807) $$), 'documented',
          'purge_v1 with older_than_ms = max bigint: a documented SQLSTATE or 0, not an overflow');
select is(pg_temp.documented($$ select count(*) from sentinel.list_v1('err', older_than_ms => 315360000000000) $$), 'documented',
          'list_v1 with older_than_ms = 10000 years: a documented SQLSTATE or no rows, not an overflow');

-- An error leaves nothing behind: no row for any refused acquire, and no fence
-- drawn by it (argument checks run before nextval; the sequence is not
-- transactional, so a fence drawn in a rolled-back call would still show).
select is_empty(
    $$ select key from sentinel.executions
        where namespace = 'err' and key not in ('ttl-max', 'own-max', 'busy', 'claimed', repeat('é', 512)) $$,
    'the refused calls left no execution row behind');
select is(pg_sequence_last_value('sentinel.fence_seq'), :seq0::bigint + 6,
          'fence_seq advanced only for the six accepted acquires');

select * from finish();
rollback;
