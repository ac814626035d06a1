-- Sentinel migration 0010 (pre): no function of schema sentinel depends on
-- its caller's search_path any more, the trigger functions included.
--
-- The protocol functions (SECURITY DEFINER) always pinned search_path. The
-- trigger functions did not: they run with the search_path of whoever changes
-- sentinel.executions, so when a DBA updates the table by hand, a function
-- planted in a schema of their search_path that matches a call better (such as
-- jsonb_build_object(text, integer, ...) over pg_catalog's variadic "any") ran
-- with the DBA's rights. Now:
--
-- * the trigger functions and the other plpgsql and SQL helpers pin
--   search_path = pg_catalog, pg_temp;
-- * the two helpers on every call's path, sentinel._now() and
--   sentinel._acquire_result(), stay unpinned so PostgreSQL still inlines them
--   (pinning costs a replay about 8 microseconds of its ~27 on the server):
--   their bodies name every function, operator and type with its schema, so a
--   search_path can change nothing in them. sqltests/01-structure.sql runs
--   them under a hostile search_path.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

alter function sentinel._log_transition() set search_path = pg_catalog, pg_temp;
alter function sentinel._notify_release() set search_path = pg_catalog, pg_temp;
alter function sentinel._notify_watchers(text, text) set search_path = pg_catalog, pg_temp;
alter function sentinel._lapse_reason(sentinel.executions) set search_path = pg_catalog, pg_temp;
alter function sentinel._execution(sentinel.executions, timestamptz) set search_path = pg_catalog, pg_temp;

-- _now() already reads pg_catalog.clock_timestamp() and nothing else.
create or replace function sentinel._acquire_result(p_outcome text, e sentinel.executions, p_now timestamptz)
    returns sentinel.acquire_result_v1
    language sql immutable
    as $$
    -- A mismatch reveals nothing of another caller's response or error.
    select row(
        p_outcome, e.fence, e.state, e.attempt,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.response end,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.error end,
        e.claimed_at, e.lease_expires_at, e.hard_expires_at, e.owner, p_now
    )::sentinel.acquire_result_v1
$$;

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 10 $$;
