-- Sentinel schema, current state: finishing an execution.
-- complete, fail and abandon, all through _finish, which enforces the fence,
-- the lease and the size caps; a late report keeps an uncertain key uncertain.
-- Retention (retain_ms) and its reset on a new fence.

create type sentinel.finish_result_v1 as (
    outcome  text,
    state    text,
    fence    bigint,
    now      timestamptz
);

comment on type sentinel.finish_result_v1 is
    'Result of complete and fail. outcome: recorded, already_recorded, stale, or (fail only) uncertain: '
    'the failure came after the lease was lost, so the key stays uncertain with the error kept as evidence; '
    '(complete_v3 and fail_v3 only) conflict: this fence already recorded a different response or error, '
    'which stands.';

create function sentinel._finish(
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

create function sentinel.complete_v1(namespace text, key text, fence bigint, response jsonb)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    if complete_v1.response is null then
        raise exception 'sentinel: response must not be SQL NULL (use the JSON value null)'
            using errcode = 'SN009';
    end if;
    return sentinel._finish(complete_v1.namespace, complete_v1.key, complete_v1.fence, null,
                            'completed', complete_v1.response, null, false);
end
$$;
comment on function sentinel.complete_v1(text, text, bigint, jsonb) is
    'Records the response of your execution (state executing, or uncertain while your fence is still current). '
    'outcome recorded; already_recorded when this fence already completed (a retried call); stale when the fence is '
    'no longer current: nothing changed. Raises SN001, SN002, SN005, SN009 (NULL response), SN011 (never begun), '
    '42501 (no app right on the namespace). Legacy: asks no proof of the claim (complete_v3 does).';

create function sentinel.fail_v1(namespace text, key text, fence bigint, error jsonb, permanent boolean default false)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    if fail_v1.error is null then
        raise exception 'sentinel: error must not be SQL NULL'
            using errcode = 'SN009';
    end if;
    return sentinel._finish(fail_v1.namespace, fail_v1.key, fail_v1.fence, null,
                            'failed', null, fail_v1.error, coalesce(fail_v1.permanent, false));
end
$$;
comment on function sentinel.fail_v1(text, text, bigint, jsonb, boolean) is
    'Records that your claim or execution failed, with an error document. A later acquire claims the key again, '
    'unless permanent, in which case the error is replayed as outcome failed. Outcome recorded only while the lease '
    'is valid (or the claim never began); after the lease lapsed or the execution went uncertain the outcome is '
    'uncertain: the key stays uncertain, the error is kept as evidence (inspect_v1, events_v1) and only a completion '
    'or reconcile_v1 resolves it. already_recorded and stale as complete_v1. Raises SN001, SN002, SN005, SN009 (NULL '
    'error), 42501. Legacy: asks no proof of the claim (fail_v3 does).';

create type sentinel.abandon_result_v1 as (
    outcome  text,
    state    text,
    fence    bigint,
    now      timestamptz
);

comment on type sentinel.abandon_result_v1 is
    'Result of abandon_v1 and abandon_v2. outcome: uncertain, released or stale.';

create function sentinel._abandon(p_ns text, p_key text, p_fence bigint, p_token text, p_reason text)
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

create function sentinel.abandon_v1(namespace text, key text, fence bigint, reason text)
    returns sentinel.abandon_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._abandon(abandon_v1.namespace, abandon_v1.key, abandon_v1.fence, null, abandon_v1.reason);
end
$$;
comment on function sentinel.abandon_v1(text, text, bigint, text) is
    'Gives up your claim or execution at once. An execution (state executing) becomes uncertain with the reason: '
    'the function may have had effects. A claim that never began is released for immediate takeover. '
    'A retry after the execution is already uncertain under the same fence answers uncertain again. '
    'stale when the fence is no longer current. Raises SN001, SN002, SN004 (reason), SN005, 42501. '
    'Legacy: asks no proof of the claim (abandon_v2 does).';

create function sentinel.abandon_v2(namespace text, key text, fence bigint, token text, reason text)
    returns sentinel.abandon_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    perform sentinel._check_token(abandon_v2.token);
    return sentinel._abandon(abandon_v2.namespace, abandon_v2.key, abandon_v2.fence, abandon_v2.token,
                             abandon_v2.reason);
end
$$;
comment on function sentinel.abandon_v2(text, text, bigint, text, text) is
    'abandon_v1 for the holder of the claim only: token is the one given to acquire_v2 (stale for any other). '
    'Raises SN001, SN002, SN004 (reason, token), SN005, 42501.';

-- A new fence (a new claim, a takeover, a reconcile) starts without retention.
create function sentinel._clear_retention() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
begin
    new.retain_until := null;
    return new;
end
$$;
comment on function sentinel._clear_retention() is
    'Trigger function: a record under a new fence forgets the retention of the previous execution.';
revoke all on function sentinel._clear_retention() from public;

create trigger executions_clear_retention
    before update of fence on sentinel.executions
    for each row
    when (old.fence is distinct from new.fence and old.retain_until is not null)
    execute function sentinel._clear_retention();

-- Recording with retention: complete_v2/v3 and fail_v2/v3.
create function sentinel._record(
    p_ns text, p_key text, p_fence bigint, p_token text, p_state text,
    p_response jsonb, p_error jsonb, p_permanent boolean, p_retain_ms bigint)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    r sentinel.finish_result_v1;
begin
    if p_retain_ms is not null and (p_retain_ms < 0 or p_retain_ms > 3153600000000) then
        raise exception 'sentinel: retain_ms must be NULL or between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if p_state = 'completed' and p_response is null then
        raise exception 'sentinel: response must not be SQL NULL (use the JSON value null)'
            using errcode = 'SN009';
    end if;
    if p_state = 'failed' and p_error is null then
        raise exception 'sentinel: error must not be SQL NULL'
            using errcode = 'SN009';
    end if;
    r := sentinel._finish(p_ns, p_key, p_fence, p_token, p_state, p_response, p_error, coalesce(p_permanent, false));
    if r.outcome = 'recorded' and p_retain_ms is not null then
        update sentinel.executions x
           set retain_until = r.now + p_retain_ms * interval '1 millisecond'
         where x.namespace = p_ns and x.key = p_key and x.fence = p_fence;
    end if;
    return r;
end
$$;
comment on function sentinel._record(text, text, bigint, text, text, jsonb, jsonb, boolean, bigint) is
    'Shared body of complete_v2/v3 and fail_v2/v3: the argument checks, _finish, and the retention of a recorded '
    'outcome.';

create function sentinel.complete_v2(namespace text, key text, fence bigint, response jsonb,
                                     retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._record(complete_v2.namespace, complete_v2.key, complete_v2.fence, null, 'completed',
                            complete_v2.response, null, false, complete_v2.retain_ms);
end
$$;
comment on function sentinel.complete_v2(text, text, bigint, jsonb, bigint) is
    'complete_v1 with retain_ms: when given, the record may be purged (purge_expired_v1) that long after it was '
    'recorded; NULL keeps it until purge_v1. Outcomes and SQLSTATEs as complete_v1, plus SN003 for retain_ms. '
    'Legacy: asks no proof of the claim (complete_v3 does).';
revoke all on function sentinel.complete_v2(text, text, bigint, jsonb, bigint) from public;

create function sentinel.fail_v2(namespace text, key text, fence bigint, error jsonb,
                                 permanent boolean default false, retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    return sentinel._record(fail_v2.namespace, fail_v2.key, fail_v2.fence, null, 'failed',
                            null, fail_v2.error, fail_v2.permanent, fail_v2.retain_ms);
end
$$;
comment on function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) is
    'fail_v1 with retain_ms (see complete_v2). Outcomes (recorded, already_recorded, uncertain, stale) and SQLSTATEs '
    'as fail_v1, plus SN003 for retain_ms. Legacy: asks no proof of the claim (fail_v3 does).';
revoke all on function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) from public;

create function sentinel.complete_v3(namespace text, key text, fence bigint, token text, response jsonb,
                                     retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    perform sentinel._check_token(complete_v3.token);
    return sentinel._record(complete_v3.namespace, complete_v3.key, complete_v3.fence, complete_v3.token,
                            'completed', complete_v3.response, null, false, complete_v3.retain_ms);
end
$$;
comment on function sentinel.complete_v3(text, text, bigint, text, jsonb, bigint) is
    'complete_v2 for the holder of the claim only: token is the one given to acquire_v2; with any other token the '
    'outcome is stale and nothing changes. A retry of a recording that committed answers already_recorded when it '
    'reports the same response, conflict when the stored one differs (it stands). Raises SN001, SN002, SN003, '
    'SN004 (token), SN005, SN009, SN011, SN015, 42501.';
revoke all on function sentinel.complete_v3(text, text, bigint, text, jsonb, bigint) from public;

create function sentinel.fail_v3(namespace text, key text, fence bigint, token text, error jsonb,
                                 permanent boolean default false, retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    set sentinel.writer = 'protocol'
    as $$
begin
    perform sentinel._check_token(fail_v3.token);
    return sentinel._record(fail_v3.namespace, fail_v3.key, fail_v3.fence, fail_v3.token, 'failed',
                            null, fail_v3.error, fail_v3.permanent, fail_v3.retain_ms);
end
$$;
comment on function sentinel.fail_v3(text, text, bigint, text, jsonb, boolean, bigint) is
    'fail_v2 for the holder of the claim only (see complete_v3): stale for any other token; a retry that reports '
    'another error than the stored one answers conflict. Outcomes recorded, already_recorded, conflict, uncertain, '
    'stale. Raises SN001, SN002, SN003, SN004 (token), SN005, SN009, SN015, 42501.';
revoke all on function sentinel.fail_v3(text, text, bigint, text, jsonb, boolean, bigint) from public;
