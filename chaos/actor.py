"""One scripted chaos scenario in a process of its own, for the faults a worker's loop never meets.

Started by ``chaos/run.py`` as ``python chaos/actor.py CONFIG_JSON``; it speaks
the worker's line protocol (``chaos/worker.py``: ``phase``, ``call``,
``event`` lines on stdout) and reads one word at a time on stdin. Every
function it runs records its start in the ledger before its body, like a
worker's, so the checker holds it to the same invariants. The harness drives
each scenario and checks what it promises (``Harness.act`` in ``run.py``).

``async_cancel``
    ``AsyncSentinel.once()`` of a *sync* function, whose caller is cancelled
    (``task.cancel()``) or times out (``asyncio.wait_for``) while the
    function's thread runs. Phases ``running``, then ``cancelled`` once the
    caller got its exception; the function returns on ``go``; ``done`` when
    the client has closed (its real outcome recorded).
``fork``
    A warm-up call, then a function that runs (``running``) while the process
    forks. The child asks for the parent's key (it must be told ``alive``),
    runs a key of its own (on connections of its own) and says ``child``;
    the harness then SIGKILLs the parent: the child must not keep the dead
    parent's lease alive. The child exits on ``exit``.
``hang_heartbeat``
    The client reaches the server through a TCP proxy (``tests/tcpproxy.py``)
    that stalls once the function runs: the heartbeat's connection hangs
    without an error. ``stalled``, then ``noticed`` when ``ctx.wait_lost()``
    returned (the local hard-deadline check); on ``resume`` the proxy
    forwards again and the function raises ``LeaseLost`` through
    ``ctx.check()``.
``drop_reply``
    Through the same proxy, the reply to ``acquire_v2`` is dropped after the
    server committed the claim, then (another key) the reply to
    ``complete_v2``. Both calls must end ``fresh``; ``done`` says how many
    replies were dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

from tests.tcpproxy import Proxy  # noqa: E402

import chaos.worker as worker_module  # noqa: E402
import sentinel  # noqa: E402
from chaos.worker import FINGERPRINT, Ledger, forward_logs, say  # noqa: E402


class Words:
    """The words the harness sends on stdin, as events (read on a thread of their own)."""

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self._events: Dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stream = stream or sys.stdin
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def event(self, word: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(word, threading.Event())

    def _read(self) -> None:
        for line in self._stream:
            if line.strip():
                self.event(line.strip()).set()
        for e in list(self._events.values()):  # the harness went away: let every wait end
            e.set()


class Actor:
    def __init__(self, cfg: Dict[str, Any]) -> None:
        self.cfg = cfg
        self.name: str = cfg["name"]
        self.ns: str = cfg["ns"]
        self.keys = list(cfg["keys"])
        self.ttl: int = cfg["ttl_ms"]
        self.hard: int = cfg["hard_ttl_ms"]
        self.ledger = Ledger(cfg["ledger_dsn"])
        self.n = 0

    def call_name(self) -> str:
        self.n += 1
        return f"{self.name}.{os.getpid()}.{self.n}"

    def start(self, call: str, ctx: sentinel.ExecutionContext) -> None:
        if not self.ledger.start(call, ctx.namespace, ctx.key, ctx.fence, ctx.attempt, self.name):
            raise RuntimeError(f"ledger unreachable before the start: fence={ctx.fence} call={call}")

    def response(self, call: str, ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
        self.ledger.finish(call, ctx.namespace, ctx.key, ctx.fence, self.name, "returned")
        return {"ns": ctx.namespace, "key": ctx.key, "fence": ctx.fence, "worker": self.name, "call": call}

    def report(self, call: str, key: str, t0: float, **doc: Any) -> Dict[str, Any]:
        line = {"call": call, "worker": self.name, "ns": self.ns, "key": key, "path": "once", "t0": t0,
                "t1": time.time(), **doc}
        say("call", line)
        return line

    def outcome(self, r: sentinel.Result) -> Dict[str, Any]:
        outcome = ("alive" if r.execution_alive else "uncertain" if r.uncertain else
                   "failed_replay" if r.failed else "replayed" if r.replayed else
                   "unpersisted" if not r.persisted else "fresh")
        return {"outcome": outcome, "fence": r.fence, "response": r.response, "error": r.error,
                "persisted": r.persisted}

    def blocking(self, call: str, key: str, until: threading.Event, started: threading.Event,
                 seen: Dict[str, Any]) -> Callable[[sentinel.ExecutionContext], Dict[str, Any]]:
        """A function that records its start, says ``running``, and returns once ``until`` is set."""
        def fn(ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
            seen["fence"] = ctx.fence
            self.start(call, ctx)
            say("phase", {"p": "running", "call": call, "ns": self.ns, "key": key, "fence": ctx.fence})
            started.set()
            until.wait(self.hard / 1000.0 + 30)
            return self.response(call, ctx)

        return fn

    def once(self, client: sentinel.Sentinel, key: str) -> Dict[str, Any]:
        """A plain call (the function returns at once), reported like a worker's."""
        call, t0 = self.call_name(), time.time()
        ran: Dict[str, Any] = {}

        def fn(ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
            ran["fence"] = ctx.fence
            self.start(call, ctx)
            return self.response(call, ctx)

        try:
            r = client.once(key, fn, ttl_ms=self.ttl, hard_ttl_ms=self.hard, pass_context=True,
                            fingerprint=FINGERPRINT)
        except sentinel.SentinelError as exc:
            return self.report(call, key, t0, outcome="error", error_type=type(exc).__name__,
                               error=str(exc)[:300], fence=ran.get("fence"))
        return self.report(call, key, t0, **self.outcome(r))

    # -- scenarios -------------------------------------------------------------------------

    def async_cancel(self, words: Words) -> int:
        return asyncio.run(self._async_cancel(words))

    async def _async_cancel(self, words: Words) -> int:
        key, call = self.keys[0], self.call_name()
        client = sentinel.AsyncSentinel(conninfo=self.cfg["dsn"], namespace=self.ns, default_ttl_ms=self.ttl,
                                        pool_size=2)
        started = threading.Event()
        go = words.event("go")
        seen: Dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._ready, lambda: asyncio.run_coroutine_threadsafe(
            client.inspect(key), loop).result(30))
        if not ready:
            await client.close()
            return 0

        fn = self.blocking(call, key, go, started, seen)  # sync: runs in a thread

        t0 = time.time()
        task = asyncio.ensure_future(client.once(key, fn, ttl_ms=self.ttl, hard_ttl_ms=self.hard,
                                                 pass_context=True, fingerprint=FINGERPRINT))
        began = await loop.run_in_executor(None, started.wait, 20.0)
        if not began:
            task.cancel()
            self.report(call, key, t0, outcome="error", error_type="NotStarted", error="fn did not start")
            await client.close()
            return 1
        mode = self.cfg.get("mode", "cancel")
        try:
            if mode == "wait_for":
                await asyncio.wait_for(task, timeout=0.01)
            else:
                task.cancel()
                await task
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            self.report(call, key, t0, outcome="cancelled", fence=seen.get("fence"), error=type(exc).__name__)
        else:
            self.report(call, key, t0, outcome="unclear_error", error_type="NotCancelled",
                        error=f"{mode}: the caller was not cancelled", fence=seen.get("fence"))
        say("phase", {"p": "cancelled", "call": call, "ns": self.ns, "key": key, "fence": seen.get("fence"),
                      "mode": mode})
        await loop.run_in_executor(None, go.wait, self.hard / 1000.0 + 30)
        await client.close()  # waits for the thread, whose outcome is recorded first
        say("phase", {"p": "done", "call": call})
        return 0

    def fork(self, words: Words) -> int:
        client = sentinel.Sentinel(conninfo=self.cfg["dsn"], namespace=self.ns, default_ttl_ms=self.ttl,
                                   pool_size=2)
        if not self._ready(lambda: client.inspect(self.keys[0])):
            return 0
        self.once(client, self.keys[0])  # warm-up: an idle connection, a heartbeat thread
        key, call = self.keys[1], self.call_name()
        started = threading.Event()
        never = threading.Event()  # the parent is killed while it runs
        fn = self.blocking(call, key, never, started, {})

        t0 = time.time()
        runner = threading.Thread(target=lambda: self.report(call, key, t0, **self.outcome(
            client.once(key, fn, ttl_ms=self.ttl, hard_ttl_ms=self.hard, pass_context=True,
                        fingerprint=FINGERPRINT))), name="runner", daemon=True)
        runner.start()
        if not started.wait(20.0):
            return 1
        pid = os.fork()
        if pid == 0:  # the child: its parent's leases and connections are not its own
            try:
                # Only this thread came along: a lock another thread held stays held, and the stdin reader is
                # gone. The harness's own plumbing starts afresh (the client must do so by itself).
                worker_module._out_lock = threading.Lock()
                self.ledger = Ledger(self.cfg["ledger_dsn"])
                # (sys.stdin's buffer lock belongs to the parent's reader thread: read fd 0 anew.)
                words = Words(open(0, encoding="utf-8", closefd=False))  # noqa: SIM115 - lives as long as we do
                self.once(client, key)  # the parent's key: alive while the parent lives
                self.once(client, self.keys[2])  # a key of its own, on its own connections
                say("phase", {"p": "child", "pid": os.getpid()})
                words.event("exit").wait(self.hard / 1000.0 * 4 + 60)
                client.close()
            finally:
                os._exit(0)
        say("phase", {"p": "forked", "child": pid})
        runner.join()
        return 0

    def _ready(self, check: Any) -> bool:
        """Call ``check()`` (the schema check, a live connection) until it works, for up to 20 s; else say
        ``unready``: just after a restart the server, or PgBouncer, refuses logins for a while."""
        deadline = time.monotonic() + 20.0
        while True:
            try:
                check()
                return True
            except sentinel.DatabaseUnavailable as exc:
                if time.monotonic() > deadline:
                    say("phase", {"p": "unready", "error": str(exc)[:300]})
                    return False
                time.sleep(0.2)  # the server or PgBouncer is coming back

    def _proxied(self) -> Optional[tuple[Proxy, sentinel.Sentinel]]:
        """A client behind a TCP proxy, its schema checked before any fault; None (and ``unready``) when the
        database cannot be reached yet (just after a restart, PgBouncer refuses logins for a while)."""
        proxy = Proxy(self.cfg["dsn"])
        client = sentinel.Sentinel(conninfo=proxy.dsn, namespace=self.ns, default_ttl_ms=self.ttl, pool_size=2,
                                   connect_timeout=3.0)
        if self._ready(lambda: client.inspect(self.keys[0])):
            return proxy, client
        client.close()
        proxy.close()
        return None

    def hang_heartbeat(self, words: Words) -> int:
        made = self._proxied()
        if made is None:
            return 0
        proxy, client = made
        key, call = self.keys[0], self.call_name()
        seen: Dict[str, Any] = {}

        def fn(ctx: sentinel.ExecutionContext) -> Dict[str, Any]:
            seen["fence"] = ctx.fence
            self.start(call, ctx)
            say("phase", {"p": "running", "call": call, "ns": self.ns, "key": key, "fence": ctx.fence})
            # Hang the heartbeat's connection once it is established (after its first renewal): a half-open
            # connection, not one that cannot be made (connect_timeout covers that).
            until = time.monotonic() + self.ttl / 1000.0 * 2
            while ctx.lease_expires_at is None and time.monotonic() < until:
                ctx.wait_lost(0.01)
            proxy.stall()  # every socket stays open; nothing more reaches the server or comes back
            say("phase", {"p": "stalled", "call": call, "ns": self.ns, "key": key, "fence": ctx.fence})
            lost = ctx.wait_lost(self.hard / 1000.0 + 30)
            say("phase", {"p": "noticed", "call": call, "lost": lost, "at": time.time(),
                          "hard_expires_at": ctx.hard_expires_at.timestamp()})
            words.event("resume").wait(self.hard / 1000.0 + 30)
            proxy.resume()
            self.ledger.finish(call, ctx.namespace, ctx.key, ctx.fence, self.name, "raised")
            ctx.check()  # raises LeaseLost: the key must stay uncertain
            return self.response(call, ctx)

        t0 = time.time()
        try:
            r = client.once(key, fn, ttl_ms=self.ttl, hard_ttl_ms=self.hard, pass_context=True,
                            fingerprint=FINGERPRINT)
        except sentinel.LeaseLost as exc:
            self.report(call, key, t0, outcome="late_raise", error=str(exc), fence=seen.get("fence"))
        except sentinel.SentinelError as exc:
            self.report(call, key, t0, outcome="error", error_type=type(exc).__name__, error=str(exc)[:300],
                        fence=seen.get("fence"))
        else:
            self.report(call, key, t0, **self.outcome(r))
        client.close()
        proxy.close()
        say("phase", {"p": "done", "call": call})
        return 0

    def drop_reply(self, words: Words) -> int:
        made = self._proxied()
        if made is None:
            return 0
        proxy, client = made
        outcomes = []
        for key, statement in zip(self.keys, (b"sentinel.acquire_v", b"sentinel.complete_v")):
            proxy.drop_reply_to(statement)
            outcomes.append(self.once(client, key)["outcome"])
        client.close()
        proxy.close()
        say("phase", {"p": "done", "dropped": proxy.dropped, "outcomes": outcomes})
        return 0


def main(argv: list[str]) -> int:
    cfg: Dict[str, Any] = json.loads(argv[0])
    forward_logs()
    words = Words()
    actor = Actor(cfg)
    scenario: Optional[Any] = getattr(actor, str(cfg["scenario"]), None)
    if scenario is None or cfg["scenario"].startswith("_"):
        raise SystemExit(f"chaos/actor.py: unknown scenario {cfg['scenario']!r}")
    rc: int = scenario(words)
    say("bye", {})
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
