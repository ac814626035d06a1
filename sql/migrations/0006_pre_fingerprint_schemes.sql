-- Sentinel migration 0006 (pre): automatic fingerprints of different schemes
-- are not compared.
--
-- The Python client's automatic fingerprint used to hash the function's
-- module and qualified name with its arguments (scheme v1: 'v1:' followed by
-- 40 hex digits). Clients that require this schema hash the arguments
-- only (scheme v2), so that renaming or moving a function, or asking with another
-- callable, replays the recorded result. A key recorded by an old worker
-- holds a v1 fingerprint that a new worker cannot reproduce: comparing the
-- two would raise a false mismatch for the same work during every rolling
-- upgrade.
--
-- From this migration on, two fingerprints are compared when both are
-- present, unless both are automatic ('v<N>:' and 40 hex digits) of
-- different schemes: then neither side can tell, and the key is treated as
-- having no fingerprint for that call. Fingerprints chosen by the caller are
-- compared as before.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create or replace function sentinel._observe(e sentinel.executions, p_fingerprint text, p_now timestamptz)
    returns text
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    select case
        when p_fingerprint is not null and e.fingerprint is not null
             and p_fingerprint <> e.fingerprint
             and not (p_fingerprint ~ '^v[0-9]+:[0-9a-f]{40}$' and e.fingerprint ~ '^v[0-9]+:[0-9a-f]{40}$'
                      and split_part(p_fingerprint, ':', 1) <> split_part(e.fingerprint, ':', 1))
                                                             then 'mismatch'
        when e.state = 'completed'                           then 'completed'
        when e.state = 'failed' and e.error_permanent        then 'failed'
        when e.state = 'failed'                              then null
        when e.state = 'uncertain'                           then 'uncertain'
        when e.lease_expires_at > p_now                      then 'alive'
        else null
    end
$$;
comment on function sentinel._observe(sentinel.executions, text, timestamptz) is
    'What a caller of acquire sees in a row without changing it; NULL when the row must be claimed or marked '
    'uncertain. Fingerprints are compared when both are present, except two automatic ones (v<N>: and 40 hex '
    'digits) of different schemes, which cannot be compared.';

comment on function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) is
    'Claims (namespace, key) or reports its state, in one round trip. '
    'outcome acquired: you own a new fence (state executing when start, else claimed; call begin_v1 before running). '
    'completed: response replayed. alive: another worker holds a live lease. uncertain: an execution started and its outcome is unknown. '
    'failed: a permanent error is replayed. mismatch: the key was used with another fingerprint (two automatic '
    'fingerprints of different schemes, v<N>: and 40 hex digits, are not compared). '
    'hard_ttl_ms defaults to ttl_ms. Raises SN001 (key), SN002 (namespace), SN003 (ttl), SN004 (owner, fingerprint). '
    'A replay takes no lock and writes nothing.';

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 6 $$;
