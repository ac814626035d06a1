-- Sentinel migration 0014 (pre): less work in the database per call.
--
-- * The events of sentinel.executions are written by the functions that
--   change it, in the statement after each change (the hot transitions, a new
--   record and a recording, with one INSERT each; the rare ones through
--   _log_change), instead of two row triggers: the event rows, their columns
--   and the notifications are the same. The log triggers and
--   _log_transition() are dropped. A statement trigger refuses any other
--   INSERT or UPDATE of the table (SQLSTATE SN017) unless sentinel.writer is
--   'protocol', as every writing function sets it for its call.
-- * acquire, complete, fail and heartbeat check the caller's own right with
--   one primary-key probe before falling back to _authorize.
-- * sentinel.decided_v1: the decided keys (completed, or failed for good),
--   readable by a role holding the app right on their namespace itself,
--   without a function call. A replay that reads it in the statement that
--   would otherwise call acquire_v2 costs a primary-key read.
--
-- What every function answers is unchanged; api_versions() is unchanged.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

drop trigger executions_log_insert on sentinel.executions;
drop trigger executions_log_transition on sentinel.executions;
-- Private: only the dropped triggers called it.
-- squawk-ignore ban-drop-function
drop function sentinel._log_transition();

create function sentinel._log_change(p_from text, p_prev_fence bigint, e sentinel.executions, p_reconciled boolean)
    returns boolean
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
begin
    insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
    values (
        e.namespace, e.key, e.fence, p_from, e.state, e.owner,
        case when p_reconciled then e.reconciled_by else e.owner end,
        case
            when p_reconciled then e.reconcile_reason
            when e.state = 'uncertain' then e.uncertain_reason
        end,
        e.updated_at,
        jsonb_strip_nulls(jsonb_build_object(
            'attempt', e.attempt,
            'previous_fence', case when p_prev_fence <> e.fence then p_prev_fence end,
            'reconciled', case when p_reconciled then true end,
            'permanent', case when e.state = 'failed' and e.error_permanent then true end))
    );
    if e.state in ('completed', 'failed', 'uncertain') then
        perform sentinel._notify_watchers(e.namespace, e.key);
    end if;
    return true;
end
$$;
comment on function sentinel._log_change(text, bigint, sentinel.executions, boolean) is
    'Writes the event of a change of an execution record (the row as it is now, e) from state p_from and fence '
    'p_prev_fence, and wakes the key''s watchers when it finished or went uncertain. p_reconciled: the change is an '
    'operator''s reconcile (actor and reason are the reconciler''s). Called by the protocol functions after each '
    'such change (the hot transitions write their event inline, with the same columns).';
revoke all on function sentinel._log_change(text, bigint, sentinel.executions, boolean) from public;

create function sentinel._refuse_direct_write() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
begin
    raise exception 'sentinel: % of sentinel.executions outside the Sentinel functions refused: the event log would '
                    'miss the change', tg_op
        using errcode = 'SN017',
              hint = 'change records with the functions (reconcile_v1 resolves a key, purge_v1 deletes); to write '
                     'the table by hand anyway, SET LOCAL sentinel.writer = ''protocol'' in the transaction and '
                     'insert the matching sentinel.events rows yourself';
end
$$;
comment on function sentinel._refuse_direct_write() is
    'Trigger function: refuses an INSERT or UPDATE of sentinel.executions unless sentinel.writer is ''protocol'', '
    'as the writing functions set it for the length of their call.';
revoke all on function sentinel._refuse_direct_write() from public;

create trigger executions_writers
    before insert or update on sentinel.executions
    for each statement
    when (pg_catalog.current_setting('sentinel.writer', true) is distinct from 'protocol')
    execute function sentinel._refuse_direct_write();

comment on table sentinel.events is
    'Append-only log: one row per transition of an execution record, written in the same transaction by the function '
    'that made it. from_state NULL means the key had no record. actor: the owner for protocol calls, the operator '
    'for reconciles. Only purge_events_v1 deletes rows. db_user: the login role (session_user) of the call that '
    'caused the event; db_role: the role it had set with SET ROLE, if any (NULL for events older than schema '
    'version 12).';

create or replace function sentinel._acquire(
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

create or replace function sentinel._begin(p_ns text, p_key text, p_fence bigint, p_token text)
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

create or replace function sentinel._heartbeat(p_ns text, p_key text, p_fence bigint, p_token text)
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

create or replace function sentinel.heartbeat_many_v1(namespace text, keys text[], fences bigint[], tokens text[])
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

create or replace function sentinel._finish(
    p_ns text, p_key text, p_fence bigint, p_token text, p_state text,
    p_response jsonb, p_error jsonb, p_permanent boolean)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now  constant timestamptz := sentinel._now();
    v_perm constant boolean := coalesce(p_permanent, false);
    v_from text;
    v_owner text;
    v_attempt integer;
    e      sentinel.executions;
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
    -- Documents over the cap are refused before anything is written (a cheap
    -- size test first: the limits are read only for documents over 1 KiB).
    if p_response is not null and pg_column_size(p_response) > 1024 then
        perform sentinel._check_size('response', p_response, 'max_response_bytes');
    end if;
    if p_error is not null and pg_column_size(p_error) > 1024 then
        perform sentinel._check_size('error', p_error, 'max_error_bytes');
    end if;
    -- The usual case: the execution reports while its lease holds (a
    -- completion also after it lapsed, while nobody marked it).
    update sentinel.executions x
       set state = p_state,
           response = p_response,
           error = p_error,
           error_permanent = v_perm,
           finished_at = v_now,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (p_token is null or x.claim_token = p_token)
       and x.state = 'executing'
       and (p_state = 'completed' or x.lease_expires_at > v_now)
    returning x.owner, x.attempt into v_owner, v_attempt;
    if found then
        -- Its event (the columns _log_change writes) and the key's watchers.
        insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
        values (p_ns, p_key, p_fence, 'executing', p_state, v_owner, v_owner, null, v_now,
                case when p_state = 'failed' and v_perm
                     then jsonb_build_object('attempt', v_attempt, 'permanent', true)
                     else jsonb_build_object('attempt', v_attempt) end);
        if exists (select 1 from sentinel.watchers w where w.namespace = p_ns and w.key = p_key) then
            perform sentinel._notify_watchers(p_ns, p_key);
        end if;
        return row('recorded', p_state, p_fence, v_now)::sentinel.finish_result_v1;
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
       for update;
    if found and e.fence = p_fence and (p_token is null or e.claim_token = p_token)
       and (case p_state
                when 'completed' then e.state in ('executing', 'uncertain')
                -- A failure is the truth only while the lease holds, or when nothing ever ran.
                else e.state = 'claimed' or (e.state = 'executing' and e.lease_expires_at > v_now)
            end) then
        v_from := e.state;
        update sentinel.executions x
           set state = p_state,
               response = p_response,
               error = p_error,
               error_permanent = v_perm,
               finished_at = v_now,
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        perform sentinel._log_change(v_from, p_fence, e, false);
        return row('recorded', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    if found and e.fence = p_fence and p_token is not null and e.claim_token is distinct from p_token then
        -- The fence is public; the token proves the claim. Not yours: nothing changes.
        return row('stale', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    if found and e.fence = p_fence and e.state = p_state then
        -- A retry of a recording that already committed; with a token, what is
        -- stored is compared with what is reported.
        if p_token is not null and (e.response is distinct from p_response or e.error is distinct from p_error
                                    or e.error_permanent is distinct from v_perm) then
            return row('conflict', e.state, e.fence, v_now)::sentinel.finish_result_v1;
        end if;
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
        v_from := e.state;
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = coalesce(x.uncertain_reason, sentinel._lapse_reason(x)),
               error = p_error,
               error_permanent = false,
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        if v_from <> 'uncertain' then
            -- executing, lease lapsed: the key goes uncertain now.
            perform sentinel._log_change(v_from, p_fence, e, false);
        end if;
        insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
        values (e.namespace, e.key, e.fence, 'uncertain', 'uncertain', e.owner, e.owner,
                'late failure: the function raised after its lease was lost; the key stays uncertain',
                v_now, jsonb_build_object('attempt', e.attempt, 'late_failure', true, 'error', p_error));
        return row('uncertain', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    return row('stale', e.state, e.fence, v_now)::sentinel.finish_result_v1;
end
$$;
comment on function sentinel._finish(text, text, bigint, text, text, jsonb, jsonb, boolean) is
    'Shared body of complete and fail; p_token NULL (the legacy _v1/_v2) asks no proof of the claim and does not '
    'compare a retried recording. A failure reported after the lease lapsed or the execution went '
    'uncertain leaves the key uncertain, keeps the error as evidence and logs a late failure event (outcome uncertain). '
    'A document over its cap in sentinel.limits raises SN015 before anything is written.';

create or replace function sentinel._abandon(p_ns text, p_key text, p_fence bigint, p_token text, p_reason text)
    returns sentinel.abandon_result_v1
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
    perform sentinel._check_text('reason', p_reason, 1000);
    perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
     for update;
    if found and e.fence = p_fence and p_token is not null and e.claim_token is distinct from p_token then
        -- The fence is public; the token proves the claim. Not yours: nothing changes.
        return row('stale', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
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
        -- The claim changed only its lease (no event): wake the key's waiters.
        perform sentinel._notify_watchers(p_ns, p_key);
        return row('released', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    update sentinel.executions x
       set state = 'uncertain', uncertain_reason = p_reason, updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    perform sentinel._log_change('executing', p_fence, e, false);
    return row('uncertain', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
end
$$;
comment on function sentinel._abandon(text, text, bigint, text, text) is
    'Shared body of abandon_v1 (p_token NULL: no proof asked) and abandon_v2.';

create or replace function sentinel.reconcile_v1(
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
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
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
    v_from   text;
    v_operator boolean;
begin
    perform sentinel._check_key(p_ns, p_key);
    if p_action is null or p_action not in ('completed', 'failed', 'release') then
        raise exception 'sentinel: unknown reconcile action %; use completed, failed or release',
            coalesce(quote_literal(p_action), 'NULL')
            using errcode = 'SN006';
    end if;
    perform sentinel._check_text('actor', reconcile_v1.actor, 200);
    perform sentinel._check_text('reason', reconcile_v1.reason, 1000);
    -- The operator right resolves any key; the probe right only an uncertain one, without force.
    v_operator := sentinel._may(p_ns, array['operator']);
    if not v_operator then
        perform sentinel._authorize(p_ns, array['probe', 'operator'], 'reconcile keys');
    end if;
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
    if not v_operator and (v_prev <> 'uncertain' or coalesce(reconcile_v1.force, false)) then
        raise exception 'sentinel: role % may only resolve uncertain keys of namespace %, without force (%/% is %)',
            quote_ident(sentinel._caller()), quote_literal(p_ns), p_ns, p_key, v_prev
            using errcode = '42501',
                  hint = format('the probe right resolves uncertain keys only; an operator has: '
                                'sentinel grant %s --namespace %s --operator', sentinel._caller(), p_ns);
    end if;
    v_stuck := v_prev in ('uncertain', 'failed')
               or (v_prev = 'claimed' and e.lease_expires_at <= v_now);
    if not v_stuck and not coalesce(reconcile_v1.force, false) then
        raise exception 'sentinel: %/% is % (not uncertain, failed or a lapsed claim); pass force => true to override',
            p_ns, p_key, v_prev
            using errcode = 'SN008';
    end if;

    v_old := e.fence;
    v_from := e.state;
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
    perform sentinel._log_change(v_from, v_old, e, true);
    return row(v_prev, e.state, v_old, e.fence, v_now)::sentinel.reconcile_result_v1;
end
$$;
comment on function sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean) is
    'Operator resolution of a key, always under a new fence (the previous owner is fenced out) with actor and reason recorded. '
    'action completed: store response, replayed from now on. failed: store error, replayed as a permanent failure. '
    'release: record a retryable failure, so the next acquire claims the key again. '
    'Without force only uncertain, failed or lapsed-claim keys are accepted. '
    'Raises SN001, SN002, SN004 (actor, reason), SN006 (action), SN007 (no record), SN008 (state), SN009 (no '
    'response), 42501: the operator right on the namespace resolves any key; the probe right only an uncertain one, '
    'without force.';

-- The writing functions mark their call for the guard.
alter function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) set sentinel.writer = 'protocol';
alter function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) set sentinel.writer = 'protocol';
alter function sentinel.begin_v1(text, text, bigint) set sentinel.writer = 'protocol';
alter function sentinel.begin_v2(text, text, bigint, text) set sentinel.writer = 'protocol';
alter function sentinel.heartbeat_v1(text, text, bigint) set sentinel.writer = 'protocol';
alter function sentinel.heartbeat_v2(text, text, bigint, text) set sentinel.writer = 'protocol';
alter function sentinel.heartbeat_many_v1(text, text[], bigint[], text[]) set sentinel.writer = 'protocol';
alter function sentinel.complete_v1(text, text, bigint, jsonb) set sentinel.writer = 'protocol';
alter function sentinel.complete_v2(text, text, bigint, jsonb, bigint) set sentinel.writer = 'protocol';
alter function sentinel.complete_v3(text, text, bigint, text, jsonb, bigint) set sentinel.writer = 'protocol';
alter function sentinel.fail_v1(text, text, bigint, jsonb, boolean) set sentinel.writer = 'protocol';
alter function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) set sentinel.writer = 'protocol';
alter function sentinel.fail_v3(text, text, bigint, text, jsonb, boolean, bigint) set sentinel.writer = 'protocol';
alter function sentinel.abandon_v1(text, text, bigint, text) set sentinel.writer = 'protocol';
alter function sentinel.abandon_v2(text, text, bigint, text, text) set sentinel.writer = 'protocol';

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

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 14 $$;
comment on function sentinel.schema_version() is
    'The version of the Sentinel schema: the number of the newest migration that changed it.';
