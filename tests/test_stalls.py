"""Stalls and bounded waiting: an open transaction, a locked row or a hung connection never blocks without limit.

Real sessions hold the locks (an operator's psql transaction left open), real
threads run the executions, and a real TCP proxy (``tcpproxy.py``) hangs the
connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Dict, List

import psycopg
import pytest

import sentinel
from sentinel import KeyLocked
from tcpproxy import Proxy
from workers import wait_until


def _never() -> None:
    raise AssertionError("the function must not run")


def test_acquire_behind_an_open_transaction_is_bounded(dsn: str, namespace: str) -> None:
    """``begin; select sentinel.acquire_v1(...)`` left open in psql: other callers get KeyLocked, not a hang."""
    with psycopg.connect(dsn) as psql, sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        psql.execute("select sentinel.acquire_v1(%s, 'k', 'psql', 60000)", (namespace,))  # transaction left open
        outcome: Dict[str, Any] = {}

        def call() -> None:
            started = time.monotonic()
            try:
                outcome["result"] = s.once("k", _never)
            except BaseException as exc:
                outcome["error"] = exc
            outcome["waited"] = time.monotonic() - started

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "acquire still blocked after 30 s behind the open transaction"
        error = outcome.get("error")
        assert isinstance(error, KeyLocked), outcome
        assert f"{namespace}/k" in str(error) and "idle in transaction" in str(error), str(error)
        assert 4.0 <= outcome["waited"] < 15.0, outcome["waited"]  # the function's 5 s lock_timeout
        psql.rollback()
        assert s.once("k", lambda: "ran").response == "ran"  # nothing was left behind


def test_a_locked_key_does_not_cost_another_key_its_lease(dsn: str, namespace: str) -> None:
    """An operator holds one execution's row locked: the worker's other executions keep their leases."""
    ttl = 600
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as s, \
            sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as other, \
            psycopg.connect(dsn) as psql:
        a_started, a_release = threading.Event(), threading.Event()

        def a() -> str:
            a_started.set()
            a_release.wait(60)
            return "a"

        a_thread = threading.Thread(target=s.once, args=("A", a), kwargs={"ttl_ms": ttl, "hard_ttl_ms": 120000},
                                    daemon=True)
        a_thread.start()
        assert a_started.wait(15)
        psql.execute("select 1 from sentinel.executions where namespace = %s and key = 'A' for update", (namespace,))
        seen: List[str] = []

        def b() -> str:
            # Five leases long; another worker keeps asking, and must always find B alive.
            deadline = time.monotonic() + 5 * ttl / 1000.0
            while time.monotonic() < deadline:
                r = other.once("B", _never)
                seen.append("alive" if r.execution_alive else r.state)
                time.sleep(0.15)
            return "b"

        result = s.once("B", b, ttl_ms=ttl, hard_ttl_ms=120000)
        psql.rollback()
        a_release.set()
        a_thread.join(30)
        assert result.completed and result.response == "b"
        assert seen and set(seen) == {"alive"}, f"B lost its lease while A's row was locked: {seen}"
        assert other.once("A", _never).response == "a"


def test_the_hard_deadline_fires_locally_when_the_heartbeat_connection_hangs(dsn: str, namespace: str) -> None:
    """A half-open connection gives no error: ``ctx.lease_lost`` must still turn true at the hard deadline."""
    hard_ms = 1500
    with Proxy(dsn) as proxy, sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace, connect_timeout=2) as s:
        seen: Dict[str, Any] = {}

        def fn(ctx: sentinel.ExecutionContext) -> str:
            wait_until(lambda: ctx.lease_expires_at is not None, 10, "a first renewal through the proxy")
            proxy.stall()  # every connection of this worker now hangs, the heartbeat's too
            seen["lost"] = ctx.wait_lost(10)
            seen["after_s"] = (ctx.hard_expires_at - ctx.claimed_at).total_seconds()
            seen["at"] = time.monotonic()
            seen["lease_lost"] = ctx.lease_lost
            with pytest.raises(sentinel.LeaseLost):
                ctx.check()
            proxy.resume()
            return "late"

        started = time.monotonic()
        outcome: Dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = s.once("hung", fn, ttl_ms=300, hard_ttl_ms=hard_ms, pass_context=True)
            except BaseException as exc:  # what the late recording says is not the point here
                outcome["error"] = exc

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(60)
        proxy.resume()
        assert seen.get("lost") is True, f"ctx.wait_lost() never fired while the heartbeat hung: {seen}"
        assert seen["lease_lost"] is True
        assert seen["at"] - started < hard_ms / 1000.0 + 2.0, "fired long after the hard deadline"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_server_that_acknowledges_and_never_answers_costs_reply_timeout(
        dsn: str, namespace: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A hung proxy ACKs every packet and forwards nothing: TCP timeouts never fire, reply_timeout does."""
    caplog.set_level("WARNING", logger="sentinel")
    outcome: Dict[str, Any] = {}
    with Proxy(dsn) as proxy:
        options: Dict[str, Any] = dict(conninfo=proxy.dsn, namespace=namespace, reply_timeout=1, connect_timeout=2)

        def call() -> None:
            started = time.monotonic()
            try:
                if kind == "sync":
                    with sentinel.Sentinel(**options) as s:
                        s.inspect("warm")  # the schema check and a pooled connection, before the stall
                        proxy.stall()
                        outcome["result"] = s.once("hung", _never, ttl_ms=1000)
                else:
                    async def main() -> sentinel.Result:
                        async with sentinel.AsyncSentinel(**options) as a:
                            await a.inspect("warm")
                            proxy.stall()
                            return await a.once("hung", _never, ttl_ms=1000)

                    outcome["result"] = asyncio.run(main())
            except BaseException as exc:
                outcome["error"] = exc
            outcome["waited"] = time.monotonic() - started

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(30)
        alive = caller.is_alive()
        proxy.resume()
        caller.join(30)
    assert not alive, "once() still waiting 30 s into a hung connection (reply_timeout=1)"
    assert isinstance(outcome.get("error"), sentinel.DatabaseUnavailable), outcome
    # The acquire is retried as the same call while its claim could live (1 s), each try bounded.
    assert outcome["waited"] < 15, outcome["waited"]
    assert any("no reply from the database within 1 s" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_reply_timeout_is_checked() -> None:
    for bad in (0, 0.5, 3601, "10", True):
        with pytest.raises(sentinel.InvalidArgument, match="reply_timeout must be None or between 1 and 3600"):
            sentinel.Sentinel(conninfo="dbname=x", reply_timeout=bad)
    with pytest.raises(sentinel.InvalidArgument, match="reply_timeout"):
        sentinel.AsyncSentinel(conninfo="dbname=x", reply_timeout=0)


# -- lost replies (the ambiguous commit) --------------------------------------------


def _events(conn: psycopg.Connection[Any], namespace: str, key: str) -> List[Any]:
    return conn.execute("select from_state, to_state, fence from sentinel.events where namespace = %s and key = %s "
                        "order by id", (namespace, key)).fetchall()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_lost_reply_to_acquire_is_retried_as_the_same_claim(dsn: str, namespace: str, kind: str,
                                                              conn: psycopg.Connection[Any]) -> None:
    """The server commits the claim, the reply is lost: the retry gets the same claim, the function runs once."""
    runs: List[int] = []
    with Proxy(dsn) as proxy:
        proxy.drop_reply_to(b"acquire_v")
        if kind == "sync":
            with sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace) as s:
                result = s.once("pay", lambda: runs.append(1) or "charged", ttl_ms=5000)
        else:
            async def charge() -> str:
                runs.append(1)
                return "charged"

            async def main() -> sentinel.Result:
                async with sentinel.AsyncSentinel(conninfo=proxy.dsn, namespace=namespace) as s:
                    return await s.once("pay", charge, ttl_ms=5000)

            result = asyncio.run(main())
        assert proxy.dropped == 1, "the proxy never dropped the acquire's reply"
    assert result.completed and result.response == "charged" and runs == [1]
    assert result.attempt == 1
    # One claim, completed under its fence: no second claim, never uncertain.
    assert _events(conn, namespace, "pay") == [(None, "executing", result.fence),
                                               ("executing", "completed", result.fence)]


def test_a_lost_reply_to_complete_is_retried_and_answers_already_recorded(dsn: str, namespace: str,
                                                                          conn: psycopg.Connection[Any]) -> None:
    runs: List[int] = []
    with Proxy(dsn) as proxy, sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace) as s:
        proxy.drop_reply_to(b"complete_v")
        result = s.once("refund", lambda: runs.append(1) or "refunded", ttl_ms=5000)
        assert proxy.dropped == 1
    assert result.completed and result.persisted and runs == [1]
    assert _events(conn, namespace, "refund")[-1] == ("executing", "completed", result.fence)


def _tcp_settings(conn: Any) -> Dict[str, int]:
    import socket

    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}
    finally:
        sock.close()


def test_sentinels_own_tcp_connections_detect_a_vanished_peer(dsn: str, namespace: str) -> None:
    """Keepalives and tcp_user_timeout on the sockets Sentinel opens, unless the conninfo says otherwise."""
    with Proxy(dsn) as proxy:
        with sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace) as s:
            with s._source.connection() as conn:
                assert _tcp_settings(conn) == {"keepalive": 1, "user_timeout": 10000}
        with sentinel.Sentinel(conninfo=proxy.dsn + " tcp_user_timeout=2500", namespace=namespace) as s:
            with s._source.connection() as conn:
                assert _tcp_settings(conn)["user_timeout"] == 2500  # the user's choice wins

        async def main() -> Dict[str, int]:
            async with sentinel.AsyncSentinel(conninfo=proxy.dsn, namespace=namespace) as a:
                async with a._source.connection() as aconn:
                    return _tcp_settings(aconn)

        assert asyncio.run(main()) == {"keepalive": 1, "user_timeout": 10000}


def test_connect_timeout_is_libpqs_limit_on_opening_a_connection_in_whole_seconds(dsn: str, namespace: str) -> None:
    """The sync client never waits for a free connection; it opens one, and connect_timeout bounds that."""
    with Proxy(dsn) as proxy, sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace, connect_timeout=0.3,
                                                check_schema=False) as s:
        proxy.stall()  # the server's side of the startup never arrives
        started = time.monotonic()
        with pytest.raises(sentinel.DatabaseUnavailable, match="timeout expired"):
            s.inspect("k")
        waited = time.monotonic() - started
        proxy.resume()
    assert 0.9 <= waited < 5.0, waited  # 0.3 s is rounded up to libpq's minimum of one second


def test_an_outage_logs_one_line_per_kind_of_trouble_not_one_per_retry(
        dsn: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat retries every 200 ms while the database is away; the log says so once, on one line each."""
    caplog.set_level("WARNING", logger="sentinel")
    proxy = Proxy(dsn)
    with sentinel.Sentinel(conninfo=proxy.dsn, namespace=namespace, connect_timeout=1) as s:
        s.inspect("warm")

        def fn(ctx: sentinel.ExecutionContext) -> str:
            wait_until(lambda: ctx.lease_expires_at is not None, 10, "a first renewal")
            proxy.close()  # every connection drops, and new ones are refused
            ctx.wait_lost(2.5)  # the function's work, while the heartbeat retries
            return "done"

        result = s.once("outage", fn, ttl_ms=3000, hard_ttl_ms=6000, pass_context=True)
        assert not result.persisted  # the database stayed away until the hard deadline
    beats = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert beats, "the outage was not logged at all"
    assert len(beats) <= 4, beats  # a connection loss, a connect failure, at most one repeat each
    recordings = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("recording failed")]
    assert 1 <= len(recordings) <= 3, recordings  # about one per 5 s, not one per retry
    for message in (r.getMessage() for r in caplog.records):
        assert "\n" not in message, message
        assert not message.startswith("sentinel:"), message  # the logger's name already says it


def test_the_watchdog_thread_is_not_woken_for_every_statement(conn: psycopg.Connection[Any]) -> None:
    """Sequential statements under one bound wake the watchdog's thread at most once (a wake-up per
    statement cost each call a switch of threads)."""
    from sentinel._watchdog import Watchdog

    dog = Watchdog()
    woken: List[int] = []
    notify = dog._cond.notify

    def counted(n: int = 1) -> None:
        woken.append(n)
        notify(n)

    dog._cond.notify = counted  # type: ignore[method-assign]
    fd = conn.pgconn.socket
    for _ in range(200):
        armed = dog.arm(fd, 30.0)
        conn.execute("select 1")
        assert dog.disarm(armed) is False
    assert len(woken) <= 1, len(woken)
