"""Lone surrogates (``os.fsdecode`` of undecodable bytes) in a result or an exception message.

PostgreSQL text is UTF-8 and jsonb refuses ``\\udcff`` escapes, so such a
string cannot be stored as it is. A result is refused with the documented
``ResultNotSerializable`` (the function ran: the key is marked uncertain at
once, not left executing); an exception keeps propagating as the user's own,
with its message stored with the surrogates spelled out.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict

import psycopg
import pytest

import sentinel
from sentinel import AsyncSentinel, ResultNotSerializable

NAME = os.fsdecode(b"report-\xff.csv")  # 'report-\udcff.csv'


def _record(conn: psycopg.Connection[Any], namespace: str, key: str) -> Dict[str, Any]:
    cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
    row = cur.fetchone()
    assert row is not None
    return dict(zip([d.name for d in (cur.description or [])], row))


class ExportFailed(Exception):
    pass


def _check_result(conn: psycopg.Connection[Any], namespace: str, key: str, exc: ResultNotSerializable) -> None:
    assert "surrogate" in str(exc) and "errors=" in str(exc), str(exc)
    assert exc.value == {"file": NAME} and exc.recorded
    record = _record(conn, namespace, key)
    assert record["stored_state"] == "uncertain", record
    assert record["lease_expires_at"] > record["now"], "uncertain only because the lease lapsed"


def _check_error(conn: psycopg.Connection[Any], namespace: str, key: str) -> None:
    record = _record(conn, namespace, key)
    assert record["stored_state"] == "failed", record
    assert record["error"]["message"] == "cannot export report-\\udcff.csv"


def test_sync(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        with pytest.raises(ResultNotSerializable) as info:
            s.once("result", lambda: {"file": NAME}, ttl_ms=60000)
        _check_result(conn, namespace, "result", info.value)

        def fails() -> None:
            raise ExportFailed(f"cannot export {NAME}")

        with pytest.raises(ExportFailed):
            s.once("error", fails, ttl_ms=60000)
        _check_error(conn, namespace, "error")


def test_async(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    async def result() -> Dict[str, str]:
        return {"file": NAME}

    async def fails() -> None:
        raise ExportFailed(f"cannot export {NAME}")

    async def main() -> None:
        async with AsyncSentinel(conninfo=dsn, namespace=namespace) as s:
            with pytest.raises(ResultNotSerializable) as info:
                await s.once("result", result, ttl_ms=60000)
            _check_result(conn, namespace, "result", info.value)
            with pytest.raises(ExportFailed):
                await s.once("error", fails, ttl_ms=60000)
            _check_error(conn, namespace, "error")

    asyncio.run(main())
