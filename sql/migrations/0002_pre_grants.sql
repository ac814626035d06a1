-- Sentinel migration 0002 (pre): least-privilege grants and API discovery.
--
-- Adds sentinel.grant_v1(role, operator) so a DBA gives an application role
-- exactly what it needs (the list lives in sentinel.grantable, which later
-- migrations extend), and sentinel.api_versions() so clients can tell which
-- protocol versions (_v1, _v2, ...) this schema provides.

set local lock_timeout = '10s';
set local statement_timeout = '60s';

create function sentinel.api_versions() returns integer[]
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select array[1] $$;
comment on function sentinel.api_versions() is
    'The protocol versions this schema provides: 1 means the _v1 functions exist. A client checks that its '
    'version is listed. A pre migration adds a version; only a later post migration removes one.';

-- What grant_v1 hands out. Each migration that adds a public function adds its
-- row here; a post migration that drops a function deletes its row.
create table sentinel.grantable (
    function  text    primary key,
    operator  boolean not null
);
comment on table sentinel.grantable is
    'Functions grant_v1 grants: operator false for every application role, true only with operator => true.';
revoke all on table sentinel.grantable from public;

insert into sentinel.grantable (function, operator) values
    ('sentinel.schema_version()', false),
    ('sentinel.api_versions()', false),
    ('sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)', false),
    ('sentinel.begin_v1(text, text, bigint)', false),
    ('sentinel.heartbeat_v1(text, text, bigint)', false),
    ('sentinel.complete_v1(text, text, bigint, jsonb)', false),
    ('sentinel.fail_v1(text, text, bigint, jsonb, boolean)', false),
    ('sentinel.abandon_v1(text, text, bigint, text)', false),
    ('sentinel.inspect_v1(text, text)', false),
    ('sentinel.list_v1(text, text, bigint, integer)', false),
    ('sentinel.reconcile_v1(text, text, text, text, text, jsonb, jsonb, boolean)', true),
    ('sentinel.purge_v1(text, bigint, integer)', true);

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
    return v_done;
end
$$;
comment on function sentinel.grant_v1(text, boolean) is
    'Gives role exactly what an application needs: USAGE on schema sentinel and EXECUTE on the functions listed '
    'in sentinel.grantable (the protocol, inspect, list, schema_version, api_versions); with operator => true also '
    'the operator functions (reconcile, purge). No table privileges: rows change only through the functions. '
    'Runs with the caller''s rights (the schema owner or a superuser). Returns the statements it ran. '
    'Raises SN012 for an unknown role.';

create or replace function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 2 $$;

revoke all on function sentinel.api_versions() from public;
revoke all on function sentinel.grant_v1(text, boolean) from public;
