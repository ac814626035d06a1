"""One chaos worker process: calls ``Sentinel.once()`` (and sometimes the raw SQL protocol) in a loop.

Started by ``chaos/run.py`` as ``python chaos/worker.py CONFIG_JSON``. It talks
to the harness over stdin and stdout, one line at a time.

stdout (each line ``TAG JSON``):

``ready {}``
    connected; the loop starts.
``phase {"p": ..., "call": ..., "ns": ..., "key": ..., "fence": ..., ...}``
    the worker entered a phase: ``acquiring`` (before the claim; also the
    window between the claim and the function's start), ``claimed`` (raw
    path: claimed with ``start => false``, preparing, not begun),
    ``running`` (inside the function, after its start was committed to the
    ledger; ``dur`` is the planned duration in seconds), ``completing`` (the
    function is about to return; the worker waits for ``ok SEQ`` on stdin so
    the injector can break its connections first), ``idle``.
``call {...}``
    one finished call: its outcome, fence, response, and wall-clock times.
``event {...}``
    something the library logged (heartbeat failures, recording retries,
    lost leases), or a raw-path recording retry.
``bye {}``
    clean exit after ``stop``.

stdin: ``ok SEQ`` (the harness acknowledges ``completing`` number SEQ),
``raise CALL`` (call CALL's function raises ``LeaseLost`` through
``ctx.check()`` once it notices its lease is lost, instead of returning),
``stop`` (finish the current call and exit).

The function records its start in the ledger (a separate database, on its own
connection, committed before the body runs) and its finish after the body.
Its response names the namespace, key, fence, worker and call, so the checker
can tell which run produced a stored response.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import psycopg  # noqa: E402

import sentinel  # noqa: E402
from sentinel import DatabaseUnavailable, FencedOut, SentinelError  # noqa: E402

_out_lock = threading.Lock()

#: Every chaos call of a key does the same work: one fingerprint for all (workers, injector, sweep).
FINGERPRINT = "chaos-v1"


def say(tag: str, doc: Dict[str, Any]) -> None:
    line = tag + " " + json.dumps(doc, separators=(",", ":"), default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class FnError(Exception):
    """The failure a chaos function raises on purpose (recorded failed; the key may run again)."""


class LedgerDown(Exception):
    """The ledger could not record the start: the function did nothing and raises."""


class LogEvents(logging.Handler):
    """Forwards the library's warnings (heartbeat failures, retried recordings, lost leases) as events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a broken log call must not kill the worker
            msg = str(record.msg)
        say("event", {"kind": "log", "level": record.levelname, "msg": msg[:400],
                      "fence": getattr(record, "sentinel_fence", None), "key": getattr(record, "sentinel_key", None)})


class Ledger:
    """The independent record of function starts and finishes, on a connection of its own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Optional[psycopg.Connection[Any]] = None

    def _write(self, sql: str, params: Tuple[Any, ...], budget: float) -> bool:
        """Run an idempotent insert, reconnecting on failure, for up to ``budget`` seconds."""
        deadline = time.monotonic() + budget
        while True:
            try:
                if self.conn is None or self.conn.closed or self.conn.broken:
                    self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                self.conn.execute(sql, params)
                return True
            except psycopg.Error:
                if self.conn is not None:
                    try:
                        self.conn.close()
                    except Exception:
                        pass
                self.conn = None
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)  # backoff before reconnecting to a restarting server

    def start(self, call: str, ns: str, key: str, fence: int, attempt: int, worker: str) -> bool:
        return self._write(
            "insert into starts (call, ns, key, fence, attempt, worker, pid) values (%s, %s, %s, %s, %s, %s, %s)"
            " on conflict (call) do nothing",
            (call, ns, key, fence, attempt, worker, os.getpid()), budget=2.0)

    def finish(self, call: str, ns: str, key: str, fence: int, worker: str, outcome: str) -> bool:
        return self._write(
            "insert into finishes (call, ns, key, fence, worker, outcome) values (%s, %s, %s, %s, %s, %s)"
            " on conflict (call) do nothing",
            (call, ns, key, fence, worker, outcome), budget=2.0)


class Control:
    """Reads stdin on a thread: ``stop`` and the acknowledgements of ``completing``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.acks: queue.Queue[int] = queue.Queue()
        self.raise_calls: set[str] = set()  # calls whose function raises once it notices its lost lease
        threading.Thread(target=self._read, name="control", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            word = line.strip().split()
            if not word:
                continue
            if word[0] == "stop":
                self.stop.set()
            elif word[0] == "ok" and len(word) == 2:
                self.acks.put(int(word[1]))
            elif word[0] == "raise" and len(word) == 2:
                self.raise_calls.add(word[1])
        self.stop.set()  # the harness went away

    def wait_ack(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                got = self.acks.get(timeout=remaining)
            except queue.Empty:
                return False
            if got == seq:
                return True


class Worker:
    def __init__(self, cfg: Dict[str, Any]) -> None:
        self.cfg = cfg
        self.wid: str = cfg["wid"]
        self.name = f"{self.wid}.{cfg['gen']}"
        self.rng = random.Random(cfg["seed"])
        self.ttl: int = cfg["ttl_ms"]
        self.hard: int = cfg["hard_ttl_ms"]
        self.namespaces = list(cfg["namespaces"])
        self.keys = [f"k{i:04d}" for i in range(cfg["keys"])]
        self.hot = self.keys[: max(1, min(len(self.keys), cfg.get("hot_keys", 24)))]
        self.ledger = Ledger(cfg["ledger_dsn"])
        self.control = Control()
        self.n = 0
        self.seq = 0
        self.pool: Any = None
        if cfg.get("pool_kwargs") is not None:
            from psycopg_pool import ConnectionPool

            kwargs = dict(cfg["pool_kwargs"])
            kwargs["autocommit"] = True
            self.pool = ConnectionPool(cfg["dsn"], kwargs=kwargs, min_size=1, max_size=4, timeout=3.0,
                                       open=False, name=f"chaos-{self.name}")
            self.pool.open(wait=False)
            self.client = sentinel.Sentinel(pool=self.pool, namespace=self.namespaces[0],
                                            default_ttl_ms=self.ttl)
        else:
            self.client = sentinel.Sentinel(conninfo=cfg["dsn"], namespace=self.namespaces[0],
                                            default_ttl_ms=self.ttl, pool_size=4, connect_timeout=3.0)
        self.clients = {self.namespaces[0]: self.client}
        for ns in self.namespaces[1:]:
            # One Sentinel per namespace, sharing nothing but the server.
            if self.pool is not None:
                self.clients[ns] = sentinel.Sentinel(pool=self.pool, namespace=ns, default_ttl_ms=self.ttl)
            else:
                self.clients[ns] = sentinel.Sentinel(conninfo=cfg["dsn"], namespace=ns, default_ttl_ms=self.ttl,
                                                     pool_size=4, connect_timeout=3.0)
        self.raw: Optional[psycopg.Connection[Any]] = None
        self.cur_fence: Optional[int] = None
        self.plan: Tuple[str, float, bool] = ("", 0.0, False)
        self.raw_kwargs: Dict[str, Any] = dict(cfg.get("pool_kwargs") or {})

    # -- helpers --------------------------------------------------------------

    def phase(self, p: str, **doc: Any) -> None:
        # ``at``: this process's monotonic clock, which on Linux is the harness's too; the harness measures
        # how much of a phase is left from it, not from when it read the line (late under load).
        say("phase", {"p": p, "at": time.monotonic(), **doc})

    def pick(self) -> Tuple[str, str]:
        r = self.rng.random()
        ns = self.namespaces[0] if r < 0.75 or len(self.namespaces) == 1 else self.rng.choice(self.namespaces[1:])
        key = self.rng.choice(self.hot) if self.rng.random() < 0.4 else self.rng.choice(self.keys)
        return ns, key

    def duration(self) -> float:
        r = self.rng.random()
        if r < 0.55:
            return self.rng.uniform(0.02, 0.2)
        if r < 0.9:
            return self.rng.uniform(0.2, 0.9)
        return self.rng.uniform(1.2, 2.5) * self.ttl / 1000.0  # outlives several leases: heartbeats needed

    def completing(self, call: str, ns: str, key: str, fence: int) -> None:
        """Tell the harness the function is about to return; wait (bounded) for its go-ahead."""
        self.seq += 1
        self.phase("completing", call=call, ns=ns, key=key, fence=fence, seq=self.seq)
        if not self.control.wait_ack(self.seq, timeout=10.0):
            say("event", {"kind": "no_ack", "call": call})

    def response(self, call: str, ns: str, key: str, fence: int) -> Dict[str, Any]:
        return {"ns": ns, "key": key, "fence": fence, "worker": self.name, "call": call,
                "token": secrets.token_hex(4)}

    # -- the once() path ----------------------------------------------------------

    def fn(self, ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
        """The chaos function. Its plan comes from ``self.plan``, not from arguments: every call of a key
        then carries the same fingerprint (``once()`` may derive one from the arguments)."""
        call, dur, fail = self.plan
        ns, key, fence = ctx.namespace, ctx.key, ctx.fence
        self.cur_fence = fence
        if not self.ledger.start(call, ns, key, fence, ctx.attempt, self.name):
            raise LedgerDown(f"ledger unreachable before the start: fence={fence} worker={self.name} call={call}")
        self.phase("running", call=call, ns=ns, key=key, fence=fence, dur=round(dur, 3), path="once")
        time.sleep(dur)  # the function's work
        if call in self.control.raise_calls and ctx.wait_lost(self.ttl / 1000.0 + 5.0):
            # The pattern the user guide recommends for long work: check the lease and stop. The function may
            # have had effects, so the database must keep the key uncertain (a late failure).
            self.ledger.finish(call, ns, key, fence, self.name, "raised")
            say("event", {"kind": "late_raise", "call": call})
            ctx.check()
        if fail:
            self.ledger.finish(call, ns, key, fence, self.name, "raised")
            raise FnError(f"planned failure: fence={fence} worker={self.name} call={call}")
        self.ledger.finish(call, ns, key, fence, self.name, "returned")
        self.completing(call, ns, key, fence)
        return self.response(call, ns, key, fence)

    def call_once(self, call: str, ns: str, key: str) -> Dict[str, Any]:
        dur = self.duration()
        fail = self.rng.random() < self.cfg.get("fail_ratio", 0.05)
        doc: Dict[str, Any] = {}
        self.cur_fence = None
        try:
            self.plan = (call, dur, fail)
            r = self.clients[ns].once(key, self.fn, ttl_ms=self.ttl, hard_ttl_ms=self.hard, pass_context=True,
                                      fingerprint=FINGERPRINT)
        except FnError as exc:
            doc = {"outcome": "raised", "error": str(exc), "fence": self.cur_fence}
        except sentinel.LeaseLost as exc:
            doc = {"outcome": "late_raise", "error": str(exc), "fence": self.cur_fence}
        except LedgerDown as exc:
            doc = {"outcome": "ledger_down", "error": str(exc), "fence": self.cur_fence}
        except FencedOut as exc:
            doc = {"outcome": "fenced_out", "fence": exc.fence, "response": exc.response, "state": exc.state}
        except SentinelError as exc:
            doc = {"outcome": "error", "error_type": type(exc).__name__, "error": str(exc)[:300],
                   "fence": self.cur_fence}
        except Exception as exc:
            doc = {"outcome": "unclear_error", "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                   "error": str(exc)[:300], "fence": self.cur_fence}
        else:
            doc = {"fence": r.fence, "attempt": r.attempt, "state": r.state, "response": r.response,
                   "persisted": r.persisted}
            if r.execution_alive:
                doc["outcome"] = "alive"
            elif r.uncertain:
                doc["outcome"] = "uncertain"
            elif r.failed:
                doc["outcome"] = "failed_replay"
                doc["error"] = r.error
            elif r.replayed:
                doc["outcome"] = "replayed"
            elif not r.persisted:
                doc["outcome"] = "unpersisted"
            else:
                doc["outcome"] = "fresh"
        return doc

    # -- the raw SQL path (claim, prepare, begin) -----------------------------------

    def _raw_conn(self) -> psycopg.Connection[Any]:
        if self.raw is None or self.raw.closed or self.raw.broken:
            self.raw = psycopg.connect(self.cfg["dsn"], autocommit=True, **self.raw_kwargs)
        return self.raw

    def _raw_exec(self, sql: str, params: Tuple[Any, ...]) -> Any:
        try:
            return self._raw_conn().execute(sql, params).fetchone()
        except psycopg.OperationalError:
            if self.raw is not None:
                try:
                    self.raw.close()
                except Exception:
                    pass
            self.raw = None
            raise

    def call_raw(self, call: str, ns: str, key: str) -> Dict[str, Any]:
        owner = f"{self.client.owner}:raw"
        try:
            row = self._raw_exec(
                "select outcome, fence, state, attempt, response, error, hard_expires_at, now"
                " from sentinel.acquire_v1(%s, %s, %s, %s, %s, false, %s)",
                (ns, key, owner, self.ttl, self.hard, FINGERPRINT))
        except psycopg.OperationalError as exc:
            return {"outcome": "error", "error_type": "OperationalError", "error": str(exc)[:300]}
        outcome, fence, state, attempt, response, error, hard_at, db_now = row
        doc: Dict[str, Any] = {"fence": fence, "attempt": attempt, "state": state}
        if outcome != "acquired":
            mapping = {"completed": "replayed", "failed": "failed_replay"}
            doc["outcome"] = mapping.get(outcome, outcome)
            doc["response"] = response
            doc["error"] = error
            return doc
        deadline = time.monotonic() + max((hard_at - db_now).total_seconds(), 0.0)
        # Prepare before starting; sometimes for longer than the lease, so the claim lapses.
        prep = self.rng.uniform(0.08, 0.3) if self.rng.random() < 0.85 else self.ttl / 1000.0 * 1.3
        self.phase("claimed", call=call, ns=ns, key=key, fence=fence, dur=round(prep, 3), path="raw")
        time.sleep(prep)  # the preparation's work
        try:
            began = self._raw_exec("select sentinel.begin_v1(%s, %s, %s)", (ns, key, fence))
        except psycopg.OperationalError as exc:
            # We cannot know whether begin committed: never run the function (a begun
            # execution then reads uncertain; a claim is taken over after its lease).
            return {**doc, "outcome": "error", "error_type": "OperationalError", "error": str(exc)[:300]}
        if not began[0]:
            return {**doc, "outcome": "begin_refused"}
        if not self.ledger.start(call, ns, key, fence, attempt, self.name):
            # Nothing ran: say so (the execution reads uncertain; an operator may release it).
            try:
                self._raw_exec("select outcome from sentinel.abandon_v1(%s, %s, %s, %s)",
                               (ns, key, fence, "ledger unreachable before the start"))
            except psycopg.OperationalError:
                pass
            return {**doc, "outcome": "ledger_down"}
        dur = self.rng.uniform(0.02, 0.15)
        self.phase("running", call=call, ns=ns, key=key, fence=fence, dur=round(dur, 3), path="raw")
        time.sleep(dur)  # the function's work (short: this path has no heartbeat)
        self.ledger.finish(call, ns, key, fence, self.name, "returned")
        self.completing(call, ns, key, fence)
        resp = self.response(call, ns, key, fence)
        text = json.dumps(resp)
        while True:
            try:
                rec = self._raw_exec("select outcome, state from sentinel.complete_v1(%s, %s, %s, %s::jsonb)",
                                     (ns, key, fence, text))
                break
            except psycopg.OperationalError as exc:
                say("event", {"kind": "raw_record_retry", "call": call, "msg": str(exc)[:200]})
                if time.monotonic() >= deadline:
                    return {**doc, "outcome": "unpersisted", "response": resp}
                time.sleep(0.1)  # backoff before retrying the recording
        if rec[0] in ("recorded", "already_recorded"):
            return {**doc, "outcome": "fresh", "response": resp, "state": rec[1], "persisted": True}
        return {**doc, "outcome": "fenced_out", "response": resp, "state": rec[1]}

    # -- loop -----------------------------------------------------------------------

    def run(self) -> int:
        for ns in self.namespaces:
            for _ in range(50):
                try:
                    self.clients[ns].inspect(self.keys[0])  # schema check, a live pooled connection
                    break
                except DatabaseUnavailable:
                    time.sleep(0.1)  # the server is restarting
        say("ready", {"pid": os.getpid()})
        raw_ratio = float(self.cfg.get("raw_ratio", 0.15))
        while not self.control.stop.is_set():
            self.n += 1
            call = f"{self.cfg['pass']}.{self.name}.{self.n}"
            ns, key = self.pick()
            raw = self.rng.random() < raw_ratio
            self.phase("acquiring", call=call, ns=ns, key=key, path="raw" if raw else "once")
            t0 = time.time()
            doc = self.call_raw(call, ns, key) if raw else self.call_once(call, ns, key)
            t1 = time.time()
            say("call", {"call": call, "worker": self.name, "ns": ns, "key": key, "path": "raw" if raw else "once",
                         "t0": t0, "t1": t1, **doc})
            self.phase("idle", call=call)
            if doc["outcome"] in ("error", "unclear_error", "ledger_down"):
                time.sleep(self.rng.uniform(0.1, 0.3))  # back off while the database is away
            elif doc["outcome"] in ("alive", "uncertain", "begin_refused"):
                time.sleep(self.rng.uniform(0.01, 0.05))  # back off before asking for other work
        for c in self.clients.values():
            c.close()
        if self.pool is not None:
            self.pool.close()
        say("bye", {})
        return 0


def forward_logs() -> None:
    """The library's warnings as ``event`` lines (for the worker and the actors alike)."""
    logger = logging.getLogger("sentinel")
    logger.addHandler(LogEvents())
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def main(argv: list[str]) -> int:
    cfg: Dict[str, Any] = json.loads(argv[0])
    forward_logs()
    worker = Worker(cfg)
    run: Callable[[], int] = worker.run
    return run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
