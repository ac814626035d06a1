-- Sentinel schema, current state: privileges.
-- No function is executable by PUBLIC: grant_v1 grants a role what it needs.

revoke all on all functions in schema sentinel from public;
