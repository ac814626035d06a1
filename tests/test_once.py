"""once(): results, context, sources, round trips."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psycopg
import pytest
from psycopg import pq
from psycopg_pool import ConnectionPool

import sentinel
from sentinel import ExecutionContext, FencedOut, KeyMismatch


class Traced:
    """Connections whose client/server traffic libpq writes to files, one per connection."""

    def __init__(self, dsn: str, folder: Path) -> None:
        self.dsn = dsn
        self.folder = folder
        self.files: List[Path] = []
        self._handles: List[Any] = []

    def __call__(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True)
        path = self.folder / f"conn{len(self.files)}.trace"
        handle = open(path, "w")  # noqa: SIM115 - closed in close()
        self.files.append(path)
        self._handles.append(handle)
        conn.pgconn.trace(handle.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        return conn

    def close(self) -> None:
        for h in self._handles:
            h.close()

    def messages(self, index: int) -> List[str]:
        return [line.split("\t") for line in self.files[index].read_text().splitlines()]  # type: ignore[misc]

    def round_trips(self, index: int) -> int:
        """Client messages that end a request and wait for the server (Sync or a simple Query)."""
        return sum(1 for m in self.messages(index) if m[0] == "F" and m[2] in ("Sync", "Query"))

    def text(self, index: int) -> str:
        return self.files[index].read_text()


@pytest.fixture
def traced(dsn: str, tmp_path: Path) -> Iterator[Traced]:
    t = Traced(dsn, tmp_path)
    yield t
    t.close()


def test_round_trips_fresh_two_replay_one(traced: Traced, namespace: str) -> None:
    with sentinel.Sentinel(traced, namespace=namespace, default_ttl_ms=30000) as s:
        s.once("warm-up", lambda: None)  # the first call also checks the schema version, once
        fresh = s.once("rt", lambda: {"ok": True})
        replay = s.once("rt", lambda: {"ok": False})
    assert fresh.response == replay.response == {"ok": True}
    assert len(traced.files) == 3, "one connection per call, and no heartbeat connection for a short call"
    assert traced.round_trips(1) == 2, traced.text(1)
    assert traced.round_trips(2) == 1, traced.text(2)
    for i in (1, 2):
        assert "BEGIN" not in traced.text(i) and "COMMIT" not in traced.text(i)


def test_result_fields(client: sentinel.Sentinel) -> None:
    fresh = client.once("fields", lambda a, b=0: {"sum": a + b}, args=(2,), kwargs={"b": 3})
    assert (fresh.state, fresh.response, fresh.replayed, fresh.persisted) == ("completed", {"sum": 5}, False, True)
    assert not fresh.execution_alive and not fresh.uncertain and not fresh.failed
    assert fresh.fence is not None and fresh.fence > 0 and fresh.attempt == 1
    replay = client.once("fields", lambda: None)
    assert replay.replayed and replay.response == {"sum": 5} and replay.fence == fresh.fence


def test_fresh_caller_gets_the_recorded_form(client: sentinel.Sentinel) -> None:
    fresh = client.once("tuple", lambda: (1, "a"))
    assert fresh.response == [1, "a"] == client.once("tuple", lambda: None).response


def test_context_and_current_execution(client: sentinel.Sentinel) -> None:
    seen: Dict[str, Any] = {}

    def fn(ctx: ExecutionContext, x: int) -> int:
        seen["ctx"] = ctx
        seen["current"] = sentinel.current_execution()
        seen["lost"] = ctx.lease_lost
        ctx.check()
        return x

    result = client.once("ctx", fn, args=(7,), pass_context=True)
    ctx = seen["ctx"]
    assert seen["current"] is ctx and seen["lost"] is False
    assert (ctx.namespace, ctx.key, ctx.fence, ctx.attempt) == (client.namespace, "ctx", result.fence, 1)
    assert ctx.hard_expires_at > ctx.claimed_at
    assert sentinel.current_execution() is None


def test_fingerprint_mismatch(client: sentinel.Sentinel) -> None:
    client.once("fp", lambda: "first", fingerprint="charge:100")
    assert client.once("fp", lambda: "x", fingerprint="charge:100").response == "first"
    with pytest.raises(KeyMismatch, match="another fingerprint") as info:
        client.once("fp", lambda: "x", fingerprint="charge:200")
    assert info.value.key == "fp"


def test_exception_recorded_and_retried(client: sentinel.Sentinel) -> None:
    boom = RuntimeError("card declined")

    def fail() -> None:
        raise boom

    with pytest.raises(RuntimeError) as info:
        client.once("retry", fail)
    assert info.value is boom
    record = client.inspect("retry")
    assert record is not None and record["state"] == "failed"
    assert record["error"] == {"type": "builtins.RuntimeError", "message": "card declined"}
    second = client.once("retry", lambda: "ok")
    assert second.response == "ok" and second.attempt == 2 and second.fence > record["fence"]  # type: ignore[operator]


def test_permanent_failure_is_replayed(client: sentinel.Sentinel, conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "select fence from sentinel.acquire_v1(%s, 'perm', 'me', 1000)", (client.namespace,)
    ).fetchone()
    assert row is not None
    conn.execute(
        "select sentinel.fail_v1(%s, 'perm', %s, '{\"code\": \"stolen_card\"}', true)", (client.namespace, row[0])
    )
    result = client.once("perm", lambda: pytest.fail("a permanent failure must not run again"))
    assert result.failed and result.replayed and result.error == {"code": "stolen_card"}


def test_fenced_out_when_reconciled_meanwhile(client: sentinel.Sentinel) -> None:
    def fn() -> str:
        client.reconcile("fenced", action="completed", response={"by": "operator"}, actor="op",
                         reason="resolved by hand", force=True)
        return "from the function"

    with pytest.raises(FencedOut) as info:
        client.once("fenced", fn)
    assert info.value.response == "from the function" and info.value.state == "completed"
    replay = client.once("fenced", lambda: None)
    assert replay.response == {"by": "operator"} and replay.fence > info.value.fence  # type: ignore[operator]


def test_user_pool_connections_keep_their_autocommit_setting(dsn: str, namespace: str) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        with sentinel.Sentinel(pool=pool, namespace=namespace) as s:
            assert s.once("pool", lambda: 1).response == 1
            assert s.once("pool", lambda: 2).replayed
        with pool.connection() as c:
            assert c.autocommit is False


def test_get_conn_connections_are_closed(dsn: str, namespace: str) -> None:
    made: List[psycopg.Connection[Any]] = []

    def get_conn() -> psycopg.Connection[Any]:
        c = psycopg.connect(dsn)
        made.append(c)
        return c

    with sentinel.Sentinel(get_conn, namespace=namespace) as s:
        s.once("gc", lambda: 1)
        s.once("gc", lambda: 1)
    assert len(made) == 2 and all(c.closed for c in made)


def test_namespaces_are_isolated(dsn: str, namespace: str) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as a, \
            sentinel.Sentinel(conninfo=dsn, namespace=namespace + "-b") as b:
        assert a.once("same-key", lambda: "a").response == "a"
        assert b.once("same-key", lambda: "b").response == "b"
        assert a.once("same-key", lambda: "x").response == "a"
        assert [r["key"] for r in b.list()] == ["same-key"] and b.list(bodies=True)[0]["response"] == "b"


def test_purge_removes_old_records_and_fences_keep_growing(client: sentinel.Sentinel) -> None:
    first = client.once("purged", lambda: 1)
    assert client.purge(0) == 1
    assert client.inspect("purged") is None
    second = client.once("purged", lambda: 2)
    assert second.response == 2 and second.fence > first.fence  # type: ignore[operator]


def test_threads_share_one_client(client: sentinel.Sentinel) -> None:
    results: List[Any] = []
    lock = threading.Lock()
    gate = threading.Barrier(6)

    def worker() -> None:
        gate.wait(timeout=10)
        for i in range(20):
            r = client.once(f"th-{i}", lambda i=i: i)
            with lock:
                results.append((i, r.response, r.replayed, r.execution_alive))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    answered = [r for r in results if not r[3]]
    assert all(resp == i for i, resp, _, _ in answered)
    fresh = [r for r in answered if not r[2]]
    assert sorted(r[0] for r in fresh) == list(range(20)), "each key ran exactly once"


def test_fresh_and_replayed_responses_serialise_to_the_same_bytes(client: sentinel.Sentinel) -> None:
    """jsonb reorders keys and turns 1e16 into an int: the fresh caller gets the response as replays will."""
    import json

    value = {"zeta": 1, "alpha": {"b": 2.5, "a": "ü😀", "aa": None}, "x": [3, 1e16, -0.0, {"é": 1, "e": 2}],
             "dup": {"k": 1}, "": "empty key", "longer-key": [1.5, "\u2028"]}
    fresh = client.once("bytes", lambda: value)
    replay = client.once("bytes", lambda: value)
    assert replay.replayed and not fresh.replayed
    assert json.dumps(fresh.response) == json.dumps(replay.response), (fresh.response, replay.response)
    assert json.dumps(fresh.response, ensure_ascii=False).encode() == \
        json.dumps(replay.response, ensure_ascii=False).encode()
    assert list(fresh.response) == ["", "x", "dup", "zeta", "alpha", "longer-key"]  # jsonb's order
