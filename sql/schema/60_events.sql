-- Sentinel schema, current state: the event log.
-- One row per transition, written in the same transaction by triggers on
-- sentinel.executions; append-only; read with events_v1.

create function sentinel._log_transition() returns trigger
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
comment on function sentinel._log_transition() is
    'Trigger function: writes one sentinel.events row for a new execution record or a change of its state or fence. '
    'It runs as the writer of sentinel.executions, which is always the schema owner (through the protocol functions, '
    'whose search_path is pinned).';
revoke all on function sentinel._log_transition() from public;

create trigger executions_log_insert
    after insert on sentinel.executions
    for each row execute function sentinel._log_transition();

create trigger executions_log_transition
    after update of state, fence on sentinel.executions
    for each row
    when (old.state is distinct from new.state or old.fence is distinct from new.fence)
    execute function sentinel._log_transition();

create function sentinel._events_append_only() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if tg_op = 'DELETE' and current_setting('sentinel.purging_events', true) = 'on' then
        return old;
    end if;
    raise exception 'sentinel: the event log is append-only (% refused); use sentinel.purge_events_v1 for retention', tg_op
        using errcode = 'SN013';
end
$$;
comment on function sentinel._events_append_only() is
    'Trigger function: refuses UPDATE, DELETE and TRUNCATE on sentinel.events, except deletes made by purge_events_v1. '
    'The setting it honours takes effect only for a role that may DELETE from sentinel.events: its owner and '
    'superusers, who own the trigger too; no role granted by grant_v1 or grant_v2 has any table privilege.';
revoke all on function sentinel._events_append_only() from public;

create trigger events_append_only
    before update or delete on sentinel.events
    for each row execute function sentinel._events_append_only();

create trigger events_no_truncate
    before truncate on sentinel.events
    for each statement execute function sentinel._events_append_only();

create function sentinel.events_v1(namespace text, key text, max_rows integer default 1000)
    returns setof sentinel.events
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
begin
    perform sentinel._check_key(events_v1.namespace, events_v1.key);
    perform sentinel._authorize(events_v1.namespace, array['app', 'probe', 'operator', 'purge'], 'read records');
    if events_v1.max_rows is null or events_v1.max_rows < 1 or events_v1.max_rows > 100000 then
        raise exception 'sentinel: max_rows must be between 1 and 100000' using errcode = 'SN006';
    end if;
    return query
        select * from (
            select ev.* from sentinel.events ev
             where ev.namespace = events_v1.namespace and ev.key = events_v1.key
             order by ev.id desc
             limit events_v1.max_rows
        ) newest
        order by newest.id;
end
$$;
comment on function sentinel.events_v1(text, text, integer) is
    'The newest max_rows events of (namespace, key), oldest first. Raises SN001, SN002, SN006, 42501.';
revoke all on function sentinel.events_v1(text, text, integer) from public;
