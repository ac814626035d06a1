"""Owner-rights functions pin search_path: objects planted in public or pg_temp are never used."""

from __future__ import annotations

from typing import Callable

import psycopg
import pytest

import sentinel

PLANT = """
create function public.clock_timestamp() returns timestamptz language sql as $$ select '1999-01-01'::timestamptz $$;
create function public.octet_length(text) returns integer language sql as $$ select 0 $$;
create function public.length(text) returns integer language sql as $$ select 0 $$;
create function public.nextval(regclass) returns bigint language sql as $$ select 1::bigint $$;
create function public.btrim(text) returns text language sql as $$ select 'planted' $$;
create table public.executions (namespace text, key text, state text);
create temp table executions (namespace text, key text, state text);
create temp table migrations (id integer);
create function pg_temp.clock_timestamp() returns timestamptz language sql as $$ select '1999-01-01'::timestamptz $$;
create function pg_temp.octet_length(text) returns integer language sql as $$ select 0 $$;
set search_path = pg_temp, public, pg_catalog;
"""


def test_planted_objects_are_never_used(empty_db: Callable[[], str]) -> None:
    dsn = empty_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute("select sentinel.acquire_v1('ns', 'warm', 'o', 1000)")  # fence 1 is taken
        conn.execute(PLANT)
        assert conn.execute("select octet_length('abc'), clock_timestamp()::date::text").fetchone() == (
            0, "1999-01-01"), "the planted functions must shadow the real ones in this session"

        row = conn.execute(
            "select outcome, fence, extract(year from claimed_at) from sentinel.acquire_v1('ns', 'k', 'o', 1000)"
        ).fetchone()
        assert row is not None and row[0] == "acquired" and row[1] > 1 and row[2] >= 2026
        with pytest.raises(psycopg.Error) as too_long:
            conn.execute("select sentinel.acquire_v1('ns', repeat('x', 2000), 'o', 1000)")
        assert too_long.value.sqlstate == "SN001"
        with pytest.raises(psycopg.Error) as blank:
            conn.execute("select sentinel.acquire_v1('ns', 'k2', '   ', 1000)")
        assert blank.value.sqlstate == "SN004"
        assert conn.execute("select count(*) from pg_temp.executions").fetchone() == (0,)
        assert conn.execute("select count(*) from public.executions").fetchone() == (0,)
        assert conn.execute("select count(*) from sentinel.executions").fetchone() == (2,)


def test_every_owner_rights_function_pins_search_path(conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
    loose = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'sentinel'::regnamespace and p.prosecdef
              and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)"""
    ).fetchall()
    definers = conn.execute(
        "select count(*) from pg_proc where pronamespace = 'sentinel'::regnamespace and prosecdef"
    ).fetchone()
    assert definers is not None and definers[0] >= 10
    assert loose == []
