-- Sentinel schema, current state: the event log.
-- One row per transition, written in the same transaction by the functions
-- that change sentinel.executions; append-only; read with events_v1.

-- Events are written by the protocol functions themselves, in the statement
-- after each change of state or fence: the hot transitions (a new record, a
-- recording) with one INSERT each, the rare ones through _log_change. Only the
-- functions write sentinel.executions; a guard refuses any other INSERT or
-- UPDATE, which would change a record without its event.
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
