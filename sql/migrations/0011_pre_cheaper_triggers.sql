-- Sentinel migration 0011 (pre): the triggers of sentinel.executions cost a
-- renewal nothing, and the event log is written with less work.
--
-- A heartbeat changes only the lease, yet every UPDATE of sentinel.executions
-- evaluated the conditions of three row triggers (about a quarter of
-- heartbeat_v1's server time, bench scenario 11). Now:
--
-- * the triggers that look at state and fence fire only for an UPDATE that
--   sets those columns (UPDATE OF state, fence / OF fence), so a renewal skips
--   them without evaluating anything; every transition sets them, so no event
--   is lost;
-- * the release of a claim by abandon_v1 wakes its waiters itself, instead of
--   a trigger checking every update for it (executions_notify_release and
--   sentinel._notify_release() are dropped);
-- * _log_transition() writes the event of a new record without the
--   comparisons an update needs.
--
-- What the functions answer and the events they log are unchanged.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create or replace function sentinel._log_transition() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_reconciled boolean;
begin
    if tg_op = 'INSERT' then
        -- A new record: claimed or executing, attempt 1, nothing to compare.
        insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
        values (new.namespace, new.key, new.fence, null, new.state, new.owner, new.owner, null, new.updated_at,
                jsonb_build_object('attempt', new.attempt));
        return null;
    end if;
    v_reconciled := new.reconciled_at is distinct from old.reconciled_at and new.reconciled_at is not null;
    insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
    values (
        new.namespace, new.key, new.fence, old.state, new.state, new.owner,
        case when v_reconciled then new.reconciled_by else new.owner end,
        case
            when v_reconciled then new.reconcile_reason
            when new.state = 'uncertain' then new.uncertain_reason
        end,
        new.updated_at,
        jsonb_strip_nulls(jsonb_build_object(
            'attempt', new.attempt,
            'previous_fence', case when old.fence <> new.fence then old.fence end,
            'reconciled', case when v_reconciled then true end,
            'permanent', case when new.state = 'failed' and new.error_permanent then true end))
    );
    if new.state in ('completed', 'failed', 'uncertain') then
        perform sentinel._notify_watchers(new.namespace, new.key);
    end if;
    return null;
end
$$;

drop trigger executions_log_transition on sentinel.executions;
create trigger executions_log_transition
    after update of state, fence on sentinel.executions
    for each row
    when (old.state is distinct from new.state or old.fence is distinct from new.fence)
    execute function sentinel._log_transition();

drop trigger executions_clear_retention on sentinel.executions;
create trigger executions_clear_retention
    before update of fence on sentinel.executions
    for each row
    when (old.fence is distinct from new.fence and old.retain_until is not null)
    execute function sentinel._clear_retention();

drop trigger executions_notify_release on sentinel.executions;
-- A private trigger function no client calls (its trigger is gone above):
-- squawk-ignore ban-drop-function
drop function sentinel._notify_release();

create or replace function sentinel.abandon_v1(namespace text, key text, fence bigint, reason text)
    returns sentinel.abandon_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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
        -- The claim changed only its lease (no event): wake the key's waiters here.
        perform sentinel._notify_watchers(p_ns, p_key);
        return row('released', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    update sentinel.executions x
       set state = 'uncertain', uncertain_reason = abandon_v1.reason, updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return row('uncertain', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
end
$$;

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 11 $$;
