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
declare
    v_now    constant timestamptz := sentinel._now();
    v_legacy boolean := false;
    w        record;
begin
    for w in select w2.id, w2.channel from sentinel.watchers w2
              where w2.namespace = p_namespace and w2.key = p_key and w2.expires_at > v_now
    loop
        if w.channel is null then
            v_legacy := true;
        else
            perform pg_notify(w.channel, w.id::text);
        end if;
    end loop;
    if v_legacy then
        perform pg_notify(sentinel.channel_v1(p_namespace), p_key);
    end if;
end
$$;
comment on function sentinel._notify_watchers(text, text) is
    'Wakes the live watchers of a key: NOTIFY on each watch_v2 watcher''s own channel with its id as payload, and '
    'once on channel_v1(namespace) with the key as payload when a watch_v1 watcher waits.';
revoke all on function sentinel._notify_watchers(text, text) from public;

create function sentinel._watch(p_namespace text, p_key text, p_wait_ms bigint, p_channel text)
    returns bigint
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now   constant timestamptz := sentinel._now();
    v_role  constant regrole := pg_catalog.quote_ident(sentinel._caller())::regrole;
    v_limit bigint;
    v_id    bigint;
begin
    perform sentinel._check_key(p_namespace, p_key);
    if p_wait_ms is null or p_wait_ms < 1 or p_wait_ms > 2592000000 then
        raise exception 'sentinel: wait_ms must be between 1 and 2592000000 (30 days)' using errcode = 'SN003';
    end if;
    perform sentinel._authorize(p_namespace, array['app'], 'watch keys');
    -- Watchers whose callers vanished are removed as the key is watched again,
    -- and the caller's own watchers whose session has ended as it watches.
    delete from sentinel.watchers w
     where w.namespace = p_namespace and w.key = p_key and w.expires_at <= v_now;
    delete from sentinel.watchers w
     where w.role = v_role
       and (w.expires_at <= v_now
            or (w.pid is not null and not exists (select 1 from pg_stat_activity a where a.pid = w.pid)));
    select l.value into v_limit from sentinel.limits l where l.name = 'max_watchers_per_role';
    if v_limit is not null and (select count(*) from sentinel.watchers w where w.role = v_role) >= v_limit then
        raise exception 'sentinel: role % already holds % live watchers, the limit', quote_ident(v_role::text), v_limit
            using errcode = 'SN016',
                  hint = 'unwatch_v1 the watchers no longer needed, or ask the DBA to raise max_watchers_per_role '
                         'in sentinel.limits';
    end if;
    insert into sentinel.watchers (namespace, key, expires_at, role, pid, channel)
    values (p_namespace, p_key, v_now + p_wait_ms * interval '1 millisecond', v_role, pg_backend_pid(), p_channel)
    returning id into v_id;
    return v_id;
end
$$;
comment on function sentinel._watch(text, text, bigint, text) is
    'Shared body of watch_v1 (p_channel NULL) and watch_v2.';

create function sentinel.watch_v1(namespace text, key text, wait_ms bigint)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
begin
    return sentinel._watch(watch_v1.namespace, watch_v1.key, watch_v1.wait_ms, null);
end
$$;
comment on function sentinel.watch_v1(text, text, bigint) is
    'Registers a caller that waits up to wait_ms for the outcome of (namespace, key): until then, the key''s '
    'transitions to completed, failed or uncertain (and a released claim) send NOTIFY on channel_v1(namespace). '
    'LISTEN on the channel first, then watch, then check the key again with acquire. Returns the watcher id for '
    'unwatch_v1. Raises SN001, SN002, SN003, SN016 (too many watchers), 42501. Legacy: the channel is predictable '
    'and its payload is the key, so any session of the database can read them (watch_v2 is private).';

create function sentinel.watch_v2(namespace text, key text, wait_ms bigint, channel text)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if watch_v2.channel is null or watch_v2.channel !~ '^sentinel_w_[a-z0-9]{32,50}$' then
        raise exception 'sentinel: channel must be sentinel_w_ followed by 32 to 50 random characters of a-z, 0-9'
            using errcode = 'SN004',
                  hint = 'draw it once per LISTEN connection from a cryptographic random source; it is the secret '
                         'that keeps the notifications private';
    end if;
    return sentinel._watch(watch_v2.namespace, watch_v2.key, watch_v2.wait_ms, watch_v2.channel);
end
$$;
comment on function sentinel.watch_v2(text, text, bigint, text) is
    'Registers a caller that waits up to wait_ms for the outcome of (namespace, key) and LISTENs on channel, a name '
    'it drew at random (sentinel_w_ and 32 to 50 characters of a-z, 0-9): the key''s transitions to completed, '
    'failed or uncertain (and a released claim) send NOTIFY on that channel with the returned watcher id as '
    'payload, which tells nothing to anyone else. LISTEN first, then watch, then check the key again with acquire. '
    'The watcher belongs to the caller''s role (unwatch_v1), is removed once its session has ended, and counts '
    'against max_watchers_per_role (sentinel.limits). Raises SN001, SN002, SN003, SN004 (channel), SN016, 42501.';
revoke all on function sentinel.watch_v2(text, text, bigint, text) from public;

create function sentinel.unwatch_v1(id bigint)
    returns boolean
    language sql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
    with gone as (
        delete from sentinel.watchers w
         where w.id = unwatch_v1.id
           and pg_has_role(sentinel._caller(), w.role::oid, 'USAGE')
        returning 1)
    select exists (select 1 from gone)
$$;
comment on function sentinel.unwatch_v1(bigint) is
    'Removes a watcher the caller''s role registered (watch_v1, watch_v2); false when it was already gone or '
    'belongs to another role (expired watchers are removed lazily).';
revoke all on function sentinel.unwatch_v1(bigint) from public;
