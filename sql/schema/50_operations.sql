-- Sentinel schema, current state: the operator calls and the grants.
-- inspect, list, reconcile, stats and purge; grant_v1 and the functions it
-- grants (sentinel.grantable: operator true only with the operator grant).

create function sentinel.inspect_v1(namespace text, key text)
    returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
begin
    perform sentinel._check_key(inspect_v1.namespace, inspect_v1.key);
    perform sentinel._authorize(inspect_v1.namespace, array['app', 'probe', 'operator', 'purge'], 'read records');
    return query
        select (sentinel._execution(x, v_now)).*
          from sentinel.executions x
         where x.namespace = inspect_v1.namespace and x.key = inspect_v1.key;
end
$$;
comment on function sentinel.inspect_v1(text, text) is
    'The execution record of (namespace, key), or no row. Raises SN001, SN002, 42501 (no right on the namespace).';

create function sentinel.list_v1(
    namespace      text,
    state          text    default null,
    older_than_ms  bigint  default null,
    max_rows       integer default 100
) returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
begin
    -- list_v2 with the bodies: one body holds the checks and the query.
    return query select * from sentinel.list_v2(list_v1.namespace, list_v1.state, list_v1.older_than_ms,
                                                list_v1.max_rows, true);
end
$$;
comment on function sentinel.list_v1(text, text, bigint, integer) is
    'Execution records of a namespace, oldest change first, filtered by effective state and by age of the last change. '
    'Raises SN002, SN003 (older_than_ms 0..100 years), SN006 (state, max_rows 1..10000), 42501.';

create type sentinel.reconcile_result_v1 as (
    previous_state  text,
    state           text,
    previous_fence  bigint,
    fence           bigint,
    now             timestamptz
);

comment on type sentinel.reconcile_result_v1 is
    'Result of reconcile_v1: the effective state before, the state after, and the new fence.';

create function sentinel.reconcile_v1(
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

create function sentinel.purge_v1(namespace text, older_than_ms bigint, batch_size integer default 1000)
    returns bigint
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
    v_n   bigint;
begin
    perform sentinel._check_namespace(purge_v1.namespace);
    perform sentinel._authorize(purge_v1.namespace, array['purge'], 'purge records');
    if purge_v1.older_than_ms is null or purge_v1.older_than_ms < 0
       or purge_v1.older_than_ms > 3153600000000 then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if purge_v1.batch_size is null or purge_v1.batch_size < 1 or purge_v1.batch_size > 100000 then
        raise exception 'sentinel: batch_size must be between 1 and 100000' using errcode = 'SN006';
    end if;
    with doomed as (
        select x.namespace, x.key
          from sentinel.executions x
         where x.namespace = purge_v1.namespace
           and x.state in ('completed', 'failed')
           and x.finished_at <= v_now - purge_v1.older_than_ms * interval '1 millisecond'
         limit purge_v1.batch_size
           for update skip locked
    )
    delete from sentinel.executions x
     using doomed d
     where x.namespace = d.namespace and x.key = d.key;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;
comment on function sentinel.purge_v1(text, bigint, integer) is
    'Deletes up to batch_size completed or failed records of a namespace finished at least older_than_ms ago; '
    'returns how many. Call again until it returns 0. Fences stay unique after a purge. '
    'Raises SN002, SN003 (older_than_ms 0..100 years), SN006 (batch_size 1..100000), 42501 (no purge right).';

create function sentinel.grant_v1(role text, operator boolean default false)
    returns text[]
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_role  constant text := grant_v1.role;
    v_done  text[] := '{}';
    v_stmt  text;
    v_func  text;
begin
    if p_role is null or not exists (select 1 from pg_catalog.pg_roles r where r.rolname = p_role) then
        raise exception 'sentinel: role % does not exist', coalesce(quote_literal(p_role), 'NULL')
            using errcode = 'SN012';
    end if;
    v_stmt := format('grant usage on schema sentinel to %I', p_role);
    execute v_stmt;
    v_done := v_done || v_stmt;
    for v_func in
        select g.function from sentinel.grantable g
         where not g.operator or coalesce(grant_v1.operator, false)
         order by g.operator, g.function
    loop
        v_stmt := format('grant execute on function %s to %I', v_func, p_role);
        execute v_stmt;
        v_done := v_done || v_stmt;
    end loop;
    -- Rights on every namespace, as this grant always meant.
    insert into sentinel.rights as r (role, namespace, kind)
    select quote_ident(p_role)::regrole, '*', k.kind
      from unnest(case when coalesce(grant_v1.operator, false) then array['app', 'operator', 'purge']
                       else array['app'] end) k(kind)
    on conflict on constraint rights_pkey do nothing;
    v_done := v_done || format('sentinel.rights: %s on every namespace',
                               case when coalesce(grant_v1.operator, false) then 'app, operator, purge' else 'app' end);
    return v_done;
end
$$;
comment on function sentinel.grant_v1(text, boolean) is
    'Gives role what an application needs in every namespace: USAGE on schema sentinel, EXECUTE on the functions '
    'listed in sentinel.grantable (the protocol, inspect, list, schema_version, api_versions) and the app right on '
    '''*''; with operator => true also the operator functions (reconcile, purge) and the operator and purge rights. '
    'Includes the legacy functions (see grant_v2 for a role of one namespace that must prove its claims). '
    'No table privileges: rows change only through the functions. '
    'Runs with the caller''s rights (the schema owner or a superuser). Returns the statements it ran. '
    'Raises SN012 for an unknown role.';
revoke all on function sentinel.grant_v1(text, boolean) from public;

create function sentinel._check_grant(p_role text, p_namespace text, p_rights text[]) returns void
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_role is null or not exists (select 1 from pg_catalog.pg_roles r where r.rolname = p_role) then
        raise exception 'sentinel: role % does not exist', coalesce(quote_literal(p_role), 'NULL')
            using errcode = 'SN012';
    end if;
    if p_namespace is distinct from '*' then
        perform sentinel._check_namespace(p_namespace);
    end if;
    if p_rights is null or cardinality(p_rights) = 0
       or exists (select 1 from unnest(p_rights) k where k is null or k not in ('app', 'probe', 'operator', 'purge')) then
        raise exception 'sentinel: unknown rights %; use one or more of app, probe, operator, purge',
            coalesce(quote_literal(p_rights::text), 'NULL')
            using errcode = 'SN006';
    end if;
end
$$;
comment on function sentinel._check_grant(text, text, text[]) is
    'Raises SN012 for an unknown role, SN002 for a namespace (other than ''*''), SN006 for rights outside app, '
    'probe, operator, purge.';

create function sentinel.grant_v2(role text, namespace text, rights text[] default array['app'])
    returns text[]
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_role  constant text := grant_v2.role;
    v_done  text[] := '{}';
    v_stmt  text;
    v_func  text;
begin
    perform sentinel._check_grant(p_role, grant_v2.namespace, grant_v2.rights);
    v_stmt := format('grant usage on schema sentinel to %I', p_role);
    execute v_stmt;
    v_done := v_done || v_stmt;
    for v_func in
        select g.function from sentinel.grantable g
         where not g.legacy
           and (g.kind = 'read' or g.kind = any (grant_v2.rights)
                or (g.kind = 'probe' and 'operator' = any (grant_v2.rights)))
         order by g.function
    loop
        v_stmt := format('grant execute on function %s to %I', v_func, p_role);
        execute v_stmt;
        v_done := v_done || v_stmt;
    end loop;
    insert into sentinel.rights as r (role, namespace, kind)
    select distinct quote_ident(p_role)::regrole, grant_v2.namespace, k.kind from unnest(grant_v2.rights) k(kind)
    on conflict on constraint rights_pkey do nothing;
    v_done := v_done || format('sentinel.rights: %s on %s', array_to_string(grant_v2.rights, ', '),
                               case when grant_v2.namespace = '*' then 'every namespace'
                                    else 'namespace ' || grant_v2.namespace end);
    return v_done;
end
$$;
comment on function sentinel.grant_v2(text, text, text[]) is
    'Gives role rights in one namespace (''*'': every namespace) and EXECUTE on the functions they need. rights: '
    'app (the protocol with proof of the claim: acquire_v2, begin_v2, heartbeat_v2, heartbeat_many_v1, '
    'complete_v3, fail_v3, abandon_v2, watch_v2; reading records), probe (resolve uncertain keys: reconcile_v1 '
    'without force), operator (reconcile any key), purge (purge_v1; purge_events_v1 with ''*''). Never the legacy '
    'functions (which change a claim without its token). Runs with the caller''s rights (the schema owner or a '
    'superuser). Returns what it did. Raises SN002, SN006, SN012.';
revoke all on function sentinel.grant_v2(text, text, text[]) from public;

create function sentinel.revoke_v1(role text, namespace text default null, rights text[] default null,
                                   legacy boolean default false)
    returns text[]
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    p_role  constant text := revoke_v1.role;
    v_done  text[] := '{}';
    v_stmt  text;
    v_func  text;
    v_n     bigint;
begin
    perform sentinel._check_grant(p_role, coalesce(revoke_v1.namespace, '*'),
                                  coalesce(revoke_v1.rights, array['app']));
    delete from sentinel.rights r
     where r.role = quote_ident(p_role)::regrole
       and (revoke_v1.namespace is null or r.namespace = revoke_v1.namespace)
       and (revoke_v1.rights is null or r.kind = any (revoke_v1.rights));
    get diagnostics v_n = row_count;
    v_done := v_done || format('sentinel.rights: %s right(s) removed', v_n);
    for v_func in
        select g.function from sentinel.grantable g
         where (coalesce(revoke_v1.legacy, false) and g.legacy)
            or not exists (select 1 from sentinel.rights r where r.role = quote_ident(p_role)::regrole)
         order by g.function
    loop
        v_stmt := format('revoke execute on function %s from %I', v_func, p_role);
        execute v_stmt;
        v_done := v_done || v_stmt;
    end loop;
    return v_done;
end
$$;
comment on function sentinel.revoke_v1(text, text, text[], boolean) is
    'Removes rights of role: in namespace (NULL: every one), of the kinds listed (NULL: all). With legacy => true '
    'also revokes EXECUTE on the legacy functions (the calls that change a claim without its token, watch_v1, '
    'channel_v1). A role left without any right loses EXECUTE on every function grant_v1 or grant_v2 gave it. '
    'Runs with the caller''s rights. Returns what it did. Raises SN002, SN006, SN012.';
revoke all on function sentinel.revoke_v1(text, text, text[], boolean) from public;

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
    perform sentinel._authorize('*', array['purge'], 'purge the event log of every namespace');
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
    'oldest first; returns how many. Call again until it returns 0. Raises SN003, SN006, 42501 (needs the purge '
    'right on every namespace).';
revoke all on function sentinel.purge_events_v1(bigint, integer) from public;

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
    perform sentinel._authorize(stats_v1.namespace, array['app', 'probe', 'operator', 'purge'], 'read records');
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
    'finished during the last minute. Scans the namespace''s records. Raises SN002, 42501.';
revoke all on function sentinel.stats_v1(text) from public;

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
    perform sentinel._authorize(purge_expired_v1.namespace, array['app', 'purge'], 'purge expired records');
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
    'how many. Call again until it returns 0 (a pg_cron job can). Raises SN002, SN006, 42501 (no app or purge '
    'right on the namespace).';
revoke all on function sentinel.purge_expired_v1(text, integer) from public;

create function sentinel.list_v2(
    namespace      text,
    state          text    default null,
    older_than_ms  bigint  default null,
    max_rows       integer default 100,
    bodies         boolean default false
) returns setof sentinel.execution_v1
    language plpgsql stable
    security definer
    set search_path = pg_catalog, pg_temp
    as $$
#variable_conflict use_variable
declare
    v_now constant timestamptz := sentinel._now();
begin
    perform sentinel._check_namespace(list_v2.namespace);
    perform sentinel._authorize(list_v2.namespace, array['app', 'probe', 'operator', 'purge'], 'read records');
    if list_v2.state is not null
       and list_v2.state not in ('claimed', 'executing', 'completed', 'failed', 'uncertain') then
        raise exception 'sentinel: unknown state %; use claimed, executing, completed, failed or uncertain',
            quote_literal(list_v2.state)
            using errcode = 'SN006';
    end if;
    if list_v2.older_than_ms is not null
       and (list_v2.older_than_ms < 0 or list_v2.older_than_ms > 3153600000000) then
        raise exception 'sentinel: older_than_ms must be between 0 and 3153600000000 (100 years)'
            using errcode = 'SN003';
    end if;
    if list_v2.max_rows is null or list_v2.max_rows < 1 or list_v2.max_rows > 10000 then
        raise exception 'sentinel: max_rows must be between 1 and 10000' using errcode = 'SN006';
    end if;
    return query
        select r.namespace, r.key, r.state, r.stored_state, r.fence, r.owner, r.attempt, r.fingerprint, r.ttl_ms,
               r.claimed_at, r.started_at, r.lease_expires_at, r.hard_expires_at, r.finished_at,
               case when list_v2.bodies then r.response end,
               case when list_v2.bodies then r.error end,
               r.error_permanent, r.uncertain_reason, r.reconciled_by, r.reconciled_at, r.reconcile_reason,
               r.updated_at, r.now
          from sentinel.executions x,
               lateral sentinel._execution(x, v_now) r
         where x.namespace = list_v2.namespace
           and (list_v2.state is null or r.state = list_v2.state)
           and (list_v2.older_than_ms is null
                or x.updated_at <= v_now - list_v2.older_than_ms * interval '1 millisecond')
         order by x.updated_at, x.key
         limit list_v2.max_rows;
end
$$;
comment on function sentinel.list_v2(text, text, bigint, integer, boolean) is
    'list_v1 without the response and error bodies (NULL) unless bodies => true. Rows ordered by updated_at, at most '
    'max_rows (1 to 10000). Raises SN002, SN003, SN006, 42501.';
revoke all on function sentinel.list_v2(text, text, bigint, integer, boolean) from public;

-- What the grants grant. grant_v1: operator false for every application role,
-- true only with the operator grant. grant_v2: by kind (read: any right), never
-- the legacy functions.
insert into sentinel.grantable (function, operator, kind, legacy) values
    ('sentinel.schema_version()', false, 'read', false),
    ('sentinel.api_versions()', false, 'read', false),
    ('sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)', false, 'app', true),
    ('sentinel.begin_v1(text, text, bigint)', false, 'app', true),
    ('sentinel.heartbeat_v1(text, text, bigint)', false, 'app', true),
    ('sentinel.complete_v1(text, text, bigint, jsonb)', false, 'app', true),
    ('sentinel.fail_v1(text, text, bigint, jsonb, boolean)', false, 'app', true),
    ('sentinel.abandon_v1(text, text, bigint, text)', false, 'app', true),
    ('sentinel.inspect_v1(text, text)', false, 'read', false),
    ('sentinel.list_v1(text, text, bigint, integer)', false, 'read', false),
    ('sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', true, 'probe', false),
    ('sentinel.purge_v1(text, bigint, integer)', true, 'purge', false),
    ('sentinel.events_v1(text, text, integer)', false, 'read', false),
    ('sentinel.stats_v1(text)', false, 'read', false),
    ('sentinel.purge_events_v1(bigint, integer)', true, 'purge', false),
    ('sentinel.channel_v1(text)', false, 'app', true),
    ('sentinel.watch_v1(text, text, bigint)', false, 'app', true),
    ('sentinel.unwatch_v1(bigint)', false, 'app', false),
    ('sentinel.complete_v2(text, text, bigint, jsonb, bigint)', false, 'app', true),
    ('sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint)', false, 'app', true),
    ('sentinel.purge_expired_v1(text, integer)', false, 'app', false),
    ('sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text)', false, 'app', false),
    ('sentinel.list_v2(text, text, bigint, integer, boolean)', false, 'read', false),
    ('sentinel.begin_v2(text, text, bigint, text)', false, 'app', false),
    ('sentinel.heartbeat_v2(text, text, bigint, text)', false, 'app', false),
    ('sentinel.complete_v3(text, text, bigint, text, jsonb, bigint)', false, 'app', false),
    ('sentinel.fail_v3(text, text, bigint, text, jsonb, boolean, bigint)', false, 'app', false),
    ('sentinel.abandon_v2(text, text, bigint, text, text)', false, 'app', false),
    ('sentinel.watch_v2(text, text, bigint, text)', false, 'app', false),
    ('sentinel.heartbeat_many_v1(text, text[], bigint[], text[])', false, 'app', false);
