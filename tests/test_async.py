"""AsyncSentinel: what only asyncio has, and the cases of the sync suites with async functions and probes.

The tests of the ``client`` fixture (test_once, test_bad_input, test_ops, ...)
run on both drivers already (``tests/drivers.py``); this file holds what they
cannot express: async functions, async probes, cancellation, tasks sharing a
client, the event loop's heartbeat task, async connection sources, against a
real PostgreSQL. Tests are plain functions running their coroutine with
``asyncio.run``; an AsyncSentinel belongs to the event loop that uses it, so
each test makes its own. Waits are on events, database state or the database
clock, each with a deadline; time-dependent behaviour uses short real TTLs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import random
import secrets
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple, Type

import psycopg
import psycopg_pool
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import sentinel
from sentinel import (
    AsyncExecutionContext,
    AsyncSentinel,
    ClientClosed,
    DatabaseUnavailable,
    DidNotHappen,
    Event,
    FencedOut,
    Happened,
    InvalidNamespace,
    InvalidTTL,
    KeyMismatch,
    ResultNotSerializable,
    TransactionInProgress,
    UncertainKey,
    Unknown,
)
from test_once import Traced
from workers import db_elapsed_ms, stored_row, wait_lease_lapsed

# -- helpers ---------------------------------------------------------------------------


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    """Run a test coroutine on a fresh event loop, with a deadline."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def make(dsn: str, namespace: str, **options: Any) -> AsyncSentinel:
    options.setdefault("fingerprints", False)
    if "get_conn" not in options and "pool" not in options:
        options.setdefault("conninfo", dsn)
    return AsyncSentinel(namespace=namespace, **options)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until truthy, letting the loop run in between; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def _never(*_: Any, **__: Any) -> None:
    raise AssertionError("the function must not run")


class Recorder:
    """A (sync) function that records its calls; the tests assert it was not called."""

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def __call__(self, *args: Any) -> Dict[str, str]:
        self.calls.append(args)
        return {"by": "recorder"}


def _inspect(conn: psycopg.Connection[Any], namespace: str, key: str) -> Dict[str, Any]:
    cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
    row = cur.fetchone()
    assert row is not None, f"no execution record for {namespace}/{key}"
    return dict(zip([d.name for d in (cur.description or [])], row))


def _make_uncertain(conn: psycopg.Connection[Any], namespace: str, key: str) -> int:
    row = conn.execute("select fence from sentinel.acquire_v1(%s, %s, 'dead-worker', 1000)",
                       (namespace, key)).fetchone()
    assert row is not None
    conn.execute("select sentinel.abandon_v1(%s, %s, %s, 'worker died')", (namespace, key, row[0]))
    return int(row[0])


def _tasks_named(name: str) -> List[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


class AsyncTraced(Traced):
    """Traced (tests/test_once.py) for AsyncConnection: libpq writes each connection's traffic to a file."""

    async def __call__(self) -> psycopg.AsyncConnection[Any]:  # type: ignore[override]
        from psycopg import pq

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        path = self.folder / f"conn{len(self.files)}.trace"
        handle = open(path, "w")  # noqa: SIM115 - closed in close()
        self.files.append(path)
        self._handles.append(handle)
        conn.pgconn.trace(handle.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        return conn


@pytest.fixture
def traced(dsn: str, tmp_path: Path) -> Iterator[AsyncTraced]:
    t = AsyncTraced(dsn, tmp_path)
    yield t
    t.close()


@pytest.fixture
def ledger(conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A table (key, runner) in which functions record each real run."""
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    conn.execute(sql.SQL("create table {} (key text not null, runner text not null)").format(sql.Identifier(table)))
    yield table
    conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))


def _ledger_counts(conn: psycopg.Connection[Any], table: str) -> Dict[str, Tuple[int, str]]:
    rows = conn.execute(sql.SQL("select key, count(*), min(runner) from {} group by key").format(
        sql.Identifier(table))).fetchall()
    return {key: (count, runner) for key, count, runner in rows}


# == once(): results, context, sources, round trips (test_once.py) =========================


def test_round_trips_fresh_two_replay_one(traced: AsyncTraced, namespace: str) -> None:
    async def main() -> Tuple[sentinel.Result, sentinel.Result]:
        async with AsyncSentinel(traced, namespace=namespace, default_ttl_ms=30000) as s:
            await s.once("warm-up", lambda: None)  # the first call also checks the schema version, once

            async def fresh_fn() -> Dict[str, bool]:
                return {"ok": True}

            fresh = await s.once("rt", fresh_fn)
            replay = await s.once("rt", fresh_fn)
            return fresh, replay

    fresh, replay = run(main())
    assert fresh.response == replay.response == {"ok": True} and replay.replayed and not fresh.replayed
    assert len(traced.files) == 3, "one connection per call, and no heartbeat connection for a short call"
    assert traced.round_trips(1) == 2, traced.text(1)
    assert traced.round_trips(2) == 1, traced.text(2)
    for i in (1, 2):
        assert "BEGIN" not in traced.text(i) and "COMMIT" not in traced.text(i)


def test_result_fields(dsn: str, namespace: str) -> None:
    async def add(a: int, b: int = 0) -> Dict[str, int]:
        return {"sum": a + b}

    async def main() -> None:
        async with make(dsn, namespace) as s:
            fresh = await s.once("fields", add, args=(2,), kwargs={"b": 3})
            assert (fresh.state, fresh.response, fresh.replayed, fresh.persisted) == ("completed", {"sum": 5},
                                                                                       False, True)
            assert not fresh.execution_alive and not fresh.uncertain and not fresh.failed and not fresh.cached
            assert fresh.fence is not None and fresh.fence > 0 and fresh.attempt == 1
            assert isinstance(fresh, sentinel.Result)
            replay = await s.once("fields", _never)
            assert replay.replayed and replay.response == {"sum": 5} and replay.fence == fresh.fence

    run(main())


def test_fresh_caller_gets_the_recorded_form(dsn: str, namespace: str) -> None:
    async def pair() -> Tuple[int, str]:
        return (1, "a")

    async def main() -> None:
        async with make(dsn, namespace) as s:
            fresh = await s.once("tuple", pair)
            assert fresh.response == [1, "a"] == (await s.once("tuple", _never)).response

    run(main())


def test_fresh_response_is_decoded_like_the_jsonb_replay(dsn: str, namespace: str) -> None:
    """jsonb stores 1e16 as the numeric 10000000000000000: the fresh caller gets what replays will get."""
    async def big() -> Dict[str, float]:
        return {"amount": 1e16}

    async def main() -> None:
        async with make(dsn, namespace) as s, await psycopg.AsyncConnection.connect(dsn) as c:
            fresh = await s.once("big", big)
            replay = await s.once("big", _never)
            assert fresh.response == replay.response == {"amount": 10000000000000000}
            assert type(fresh.response["amount"]) is type(replay.response["amount"]) is int
            async with s.transaction("big-tx", c) as tx:
                recorded = await tx.complete({"amount": 1e16})
            assert recorded == tx.response == (await s.once("big-tx", _never)).response
            assert type(recorded["amount"]) is int, "the transaction's caller gets what replays will get"

    run(main())


def test_private_pool_uses_no_prepared_statements_by_default(dsn: str, namespace: str) -> None:
    """Server-side prepared statements break behind a transaction-pooling PgBouncer: off unless asked for."""
    async def prepared(s: AsyncSentinel) -> List[str]:
        for i in range(8):  # psycopg prepares a statement after 5 executions when allowed to
            await s.once("prep", lambda: 1, fingerprint=False) if i == 0 else await s.once("prep", _never)
        async with s._source.connection() as c:  # the pool's only connection, which ran those calls
            cur = await c.execute("select statement from pg_prepared_statements")
            return [row[0] for row in await cur.fetchall()]

    async def main() -> None:
        async with make(dsn, namespace, pool_size=1) as plain:
            assert await prepared(plain) == []
        async with make(dsn, namespace, pool_size=1, prepared_statements=True) as fast:
            assert any("acquire_v2" in text for text in await prepared(fast))

    run(main())


def test_idle_connection_closed_by_the_server_is_dropped(dsn: str, namespace: str,
                                                         conn: psycopg.Connection[Any]) -> None:
    """A server restart or a terminated backend must not fail the next call on a pooled idle connection."""
    app = f"sentinel-idle-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        async with make(dsn, namespace, conninfo=make_conninfo(dsn, application_name=app), pool_size=1) as s:
            assert (await s.once("before", lambda: 1)).completed
            rows = conn.execute("select pg_terminate_backend(pid, 5000) from pg_stat_activity"
                                " where application_name = %s", (app,)).fetchall()
            assert rows and all(ok for (ok,) in rows)
            await wait_until(lambda: conn.execute("select count(*) from pg_stat_activity where application_name = %s",
                                                  (app,)).fetchone() == (0,), 10, "the backend to exit")
            after = Recorder()
            assert (await s.once("after", after)).completed and len(after.calls) == 1

    run(main())


def test_context_and_current_execution_async_and_sync(dsn: str, namespace: str) -> None:
    seen: Dict[str, Any] = {}

    async def afn(ctx: AsyncExecutionContext, x: int) -> int:
        seen["actx"] = ctx
        seen["acurrent"] = sentinel.current_execution()
        seen["alost"] = ctx.lease_lost
        ctx.check()
        seen["await_lost"] = await ctx.wait_lost_async(0.01)
        with pytest.raises(RuntimeError, match="block the event loop"):
            ctx.wait_lost(1)
        return x

    def sfn(ctx: AsyncExecutionContext, x: int) -> int:
        seen["sctx"] = ctx
        seen["scurrent"] = sentinel.current_execution()
        seen["sthread"] = threading.current_thread()
        seen["swait"] = ctx.wait_lost(0.01)  # a sync function runs in a thread: blocking is fine there
        return x

    async def main() -> None:
        async with make(dsn, namespace) as s:
            ra = await s.once("actx", afn, args=(7,), pass_context=True)
            rs = await s.once("sctx", sfn, args=(8,), pass_context=True)
            assert (ra.response, rs.response) == (7, 8)
            actx, sctx = seen["actx"], seen["sctx"]
            assert seen["acurrent"] is actx and seen["scurrent"] is sctx
            assert isinstance(actx, AsyncExecutionContext) and isinstance(actx, sentinel.ExecutionContext)
            assert (actx.namespace, actx.key, actx.fence, actx.attempt) == (namespace, "actx", ra.fence, 1)
            assert (sctx.key, sctx.fence) == ("sctx", rs.fence)
            assert actx.hard_expires_at > actx.claimed_at
            assert seen["alost"] is False and seen["await_lost"] is False and seen["swait"] is False
            assert seen["sthread"] is not threading.current_thread(), "a sync function runs in a worker thread"
            assert sentinel.current_execution() is None

    run(main())


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_exception_recorded_reraised_and_retried(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                                 kind: str) -> None:
    token = secrets.token_hex(6)
    error = RuntimeError(f"card declined {token}")
    fences: List[int] = []

    def sync_failing(ctx: AsyncExecutionContext) -> None:
        fences.append(ctx.fence)
        raise error

    async def async_failing(ctx: AsyncExecutionContext) -> None:
        sync_failing(ctx)

    async def succeeding(ctx: AsyncExecutionContext) -> Dict[str, int]:
        fences.append(ctx.fence)
        return {"attempt": ctx.attempt}

    async def main() -> None:
        async with make(dsn, namespace) as s:
            with pytest.raises(RuntimeError) as info:
                await s.once("retry", async_failing if kind == "async" else sync_failing, pass_context=True)
            assert info.value is error
            record = _inspect(conn, namespace, "retry")
            assert (record["stored_state"], record["fence"], record["attempt"]) == ("failed", fences[0], 1)
            assert record["error"] == {"type": "builtins.RuntimeError", "message": f"card declined {token}"}
            result = await s.once("retry", succeeding, pass_context=True)
            assert result.completed and not result.replayed
            assert result.attempt == 2 and result.response == {"attempt": 2}
            assert len(fences) == 2 and fences[1] > fences[0] and result.fence == fences[1]

    run(main())


def test_fenced_out_when_reconciled_meanwhile(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace) as s:
            async def fn() -> str:
                await s.reconcile("fenced", action="completed", response={"by": "operator"}, actor="op",
                                  reason="resolved by hand", force=True)
                return "from the function"

            with pytest.raises(FencedOut) as info:
                await s.once("fenced", fn)
            assert info.value.response == "from the function" and info.value.state == "completed"
            replay = await s.once("fenced", _never)
            assert replay.response == {"by": "operator"} and replay.fence > info.value.fence  # type: ignore[operator]

    run(main())


def test_user_pool_connections_keep_their_autocommit_setting(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            async with AsyncSentinel(pool=pool, namespace=namespace) as s:
                assert (await s.once("pool", lambda: 1)).response == 1
                assert (await s.once("pool", lambda: 2, fingerprint=False)).replayed
            async with pool.connection() as c:
                assert c.autocommit is False
            assert not pool.closed, "a user's pool is not closed by AsyncSentinel.close()"

    run(main())


def test_a_sync_pool_is_refused(dsn: str) -> None:
    pool = ConnectionPool(dsn, min_size=1, open=False)
    with pytest.raises(TypeError, match="AsyncConnectionPool"):
        AsyncSentinel(pool=pool)


def test_closed_client_refuses_before_claiming(dsn: str, namespace: str) -> None:
    async def get_conn() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn)

    async def main() -> None:
        s = AsyncSentinel(get_conn, namespace=namespace)
        await s.close()
        with pytest.raises(ClientClosed, match="closed"):
            await s.once("after-close", _never)
        with pytest.raises(ClientClosed, match="closed"):  # before the arguments are checked, as in Sentinel
            await s.once("", _never)
        async with make(dsn, namespace) as other:
            assert await other.inspect("after-close") is None, "a claim was written that nothing will run"

    run(main())


def test_get_conn_connections_are_closed(dsn: str, namespace: str) -> None:
    made: List[psycopg.AsyncConnection[Any]] = []

    async def get_conn() -> psycopg.AsyncConnection[Any]:
        c = await psycopg.AsyncConnection.connect(dsn)  # not autocommit: the driver sets and restores it
        made.append(c)
        return c

    async def main() -> None:
        async with AsyncSentinel(get_conn, namespace=namespace) as s:
            await s.once("gc", lambda: 1)
            await s.once("gc", lambda: 1)

    run(main())
    assert len(made) == 2 and all(c.closed for c in made)


def test_namespaces_are_isolated(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace) as a, make(dsn, namespace + "-b") as b:
            assert (await a.once("same-key", lambda: "a")).response == "a"
            assert (await b.once("same-key", lambda: "b")).response == "b"
            assert (await a.once("same-key", lambda: "x")).response == "a"
            listed = await b.list(bodies=True)
            assert [r["key"] for r in listed] == ["same-key"] and listed[0]["response"] == "b"

    run(main())


def test_tasks_share_one_client(dsn: str, namespace: str) -> None:
    results: List[Tuple[int, Any, bool, bool]] = []

    async def main() -> None:
        async with make(dsn, namespace) as s:
            gate = asyncio.Event()

            async def worker() -> None:
                await gate.wait()
                for i in range(20):
                    async def fn(i: int = i) -> int:
                        return i

                    r = await s.once(f"th-{i}", fn)
                    results.append((i, r.response, r.replayed, r.execution_alive))

            tasks = [asyncio.create_task(worker()) for _ in range(6)]
            gate.set()
            await asyncio.gather(*tasks)

    run(main())
    answered = [r for r in results if not r[3]]
    assert all(resp == i for i, resp, _, _ in answered)
    fresh = [r for r in answered if not r[2]]
    assert sorted(r[0] for r in fresh) == list(range(20)), "each key ran exactly once"


# == bad input (test_bad_input.py) =========================================================


async def _no_record(s: AsyncSentinel) -> None:
    assert await s.list() == [], "a record was written"


@pytest.mark.parametrize("ns", ["", "Payments", "-x", "a" * 64, "a b", "ä", 7])
def test_bad_namespaces(dsn: str, ns: Any) -> None:
    with pytest.raises(InvalidNamespace, match="namespace"):
        AsyncSentinel(conninfo=dsn, namespace=ns)


def test_namespace_and_ttl_defaults(dsn: str) -> None:
    s = AsyncSentinel(conninfo=dsn, namespace=None)
    assert (s.namespace, s.default_ttl_ms) == ("default", 3000)


@pytest.mark.parametrize("wait_ms", [-1, 1.5, True, 2_592_000_001])
def test_bad_wait_ms(dsn: str, namespace: str, wait_ms: Any) -> None:
    async def main() -> None:
        async with make(dsn, namespace) as s:
            with pytest.raises(InvalidTTL, match="wait_ms"):
                await s.once("k", _never, wait_ms=wait_ms)
            await _no_record(s)

    run(main())


@pytest.mark.parametrize("options", [{"default_ttl_ms": 0}, {"retain_ms": -1}, {"cache_size": -1},
                                     {"poll_interval_ms": 0}, {"permanent_errors": [ValueError]}])
def test_bad_options(dsn: str, options: Dict[str, Any]) -> None:
    with pytest.raises((InvalidTTL, sentinel.InvalidArgument, TypeError)):
        AsyncSentinel(conninfo=dsn, **options)


def test_hard_ttl_defaults_to_ttl(dsn: str, namespace: str) -> None:
    seen: List[Any] = []

    async def fn(ctx: AsyncExecutionContext) -> None:
        seen.append(ctx.hard_expires_at - ctx.claimed_at)

    async def main() -> None:
        async with make(dsn, namespace) as s:
            await s.once("hard-default", fn, ttl_ms=1234, pass_context=True)

    run(main())
    assert [d.total_seconds() for d in seen] == [1.234]


def test_constructor_needs_exactly_one_source(dsn: str) -> None:
    async def get_conn() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn)

    with pytest.raises(TypeError, match="needs one of get_conn=, pool= or conninfo="):
        AsyncSentinel()
    with pytest.raises(TypeError, match="exactly one"):
        AsyncSentinel(get_conn, conninfo=dsn)


def test_get_conn_must_return_an_async_connection(dsn: str, namespace: str) -> None:
    async def sync_conn() -> Any:
        return psycopg.connect(dsn)

    async def main() -> None:
        async with AsyncSentinel(sync_conn, namespace=namespace) as s:
            with pytest.raises(TypeError, match="AsyncConnection"):
                await s.once("k", _never)

    run(main())


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), b"bytes"])
def test_unserialisable_result_marks_uncertain_and_never_reruns(dsn: str, namespace: str, value: Any) -> None:
    calls: List[int] = []

    async def fn() -> Any:
        calls.append(1)
        return value

    async def main() -> None:
        async with make(dsn, namespace) as s:
            with pytest.raises(ResultNotSerializable, match="could not be serialised") as info:
                await s.once("charge", fn)
            assert info.value.value is value and info.value.recorded is True
            record = await s.inspect("charge")
            assert record is not None and record["state"] == "uncertain"
            assert "not serialisable" in record["uncertain_reason"]
            again = await s.once("charge", fn)
            assert again.uncertain and calls == [1]

    run(main())


def test_result_refused_by_jsonb_marks_uncertain(dsn: str, namespace: str) -> None:
    calls: List[int] = []

    async def fn() -> str:
        calls.append(1)
        return "nul \x00 inside"  # valid JSON text, but jsonb cannot store \u0000

    async def main() -> None:
        async with make(dsn, namespace) as s:
            with pytest.raises(ResultNotSerializable, match="jsonb"):
                await s.once("nul-result", fn)
            assert (await s.once("nul-result", fn)).uncertain and calls == [1]

    run(main())


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_down_at_start_runs_nothing_get_conn() -> None:
    port = _closed_port()

    async def get_conn() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(f"host=127.0.0.1 port={port} connect_timeout=2")

    async def main() -> None:
        s = AsyncSentinel(get_conn)
        try:
            with pytest.raises(DatabaseUnavailable, match="database unavailable"):
                await s.once("k", _never)
        finally:
            await s.close()

    run(main())


def test_database_down_at_start_runs_nothing_conninfo() -> None:
    port = _closed_port()

    async def main() -> None:
        async with AsyncSentinel(conninfo=f"host=127.0.0.1 port={port} connect_timeout=1", connect_timeout=1.0) as s:
            with pytest.raises(DatabaseUnavailable):
                await s.once("k", _never)

    run(main())


def test_connection_inside_a_transaction_is_refused(dsn: str, namespace: str) -> None:
    async def in_transaction() -> psycopg.AsyncConnection[Any]:
        c = await psycopg.AsyncConnection.connect(dsn)
        await c.execute("select 1")  # opens a transaction the caller still holds
        return c

    async def main() -> None:
        async with AsyncSentinel(in_transaction, namespace=namespace) as s:
            with pytest.raises(TransactionInProgress, match="committed before the function runs"):
                await s.once("k", _never)
        async with make(dsn, namespace) as s:
            assert await s.inspect("k") is None

    run(main())


def test_schema_missing_is_reported(empty_db: Callable[[], str], namespace: str) -> None:
    async def main() -> None:
        async with make(empty_db(), namespace) as s:
            with pytest.raises(sentinel.SchemaError, match="init_db"):
                await s.once("k", _never)

    run(main())


def test_old_schema_is_refused_before_anything_runs(empty_db: Callable[[], str], namespace: str) -> None:
    target = empty_db()
    with psycopg.connect(target, autocommit=True) as c:
        sentinel.init_db(c, to=1)  # acquire_v1 exists, complete_v2 does not

    async def main() -> None:
        async with make(target, namespace) as s:
            with pytest.raises(sentinel.SchemaError, match="older than this client needs"):
                await s.once("k", _never)

    run(main())


# == options (test_features.py) ============================================================


def charge(amount: int, customer: str) -> Dict[str, Any]:
    return {"amount": amount, "customer": customer}


async def acharge(amount: int, customer: str) -> Dict[str, Any]:
    return {"amount": amount, "customer": customer}


def test_fingerprint_by_default_detects_key_reuse(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace, fingerprints=True) as s:
            first = await s.once("pay-1", acharge, kwargs={"amount": 100, "customer": "c1"})
            again = await s.once("pay-1", acharge, kwargs={"customer": "c1", "amount": 100})
            assert again.replayed and again.response == first.response
            with pytest.raises(KeyMismatch, match="pay-1") as info:
                await s.once("pay-1", acharge, kwargs={"amount": 200, "customer": "c1"})
            assert info.value.key == "pay-1"
            with pytest.raises(KeyMismatch):
                await s.once("pay-1", lambda: None)  # another function
            assert (await s.once("pay-1", acharge, kwargs={"amount": 200, "customer": "c1"},
                                 fingerprint=False)).replayed

    run(main())


def test_sync_and_async_clients_compute_the_same_fingerprint(dsn: str, namespace: str) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as sync_client:
        first = sync_client.once("pay-2", charge, kwargs={"amount": 1, "customer": "c"})

    async def main() -> None:
        async with make(dsn, namespace, fingerprints=True) as s:
            replay = await s.once("pay-2", charge, kwargs={"amount": 1, "customer": "c"})
            assert replay.replayed and replay.response == first.response
            with pytest.raises(KeyMismatch):
                await s.once("pay-2", charge, kwargs={"amount": 2, "customer": "c"})

    run(main())


def test_unserialisable_arguments_store_no_fingerprint(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace, fingerprints=True) as s:
            await s.once("obj", lambda o: 1, args=(object(),))
            assert (await s.once("obj", lambda o: 2, args=(object(),))).response == 1

    run(main())


class CardStolen(Exception):
    pass


def test_permanent_errors_are_replayed_not_rerun(dsn: str, namespace: str) -> None:
    calls: List[int] = []

    async def stolen() -> None:
        calls.append(1)
        raise CardStolen("card reported stolen")

    async def bad() -> None:
        raise ValueError("bad")

    async def flaky() -> None:
        raise RuntimeError("flaky")

    async def main() -> None:
        async with make(dsn, namespace, permanent_errors=(CardStolen,)) as s:
            with pytest.raises(CardStolen):
                await s.once("perm", stolen)
            replay = await s.once("perm", stolen)
            assert replay.failed and replay.replayed and calls == [1]
            assert replay.error == {"type": f"{__name__}.CardStolen", "message": "card reported stolen"}
            with pytest.raises(sentinel.PermanentFailure) as info:
                await s.idempotent(key=lambda: "perm")(stolen)()
            assert info.value.result.error["message"] == "card reported stolen"

            with pytest.raises(ValueError):
                await s.once("per-call", bad, permanent=(ValueError,))
            assert (await s.once("per-call", _never)).failed
            with pytest.raises(RuntimeError):
                await s.once("retryable", flaky)
            assert (await s.once("retryable", lambda: "ok")).response == "ok"

    run(main())


def test_retention_per_call_and_per_sentinel(dsn: str, namespace: str) -> None:
    async def boom() -> None:
        raise RuntimeError("x")

    async def main() -> None:
        async with make(dsn, namespace) as keep, make(dsn, namespace, retain_ms=0) as short:
            await keep.once("forever", lambda: 1)
            await keep.once("per-call", lambda: 1, retain_ms=0)
            await short.once("per-sentinel", lambda: 1)
            with pytest.raises(RuntimeError):
                await short.once("failed", boom)
            await keep.once("long", lambda: 1, retain_ms=3_600_000)
            assert await keep.purge_expired() == 3
            assert sorted(r["key"] for r in await keep.list()) == ["forever", "long"]
            with pytest.raises(InvalidTTL):
                await keep.once("bad", lambda: 1, retain_ms=-1)
            # a new claim forgets the retention of the failed attempt
            with pytest.raises(RuntimeError):
                await keep.once("retry", boom, retain_ms=0)
            await keep.once("retry", lambda: "second attempt")
            assert await keep.purge_expired() == 0
            assert (await keep.once("retry", _never)).response == "second attempt"

    run(main())


def test_local_cache_serves_replays_and_expires(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace, cache_size=2, cache_ttl_ms=300) as s, make(dsn, namespace) as operator:
            await s.once("hot", lambda: "v1")
            cached = await s.once("hot", _never)
            assert cached.cached and cached.replayed and cached.response == "v1"
            await operator.reconcile("hot", action="completed", response="v2", actor="op", reason="test", force=True)
            assert (await s.once("hot", _never)).response == "v1", "within the TTL the cache still answers"
            deadline = time.monotonic() + 10
            while True:
                r = await s.once("hot", _never)
                if not r.cached:
                    break
                assert time.monotonic() < deadline, "the cached entry never expired"
                await asyncio.sleep(0.01)
            assert r.response == "v2" and r.replayed
            await s.once("a", lambda: 1)
            await s.once("b", lambda: 1)
            assert (await s.once("hot", _never)).cached is False, "LRU of size 2: 'hot' was evicted"
        async with make(dsn, namespace) as plain:
            await plain.once("k", lambda: 1)
            assert (await plain.once("k", _never)).cached is False, "the cache is off by default"

    run(main())


@dataclasses.dataclass
class Receipt:
    charge_id: str
    amount: int


def test_dataclasses_and_custom_serializers(dsn: str, namespace: str) -> None:
    async def main() -> None:
        async with make(dsn, namespace) as plain:
            assert (await plain.once("dc", lambda: Receipt("ch_1", 100))).response == {"charge_id": "ch_1",
                                                                                        "amount": 100}
        async with make(dsn, namespace, loads=lambda v: Receipt(**v) if isinstance(v, dict) else v) as rich:
            fresh = await rich.once("dc2", lambda: Receipt("ch_2", 200))
            replay = await rich.once("dc2", _never)
            assert fresh.response == replay.response == Receipt("ch_2", 200)
        async with make(dsn, namespace, dumps=lambda v: '"' + str(v).upper() + '"') as upper:
            assert (await upper.once("custom", lambda: "shout")).response == "SHOUT"

    run(main())


def test_decorator(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    calls: List[int] = []

    async def main() -> None:
        async with make(dsn, namespace, fingerprints=True) as s:
            @s.idempotent(key=lambda order_id, **_: f"order-{order_id}", ttl_ms=2000)
            async def place(order_id: int, amount: int) -> Dict[str, int]:
                """Place an order."""
                calls.append(order_id)
                return {"order": order_id, "amount": amount}

            assert await place(7, amount=10) == {"order": 7, "amount": 10}
            assert await place(7, amount=10) == {"order": 7, "amount": 10} and calls == [7]
            assert place.__name__ == "place" and place.__doc__ == "Place an order."

            conn.execute("select sentinel.acquire_v1(%s, 'order-8', 'someone', 60000)", (namespace,))
            with pytest.raises(sentinel.ExecutionInProgress) as alive:
                await place(8, amount=1)
            assert alive.value.result.execution_alive
            _make_uncertain(conn, namespace, "order-9")
            with pytest.raises(sentinel.OutcomeUncertain):
                await place(9, amount=1)
            assert calls == [7]

            @s.idempotent(key=lambda n: f"sync-{n}")
            def square(n: int) -> int:
                calls.append(n)
                return n * n

            assert await square(3) == 9 and await square(3) == 9 and calls == [7, 3]

    run(main())


# -- waiting for an in-flight result ---------------------------------------------------


async def _owner_and_waiter(owner: AsyncSentinel, waiter: AsyncSentinel, key: str, outcome: str = "ok",
                            release_when: Callable[[], bool] = lambda: True) -> Dict[str, Any]:
    """``owner`` runs ``key``; ``waiter`` asks with wait_ms; the owner returns once the waiter saw it alive
    (and ``release_when()`` holds)."""
    started, release = asyncio.Event(), asyncio.Event()
    times: Dict[str, Any] = {}

    async def work() -> str:
        started.set()
        await asyncio.wait_for(release.wait(), 20)
        times["returned"] = time.monotonic()
        if outcome == "fail":
            raise RuntimeError("owner failed")
        return "owner's response"

    async def run_owner() -> None:
        try:
            await owner.once(key, work, ttl_ms=5000)
        except RuntimeError:
            pass

    owner_task = asyncio.create_task(run_owner())
    await asyncio.wait_for(started.wait(), 20)
    alive_events: List[Event] = []

    def on_event(e: Event) -> None:
        if e.kind == "alive" and e.key == key:
            alive_events.append(e)
            if release_when():
                release.set()  # the waiter is waiting now: let the owner finish

    waiter.add_observer(on_event)

    async def waiter_fn() -> str:
        return "waiter ran it"

    times["result"] = await waiter.once(key, waiter_fn, wait_ms=10_000)
    times["answered"] = time.monotonic()
    await owner_task
    times["alive_answers"] = len(alive_events)
    return times


def test_wait_ms_with_listen_wakes_on_notify(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    async def main() -> Dict[str, Any]:
        # A 5 s poll interval: only the notification can wake the waiter sooner.
        def watched() -> bool:  # the owner finishes only after the waiter asked to be notified
            row = conn.execute("select count(*) from sentinel.watchers where namespace = %s and key = 'listen'",
                               (namespace,)).fetchone()
            return bool(row and row[0])

        async with make(dsn, namespace) as owner, make(dsn, namespace, poll_interval_ms=5000) as waiter:
            times = await _owner_and_waiter(owner, waiter, "listen", release_when=watched)
            assert len(_tasks_named("sentinel-listener")) == 1
            return times

    times = run(main())
    result = times["result"]
    assert result.replayed and result.response == "owner's response"
    assert times["answered"] - times["returned"] < 1.0, "woken by NOTIFY, not by the 5 s poll"
    watchers = conn.execute("select count(*) from sentinel.watchers where namespace = %s", (namespace,)).fetchone()
    assert watchers == (0,), "the waiter left its watcher behind (unwatch_v1)"


def test_wait_ms_polls_without_listen(dsn: str, namespace: str) -> None:
    async def main() -> Dict[str, Any]:
        async with make(dsn, namespace) as owner, \
                make(dsn, namespace, listen=False, poll_interval_ms=100) as waiter:
            times = await _owner_and_waiter(owner, waiter, "poll")
            assert _tasks_named("sentinel-listener") == [], "listen=False starts no listener"
            return times

    times = run(main())
    assert times["result"].replayed and times["result"].response == "owner's response"
    waited = times["answered"] - times["returned"]
    assert waited < 2.0
    assert times["alive_answers"] >= 1
    # No busy polling: at most one acquire per poll interval while waiting (plus the first and the last).
    assert times["alive_answers"] <= (waited + 0.6) / 0.1 + 3


def test_wait_ms_polls_when_listen_is_unavailable(dsn: str, namespace: str) -> None:
    """The LISTEN connection cannot be made: waiters fall back to polling, without waiting for it first."""
    refused: List[str] = []

    async def get_conn() -> psycopg.AsyncConnection[Any]:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "sentinel-listener":
            refused.append("listener")
            raise psycopg.OperationalError("test: LISTEN is not available here")
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def main() -> Dict[str, Any]:
        async with make(dsn, namespace) as owner, \
                AsyncSentinel(get_conn, namespace=namespace, fingerprints=False, poll_interval_ms=100) as waiter:
            return await _owner_and_waiter(owner, waiter, "no-listen")

    times = run(main())
    assert refused, "the listener did not try to connect"
    assert times["result"].replayed and times["result"].response == "owner's response"
    assert times["answered"] - times["returned"] < 1.0, "the waiter waited for a listener that never came"


def test_wait_ms_claims_when_the_owner_fails(dsn: str, namespace: str) -> None:
    async def main() -> Dict[str, Any]:
        async with make(dsn, namespace) as owner, make(dsn, namespace) as waiter:
            return await _owner_and_waiter(owner, waiter, "takeover", outcome="fail")

    times = run(main())
    assert times["result"].response == "waiter ran it" and times["result"].attempt == 2


def test_wait_ms_returns_alive_at_the_deadline(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("select sentinel.acquire_v1(%s, 'busy', 'someone', 60000)", (namespace,))

    async def main() -> None:
        async with make(dsn, namespace) as s:
            began = time.monotonic()
            r = await s.once("busy", _never, wait_ms=300)
            assert r.execution_alive and time.monotonic() - began >= 0.3

    run(main())


# -- transactional exactly-once ------------------------------------------------------


def test_transaction_commits_claim_writes_and_response_together(dsn: str, namespace: str, ledger: str) -> None:
    table = sql.Identifier(ledger)

    async def main() -> None:
        async with make(dsn, namespace) as s, await psycopg.AsyncConnection.connect(dsn) as c:
            async with s.transaction("o1", c) as tx:
                assert tx.acquired
                await c.execute(sql.SQL("insert into {} values ('o1', 'tx')").format(table))
                assert await tx.complete({"order": "o1"}) == {"order": "o1"}
            async with s.transaction("o1", c) as again:
                assert again.replayed and again.response == {"order": "o1"}
            with pytest.raises(ZeroDivisionError):
                async with s.transaction("o2", c) as tx2:
                    await c.execute(sql.SQL("insert into {} values ('o2', 'tx')").format(table))
                    raise ZeroDivisionError("the caller's own code fails")
            with pytest.raises(sentinel.SentinelError, match="did not call"):
                async with s.transaction("o3", c):
                    await c.execute(sql.SQL("insert into {} values ('o3', 'tx')").format(table))
            cur = await c.execute(sql.SQL("select key from {} order by key").format(table))
            assert await cur.fetchall() == [("o1",)], "the failed blocks left nothing behind"
            await c.commit()
            assert await s.inspect("o2") is None and await s.inspect("o3") is None and tx2.acquired
            assert (await s.once("o1", _never)).response == {"order": "o1"}
            assert (await s.once("o2", lambda: "claimable again")).response == "claimable again"

    run(main())


def test_transaction_mode_under_contention(dsn: str, namespace: str, ledger: str,
                                           conn: psycopg.Connection[Any]) -> None:
    keys = [f"k{i}" for i in range(25)]
    table = sql.Identifier(ledger)

    async def main() -> int:
        async with make(dsn, namespace) as s:
            gate = asyncio.Event()

            async def worker(i: int) -> int:
                order = keys[i % 5:] + keys[:i % 5]
                done = 0
                async with await psycopg.AsyncConnection.connect(dsn) as c:
                    await gate.wait()
                    for key in order:
                        async with s.transaction(key, c) as tx:
                            if tx.acquired:
                                await c.execute(sql.SQL("insert into {} values (%s, %s)").format(table),
                                                (key, f"task-{i}"))
                                await tx.complete({"key": key, "task": i})
                                done += 1
                            else:
                                assert tx.replayed, tx.outcome
                return done

            tasks = [asyncio.create_task(worker(i)) for i in range(16)]
            gate.set()
            return sum(await asyncio.gather(*tasks))

    assert run(main()) == len(keys)
    assert {k: c for k, (c, _) in _ledger_counts(conn, ledger).items()} == {k: 1 for k in keys}
    states = conn.execute("select state, count(*) from sentinel.executions where namespace = %s group by state",
                          (namespace,)).fetchall()
    assert states == [("completed", len(keys))]


def test_transaction_connection_killed_before_commit_leaves_nothing(dsn: str, namespace: str, ledger: str,
                                                                     conn: psycopg.Connection[Any]) -> None:
    table = sql.Identifier(ledger)

    async def main() -> None:
        async with make(dsn, namespace) as s:
            c = await psycopg.AsyncConnection.connect(dsn)
            try:
                with pytest.raises((DatabaseUnavailable, psycopg.OperationalError)):
                    async with s.transaction("crash", c) as tx:
                        assert tx.acquired
                        await c.execute(sql.SQL("insert into {} values ('crash', 'first')").format(table))
                        await tx.complete({"written": True})
                        assert await s.inspect("crash") is None, "uncommitted work is invisible"
                        conn.execute("select pg_terminate_backend(%s, 5000)", (c.info.backend_pid,))
            finally:
                await c.close()
            assert await s.inspect("crash") is None
            async with await psycopg.AsyncConnection.connect(dsn) as c2:
                async with s.transaction("crash", c2) as tx:
                    assert tx.acquired, "a clean re-run claims the key"
                    await c2.execute(sql.SQL("insert into {} values ('crash', 'second')").format(table))
                    await tx.complete({"written": True})

    run(main())
    assert conn.execute(sql.SQL("select key, runner from {}").format(table)).fetchall() == [("crash", "second")]


# == faults (test_faults.py, the in-process cases) ============================================


def test_hard_deadline_is_never_passed(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "hard-deadline"
    inside: Dict[str, Any] = {}
    samples: List[Dict[str, Any]] = []

    async def main() -> sentinel.Result:
        started, may_return = asyncio.Event(), asyncio.Event()

        async def fn(ctx: AsyncExecutionContext) -> Dict[str, bool]:
            inside["fence"] = ctx.fence
            started.set()
            inside["lost"] = await ctx.wait_lost_async(timeout=10)
            await asyncio.wait_for(may_return.wait(), 30)
            return {"late": True}

        async with make(dsn, namespace) as worker, make(dsn, namespace) as other:
            task = asyncio.create_task(worker.once(key, fn, ttl_ms=300, hard_ttl_ms=900, pass_context=True))
            try:
                await asyncio.wait_for(started.wait(), 15)

                def sample() -> bool:
                    done = "lost" in inside
                    samples.append(_inspect(conn, namespace, key))
                    return done

                await wait_until(sample, 20, "the function to see its lease lost (hard deadline)")
                assert inside["lost"] is True
                record = samples[-1]
                assert record["state"] == "uncertain", record
                assert record["now"] >= record["hard_expires_at"], "the lease was lost before the hard deadline"
                seen = await other.once(key, Recorder())
                assert seen.uncertain and seen.fence == inside["fence"]
            finally:
                may_return.set()
            result: sentinel.Result = await task
            replay = await other.once(key, _never)
            assert replay.replayed and replay.response == {"late": True} and replay.fence == inside["fence"]
            return result

    result = run(main())
    for s in samples:
        assert s["lease_expires_at"] <= s["hard_expires_at"], s
    assert len(samples) >= 3
    assert samples[-1]["lease_expires_at"] == samples[-1]["hard_expires_at"], "renewed up to the ceiling"
    assert result.completed and result.persisted and not result.replayed
    assert result.response == {"late": True} and result.fence == inside["fence"]


def _assert_marked_at_once(conn: psycopg.Connection[Any], namespace: str, key: str, name: str) -> Dict[str, Any]:
    record = _inspect(conn, namespace, key)
    assert record["stored_state"] == "uncertain", record
    assert name in (record["uncertain_reason"] or ""), record["uncertain_reason"]
    assert record["lease_expires_at"] > record["now"], "marked uncertain only because the lease lapsed"
    return record


@pytest.mark.parametrize(("interrupt", "kind"), [
    (KeyboardInterrupt, "async"), (SystemExit, "async"), (asyncio.CancelledError, "async"),
    (KeyboardInterrupt, "sync"), (SystemExit, "sync"),
])
def test_interrupt_raised_by_fn_marks_uncertain_at_once(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                                        interrupt: Type[BaseException], kind: str) -> None:
    key = f"interrupted-{interrupt.__name__}-{kind}"
    raised = interrupt()

    def sync_fn() -> None:
        raise raised

    async def async_fn() -> None:
        raise raised

    async def main() -> None:
        async with make(dsn, namespace) as s:
            caught: Optional[BaseException] = None
            try:
                await s.once(key, async_fn if kind == "async" else sync_fn, ttl_ms=60000)
            except BaseException as exc:
                caught = exc
            assert caught is raised
            _assert_marked_at_once(conn, namespace, key, interrupt.__name__)
            again = Recorder()
            result = await s.once(key, again)
            assert result.uncertain and again.calls == []

    run(main())


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_cancelling_the_caller_marks_uncertain_at_once(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                                       how: str) -> None:
    key = f"cancelled-{how}"
    seen: Dict[str, Any] = {}

    async def main() -> None:
        started = asyncio.Event()

        async def fn(ctx: AsyncExecutionContext) -> None:
            seen["ctx"] = ctx
            started.set()
            await asyncio.Event().wait()  # forever, until cancelled

        async with make(dsn, namespace) as s:
            if how == "cancel":
                task = asyncio.create_task(s.once(key, fn, ttl_ms=60000, pass_context=True))
                await asyncio.wait_for(started.wait(), 15)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.once(key, fn, ttl_ms=60000, pass_context=True), 0.5)
            _assert_marked_at_once(conn, namespace, key, "CancelledError")
            assert seen["ctx"].lease_lost
            again = Recorder()
            assert (await s.once(key, again)).uncertain and again.calls == []

    run(main())


async def _cancel_caller(how: str, make_call: Callable[[], Awaitable[Any]], started: threading.Event) -> None:
    """Cancel a caller of once() the way ``how`` says, and check what the caller is told."""
    if how == "cancel":
        task = asyncio.create_task(make_call())
        await wait_until(started.is_set, 15, "the function to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "wait_for":
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(make_call(), 1.0)
    else:  # a sibling in a task group fails: the group cancels the caller
        async def sibling() -> None:
            await wait_until(started.is_set, 15, "the function to start")
            raise LookupError("sibling failed")

        with pytest.raises(BaseException) as caught:
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
                group.create_task(make_call())
                group.create_task(sibling())
        assert "sibling failed" in repr(caught.value.exceptions)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["cancel", "wait_for", "taskgroup"])
def test_cancelled_sync_fn_keeps_its_lease_until_its_thread_ends(dsn: str, namespace: str, how: str,
                                                                  conn: psycopg.Connection[Any]) -> None:
    """A sync function cannot be stopped in its thread: its lease lives on and its real outcome is recorded."""
    if how == "taskgroup" and not hasattr(asyncio, "TaskGroup"):
        how = "cancel"  # Python < 3.11 has no task groups; the caller is cancelled the same way
    key = f"cancelled-sync-{how}"
    started, release = threading.Event(), threading.Event()
    seen: Dict[str, Any] = {}

    def fn(ctx: AsyncExecutionContext) -> Dict[str, bool]:
        started.set()
        seen["released"] = release.wait(30)
        seen["lost"] = ctx.lease_lost
        return {"late": True}

    async def main() -> None:
        async with make(dsn, namespace) as s:
            await _cancel_caller(how, lambda: s.once(key, fn, ttl_ms=300, hard_ttl_ms=60000, pass_context=True),
                                 started)
            record = _inspect(conn, namespace, key)
            assert record["stored_state"] == "executing", record  # not abandoned while the thread runs
            # The heartbeat keeps renewing: the lease moves on well past the caller's cancellation.
            await wait_until(lambda: _inspect(conn, namespace, key)["lease_expires_at"]
                             > record["lease_expires_at"] + timedelta(milliseconds=900), 15,
                             "the lease to be renewed after the caller was cancelled")
            assert _inspect(conn, namespace, key)["stored_state"] == "executing"
            other = Recorder()
            assert (await s.once(key, other)).execution_alive and other.calls == []
            release.set()
            await wait_until(lambda: _inspect(conn, namespace, key)["stored_state"] == "completed", 15,
                             "the thread's outcome to be recorded")
            replay = await s.once(key, _never)
            assert replay.replayed and replay.response == {"late": True} and replay.fence == record["fence"]

    run(main())
    assert seen == {"released": True, "lost": False}


def test_cancelled_sync_fn_that_then_raises_is_recorded_failed(dsn: str, namespace: str,
                                                               conn: psycopg.Connection[Any]) -> None:
    """The thread's real outcome is recorded, a failure too: raised under a valid lease, it is retryable."""
    key = "cancelled-sync-raises"
    started, release = threading.Event(), threading.Event()

    def fn() -> None:
        started.set()
        release.wait(30)
        raise ValueError("declined by the provider")

    async def main() -> None:
        async with make(dsn, namespace) as s:
            await _cancel_caller("cancel", lambda: s.once(key, fn, ttl_ms=300, hard_ttl_ms=60000), started)
            assert _inspect(conn, namespace, key)["stored_state"] == "executing"
            release.set()
            await wait_until(lambda: _inspect(conn, namespace, key)["stored_state"] == "failed", 15,
                             "the thread's failure to be recorded")
            again = Recorder()
            assert (await s.once(key, again)).completed and again.calls == [()]

    run(main())


def test_caller_cancelled_while_recording_does_not_stop_the_recording(dsn: str, namespace: str,
                                                                      conn: psycopg.Connection[Any]) -> None:
    """The function returned; the caller is cancelled while its response is being recorded: it is recorded."""
    key = "cancelled-while-recording"
    caller: Dict[str, asyncio.Task[Any]] = {}

    def dumps(value: Any) -> str:
        caller["task"].cancel()  # the caller is cancelled right after the function returned
        return json.dumps(value)

    async def fn() -> Dict[str, str]:
        return {"charged": "yes"}

    async def main() -> None:
        async with make(dsn, namespace, dumps=dumps) as s:
            async def call() -> sentinel.Result:
                task = asyncio.current_task()
                assert task is not None
                caller["task"] = task
                return await s.once(key, fn)

            with pytest.raises(asyncio.CancelledError):
                await asyncio.create_task(call())
            await wait_until(lambda: _inspect(conn, namespace, key)["stored_state"] == "completed", 10,
                             "the response to be recorded")
            assert _inspect(conn, namespace, key)["response"] == {"charged": "yes"}

    run(main())


def test_connection_lost_during_fn_is_recorded_on_a_fresh_one(dsn: str, namespace: str,
                                                              conn: psycopg.Connection[Any]) -> None:
    key = "connection-dropped"
    app = f"sentinel-test-{uuid.uuid4().hex[:12]}"
    terminated: List[int] = []
    token = secrets.token_hex(6)

    async def fn() -> Dict[str, str]:
        rows = conn.execute(
            "select pid, pg_terminate_backend(pid, 5000) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid() and application_name = %s",
            (app,),
        ).fetchall()
        assert all(ok for _, ok in rows), rows
        terminated.extend(pid for pid, _ in rows)
        return {"token": token}

    async def main() -> None:
        async with make(dsn, namespace, conninfo=make_conninfo(dsn, application_name=app)) as s:
            result = await s.once(key, fn, ttl_ms=5000)
            assert terminated, "no connection of the client was found to terminate"
            assert result.completed and result.persisted and not result.replayed
            assert result.response == {"token": token}
            replay = await s.once(key, Recorder())
            assert replay.replayed and replay.response == {"token": token} and replay.fence == result.fence

    run(main())
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["response"]) == ("completed", {"token": token})


class FlakyConnections:
    """An async ``get_conn`` whose database becomes unreachable after it made its first connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.made: List[psycopg.AsyncConnection[Any]] = []
        self.reachable = True
        self.refused: List[str] = []  # names of the tasks that were refused a connection

    async def __call__(self) -> psycopg.AsyncConnection[Any]:
        if not self.reachable:
            task = asyncio.current_task()
            self.refused.append(task.get_name() if task else "?")
            raise psycopg.OperationalError("test: the database is unreachable")
        c = await psycopg.AsyncConnection.connect(self.dsn)
        self.made.append(c)
        self.reachable = False
        return c


def test_database_unreachable_past_hard_deadline(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "database-gone"
    flaky = FlakyConnections(dsn)
    token = secrets.token_hex(6)

    async def fn() -> Dict[str, str]:
        assert len(flaky.made) == 1
        conn.execute("select pg_terminate_backend(%s, 5000)", (flaky.made[0].info.backend_pid,))
        return {"token": token}

    async def main() -> None:
        async with AsyncSentinel(flaky, namespace=namespace, fingerprints=False) as s, \
                make(dsn, namespace) as other:
            result = await s.once(key, fn, ttl_ms=300, hard_ttl_ms=1000)
            assert result.persisted is False and not result.completed and result.state == "executing"
            assert result.response == {"token": token} and not result.replayed and result.fence is not None
            recording = [n for n in flaky.refused if n != "sentinel-heartbeat"]
            assert len(recording) >= 2, f"the recording was not retried: {flaky.refused}"
            past_hard = conn.execute("select clock_timestamp() >= %s", (result.hard_expires_at,)).fetchone()
            assert past_hard == (True,), "once() gave up before the hard deadline"
            assert _inspect(conn, namespace, key)["stored_state"] == "executing"

            flaky.reachable = True  # the database is back
            wait_lease_lapsed(conn, namespace, key)
            fn_again = Recorder()
            seen = await other.once(key, fn_again)
            assert seen.uncertain and seen.fence == result.fence
            same_client = await s.once(key, fn_again)
            assert same_client.uncertain and same_client.fence == result.fence
            assert fn_again.calls == []

    run(main())
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["response"]) == ("uncertain", None)


def test_heartbeat_unreachable_loses_the_lease_at_the_hard_deadline(dsn: str, namespace: str,
                                                                    conn: psycopg.Connection[Any]) -> None:
    """The heartbeat cannot reach the database: the function learns its lease is lost, after the hard deadline."""
    key = "heartbeat-unreachable"
    flaky = FlakyConnections(dsn)
    inside: Dict[str, Any] = {}

    async def fn(ctx: AsyncExecutionContext) -> str:
        inside["lost"] = await ctx.wait_lost_async(10)
        inside["reason"] = ctx._alease.lost_reason
        inside["past_hard"] = conn.execute("select clock_timestamp() >= %s", (ctx.hard_expires_at,)).fetchone()
        return "done"

    async def main() -> sentinel.Result:
        async with AsyncSentinel(flaky, namespace=namespace, fingerprints=False) as s:
            return await s.once(key, fn, ttl_ms=300, hard_ttl_ms=1000, pass_context=True)

    result = run(main())
    assert inside["lost"] is True and "hard deadline" in inside["reason"], inside
    assert inside["past_hard"] == (True,), "the lease was given up before the hard deadline"
    assert "sentinel-heartbeat" in flaky.refused
    # The call's own connection still works: the late completion is accepted under the current fence.
    assert result.completed and result.response == "done"


def test_pooled_connection_given_back_and_heartbeats_survive_a_full_pool(dsn: str, namespace: str,
                                                                        conn: psycopg.Connection[Any]) -> None:
    """Each function holds one of the pool's two connections (possible only because once() gave its own back);
    the heartbeat, on its own connection, keeps every lease alive past three TTLs."""
    ttl, n = 300, 2
    keys = [f"full-pool-{i}" for i in range(n)]
    running: Dict[str, int] = {}
    observed: List[sentinel.Result] = []

    async def main() -> List[Any]:
        release = asyncio.Event()
        async with AsyncConnectionPool(dsn, min_size=n, max_size=n, open=False, timeout=5) as pool:

            async def fn(ctx: AsyncExecutionContext) -> Dict[str, Any]:
                async with pool.connection():
                    running[ctx.key] = ctx.fence
                    await asyncio.wait_for(release.wait(), 30)
                return {"lost": ctx.lease_lost}

            async with AsyncSentinel(pool=pool, namespace=namespace) as s, make(dsn, namespace) as other:
                tasks = [asyncio.create_task(s.once(k, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True))
                         for k in keys]
                try:
                    await wait_until(lambda: len(running) == n, 30, f"all {n} functions to hold a connection")
                    assert pool.get_stats().get("pool_available", 0) == 0

                    async def three_ttl_passed() -> bool:
                        past = conn.execute(
                            "select bool_and(clock_timestamp() >= claimed_at + 3 * ttl_ms * interval '1 ms')"
                            " from sentinel.executions where namespace = %s", (namespace,)).fetchone()
                        for k in keys:
                            observed.append(await other.once(k, _never))
                        return bool(past and past[0])

                    await wait_until(three_ttl_passed, 30, f"{3 * ttl} ms of database time since every claim",
                                     interval=0.05)
                finally:
                    release.set()
                return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = run(main())
    not_alive = sorted({(r.key, r.state) for r in observed if not r.execution_alive})
    assert not not_alive, f"live executions were reported not alive to other callers: {not_alive}"
    for r in results:
        assert isinstance(r, sentinel.Result) and r.completed and r.response == {"lost": False}, r


@pytest.mark.skipif(tuple(int(x) for x in psycopg_pool.__version__.split(".")[:2]) < (3, 3),
                    reason="a callable conninfo needs psycopg_pool >= 3.3")
def test_heartbeat_connects_with_a_callable_pool_conninfo(dsn: str, namespace: str,
                                                          conn: psycopg.Connection[Any]) -> None:
    """psycopg_pool >= 3.3 takes conninfo as an (async) callable: the heartbeat's own connection resolves it."""
    key = "callable-conninfo"
    ttl = 300

    async def conninfo() -> str:
        return dsn

    async def main() -> Tuple[sentinel.Result, sentinel.Result]:
        async with AsyncConnectionPool(conninfo, min_size=1, max_size=2, open=False) as pool, \
                AsyncSentinel(pool=pool, namespace=namespace) as s, make(dsn, namespace) as other:

            async def fn(ctx: AsyncExecutionContext) -> bool:
                await wait_until(lambda: db_elapsed_ms(conn, namespace, key) >= 3 * ttl, 15,
                                 f"{3 * ttl} ms of database time")
                seen.append(await other.once(key, _never))
                return ctx.lease_lost

            seen: List[sentinel.Result] = []
            result = await s.once(key, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True)
            return result, seen[0]

    result, observed = run(main())
    assert observed.execution_alive and not observed.uncertain, "the heartbeat could not renew the lease"
    assert result.completed and result.response is False


# == concurrency (test_concurrency.py) ======================================================


def test_at_most_once_under_contention(dsn: str, namespace: str, ledger: str, conn: psycopg.Connection[Any]) -> None:
    """32 tasks, each with its own AsyncSentinel and connections, race on 20 keys in shuffled orders."""
    n_tasks, keys = 32, [f"order-{i:02d}" for i in range(20)]
    table = sql.Identifier(ledger)
    alive: List[Event] = []

    async def main() -> List[Dict[str, sentinel.Result]]:
        gate = asyncio.Event()
        async with AsyncConnectionPool(dsn, min_size=2, max_size=4, open=False,
                                       kwargs={"autocommit": True}) as ledger_pool:

            async def task(i: int) -> Dict[str, sentinel.Result]:
                order = list(keys)
                random.Random(i).shuffle(order)

                async def work(key: str) -> Dict[str, Any]:
                    async with ledger_pool.connection() as c:
                        await c.execute(sql.SQL("insert into {} values (%s, %s)").format(table), (key, f"task-{i}"))
                    await asyncio.sleep(0)  # let the others meet the live execution
                    return {"key": key, "task": f"task-{i}"}

                seen: Dict[str, sentinel.Result] = {}
                async with AsyncSentinel(conninfo=dsn, namespace=namespace, pool_size=1, listen=False,
                                         poll_interval_ms=10, observers=[alive.append]) as s:
                    await gate.wait()
                    for key in order:
                        seen[key] = await s.once(key, work, args=(key,), ttl_ms=5000, wait_ms=20_000)
                return seen

            tasks = [asyncio.create_task(task(i)) for i in range(n_tasks)]
            gate.set()
            return list(await asyncio.gather(*tasks))

    reports = run(main(), timeout=90)
    ledger_rows = _ledger_counts(conn, ledger)
    assert {k: c for k, (c, _) in ledger_rows.items()} == {k: 1 for k in keys}, "a key ran more or less than once"
    stored = {key: (state, attempt, fence, response) for key, state, attempt, fence, response in conn.execute(
        "select key, state, attempt, fence, response from sentinel.executions where namespace = %s",
        (namespace,)).fetchall()}
    assert sorted(stored) == sorted(keys)
    fresh: Counter[str] = Counter()
    for i, seen in enumerate(reports):
        assert sorted(seen) == sorted(keys)
        for key, r in seen.items():
            state, attempt, fence, response = stored[key]
            assert (state, attempt) == ("completed", 1)
            assert response == {"key": key, "task": ledger_rows[key][1]}
            assert r.completed and r.response == response and r.fence == fence and r.persisted, (key, r)
            if not r.replayed:
                fresh[key] += 1
                assert ledger_rows[key][1] == f"task-{i}", f"{key}: a fresh result in a task that did not run it"
    assert fresh == Counter({key: 1 for key in keys}), f"fresh (non-replayed) results per key: {fresh}"
    assert any(e.kind == "alive" for e in alive), "no caller ever met a live execution: there was no race"


def test_sync_and_async_clients_race_on_the_same_keys(dsn: str, namespace: str, ledger: str,
                                                      conn: psycopg.Connection[Any]) -> None:
    """Threads with the sync Sentinel and tasks with AsyncSentinel share keys: each key still runs once."""
    keys = [f"mixed-{i:02d}" for i in range(15)]
    n_threads, n_tasks = 4, 8
    insert = sql.SQL("insert into {} values (%s, %s)").format(sql.Identifier(ledger))
    ready = threading.Barrier(n_threads + 1)
    go = threading.Event()
    reports: Dict[str, Dict[str, sentinel.Result]] = {}
    errors: List[BaseException] = []

    def thread_worker(i: int) -> None:
        name = f"thread-{i}"
        try:
            order = list(keys)
            random.Random(100 + i).shuffle(order)
            with sentinel.Sentinel(conninfo=dsn, namespace=namespace, pool_size=2, listen=False,
                                   poll_interval_ms=10) as s, psycopg.connect(dsn, autocommit=True) as c:
                def work(key: str) -> Dict[str, str]:
                    c.execute(insert, (key, name))
                    return {"key": key, "by": name}

                ready.wait(30)
                assert go.wait(30)
                reports[name] = {key: s.once(key, work, args=(key,), fingerprint=f"mixed:{key}", ttl_ms=5000,
                                             wait_ms=20_000) for key in order}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_worker, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()

    async def main() -> None:
        async def task(i: int, s: AsyncSentinel) -> None:
            name = f"task-{i}"
            order = list(keys)
            random.Random(i).shuffle(order)

            async def work(key: str) -> Dict[str, str]:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
                    await c.execute(insert, (key, name))
                return {"key": key, "by": name}

            reports[name] = {key: await s.once(key, work, args=(key,), fingerprint=f"mixed:{key}", ttl_ms=5000,
                                               wait_ms=20_000) for key in order}

        sentinels = [AsyncSentinel(conninfo=dsn, namespace=namespace, pool_size=2, listen=False, poll_interval_ms=10)
                     for _ in range(2)]
        try:
            for s in sentinels:
                await s.open()
            await asyncio.get_running_loop().run_in_executor(None, ready.wait, 30)
            tasks = [asyncio.create_task(task(i, sentinels[i % 2])) for i in range(n_tasks)]
            go.set()
            await asyncio.gather(*tasks)
        finally:
            go.set()
            for s in sentinels:
                await s.close()

    try:
        run(main(), timeout=90)
    finally:
        for t in threads:
            t.join(60)
    assert not errors, errors
    ledger_rows = _ledger_counts(conn, ledger)
    assert {k: c for k, (c, _) in ledger_rows.items()} == {k: 1 for k in keys}
    assert len(reports) == n_threads + n_tasks
    fresh: Counter[str] = Counter()
    for name, seen in reports.items():
        for key, r in seen.items():
            assert r.completed and r.response == {"key": key, "by": ledger_rows[key][1]}, (name, key, r)
            if not r.replayed:
                fresh[key] += 1
                assert ledger_rows[key][1] == name
    assert fresh == Counter({key: 1 for key in keys})


def test_claim_never_started_is_taken_over(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    key = "ghost-claim"
    ghost = conn.execute(
        "select outcome, fence, state, attempt from sentinel.acquire_v1(%s, %s, 'ghost', 500, 500, false)",
        (namespace, key),
    ).fetchone()
    assert ghost is not None and ghost[0] == "acquired" and ghost[2] == "claimed", ghost
    ghost_fence = ghost[1]
    wait_lease_lapsed(conn, namespace, key)
    calls: List[int] = []

    async def fn(ctx: AsyncExecutionContext) -> Dict[str, int]:
        calls.append(ctx.fence)
        return {"fence": ctx.fence}

    async def main() -> Tuple[sentinel.Result, str]:
        async with make(dsn, namespace) as s:
            return await s.once(key, fn, ttl_ms=3000, pass_context=True), s.owner

    result, owner = run(main())
    assert result.completed and not result.replayed and result.persisted
    assert result.fence is not None and result.fence > ghost_fence and result.attempt == 2
    assert calls == [result.fence] and result.response == {"fence": result.fence}
    row = stored_row(conn, namespace, key)
    assert row is not None and (row["state"], row["fence"], row["attempt"], row["owner"]) == (
        "completed", result.fence, 2, owner)
    assert conn.execute("select sentinel.begin_v1(%s, %s, %s)", (namespace, key, ghost_fence)).fetchone() == (False,)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_heartbeats_keep_long_function_alive(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                             kind: str) -> None:
    """While a long function runs, several tasks race on its key: they see it alive, never uncertain."""
    key = f"long-running-{kind}"
    ttl = 400
    seen_in_fn: Dict[str, Any] = {}
    observations: List[sentinel.Result] = []

    async def main() -> sentinel.Result:
        started = threading.Event()
        release = threading.Event()
        arelease = asyncio.Event()

        def sync_fn(ctx: AsyncExecutionContext) -> Dict[str, str]:
            started.set()
            seen_in_fn["released"] = release.wait(30)
            seen_in_fn["lease_lost"] = ctx.lease_lost
            return {"done": "yes"}

        async def async_fn(ctx: AsyncExecutionContext) -> Dict[str, str]:
            started.set()
            seen_in_fn["released"] = await asyncio.wait_for(arelease.wait(), 30)
            seen_in_fn["lease_lost"] = ctx.lease_lost
            return {"done": "yes"}

        async with make(dsn, namespace) as worker, make(dsn, namespace) as others:
            runner = asyncio.create_task(worker.once(key, async_fn if kind == "async" else sync_fn, ttl_ms=ttl,
                                                     hard_ttl_ms=60000, pass_context=True))
            try:
                await wait_until(started.is_set, 15, "the function to start")
                stop = asyncio.Event()

                async def observe() -> None:
                    while not stop.is_set():
                        observations.append(await others.once(key, _never))
                        await asyncio.sleep(0.03)

                observers = [asyncio.create_task(observe()) for _ in range(4)]
                await wait_until(lambda: db_elapsed_ms(conn, namespace, key) >= 5 * ttl, 30,
                                 f"{5 * ttl} ms of database time since the claim", interval=0.05)
                stop.set()
                await asyncio.gather(*observers)
                observations.append(await others.once(key, _never))  # made after 5 ttl by the database clock
            finally:
                release.set()
                arelease.set()
            return await runner

    result = run(main())
    bad = [r for r in observations if not r.execution_alive or r.uncertain]
    assert not bad, f"another caller saw the live execution as not alive: {bad[:3]}"
    assert len(observations) >= 10
    assert seen_in_fn == {"released": True, "lease_lost": False}
    assert result.completed and not result.replayed and result.persisted and result.response == {"done": "yes"}
    row = stored_row(conn, namespace, key)
    assert row is not None and row["state"] == "completed" and row["attempt"] == 1


@pytest.mark.parametrize("source", ["conninfo", "get_conn"])
def test_claim_committed_before_fn_runs(dsn: str, namespace: str, conn: psycopg.Connection[Any], source: str) -> None:
    key = f"visible-{source}"
    seen: List[Any] = []

    async def get_conn() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn)  # not autocommit

    async def fn(ctx: AsyncExecutionContext) -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            cur = await other.execute(
                "select state, fence, owner from sentinel.executions where namespace = %s and key = %s",
                (namespace, key))
            seen.append(await cur.fetchone())
        return ctx.fence

    async def main() -> Tuple[sentinel.Result, str]:
        s = make(dsn, namespace) if source == "conninfo" else AsyncSentinel(get_conn, namespace=namespace)
        async with s:
            return await s.once(key, fn, pass_context=True), s.owner

    result, owner = run(main())
    assert result.completed and result.response == result.fence
    assert seen == [("executing", result.fence, owner)]


def test_one_heartbeat_task_for_many_executions(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    ttl, n = 300, 8
    keys = [f"parallel-{i}" for i in range(n)]
    running: Dict[str, int] = {}

    async def main() -> List[sentinel.Result]:
        release = asyncio.Event()

        async def fn(ctx: AsyncExecutionContext) -> Dict[str, Any]:
            running[ctx.key] = ctx.fence
            released = await asyncio.wait_for(release.wait(), 30)
            return {"key": ctx.key, "released": released, "lost": ctx.lease_lost}

        async with make(dsn, namespace) as s:
            tasks = [asyncio.create_task(s.once(k, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True))
                     for k in keys]
            try:
                await wait_until(lambda: len(running) == n, 30, f"all {n} functions to be running")

                def all_alive_after_3_ttl() -> bool:
                    row = conn.execute(
                        "select count(*), bool_and(e.state = 'executing'),"
                        " bool_and(e.now >= e.claimed_at + 3 * e.ttl_ms * interval '1 millisecond')"
                        " from unnest(%s::text[]) k, lateral sentinel.inspect_v1(%s, k) e",
                        (keys, namespace)).fetchone()
                    assert row is not None and row[0] == n and row[1] is True, f"heartbeats missed: {row}"
                    return bool(row[2])

                await wait_until(all_alive_after_3_ttl, 30, f"{3 * ttl} ms of database time with every lease alive")
                assert len(_tasks_named("sentinel-heartbeat")) == 1, "one heartbeat task for every execution"
            finally:
                release.set()
            results = list(await asyncio.gather(*tasks))
        assert _tasks_named("sentinel-heartbeat") == [], "close() stops the heartbeat task"
        return results

    results = run(main())
    for key, result in zip(keys, results):
        assert result.completed and result.response == {"key": key, "released": True, "lost": False}
        assert result.fence == running[key]
    assert len({r.fence for r in results}) == n


# == operations: observers, probes, events, stats (test_ops.py) ================================


def test_observers_see_every_kind(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    seen: List[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("observers must never break once()")

    async def boom() -> None:
        raise RuntimeError("x")

    async def main() -> None:
        async with make(dsn, namespace, observers=[seen.append, broken]) as s:
            await s.once("a", lambda: 1)                            # acquired, completed
            await s.once("a", lambda: 1)                            # replayed
            with pytest.raises(RuntimeError):
                await s.once("b", boom)                             # acquired, failed

            async def inner() -> int:
                assert (await s.once("c", lambda: 0)).execution_alive  # alive
                await s.reconcile("c", action="completed", response=2, actor="op", reason="test", force=True)
                return 1

            with pytest.raises(FencedOut):
                await s.once("c", inner)                            # acquired, fenced
            _make_uncertain(conn, namespace, "d")
            assert (await s.once("d", lambda: 1)).uncertain          # uncertain

            async def until_lost(ctx: AsyncExecutionContext) -> int:
                assert await ctx.wait_lost_async(10)
                return 1

            await s.once("e", until_lost, ttl_ms=200, hard_ttl_ms=400, pass_context=True)  # lease_lost

    run(main())
    kinds = {e.kind for e in seen}
    assert kinds == set(sentinel.EVENT_KINDS), set(sentinel.EVENT_KINDS) - kinds
    completed = [e for e in seen if e.kind == "completed" and e.key == "a"]
    assert completed[0].duration_s is not None and completed[0].fence is not None


def _happened_sync(info: UncertainKey) -> Happened:
    return Happened({"charge_id": "ch_found", "fence": info.fence})


async def _happened_async(info: UncertainKey) -> Happened:
    return Happened({"charge_id": "ch_found", "fence": info.fence})


@pytest.mark.parametrize("probe", [_happened_sync, _happened_async])
def test_probe_happened_records_the_response(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                             probe: Any) -> None:
    fence = _make_uncertain(conn, namespace, "p1")

    async def main() -> None:
        async with make(dsn, namespace) as s:
            result = await s.once("p1", _never, on_uncertain=probe)
            assert result.replayed and result.response == {"charge_id": "ch_found", "fence": fence}
            assert result.fence is not None and result.fence > fence
            record = await s.inspect("p1")
            assert record is not None and record["reconciled_by"] == f"probe:{__name__}.{probe.__qualname__}"
            assert (await s.events("p1"))[-1]["actor"] == record["reconciled_by"]

    run(main())


def test_probe_did_not_happen_runs_the_function(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    _make_uncertain(conn, namespace, "p2")
    calls: List[int] = []

    async def probe(info: UncertainKey) -> DidNotHappen:
        return DidNotHappen("no charge found")

    async def fn() -> str:
        calls.append(1)
        return "charged now"

    async def main() -> sentinel.Result:
        async with make(dsn, namespace, on_uncertain=probe) as s:
            return await s.once("p2", fn)

    result = run(main())
    assert result.response == "charged now" and not result.replayed and result.attempt == 2 and calls == [1]


@pytest.mark.parametrize("answer", ["unknown", "raises", "raises-async"])
def test_probe_unknown_keeps_it_uncertain(dsn: str, namespace: str, conn: psycopg.Connection[Any],
                                          answer: str) -> None:
    _make_uncertain(conn, namespace, "p3")

    def probe(info: UncertainKey) -> Unknown:
        if answer == "raises":
            raise TimeoutError("provider did not answer")
        return Unknown("provider says: no idea")

    async def aprobe(info: UncertainKey) -> Unknown:
        raise TimeoutError("provider did not answer")

    async def main() -> None:
        async with make(dsn, namespace) as s:
            result = await s.once("p3", _never, on_uncertain=aprobe if answer == "raises-async" else probe)
            assert result.uncertain
            record = await s.inspect("p3")
            assert record is not None and record["state"] == "uncertain" and record["reconciled_by"] is None

    run(main())


def test_events_stats_and_purge_events(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    async def slow(ctx: AsyncExecutionContext) -> int:
        waited = 0
        while ctx.lease_expires_at is None or waited < 3:  # at least three renewals
            await ctx.wait_lost_async(0.12)
            waited += 1
        return 1

    async def main() -> None:
        async with make(dsn, namespace) as s:
            await s.once("quiet", slow, ttl_ms=300, hard_ttl_ms=10000, pass_context=True)
            for _ in range(5):
                assert (await s.once("quiet", _never)).replayed
            assert [(e["from_state"], e["to_state"]) for e in await s.events("quiet")] == [
                (None, "executing"), ("executing", "completed")], "heartbeats and replays write no events"
            await s.once("s2", lambda: 1)
            _make_uncertain(conn, namespace, "s3")
            st = await s.stats()
            assert (st["completed"], st["uncertain"], st["claimed"], st["failed"]) == (2, 1, 0, 0)
            assert st["oldest_uncertain_at"] is not None and st["started_last_minute"] == 3
            assert st["finished_last_minute"] == 2
            assert [r["key"] for r in await s.list("uncertain")] == ["s3"]
            assert await s.purge_events(10 * 60_000) == 0, "nothing is ten minutes old yet"
            assert await s.purge_events(0) >= 5
            assert await s.events("quiet") == []

    run(main())
