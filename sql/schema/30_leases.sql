-- Sentinel schema, current state: leases.
-- heartbeat_v1 renews the lease of a live execution, never past its hard
-- deadline, and only under the execution's own fence.

create type sentinel.heartbeat_result_v1 as (
    alive             boolean,
    state             text,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    now               timestamptz
);

comment on type sentinel.heartbeat_result_v1 is
    'Result of heartbeat_v1. alive false: the caller has lost the execution.';

create function sentinel._heartbeat(p_ns text, p_key text, p_fence bigint, p_token text)
    returns sentinel.heartbeat_result_v1
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
       set lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (p_token is null or x.claim_token = p_token)
       and x.state in ('claimed', 'executing')
       and x.lease_expires_at > v_now
    returning * into e;
    if found then
        return row(true, e.state, e.lease_expires_at, e.hard_expires_at, v_now)::sentinel.heartbeat_result_v1;
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
     for update;
    if not found then
        return row(false, null, null, null, v_now)::sentinel.heartbeat_result_v1;
    end if;
    if e.fence = p_fence and e.state = 'executing' and (p_token is null or e.claim_token = p_token) then
        -- Our own execution whose lease lapsed (or reached the hard deadline).
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = case when v_now >= x.hard_expires_at
                                       then 'hard deadline passed' else 'lease expired' end,
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
    end if;
    return row(false, e.state, e.lease_expires_at, e.hard_expires_at, v_now)::sentinel.heartbeat_result_v1;
end
$$;
comment on function sentinel._heartbeat(text, text, bigint, text) is
    'Shared body of heartbeat_v1 (p_token NULL: no proof asked) and heartbeat_v2.';

create function sentinel.heartbeat_v1(namespace text, key text, fence bigint)
    returns sentinel.heartbeat_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '100ms'
    as $$
begin
    return sentinel._heartbeat(heartbeat_v1.namespace, heartbeat_v1.key, heartbeat_v1.fence, null);
end
$$;
comment on function sentinel.heartbeat_v1(text, text, bigint) is
    'Renews the lease of your claim or execution by its ttl_ms, never past hard_expires_at. '
    'alive false: the lease lapsed, the hard deadline passed, or the fence is no longer current; stop when you can. '
    'An execution of yours whose lease lapsed is marked uncertain. Waits at most 100 ms for the row lock '
    '(SQLSTATE 55P03 after that: retry soon). Raises SN001, SN002, SN005, 42501 (no app right on the namespace). '
    'Legacy: asks no proof of the claim (heartbeat_v2 does).';

create function sentinel.heartbeat_v2(namespace text, key text, fence bigint, token text)
    returns sentinel.heartbeat_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '100ms'
    as $$
begin
    perform sentinel._check_token(heartbeat_v2.token);
    return sentinel._heartbeat(heartbeat_v2.namespace, heartbeat_v2.key, heartbeat_v2.fence, heartbeat_v2.token);
end
$$;
comment on function sentinel.heartbeat_v2(text, text, bigint, text) is
    'heartbeat_v1 for the holder of the claim only: token is the one given to acquire_v2; with any other token the '
    'answer is alive false and nothing changes. Raises SN001, SN002, SN004 (token), SN005, 42501.';
