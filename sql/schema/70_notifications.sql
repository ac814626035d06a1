-- Sentinel schema, current state: notifications.
-- A waiter registers with watch_v1 and LISTENs on channel_v1(namespace); a
-- transition of a watched key, or a released claim, sends NOTIFY.

create function sentinel.channel_v1(namespace text) returns text
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 'sentinel_' || md5(namespace) $$;
comment on function sentinel.channel_v1(text) is
    'The LISTEN channel of a namespace: sentinel_<md5(namespace)>. The payload of each notification is a watched '
    'key (watch_v1) whose execution finished, went uncertain, or whose claim was released.';
revoke all on function sentinel.channel_v1(text) from public;

create function sentinel._notify_watchers(p_namespace text, p_key text) returns void
    language plpgsql
    set search_path = pg_catalog, pg_temp
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
revoke all on function sentinel._notify_watchers(text, text) from public;

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
revoke all on function sentinel.watch_v1(text, text, bigint) from public;

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
revoke all on function sentinel.unwatch_v1(bigint) from public;
