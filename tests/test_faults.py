"""Fault injection: killed, stopped and interrupted workers, lost connections, passed deadlines.

Workers are real processes (tests/workers.py) with their own connections; the
tests wait on their output lines and on the database clock, never on sleeps.
"""

from __future__ import annotations

import secrets
import signal
import threading
import uuid
from typing import Any, Dict, List, Optional, Type

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import sentinel
from workers import Worker, stop_workers, stored_row, wait_lease_lapsed, wait_until


class Recorder:
    """A function that records its calls (the tests assert it was not called) and returns a marker."""

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def __call__(self, *args: Any) -> Dict[str, str]:
        self.calls.append(args)
        return {"by": "recorder"}


class FnError(Exception):
    """The error a user function raises."""


def _inspect(conn: psycopg.Connection[Any], namespace: str, key: str) -> Dict[str, Any]:
    cur = conn.execute("select * from sentinel.inspect_v1(%s, %s)", (namespace, key))
    row = cur.fetchone()
    assert row is not None, f"no execution record for {namespace}/{key}"
    return dict(zip([d.name for d in (cur.description or [])], row))


def _started_fence(worker: Worker) -> int:
    return int(worker.expect("started ", timeout=30).split()[1])


# -- 2. SIGKILL mid-function: uncertain, never re-run ---------------------------


def test_sigkill_mid_function_is_uncertain_and_not_rerun(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "killed-mid-function"
    worker = Worker("hang", dsn, namespace, key, "1000", "60000")
    try:
        fence = _started_fence(worker)
        row = stored_row(conn, namespace, key)
        assert row is not None and (row["state"], row["fence"]) == ("executing", fence)
        worker.signal(signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop_workers([worker])
    wait_lease_lapsed(conn, namespace, key)

    fn = Recorder()
    result = client.once(key, fn)
    assert result.uncertain and not result.execution_alive and not result.completed
    assert result.fence == fence and result.attempt == 1
    assert fn.calls == [], "the function ran again after an execution of unknown outcome"
    record = _inspect(conn, namespace, key)
    assert (record["state"], record["stored_state"], record["fence"]) == ("uncertain", "uncertain", fence)
    again = client.once(key, fn)
    assert again.uncertain and fn.calls == []


# -- 4. SIGSTOP zombie: uncertain meanwhile, late completion accepted -----------


def test_sigstop_zombie_completes_late_with_current_fence(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "zombie"
    worker = Worker("zombie", dsn, namespace, key, "500", "60000")
    fn = Recorder()
    try:
        fence = _started_fence(worker)
        worker.signal(signal.SIGSTOP)
        wait_lease_lapsed(conn, namespace, key)

        second = client.once(key, fn)
        assert second.uncertain and second.fence == fence
        assert _inspect(conn, namespace, key)["stored_state"] == "uncertain"

        worker.signal(signal.SIGCONT)
        worker.send("go")
        late = worker.expect_json("result ", timeout=30)
        assert worker.wait(timeout=30) == 0, worker.describe()
    finally:
        stop_workers([worker])
    assert late["state"] == "completed" and late["persisted"] is True, late
    assert late["response"] == {"by": "zombie"} and late["fence"] == fence and late["replayed"] is False

    third = client.once(key, fn)
    assert third.completed and third.replayed
    assert third.response == {"by": "zombie"} and third.fence == fence
    assert fn.calls == []
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["fence"], record["attempt"]) == ("completed", fence, 1)


# -- 6. the hard deadline is never passed ---------------------------------------


def test_hard_deadline_is_never_passed(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "hard-deadline"
    started = threading.Event()
    lost = threading.Event()
    may_return = threading.Event()
    inside: Dict[str, Any] = {}

    def fn(ctx: sentinel.ExecutionContext) -> Dict[str, bool]:
        inside["fence"] = ctx.fence
        started.set()
        inside["lost"] = ctx.wait_lost(timeout=10)
        lost.set()
        inside["released"] = may_return.wait(timeout=30)
        return {"late": True}

    samples: List[Dict[str, Any]] = []
    result: Optional[sentinel.Result] = None
    errors: List[BaseException] = []
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as worker:

        def run() -> None:
            nonlocal result
            try:
                result = worker.once(key, fn, ttl_ms=300, hard_ttl_ms=900, pass_context=True)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            assert started.wait(15), "the function did not start"

            def sample() -> bool:
                done = lost.is_set()
                samples.append(_inspect(conn, namespace, key))
                return done

            wait_until(sample, 20, "the function to see its lease lost (hard deadline)")
            assert inside["lost"] is True
            record = samples[-1]
            assert record["state"] == "uncertain", record
            assert record["now"] >= record["hard_expires_at"], "the lease was lost before the hard deadline"

            other = client.once(key, Recorder())
            assert other.uncertain and other.fence == inside["fence"]
        finally:
            may_return.set()
            thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert result is not None
    for s in samples:
        assert s["lease_expires_at"] <= s["hard_expires_at"], s
    assert len(samples) >= 3
    # The lease was renewed (beyond the first ttl) up to, and not beyond, the ceiling.
    assert samples[-1]["lease_expires_at"] == samples[-1]["hard_expires_at"]
    assert result.completed and result.persisted and not result.replayed
    assert result.response == {"late": True} and result.fence == inside["fence"]
    replay = client.once(key, Recorder())
    assert replay.replayed and replay.response == {"late": True} and replay.fence == inside["fence"]


# -- 7. KeyboardInterrupt / SystemExit mark the key uncertain at once -----------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupt_marks_uncertain_at_once(
    client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any], interrupt: Type[BaseException]
) -> None:
    key = f"interrupted-{interrupt.__name__}"
    raised = interrupt()

    def fn() -> None:
        raise raised

    with pytest.raises(interrupt) as info:
        client.once(key, fn, ttl_ms=60000)
    assert info.value is raised
    record = _inspect(conn, namespace, key)
    assert record["stored_state"] == "uncertain"
    assert interrupt.__name__ in (record["uncertain_reason"] or ""), record["uncertain_reason"]
    assert record["lease_expires_at"] > record["now"], "marked uncertain only because the lease lapsed"
    again = Recorder()
    result = client.once(key, again)
    assert result.uncertain and again.calls == []


# -- 8. exceptions are recorded as failed, re-raised unchanged, retried ---------


def test_exception_recorded_reraised_and_retried(
    client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "raises-then-succeeds"
    token = secrets.token_hex(6)
    error = FnError(f"card declined {token}")
    fences: List[int] = []

    def failing(ctx: sentinel.ExecutionContext) -> None:
        fences.append(ctx.fence)
        raise error

    with pytest.raises(FnError) as info:
        client.once(key, failing, pass_context=True)
    assert info.value is error
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["fence"], record["attempt"]) == ("failed", fences[0], 1)
    assert record["error"]["type"].endswith("FnError") and token in record["error"]["message"]

    def succeeding(ctx: sentinel.ExecutionContext) -> Dict[str, int]:
        fences.append(ctx.fence)
        return {"attempt": ctx.attempt}

    result = client.once(key, succeeding, pass_context=True)
    assert result.completed and not result.replayed
    assert result.attempt == 2 and result.response == {"attempt": 2}
    assert len(fences) == 2 and fences[1] > fences[0] and result.fence == fences[1]


# -- 9. the database drops during the function ----------------------------------


def _terminate(conn: psycopg.Connection[Any], where: str, param: Any) -> List[int]:
    """Terminate backends matching ``where`` (waiting up to 5 s for each); their pids."""
    rows = conn.execute(
        "select pid, pg_terminate_backend(pid, 5000) from pg_stat_activity"
        f" where datname = current_database() and pid <> pg_backend_pid() and {where}",
        (param,),
    ).fetchall()
    assert all(ok for _, ok in rows), rows
    return [pid for pid, _ in rows]


def test_connection_lost_during_fn_is_recorded_on_a_fresh_one(
    dsn: str, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "connection-dropped"
    app = f"sentinel-test-{uuid.uuid4().hex[:12]}"
    terminated: List[int] = []
    token = secrets.token_hex(6)

    def fn() -> Dict[str, str]:
        terminated.extend(_terminate(conn, "application_name = %s", app))
        return {"token": token}

    with sentinel.Sentinel(conninfo=make_conninfo(dsn, application_name=app), namespace=namespace,
                           fingerprints=False) as s:
        result = s.once(key, fn, ttl_ms=5000)
        assert terminated, "no connection of the client was found to terminate"
        assert result.completed and result.persisted and not result.replayed
        assert result.response == {"token": token}
        replay = s.once(key, Recorder())
    assert replay.replayed and replay.response == {"token": token} and replay.fence == result.fence
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["response"]) == ("completed", {"token": token})


class FlakyConnections:
    """A ``get_conn`` whose database becomes unreachable after it made its first connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.made: List[psycopg.Connection[Any]] = []
        self.reachable = True
        self.refused: List[str] = []  # names of the threads that were refused a connection

    def __call__(self) -> psycopg.Connection[Any]:
        if not self.reachable:
            self.refused.append(threading.current_thread().name)
            raise psycopg.OperationalError("test: the database is unreachable")
        c = psycopg.connect(self.dsn)
        self.made.append(c)
        self.reachable = False
        return c


def test_database_unreachable_past_hard_deadline(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "database-gone"
    flaky = FlakyConnections(dsn)
    token = secrets.token_hex(6)

    def fn() -> Dict[str, str]:
        assert len(flaky.made) == 1
        _terminate(conn, "pid = %s", flaky.made[0].info.backend_pid)
        return {"token": token}

    with sentinel.Sentinel(get_conn=flaky, namespace=namespace, fingerprints=False) as s:
        result = s.once(key, fn, ttl_ms=300, hard_ttl_ms=1000)
        assert result.persisted is False and not result.completed
        assert result.response == {"token": token} and not result.replayed and result.fence is not None
        caller = threading.current_thread().name
        assert flaky.refused.count(caller) >= 2, f"the recording was not retried: {flaky.refused}"
        past_hard = conn.execute("select clock_timestamp() >= %s", (result.hard_expires_at,)).fetchone()
        assert past_hard == (True,), "once() gave up before the hard deadline"
        assert _inspect(conn, namespace, key)["stored_state"] == "executing"

        flaky.reachable = True  # the database is back
        wait_lease_lapsed(conn, namespace, key)
        fn_again = Recorder()
        other = client.once(key, fn_again)
        assert other.uncertain and other.fence == result.fence
        same_client = s.once(key, fn_again)
        assert same_client.uncertain and same_client.fence == result.fence
        assert fn_again.calls == []
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["fence"], record["response"]) == ("uncertain", result.fence, None)


# -- 7b. a real SIGINT to a worker process mid-function -------------------------


def test_sigint_to_worker_marks_uncertain_at_once(
    dsn: str, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    key = "sigint-mid-function"
    worker = Worker("hang", dsn, namespace, key, "60000", "60000")
    try:
        fence = _started_fence(worker)
        worker.signal(signal.SIGINT)
        code = worker.wait(timeout=30)
        assert code != 0 and "KeyboardInterrupt" in worker.describe(), worker.describe()
    finally:
        stop_workers([worker])
    record = _inspect(conn, namespace, key)
    assert (record["stored_state"], record["fence"]) == ("uncertain", fence)
    assert "KeyboardInterrupt" in (record["uncertain_reason"] or ""), record["uncertain_reason"]
    assert record["lease_expires_at"] > record["now"], "marked uncertain only because the lease lapsed"


# -- 11b. executions that occupy every pooled connection stay alive ------------


def test_leases_stay_alive_when_executions_fill_the_pool(
    dsn: str, client: sentinel.Sentinel, namespace: str, conn: psycopg.Connection[Any]
) -> None:
    """As many concurrent once() calls as the private pool has connections (10 by default).

    Each call holds a pooled connection while its function runs; the heartbeat
    must still renew every lease, so other callers see the executions alive.
    """
    ttl = 300
    n = 10
    keys = [f"full-pool-{i}" for i in range(n)]
    release = threading.Event()
    running: Dict[str, int] = {}
    lock = threading.Lock()
    results: Dict[str, Any] = {}

    def fn(ctx: sentinel.ExecutionContext) -> Dict[str, bool]:
        with lock:
            running[ctx.key] = ctx.fence
        return {"released": release.wait(timeout=30)}

    def run(s: sentinel.Sentinel, key: str) -> None:
        try:
            results[key] = s.once(key, fn, ttl_ms=ttl, hard_ttl_ms=60000, pass_context=True)
        except BaseException as exc:
            results[key] = exc

    observed: List[sentinel.Result] = []
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as s:
        threads = [threading.Thread(target=run, args=(s, key), daemon=True) for key in keys]
        try:
            for t in threads:
                t.start()
            wait_until(lambda: len(running) == n, 30, f"all {n} functions to be running")

            def three_ttl_passed() -> bool:
                past = conn.execute(
                    "select bool_and(clock_timestamp() >= claimed_at + 3 * ttl_ms * interval '1 millisecond')"
                    " from sentinel.executions where namespace = %s",
                    (namespace,),
                ).fetchone()
                observed.extend(client.once(key, Recorder()) for key in keys)
                return bool(past and past[0])

            wait_until(three_ttl_passed, 30, f"{3 * ttl} ms of database time since every claim", interval=0.05)
        finally:
            release.set()
            for t in threads:
                t.join(30)
    not_alive = sorted({(r.key, r.state) for r in observed if not r.execution_alive})
    assert not not_alive, f"live executions were reported not alive to other callers: {not_alive}"
    for key in keys:
        result = results[key]
        assert isinstance(result, sentinel.Result) and result.completed, result
