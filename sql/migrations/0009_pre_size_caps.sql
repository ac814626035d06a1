-- Sentinel migration 0009 (pre): a cap on the size of responses and errors;
-- listing without bodies.
--
-- Until now a response or error document of any size (up to jsonb's ~255 MB)
-- was stored and shipped to every replay, and list_v1 could return 10,000 of
-- them at once.
--
-- * sentinel.limits holds the caps, a DBA's to change (update the table; it
--   takes effect at once): max_response_bytes (default 1 MiB) and
--   max_error_bytes (default 64 KiB), measured as the jsonb document's size
--   (pg_column_size). complete_v1/v2 and fail_v1/v2 refuse a larger document
--   with SQLSTATE SN015 before writing anything: the execution stays as it was
--   (a client then marks it uncertain with abandon_v1: the function ran).
-- * list_v2 is list_v1 without the response and error bodies unless asked
--   for (bodies => true). inspect_v1 still returns the one record in full.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create table sentinel.limits (
    name   text primary key,
    value  bigint not null,
    constraint limits_known check (name in ('max_response_bytes', 'max_error_bytes')),
    constraint limits_range check (value between 1024 and 268435455)
);
comment on table sentinel.limits is
    'Caps a DBA may change: max_response_bytes and max_error_bytes, the largest jsonb document (pg_column_size) '
    'complete_v1/v2 and fail_v1/v2 accept.';
insert into sentinel.limits (name, value) values ('max_response_bytes', 1048576), ('max_error_bytes', 65536);
revoke all on table sentinel.limits from public;

create function sentinel._check_size(p_what text, p_doc jsonb, p_limit text) returns void
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_size  constant integer := pg_column_size(p_doc);
    v_limit bigint;
begin
    select l.value into v_limit from sentinel.limits l where l.name = p_limit;
    if v_limit is not null and v_size > v_limit then
        raise exception 'sentinel: the % is % bytes, over the limit of % bytes; nothing was recorded', p_what, v_size,
            v_limit
            using errcode = 'SN015',
                  hint = format('store a reference to the data instead, or ask the DBA to raise %s in sentinel.limits',
                                p_limit);
    end if;
end
$$;
comment on function sentinel._check_size(text, jsonb, text) is
    'Raises SN015 when a document is larger than its cap in sentinel.limits.';
revoke all on function sentinel._check_size(text, jsonb, text) from public;

create or replace function sentinel._finish(
    p_ns text, p_key text, p_fence bigint, p_state text,
    p_response jsonb, p_error jsonb, p_permanent boolean)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now constant timestamptz := sentinel._now();
    e     sentinel.executions;
begin
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_fence is null or p_fence <= 0 then
        perform sentinel._check_fence(p_fence);
    end if;
    -- Documents over the cap are refused before anything is written (a cheap
    -- size test first: the limits are read only for documents over 1 KiB).
    if p_response is not null and pg_column_size(p_response) > 1024 then
        perform sentinel._check_size('response', p_response, 'max_response_bytes');
    end if;
    if p_error is not null and pg_column_size(p_error) > 1024 then
        perform sentinel._check_size('error', p_error, 'max_error_bytes');
    end if;
    update sentinel.executions x
       set state = p_state,
           response = p_response,
           error = p_error,
           error_permanent = coalesce(p_permanent, false),
           finished_at = v_now,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and case p_state
               when 'completed' then x.state in ('executing', 'uncertain')
               -- A failure is the truth only while the lease holds, or when nothing ever ran.
               else x.state = 'claimed' or (x.state = 'executing' and x.lease_expires_at > v_now)
           end
    returning * into e;
    if found then
        return row('recorded', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
       for update;
    if found and e.fence = p_fence and e.state = p_state then
        -- A retry of a recording that already committed.
        return row('already_recorded', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    if found and e.fence = p_fence and e.state = 'claimed' then
        raise exception 'sentinel: cannot complete %/%: fence % was claimed but never begun (call begin_v1 first)',
            p_ns, p_key, p_fence
            using errcode = 'SN011';
    end if;
    if found and e.fence = p_fence and p_state = 'failed' and e.state in ('executing', 'uncertain') then
        -- A late failure: the lease lapsed (or the execution was marked uncertain)
        -- before the function raised. It may have had effects: the key stays
        -- uncertain and the error is kept as evidence for the reconciler.
        if e.state = 'uncertain' and e.error is not distinct from p_error then
            -- A retry of a late failure that already committed.
            return row('uncertain', e.state, e.fence, v_now)::sentinel.finish_result_v1;
        end if;
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = coalesce(x.uncertain_reason, sentinel._lapse_reason(x)),
               error = p_error,
               error_permanent = false,
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
        values (e.namespace, e.key, e.fence, 'uncertain', 'uncertain', e.owner, e.owner,
                'late failure: the function raised after its lease was lost; the key stays uncertain',
                v_now, jsonb_build_object('attempt', e.attempt, 'late_failure', true, 'error', p_error));
        return row('uncertain', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    return row('stale', e.state, e.fence, v_now)::sentinel.finish_result_v1;
end
$$;

create function sentinel.list_v2(
    namespace      text,
    state          text    default null,
    older_than_ms  bigint  default null,
    max_rows       integer default 100,
    bodies         boolean default false
) returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
begin
    perform sentinel._check_namespace(list_v2.namespace);
    if list_v2.state is not null
       and list_v2.state not in ('claimed', 'executing', 'completed', 'failed', 'uncertain') then
        raise exception 'sentinel: unknown state %; use claimed, executing, completed, failed or uncertain',
            quote_literal(list_v2.state)
            using errcode = 'SN006';
    end if;
    if list_v2.older_than_ms is not null
       and (list_v2.older_than_ms < 0 or list_v2.older_than_ms > 3153600000000) then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if list_v2.max_rows is null or list_v2.max_rows < 1 or list_v2.max_rows > 10000 then
        raise exception 'sentinel: max_rows must be between 1 and 10000' using errcode = 'SN006';
    end if;
    return query
        select r.namespace, r.key, r.state, r.stored_state, r.fence, r.owner, r.attempt, r.fingerprint, r.ttl_ms,
               r.claimed_at, r.started_at, r.lease_expires_at, r.hard_expires_at, r.finished_at,
               case when list_v2.bodies then r.response end,
               case when list_v2.bodies then r.error end,
               r.error_permanent, r.uncertain_reason, r.reconciled_by, r.reconciled_at, r.reconcile_reason,
               r.updated_at, r.now
          from sentinel.executions x,
               lateral sentinel._execution(x, v_now) r
         where x.namespace = list_v2.namespace
           and (list_v2.state is null or r.state = list_v2.state)
           and (list_v2.older_than_ms is null
                or x.updated_at <= v_now - list_v2.older_than_ms * interval '1 millisecond')
         order by x.updated_at, x.key
         limit list_v2.max_rows;
end
$$;

comment on function sentinel._finish(text, text, bigint, text, jsonb, jsonb, boolean) is
    'Shared body of complete_v1/v2 and fail_v1/v2. A failure reported after the lease lapsed or the execution went '
    'uncertain leaves the key uncertain, keeps the error as evidence and logs a late failure event (outcome uncertain). '
    'A document over its cap in sentinel.limits raises SN015 before anything is written.';

comment on function sentinel.list_v2(text, text, bigint, integer, boolean) is
    'list_v1 without the response and error bodies (NULL) unless bodies => true. Rows ordered by updated_at, at most '
    'max_rows (1 to 10000). Raises SN002, SN003, SN006.';
revoke all on function sentinel.list_v2(text, text, bigint, integer, boolean) from public;

insert into sentinel.grantable (function, operator) values
    ('sentinel.list_v2(text, text, bigint, integer, boolean)', false);

-- Whoever may call list_v1 may call list_v2.
do $$
declare
    r record;
begin
    for r in
        select distinct a.grantee::regrole::text as role
          from pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         where p.oid = 'sentinel.list_v1(text, text, bigint, integer)'::regprocedure
           and a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner and a.grantee <> 0
    loop
        execute format('grant execute on function sentinel.list_v2(text, text, bigint, integer, boolean) to %s',
                       r.role);
    end loop;
end
$$;

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 9 $$;
