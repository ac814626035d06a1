"""Cross-language: Python and Node workers race on the same keys through the SQL protocol.

Every worker logs in as one role granted only the race's namespace
(``sentinel.grant_v2``), so both clients run on the token calls of protocol
version 3 alone.

Needs Node.js 20 and the example's dependencies (``npm ci --prefix examples/node``);
without them the test FAILS with the command to run, it never skips. It runs in
a CI step of its own, not in ``make test``.

Run as a script, this file is the Python worker::

    python tests/test_cross_language.py race DSN NAMESPACE LEDGER_TABLE BARRIER_LOCK KEY...

It mirrors ``node examples/node/worker.js race ...``: connect, wait at the start
barrier (``pg_advisory_lock_shared(BARRIER_LOCK)``, held exclusively by the test
until every worker waits on it), then ``once()`` every key in an order shuffled
by its pid; the function writes ``(key, 'python', pid)`` to the ledger through a
connection of its own. Prints ``result {"language", "pid", "alive", "seen"}``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import psycopg
import pytest
from psycopg import sql

import sentinel

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
NODE_WORKER = NODE_DIR / "worker.js"
N_KEYS = 20
N_PYTHON = 3
N_NODE = 3
INSTALL_HINT = (
    "install Node.js 20 or newer (Debian: apt-get install nodejs npm) and the example's dependencies: "
    "`npm ci --prefix examples/node`"
)


# -- the workers ---------------------------------------------------------------


def payload(key: str, language: str) -> Dict[str, Any]:
    """The response of a key: the same shape as worker.js's, with the runner's identity."""
    return {
        "key": key,
        "language": language,
        "pid": os.getpid(),
        "token": secrets.token_hex(8),
        "amount": 9900,
        "note": 'ünïcødé ✓ "quoted" \\ back\nslash',
        "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    }


def python_race(dsn: str, namespace: str, table: str, barrier_lock: int, keys: List[str]) -> None:
    insert = sql.SQL("insert into {} (key, language, pid) values (%s, 'python', %s)").format(sql.Identifier(table))
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, default_ttl_ms=5000, pool_size=2) as s, \
            psycopg.connect(dsn, autocommit=True) as ledger:
        s.inspect("warm-up")  # opens the pool and checks the schema before the barrier
        with psycopg.connect(dsn, autocommit=True) as barrier:
            barrier.execute("select pg_advisory_lock_shared(%s)", (barrier_lock,))
            barrier.execute("select pg_advisory_unlock_shared(%s)", (barrier_lock,))
        order = list(keys)
        random.Random(os.getpid()).shuffle(order)
        seen: Dict[str, Dict[str, Any]] = {}
        alive = 0
        for key in order:

            def fn(key: str = key) -> Dict[str, Any]:
                ledger.execute(insert, (key, os.getpid()))
                return payload(key, "python")

            deadline = time.monotonic() + 30
            delay = 0.005
            while True:
                r = s.once(key, fn, ttl_ms=5000, hard_ttl_ms=30000)
                if not r.execution_alive:
                    seen[key] = {"state": r.state, "response": r.response, "replayed": r.replayed,
                                 "fence": r.fence, "uncertain": r.uncertain}
                    break
                alive += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{key}: still alive after 30 s")
                time.sleep(delay * (0.5 + random.random()))  # backoff before asking again
                delay = min(delay * 2, 0.1)
    print("result " + json.dumps({"language": "python", "pid": os.getpid(), "alive": alive, "seen": seen}),
          flush=True)


# -- the harness -------------------------------------------------------------------


class Proc:
    """A worker process whose stdout lines are read on a background thread."""

    def __init__(self, language: str, argv: List[str]) -> None:
        self.language = language
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.stderr: List[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def describe(self) -> str:
        tail = "".join(self.stderr[-30:])
        return f"{self.language} worker pid {self.proc.pid} (exit {self.proc.poll()}); stderr:\n{tail}"

    def result(self, timeout: float) -> Dict[str, Any]:
        """The JSON of the worker's ``result`` line, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no result line within {timeout:.0f}s from {self.describe()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the worker ended without a result line: {self.describe()}")
            if line.startswith("result "):
                value: Dict[str, Any] = json.loads(line[len("result "):])
                return value

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def node_binary() -> str:
    """The node executable, or a test failure that says how to install what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: {INSTALL_HINT}", pytrace=False)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 20:
        pytest.fail(f"node {version or '(unknown version)'} is too old, Node.js 20 or newer is needed: {INSTALL_HINT}",
                    pytrace=False)
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        pytest.fail(f"{NODE_DIR / 'node_modules'} has no `pg`: {INSTALL_HINT}", pytrace=False)
    return node


def waiting_on_barrier(conn: psycopg.Connection[Any], lock: int) -> int:
    """How many sessions wait for the shared barrier lock (a bigint advisory lock below 2**31)."""
    row = conn.execute(
        "select count(*) from pg_locks l join pg_database d on d.oid = l.database"
        " where l.locktype = 'advisory' and d.datname = current_database()"
        " and l.classid = 0 and l.objid = %s and l.objsubid = 1 and not l.granted",
        (lock,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def run_node_once(node: str, dsn: str, namespace: str, key: str) -> Dict[str, Any]:
    worker = Proc("node", [node, str(NODE_WORKER), "once", dsn, namespace, key])
    try:
        result = worker.result(timeout=60)
        assert worker.proc.wait(timeout=30) == 0, worker.describe()
        return result
    finally:
        worker.stop()


@contextmanager
def app_role(dsn: str, namespace: str) -> Iterator[tuple[str, str]]:
    """A login role granted only ``namespace`` (grant_v2: no tokenless call); yields (role, its DSN)."""
    role, password = f"xl_{uuid.uuid4().hex[:12]}", secrets.token_hex(16)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(role), sql.Literal(password)))
        admin.execute("select sentinel.grant_v2(%s, %s)", (role, namespace))
        legacy = admin.execute(
            "select count(*) from unnest(array['sentinel.acquire_v1(text, text, text, bigint, bigint, boolean, text)',"
            " 'sentinel.heartbeat_v1(text, text, bigint)', 'sentinel.complete_v1(text, text, bigint, jsonb)']) f"
            " where has_function_privilege(%s, f, 'execute')", (role,)).fetchone()
        assert legacy == (0,), "a grant_v2 role must not execute the tokenless calls"
    try:
        yield role, psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("delete from sentinel.rights where role = to_regrole(%s)", (role,))
            admin.execute("delete from sentinel.watchers where role = to_regrole(%s)", (role,))
            admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


# -- the test -----------------------------------------------------------------------


def test_python_and_node_race_on_the_same_keys(dsn: str, namespace: str) -> None:
    node = node_binary()
    with app_role(dsn, namespace) as (role, role_dsn):
        race_and_replay(node, dsn, role, role_dsn, namespace)


def race_and_replay(node: str, admin_dsn: str, role: str, dsn: str, namespace: str) -> None:
    """The race of the workers (logged in with ``dsn``), then replays across the languages."""
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    lock = random.randrange(1, 2**31)
    keys = [f"order-{i:02d}" for i in range(N_KEYS)]
    workers: List[Proc] = []
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (key text not null, language text not null, pid integer not null)")
                     .format(sql.Identifier(table)))
        conn.execute(sql.SQL("grant insert on table {} to {}").format(sql.Identifier(table), sql.Identifier(role)))
        try:
            conn.execute("select pg_advisory_lock(%s)", (lock,))  # the start barrier, closed
            for i in range(max(N_PYTHON, N_NODE)):
                if i < N_PYTHON:
                    workers.append(Proc("python", [sys.executable, "-u", str(Path(__file__).resolve()), "race",
                                                   dsn, namespace, table, str(lock), *keys]))
                if i < N_NODE:
                    workers.append(Proc("node", [node, str(NODE_WORKER), "race",
                                                 dsn, namespace, table, str(lock), *keys]))
            deadline = time.monotonic() + 60
            while waiting_on_barrier(conn, lock) < len(workers):
                for w in workers:
                    assert w.proc.poll() is None, f"a worker ended before the barrier: {w.describe()}"
                assert time.monotonic() < deadline, (
                    f"timed out waiting for {len(workers)} workers at the barrier "
                    f"({waiting_on_barrier(conn, lock)} waiting)")
                time.sleep(0.02)
            conn.execute("select pg_advisory_unlock(%s)", (lock,))  # open: every worker starts at once
            reports = [w.result(timeout=60) for w in workers]
            for w in workers:
                assert w.proc.wait(timeout=30) == 0, w.describe()
        finally:
            for w in workers:
                w.stop()
            ledger = conn.execute(
                sql.SQL("select key, count(*), min(language), min(pid) from {} group by key")
                .format(sql.Identifier(table))
            ).fetchall()
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))

    # At most once, and at least once: every key ran exactly once, in one worker.
    runs = {key: count for key, count, _, _ in ledger}
    assert runs == {key: 1 for key in keys}, f"runs per key: {runs}"
    runner = {key: (language, pid) for key, _, language, pid in ledger}

    # Every worker got the one recorded response of each key, whoever ran it.
    for key in keys:
        views = [(r["language"], r["pid"], r["seen"].get(key)) for r in reports]
        responses = [seen["response"] if seen else None for _, _, seen in views]
        first = responses[0]
        assert first is not None, f"{key}: {views}"
        assert all(resp == first for resp in responses), f"{key}: workers saw different responses: {views}"
        assert (first["language"], first["pid"]) == runner[key], f"{key}: response {first}, ledger {runner[key]}"
        assert first == {**payload(key, first["language"]), "pid": first["pid"], "token": first["token"]}
        assert all(seen is not None and seen["state"] == "completed" and not seen["uncertain"]
                   for _, _, seen in views), f"{key}: {views}"
        assert len({seen["fence"] for _, _, seen in views if seen}) == 1, f"{key}: fences differ: {views}"
        fresh = [(language, pid) for language, pid, seen in views if seen and not seen["replayed"]]
        assert fresh == [runner[key]], f"{key}: not replayed by {fresh}, ran in {runner[key]}"

    won = {lang: sum(1 for lg, _ in runner.values() if lg == lang) for lang in ("python", "node")}
    print(f"keys run by: {won}; alive answers: {[r['alive'] for r in reports]}")

    # Cross-language replays, whatever the race decided: a Python-recorded
    # result replayed by Node, and a Node-recorded result replayed by Python.
    with sentinel.Sentinel(conninfo=dsn, namespace=namespace, default_ttl_ms=5000) as s:
        recorded = s.once("py-first", payload, args=("py-first", "python"))
        assert not recorded.replayed
        from_node = run_node_once(node, dsn, namespace, "py-first")
        assert from_node["replayed"] is True and from_node["state"] == "completed", from_node
        assert from_node["response"] == recorded.response, from_node
        assert from_node["fence"] == recorded.fence

        ran_by_node = run_node_once(node, dsn, namespace, "node-first")
        assert ran_by_node["replayed"] is False and ran_by_node["state"] == "completed", ran_by_node
        assert ran_by_node["response"]["language"] == "node"

        def must_not_run() -> None:
            raise AssertionError("Python ran a key that Node had recorded")

        replayed = s.once("node-first", must_not_run)
        assert replayed.replayed and replayed.completed
        assert replayed.response == ran_by_node["response"]
        assert replayed.fence == ran_by_node["fence"]


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[1] == "race":
        python_race(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:])
    else:
        print("usage: test_cross_language.py race DSN NAMESPACE LEDGER_TABLE BARRIER_LOCK KEY...", file=sys.stderr)
        sys.exit(2)
