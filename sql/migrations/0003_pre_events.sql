-- Sentinel migration 0003 (pre): the append-only execution log and statistics.
--
-- Every transition of sentinel.executions (a new claim, begin, completion,
-- failure, uncertainty, takeover, reconcile) is written to sentinel.events by a
-- trigger, in the same transaction as the transition itself. Lease renewals are
-- not transitions and write nothing. Rows can be added, never changed; only
-- purge_events_v1 deletes them, for retention.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create table sentinel.events (
    id          bigint generated always as identity primary key,
    namespace   text        not null,
    key         text        not null,
    fence       bigint      not null,
    from_state  text,
    to_state    text        not null,
    owner       text,
    actor       text,
    reason      text,
    at          timestamptz not null,
    details     jsonb       not null default '{}'
);
comment on table sentinel.events is
    'Append-only log: one row per transition of an execution record, written by a trigger in the same transaction. '
    'from_state NULL means the key had no record. actor: the owner for protocol calls, the operator for reconciles. '
    'Only purge_events_v1 deletes rows.';
create index events_key_idx on sentinel.events (namespace, key, id);
-- Rows arrive in time order: a BRIN index serves time ranges for almost nothing.
create index events_at_idx on sentinel.events using brin (at);
revoke all on table sentinel.events from public;

create function sentinel._log_transition() returns trigger
    language plpgsql
    as $$
declare
    v_reconciled boolean := tg_op = 'UPDATE' and new.reconciled_at is distinct from old.reconciled_at
                            and new.reconciled_at is not null;
begin
    insert into sentinel.events (namespace, key, fence, from_state, to_state, owner, actor, reason, at, details)
    values (
        new.namespace, new.key, new.fence,
        case when tg_op = 'UPDATE' then old.state end,
        new.state,
        new.owner,
        case when v_reconciled then new.reconciled_by else new.owner end,
        case
            when v_reconciled then new.reconcile_reason
            when new.state = 'uncertain' then new.uncertain_reason
        end,
        new.updated_at,
        jsonb_strip_nulls(jsonb_build_object(
            'attempt', new.attempt,
            'previous_fence', case when tg_op = 'UPDATE' and old.fence <> new.fence then old.fence end,
            'reconciled', case when v_reconciled then true end,
            'permanent', case when new.state = 'failed' and new.error_permanent then true end))
    );
    return null;
end
$$;
comment on function sentinel._log_transition() is
    'Trigger function: writes one sentinel.events row for a new execution record or a change of its state or fence. '
    'It runs as the writer of sentinel.executions, which is always the schema owner (through the protocol functions, '
    'whose search_path is pinned).';

create trigger executions_log_insert
    after insert on sentinel.executions
    for each row execute function sentinel._log_transition();
create trigger executions_log_transition
    after update on sentinel.executions
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
    'Trigger function: refuses UPDATE, DELETE and TRUNCATE on sentinel.events, except deletes made by purge_events_v1.';

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
    'The newest max_rows events of (namespace, key), oldest first. Raises SN001, SN002, SN006.';

create function sentinel.purge_events_v1(older_than_ms bigint, batch_size integer default 10000)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now constant timestamptz := sentinel._now();
    v_n   bigint;
begin
    if purge_events_v1.older_than_ms is null or purge_events_v1.older_than_ms < 0
       or purge_events_v1.older_than_ms > 3153600000000 then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if purge_events_v1.batch_size is null or purge_events_v1.batch_size < 1
       or purge_events_v1.batch_size > 1000000 then
        raise exception 'sentinel: batch_size must be between 1 and 1000000' using errcode = 'SN006';
    end if;
    perform set_config('sentinel.purging_events', 'on', true);
    delete from sentinel.events ev
     where ev.id in (
        select e2.id from sentinel.events e2
         where e2.at <= v_now - purge_events_v1.older_than_ms * interval '1 millisecond'
         order by e2.id
         limit purge_events_v1.batch_size);
    get diagnostics v_n = row_count;
    perform set_config('sentinel.purging_events', 'off', true);
    return v_n;
end
$$;
comment on function sentinel.purge_events_v1(bigint, integer) is
    'Retention of the event log (all namespaces): deletes up to batch_size events older than older_than_ms, '
    'oldest first; returns how many. Call again until it returns 0. Raises SN003, SN006.';

create type sentinel.stats_v1 as (
    namespace             text,
    claimed               bigint,
    executing             bigint,
    completed             bigint,
    failed                bigint,
    uncertain             bigint,
    oldest_uncertain_at   timestamptz,
    started_last_minute   bigint,
    finished_last_minute  bigint,
    now                   timestamptz
);
comment on type sentinel.stats_v1 is
    'Result of stats_v1: records by effective state, the oldest uncertain one (by its last change), and executions '
    'started (to executing) and finished (to completed or failed) during the last minute, from the event log.';

create function sentinel.stats_v1(namespace text)
    returns sentinel.stats_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now constant timestamptz := sentinel._now();
    r     sentinel.stats_v1;
begin
    perform sentinel._check_namespace(stats_v1.namespace);
    select stats_v1.namespace,
           count(*) filter (where x.state = 'claimed'),
           count(*) filter (where x.state = 'executing' and x.lease_expires_at > v_now),
           count(*) filter (where x.state = 'completed'),
           count(*) filter (where x.state = 'failed'),
           count(*) filter (where x.state = 'uncertain'
                              or (x.state = 'executing' and x.lease_expires_at <= v_now)),
           min(x.updated_at) filter (where x.state = 'uncertain'
                                       or (x.state = 'executing' and x.lease_expires_at <= v_now)),
           0, 0, v_now
      into r
      from sentinel.executions x
     where x.namespace = stats_v1.namespace;
    select count(*) filter (where ev.to_state = 'executing'),
           count(*) filter (where ev.to_state in ('completed', 'failed'))
      into r.started_last_minute, r.finished_last_minute
      from sentinel.events ev
     where ev.at > v_now - interval '1 minute'
       and ev.namespace = stats_v1.namespace;
    return r;
end
$$;
comment on function sentinel.stats_v1(text) is
    'Counts of a namespace''s records by effective state, the oldest uncertain one, and executions started and '
    'finished during the last minute. Scans the namespace''s records. Raises SN002.';

insert into sentinel.grantable (function, operator) values
    ('sentinel.events_v1(text, text, integer)', false),
    ('sentinel.stats_v1(text)', false),
    ('sentinel.purge_events_v1(bigint, integer)', true);

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 3 $$;

revoke all on function sentinel._log_transition() from public;
revoke all on function sentinel._events_append_only() from public;
revoke all on function sentinel.events_v1(text, text, integer) from public;
revoke all on function sentinel.purge_events_v1(bigint, integer) from public;
revoke all on function sentinel.stats_v1(text) from public;
