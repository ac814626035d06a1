"""A function that raises after its lease was lost never re-opens its key.

The scenario of the review: the function writes chunk 1, its lease is lost
(here: it runs past its hard deadline, so heartbeats stop renewing it), other
callers are told the outcome is uncertain, then ``ctx.check()`` raises
``LeaseLost``. The key must stay uncertain, with the error kept as evidence in
``inspect`` and the event log, so the next ``once()`` does not write chunk 1
again. A function that raises while its lease is valid is still a retryable
failure.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import psycopg
import pytest

import sentinel


class Boom(Exception):
    """The error a user function raises."""


def _must_not_run(*args: Any) -> None:
    raise AssertionError("the function ran again")


def _late_failure_fn(observer: sentinel.Sentinel, key: str, chunks: List[int], seen: Dict[str, Any]) -> Any:
    def fn(ctx: sentinel.ExecutionContext) -> None:
        chunks.append(1)  # the effect: chunk 1 is written
        # The lease is lost: the hard deadline passes and the heartbeat reports it.
        seen["lost"] = ctx.wait_lost(timeout=30)
        # Another caller is told the outcome is uncertain.
        seen["observer"] = observer.once(key, _must_not_run)
        ctx.check()  # raises LeaseLost, the pattern the docs recommend
    return fn


def _assert_still_uncertain(observer: sentinel.Sentinel, key: str, chunks: List[int], seen: Dict[str, Any]) -> None:
    assert seen["lost"], "the lease was never reported lost"
    assert seen["observer"].uncertain, f"the other caller was not told uncertain: {seen['observer']!r}"
    again = observer.once(key, lambda: chunks.append(2))
    assert chunks == [1], f"the work ran again after a late failure: chunks {chunks}"
    assert again.uncertain and not again.completed
    record = observer.inspect(key)
    assert record is not None
    assert record["state"] == "uncertain" and record["stored_state"] == "uncertain"
    assert record["error"]["type"] == "sentinel._results.LeaseLost", record["error"]
    late = [e for e in observer.events(key) if (e["details"] or {}).get("late_failure")]
    assert len(late) == 1, observer.events(key)
    assert late[0]["details"]["error"]["type"] == "sentinel._results.LeaseLost"


def test_late_failure_keeps_key_uncertain(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "chunked-upload"
    chunks: List[int] = []
    seen: Dict[str, Any] = {}
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as worker, \
            sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as observer:
        fn = _late_failure_fn(observer, key, chunks, seen)
        with pytest.raises(sentinel.LeaseLost):
            worker.once(key, fn, ttl_ms=150, hard_ttl_ms=450, pass_context=True)
        _assert_still_uncertain(observer, key, chunks, seen)


def test_async_late_failure_keeps_key_uncertain(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "chunked-upload-async"
    chunks: List[int] = []
    seen: Dict[str, Any] = {}

    async def main() -> None:
        async with sentinel.AsyncSentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as worker:
            with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as observer:
                fn = _late_failure_fn(observer, key, chunks, seen)
                with pytest.raises(sentinel.LeaseLost):
                    await worker.once(key, fn, ttl_ms=150, hard_ttl_ms=450, pass_context=True)

    asyncio.run(main())
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as observer:
        _assert_still_uncertain(observer, key, chunks, seen)


def test_failure_with_valid_lease_is_retryable(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "fails-in-time"
    runs: List[str] = []

    def fn() -> None:
        runs.append("first")
        raise Boom("declined by the provider")

    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as s:
        with pytest.raises(Boom):
            s.once(key, fn, ttl_ms=5000)
        record = s.inspect(key)
        assert record is not None and record["state"] == "failed"
        again = s.once(key, lambda: runs.append("second") or "ok")
        assert again.completed and runs == ["first", "second"]
