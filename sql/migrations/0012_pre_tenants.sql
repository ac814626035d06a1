-- Sentinel migration 0012 (pre): tenants and least privilege held by the
-- database.
--
-- * Rights per role and namespace (sentinel.rights: app, probe, operator,
--   purge), checked inside every protocol and operator function for the
--   calling role (the role set with SET ROLE, else the login role). grant_v2
--   grants a role rights in one namespace; grant_v1 keeps granting every
--   namespace; revoke_v1 takes rights back. Roles that could call the
--   functions before this migration keep their rights on every namespace
--   (rows on '*', granted_by 'migration 0012').
-- * Proof of a claim: the token given to acquire_v2 is required by begin_v2,
--   heartbeat_v2, complete_v3, fail_v3 and abandon_v2 (protocol version 3).
--   The fence stays public. complete_v3/fail_v3 answer conflict when a retry
--   reports another response or error than the one stored. The tokenless
--   calls stay for clients of protocol versions 1 and 2 until the DBA revokes
--   them (revoke_v1 with legacy => true); grant_v2 never grants them.
-- * The probe right resolves uncertain keys only (reconcile_v1 without force);
--   purging needs the purge right, reconciling does not grant it.
-- * Watchers belong to the role that registered them (unwatch_v1 removes only
--   those), are bounded per role (max_watchers_per_role) and removed once
--   their session has ended; watch_v2 notifies a channel the waiter drew at
--   random, with the watcher id as payload (no md5).
-- * Every event records the login role and the role set with SET ROLE.
-- * Every function of schema sentinel pins search_path, _now() and
--   _acquire_result() included.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

-- The grants: a kind per function, and the legacy ones grant_v2 never grants.
alter table sentinel.grantable add column kind text;
alter table sentinel.grantable add column legacy boolean not null default false;
update sentinel.grantable g
   set kind = v.kind, legacy = v.legacy
  from (values
    ('sentinel.schema_version()', 'read', false),
    ('sentinel.api_versions()', 'read', false),
    ('sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)', 'app', true),
    ('sentinel.begin_v1(text, text, bigint)', 'app', true),
    ('sentinel.heartbeat_v1(text, text, bigint)', 'app', true),
    ('sentinel.complete_v1(text, text, bigint, jsonb)', 'app', true),
    ('sentinel.fail_v1(text, text, bigint, jsonb, boolean)', 'app', true),
    ('sentinel.abandon_v1(text, text, bigint, text)', 'app', true),
    ('sentinel.inspect_v1(text, text)', 'read', false),
    ('sentinel.list_v1(text, text, bigint, integer)', 'read', false),
    ('sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', 'probe', false),
    ('sentinel.purge_v1(text, bigint, integer)', 'purge', false),
    ('sentinel.events_v1(text, text, integer)', 'read', false),
    ('sentinel.stats_v1(text)', 'read', false),
    ('sentinel.purge_events_v1(bigint, integer)', 'purge', false),
    ('sentinel.channel_v1(text)', 'app', true),
    ('sentinel.watch_v1(text, text, bigint)', 'app', true),
    ('sentinel.unwatch_v1(bigint)', 'app', false),
    ('sentinel.complete_v2(text, text, bigint, jsonb, bigint)', 'app', true),
    ('sentinel.fail_v2(text, text, bigint, jsonb, boolean, bigint)', 'app', true),
    ('sentinel.purge_expired_v1(text, integer)', 'app', false),
    ('sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text)', 'app', false),
    ('sentinel.list_v2(text, text, bigint, integer, boolean)', 'read', false)
  ) v(function, kind, legacy)
 where g.function = v.function;
update sentinel.grantable g set kind = case when g.operator then 'operator' else 'app' end where g.kind is null;
-- squawk-ignore adding-not-nullable-field
alter table sentinel.grantable alter column kind set not null;
alter table sentinel.grantable
    -- squawk-ignore constraint-missing-not-valid
    add constraint grantable_kind_check check (kind in ('read', 'app', 'probe', 'operator', 'purge'));
insert into sentinel.grantable (function, operator, kind, legacy) values
    ('sentinel.begin_v2(text, text, bigint, text)', false, 'app', false),
    ('sentinel.heartbeat_v2(text, text, bigint, text)', false, 'app', false),
    ('sentinel.complete_v3(text, text, bigint, text, jsonb, bigint)', false, 'app', false),
    ('sentinel.fail_v3(text, text, bigint, text, jsonb, boolean, bigint)', false, 'app', false),
    ('sentinel.abandon_v2(text, text, bigint, text, text)', false, 'app', false),
    ('sentinel.watch_v2(text, text, bigint, text)', false, 'app', false);

comment on table sentinel.grantable is
    'Functions the grant functions grant. grant_v1: operator false for every application role, true only with '
    'operator => true. grant_v2: the functions of each right granted (kind; read: any right), never the legacy '
    'ones: the calls that '
    'change a claim without its token, and the md5 notification channel.';
comment on column sentinel.executions.claim_token is
    'The token of the call that holds the current claim (acquire_v2): its retry is recognised, and the _v2/_v3 '
    'calls that change the claim (begin, heartbeat, complete, fail, abandon) must present it. Never returned.';

-- Who may do what in which namespace. Every protocol and operator function
-- checks it (sentinel._authorize) for the calling role: the role set with SET
-- ROLE, else the login role. Rights are inherited like privileges.
create table sentinel.rights (
    role        regrole     not null,
    namespace   text        not null,
    kind        text        not null,
    granted_at  timestamptz not null default pg_catalog.clock_timestamp(),
    granted_by  text        not null default session_user,
    constraint rights_pkey primary key (role, namespace, kind),
    constraint rights_kind_check check (kind in ('app', 'probe', 'operator', 'purge')),
    constraint rights_namespace_check check (namespace = '*' or namespace ~ '^[a-z0-9][a-z0-9_.-]{0,62}$')
);

comment on table sentinel.rights is
    'Rights of roles in namespaces (''*'': every namespace). app: the protocol and reading the records; probe: also '
    'resolve uncertain keys (reconcile without force); operator: also reconcile any key, with force; purge: purge '
    'records (and, on ''*'', the event log). Written by grant_v1, grant_v2 and revoke_v1.';

create index rights_namespace_idx on sentinel.rights (namespace);

revoke all on table sentinel.rights from public;

-- Roles that could call the protocol before keep what they had, on every namespace.
insert into sentinel.rights (role, namespace, kind, granted_by)
select distinct a.grantee::regrole, '*', m.kind, 'migration 0012'
  from (values
    ('sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)', 'app'),
    ('sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text)', 'app'),
    ('sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', 'operator'),
    ('sentinel.purge_v1(text, bigint, integer)', 'purge')
  ) m(fn, kind)
  join pg_catalog.pg_proc p on p.oid = m.fn::regprocedure
  cross join lateral pg_catalog.aclexplode(p.proacl) a
 where a.privilege_type = 'EXECUTE' and a.grantee <> 0 and a.grantee <> p.proowner
on conflict on constraint rights_pkey do nothing;

-- Who caused each event.
alter table sentinel.events add column db_user text;
alter table sentinel.events add column db_role text;
alter table sentinel.events alter column db_user set default session_user;
alter table sentinel.events
    alter column db_role set default nullif(pg_catalog.current_setting('role'), 'none');
comment on table sentinel.events is
    'Append-only log: one row per transition of an execution record, written by a trigger in the same transaction. '
    'from_state NULL means the key had no record. actor: the owner for protocol calls, the operator for reconciles. '
    'Only purge_events_v1 deletes rows. db_user: the login role (session_user) of the call that caused the event; '
    'db_role: the role it had set with SET ROLE, if any (NULL for events older than schema version 12).';

-- Watchers: owned, bounded, private.
alter table sentinel.watchers add column role regrole;
alter table sentinel.watchers add column pid integer;
alter table sentinel.watchers add column channel text;
-- squawk-ignore require-concurrent-index-creation
create index watchers_role_idx on sentinel.watchers (role);
comment on table sentinel.watchers is
    'Callers waiting for a key''s outcome (watch_v1, watch_v2). A transition of a key with a live watcher sends '
    'NOTIFY: on the watcher''s own channel with its id as payload (watch_v2), or on channel_v1(namespace) with the '
    'key (watch_v1). role and pid: who registered it (NULL before schema version 12); a watcher is removed when its '
    'session has ended.';

-- The limits table holds three rows; its checks are replaced, with room for the new cap.
-- squawk-ignore ban-drop-constraint
alter table sentinel.limits drop constraint limits_known;
-- squawk-ignore ban-drop-constraint
alter table sentinel.limits drop constraint limits_range;
alter table sentinel.limits
    -- squawk-ignore constraint-missing-not-valid
    add constraint limits_known check (name in ('max_response_bytes', 'max_error_bytes', 'max_watchers_per_role'));
alter table sentinel.limits
    -- squawk-ignore constraint-missing-not-valid
    add constraint limits_range check (
        case when name = 'max_watchers_per_role' then value between 1 and 1000000
             else value between 1024 and 268435455 end);
comment on table sentinel.limits is
    'Caps a DBA may change: max_response_bytes and max_error_bytes, the largest jsonb document (pg_column_size) '
    'complete and fail accept; max_watchers_per_role, the live watchers one role may hold (watch_v1, watch_v2).';
insert into sentinel.limits (name, value) values ('max_watchers_per_role', 10000);

-- The functions.
comment on type sentinel.finish_result_v1 is
    'Result of complete and fail. outcome: recorded, already_recorded, stale, or (fail only) uncertain: '
    'the failure came after the lease was lost, so the key stays uncertain with the error kept as evidence; '
    '(complete_v3 and fail_v3 only) conflict: this fence already recorded a different response or error, '
    'which stands.';
comment on type sentinel.abandon_result_v1 is
    'Result of abandon_v1 and abandon_v2. outcome: uncertain, released or stale.';

create or replace function sentinel._now() returns timestamptz
    language sql volatile
    set search_path = pg_catalog, pg_temp
    as $$ select pg_catalog.clock_timestamp() $$;
comment on function sentinel._now() is
    'The one clock of Sentinel: the database''s clock_timestamp().';

create function sentinel._caller() returns text
    language sql stable
    set search_path = pg_catalog, pg_temp
    as $$ select coalesce(nullif(current_setting('role'), 'none'), session_user::text) $$;
comment on function sentinel._caller() is
    'The role a protocol call acts for: the role set with SET ROLE (also SET LOCAL ROLE), else session_user. '
    'SET ROLE needs membership, so a session can only act for roles it belongs to.';

create function sentinel._may(p_namespace text, p_kinds text[]) returns boolean
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
    as $$
declare
    -- The caller, as sentinel._caller() says (written out: this runs on every call).
    v_who constant text := coalesce(nullif(current_setting('role'), 'none'), session_user::text);
begin
    -- A right of the caller's own role (the usual case: one primary-key probe);
    -- else the schema owner (current_user here: the security-definer caller's
    -- rights), its members and superusers; else a right of a role it inherits.
    return exists (select 1
                     from sentinel.rights r
                    where r.role = pg_catalog.quote_ident(v_who)::regrole
                      and r.namespace in (p_namespace, '*')
                      and r.kind = any (p_kinds))
        or pg_has_role(v_who, current_user, 'USAGE')
        or exists (select 1
                     from sentinel.rights r
                     join pg_roles g on g.oid = r.role::oid
                    where r.namespace in (p_namespace, '*')
                      and r.kind = any (p_kinds)
                      and pg_has_role(v_who, g.oid, 'USAGE'));
end
$$;
comment on function sentinel._may(text, text[]) is
    'Whether the caller holds one of the rights p_kinds on namespace p_namespace (directly, through a role it '
    'inherits, or on ''*''), or is the schema owner (or a member of it, or a superuser).';

create function sentinel._authorize(p_namespace text, p_kinds text[], p_what text) returns void
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if not sentinel._may(p_namespace, p_kinds) then
        raise exception 'sentinel: role % may not % in namespace %', quote_ident(sentinel._caller()), p_what,
            quote_literal(p_namespace)
            using errcode = '42501',
                  hint = format('a DBA grants it with: sentinel grant %s %s%s', sentinel._caller(),
                                case when p_namespace = '*' then '--all-namespaces'
                                     else '--namespace ' || p_namespace end,
                                case when 'app' = any (p_kinds) then '' else ' --' || p_kinds[1] end);
    end if;
end
$$;
comment on function sentinel._authorize(text, text[], text) is
    'Raises 42501 (insufficient_privilege) naming the role, the namespace and the grant to ask for, unless the '
    'caller holds one of the rights p_kinds on the namespace (see _may).';

create or replace function sentinel._acquire_result(p_outcome text, e sentinel.executions, p_now timestamptz)
    returns sentinel.acquire_result_v1
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    -- A mismatch reveals nothing of another caller's response or error.
    select row(
        p_outcome, e.fence, e.state, e.attempt,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.response end,
        case when p_outcome operator(pg_catalog.=) 'mismatch'::pg_catalog.text then null else e.error end,
        e.claimed_at, e.lease_expires_at, e.hard_expires_at, e.owner, p_now
    )::sentinel.acquire_result_v1
$$;
comment on function sentinel._acquire_result(text, sentinel.executions, timestamptz) is
    'Builds an acquire_result_v1 from a row.';

create or replace function sentinel.acquire_v1(
    namespace    text,
    key          text,
    owner        text,
    ttl_ms       bigint,
    hard_ttl_ms  bigint  default null,
    start        boolean default true,
    fingerprint  text    default null
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    return sentinel._acquire(acquire_v1.namespace, acquire_v1.key, acquire_v1.owner, acquire_v1.ttl_ms,
                             acquire_v1.hard_ttl_ms, acquire_v1.start, acquire_v1.fingerprint, null);
end
$$;
comment on function sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text) is
    'Claims (namespace, key) or reports its state, in one round trip. '
    'outcome acquired: you own a new fence (state executing when start, else claimed; call begin_v1 before running). '
    'completed: response replayed. alive: another worker holds a live lease. uncertain: an execution started and its outcome is unknown. '
    'failed: a permanent error is replayed. mismatch: the key was used with another fingerprint (two automatic '
    'fingerprints of different schemes, v<N>: and 40 hex digits, are not compared). '
    'hard_ttl_ms defaults to ttl_ms. Raises SN001 (key), SN002 (namespace), SN003 (ttl), SN004 (owner, fingerprint), '
    '42501 (no app right on the namespace). A replay takes no lock and writes nothing.';

create function sentinel._check_token(p_token text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_token is null or length(p_token) < 16 or length(p_token) > 200 then
        raise exception 'sentinel: token must be the token given to acquire_v2 for this claim (16 to 200 characters)'
            using errcode = 'SN004';
    end if;
end
$$;
comment on function sentinel._check_token(text) is
    'Raises SN004 unless the token is 16 to 200 characters (the proof of a claim the _v2/_v3 calls require).';

create function sentinel._begin(p_ns text, p_key text, p_fence bigint, p_token text)
    returns boolean
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_now   constant timestamptz := sentinel._now();
begin
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_fence is null or p_fence <= 0 then
        perform sentinel._check_fence(p_fence);
    end if;
    perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    update sentinel.executions x
       set state = 'executing',
           started_at = v_now,
           lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (p_token is null or x.claim_token = p_token)
       and x.state = 'claimed'
       and x.lease_expires_at > v_now;
    return found;
end
$$;
comment on function sentinel._begin(text, text, bigint, text) is
    'Shared body of begin_v1 (p_token NULL: no proof asked) and begin_v2.';

create or replace function sentinel.begin_v1(namespace text, key text, fence bigint)
    returns boolean
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    return sentinel._begin(begin_v1.namespace, begin_v1.key, begin_v1.fence, null);
end
$$;
comment on function sentinel.begin_v1(text, text, bigint) is
    'Moves your own live claim (state claimed, your fence, lease not lapsed) to executing and renews its lease. '
    'true: start the function now. false: the claim was taken over, lapsed or already begun; do not run. '
    'Raises SN001, SN002, SN005, 42501 (no app right on the namespace). Legacy: asks no proof of the claim '
    '(begin_v2 does).';

create function sentinel.begin_v2(namespace text, key text, fence bigint, token text)
    returns boolean
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    perform sentinel._check_token(begin_v2.token);
    return sentinel._begin(begin_v2.namespace, begin_v2.key, begin_v2.fence, begin_v2.token);
end
$$;
comment on function sentinel.begin_v2(text, text, bigint, text) is
    'begin_v1 for the holder of the claim only: token is the one given to acquire_v2 (false for any other). '
    'Raises SN001, SN002, SN004 (token), SN005, 42501.';

create or replace function sentinel._acquire(
    p_ns text, p_key text, p_owner text, p_ttl bigint, p_hard_ttl bigint, p_start_arg boolean,
    p_fp text, p_token text
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
declare
    p_start  constant boolean := coalesce(p_start_arg, true);
    p_hard   constant bigint  := coalesce(p_hard_ttl, p_ttl);
    v_now    constant timestamptz := sentinel._now();
    v_lease  timestamptz;
    v_outcome text;
    v_exists boolean;
    e        sentinel.executions;
begin
    -- Cheap checks inline; the helpers raise the documented error when one fails.
    if p_ns is null or p_key is null or p_key = '' or octet_length(p_key) > 1024
       or p_ns !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        perform sentinel._check_key(p_ns, p_key);
    end if;
    if p_owner is null or length(p_owner) > 200 or btrim(p_owner) = '' then
        perform sentinel._check_text('owner', p_owner, 200);
    end if;
    if p_ttl is null or p_ttl <= 0 or p_ttl > 2592000000 then
        raise exception 'sentinel: ttl_ms must be between 1 and 2592000000 (30 days), got %', coalesce(p_ttl::text, 'NULL')
            using errcode = 'SN003';
    end if;
    if p_hard < p_ttl or p_hard > 2592000000 then
        raise exception 'sentinel: hard_ttl_ms must be between ttl_ms (%) and 2592000000 (30 days), got %', p_ttl, p_hard
            using errcode = 'SN003';
    end if;
    if p_fp is not null and (p_fp = '' or length(p_fp) > 200) then
        raise exception 'sentinel: fingerprint must be NULL or 1 to 200 characters'
            using errcode = 'SN004';
    end if;
    if p_token is not null and (length(p_token) < 16 or length(p_token) > 200) then
        raise exception 'sentinel: token must be NULL or 16 to 200 characters (a random value per call)'
            using errcode = 'SN004';
    end if;
    perform sentinel._authorize(p_ns, array['app'], 'claim keys');

    -- 1. A plain read. Replays and live executions are answered from it, so a
    --    replay takes no lock and writes nothing.
    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key;
    if found then
        if p_token is not null and e.claim_token = p_token and e.state in ('claimed', 'executing')
           and e.lease_expires_at > v_now then
            -- The same call asks again: its reply was lost after the claim
            -- committed. It gets its claim back, under the same fence.
            return sentinel._acquire_result('acquired', e, v_now);
        end if;
        v_outcome := sentinel._observe(e, p_fp, v_now);
        if v_outcome is not null then
            return sentinel._acquire_result(v_outcome, e, v_now);
        end if;
    end if;

    -- 2. Claim: insert a new row, or lock the existing one and decide again.
    v_exists := e.namespace is not null;
    v_lease := v_now + p_ttl * interval '1 millisecond';
    loop
        if not v_exists then
            insert into sentinel.executions as x (
                namespace, key, state, fence, owner, attempt, fingerprint, ttl_ms,
                claimed_at, started_at, lease_expires_at, hard_expires_at, updated_at, claim_token)
            values (
                p_ns, p_key, case when p_start then 'executing' else 'claimed' end,
                nextval('sentinel.fence_seq'), p_owner, 1, p_fp, p_ttl,
                v_now, case when p_start then v_now end, v_lease,
                v_now + p_hard * interval '1 millisecond', v_now, p_token)
            on conflict on constraint executions_pkey do nothing
            returning * into e;
            if found then
                return sentinel._acquire_result('acquired', e, v_now);
            end if;
        end if;

        select * into e from sentinel.executions x
         where x.namespace = p_ns and x.key = p_key
         for update;
        exit when found;
        v_exists := false;
        -- The row was purged between the insert and the lock: insert again.
    end loop;

    v_outcome := sentinel._observe(e, p_fp, v_now);
    if v_outcome is not null then
        return sentinel._acquire_result(v_outcome, e, v_now);
    end if;

    if e.state = 'executing' then
        -- The function started and its lease lapsed: the outcome is unknown.
        -- Never run it again on our own; the late owner may still complete.
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = sentinel._lapse_reason(x),
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
        return sentinel._acquire_result('uncertain', e, v_now);
    end if;

    -- A claim that never started (taken over), or a retryable failure: a new
    -- claim under a new fence.
    update sentinel.executions x
       set state = case when p_start then 'executing' else 'claimed' end,
           fence = nextval('sentinel.fence_seq'),
           owner = p_owner,
           attempt = x.attempt + 1,
           fingerprint = coalesce(p_fp, x.fingerprint),
           ttl_ms = p_ttl,
           claimed_at = v_now,
           started_at = case when p_start then v_now end,
           lease_expires_at = v_lease,
           hard_expires_at = v_now + p_hard * interval '1 millisecond',
           finished_at = null,
           response = null,
           error = null,
           error_permanent = false,
           uncertain_reason = null,
           reconciled_by = null,
           reconciled_at = null,
           reconcile_reason = null,
           claim_token = p_token,
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return sentinel._acquire_result('acquired', e, v_now);
end
$$;
comment on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) is
    'Shared body of acquire_v1 and acquire_v2; p_token NULL for acquire_v1.';
revoke all on function sentinel._acquire(text, text, text, bigint, bigint, boolean, text, text) from public;

create or replace function sentinel.acquire_v2(
    namespace    text,
    key          text,
    owner        text,
    ttl_ms       bigint,
    hard_ttl_ms  bigint  default null,
    start        boolean default true,
    fingerprint  text    default null,
    token        text    default null
) returns sentinel.acquire_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
    as $$
begin
    return sentinel._acquire(acquire_v2.namespace, acquire_v2.key, acquire_v2.owner, acquire_v2.ttl_ms,
                             acquire_v2.hard_ttl_ms, acquire_v2.start, acquire_v2.fingerprint, acquire_v2.token);
end
$$;
comment on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) is
    'acquire_v1 with token: a random value (16 to 200 characters) drawn per call and presented again when the '
    'same call retries after a lost reply. A retry whose token matches the live claim (claimed or executing, lease '
    'not lapsed) gets it back: outcome acquired, same fence, nothing written. The token is also the proof of the '
    'claim that begin_v2, heartbeat_v2, complete_v3, fail_v3 and abandon_v2 require. Outcomes and SQLSTATEs as '
    'acquire_v1 (SN004 also for a token out of range). Waits at most 5 s for a row lock (55P03).';
revoke all on function sentinel.acquire_v2(text, text, text, bigint, bigint, boolean, text, text) from public;

create function sentinel._heartbeat(p_ns text, p_key text, p_fence bigint, p_token text)
    returns sentinel.heartbeat_result_v1
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
    perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    update sentinel.executions x
       set lease_expires_at = least(v_now + x.ttl_ms * interval '1 millisecond', x.hard_expires_at),
           updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
       and x.fence = p_fence
       and (p_token is null or x.claim_token = p_token)
       and x.state in ('claimed', 'executing')
       and x.lease_expires_at > v_now
    returning * into e;
    if found then
        return row(true, e.state, e.lease_expires_at, e.hard_expires_at, v_now)::sentinel.heartbeat_result_v1;
    end if;

    select * into e from sentinel.executions x
     where x.namespace = p_ns and x.key = p_key
     for update;
    if not found then
        return row(false, null, null, null, v_now)::sentinel.heartbeat_result_v1;
    end if;
    if e.fence = p_fence and e.state = 'executing' and (p_token is null or e.claim_token = p_token) then
        -- Our own execution whose lease lapsed (or reached the hard deadline).
        update sentinel.executions x
           set state = 'uncertain',
               uncertain_reason = case when v_now >= x.hard_expires_at
                                       then 'hard deadline passed' else 'lease expired' end,
               updated_at = v_now
         where x.namespace = p_ns and x.key = p_key
        returning * into e;
    end if;
    return row(false, e.state, e.lease_expires_at, e.hard_expires_at, v_now)::sentinel.heartbeat_result_v1;
end
$$;
comment on function sentinel._heartbeat(text, text, bigint, text) is
    'Shared body of heartbeat_v1 (p_token NULL: no proof asked) and heartbeat_v2.';

create or replace function sentinel.heartbeat_v1(namespace text, key text, fence bigint)
    returns sentinel.heartbeat_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '100ms'
    as $$
begin
    return sentinel._heartbeat(heartbeat_v1.namespace, heartbeat_v1.key, heartbeat_v1.fence, null);
end
$$;
comment on function sentinel.heartbeat_v1(text, text, bigint) is
    'Renews the lease of your claim or execution by its ttl_ms, never past hard_expires_at. '
    'alive false: the lease lapsed, the hard deadline passed, or the fence is no longer current; stop when you can. '
    'An execution of yours whose lease lapsed is marked uncertain. Waits at most 100 ms for the row lock '
    '(SQLSTATE 55P03 after that: retry soon). Raises SN001, SN002, SN005, 42501 (no app right on the namespace). '
    'Legacy: asks no proof of the claim (heartbeat_v2 does).';

create function sentinel.heartbeat_v2(namespace text, key text, fence bigint, token text)
    returns sentinel.heartbeat_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '100ms'
    as $$
begin
    perform sentinel._check_token(heartbeat_v2.token);
    return sentinel._heartbeat(heartbeat_v2.namespace, heartbeat_v2.key, heartbeat_v2.fence, heartbeat_v2.token);
end
$$;
comment on function sentinel.heartbeat_v2(text, text, bigint, text) is
    'heartbeat_v1 for the holder of the claim only: token is the one given to acquire_v2; with any other token the '
    'answer is alive false and nothing changes. Raises SN001, SN002, SN004 (token), SN005, 42501.';

create function sentinel._finish(
    p_ns text, p_key text, p_fence bigint, p_token text, p_state text,
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
    perform sentinel._authorize(p_ns, array['app'], 'run the protocol');
    -- Documents over the cap are refused before anything is written (a cheap
    -- size test first: the limits are read only for documents over 1 KiB).
    if p_response is not null and pg_column_size(p_response) > 1024 then
        perform sentinel._check_size('response', p_response, 'max_response_bytes');
    end if;
    if p_error is not null and pg_column_size(p_error) > 1024 then
        perform sentinel._check_size('error', p_error, 'max_error_bytes');
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
       and (p_token is null or x.claim_token = p_token)
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
    if found and e.fence = p_fence and p_token is not null and e.claim_token is distinct from p_token then
        -- The fence is public; the token proves the claim. Not yours: nothing changes.
        return row('stale', e.state, e.fence, v_now)::sentinel.finish_result_v1;
    end if;
    if found and e.fence = p_fence and e.state = p_state then
        -- A retry of a recording that already committed; with a token, what is
        -- stored is compared with what is reported.
        if p_token is not null and (e.response is distinct from p_response or e.error is distinct from p_error
                                    or e.error_permanent is distinct from coalesce(p_permanent, false)) then
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
comment on function sentinel._finish(text, text, bigint, text, text, jsonb, jsonb, boolean) is
    'Shared body of complete and fail; p_token NULL (the legacy _v1/_v2) asks no proof of the claim and does not '
    'compare a retried recording. A failure reported after the lease lapsed or the execution went '
    'uncertain leaves the key uncertain, keeps the error as evidence and logs a late failure event (outcome uncertain). '
    'A document over its cap in sentinel.limits raises SN015 before anything is written.';

create or replace function sentinel.complete_v1(namespace text, key text, fence bigint, response jsonb)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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

create or replace function sentinel.fail_v1(namespace text, key text, fence bigint, error jsonb, permanent boolean default false)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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
        -- The claim changed only its lease (no event): wake the key's waiters here.
        perform sentinel._notify_watchers(p_ns, p_key);
        return row('released', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
    end if;
    update sentinel.executions x
       set state = 'uncertain', uncertain_reason = p_reason, updated_at = v_now
     where x.namespace = p_ns and x.key = p_key
    returning * into e;
    return row('uncertain', e.state, e.fence, v_now)::sentinel.abandon_result_v1;
end
$$;
comment on function sentinel._abandon(text, text, bigint, text, text) is
    'Shared body of abandon_v1 (p_token NULL: no proof asked) and abandon_v2.';

create or replace function sentinel.abandon_v1(namespace text, key text, fence bigint, reason text)
    returns sentinel.abandon_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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

create or replace function sentinel.complete_v2(namespace text, key text, fence bigint, response jsonb,
                                     retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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

create or replace function sentinel.fail_v2(namespace text, key text, fence bigint, error jsonb,
                                 permanent boolean default false, retain_ms bigint default null)
    returns sentinel.finish_result_v1
    language plpgsql volatile
    security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '5s'
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

create or replace function sentinel.inspect_v1(namespace text, key text)
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

create or replace function sentinel.list_v1(
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

create or replace function sentinel.reconcile_v1(
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

create or replace function sentinel.purge_v1(namespace text, older_than_ms bigint, batch_size integer default 1000)
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

create or replace function sentinel.grant_v1(role text, operator boolean default false)
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
    'app (the protocol with proof of the claim: acquire_v2, begin_v2, heartbeat_v2, complete_v3, fail_v3, '
    'abandon_v2, watch_v2; reading records), probe (resolve uncertain keys: reconcile_v1 without force), operator '
    '(reconcile any key), purge (purge_v1; purge_events_v1 with ''*''). Never the legacy functions (which change a '
    'claim without its token). Runs with the caller''s rights (the schema owner or a superuser). Returns what it '
    'did. Raises SN002, SN006, SN012.';
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

create or replace function sentinel.purge_events_v1(older_than_ms bigint, batch_size integer default 10000)
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

create or replace function sentinel.stats_v1(namespace text)
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

create or replace function sentinel.purge_expired_v1(namespace text, batch_size integer default 1000)
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

create or replace function sentinel.list_v2(
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

create or replace function sentinel._events_append_only() returns trigger
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

create or replace function sentinel.events_v1(namespace text, key text, max_rows integer default 1000)
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

create or replace function sentinel._notify_watchers(p_namespace text, p_key text) returns void
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

create or replace function sentinel.watch_v1(namespace text, key text, wait_ms bigint)
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

create or replace function sentinel.unwatch_v1(id bigint)
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

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 12 $$;
comment on function sentinel.schema_version() is
    'The version of the Sentinel schema: the number of the newest migration that changed it.';

create or replace function sentinel.api_versions() returns integer[]
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select array[1, 2, 3] $$;
comment on function sentinel.api_versions() is
    'The protocol versions this schema provides: 1 means the _v1 functions exist. A client checks that its '
    'version is listed. A pre migration adds a version; only a later post migration removes one.';
revoke all on function sentinel.api_versions() from public;

-- squawk-ignore ban-drop-function
drop function sentinel._finish(text, text, bigint, text, jsonb, jsonb, boolean);

revoke all on all functions in schema sentinel from public;
