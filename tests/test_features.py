"""once() options: fingerprints, permanent errors, retention, the local cache, serializers,
the decorator, waiting for in-flight results, and transactional exactly-once."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import psycopg
import pytest

import sentinel
from sentinel import Event, KeyMismatch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make(dsn: str, namespace: str) -> Iterator[Callable[..., sentinel.Sentinel]]:
    made: List[sentinel.Sentinel] = []

    def factory(**options: Any) -> sentinel.Sentinel:
        s = sentinel.Sentinel(conninfo=options.pop("conninfo", dsn), namespace=namespace, **options)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def charge(amount: int, customer: str) -> Dict[str, Any]:
    return {"amount": amount, "customer": customer}


# -- fingerprints ----------------------------------------------------------------


def test_fingerprint_by_default_detects_key_reuse(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make()
    first = s.once("pay-1", charge, kwargs={"amount": 100, "customer": "c1"})
    again = s.once("pay-1", charge, kwargs={"customer": "c1", "amount": 100})  # same arguments, other order
    assert again.replayed and again.response == first.response
    with pytest.raises(KeyMismatch, match="pay-1") as info:
        s.once("pay-1", charge, kwargs={"amount": 200, "customer": "c1"})
    assert info.value.key == "pay-1"
    with pytest.raises(KeyMismatch):
        s.once("pay-1", lambda: None)  # other arguments (none)
    assert s.once("pay-1", charge, kwargs={"amount": 200, "customer": "c1"}, fingerprint=False).replayed


def pay_v1(amount: int) -> Dict[str, int]:
    return {"charged": amount, "by": 1}


def pay_v2(amount: int) -> Dict[str, int]:
    raise AssertionError("the work was done by pay_v1: pay_v2 must replay it")


def test_fingerprint_names_the_arguments_not_the_function(make: Callable[..., sentinel.Sentinel]) -> None:
    """A rolling deploy renames the function: the same key and arguments replay, other arguments are refused."""
    old, new = make(), make()
    first = old.once("pay-7", pay_v1, kwargs={"amount": 100})
    replay = new.once("pay-7", pay_v2, kwargs={"amount": 100})
    assert replay.replayed and replay.response == first.response == {"charged": 100, "by": 1}
    assert new.once("pay-7", lambda amount: None, kwargs={"amount": 100}).replayed  # any callable asking
    with pytest.raises(KeyMismatch, match="pay-7"):
        new.once("pay-7", pay_v2, kwargs={"amount": 999})
    # An explicit fingerprint names the work when a caller wants more than the arguments.
    old.once("pay-8", pay_v1, kwargs={"amount": 5}, fingerprint="refund:5")
    assert new.once("pay-8", pay_v2, kwargs={"amount": 5}, fingerprint="refund:5").replayed
    with pytest.raises(KeyMismatch):
        new.once("pay-8", pay_v2, kwargs={"amount": 5}, fingerprint="charge:5")


def test_a_key_recorded_by_a_worker_of_the_previous_release_replays(make: Callable[..., sentinel.Sentinel],
                                                                   conn: psycopg.Connection[Any]) -> None:
    """Keys recorded with the old automatic fingerprint (scheme v1, bound to the function's name) keep replaying."""
    s = make()
    legacy = "v1:" + hashlib.sha256(b"billing.tasks.charge\n[[],{\"amount\":100}]").hexdigest()[:40]
    row = conn.execute("select fence from sentinel.acquire_v1(%s, 'pay-9', 'old-worker', 60000, "
                       "fingerprint => %s)", (s.namespace, legacy)).fetchone()
    assert row is not None
    conn.execute("select sentinel.complete_v1(%s, 'pay-9', %s, '{\"charged\": 100}')", (s.namespace, row[0]))
    replay = s.once("pay-9", pay_v2, kwargs={"amount": 100})
    assert replay.replayed and replay.response == {"charged": 100}
    # Fingerprints the caller chose are still compared with it.
    with pytest.raises(KeyMismatch):
        s.once("pay-9", pay_v2, kwargs={"amount": 100}, fingerprint="charge:100")


def test_unserialisable_arguments_store_no_fingerprint(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make()
    s.once("obj", lambda o: 1, args=(object(),))
    assert s.once("obj", lambda o: 2, args=(object(),)).response == 1


# -- exception policy ---------------------------------------------------------------


class CardStolen(Exception):
    pass


def test_permanent_errors_are_replayed_not_rerun(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make(permanent_errors=(CardStolen,), fingerprints=False)
    calls: List[int] = []

    def stolen() -> None:
        calls.append(1)
        raise CardStolen("card reported stolen")

    with pytest.raises(CardStolen):
        s.once("perm", stolen)
    replay = s.once("perm", stolen)
    assert replay.failed and replay.replayed and calls == [1]
    assert replay.error == {"type": f"{__name__}.CardStolen", "message": "card reported stolen"}
    with pytest.raises(sentinel.PermanentFailure) as info:
        s.idempotent(key=lambda: "perm")(stolen)()
    assert info.value.result.error["message"] == "card reported stolen"

    with pytest.raises(ValueError):
        s.once("per-call", lambda: (_ for _ in ()).throw(ValueError("bad")), permanent=(ValueError,))
    assert s.once("per-call", lambda: "never").failed
    with pytest.raises(RuntimeError):
        s.once("retryable", lambda: (_ for _ in ()).throw(RuntimeError("flaky")))
    assert s.once("retryable", lambda: "ok").response == "ok"


# -- retention -----------------------------------------------------------------------


def test_retention_per_call_and_per_sentinel(make: Callable[..., sentinel.Sentinel],
                                             conn: psycopg.Connection[Any]) -> None:
    keep = make(fingerprints=False)
    short = make(retain_ms=0, fingerprints=False)
    keep.once("forever", lambda: 1)
    keep.once("per-call", lambda: 1, retain_ms=0)
    short.once("per-sentinel", lambda: 1)
    with pytest.raises(RuntimeError):
        short.once("failed", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    keep.once("long", lambda: 1, retain_ms=3_600_000)
    assert keep.purge_expired() == 3
    assert sorted(r["key"] for r in keep.list()) == ["forever", "long"]
    with pytest.raises(sentinel.InvalidTTL):
        keep.once("bad", lambda: 1, retain_ms=-1)


def test_retention_does_not_survive_a_new_claim(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make(fingerprints=False)
    with pytest.raises(RuntimeError):
        s.once("retry", lambda: (_ for _ in ()).throw(RuntimeError("x")), retain_ms=0)
    s.once("retry", lambda: "second attempt")  # no retention this time
    assert s.purge_expired() == 0 and s.once("retry", lambda: None).response == "second attempt"


# -- local cache ---------------------------------------------------------------------


def test_local_cache_serves_replays_and_expires(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make(cache_size=2, cache_ttl_ms=300, fingerprints=False)
    operator = make(fingerprints=False)
    s.once("hot", lambda: "v1")
    cached = s.once("hot", lambda: "never")
    assert cached.cached and cached.replayed and cached.response == "v1"
    operator.reconcile("hot", action="completed", response="v2", actor="op", reason="test", force=True)
    assert s.once("hot", lambda: "never").response == "v1", "within the TTL the cache still answers"
    reconciled_at = time.monotonic()
    deadline = reconciled_at + 10
    while True:
        r = s.once("hot", lambda: "never")
        if not r.cached:
            break
        assert time.monotonic() < deadline, "the cached entry never expired"
    assert r.response == "v2" and r.replayed
    # LRU of size 2: a third key evicts the least recently used one.
    s.once("a", lambda: 1)
    s.once("b", lambda: 1)
    assert s.once("hot", lambda: 0).cached is False


def pay(amount: int) -> Dict[str, int]:
    return {"charged": amount}


def test_cached_replay_refused_exactly_when_the_database_would_refuse(make: Callable[..., sentinel.Sentinel]) -> None:
    writer = make()
    cached = make(cache_size=10, cache_ttl_ms=60_000)
    writer.once("order-1", pay, kwargs={"amount": 100})  # the row's fingerprint names amount=100
    # A reader without a fingerprint is served (the database serves it too) and fills the cache.
    assert cached.once("order-1", pay, kwargs={"amount": 1}, fingerprint=False).response == {"charged": 100}
    # The same key reused for other work: the database says KeyMismatch, so the cache must too.
    with pytest.raises(sentinel.KeyMismatch):
        writer.once("order-1", pay, kwargs={"amount": 999})
    with pytest.raises(sentinel.KeyMismatch):
        cached.once("order-1", pay, kwargs={"amount": 999})
    # The same work is served from the cache.
    again = cached.once("order-1", pay, kwargs={"amount": 100})
    assert again.response == {"charged": 100} and again.replayed
    assert cached.once("order-1", pay, kwargs={"amount": 100}).cached
    # A cached None is a response like any other, and still checked.
    writer.once("order-2", lambda amount: None, kwargs={"amount": 5}, fingerprint="refund:5")
    assert cached.once("order-2", lambda: 0, fingerprint=False).response is None
    with pytest.raises(sentinel.KeyMismatch):
        cached.once("order-2", lambda: 0, fingerprint="refund:6")


def test_cache_is_off_by_default(make: Callable[..., sentinel.Sentinel]) -> None:
    s = make(fingerprints=False)
    s.once("k", lambda: 1)
    assert s.once("k", lambda: 1).cached is False


# -- serializers ---------------------------------------------------------------------


@dataclasses.dataclass
class Receipt:
    charge_id: str
    amount: int


def test_dataclasses_and_custom_serializers(make: Callable[..., sentinel.Sentinel]) -> None:
    plain = make(fingerprints=False)
    assert plain.once("dc", lambda: Receipt("ch_1", 100)).response == {"charge_id": "ch_1", "amount": 100}

    rich = make(fingerprints=False, loads=lambda v: Receipt(**v) if isinstance(v, dict) else v)
    fresh = rich.once("dc2", lambda: Receipt("ch_2", 200))
    replay = rich.once("dc2", lambda: None)
    assert fresh.response == replay.response == Receipt("ch_2", 200)

    upper = make(fingerprints=False, dumps=lambda v: '"' + str(v).upper() + '"')
    assert upper.once("custom", lambda: "shout").response == "SHOUT"


# -- decorator --------------------------------------------------------------------


def test_decorator(make: Callable[..., sentinel.Sentinel], conn: psycopg.Connection[Any]) -> None:
    s = make()
    calls: List[int] = []

    @s.idempotent(key=lambda order_id, **_: f"order-{order_id}", ttl_ms=2000)
    def place(order_id: int, amount: int) -> Dict[str, int]:
        """Place an order."""
        calls.append(order_id)
        return {"order": order_id, "amount": amount}

    assert place(7, amount=10) == {"order": 7, "amount": 10}
    assert place(7, amount=10) == {"order": 7, "amount": 10} and calls == [7]
    assert place.__name__ == "place" and place.__doc__ == "Place an order."

    ns = s.namespace
    conn.execute("select sentinel.acquire_v1(%s, 'order-8', 'someone', 60000)", (ns,))
    with pytest.raises(sentinel.ExecutionInProgress) as alive:
        place(8, amount=1)
    assert alive.value.result.execution_alive
    row = conn.execute("select fence from sentinel.acquire_v1(%s, 'order-9', 'dead', 60000)", (ns,)).fetchone()
    assert row is not None
    conn.execute("select sentinel.abandon_v1(%s, 'order-9', %s, 'crashed')", (ns, row[0]))
    with pytest.raises(sentinel.OutcomeUncertain):
        place(9, amount=1)
    assert calls == [7]


# -- waiting for an in-flight result --------------------------------------------------


def _owner_and_waiter(make: Callable[..., sentinel.Sentinel], waiter: sentinel.Sentinel, key: str,
                      outcome: str = "ok") -> Dict[str, Any]:
    """Another worker runs ``key``; ``waiter`` asks with wait_ms while it runs. Times are monotonic."""
    owner = make(fingerprints=False)
    started, release = threading.Event(), threading.Event()
    times: Dict[str, Any] = {}

    def work() -> str:
        started.set()
        assert release.wait(20)
        times["returned"] = time.monotonic()
        if outcome == "fail":
            raise RuntimeError("owner failed")
        return "owner's response"

    def run_owner() -> None:
        try:
            owner.once(key, work, ttl_ms=5000)
        except RuntimeError:
            pass
        times["recorded"] = time.monotonic()

    t = threading.Thread(target=run_owner)
    t.start()
    assert started.wait(20)
    alive_events: List[Event] = []
    waiter.add_observer(lambda e: alive_events.append(e) if e.kind == "alive" else None)
    releaser = threading.Timer(0.5, release.set)
    releaser.start()
    times["result"] = waiter.once(key, lambda: "waiter ran it", wait_ms=10_000)
    times["answered"] = time.monotonic()
    t.join(20)
    times["alive_answers"] = len(alive_events)
    return times


def test_wait_ms_with_listen_wakes_on_notify(make: Callable[..., sentinel.Sentinel]) -> None:
    # A 5 s poll interval: only the notification can wake the waiter sooner.
    waiter = make(fingerprints=False, poll_interval_ms=5000)
    times = _owner_and_waiter(make, waiter, "listen")
    result = times["result"]
    assert result.replayed and result.response == "owner's response"
    assert times["answered"] - times["returned"] < 1.0, "woken by NOTIFY, not by the 5 s poll"


def test_wait_ms_polls_without_listen(make: Callable[..., sentinel.Sentinel]) -> None:
    waiter = make(fingerprints=False, listen=False, poll_interval_ms=100)
    times = _owner_and_waiter(make, waiter, "poll")
    assert times["result"].replayed and times["result"].response == "owner's response"
    waited = times["answered"] - times["returned"]
    assert waited < 2.0
    # No busy polling: at most one acquire per poll interval while waiting (plus the first and the last).
    assert times["alive_answers"] <= (times["answered"] - times["returned"] + 0.6) / 0.1 + 3


def test_wait_ms_claims_when_the_owner_fails(make: Callable[..., sentinel.Sentinel]) -> None:
    waiter = make(fingerprints=False)
    times = _owner_and_waiter(make, waiter, "takeover", outcome="fail")
    assert times["result"].response == "waiter ran it" and times["result"].attempt == 2


def test_only_watched_keys_send_notify(dsn: str, namespace: str, conn: psycopg.Connection[Any]) -> None:
    channel = conn.execute("select sentinel.channel_v1(%s)", (namespace,)).fetchone()
    assert channel is not None
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'listen "{channel[0]}"')
        for key, watched in (("unwatched", False), ("watched", True)):
            row = conn.execute("select fence from sentinel.acquire_v1(%s, %s, 'w', 60000)", (namespace, key)).fetchone()
            assert row is not None
            if watched:
                conn.execute("select sentinel.watch_v1(%s, %s, 60000)", (namespace, key))
            conn.execute("select sentinel.complete_v2(%s, %s, %s, '1')", (namespace, key, row[0]))
        # Notifications arrive in commit order: had the unwatched key notified, it would come first.
        first = next(listener.notifies(timeout=10))
    assert first.payload == "watched"


def test_wait_ms_returns_alive_at_the_deadline(make: Callable[..., sentinel.Sentinel],
                                               conn: psycopg.Connection[Any]) -> None:
    s = make(fingerprints=False)
    conn.execute("select sentinel.acquire_v1(%s, 'busy', 'someone', 60000)", (s.namespace,))
    began = time.monotonic()
    r = s.once("busy", lambda: pytest.fail("must not run"), wait_ms=300)
    assert r.execution_alive and time.monotonic() - began >= 0.3


# -- transactional exactly-once ------------------------------------------------------


@pytest.fixture
def orders(conn: psycopg.Connection[Any], namespace: str) -> Iterator[str]:
    table = f"orders_{namespace.replace('-', '_')}"
    conn.execute(f"create table {table} (key text, pid int)")
    yield table
    conn.execute(f"drop table {table}")


def test_transaction_commits_claim_writes_and_response_together(
        make: Callable[..., sentinel.Sentinel], dsn: str, orders: str) -> None:
    s = make(fingerprints=False)
    with psycopg.connect(dsn) as c:
        with s.transaction("o1", c) as tx:
            assert tx.acquired
            c.execute(f"insert into {orders} values ('o1', 1)")
            tx.complete({"order": "o1"})
        with s.transaction("o1", c) as again:
            assert again.replayed and again.response == {"order": "o1"}
        with pytest.raises(ZeroDivisionError), s.transaction("o2", c) as tx2:
            c.execute(f"insert into {orders} values ('o2', 1)")
            raise ZeroDivisionError("the caller's own code fails")
        with pytest.raises(sentinel.SentinelError, match="did not call"), s.transaction("o3", c):
            c.execute(f"insert into {orders} values ('o3', 1)")
        rows = c.execute(f"select key from {orders} order by key").fetchall()
    assert rows == [("o1",)], "the failed blocks left nothing behind"
    assert s.inspect("o2") is None and s.inspect("o3") is None and tx2.acquired
    assert s.once("o1", lambda: None).response == {"order": "o1"}
    assert s.once("o2", lambda: "claimable again").response == "claimable again"


def _tx_worker(dsn: str, namespace: str, table: str, keys: List[str], barrier: Any, out: Any) -> None:
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, fingerprints=False) as s, \
            psycopg.connect(dsn) as c:
        barrier.wait(timeout=60)
        done = 0
        for key in keys:
            with s.transaction(key, c) as tx:
                if tx.acquired:
                    c.execute(f"insert into {table} values (%s, %s)", (key, os.getpid()))
                    tx.complete({"key": key, "pid": os.getpid()})
                    done += 1
                else:
                    assert tx.replayed, tx.outcome
        out.put(done)


def test_transaction_mode_under_contention(dsn: str, namespace: str, orders: str,
                                           conn: psycopg.Connection[Any]) -> None:
    keys = [f"k{i}" for i in range(25)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(16), ctx.Queue()
    procs = [ctx.Process(target=_tx_worker, args=(dsn, namespace, orders, keys[i % 5:] + keys[:i % 5], barrier, out))
             for i in range(16)]
    for p in procs:
        p.start()
    try:
        done = sum(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert done == len(keys)
    rows = conn.execute(f"select key, count(*) from {orders} group by key order by key").fetchall()
    assert sorted(rows) == sorted((k, 1) for k in keys)
    states = conn.execute("select state, count(*) from sentinel.executions where namespace = %s group by state",
                          (namespace,)).fetchall()
    assert states == [("completed", len(keys))]


_CRASHER = """
import os, signal, sys, psycopg, sentinel
dsn, ns, table = sys.argv[1:4]
with sentinel.Sentinel(conninfo=dsn, namespace=ns, fingerprints=False) as s, psycopg.connect(dsn) as c:
    with s.transaction("crash", c) as tx:
        assert tx.acquired
        c.execute(f"insert into {table} values ('crash', 1)")
        tx.complete({"written": True})
        print("completed, not committed", flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_transaction_killed_before_commit_leaves_nothing(make: Callable[..., sentinel.Sentinel], dsn: str,
                                                          namespace: str, orders: str,
                                                          conn: psycopg.Connection[Any]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER, dsn, namespace, orders], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "python")))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "completed, not committed"
        s = make(fingerprints=False)
        assert s.inspect("crash") is None, "uncommitted work is invisible"
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert conn.execute(f"select count(*) from {orders}").fetchone() == (0,)
    assert s.inspect("crash") is None
    with psycopg.connect(dsn) as c, s.transaction("crash", c) as tx:
        assert tx.acquired, "a clean re-run claims the key"
        c.execute(f"insert into {orders} values ('crash', 2)")
        tx.complete({"written": True})
    assert conn.execute(f"select key, pid from {orders}").fetchall() == [("crash", 2)]

