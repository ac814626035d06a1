"""Worker processes for the concurrent scenarios (3: throughput, 4: hot key).

The machine has 2 cores and the client side of ``once()`` is Python, so
parallel callers are processes (threads would share one GIL and measure the
GIL instead). Each worker holds exactly one connection per workload kind: a
persistent autocommit ``psycopg`` connection for the floor (and the ledger),
and a ``Sentinel(conninfo=..., pool_size=1)`` whose private pool keeps one
connection. Workers are started once, through a ``forkserver`` (fast to start,
and no child inherits the parent's open database sockets), and then receive
commands over a pipe, so 32 of them cost their start-up once per run.

Time windows are absolute ``time.perf_counter_ns()`` values chosen by the
parent: CLOCK_MONOTONIC on Linux, the same in every process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FLOOR_INSERT = "insert into bench.floor (k) values (%s)"
FLOOR_UPDATE = "update bench.floor set v = %s::jsonb where k = %s"
SMALL_RESPONSE = '{"ok": true}'
# The floor of a hot key: one statement that claims the key or reads it, like acquire_v1.
FLOOR_HOT_CLAIM = (
    "with ins as (insert into bench.floor_hot (k, owner) values (%s, %s) on conflict do nothing returning k)"
    " select exists (select 1 from ins), (select v from bench.floor_hot where k = %s)"
)
FLOOR_HOT_DONE = "update bench.floor_hot set v = %s::jsonb where k = %s"
LEDGER_INSERT = "insert into bench.ledger (k, worker, pid, fence) values (%s, %s, %s, %s)"


def _sleep_until(t_ns: int) -> None:
    while True:
        left = t_ns - time.perf_counter_ns()
        if left <= 0:
            return
        time.sleep(min(left / 1e9, 0.05))


class _Worker:
    """The state of one worker process."""

    def __init__(self, index: int, dsn: str, namespace: str) -> None:
        for p in (ROOT / "python", HERE):
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))
        import psycopg

        from sentinel import Sentinel

        self.index = index
        self.pid = os.getpid()
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.sentinel = Sentinel(conninfo=dsn, namespace=namespace, pool_size=1, connect_timeout=60,
                                 prepared_statements=True)
        self.calls = 0

    def close(self) -> None:
        self.sentinel.close()
        self.conn.close()

    # -- one call of each workload -------------------------------------------------

    def floor_fresh(self, key: str) -> None:
        self.conn.execute(FLOOR_INSERT, (key,))
        self.conn.execute(FLOOR_UPDATE, (SMALL_RESPONSE, key))

    def once_fresh(self, key: str) -> None:
        r = self.sentinel.once(key, _small, ttl_ms=3000)
        if not r.completed or r.replayed:
            raise RuntimeError(f"fresh once() of {key} did not execute: {r}")

    # -- commands ---------------------------------------------------------------------

    def timed(self, mode: str, prefix: str, start_ns: int, measure_ns: int, end_ns: int) -> Dict[str, Any]:
        """Call ``mode`` back to back from ``start_ns`` to ``end_ns``; keep the calls inside the window."""
        op = self.floor_fresh if mode == "floor_fresh" else self.once_fresh
        lat: List[int] = []
        clock = time.perf_counter_ns
        _sleep_until(start_ns)
        n_window = 0
        while True:
            key = f"{prefix}-{self.index}-{self.calls}"
            self.calls += 1
            t0 = clock()
            if t0 >= end_ns:
                break
            op(key)
            t1 = clock()
            if t0 >= measure_ns and t1 <= end_ns:
                lat.append(t1 - t0)
                n_window += 1
        return {"lat": lat, "n": n_window}

    def hot(self, mode: str, key: str, start_ns: int, fn_ms: float, poll_ms: float) -> Dict[str, Any]:
        """Race for one key; losers ask again every ``poll_ms`` until they hold the response.

        ``mode``: ``once`` (once() polled), ``wait`` (once(wait_ms=...), woken by
        NOTIFY) or ``floor`` (one claim-or-read statement on a plain table, polled).
        """
        alive: List[int] = []
        executed = False
        response: Any = None
        clock = time.perf_counter_ns
        other: Optional[str] = None
        _sleep_until(start_ns)
        # "wait": losers block in once(wait_ms=...) until LISTEN/NOTIFY (or the driver's polling) wakes them.
        wait_kw: Dict[str, Any] = {"wait_ms": int(fn_ms * 50)} if mode == "wait" else {}
        while True:
            t0 = clock()
            if mode in ("once", "wait"):
                r = self.sentinel.once(key, self._hot_fn, args=(key, fn_ms), ttl_ms=3000, pass_context=True,
                                       **wait_kw)
                t1 = clock()
                if r.execution_alive:
                    alive.append(t1 - t0)
                elif r.completed:
                    executed = not r.replayed
                    response = r.response
                    break
                else:
                    other = f"unexpected result {r}"
                    break
            else:
                row = self.conn.execute(FLOOR_HOT_CLAIM, (key, f"w{self.index}", key)).fetchone()
                assert row is not None
                won, value = bool(row[0]), row[1]
                if won:
                    self._hot_fn(None, key, fn_ms)
                    response = {"by": self.index}
                    self.conn.execute(FLOOR_HOT_DONE, (f'{{"by": {self.index}}}', key))
                    executed = True
                    break
                t1 = clock()
                if value is not None:
                    response = value
                    break
                alive.append(t1 - t0)
            time.sleep(poll_ms / 1000.0)
        done = clock()
        return {"alive": alive, "executed": executed, "response": response, "until_ns": done - start_ns,
                "other": other}

    def _hot_fn(self, ctx: Any, key: str, fn_ms: float) -> Dict[str, int]:
        fence = getattr(ctx, "fence", None)
        self.conn.execute(LEDGER_INSERT, (key, self.index, self.pid, fence))
        time.sleep(fn_ms / 1000.0)
        return {"by": self.index}


def _small() -> Dict[str, bool]:
    return {"ok": True}


def worker_main(pipe: multiprocessing.connection.Connection, index: int, dsn: str, namespace: str) -> None:
    """Entry point of a worker process: serve commands until told to stop."""
    try:
        w = _Worker(index, dsn, namespace)
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        return
    pipe.send(("ready", w.pid))
    try:
        while True:
            cmd = pipe.recv()
            name = cmd[0]
            try:
                if name == "stop":
                    break
                if name == "warm":
                    prefix = cmd[1]
                    for i in range(int(cmd[2])):
                        w.floor_fresh(f"{prefix}-f-{w.index}-{i}")
                        w.once_fresh(f"{prefix}-o-{w.index}-{i}")
                    pipe.send(("ok", None))
                elif name == "timed":
                    pipe.send(("ok", w.timed(cmd[1], cmd[2], cmd[3], cmd[4], cmd[5])))
                elif name == "hot":
                    pipe.send(("ok", w.hot(cmd[1], cmd[2], cmd[3], cmd[4], cmd[5])))
                else:
                    pipe.send(("error", f"unknown command {name!r}"))
            except Exception:
                pipe.send(("error", traceback.format_exc()))
    finally:
        w.close()


class WorkerPool:
    """``n`` worker processes, each with its own connections, driven by commands."""

    def __init__(self, n: int, dsn: str, namespace: str, *, timeout: float = 120.0) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["psycopg", "psycopg_pool", "procpool"])
        self.timeout = timeout
        self.pipes: List[multiprocessing.connection.Connection] = []
        self.procs: List[Any] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, i, dsn, namespace), daemon=True,
                            name=f"bench-worker-{i}")
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)
        for i, pipe in enumerate(self.pipes):
            status, detail = self._recv(pipe, i)
            if status != "ready":
                self.close()
                raise RuntimeError(f"worker {i} failed to start:\n{detail}")

    def __len__(self) -> int:
        return len(self.pipes)

    def _recv(self, pipe: multiprocessing.connection.Connection, i: int) -> Tuple[str, Any]:
        if not pipe.poll(self.timeout):
            raise TimeoutError(f"worker {i} did not answer within {self.timeout:.0f} s")
        msg: Tuple[str, Any] = pipe.recv()
        return msg

    def run(self, cmd: Tuple[Any, ...], n: Optional[int] = None) -> List[Any]:
        """Send ``cmd`` to the first ``n`` workers (default: all) and collect their answers."""
        pipes = self.pipes[: n or len(self.pipes)]
        for pipe in pipes:
            pipe.send(cmd)
        out: List[Any] = []
        errors: List[str] = []
        for i, pipe in enumerate(pipes):
            status, detail = self._recv(pipe, i)
            if status != "ok":
                errors.append(f"worker {i}: {detail}")
            out.append(detail)
        if errors:
            raise RuntimeError("worker command failed:\n" + "\n".join(errors))
        return out

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
