"""Batched heartbeats: one process keeps thousands of leases alive, and a locked key costs the others nothing.

The heartbeat thread (sync) and task (asyncio) renew every due lease of a
namespace with one ``heartbeat_many_v1`` statement; a row another session
holds locked is skipped by it and renewed alone with ``heartbeat_v2``.
sqltests/18-batched-heartbeats.sql checks the SQL function's answers case by
case; here real executions run in one process, each on its own thread or
task, while a second connection watches their rows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import sentinel

TTL = 1000


class Watch:
    """Samples the leases of a namespace from a connection of its own, every 100 ms, until stopped."""

    def __init__(self, dsn: str, namespace: str, exclude: Optional[str] = None) -> None:
        self.namespace, self.exclude = namespace, exclude
        self.worst_margin_ms = float("inf")  # the least time any lease had left when sampled
        self.not_executing = 0  # the most rows seen in another state than executing
        self.samples = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def leases(self) -> Dict[str, Any]:
        rows = self._conn.execute("select key, lease_expires_at from sentinel.executions where namespace = %s",
                                  (self.namespace,)).fetchall()
        return {k: at for k, at in rows if k != self.exclude}

    def _sample(self) -> None:
        row = self._conn.execute(
            "select count(*) filter (where state <> 'executing'),"
            " extract(epoch from min(lease_expires_at - clock_timestamp())) * 1000"
            " from sentinel.executions where namespace = %s and key is distinct from %s",
            (self.namespace, self.exclude)).fetchone()
        assert row is not None
        self.samples += 1
        self.not_executing = max(self.not_executing, int(row[0]))
        if row[1] is not None:
            self.worst_margin_ms = min(self.worst_margin_ms, float(row[1]))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def during(self, seconds: float) -> None:
        """Sample for ``seconds`` (in a thread, so an event loop in this thread keeps running meanwhile)."""
        self._thread.start()
        time.sleep(seconds)  # the observation window itself; the samples are the synchronisation
        self._stop.set()
        self._thread.join(10)
        self._sample()

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def watcher(dsn: str) -> Iterator[Callable[..., Watch]]:
    made: List[Watch] = []

    def make(namespace: str, exclude: Optional[str] = None) -> Watch:
        made.append(Watch(dsn, namespace, exclude))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _hold_sync(dsn: str, namespace: str, n: int, ttl: int, while_held: Callable[[], None],
               wait_lost: Optional[int] = None) -> List[Any]:
    """Run ``n`` executions in one process (a thread each), call ``while_held()`` once all run, then end them."""
    all_started, release = threading.Event(), threading.Event()
    lock = threading.Lock()
    started = [0]
    results: List[Any] = [None] * n

    def fn(ctx: sentinel.ExecutionContext, i: int) -> Dict[str, Any]:
        with lock:
            started[0] += 1
            if started[0] == n:
                all_started.set()
        release.wait(120)
        if i == wait_lost:
            ctx.wait_lost(15)
        return {"i": i, "lost": ctx.lease_lost}

    # A pool of 8: the calls wait for a connection, instead of opening one each at once.
    with ConnectionPool(dsn, min_size=1, max_size=8, timeout=120, open=True) as pool, \
            sentinel.Sentinel(pool=pool, namespace=namespace, fingerprints=False) as s:
        def run(i: int) -> None:
            try:
                results[i] = s.once(f"k-{i}", fn, args=(i,), ttl_ms=ttl, hard_ttl_ms=600_000, pass_context=True)
            except Exception as exc:
                results[i] = exc

        old = threading.stack_size(256 * 1024)
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        threading.stack_size(old)
        for t in threads:
            t.start()
        try:
            assert all_started.wait(120), f"only {started[0]} of {n} executions started"
            while_held()
        finally:
            release.set()
            for t in threads:
                t.join(120)
    return results


def _hold_async(dsn: str, namespace: str, n: int, ttl: int, while_held: Callable[[], None],
                wait_lost: Optional[int] = None) -> List[Any]:
    """``_hold_sync`` with AsyncSentinel: a task each; ``while_held()`` runs in a thread beside the loop."""

    async def main() -> List[Any]:
        all_started, release = asyncio.Event(), asyncio.Event()
        started = [0]

        async def fn(ctx: Any, i: int) -> Dict[str, Any]:
            started[0] += 1
            if started[0] == n:
                all_started.set()
            await release.wait()
            if i == wait_lost:
                await ctx.wait_lost_async(15)
            return {"i": i, "lost": ctx.lease_lost}

        async with sentinel.AsyncSentinel(conninfo=dsn, namespace=namespace, pool_size=8, fingerprints=False,
                                          connect_timeout=60) as s:
            calls = [asyncio.ensure_future(s.once(f"k-{i}", fn, args=(i,), ttl_ms=ttl, hard_ttl_ms=600_000,
                                                  pass_context=True)) for i in range(n)]
            try:
                await asyncio.wait_for(all_started.wait(), 120)
                await asyncio.to_thread(while_held)
            finally:
                release.set()
            return list(await asyncio.gather(*calls, return_exceptions=True))

    return asyncio.run(main())


HOLD = {"sync": _hold_sync, "async": _hold_async}


def _lost(results: List[Any]) -> List[str]:
    return [repr(r)[:200] for r in results
            if isinstance(r, Exception) or r is None or not r.completed or r.replayed or r.response["lost"]]


def _calls(conn: psycopg.Connection[Any], app: str) -> Dict[str, int]:
    """Calls of the heartbeat functions, counted by the sessions of ``app`` (track_functions) once all ended."""
    deadline = time.monotonic() + 30
    while conn.execute("select count(*) from pg_stat_activity where application_name = %s",
                       (app,)).fetchone() != (0,):  # a backend flushes its counts as it ends
        assert time.monotonic() < deadline, "the client's sessions did not end"
        time.sleep(0.05)
    conn.execute("select pg_stat_clear_snapshot()")
    rows = conn.execute("select funcname, calls from pg_stat_user_functions where schemaname = 'sentinel'"
                        " and funcname in ('heartbeat_many_v1', 'heartbeat_v2')").fetchall()
    return {str(name): int(calls) for name, calls in rows}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_one_process_keeps_2000_leases_alive_with_a_statement_per_batch(
        dsn: str, namespace: str, watcher: Callable[..., Watch], conn: psycopg.Connection[Any], kind: str) -> None:
    """2,000 executions at ttl_ms=1000 in one process, for four lease periods: every lease advances, none
    lapses, none goes uncertain, and far fewer heartbeat statements ran than leases were renewed."""
    n, window = 2000, 4.0
    app = f"hb-{uuid.uuid4().hex[:12]}"
    # The client's sessions count their function calls (track_functions) under a name of their own.
    client_dsn = psycopg.conninfo.make_conninfo(dsn, application_name=app, options="-c track_functions=pl")
    watch = watcher(namespace)
    seen: Dict[str, Any] = {}
    before = _calls(conn, app)

    def while_held() -> None:
        seen["before"] = watch.leases()
        watch.during(window)
        seen["after"] = watch.leases()

    results = HOLD[kind](client_dsn, namespace, n, TTL, while_held)
    assert len(seen["before"]) == n and set(seen["after"]) == set(seen["before"])
    advanced = sorted((seen["after"][k] - seen["before"][k]).total_seconds() for k in seen["before"])
    # Over a window of four lease periods each lease was renewed throughout: its end moved by about the
    # window (a lease renewed less often than once per ttl would have lapsed, which the samples show).
    assert advanced[0] >= window - TTL / 1000.0, f"a lease fell behind: advanced only {advanced[0]:.2f} s"
    assert watch.samples >= 10
    assert watch.not_executing == 0, "an execution went uncertain while its process kept it alive"
    assert watch.worst_margin_ms > 0, f"a lease lapsed ({watch.worst_margin_ms:.0f} ms left at worst)"
    assert _lost(results) == [], _lost(results)[:5]
    calls = {name: count - before.get(name, 0) for name, count in _calls(conn, app).items()}
    # Each lease was renewed at least (window - ttl) / (ttl / 3) = 9 times: one statement per lease and
    # renewal would be 9 * n statements at least.
    assert 0 < calls.get("heartbeat_many_v1", 0) < n, calls
    assert calls.get("heartbeat_v2", 0) == 0, calls


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_key_locked_by_another_session_does_not_cost_the_others_their_leases(
        dsn: str, namespace: str, watcher: Callable[..., Watch], kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A session holds one execution's row locked for three lease periods: the batch skips it, and the other
    executions of the process keep their leases; the locked one is renewed alone (heartbeat_v2, which gives
    up after its lock timeout), lapses, and is reported lost once the lock is gone."""
    caplog.set_level(logging.WARNING, logger="sentinel")
    n, ttl, locked = 300, 600, "k-0"
    watch = watcher(namespace, exclude=locked)
    seen: Dict[str, Any] = {}

    def while_held() -> None:
        with psycopg.connect(dsn) as operator:  # a transaction left open on the row
            operator.execute("select 1 from sentinel.executions where namespace = %s and key = %s for update",
                             (namespace, locked))
            seen["locked_lease"] = operator.execute(
                "select lease_expires_at from sentinel.executions where namespace = %s and key = %s",
                (namespace, locked)).fetchone()
            seen["before"] = watch.leases()
            watch.during(3 * ttl / 1000.0)
            seen["after"] = watch.leases()
            seen["locked_after"] = watch._conn.execute(
                "select lease_expires_at, state from sentinel.executions where namespace = %s and key = %s",
                (namespace, locked)).fetchone()
            operator.rollback()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # once free, the next renewal meets the lapsed lease
            row = watch._conn.execute("select state, uncertain_reason from sentinel.executions"
                                      " where namespace = %s and key = %s", (namespace, locked)).fetchone()
            if row is not None and row[0] == "uncertain":
                seen["marked"] = tuple(row)
                break
            time.sleep(0.05)

    results = HOLD[kind](dsn, namespace, n, ttl, while_held, wait_lost=0)
    assert seen["locked_after"] == (seen["locked_lease"][0], "executing"), "the locked row was changed"
    assert seen.get("marked") == ("uncertain", "lease expired"), seen.get("marked")
    advanced = min((seen["after"][k] - seen["before"][k]).total_seconds() for k in seen["before"])
    assert advanced >= 3 * ttl / 1000.0 - ttl / 1000.0, f"another lease fell behind: {advanced:.2f} s"
    assert watch.not_executing == 0 and watch.worst_margin_ms > 0, (watch.not_executing, watch.worst_margin_ms)
    assert results[0].response["lost"] is True, results[0]
    assert _lost(results[1:]) == [], _lost(results[1:])[:5]
    alone = [r.getMessage() for r in caplog.records if f"heartbeat for {namespace}/{locked} failed" in r.getMessage()]
    assert alone and "lock timeout" in alone[0], "the locked key was not renewed alone with heartbeat_v2"
    batch_failures = [r.getMessage() for r in caplog.records if "lease(s) of" in r.getMessage()]
    assert batch_failures == [], batch_failures


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_role_that_may_not_batch_renews_each_lease_alone(
        dsn: str, namespace: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Without EXECUTE on heartbeat_many_v1 (granted by hand, or a schema before version 13) the heartbeat
    says so once and renews each lease with heartbeat_v2: the executions keep their leases."""
    caplog.set_level(logging.WARNING, logger="sentinel")
    role, password = f"hb_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute("select sentinel.grant_v2(%s, %s)", (role, namespace))
        admin.execute(f"revoke execute on function sentinel.heartbeat_many_v1(text, text[], bigint[], text[]) "
                      f"from {role}")
    role_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
    ttl = 600
    try:
        seen: Dict[str, Any] = {}

        def while_held() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                q = "select min(lease_expires_at), count(*) filter (where state <> 'executing')" \
                    " from sentinel.executions where namespace = %s"
                seen["before"] = c.execute(q, (namespace,)).fetchone()
                time.sleep(3 * ttl / 1000.0)  # the window observed: three lease periods
                seen["after"] = c.execute(q, (namespace,)).fetchone()

        results = HOLD[kind](role_dsn, namespace, 5, ttl, while_held)
        assert _lost(results) == [], _lost(results)
        assert seen["after"][1] == 0
        assert (seen["after"][0] - seen["before"][0]).total_seconds() >= 2 * ttl / 1000.0, seen
        said = [r.getMessage() for r in caplog.records if "cannot renew leases in batches" in r.getMessage()]
        assert len(said) == 1 and "heartbeat_many_v1" in said[0], said
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("delete from sentinel.rights where role = to_regrole(%s)", (role,))
            admin.execute(f"drop owned by {role}")
            admin.execute(f"drop role {role}")


def test_roles_that_could_call_heartbeat_v2_may_call_heartbeat_many_v1_after_the_upgrade(
        empty_db: Callable[[], str]) -> None:
    """Migration 0013 grants heartbeat_many_v1 to every role that had heartbeat_v2; grant_v2 grants it after."""
    db = empty_db()
    suffix = uuid.uuid4().hex[:8]
    app, legacy, nobody, later = (f"{p}_{suffix}" for p in ("app", "legacy", "nobody", "later"))
    fn = "sentinel.heartbeat_many_v1(text, text[], bigint[], text[])"
    with psycopg.connect(db, autocommit=True) as conn:
        sentinel.init_db(conn, to=12)
        for role in (app, legacy, nobody, later):
            conn.execute(f"create role {role}")
        conn.execute("select sentinel.grant_v2(%s, 'payments')", (app,))
        conn.execute("select sentinel.grant_v1(%s)", (legacy,))
        assert conn.execute("select to_regprocedure(%s)", (fn,)).fetchone() == (None,)
        assert sentinel.init_db(conn, to=13) == ["0013_pre_batched_heartbeats"]
        conn.execute("select sentinel.grant_v2(%s, 'payments')", (later,))
        may = {role: conn.execute("select has_function_privilege(%s, %s, 'execute')", (role, fn)).fetchone()
               for role in (app, legacy, nobody, later)}
        assert conn.execute("select sentinel.schema_version()").fetchone() == (13,)
        for role in (app, legacy, nobody, later):
            conn.execute("delete from sentinel.rights where role = to_regrole(%s)", (role,))
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")
    assert may == {app: (True,), legacy: (True,), nobody: (False,), later: (True,)}, may
