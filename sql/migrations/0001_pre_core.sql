-- Sentinel migration 0001 (pre): the execution table and the _v1 protocol.
--
-- Released migrations are immutable: a change to the schema is a new file.
-- This file runs inside one transaction (the installer wraps it; with psql use
-- `psql --single-transaction -f`).

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create schema sentinel;
comment on schema sentinel is
    'Sentinel: at-most-once execution coordination. Call the functions; the tables are not an interface.';

-- The migration ledger. The installer records every applied file here.
create table sentinel.migrations (
    id          integer primary key,
    name        text not null unique,
    checksum    text not null,
    applied_at  timestamptz not null default pg_catalog.clock_timestamp(),
    applied_by  text not null default current_user
);
comment on table sentinel.migrations is
    'Applied Sentinel migrations: one row per file, with the SHA-256 of its text.';

-- Fences come from one sequence, so a key never sees a fence twice, even after
-- its row was purged and the key claimed again.
create sequence sentinel.fence_seq as bigint minvalue 1 no cycle;
comment on sequence sentinel.fence_seq is
    'Source of fences: strictly increasing for every key over its whole life, never reused.';

create table sentinel.executions (
    namespace         text        not null,
    key               text        not null,
    state             text        not null,
    fence             bigint      not null,
    owner             text,
    attempt           integer     not null,
    fingerprint       text,
    ttl_ms            bigint      not null,
    claimed_at        timestamptz not null,
    started_at        timestamptz,
    lease_expires_at  timestamptz not null,
    hard_expires_at   timestamptz not null,
    finished_at       timestamptz,
    response          jsonb,
    error             jsonb,
    error_permanent   boolean     not null default false,
    uncertain_reason  text,
    reconciled_by     text,
    reconciled_at     timestamptz,
    reconcile_reason  text,
    updated_at        timestamptz not null,
    constraint executions_pkey primary key (namespace, key),
    constraint executions_state_check
        check (state in ('claimed', 'executing', 'completed', 'failed', 'uncertain')),
    constraint executions_fence_check check (fence > 0),
    constraint executions_attempt_check check (attempt > 0),
    constraint executions_ttl_check check (ttl_ms > 0),
    -- Invariant 6: no lease reaches past the hard deadline.
    constraint executions_lease_within_hard_check check (lease_expires_at <= hard_expires_at),
    constraint executions_completed_has_response_check
        check (state <> 'completed' or response is not null)
) with (fillfactor = 80);
comment on table sentinel.executions is
    'One row per (namespace, key): state, fence, lease, hard deadline, response or error. '
    'Private: written only by the sentinel functions. fillfactor 80 leaves room for HOT updates.';

revoke all on all tables in schema sentinel from public;
revoke all on all sequences in schema sentinel from public;

-- The clock. Every time Sentinel uses comes from here: the database's clock,
-- never a client's. Only the schema owner can replace it.
create function sentinel._now() returns timestamptz
    language sql volatile
    as $$ select pg_catalog.clock_timestamp() $$;
comment on function sentinel._now() is
    'The one clock of Sentinel: the database''s clock_timestamp().';

-- Argument checks. Misuse raises a documented SQLSTATE of class SN.
create function sentinel._check_namespace(p_namespace text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_namespace is null
       or p_namespace !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        raise exception 'sentinel: invalid namespace %: use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
            coalesce(quote_literal(p_namespace), 'NULL')
            using errcode = 'SN002';
    end if;
end
$$;
comment on function sentinel._check_namespace(text) is
    'Raises SN002 for a namespace outside ^[a-z0-9][a-z0-9_.-]{0,62}$.';

create function sentinel._check_key(p_namespace text, p_key text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    perform sentinel._check_namespace(p_namespace);
    if p_key is null or p_key = '' then
        raise exception 'sentinel: key must be a non-empty text'
            using errcode = 'SN001';
    end if;
    if octet_length(p_key) > 1024 then
        raise exception 'sentinel: key is % bytes long; the maximum is 1024 bytes (UTF-8)', octet_length(p_key)
            using errcode = 'SN001';
    end if;
end
$$;
comment on function sentinel._check_key(text, text) is
    'Raises SN002 for a namespace outside ^[a-z0-9][a-z0-9_.-]{0,62}$, SN001 for an empty key or one over 1024 bytes.';

create function sentinel._check_fence(p_fence bigint) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_fence is null or p_fence <= 0 then
        raise exception 'sentinel: fence must be a positive bigint, got %', coalesce(p_fence::text, 'NULL')
            using errcode = 'SN005';
    end if;
end
$$;
comment on function sentinel._check_fence(bigint) is
    'Raises SN005 for a NULL or non-positive fence.';

create function sentinel._check_text(p_name text, p_value text, p_max integer) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_value is null or btrim(p_value) = '' then
        raise exception 'sentinel: % must be a non-empty text', p_name
            using errcode = 'SN004';
    end if;
    if length(p_value) > p_max then
        raise exception 'sentinel: % is % characters long; the maximum is %', p_name, length(p_value), p_max
            using errcode = 'SN004';
    end if;
end
$$;
comment on function sentinel._check_text(text, text, integer) is
    'Raises SN004 when a required text argument (owner, actor, reason) is empty or too long.';

-- Why a lapsed execution is uncertain: heartbeats carried its lease up to the
-- hard deadline, or its worker stopped renewing it.
create function sentinel._lapse_reason(e sentinel.executions) returns text
    language sql immutable
    as $$
    select case
        when e.lease_expires_at >= e.hard_expires_at
             and e.hard_expires_at > e.claimed_at + e.ttl_ms * interval '1 millisecond'
        then 'hard deadline passed'
        else 'lease expired'
    end
$$;
comment on function sentinel._lapse_reason(sentinel.executions) is
    'uncertain_reason of a lapsed execution: hard deadline passed when heartbeats had carried the lease to it, else lease expired.';

-- A decided outcome for an existing row that needs no write, or NULL when the
-- caller may claim (or must mark the row uncertain) under a row lock.
create function sentinel._observe(e sentinel.executions, p_fingerprint text, p_now timestamptz)
    returns text
    language sql immutable
    as $$
    select case
        when p_fingerprint is not null and e.fingerprint is not null
             and p_fingerprint <> e.fingerprint               then 'mismatch'
        when e.state = 'completed'                           then 'completed'
        when e.state = 'failed' and e.error_permanent        then 'failed'
        when e.state = 'failed'                              then null
        when e.state = 'uncertain'                           then 'uncertain'
        when e.lease_expires_at > p_now                      then 'alive'
        else null
    end
$$;
comment on function sentinel._observe(sentinel.executions, text, timestamptz) is
    'What a caller of acquire sees in a row without changing it; NULL when the row must be claimed or marked uncertain.';

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
    as $$
    -- A mismatch reveals nothing of another caller's response or error.
    select row(
        p_outcome, e.fence, e.state, e.attempt,
        case when p_outcome = 'mismatch' then null else e.response end,
        case when p_outcome = 'mismatch' then null else e.error end,
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
    as $$
#variable_conflict use_variable
declare
    p_ns     constant text    := acquire_v1.namespace;
    p_key    constant text    := acquire_v1.key;
    p_owner  constant text    := acquire_v1.owner;
    p_fp     constant text    := acquire_v1.fingerprint;
    p_start  constant boolean := coalesce(acquire_v1.start, true);
    p_ttl    constant bigint  := acquire_v1.ttl_ms;
    p_hard   constant bigint  := coalesce(acquire_v1.hard_ttl_ms, acquire_v1.ttl_ms);
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

    -- 1. A plain read. Replays and live executions are answered from it, so a
    --    replay takes no lock and writes nothing.
    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key;
    if found then
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
                claimed_at, started_at, lease_expires_at, hard_expires_at, updated_at)
            values (
                p_ns, p_key, case when p_start then 'executing' else 'claimed' end,
                nextval('sentinel.fence_seq'), p_owner, 1, p_fp, p_ttl,
                v_now, case when p_start then v_now end, v_lease,
                v_now + p_hard * interval '1 millisecond', v_now)
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
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return sentinel._acquire_result('acquired', e, v_now);
end
$$;
comment on function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) is
    'Claims (namespace, key) or reports its state, in one round trip. '
    'outcome acquired: you own a new fence (state executing when start, else claimed; call begin_v1 before running). '
    'completed: response replayed. alive: another worker holds a live lease. uncertain: an execution started and its outcome is unknown. '
    'failed: a permanent error is replayed. mismatch: the key was used with another fingerprint. '
    'hard_ttl_ms defaults to ttl_ms. Raises SN001 (key), SN002 (namespace), SN003 (ttl), SN004 (owner, fingerprint). '
    'A replay takes no lock and writes nothing.';

create function sentinel.begin_v1(namespace text, key text, fence bigint)
    returns boolean
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_ns    constant text   := begin_v1.namespace;
    p_key   constant text   := begin_v1.key;
    p_fence constant bigint := begin_v1.fence;
    v_now   constant timestamptz := sentinel._now();
begin
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_fence is null or p_fence <= 0 then
        perform sentinel._check_fence(p_fence);
    end if;
    update sentinel.executions x
       set state = 'executing',
           started_at = v_now,
           lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and x.state = 'claimed'
       and x.lease_expires_at > v_now;
    return found;
end
$$;
comment on function sentinel.begin_v1(text, text, bigint) is
    'Moves your own live claim (state claimed, your fence, lease not lapsed) to executing and renews its lease. '
    'true: start the function now. false: the claim was taken over, lapsed or already begun; do not run. '
    'Raises SN001, SN002, SN005.';

create type sentinel.heartbeat_result_v1 as (
    alive             boolean,
    state             text,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    now               timestamptz
);
comment on type sentinel.heartbeat_result_v1 is
    'Result of heartbeat_v1. alive false: the caller has lost the execution.';

create function sentinel.heartbeat_v1(namespace text, key text, fence bigint)
    returns sentinel.heartbeat_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_ns    constant text   := heartbeat_v1.namespace;
    p_key   constant text   := heartbeat_v1.key;
    p_fence constant bigint := heartbeat_v1.fence;
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
    update sentinel.executions x
       set lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
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
    if e.fence = p_fence and e.state = 'executing' then
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
comment on function sentinel.heartbeat_v1(text, text, bigint) is
    'Renews the lease of your claim or execution by its ttl_ms, never past hard_expires_at. '
    'alive false: the lease lapsed, the hard deadline passed, or the fence is no longer current; stop when you can. '
    'An execution of yours whose lease lapsed is marked uncertain. Raises SN001, SN002, SN005.';

create type sentinel.finish_result_v1 as (
    outcome  text,
    state    text,
    fence    bigint,
    now      timestamptz
);
comment on type sentinel.finish_result_v1 is
    'Result of complete_v1 and fail_v1. outcome: recorded, already_recorded or stale.';

create function sentinel._finish(
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
    update sentinel.executions x
       set state = p_state,
           response = p_response,
           error = p_error,
           error_permanent = coalesce(p_permanent, false),
           finished_at = v_now,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (x.state in ('executing', 'uncertain')
            or (p_state = 'failed' and x.state = 'claimed'))
    returning * into e;
    if found then
        return row('recorded', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key;
    if found and e.fence = p_fence and e.state = p_state then
        -- A retry of a recording that already committed.
        return row('already_recorded', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    if found and e.fence = p_fence and e.state = 'claimed' then
        raise exception 'sentinel: cannot complete %/%: fence % was claimed but never begun (call begin_v1 first)',
            p_ns, p_key, p_fence
            using errcode = 'SN011';
    end if;
    return row('stale', e.state, e.fence, v_now)::sentinel.finish_result_v1;
end
$$;
comment on function sentinel._finish(text, text, bigint, text, jsonb, jsonb, boolean) is
    'Shared body of complete_v1 and fail_v1.';

create function sentinel.complete_v1(namespace text, key text, fence bigint, response jsonb)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if complete_v1.response is null then
        raise exception 'sentinel: response must not be SQL NULL (use the JSON value null)'
            using errcode = 'SN009';
    end if;
    return sentinel._finish(complete_v1.namespace, complete_v1.key, complete_v1.fence,
                            'completed', complete_v1.response, null, false);
end
$$;
comment on function sentinel.complete_v1(text, text, bigint, jsonb) is
    'Records the response of your execution (state executing, or uncertain while your fence is still current). '
    'outcome recorded; already_recorded when this fence already completed (a retried call); stale when the fence is '
    'no longer current: nothing changed. Raises SN001, SN002, SN005, SN009 (NULL response), SN011 (never begun).';

create function sentinel.fail_v1(namespace text, key text, fence bigint, error jsonb, permanent boolean default false)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if fail_v1.error is null then
        raise exception 'sentinel: error must not be SQL NULL'
            using errcode = 'SN009';
    end if;
    return sentinel._finish(fail_v1.namespace, fail_v1.key, fail_v1.fence,
                            'failed', null, fail_v1.error, coalesce(fail_v1.permanent, false));
end
$$;
comment on function sentinel.fail_v1(text, text, bigint, jsonb, boolean) is
    'Records that your claim or execution failed, with an error document. A later acquire claims the key again, '
    'unless permanent, in which case the error is replayed as outcome failed. Outcomes as complete_v1. '
    'Raises SN001, SN002, SN005, SN009 (NULL error).';

create type sentinel.abandon_result_v1 as (
    outcome  text,
    state    text,
    fence    bigint,
    now      timestamptz
);
comment on type sentinel.abandon_result_v1 is
    'Result of abandon_v1. outcome: uncertain, released or stale.';

create function sentinel.abandon_v1(namespace text, key text, fence bigint, reason text)
    returns sentinel.abandon_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_ns    constant text   := abandon_v1.namespace;
    p_key   constant text   := abandon_v1.key;
    p_fence constant bigint := abandon_v1.fence;
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
    perform sentinel._check_text('reason', abandon_v1.reason, 1000);
    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
     for update;
    if found and e.fence = p_fence and e.state = 'uncertain' then
        -- A retry of an abandon that already committed (or the lease lapsed meanwhile).
        return row('uncertain', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    if not found or e.fence <> p_fence or e.state not in ('claimed', 'executing') then
        return row('stale', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    if e.state = 'claimed' then
        -- Nothing ran: end the lease now so the next caller takes the claim over.
        update sentinel.executions x
           set lease_expires_at = least(v_now, x.lease_expires_at), updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        return row('released', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    update sentinel.executions x
       set state = 'uncertain', uncertain_reason = abandon_v1.reason, updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return row('uncertain', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
end
$$;
comment on function sentinel.abandon_v1(text, text, bigint, text) is
    'Gives up your claim or execution at once. An execution (state executing) becomes uncertain with the reason: '
    'the function may have had effects. A claim that never began is released for immediate takeover. '
    'A retry after the execution is already uncertain under the same fence answers uncertain again. '
    'stale when the fence is no longer current. Raises SN001, SN002, SN004 (reason), SN005.';

create type sentinel.execution_v1 as (
    namespace         text,
    key               text,
    state             text,
    stored_state      text,
    fence             bigint,
    owner             text,
    attempt           integer,
    fingerprint       text,
    ttl_ms            bigint,
    claimed_at        timestamptz,
    started_at        timestamptz,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    finished_at       timestamptz,
    response          jsonb,
    error             jsonb,
    error_permanent   boolean,
    uncertain_reason  text,
    reconciled_by     text,
    reconciled_at     timestamptz,
    reconcile_reason  text,
    updated_at        timestamptz,
    now               timestamptz
);
comment on type sentinel.execution_v1 is
    'An execution record as inspect_v1 and list_v1 show it. state is the effective state: an execution whose lease '
    'lapsed reads uncertain before anyone has marked it; stored_state is the column as stored.';

create function sentinel._execution(e sentinel.executions, p_now timestamptz)
    returns sentinel.execution_v1
    language sql immutable
    as $$
    select row(
        e.namespace, e.key,
        case when e.state = 'executing' and e.lease_expires_at <= p_now then 'uncertain' else e.state end,
        e.state, e.fence, e.owner, e.attempt, e.fingerprint, e.ttl_ms, e.claimed_at, e.started_at,
        e.lease_expires_at, e.hard_expires_at, e.finished_at, e.response, e.error, e.error_permanent,
        case when e.state = 'executing' and e.lease_expires_at <= p_now then sentinel._lapse_reason(e)
             else e.uncertain_reason end,
        e.reconciled_by, e.reconciled_at, e.reconcile_reason, e.updated_at, p_now
    )::sentinel.execution_v1
$$;
comment on function sentinel._execution(sentinel.executions, timestamptz) is
    'Builds an execution_v1 (with the effective state) from a row.';

create function sentinel.inspect_v1(namespace text, key text)
    returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
begin
    perform sentinel._check_key(inspect_v1.namespace, inspect_v1.key);
    return query
        select (sentinel._execution(x, v_now)).*
          from sentinel.executions x
         where x.namespace = inspect_v1.namespace and x.key = inspect_v1.key;
end
$$;
comment on function sentinel.inspect_v1(text, text) is
    'The execution record of (namespace, key), or no row. Raises SN001, SN002.';

create function sentinel.list_v1(
    namespace      text,
    state          text    default null,
    older_than_ms  bigint  default null,
    max_rows       integer default 100
) returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
begin
    perform sentinel._check_namespace(list_v1.namespace);
    if list_v1.state is not null
       and list_v1.state not in ('claimed', 'executing', 'completed', 'failed', 'uncertain') then
        raise exception 'sentinel: unknown state %; use claimed, executing, completed, failed or uncertain',
            quote_literal(list_v1.state)
            using errcode = 'SN006';
    end if;
    if list_v1.older_than_ms is not null
       and (list_v1.older_than_ms < 0 or list_v1.older_than_ms > 3153600000000) then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if list_v1.max_rows is null or list_v1.max_rows < 1 or list_v1.max_rows > 10000 then
        raise exception 'sentinel: max_rows must be between 1 and 10000' using errcode = 'SN006';
    end if;
    return query
        select r.*
          from sentinel.executions x,
               lateral sentinel._execution(x, v_now) r
         where x.namespace = list_v1.namespace
           and (list_v1.state is null or r.state = list_v1.state)
           and (list_v1.older_than_ms is null
                or x.updated_at <= v_now - list_v1.older_than_ms * interval '1 millisecond')
         order by x.updated_at, x.key
         limit list_v1.max_rows;
end
$$;
comment on function sentinel.list_v1(text, text, bigint, integer) is
    'Execution records of a namespace, oldest change first, filtered by effective state and by age of the last change. '
    'Raises SN002, SN003 (older_than_ms 0..100 years), SN006 (state, max_rows 1..10000).';

create type sentinel.reconcile_result_v1 as (
    previous_state  text,
    state           text,
    previous_fence  bigint,
    fence           bigint,
    now             timestamptz
);
comment on type sentinel.reconcile_result_v1 is
    'Result of reconcile_v1: the effective state before, the state after, and the new fence.';

create function sentinel.reconcile_v1(
    namespace  text,
    key        text,
    action     text,
    actor      text,
    reason     text,
    response   jsonb   default null,
    error      jsonb   default null,
    force      boolean default false
) returns sentinel.reconcile_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_ns     constant text := reconcile_v1.namespace;
    p_key    constant text := reconcile_v1.key;
    p_action constant text := reconcile_v1.action;
    v_now    constant timestamptz := sentinel._now();
    v_prev   text;
    v_stuck  boolean;
    e        sentinel.executions;
    v_old    bigint;
begin
    perform sentinel._check_key(p_ns, p_key);
    if p_action is null or p_action not in ('completed', 'failed', 'release') then
        raise exception 'sentinel: unknown reconcile action %; use completed, failed or release',
            coalesce(quote_literal(p_action), 'NULL')
            using errcode = 'SN006';
    end if;
    perform sentinel._check_text('actor', reconcile_v1.actor, 200);
    perform sentinel._check_text('reason', reconcile_v1.reason, 1000);
    if p_action = 'completed' and reconcile_v1.response is null then
        raise exception 'sentinel: reconcile as completed needs a response (jsonb)'
            using errcode = 'SN009';
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
     for update;
    if not found then
        raise exception 'sentinel: no execution record for %/%', p_ns, p_key
            using errcode = 'SN007';
    end if;

    v_prev := (sentinel._execution(e, v_now)).state;
    v_stuck := v_prev in ('uncertain', 'failed')
               or (v_prev = 'claimed' and e.lease_expires_at <= v_now);
    if not v_stuck and not coalesce(reconcile_v1.force, false) then
        raise exception 'sentinel: %/% is % (not uncertain, failed or a lapsed claim); pass force => true to override',
            p_ns, p_key, v_prev
            using errcode = 'SN008';
    end if;

    v_old := e.fence;
    update sentinel.executions x
       set state = case when p_action = 'completed' then 'completed' else 'failed' end,
           fence = nextval('sentinel.fence_seq'),
           owner = null,
           response = case when p_action = 'completed' then reconcile_v1.response end,
           error = case
                       when p_action = 'completed' then null
                       when p_action = 'release' then coalesce(reconcile_v1.error,
                           jsonb_build_object('released', true, 'reason', reconcile_v1.reason))
                       else coalesce(reconcile_v1.error,
                           jsonb_build_object('reconciled', true, 'reason', reconcile_v1.reason))
                   end,
           error_permanent = (p_action = 'failed'),
           lease_expires_at = least(x.lease_expires_at, v_now),
           finished_at = v_now,
           reconciled_by = reconcile_v1.actor,
           reconciled_at = v_now,
           reconcile_reason = reconcile_v1.reason,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return row(v_prev, e.state, v_old, e.fence, v_now)::sentinel.reconcile_result_v1;
end
$$;
comment on function sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean) is
    'Operator resolution of a key, always under a new fence (the previous owner is fenced out) with actor and reason recorded. '
    'action completed: store response, replayed from now on. failed: store error, replayed as a permanent failure. '
    'release: record a retryable failure, so the next acquire claims the key again. '
    'Without force only uncertain, failed or lapsed-claim keys are accepted. '
    'Raises SN001, SN002, SN004 (actor, reason), SN006 (action), SN007 (no record), SN008 (state), SN009 (no response).';

create function sentinel.purge_v1(namespace text, older_than_ms bigint, batch_size integer default 1000)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
    v_n   bigint;
begin
    perform sentinel._check_namespace(purge_v1.namespace);
    if purge_v1.older_than_ms is null or purge_v1.older_than_ms < 0
       or purge_v1.older_than_ms > 3153600000000 then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if purge_v1.batch_size is null or purge_v1.batch_size < 1 or purge_v1.batch_size > 100000 then
        raise exception 'sentinel: batch_size must be between 1 and 100000' using errcode = 'SN006';
    end if;
    with doomed as (
        select x.namespace, x.key
          from sentinel.executions x
         where x.namespace = purge_v1.namespace
           and x.state in ('completed', 'failed')
           and x.finished_at <= v_now - purge_v1.older_than_ms * interval '1 millisecond'
         limit purge_v1.batch_size
           for update skip locked
    )
    delete from sentinel.executions x
     using doomed d
     where x.namespace = d.namespace and x.key = d.key;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;
comment on function sentinel.purge_v1(text, bigint, integer) is
    'Deletes up to batch_size completed or failed records of a namespace finished at least older_than_ms ago; '
    'returns how many. Call again until it returns 0. Fences stay unique after a purge. '
    'Raises SN002, SN003 (older_than_ms 0..100 years), SN006 (batch_size 1..100000).';

create function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 1 $$;
comment on function sentinel.schema_version() is
    'The version of the Sentinel schema: the number of the newest migration that changed it.';

revoke all on all functions in schema sentinel from public;
