"""Fork scenarios, each run in a process of its own: ``python tests/forking.py SCENARIO DSN NAMESPACE``.

Each scenario prints one line ``result <json>`` (from the process that knows
the answer) and exits; the tests in ``test_fork.py`` assert on it.

``idle``
    The parent warms a ``Sentinel`` up (one call, so an idle connection is
    kept), forks, and the child calls ``once()``. Reports the backend pids the
    parent held and the ones the child used: a child must never talk on the
    parent's sockets.
``dead-parent``
    The parent runs a long ``once()`` (a 300 ms lease) in a thread, forks and
    dies at once. The child runs a ``once()`` of its own for three seconds and
    reports whether the dead parent's lease lapsed meanwhile: a child's
    heartbeat must never renew its parent's leases.
``multiprocessing``
    ``idle`` with ``multiprocessing`` and the fork start method.
``async-idle``
    ``idle`` for an ``AsyncSentinel`` (its private pool), each process with an
    event loop of its own.
``pool``
    The parent uses a ``Sentinel`` on its own ``psycopg_pool.ConnectionPool``
    and forks; the child's call must refuse with ``ForkedPool`` (the pool's
    connections and threads are the parent's), and the parent's pool keeps
    working.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any, Dict, List

import psycopg

import sentinel

APP = "sentinel-fork-test"


def _backends(dsn: str, app: str) -> List[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select pid from pg_stat_activity where application_name = %s", (app,)).fetchall()
    return sorted(r[0] for r in rows)


def _lapsed(dsn: str, ns: str, key: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select lease_expires_at <= sentinel._now() or state = 'uncertain' "
                           "from sentinel.inspect_v1(%s, %s)", (ns, key)).fetchone()
    return bool(row and row[0])


def _child_calls(s: sentinel.Sentinel, dsn: str, app: str, parent: List[int]) -> Dict[str, Any]:
    """What a child sees: its own calls work, on connections of its own."""
    result = s.once("child", lambda: {"pid": os.getpid()})
    mine = sorted(set(_backends(dsn, app)) - set(parent))
    s.close()
    return {"response": result.response, "state": result.state, "new_backends": mine,
            "parent_backends": parent, "pid": os.getpid()}


def idle(dsn: str, ns: str) -> None:
    app = f"{APP}-{os.getpid()}"
    s = sentinel.Sentinel(conninfo=f"{dsn} application_name={app}", namespace=ns, listen=False)
    s.once("warm-up", lambda: 1)
    parent = _backends(dsn, app)
    doc = _fork_and_collect(lambda: _child_calls(s, dsn, app, parent))
    # The parent's own connection still works after the child is gone.
    doc["parent_after"] = s.once("parent-after", lambda: "ok").response
    s.close()
    print("result " + json.dumps(doc), flush=True)


def _fork_and_collect(child: Any) -> Dict[str, Any]:
    """Run ``child()`` in a forked child; its JSON answer, read over a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            doc = child()
        except BaseException as exc:  # report, never raise in a forked child
            doc = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(doc).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    answer: Dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    return answer


def async_idle(dsn: str, ns: str) -> None:
    app = f"{APP}-{os.getpid()}"
    s = sentinel.AsyncSentinel(conninfo=f"{dsn} application_name={app}", namespace=ns, listen=False)

    async def fresh(value: Any) -> Any:
        return value

    asyncio.run(s.once("warm-up", fresh, (1,)))  # the private pool now holds the parent's connections
    parent = _backends(dsn, app)

    def child() -> Dict[str, Any]:
        async def calls() -> Dict[str, Any]:
            result = await s.once("child", fresh, ({"pid": os.getpid()},))
            mine = sorted(set(_backends(dsn, app)) - set(parent))
            await s.close()
            return {"response": result.response, "state": result.state, "new_backends": mine,
                    "parent_backends": parent, "pid": os.getpid()}
        return asyncio.run(calls())

    doc = _fork_and_collect(child)
    doc["parent_backends_after"] = _backends(dsn, app)
    print("result " + json.dumps(doc), flush=True)


def own_pool(dsn: str, ns: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        s = sentinel.Sentinel(pool=pool, namespace=ns, listen=False)
        s.once("warm-up", lambda: 1)

        def child() -> Dict[str, Any]:
            try:
                s.once("child", lambda: 2)
            except sentinel.ForkedPool as exc:
                return {"refused": str(exc)}
            return {"refused": None}

        doc = _fork_and_collect(child)
        doc["parent_after"] = s.once("parent-after", lambda: "ok").response
        doc["child_ran"] = s.inspect("child") is not None
        s.close()
    print("result " + json.dumps(doc), flush=True)


def _mp_child(s: sentinel.Sentinel, dsn: str, app: str, parent: List[int], queue: Any) -> None:
    try:
        queue.put(_child_calls(s, dsn, app, parent))
    except BaseException as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def with_multiprocessing(dsn: str, ns: str) -> None:
    app = f"{APP}-{os.getpid()}"
    s = sentinel.Sentinel(conninfo=f"{dsn} application_name={app}", namespace=ns, listen=False)
    s.once("warm-up", lambda: 1)
    parent = _backends(dsn, app)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_mp_child, args=(s, dsn, app, parent, queue))
    proc.start()
    doc = queue.get(timeout=30)
    proc.join(30)
    doc["parent_after"] = s.once("parent-after", lambda: "ok").response
    s.close()
    print("result " + json.dumps(doc), flush=True)


def dead_parent(dsn: str, ns: str) -> None:
    s = sentinel.Sentinel(conninfo=dsn, namespace=ns, listen=False)
    started = threading.Event()

    def forever() -> None:
        started.set()
        threading.Event().wait()

    threading.Thread(target=s.once, args=("parent", forever), kwargs={"ttl_ms": 300, "hard_ttl_ms": 600000},
                     daemon=True).start()
    if not started.wait(30):
        raise SystemExit("the parent's function never started")
    if os.fork() != 0:
        os._exit(0)  # the parent dies at once, its lease is no longer renewed by anyone
    try:
        def watch() -> Dict[str, Any]:
            deadline = time.monotonic() + 3.0  # ten leases of the parent's
            while time.monotonic() < deadline:
                if _lapsed(dsn, ns, "parent"):
                    return {"parent_lapsed": True}
                time.sleep(0.05)
            return {"parent_lapsed": False}

        doc = s.once("child", watch, ttl_ms=300, hard_ttl_ms=600000).response
    except BaseException as exc:
        doc = {"error": f"{type(exc).__name__}: {exc}"}
    print("result " + json.dumps(doc), flush=True)
    os._exit(0)


if __name__ == "__main__":
    scenario, dsn_arg, ns_arg = sys.argv[1:4]
    {"idle": idle, "dead-parent": dead_parent, "multiprocessing": with_multiprocessing,
     "async-idle": async_idle, "pool": own_pool}[scenario](dsn_arg, ns_arg)
