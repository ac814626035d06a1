-- Sentinel migration 0005 (pre): a failure reported after the lease was lost
-- never re-opens a key.
--
-- Until now fail_v1/fail_v2 recorded a retryable failure on an execution that
-- had already gone uncertain (or whose lease had lapsed) as long as its fence
-- was current. A function that raises because it noticed it lost its lease
-- (ExecutionContext.check() raising LeaseLost, a timeout, a cancelled
-- request) may have had effects before it raised, and other callers may
-- already have been told the outcome is uncertain: recording "failed" would
-- let the next caller run the work again.
--
-- From this migration on, for every client (_v1 and _v2 alike):
-- * a failure reported while the lease is still valid is recorded as before
--   (outcome recorded, state failed, retryable unless permanent);
-- * a failure reported under the current fence after the lease lapsed, or
--   after the execution was marked uncertain, leaves the key uncertain. The
--   error document is kept on the record as evidence for the reconciler
--   (inspect_v1 shows it in error) and a 'late failure' event is logged. The
--   outcome is uncertain. Only a completion under that still-current fence
--   or an operator's reconcile_v1 resolves the key.
-- * a failure of a claim that never began (state claimed) is recorded as
--   before: nothing ran.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

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
comment on function sentinel._finish(text, text, bigint, text, jsonb, jsonb, boolean) is
    'Shared body of complete_v1/v2 and fail_v1/v2. A failure reported after the lease lapsed or the execution went '
    'uncertain leaves the key uncertain, keeps the error as evidence and logs a late failure event (outcome uncertain).';

comment on type sentinel.finish_result_v1 is
    'Result of complete_v1/v2 and fail_v1/v2. outcome: recorded, already_recorded, stale, or (fail only) uncertain: '
    'the failure came after the lease was lost, so the key stays uncertain with the error kept as evidence.';

comment on function sentinel.fail_v1(text, text, bigint, jsonb, boolean) is
    'Records that your claim or execution failed, with an error document. A later acquire claims the key again, '
    'unless permanent, in which case the error is replayed as outcome failed. Outcome recorded only while the lease '
    'is valid (or the claim never began); after the lease lapsed or the execution went uncertain the outcome is '
    'uncertain: the key stays uncertain, the error is kept as evidence (inspect_v1, events_v1) and only a completion '
    'or reconcile_v1 resolves it. already_recorded and stale as complete_v1. Raises SN001, SN002, SN005, SN009 (NULL error).';

comment on function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) is
    'fail_v1 with retain_ms (see complete_v2). Outcomes (recorded, already_recorded, uncertain, stale) and SQLSTATEs '
    'as fail_v1, plus SN003 for retain_ms.';

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 5 $$;
