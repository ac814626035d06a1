-- Sentinel migration 0004 (pre): wake-ups for waiting callers, and per-record retention.
--
-- * A caller that waits for another worker's result registers with watch_v1.
--   Every transition of a watched key that ends a wait (to completed, failed
--   or uncertain, or a claim released for takeover) then sends NOTIFY on
--   channel sentinel.channel_v1(namespace) with the key as payload, in the
--   same transaction, so the waiter wakes up at its commit. Unwatched keys
--   send nothing: NOTIFY serialises committing transactions on a server-wide
--   lock, which no workload should pay for when nobody listens. Callers behind
--   a transaction-pooling PgBouncer, where LISTEN does not work, poll instead.
-- * complete_v2 and fail_v2 take retain_ms: the record may be purged that
--   long after it finished (purge_expired_v1). The _v1 functions stay as
--   they are: records they finish are kept until purge_v1 removes them.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

alter table sentinel.executions add column retain_until timestamptz;

create table sentinel.watchers (
    id          bigint generated always as identity primary key,
    namespace   text        not null,
    key         text        not null,
    expires_at  timestamptz not null
);
comment on table sentinel.watchers is
    'Callers waiting for a key''s outcome (watch_v1). A transition of a key with a live watcher sends NOTIFY.';
create index watchers_key_idx on sentinel.watchers (namespace, key);
revoke all on table sentinel.watchers from public;
comment on column sentinel.executions.retain_until is
    'When set (complete_v2/fail_v2 with retain_ms), purge_expired_v1 may delete the finished record from then on.';

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

create trigger executions_clear_retention
    before update on sentinel.executions
    for each row
    when (old.fence is distinct from new.fence and old.retain_until is not null)
    execute function sentinel._clear_retention();

create function sentinel.channel_v1(namespace text) returns text
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 'sentinel_' || md5(namespace) $$;
comment on function sentinel.channel_v1(text) is
    'The LISTEN channel of a namespace: sentinel_<md5(namespace)>. The payload of each notification is a watched '
    'key (watch_v1) whose execution finished, went uncertain, or whose claim was released.';

create function sentinel._notify_watchers(p_namespace text, p_key text) returns void
    language plpgsql
    as $$
begin
    if exists (select 1 from sentinel.watchers w
                where w.namespace = p_namespace and w.key = p_key and w.expires_at > sentinel._now()) then
        perform pg_notify(sentinel.channel_v1(p_namespace), p_key);
    end if;
end
$$;
comment on function sentinel._notify_watchers(text, text) is
    'Sends NOTIFY on channel_v1(namespace) with the key as payload, only when a live watcher waits for the key.';

create or replace function sentinel._log_transition() returns trigger
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
    if new.state in ('completed', 'failed', 'uncertain') then
        perform sentinel._notify_watchers(new.namespace, new.key);
    end if;
    return null;
end
$$;

-- A claim released by abandon_v1 changes only its lease: wake waiters too.
create function sentinel._notify_release() returns trigger
    language plpgsql
    as $$
begin
    perform sentinel._notify_watchers(new.namespace, new.key);
    return null;
end
$$;
comment on function sentinel._notify_release() is
    'Trigger function: notifies waiters when a claim that never began is released (its lease ended early).';

create trigger executions_notify_release
    after update on sentinel.executions
    for each row
    when (new.state = 'claimed' and old.state = 'claimed' and new.fence = old.fence
          and new.lease_expires_at < old.lease_expires_at)
    execute function sentinel._notify_release();

create function sentinel.watch_v1(namespace text, key text, wait_ms bigint)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now constant timestamptz := sentinel._now();
    v_id  bigint;
begin
    perform sentinel._check_key(watch_v1.namespace, watch_v1.key);
    if watch_v1.wait_ms is null or watch_v1.wait_ms < 1 or watch_v1.wait_ms > 2592000000 then
        raise exception 'sentinel: wait_ms must be between 1 and 2592000000 (30 days)' using errcode = 'SN003';
    end if;
    -- Watchers whose callers vanished are removed as the key is watched again.
    delete from sentinel.watchers w
     where w.namespace = watch_v1.namespace and w.key = watch_v1.key and w.expires_at <= v_now;
    insert into sentinel.watchers (namespace, key, expires_at)
    values (watch_v1.namespace, watch_v1.key, v_now + watch_v1.wait_ms * interval '1 millisecond')
    returning id into v_id;
    return v_id;
end
$$;
comment on function sentinel.watch_v1(text, text, bigint) is
    'Registers a caller that waits up to wait_ms for the outcome of (namespace, key): until then, the key''s '
    'transitions to completed, failed or uncertain (and a released claim) send NOTIFY on channel_v1(namespace). '
    'LISTEN on the channel first, then watch, then check the key again with acquire. Returns the watcher id for '
    'unwatch_v1. Raises SN001, SN002, SN003.';

create function sentinel.unwatch_v1(id bigint)
    returns boolean
    language sql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
    with gone as (delete from sentinel.watchers w where w.id = unwatch_v1.id returning 1)
    select exists (select 1 from gone)
$$;
comment on function sentinel.unwatch_v1(bigint) is
    'Removes a watcher registered by watch_v1; false when it was already gone (expired watchers are removed lazily).';

create function sentinel.complete_v2(namespace text, key text, fence bigint, response jsonb,
                                     retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    r sentinel.finish_result_v1;
begin
    if complete_v2.retain_ms is not null and (complete_v2.retain_ms < 0 or complete_v2.retain_ms > 3153600000000) then
        raise exception 'sentinel: retain_ms must be NULL or between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if complete_v2.response is null then
        raise exception 'sentinel: response must not be SQL NULL (use the JSON value null)'
            using errcode = 'SN009';
    end if;
    r := sentinel._finish(complete_v2.namespace, complete_v2.key, complete_v2.fence,
                          'completed', complete_v2.response, null, false);
    if r.outcome = 'recorded' and complete_v2.retain_ms is not null then
        update sentinel.executions x
           set retain_until = r.now + complete_v2.retain_ms * interval '1 millisecond'
         where x.namespace = complete_v2.namespace and x.key = complete_v2.key and x.fence = complete_v2.fence;
    end if;
    return r;
end
$$;
comment on function sentinel.complete_v2(text, text, bigint, jsonb, bigint) is
    'complete_v1 with retain_ms: when given, the record may be purged (purge_expired_v1) that long after it was '
    'recorded; NULL keeps it until purge_v1. Outcomes and SQLSTATEs as complete_v1, plus SN003 for retain_ms.';

create function sentinel.fail_v2(namespace text, key text, fence bigint, error jsonb,
                                 permanent boolean default false, retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    r sentinel.finish_result_v1;
begin
    if fail_v2.retain_ms is not null and (fail_v2.retain_ms < 0 or fail_v2.retain_ms > 3153600000000) then
        raise exception 'sentinel: retain_ms must be NULL or between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if fail_v2.error is null then
        raise exception 'sentinel: error must not be SQL NULL'
            using errcode = 'SN009';
    end if;
    r := sentinel._finish(fail_v2.namespace, fail_v2.key, fail_v2.fence,
                          'failed', null, fail_v2.error, coalesce(fail_v2.permanent, false));
    if r.outcome = 'recorded' and fail_v2.retain_ms is not null then
        update sentinel.executions x
           set retain_until = r.now + fail_v2.retain_ms * interval '1 millisecond'
         where x.namespace = fail_v2.namespace and x.key = fail_v2.key and x.fence = fail_v2.fence;
    end if;
    return r;
end
$$;
comment on function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) is
    'fail_v1 with retain_ms (see complete_v2). Outcomes and SQLSTATEs as fail_v1, plus SN003 for retain_ms.';

create function sentinel.purge_expired_v1(namespace text, batch_size integer default 1000)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now constant timestamptz := sentinel._now();
    v_n   bigint;
begin
    perform sentinel._check_namespace(purge_expired_v1.namespace);
    if purge_expired_v1.batch_size is null or purge_expired_v1.batch_size < 1
       or purge_expired_v1.batch_size > 100000 then
        raise exception 'sentinel: batch_size must be between 1 and 100000' using errcode = 'SN006';
    end if;
    with doomed as (
        select x.namespace, x.key
          from sentinel.executions x
         where x.namespace = purge_expired_v1.namespace
           and x.state in ('completed', 'failed')
           and x.retain_until <= v_now
         limit purge_expired_v1.batch_size
           for update skip locked
    )
    delete from sentinel.executions x
     using doomed d
     where x.namespace = d.namespace and x.key = d.key;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;
comment on function sentinel.purge_expired_v1(text, integer) is
    'Deletes up to batch_size completed or failed records of a namespace whose retain_until has passed; returns '
    'how many. Call again until it returns 0 (a pg_cron job can). Raises SN002, SN006.';

insert into sentinel.grantable (function, operator) values
    ('sentinel.channel_v1(text)', false),
    ('sentinel.watch_v1(text, text, bigint)', false),
    ('sentinel.unwatch_v1(bigint)', false),
    ('sentinel.complete_v2(text, text, bigint, jsonb, bigint)', false),
    ('sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint)', false),
    ('sentinel.purge_expired_v1(text, integer)', false);

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 4 $$;

-- Protocol version 2: the recording functions with retention (complete_v2,
-- fail_v2), beside version 1.
create or replace function sentinel.api_versions() returns integer[]
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select array[1, 2] $$;

revoke all on function sentinel.channel_v1(text) from public;
revoke all on function sentinel._notify_watchers(text, text) from public;
revoke all on function sentinel.watch_v1(text, text, bigint) from public;
revoke all on function sentinel.unwatch_v1(bigint) from public;
revoke all on function sentinel._notify_release() from public;
revoke all on function sentinel._clear_retention() from public;
revoke all on function sentinel.complete_v2(text, text, bigint, jsonb, bigint) from public;
revoke all on function sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint) from public;
revoke all on function sentinel.purge_expired_v1(text, integer) from public;
