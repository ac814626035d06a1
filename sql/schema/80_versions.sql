-- Sentinel schema, current state: versions.
-- schema_version() is the number of the newest migration; api_versions() the
-- protocol versions this schema provides (each _vN of the functions).

create function sentinel.schema_version() returns integer
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select 14 $$;
comment on function sentinel.schema_version() is
    'The version of the Sentinel schema: the number of the newest migration that changed it.';

-- Protocol version 2: the recording functions with retention (complete_v2,
-- fail_v2), beside version 1. Version 3: the calls that change a claim only
-- for the holder of its token (begin_v2, heartbeat_v2, complete_v3, fail_v3,
-- abandon_v2) and private notifications (watch_v2).
create function sentinel.api_versions() returns integer[]
    language sql immutable
    set search_path = pg_catalog, pg_temp
    as $$ select array[1, 2, 3] $$;
comment on function sentinel.api_versions() is
    'The protocol versions this schema provides: 1 means the _v1 functions exist. A client checks that its '
    'version is listed. A pre migration adds a version; only a later post migration removes one.';
revoke all on function sentinel.api_versions() from public;
