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
    -- The caller's own right (one primary-key probe) settles the usual case; _authorize the others.
    if not exists (select 1 from sentinel.rights r
                    where r.role = pg_catalog.quote_ident(coalesce(nullif(pg_catalog.current_setting('role'), 'none'),
                                                                   session_user::text))::regrole
                      and r.namespace in (p_ns, '*') and r.kind = 'app') then
        perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    end if;
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
        perform sentinel._log_change('executing', p_fence, e, false);
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
    set sentinel.writer = 'protocol'
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
    set sentinel.writer = 'protocol'
    as $$
begin
    perform sentinel._check_token(heartbeat_v2.token);
    return sentinel._heartbeat(heartbeat_v2.namespace, heartbeat_v2.key, heartbeat_v2.fence, heartbeat_v2.token);
end
$$;
comment on function sentinel.heartbeat_v2(text, text, bigint, text) is
    'heartbeat_v1 for the holder of the claim only: token is the one given to acquire_v2; with any other token the '
    'answer is alive false and nothing changes. Raises SN001, SN002, SN004 (token), SN005, 42501.';

-- Batched renewals (schema version 13): one call renews every lease a process
-- holds in a namespace. Per key, the rules of heartbeat_v2; a row another
-- session holds locked is skipped and reported, never waited for.
create type sentinel.heartbeat_many_result_v1 as (
    ord               integer,
    key               text,
    fence             bigint,
    outcome           text,
    state             text,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    now               timestamptz
);

comment on type sentinel.heartbeat_many_result_v1 is
    'A row of heartbeat_many_v1, one per key asked; ord: its position in the arrays (from 1). outcome renewed: '
    'the lease now ends at lease_expires_at. lost: the caller has lost the execution, as heartbeat_v2 answering '
    'alive false (state and deadlines are the key''s current ones, NULL when it has no record). locked: another '
    'session holds the row locked; nothing changed; ask again (heartbeat_v2 waits up to 100 ms for the lock).';

create function sentinel.heartbeat_many_v1(namespace text, keys text[], fences bigint[], tokens text[])
    returns setof sentinel.heartbeat_many_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '100ms'
    set sentinel.writer = 'protocol'
    as $$
declare
    v_now  constant timestamptz := sentinel._now();
    v_n    integer;
    v_key  text;
    v_fence bigint;
    v_token text;
begin
    perform sentinel._check_namespace(heartbeat_many_v1.namespace);
    v_n := cardinality(heartbeat_many_v1.keys);
    if v_n is null or v_n > 10000 or v_n is distinct from cardinality(heartbeat_many_v1.fences)
       or v_n is distinct from cardinality(heartbeat_many_v1.tokens) then
        raise exception 'sentinel: keys, fences and tokens must be arrays of the same length, at most 10000 '
                        '(got %, %, %)', coalesce(cardinality(heartbeat_many_v1.keys)::text, 'NULL'),
                        coalesce(cardinality(heartbeat_many_v1.fences)::text, 'NULL'),
                        coalesce(cardinality(heartbeat_many_v1.tokens)::text, 'NULL')
            using errcode = 'SN006',
                  hint = 'element i of each array describes the same claim; send more than 10000 in several calls';
    end if;
    -- One pass over the arguments; the checks of heartbeat_v2 raise the documented error for the first bad one.
    perform 1
       from unnest(heartbeat_many_v1.keys, heartbeat_many_v1.fences, heartbeat_many_v1.tokens) a(k, f, t)
      where a.k is null or a.k = '' or octet_length(a.k) > 1024 or a.f is null or a.f <= 0
         or a.t is null or length(a.t) < 16 or length(a.t) > 200;
    if found then
        for v_key, v_fence, v_token in
            select a.k, a.f, a.t
              from unnest(heartbeat_many_v1.keys, heartbeat_many_v1.fences, heartbeat_many_v1.tokens) a(k, f, t)
        loop
            perform sentinel._check_key(heartbeat_many_v1.namespace, v_key);
            perform sentinel._check_fence(v_fence);
            perform sentinel._check_token(v_token);
        end loop;
    end if;
    perform sentinel._authorize(heartbeat_many_v1.namespace, array['app'], 'run the protocol');

    return query
    with asked as (
        select a.k, a.f, a.t, a.i::integer as i
          from unnest(heartbeat_many_v1.keys, heartbeat_many_v1.fences, heartbeat_many_v1.tokens)
               with ordinality as a(k, f, t, i)
    ),
    held as materialized (
        -- The rows of the keys asked that no other session holds locked, locked now (the lock an UPDATE
        -- takes), as they are now: the updates below see the same values. A row locked by someone else is
        -- skipped, never waited for.
        select a.i, a.k, a.f, a.t, x.state, x.lease_expires_at, x.hard_expires_at
          from asked a
          join sentinel.executions x on x.namespace = heartbeat_many_v1.namespace and x.key = a.k
           for no key update of x skip locked
    ),
    renewed as (
        -- heartbeat_v2's renewal of each held row under the caller's fence and token whose lease lives:
        -- now + ttl_ms, never past the hard deadline. It sets neither state nor fence: no event.
        update sentinel.executions x
           set lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
               updated_at = v_now
          from held h
         where h.state in ('claimed', 'executing') and h.lease_expires_at > v_now
           and x.namespace = heartbeat_many_v1.namespace and x.key = h.k
           and x.fence = h.f and x.claim_token = h.t
           and x.state in ('claimed', 'executing')
           and x.lease_expires_at > v_now
        returning h.i, h.k, h.f, x.state, x.lease_expires_at, x.hard_expires_at
    ),
    lapsed as (
        -- An execution of the caller's whose lease lapsed: uncertain, as heartbeat_v2 marks it (a row
        -- qualifies for one of the two updates at most: its lease lives or it does not), with its event.
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = case when v_now >= x.hard_expires_at
                                       then 'hard deadline passed' else 'lease expired' end,
               updated_at = v_now
          from held h
         where h.state = 'executing' and h.lease_expires_at <= v_now
           and x.namespace = heartbeat_many_v1.namespace and x.key = h.k
           and x.fence = h.f and x.claim_token = h.t
           and x.state = 'executing'
           and x.lease_expires_at <= v_now
        returning h.i, h.k, h.f, x.state, x.lease_expires_at, x.hard_expires_at,
                  sentinel._log_change('executing', h.f, x, false) as logged
    ),
    answers as (
        -- Per key the first of: what an update did, the held row as it is, nothing (decided below).
        select distinct on (u.i) u.i, u.k, u.f, u.outcome, u.state, u.lease_expires_at, u.hard_expires_at
          from (select r.i, r.k, r.f, 1 as rank, 'renewed' as outcome, r.state, r.lease_expires_at,
                       r.hard_expires_at
                  from renewed r
                union all
                select l.i, l.k, l.f, 1, 'lost', l.state, l.lease_expires_at, l.hard_expires_at from lapsed l
                union all
                select h.i, h.k, h.f, 2, 'lost', h.state, h.lease_expires_at, h.hard_expires_at from held h
                union all
                select a.i, a.k, a.f, 3, null, null, null, null from asked a) u
         order by u.i, u.rank
    )
    select n.i, n.k, n.f,
           -- Not held: locked by another session if the row exists, else there is no record.
           coalesce(n.outcome, case when exists (select 1 from sentinel.executions s
                                                  where s.namespace = heartbeat_many_v1.namespace and s.key = n.k)
                                    then 'locked' else 'lost' end),
           n.state, n.lease_expires_at, n.hard_expires_at, v_now
      from answers n
     order by n.i;
end
$$;
comment on function sentinel.heartbeat_many_v1(text, text[], bigint[], text[]) is
    'heartbeat_v2 for many claims of one namespace in one call: element i of keys, fences and tokens is one claim '
    '(at most 10000). Returns one row per claim (heartbeat_many_result_v1, in the order asked): renewed, lost '
    '(as heartbeat_v2 alive false; an execution of yours whose lease lapsed is marked uncertain), or locked: '
    'another session holds the row locked, so it was skipped without waiting and nothing changed (ask again, or '
    'call heartbeat_v2, which waits up to 100 ms). Raises SN001, SN002, SN004 (token), SN005, SN006 (arrays of '
    'different lengths or over 10000), 42501 (no app right on the namespace).';
