-- Sentinel schema, current state: the basics every protocol function uses.
-- The database's clock, the argument checks (SQLSTATEs of class SN), the
-- effective state of a row (a claim or an execution whose lease lapsed), and
-- the public form of a row (execution_v1).

-- The clock. Every time Sentinel uses comes from here: the database's clock,
-- never a client's. Only the schema owner can replace it.
create function sentinel._now() returns timestamptz
    language sql volatile
    set search_path = pg_catalog, pg_temp
    as $$ select pg_catalog.clock_timestamp() $$;
comment on function sentinel._now() is
    'The one clock of Sentinel: the database''s clock_timestamp().';

-- Who calls. Inside a security-definer function current_user is the schema
-- owner; the caller is the role it set with SET ROLE, else its login role.
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

-- Argument checks. Misuse raises a documented SQLSTATE of class SN.
create function sentinel._check_namespace(p_namespace text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_namespace is null
       or p_namespace !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        raise exception 'sentinel: invalid namespace %: use 1 to 63 characters of a-z, 0-9, "_", "." or "-", starting with a letter or digit',
            coalesce(quote_literal(p_namespace), 'NULL')
            using errcode = 'SN002';
    end if;
end
$$;
comment on function sentinel._check_namespace(text) is
    'Raises SN002 for a namespace outside ^[a-z0-9][a-z0-9_.-]{0,62}$.';

create function sentinel._check_key(p_namespace text, p_key text) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    perform sentinel._check_namespace(p_namespace);
    if p_key is null or p_key = '' then
        raise exception 'sentinel: key must be a non-empty text'
            using errcode = 'SN001';
    end if;
    if octet_length(p_key) > 1024 then
        raise exception 'sentinel: key is % bytes long; the maximum is 1024 bytes (UTF-8)', octet_length(p_key)
            using errcode = 'SN001';
    end if;
end
$$;
comment on function sentinel._check_key(text, text) is
    'Raises SN002 for a namespace outside ^[a-z0-9][a-z0-9_.-]{0,62}$, SN001 for an empty key or one over 1024 bytes.';

create function sentinel._check_fence(p_fence bigint) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_fence is null or p_fence <= 0 then
        raise exception 'sentinel: fence must be a positive bigint, got %', coalesce(p_fence::text, 'NULL')
            using errcode = 'SN005';
    end if;
end
$$;
comment on function sentinel._check_fence(bigint) is
    'Raises SN005 for a NULL or non-positive fence.';

create function sentinel._check_text(p_name text, p_value text, p_max integer) returns void
    language plpgsql immutable
    set search_path = pg_catalog, pg_temp
    as $$
begin
    if p_value is null or btrim(p_value) = '' then
        raise exception 'sentinel: % must be a non-empty text', p_name
            using errcode = 'SN004';
    end if;
    if length(p_value) > p_max then
        raise exception 'sentinel: % is % characters long; the maximum is %', p_name, length(p_value), p_max
            using errcode = 'SN004';
    end if;
end
$$;
comment on function sentinel._check_text(text, text, integer) is
    'Raises SN004 when a required text argument (owner, actor, reason) is empty or too long.';

-- Why a lapsed execution is uncertain: heartbeats carried its lease up to the
-- hard deadline, or its worker stopped renewing it.
create function sentinel._lapse_reason(e sentinel.executions) returns text
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    select case
        when e.lease_expires_at >= e.hard_expires_at
             and e.hard_expires_at > e.claimed_at + e.ttl_ms * interval '1 millisecond'
        then 'hard deadline passed'
        else 'lease expired'
    end
$$;
comment on function sentinel._lapse_reason(sentinel.executions) is
    'uncertain_reason of a lapsed execution: hard deadline passed when heartbeats had carried the lease to it, else lease expired.';

create function sentinel._observe(e sentinel.executions, p_fingerprint text, p_now timestamptz)
    returns text
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    select case
        when p_fingerprint is not null and e.fingerprint is not null
             and p_fingerprint <> e.fingerprint
             and not (p_fingerprint ~ '^v[0-9]+:[0-9a-f]{40}$' and e.fingerprint ~ '^v[0-9]+:[0-9a-f]{40}$'
                      and split_part(p_fingerprint, ':', 1) <> split_part(e.fingerprint, ':', 1))
                                                             then 'mismatch'
        when e.state = 'completed'                           then 'completed'
        when e.state = 'failed' and e.error_permanent        then 'failed'
        when e.state = 'failed'                              then null
        when e.state = 'uncertain'                           then 'uncertain'
        when e.lease_expires_at > p_now                      then 'alive'
        else null
    end
$$;
comment on function sentinel._observe(sentinel.executions, text, timestamptz) is
    'What a caller of acquire sees in a row without changing it; NULL when the row must be claimed or marked '
    'uncertain. Fingerprints are compared when both are present, except two automatic ones (v<N>: and 40 hex '
    'digits) of different schemes, which cannot be compared.';

create type sentinel.execution_v1 as (
    namespace         text,
    key               text,
    state             text,
    stored_state      text,
    fence             bigint,
    owner             text,
    attempt           integer,
    fingerprint       text,
    ttl_ms            bigint,
    claimed_at        timestamptz,
    started_at        timestamptz,
    lease_expires_at  timestamptz,
    hard_expires_at   timestamptz,
    finished_at       timestamptz,
    response          jsonb,
    error             jsonb,
    error_permanent   boolean,
    uncertain_reason  text,
    reconciled_by     text,
    reconciled_at     timestamptz,
    reconcile_reason  text,
    updated_at        timestamptz,
    now               timestamptz
);

comment on type sentinel.execution_v1 is
    'An execution record as inspect_v1 and list_v1 show it. state is the effective state: an execution whose lease '
    'lapsed reads uncertain before anyone has marked it; stored_state is the column as stored.';

create function sentinel._execution(e sentinel.executions, p_now timestamptz)
    returns sentinel.execution_v1
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$
    select row(
        e.namespace, e.key,
        case when e.state = 'executing' and e.lease_expires_at <= p_now then 'uncertain' else e.state end,
        e.state, e.fence, e.owner, e.attempt, e.fingerprint, e.ttl_ms, e.claimed_at, e.started_at,
        e.lease_expires_at, e.hard_expires_at, e.finished_at, e.response, e.error, e.error_permanent,
        case when e.state = 'executing' and e.lease_expires_at <= p_now then sentinel._lapse_reason(e)
             else e.uncertain_reason end,
        e.reconciled_by, e.reconciled_at, e.reconcile_reason, e.updated_at, p_now
    )::sentinel.execution_v1
$$;
comment on function sentinel._execution(sentinel.executions, timestamptz) is
    'Builds an execution_v1 (with the effective state) from a row.';

create function sentinel._check_size(p_what text, p_doc jsonb, p_limit text) returns void
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
    as $$
declare
    v_size  constant integer := pg_column_size(p_doc);
    v_limit bigint;
begin
    select l.value into v_limit from sentinel.limits l where l.name = p_limit;
    if v_limit is not null and v_size > v_limit then
        raise exception 'sentinel: the % is % bytes, over the limit of % bytes; nothing was recorded', p_what, v_size,
            v_limit
            using errcode = 'SN015',
                  hint = format('store a reference to the data instead, or ask the DBA to raise %s in sentinel.limits',
                                p_limit);
    end if;
end
$$;
comment on function sentinel._check_size(text, jsonb, text) is
    'Raises SN015 when a document is larger than its cap in sentinel.limits.';
revoke all on function sentinel._check_size(text, jsonb, text) from public;
