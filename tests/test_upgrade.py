"""Upgrades: every prefix of the migration chain reaches head with keys intact; _v1 beside _v2."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Dict

import psycopg
import pytest

import sentinel
from sentinel import SchemaError
from test_schema import catalog

NS = "upgrade"


def _setup_keys(conn: psycopg.Connection[Any]) -> Dict[str, int]:
    """Keys in every interesting state, made through the SQL API of the old version."""
    fences: Dict[str, int] = {}

    def acquire(key: str) -> int:
        row = conn.execute("select fence from sentinel.acquire_v1(%s, %s, 'old-worker', 60000)", (NS, key)).fetchone()
        assert row is not None
        fences[key] = int(row[0])
        return fences[key]

    conn.execute("select sentinel.complete_v1(%s, 'done', %s, '{\"charge\": \"ch_old\"}')", (NS, acquire("done")))
    acquire("running")
    conn.execute("select sentinel.fail_v1(%s, 'failed', %s, '{\"e\": 1}')", (NS, acquire("failed")))
    return fences


@pytest.mark.parametrize("prefix", [m.id for m in sentinel.migrations()[:-1]])
def test_every_prefix_upgrades_to_head_and_keeps_keys(empty_db: Callable[[], str], prefix: int) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn, to=prefix)
        assert conn.execute("select sentinel.schema_version()").fetchone() == (prefix,)
        fences = _setup_keys(conn)
        applied = sentinel.init_db(conn)
        assert applied == [m.name for m in sentinel.migrations() if m.id > prefix]
    fresh = empty_db()
    with psycopg.connect(fresh, autocommit=True) as conn:
        sentinel.init_db(conn)  # the current schema, sql/schema/
    upgraded, installed = catalog(dsn), catalog(fresh)
    assert [part for part in installed if installed[part] != upgraded[part]] == [], (
        f"upgrading from version {prefix} ends in another catalog than a new install")
    with psycopg.connect(dsn, autocommit=True) as conn:

        with sentinel.Sentinel(conninfo=dsn, namespace=NS) as s:
            replay = s.once("done", lambda: pytest.fail("a completed key must replay"))
            assert replay.replayed and replay.response == {"charge": "ch_old"} and replay.fence == fences["done"]
            assert s.once("running", lambda: pytest.fail("an in-flight key must not run")).execution_alive
            retried = s.once("failed", lambda: "second attempt")
            assert retried.response == "second attempt" and retried.fence > fences["failed"]

        # Fencing survives the upgrade: the old owner completes with its fence; a stale one changes nothing.
        stale = conn.execute("select outcome from sentinel.complete_v1(%s, 'running', %s, '1')",
                             (NS, fences["running"] - 1)).fetchone()
        assert stale == ("stale",)
        late = conn.execute("select outcome from sentinel.complete_v1(%s, 'running', %s, '{\"late\": true}')",
                            (NS, fences["running"])).fetchone()
        assert late == ("recorded",)


# A future release, simulated: a pre migration adds acquire_v3 (protocol 3) beside
# the others, and a later post migration removes protocol 1.
_PRE_V2 = """
create function sentinel.acquire_v3(namespace text, key text, owner text, ttl_ms bigint)
    returns sentinel.acquire_result_v1 language sql security definer set search_path = pg_catalog, pg_temp
    as $$ select * from sentinel.acquire_v1(namespace, key, owner, ttl_ms) $$;
create or replace function sentinel.api_versions() returns integer[] language sql immutable
    set search_path = pg_catalog, pg_temp as $$ select array[1, 2, 3] $$;
create or replace function sentinel.schema_version() returns integer language sql immutable
    set search_path = pg_catalog, pg_temp as $$ select {pre} $$;
insert into sentinel.migrations (id, name, checksum) values ({pre}, '{pre:04d}_pre_acquire_v3', 'future');
"""
_POST_DROP_V1 = """
create or replace function sentinel.api_versions() returns integer[] language sql immutable
    set search_path = pg_catalog, pg_temp as $$ select array[2, 3] $$;
create or replace function sentinel.schema_version() returns integer language sql immutable
    set search_path = pg_catalog, pg_temp as $$ select {post} $$;
insert into sentinel.migrations (id, name, checksum) values ({post}, '{post:04d}_post_drop_v1', 'future');
"""
PRE, POST = len(sentinel.migrations()) + 1, len(sentinel.migrations()) + 2


def test_v1_client_works_beside_v2_and_is_refused_after_v1_is_dropped(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute(_PRE_V2.replace("{pre}", str(PRE)).replace("{pre:04d}", f"{PRE:04d}").encode())
        assert sentinel.init_db(conn) == [], "a newer but compatible database is left alone"
        st = sentinel.status(conn)
        assert st.unknown == [f"{PRE:04d}_pre_acquire_v3"] and st.problems() == []

    with sentinel.Sentinel(conninfo=dsn, namespace=NS) as s:
        assert s.once("k", lambda: "v1 client").response == "v1 client"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select outcome from sentinel.acquire_v3(%s, 'k', 'v3-client', 1000)", (NS,)).fetchone()
        assert row == ("completed",), "a v3 client replays what this client recorded"
        conn.execute(_POST_DROP_V1.replace("{post}", str(POST)).replace("{post:04d}", f"{POST:04d}").encode())
        with pytest.raises(SchemaError, match="no longer provides protocol v1"):
            sentinel.init_db(conn)

    with sentinel.Sentinel(conninfo=dsn, namespace=NS) as s, \
            pytest.raises(SchemaError, match="upgrade sentinel-coordination"):
        s.once("k2", lambda: pytest.fail("must not run against an incompatible schema"))


def test_a_role_granted_before_acquire_v2_may_call_it_after_the_upgrade(empty_db: Callable[[], str]) -> None:
    """Migration 0008 grants acquire_v2 to whoever could call acquire_v1: an upgrade locks no application out."""
    dsn = empty_db()
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn, to=7)
        conn.execute(f"create role {role}")
        try:
            conn.execute("select sentinel.grant_v1(%s)", (role,))
            sentinel.init_db(conn)
            conn.execute(f"set role {role}")
            row = conn.execute("select outcome from sentinel.acquire_v2(%s, 'k', 'w', 1000, "
                               "token => 'a-token-of-16-chars')", (NS,)).fetchone()
            assert row == ("acquired",)
            conn.execute("reset role")
        finally:
            conn.execute("reset role")
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")
