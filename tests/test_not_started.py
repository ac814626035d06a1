"""A claim interrupted between acquire and the function's start is released, never left to go uncertain.

The driver knows the function never started (the client was closed meanwhile,
``KeyboardInterrupt`` arrived, the calling task was cancelled), so the key is
recorded as a retryable failure that says so, and the next caller runs it.
The interruptions are injected by an observer of the ``acquired`` event,
which runs after the claim committed and before the function starts. (A
cancellation of an ``AsyncSentinel`` caller reaches the driver only at an
``await``, and there is none between the claim and an async function's start:
a cancellation requested there arrives inside the function, which has then
started.)
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List

import psycopg
import pytest

import sentinel
from sentinel import AsyncSentinel, Event


def _never() -> None:
    raise AssertionError("the function must not start")


def _record(conn: psycopg.Connection[Any], namespace: str, key: str) -> Dict[str, Any]:
    cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
    row = cur.fetchone()
    assert row is not None, f"no record for {namespace}/{key}"
    return dict(zip([d.name for d in (cur.description or [])], row))


def _assert_released(conn: psycopg.Connection[Any], dsn: str, namespace: str, key: str, why: str) -> None:
    record = _record(conn, namespace, key)
    assert record["stored_state"] == "failed", record  # not executing, waiting to lapse into uncertain
    assert not record["error_permanent"]
    assert record["error"]["type"] == "sentinel.NotStarted", record["error"]
    assert why in record["error"]["message"]
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as other:
        ran: List[int] = []
        result = other.once(key, lambda: ran.append(1) or "ran")
    assert result.completed and result.response == "ran" and ran == [1]
    assert result.attempt == 2


def _on_acquired(action: Callable[[], None]) -> Callable[[Event], None]:
    def observer(event: Event) -> None:
        if event.kind == "acquired":
            action()
    return observer


def test_closed_between_acquire_and_start(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    s = sentinel.Sentinel(conninfo=dsn, namespace=namespace)
    s.add_observer(_on_acquired(s.close))
    with pytest.raises(RuntimeError, match="closed"):
        s.once("closed", _never, ttl_ms=60000)
    _assert_released(conn, dsn, namespace, "closed", "RuntimeError")


def _interrupt() -> None:
    raise KeyboardInterrupt


def _exit() -> None:
    raise SystemExit(3)


@pytest.mark.parametrize("source", ["conninfo", "get_conn"])
def test_keyboard_interrupt_between_acquire_and_start(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                                      source: str) -> None:
    options: Dict[str, Any] = ({"conninfo": dsn} if source == "conninfo"
                               else {"get_conn": lambda: psycopg.connect(dsn)})
    with sentinel.Sentinel(namespace=namespace, observers=[_on_acquired(_interrupt)], **options) as s:
        with pytest.raises(KeyboardInterrupt):
            s.once("kbd", _never, ttl_ms=60000)
    _assert_released(conn, dsn, namespace, "kbd", "KeyboardInterrupt")


@pytest.mark.parametrize("how", ["interrupt", "exit"])
def test_async_interrupted_between_acquire_and_start(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                                     how: str) -> None:
    async def never() -> None:
        raise AssertionError("the function must not start")

    async def main() -> None:
        s = AsyncSentinel(conninfo=dsn, namespace=namespace)
        actions: Dict[str, Callable[[], Any]] = {
            "interrupt": _interrupt,
            "exit": _exit,
        }
        s.add_observer(_on_acquired(actions[how]))
        expected = {"interrupt": KeyboardInterrupt, "exit": SystemExit}[how]
        try:
            with pytest.raises(expected):
                await s.once(f"async-{how}", never, ttl_ms=60000)
        finally:
            await s.close()

    asyncio.run(main())
    why = {"interrupt": "KeyboardInterrupt", "exit": "SystemExit"}[how]
    _assert_released(conn, dsn, namespace, f"async-{how}", why)
