-- Sentinel schema, current state: acquiring a key.
-- acquire_v2 (and acquire_v1) claim a key or answer what it is: completed
-- (the response replayed), alive, uncertain, failed or a fingerprint mismatch;
-- begin_v1 moves a claim that was not started to executing.

create type sentinel.acquire_result_v1 as (
    outcome           text,
    fence             bigint,
    state             text,
    attempt           integer,
    response          jsonb,
    error             jsonb,
    claimed_at        timestamptz,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    owner             text,
    now               timestamptz
);

comment on type sentinel.acquire_result_v1 is
    'Result of acquire_v1. outcome: acquired, completed, alive, uncertain, failed or mismatch.';

create function sentinel._acquire_result(p_outcome text, e sentinel.executions, p_now timestamptz)
    returns sentinel.acquire_result_v1
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    -- A mismatch reveals nothing of another caller's response or error.
    select row(
        p_outcome, e.fence, e.state, e.attempt,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.response end,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.error end,
        e.claimed_at, e.lease_expires_at, e.hard_expires_at, e.owner, p_now
    )::sentinel.acquire_result_v1
$$;
comment on function sentinel._acquire_result(text, sentinel.executions, timestamptz) is
    'Builds an acquire_result_v1 from a row.';

create function sentinel.acquire_v1(
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
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._acquire(acquire_v1.namespace, acquire_v1.key, acquire_v1.owner, acquire_v1.ttl_ms,
                             acquire_v1.hard_ttl_ms, acquire_v1.start, acquire_v1.fingerprint, null);
end
$$;
comment on function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) is
    'Claims (namespace, key) or reports its state, in one round trip. '
    'outcome acquired: you own a new fence (state executing when start, else claimed; call begin_v1 before running). '
    'completed: response replayed. alive: another worker holds a live lease. uncertain: an execution started and its outcome is unknown. '
    'failed: a permanent error is replayed. mismatch: the key was used with another fingerprint (two automatic '
    'fingerprints of different schemes, v<N>: and 40 hex digits, are not compared). '
    'hard_ttl_ms defaults to ttl_ms. Raises SN001 (key), SN002 (namespace), SN003 (ttl), SN004 (owner, fingerprint), '
    '42501 (no app right on the namespace). A replay takes no lock and writes nothing.';

create function sentinel._check_token(p_token text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_token is null or length(p_token) < 16 or length(p_token) > 200 then
        raise exception 'sentinel: token must be the token given to acquire_v2 for this claim (16 to 200 characters)'
            using errcode = 'SN004';
    end if;
end
$$;
comment on function sentinel._check_token(text) is
    'Raises SN004 unless the token is 16 to 200 characters (the proof of a claim the _v2/_v3 calls require).';

create function sentinel._begin(p_ns text, p_key text, p_fence bigint, p_token text)
    returns boolean
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now   constant timestamptz := sentinel._now();
    e       sentinel.executions;
begin
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_fence is null or p_fence <= 0 then
        perform sentinel._check_fence(p_fence);
    end if;
    perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    update sentinel.executions x
       set state = 'executing',
           started_at = v_now,
           lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (p_token is null or x.claim_token = p_token)
       and x.state = 'claimed'
       and x.lease_expires_at > v_now
    returning * into e;
    if not found then
        return false;
    end if;
    perform sentinel._log_change('claimed', p_fence, e, false);
    return true;
end
$$;
comment on function sentinel._begin(text, text, bigint, text) is
    'Shared body of begin_v1 (p_token NULL: no proof asked) and begin_v2.';

create function sentinel.begin_v1(namespace text, key text, fence bigint)
    returns boolean
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._begin(begin_v1.namespace, begin_v1.key, begin_v1.fence, null);
end
$$;
comment on function sentinel.begin_v1(text, text, bigint) is
    'Moves your own live claim (state claimed, your fence, lease not lapsed) to executing and renews its lease. '
    'true: start the function now. false: the claim was taken over, lapsed or already begun; do not run. '
    'Raises SN001, SN002, SN005, 42501 (no app right on the namespace). Legacy: asks no proof of the claim '
    '(begin_v2 does).';

create function sentinel.begin_v2(namespace text, key text, fence bigint, token text)
    returns boolean
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    perform sentinel._check_token(begin_v2.token);
    return sentinel._begin(begin_v2.namespace, begin_v2.key, begin_v2.fence, begin_v2.token);
end
$$;
comment on function sentinel.begin_v2(text, text, bigint, text) is
    'begin_v1 for the holder of the claim only: token is the one given to acquire_v2 (false for any other). '
    'Raises SN001, SN002, SN004 (token), SN005, 42501.';

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
    v_from   text;
    v_prev   bigint;
    v_fence  bigint;
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
    -- The caller's own right (one primary-key probe) settles the usual case; _authorize the others.
    if not exists (select 1 from sentinel.rights r
                    where r.role = pg_catalog.quote_ident(coalesce(nullif(pg_catalog.current_setting('role'), 'none'),
                                                                   session_user::text))::regrole
                      and r.namespace in (p_ns, '*') and r.kind = 'app') then
        perform sentinel._authorize(p_ns, array['app'], 'claim keys');
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
            returning x.fence into v_fence;
            if found then
                -- The event of a new record (the columns _log_change writes).
                insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at,
                                             details)
                values (p_ns, p_key, v_fence, null, case when p_start then 'executing' else 'claimed' end, p_owner,
                        p_owner, null, v_now, '{"attempt": 1}');
                return row('acquired', v_fence, case when p_start then 'executing' else 'claimed' end, 1, null, null,
                           v_now, v_lease, v_now + p_hard * interval '1 millisecond', p_owner, v_now)::sentinel.acquire_result_v1;
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

    v_from := e.state;
    v_prev := e.fence;
    if e.state = 'executing' then
        -- The function started and its lease lapsed: the outcome is unknown.
        -- Never run it again on our own; the late owner may still complete.
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = sentinel._lapse_reason(x),
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        perform sentinel._log_change(v_from, v_prev, e, false);
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
    perform sentinel._log_change(v_from, v_prev, e, false);
    return sentinel._acquire_result('acquired', e, v_now);
end
$$;
comment on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) is
    'Shared body of acquire_v1 and acquire_v2; p_token NULL for acquire_v1.';
revoke all on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) from public;

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
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._acquire(acquire_v2.namespace, acquire_v2.key, acquire_v2.owner, acquire_v2.ttl_ms,
                             acquire_v2.hard_ttl_ms, acquire_v2.start, acquire_v2.fingerprint, acquire_v2.token);
end
$$;
comment on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) is
    'acquire_v1 with token: a random value (16 to 200 characters) drawn per call and presented again when the '
    'same call retries after a lost reply. A retry whose token matches the live claim (claimed or executing, lease '
    'not lapsed) gets it back: outcome acquired, same fence, nothing written. The token is also the proof of the '
    'claim that begin_v2, heartbeat_v2, complete_v3, fail_v3 and abandon_v2 require. Outcomes and SQLSTATEs as '
    'acquire_v1 (SN004 also for a token out of range). Waits at most 5 s for a row lock (55P03).';
revoke all on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) from public;

-- The decided keys, read without a function call: what acquire_v2 would
-- answer for them (completed, or failed with a permanent error), each row
-- visible only to a role holding the app right on its namespace itself
-- (directly or on '*'; a role whose right is inherited sees none and asks
-- acquire_v2). A replay that reads it in the statement that would otherwise
-- call acquire_v2 costs a primary-key read (docs/protocol.md).
create view sentinel.decided_v1 with (security_barrier) as
select x.namespace, x.key, x.fingerprint,
       case when x.state = 'completed' then 'completed' else 'failed' end as outcome,
       x.fence, x.state, x.attempt, x.response, x.error, x.claimed_at, x.lease_expires_at, x.hard_expires_at,
       x.owner
  from sentinel.executions x
 where (x.state = 'completed' or (x.state = 'failed' and x.error_permanent))
   and exists (select 1 from sentinel.rights r
                where r.role = pg_catalog.quote_ident(coalesce(nullif(pg_catalog.current_setting('role'), 'none'),
                                                               session_user::text))::regrole
                  and r.namespace in (x.namespace, '*') and r.kind = 'app');

comment on view sentinel.decided_v1 is
    'Decided keys: one row per record whose outcome is fixed, as acquire_v2 would replay it (outcome completed with '
    'the response, or failed with a permanent error), visible to a role that holds the app right on the namespace '
    'itself. Select by namespace and key (the primary key) and compare fingerprint: when the row is absent or its '
    'fingerprint differs from yours, call acquire_v2, which decides (mismatch, a claim, alive, uncertain).';

grant select on sentinel.decided_v1 to public;
