-- Sentinel migration 0008 (pre): a retried acquire from the same call gets its
-- claim back.
--
-- When the server commits a claim but its reply never reaches the client (a
-- connection reset, a failover, a proxy timeout right after the commit), the
-- client cannot know whether it holds the key. Until now it had to give up:
-- the claim, executing under its owner, lapsed into uncertain, and every later
-- caller was told the outcome was unknown although the function never ran.
--
-- acquire_v2 is acquire_v1 with a token: a random value the client draws per
-- call (16 to 200 characters) and presents again when it retries the same
-- call. A retry whose token matches the live claim (claimed or executing,
-- lease not lapsed) gets that claim back, outcome acquired under the same
-- fence, and writes nothing; any other caller sees it as before. The token is
-- stored with the claim (executions.claim_token) and never returned by
-- inspect_v1, list_v1 or the event log. acquire_v1 keeps its contract; both
-- share one body, sentinel._acquire. Roles that may call acquire_v1 are
-- granted acquire_v2.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

alter table sentinel.executions add column claim_token text;
comment on column sentinel.executions.claim_token is
    'The token of the call that holds the current claim (acquire_v2), so that its retry is recognised; never returned.';

create function sentinel._acquire(
    p_ns text, p_key text, p_owner text, p_ttl bigint, p_hard_ttl bigint, p_start_arg boolean,
    p_fp text, p_token text
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    p_start  constant boolean := coalesce(p_start_arg, true);
    p_hard   constant bigint  := coalesce(p_hard_ttl, p_ttl);
    v_now    constant timestamptz := sentinel._now();
    v_lease  timestamptz;
    v_outcome text;
    v_exists boolean;
    e        sentinel.executions;
begin
    -- Cheap checks inline; the helpers raise the documented error when one fails.
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_owner is null or length(p_owner) > 200 or btrim(p_owner) = '' then
        perform sentinel._check_text('owner', p_owner, 200);
    end if;
    if p_ttl is null or p_ttl <= 0 or p_ttl > 2592000000 then
        raise exception 'sentinel: ttl_ms must be between 1 and 2592000000 (30 days), got %', coalesce(p_ttl::text, 'NULL')
            using errcode = 'SN003';
    end if;
    if p_hard < p_ttl or p_hard > 2592000000 then
        raise exception 'sentinel: hard_ttl_ms must be between ttl_ms (%) and 2592000000 (30 days), got %', p_ttl, p_hard
            using errcode = 'SN003';
    end if;
    if p_fp is not null and (p_fp = '' or length(p_fp) > 200) then
        raise exception 'sentinel: fingerprint must be NULL or 1 to 200 characters'
            using errcode = 'SN004';
    end if;
    if p_token is not null and (length(p_token) < 16 or length(p_token) > 200) then
        raise exception 'sentinel: token must be NULL or 16 to 200 characters (a random value per call)'
            using errcode = 'SN004';
    end if;

    -- 1. A plain read. Replays and live executions are answered from it, so a
    --    replay takes no lock and writes nothing.
    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key;
    if found then
        if p_token is not null and e.claim_token = p_token and e.state in ('claimed', 'executing')
           and e.lease_expires_at > v_now then
            -- The same call asks again: its reply was lost after the claim
            -- committed. It gets its claim back, under the same fence.
            return sentinel._acquire_result('acquired', e, v_now);
        end if;
        v_outcome := sentinel._observe(e, p_fp, v_now);
        if v_outcome is not null then
            return sentinel._acquire_result(v_outcome, e, v_now);
        end if;
    end if;

    -- 2. Claim: insert a new row, or lock the existing one and decide again.
    v_exists := e.namespace is not null;
    v_lease := v_now + p_ttl * interval '1 millisecond';
    loop
        if not v_exists then
            insert into sentinel.executions as x (
                namespace, key, state, fence, owner, attempt, fingerprint, ttl_ms,
                claimed_at, started_at, lease_expires_at, hard_expires_at, updated_at, claim_token)
            values (
                p_ns, p_key, case when p_start then 'executing' else 'claimed' end,
                nextval('sentinel.fence_seq'), p_owner, 1, p_fp, p_ttl,
                v_now, case when p_start then v_now end, v_lease,
                v_now + p_hard * interval '1 millisecond', v_now, p_token)
            on conflict on constraint executions_pkey do nothing
            returning * into e;
            if found then
                return sentinel._acquire_result('acquired', e, v_now);
            end if;
        end if;

        select * into e from sentinel.executions x
         where x.namespace = p_ns and x.key = p_key
         for update;
        exit when found;
        v_exists := false;
        -- The row was purged between the insert and the lock: insert again.
    end loop;

    v_outcome := sentinel._observe(e, p_fp, v_now);
    if v_outcome is not null then
        return sentinel._acquire_result(v_outcome, e, v_now);
    end if;

    if e.state = 'executing' then
        -- The function started and its lease lapsed: the outcome is unknown.
        -- Never run it again on our own; the late owner may still complete.
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = sentinel._lapse_reason(x),
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        return sentinel._acquire_result('uncertain', e, v_now);
    end if;

    -- A claim that never started (taken over), or a retryable failure: a new
    -- claim under a new fence.
    update sentinel.executions x
       set state = case when p_start then 'executing' else 'claimed' end,
           fence = nextval('sentinel.fence_seq'),
           owner = p_owner,
           attempt = x.attempt + 1,
           fingerprint = coalesce(p_fp, x.fingerprint),
           ttl_ms = p_ttl,
           claimed_at = v_now,
           started_at = case when p_start then v_now end,
           lease_expires_at = v_lease,
           hard_expires_at = v_now + p_hard * interval '1 millisecond',
           finished_at = null,
           response = null,
           error = null,
           error_permanent = false,
           uncertain_reason = null,
           reconciled_by = null,
           reconciled_at = null,
           reconcile_reason = null,
           claim_token = p_token,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return sentinel._acquire_result('acquired', e, v_now);
end
$$;
comment on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) is
    'Shared body of acquire_v1 and acquire_v2; p_token NULL for acquire_v1.';

create or replace function sentinel.acquire_v1(
    namespace    text,
    key          text,
    owner        text,
    ttl_ms       bigint,
    hard_ttl_ms  bigint  default null,
    start        boolean default true,
    fingerprint  text    default null
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    return sentinel._acquire(acquire_v1.namespace, acquire_v1.key, acquire_v1.owner, acquire_v1.ttl_ms,
                             acquire_v1.hard_ttl_ms, acquire_v1.start, acquire_v1.fingerprint, null);
end
$$;

create function sentinel.acquire_v2(
    namespace    text,
    key          text,
    owner        text,
    ttl_ms       bigint,
    hard_ttl_ms  bigint  default null,
    start        boolean default true,
    fingerprint  text    default null,
    token        text    default null
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    return sentinel._acquire(acquire_v2.namespace, acquire_v2.key, acquire_v2.owner, acquire_v2.ttl_ms,
                             acquire_v2.hard_ttl_ms, acquire_v2.start, acquire_v2.fingerprint, acquire_v2.token);
end
$$;
comment on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) is
    'acquire_v1 with token: a random value (16 to 200 characters) drawn per call and presented again when the '
    'same call retries after a lost reply. A retry whose token matches the live claim (claimed or executing, lease '
    'not lapsed) gets it back: outcome acquired, same fence, nothing written. Outcomes and SQLSTATEs as acquire_v1 '
    '(SN004 also for a token out of range). Waits at most 5 s for a row lock (55P03).';

revoke all on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) from public;
revoke all on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) from public;

insert into sentinel.grantable (function, operator) values
    ('sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text)', false);

-- Whoever may call acquire_v1 may call acquire_v2.
do $$
declare
    r record;
begin
    for r in
        select distinct a.grantee::regrole::text as role
          from pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         where p.oid = 'sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)'::regprocedure
           and a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner and a.grantee <> 0
    loop
        execute format('grant execute on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, '
                       'text, text) to %s', r.role);
    end loop;
end
$$;

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 8 $$;
