"""Caps on the size of responses and errors, enforced by the database; list without bodies."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Iterator

import psycopg
import pytest

import sentinel
from sentinel import AsyncSentinel, ResultNotSerializable

BIG = "x" * (1024 * 1024 + 1000)  # just over the default 1 MiB cap


def _record(conn: psycopg.Connection[Any], namespace: str, key: str) -> Dict[str, Any]:
    cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
    row = cur.fetchone()
    assert row is not None
    return dict(zip([d.name for d in (cur.description or [])], row))


def _check_refused(conn: psycopg.Connection[Any], namespace: str, key: str, exc: ResultNotSerializable) -> None:
    assert "over the limit of 1048576 bytes" in str(exc), str(exc)
    assert exc.recorded and exc.value == {"blob": BIG}
    record = _record(conn, namespace, key)
    assert record["stored_state"] == "uncertain" and record["response"] is None, record["stored_state"]
    assert record["lease_expires_at"] > record["now"], "uncertain only because the lease lapsed"


def test_a_result_over_the_cap_is_refused_and_the_key_marked_uncertain(dsn: str, namespace: str,
                                                                       conn: psycopg.Connection[Any]) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        with pytest.raises(ResultNotSerializable) as info:
            s.once("big", lambda: {"blob": BIG}, ttl_ms=60000)
        _check_refused(conn, namespace, "big", info.value)

    async def blob() -> Dict[str, str]:
        return {"blob": BIG}

    async def main() -> None:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as a:
            with pytest.raises(ResultNotSerializable) as info:
                await a.once("big-async", blob, ttl_ms=60000)
            _check_refused(conn, namespace, "big-async", info.value)

    asyncio.run(main())


@pytest.fixture
def small_error_cap(conn: psycopg.Connection[Any]) -> Iterator[None]:
    conn.execute("update sentinel.limits set value = 1024 where name = 'max_error_bytes'")
    try:
        yield
    finally:
        conn.execute("update sentinel.limits set value = 65536 where name = 'max_error_bytes'")


class Declined(Exception):
    pass


def test_an_error_over_the_cap_is_stored_shortened_and_the_exception_kept(
        dsn: str, namespace: str, conn: psycopg.Connection[Any], small_error_cap: None) -> None:
    def fails() -> None:
        raise Declined("declined: " + "details " * 500)

    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        with pytest.raises(Declined):
            s.once("err", fails, ttl_ms=60000)
    record = _record(conn, namespace, "err")
    assert record["stored_state"] == "failed"
    assert record["error"]["message"].startswith("declined: details") and len(record["error"]["message"]) == 200


def test_list_leaves_bodies_out_unless_asked(dsn: str, namespace: str) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        s.once("a", lambda: {"receipt": "r-1"})
        assert [r["response"] for r in s.list()] == [None]
        assert [r["response"] for r in s.list(bodies=True)] == [{"receipt": "r-1"}]
        assert s.inspect("a")["response"] == {"receipt": "r-1"}  # type: ignore[index]
