"""Concurrency: real processes and threads, each with its own connections, racing on the same keys.

Every wait is on a real condition (a line from a worker, a row, the database
clock) with a deadline; time-dependent behaviour uses short real TTLs and asks
the database when a lease has lapsed.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any, Dict, List, Optional

import psycopg
import pytest
from psycopg import sql

import sentinel
from workers import Worker, db_elapsed_ms, stop_workers, stored_row, wait_lease_lapsed, wait_until

N_PROCESSES = 16
N_KEYS = 30


def _never(*args: Any) -> None:
    raise AssertionError("this function must not run: the key belongs to another execution")


class Runner:
    """Runs ``sentinel.once(...)`` on a thread; keeps its result or exception."""

    def __init__(self, s: sentinel.Sentinel, key: str, fn: Any, **kwargs: Any) -> None:
        self.result: Optional[sentinel.Result] = None
        self.error: Optional[BaseException] = None

        def run() -> None:
            try:
                self.result = s.once(key, fn, **kwargs)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"once-{key}", daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30.0) -> sentinel.Result:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"once() on {self.thread.name} did not return within {timeout}s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# -- 1. at most once under real contention -------------------------------------


def test_at_most_once_under_contention(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    conn.execute(sql.SQL("create table {} (key text not null, pid integer not null)").format(sql.Identifier(table)))
    keys = [f"order-{i:02d}" for i in range(N_KEYS)]
    workers: List[Worker] = []
    try:
        workers = [Worker("race", dsn, namespace, table, str(seed), *keys) for seed in range(N_PROCESSES)]
        for w in workers:  # the barrier: every worker is connected and waiting
            w.expect("ready", timeout=60)
        for w in workers:
            w.send("go")
        reports = [w.expect_json("result ", timeout=60) for w in workers]
        for w in workers:
            assert w.wait(timeout=30) == 0, w.describe()
    finally:
        stop_workers(workers)

    try:
        ledger = conn.execute(
            sql.SQL("select key, count(*), min(pid) from {} group by key").format(sql.Identifier(table))
        ).fetchall()
    finally:
        conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))
    runs = {key: count for key, count, _ in ledger}
    assert runs == {key: 1 for key in keys}, f"the function ran more or less than once for some key: {runs}"
    runner_pid = {key: pid for key, _, pid in ledger}

    stored = {
        key: (state, attempt, fence, response)
        for key, state, attempt, fence, response in conn.execute(
            "select key, state, attempt, fence, response from sentinel.executions where namespace = %s",
            (namespace,),
        ).fetchall()
    }
    assert sorted(stored) == sorted(keys)
    for key, (state, attempt, _fence, response) in stored.items():
        assert (state, attempt) == ("completed", 1), f"{key}: {state} attempt {attempt}"
        assert response["key"] == key and response["pid"] == runner_pid[key], (key, response, runner_pid[key])

    pids = {report["pid"] for report in reports}
    assert len(pids) == N_PROCESSES
    fresh: Counter[str] = Counter()
    for report in reports:
        assert sorted(report["seen"]) == sorted(keys)
        for key, seen in report["seen"].items():
            _state, _attempt, fence, response = stored[key]
            assert seen["state"] == "completed", f"pid {report['pid']} got {seen} for {key}"
            assert seen["response"] == response, f"pid {report['pid']} saw another response for {key}"
            assert seen["fence"] == fence and seen["attempt"] == 1 and seen["persisted"]
            if not seen["replayed"]:
                fresh[key] += 1
                assert report["pid"] == runner_pid[key], f"{key}: a fresh result in a process that did not run it"
    assert fresh == Counter({key: 1 for key in keys}), f"fresh (non-replayed) results per key: {fresh}"


# -- 3. a claim that never started is taken over after its lease ---------------


def test_claim_never_started_is_taken_over(
    client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "ghost-claim"
    ghost = conn.execute(
        "select outcome, fence, state, attempt from sentinel.acquire_v1(%s, %s, 'ghost', 500, 500, false)",
        (namespace, key),
    ).fetchone()
    assert ghost is not None and ghost[0] == "acquired" and ghost[2] == "claimed" and ghost[3] == 1, ghost
    ghost_fence = ghost[1]
    wait_lease_lapsed(conn, namespace, key)

    calls: List[int] = []

    def fn(ctx: sentinel.ExecutionContext) -> Dict[str, int]:
        calls.append(ctx.fence)
        return {"fence": ctx.fence}

    result = client.once(key, fn, ttl_ms=3000, pass_context=True)
    assert result.completed and not result.replayed and result.persisted
    assert result.fence is not None and result.fence > ghost_fence
    assert result.attempt == 2
    assert calls == [result.fence] and result.response == {"fence": result.fence}
    row = stored_row(conn, namespace, key)
    assert row is not None
    assert (row["state"], row["fence"], row["attempt"]) == ("completed", result.fence, 2)
    assert row["owner"] == client.owner
    # The ghost is fenced out: it may no longer begin its claim.
    began = conn.execute("select sentinel.begin_v1(%s, %s, %s)", (namespace, key, ghost_fence)).fetchone()
    assert began == (False,)


# -- 5. heartbeats keep a long function alive ----------------------------------


def test_heartbeats_keep_long_function_alive(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "long-running"
    ttl = 400
    started = threading.Event()
    release = threading.Event()
    seen_in_fn: Dict[str, Any] = {}

    def fn(ctx: sentinel.ExecutionContext) -> Dict[str, str]:
        started.set()
        seen_in_fn["released"] = release.wait(timeout=30)  # the work: until the observer has seen 5 ttl pass
        seen_in_fn["lease_lost"] = ctx.lease_lost
        return {"done": "yes"}

    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as worker:
        runner = Runner(worker, key, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True)
        try:
            assert started.wait(15), "the function did not start"
            observations: List[sentinel.Result] = []
            deadline_ms = 5 * ttl

            def observe() -> bool:
                past = db_elapsed_ms(conn, namespace, key) >= deadline_ms
                observations.append(client.once(key, _never))  # a caller with its own connections
                return past  # the last observation was made after 5 ttl, by the database clock

            wait_until(observe, 30, f"{deadline_ms} ms of database time since the claim", interval=0.05)
        finally:
            release.set()
        result = runner.join()

    bad = [r for r in observations if not r.execution_alive or r.uncertain]
    assert not bad, f"another caller saw the live execution as not alive: {bad[:3]}"
    assert len(observations) >= 5
    assert seen_in_fn == {"released": True, "lease_lost": False}
    assert result.completed and not result.replayed and result.persisted
    assert result.response == {"done": "yes"}
    row = stored_row(conn, namespace, key)
    assert row is not None and row["state"] == "completed" and row["attempt"] == 1


# -- 10. the claim is committed before the function runs -----------------------


@pytest.mark.parametrize("source", ["conninfo", "get_conn"])
def test_claim_committed_before_fn_runs(
    dsn: str, namespace: str, conn: psycopg.Connection[Any], source: str
) -> None:
    key = f"visible-{source}"
    s = (
        sentinel.Sentinel(conninfo=dsn, namespace=namespace)
        if source == "conninfo"
        else sentinel.Sentinel(get_conn=lambda: psycopg.connect(dsn), namespace=namespace)  # not autocommit
    )
    seen: List[Any] = []

    def fn(ctx: sentinel.ExecutionContext) -> int:
        # Another session: sees only committed rows.
        with psycopg.connect(dsn, autocommit=True) as other:
            seen.append(other.execute(
                "select state, fence, owner from sentinel.executions where namespace = %s and key = %s",
                (namespace, key),
            ).fetchone())
        seen.append(conn.execute(
            "select state from sentinel.inspect_v1(%s, %s)", (namespace, key)
        ).fetchone())
        return ctx.fence

    try:
        result = s.once(key, fn, pass_context=True)
    finally:
        s.close()
    assert result.completed and result.response == result.fence
    assert seen == [("executing", result.fence, s.owner), ("executing",)]


# -- 11. one heartbeat thread for many executions ------------------------------


def test_one_heartbeat_thread_for_many_executions(
    dsn: str, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    ttl = 300
    n = 8
    keys = [f"parallel-{i}" for i in range(n)]
    before = {t for t in threading.enumerate() if t.name == "sentinel-heartbeat"}
    release = threading.Event()
    running: Dict[str, int] = {}
    lock = threading.Lock()

    def fn(ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
        with lock:
            running[ctx.key] = ctx.fence
        released = release.wait(timeout=30)
        return {"key": ctx.key, "released": released, "lost": ctx.lease_lost}

    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        runners: List[Runner] = []
        try:
            runners = [Runner(s, key, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True) for key in keys]
            wait_until(lambda: len(running) == n, 30, f"all {n} functions to be running")

            def all_alive_after_3_ttl() -> bool:
                rows = conn.execute(
                    "select count(*), bool_and(e.state = 'executing'),"
                    " bool_and(e.now >= e.claimed_at + 3 * e.ttl_ms * interval '1 millisecond')"
                    " from unnest(%s::text[]) k, lateral sentinel.inspect_v1(%s, k) e",
                    (keys, namespace),
                ).fetchone()
                assert rows is not None
                if rows[0] != n or rows[1] is not True:
                    lost = conn.execute(
                        "select key, state, uncertain_reason from sentinel.executions where namespace = %s"
                        " and not (lease_expires_at > clock_timestamp() and state = 'executing')",
                        (namespace,),
                    ).fetchall()
                    raise AssertionError(f"a running execution is not alive (heartbeats missed): {lost}")
                return bool(rows[2])

            wait_until(all_alive_after_3_ttl, 30, f"{3 * ttl} ms of database time with every lease alive")
            heartbeats = [
                t for t in threading.enumerate() if t.name == "sentinel-heartbeat" and t not in before
            ]
            assert len(heartbeats) == 1, f"{len(heartbeats)} heartbeat threads for {n} executions"
        finally:
            release.set()
        results = [r.join() for r in runners]

    for key, result in zip(keys, results):
        assert result.completed and not result.replayed and result.persisted
        assert result.response == {"key": key, "released": True, "lost": False}
        assert result.fence == running[key]
    assert len({r.fence for r in results}) == n
    states = conn.execute(
        "select state, count(*) from sentinel.executions where namespace = %s group by state", (namespace,)
    ).fetchall()
    assert states == [("completed", n)]
