"""Worker processes for the concurrency and fault tests, and the harness that drives them.

Run as a script, this file is one worker process (``python tests/workers.py MODE ...``)
that talks to the test over its stdin and stdout, one line at a time:

``race DSN NAMESPACE TABLE SEED KEY...``
    Builds a ``Sentinel``, prints ``ready``, waits for a ``go`` line (the
    barrier), then calls ``once()`` for every key in an order shuffled by SEED.
    The function inserts ``(key, pid)`` into TABLE on its own connection and
    returns ``{"key", "pid", "token"}``. A call that finds the execution alive
    is retried with a short backoff until it gets an answer. Prints
    ``result {"pid": ..., "alive": n, "seen": {key: result}}``.
``hang DSN NAMESPACE KEY TTL_MS HARD_TTL_MS``
    Claims KEY; the function prints ``started <fence>`` and blocks forever
    (the test kills the process).
``zombie DSN NAMESPACE KEY TTL_MS HARD_TTL_MS``
    Claims KEY; the function prints ``started <fence>``, waits for a ``go``
    line, and returns ``{"by": "zombie"}``; then prints ``result <json>``.

Imported by the tests, it provides :class:`Worker` (launch a worker, read its
lines with a deadline, signal it, kill it), :func:`wait_until` and small
database helpers. Every wait has a deadline and fails with a message that says
what was awaited.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import psycopg
from psycopg import sql

import sentinel

WORKER_SCRIPT = str(Path(__file__).resolve())


# -- harness (used by the tests) ---------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value, which is returned.

    Fails the test with ``what`` in the message if ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def result_doc(result: sentinel.Result) -> Dict[str, Any]:
    """A ``Result`` as a JSON-friendly dict (what workers print)."""
    return {
        "state": result.state,
        "response": result.response,
        "replayed": result.replayed,
        "execution_alive": result.execution_alive,
        "uncertain": result.uncertain,
        "fence": result.fence,
        "attempt": result.attempt,
        "persisted": result.persisted,
    }


class Worker:
    """A worker process running this file, read line by line on background threads."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-u", WORKER_SCRIPT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._stderr: List[str] = []
        self.seen: List[str] = []
        self._pumps = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def describe(self) -> str:
        tail = "".join(self._stderr[-30:])
        return f"worker {self.args[0]} pid {self.pid} (exit {self.proc.poll()}); stdout {self.seen!r}; stderr:\n{tail}"

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (other lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.1f}s waiting for {prefix!r} from {self.describe()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # keep reporting the end
                self.wait(timeout=5)
                raise AssertionError(f"stdout ended before a line {prefix!r} from {self.describe()}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def expect_json(self, prefix: str, timeout: float) -> Any:
        """The JSON document after ``prefix`` on the next such line."""
        return json.loads(self.expect(prefix, timeout)[len(prefix):])

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and its output to be read; its exit code."""
        code = self.proc.wait(timeout=timeout)
        for pump in self._pumps:
            pump.join(timeout)
        return code

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """Kill the process (it may be stopped: SIGKILL works anyway), reap it, close its pipes."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.wait(timeout=10)  # the readers end at EOF, before their streams are closed
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass


def stop_workers(workers: Iterable[Worker]) -> None:
    """Kill and reap every worker, even if stopping one of them fails."""
    errors: List[BaseException] = []
    for w in workers:
        try:
            w.stop()
        except BaseException as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


def stored_row(conn: psycopg.Connection[Any], namespace: str, key: str) -> Optional[Dict[str, Any]]:
    """The stored execution row, plus ``db_now`` (the database clock), or None."""
    cur = conn.execute(
        "select *, clock_timestamp() as db_now from sentinel.executions where namespace = %s and key = %s",
        (namespace, key),
    )
    row = cur.fetchone()
    if row is None:
        return None
    names = [d.name for d in (cur.description or [])]
    return dict(zip(names, row))


def lease_lapsed(conn: psycopg.Connection[Any], namespace: str, key: str) -> bool:
    """Whether the database clock is at or past the key's lease."""
    row = conn.execute(
        "select lease_expires_at <= clock_timestamp() from sentinel.executions where namespace = %s and key = %s",
        (namespace, key),
    ).fetchone()
    return bool(row and row[0])


def wait_lease_lapsed(conn: psycopg.Connection[Any], namespace: str, key: str, timeout: float = 15.0) -> None:
    """Wait until the database says the key's lease lapsed."""
    wait_until(lambda: lease_lapsed(conn, namespace, key), timeout,
               f"the database to report the lease of {namespace}/{key} lapsed")


def db_elapsed_ms(conn: psycopg.Connection[Any], namespace: str, key: str) -> float:
    """Milliseconds since the key was claimed, by the database clock."""
    row = conn.execute(
        "select extract(epoch from clock_timestamp() - claimed_at) * 1000 from sentinel.executions"
        " where namespace = %s and key = %s",
        (namespace, key),
    ).fetchone()
    assert row is not None, f"no execution row for {namespace}/{key}"
    return float(row[0])


# -- worker side ---------------------------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_race(a: argparse.Namespace) -> int:
    pid = os.getpid()
    keys: List[str] = list(a.keys)
    random.Random(a.seed).shuffle(keys)
    insert = sql.SQL("insert into {} (key, pid) values (%s, %s)").format(sql.Identifier(a.table))
    with psycopg.connect(a.dsn, autocommit=True) as ledger, sentinel.Sentinel(
        conninfo=a.dsn, namespace=a.namespace, default_ttl_ms=10000
    ) as s:
        s.inspect(keys[0])  # the pool has a live connection before the race starts

        def fn(key: str) -> Dict[str, Any]:
            ledger.execute(insert, (key, pid))
            return {"key": key, "pid": pid, "token": secrets.token_hex(8)}

        _say("ready")
        line = sys.stdin.readline()
        if line.strip() != "go":
            _say(f"error expected go, got {line!r}")
            return 3
        seen: Dict[str, Dict[str, Any]] = {}
        alive = 0
        for key in keys:
            deadline = time.monotonic() + 60
            delay = 0.002
            while True:
                result = s.once(key, fn, args=(key,))
                if not result.execution_alive:
                    break
                alive += 1
                if time.monotonic() > deadline:
                    _say(f"error {key} stayed alive for 60 s")
                    return 4
                time.sleep(delay * (0.5 + random.random()))  # backoff before asking again
                delay = min(delay * 2, 0.05)
            seen[key] = result_doc(result)
        _say("result " + json.dumps({"pid": pid, "alive": alive, "seen": seen}))
    return 0


def cmd_hang(a: argparse.Namespace) -> int:
    with sentinel.Sentinel(conninfo=a.dsn, namespace=a.namespace) as s:

        def fn(ctx: sentinel.ExecutionContext) -> None:
            _say(f"started {ctx.fence}")
            threading.Event().wait()  # blocks until the test kills the process

        result = s.once(a.key, fn, ttl_ms=a.ttl, hard_ttl_ms=a.hard, pass_context=True)
        _say("result " + json.dumps(result_doc(result)))
    return 0


def cmd_zombie(a: argparse.Namespace) -> int:
    with sentinel.Sentinel(conninfo=a.dsn, namespace=a.namespace) as s:

        def fn(ctx: sentinel.ExecutionContext) -> Dict[str, str]:
            _say(f"started {ctx.fence}")
            line = sys.stdin.readline()
            if line.strip() != "go":
                raise RuntimeError(f"expected go, got {line!r}")
            return {"by": "zombie"}

        result = s.once(a.key, fn, ttl_ms=a.ttl, hard_ttl_ms=a.hard, pass_context=True)
        _say("result " + json.dumps(result_doc(result)))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    race = sub.add_parser("race")
    race.add_argument("dsn")
    race.add_argument("namespace")
    race.add_argument("table")
    race.add_argument("seed", type=int)
    race.add_argument("keys", nargs="+")
    race.set_defaults(run=cmd_race)
    for name, run in (("hang", cmd_hang), ("zombie", cmd_zombie)):
        q = sub.add_parser(name)
        q.add_argument("dsn")
        q.add_argument("namespace")
        q.add_argument("key")
        q.add_argument("ttl", type=int)
        q.add_argument("hard", type=int)
        q.set_defaults(run=run)
    return p


def main(argv: List[str]) -> int:
    a = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = a.run
    return run(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
