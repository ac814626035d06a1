-- Sentinel schema, current state: the schema, its tables, sequence and indexes.
--
-- sql/schema/*.sql is the whole current schema, one file per part of the
-- protocol, applied in file order by init_db on an empty database. Existing
-- databases are upgraded by sql/migrations/ instead; a test proves that both
-- paths build the same catalog. A change to the schema is a new migration AND
-- the same change here.

create schema sentinel;

comment on schema sentinel is
    'Sentinel: at-most-once execution coordination. Call the functions; the tables are not an interface.';

-- The migration ledger: the installer records every applied migration here (a
-- database installed from these files records all of them at once).
create table sentinel.migrations (
    id          integer primary key,
    name        text not null unique,
    checksum    text not null,
    applied_at  timestamptz not null default pg_catalog.clock_timestamp(),
    applied_by  text not null default current_user
);

comment on table sentinel.migrations is
    'Applied Sentinel migrations: one row per file, with the SHA-256 of its text.';

-- Fences come from one sequence, so a key never sees a fence twice, even after
-- its row was purged and the key claimed again.
create sequence sentinel.fence_seq as bigint minvalue 1 no cycle;

comment on sequence sentinel.fence_seq is
    'Source of fences: strictly increasing for every key over its whole life, never reused.';

create table sentinel.executions (
    namespace         text        not null,
    key               text        not null,
    state             text        not null,
    fence             bigint      not null,
    owner             text,
    attempt           integer     not null,
    fingerprint       text,
    ttl_ms            bigint      not null,
    claimed_at        timestamptz not null,
    started_at        timestamptz,
    lease_expires_at  timestamptz not null,
    hard_expires_at   timestamptz not null,
    finished_at       timestamptz,
    response          jsonb,
    error             jsonb,
    error_permanent   boolean     not null default false,
    uncertain_reason  text,
    reconciled_by     text,
    reconciled_at     timestamptz,
    reconcile_reason  text,
    updated_at        timestamptz not null,
    retain_until      timestamptz,
    claim_token       text,
    constraint executions_pkey primary key (namespace, key),
    constraint executions_state_check
        check (state in ('claimed', 'executing', 'completed', 'failed', 'uncertain')),
    constraint executions_fence_check check (fence > 0),
    constraint executions_attempt_check check (attempt > 0),
    constraint executions_ttl_check check (ttl_ms > 0),
    -- Invariant 6: no lease reaches past the hard deadline.
    constraint executions_lease_within_hard_check check (lease_expires_at <= hard_expires_at),
    constraint executions_completed_has_response_check
        check (state <> 'completed' or response is not null)
) with (fillfactor = 80);

comment on table sentinel.executions is
    'One row per (namespace, key): state, fence, lease, hard deadline, response or error. '
    'Private: written only by the sentinel functions. fillfactor 80 leaves room for HOT updates.';

comment on column sentinel.executions.retain_until is
    'When set (complete_v2/fail_v2 with retain_ms), purge_expired_v1 may delete the finished record from then on.';

comment on column sentinel.executions.claim_token is
    'The token of the call that holds the current claim (acquire_v2): its retry is recognised, and the _v2/_v3 '
    'calls that change the claim (begin, heartbeat, complete, fail, abandon) must present it. Never returned.';

-- Nobody but the owner reads or writes the tables: roles call the functions.
revoke all on table sentinel.migrations, sentinel.executions from public;
revoke all on sequence sentinel.fence_seq from public;

-- What grant_v1 hands out: a row per public function (see 50_operations.sql).
create table sentinel.grantable (
    function  text    primary key,
    operator  boolean not null,
    kind      text    not null,
    legacy    boolean not null default false,
    constraint grantable_kind_check check (kind in ('read', 'app', 'probe', 'operator', 'purge'))
);

comment on table sentinel.grantable is
    'Functions the grant functions grant. grant_v1: operator false for every application role, true only with '
    'operator => true. grant_v2: the functions of each right granted (kind; read: any right), never the legacy '
    'ones: the calls that '
    'change a claim without its token, and the md5 notification channel.';

revoke all on table sentinel.grantable from public;

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
    details     jsonb       not null default '{}',
    db_user     text        default session_user,
    db_role     text        default nullif(pg_catalog.current_setting('role'), 'none')
);

comment on table sentinel.events is
    'Append-only log: one row per transition of an execution record, written in the same transaction by the function '
    'that made it. from_state NULL means the key had no record. actor: the owner for protocol calls, the operator '
    'for reconciles. Only purge_events_v1 deletes rows. db_user: the login role (session_user) of the call that '
    'caused the event; db_role: the role it had set with SET ROLE, if any (NULL for events older than schema '
    'version 12).';

create index events_key_idx on sentinel.events (namespace, key, id);

-- Rows arrive in time order: a BRIN index serves time ranges for almost nothing.
create index events_at_idx on sentinel.events using brin (at);

revoke all on table sentinel.events from public;

create table sentinel.watchers (
    id          bigint generated always as identity primary key,
    namespace   text        not null,
    key         text        not null,
    expires_at  timestamptz not null,
    role        regrole,
    pid         integer,
    channel     text
);

comment on table sentinel.watchers is
    'Callers waiting for a key''s outcome (watch_v1, watch_v2). A transition of a key with a live watcher sends '
    'NOTIFY: on the watcher''s own channel with its id as payload (watch_v2), or on channel_v1(namespace) with the '
    'key (watch_v1). role and pid: who registered it (NULL before schema version 12); a watcher is removed when its '
    'session has ended.';

create index watchers_key_idx on sentinel.watchers (namespace, key);

create index watchers_role_idx on sentinel.watchers (role);

revoke all on table sentinel.watchers from public;

create table sentinel.limits (
    name   text primary key,
    value  bigint not null,
    constraint limits_known check (name in ('max_response_bytes', 'max_error_bytes', 'max_watchers_per_role')),
    constraint limits_range check (
        case when name = 'max_watchers_per_role' then value between 1 and 1000000
             else value between 1024 and 268435455 end)
);

comment on table sentinel.limits is
    'Caps a DBA may change: max_response_bytes and max_error_bytes, the largest jsonb document (pg_column_size) '
    'complete and fail accept; max_watchers_per_role, the live watchers one role may hold (watch_v1, watch_v2).';

insert into sentinel.limits (name, value)
values ('max_response_bytes', 1048576), ('max_error_bytes', 65536), ('max_watchers_per_role', 10000);

revoke all on table sentinel.limits from public;
