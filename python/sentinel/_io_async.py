"""The asyncio side of the drivers' I/O: the heartbeat task, LISTEN, the helpers the flow awaits.

``_client_async`` (the one hand-written source of the once() flow) runs on
these; the ``_client`` generated from it runs on ``_io_sync``, which gives
the threaded equivalents the same names without ``Async``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import heapq
import inspect
import itertools
import logging
import time
from datetime import datetime
from typing import Any, Callable, Deque, Dict, List, Optional

import psycopg
from psycopg import sql

from ._events import UncertainKey
from ._heartbeat import HEARTBEAT_MANY_SQL, HEARTBEAT_SQL, Lease, Renewals, renewal_bound
from ._results import ExecutionContext
from ._sources_async import (
    AsyncGetConn,
    AsyncProbe,
    AsyncSource,
    check_compatible,
    fetchone,
    is_async,
    make_source,
    protocol_row,
)
from ._support import WatchIds, private_channel

logger = logging.getLogger("sentinel")

__all__ = [
    "AsyncExecutionContext", "AsyncGetConn", "AsyncHeartbeater", "AsyncLease", "AsyncListener", "AsyncProbe",
    "AsyncSource", "call_probe", "check_compatible", "fetchone", "is_async", "make_source", "protocol_row", "sleep",
    "wait_event",
]

# -- leases and the heartbeat task -------------------------------------------------


class AsyncLease(Lease):
    """A :class:`Lease` whose loss can also be awaited (``alost``)."""

    __slots__ = ("alost", "_loop")

    def __init__(self, namespace: str, key: str, fence: int, ttl_ms: int, deadline: Optional[float],
                 token: str = "") -> None:
        super().__init__(namespace, key, fence, ttl_ms, deadline, token)
        self.alost = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def _notify(self) -> None:
        try:
            in_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            self._notify_in_loop()
        elif not self._loop.is_closed():  # a sync function's thread noticed the deadline
            self._loop.call_soon_threadsafe(self._notify_in_loop)

    def _notify_in_loop(self) -> None:
        self.alost.set()
        super()._notify()  # observers run on the event loop


class _AsyncDedicated:
    """A connection of the heartbeat task's own: opened when first needed, given back when idle or broken."""

    def __init__(self, source: AsyncSource) -> None:
        self._source = source
        self._cm: Optional[contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]] = None
        self.conn: Optional[psycopg.AsyncConnection[Any]] = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        """The connection, opened now if need be (raises what opening it raised)."""
        if self.conn is None:
            cm = self._source.dedicated()
            self.conn = await cm.__aenter__()
            self._cm = cm
        return self.conn

    async def drop(self, exc: Optional[BaseException] = None) -> None:
        """Give the connection back (after ``exc``, if it failed)."""
        cm, self._cm, self.conn = self._cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


class AsyncHeartbeater(Renewals):
    """Renews the leases of every in-flight execution of one ``AsyncSentinel``.

    One asyncio task (``sentinel-heartbeat``), started on first use, sleeps
    until leases are due and renews them together, one ``heartbeat_many_v1``
    statement per namespace and batch, on a connection of its own (held only
    while executions are in flight). A key whose row another session holds
    locked goes to a second task (``sentinel-heartbeat-single``, started when
    first needed) that renews it alone with ``heartbeat_v2``, so it never
    delays the others. A lease is marked lost when the database says the
    execution is no longer ours, or when the hard deadline passed while the
    database was unreachable. It decides nothing itself: the database does.
    """

    def __init__(self, source: AsyncSource, on_lost: Callable[[AsyncLease], None],
                 explicit: Callable[[], bool] = lambda: False, timeout: Optional[float] = None) -> None:
        self._timeout = timeout  # the client's reply_timeout
        self._source = source
        self._on_lost = on_lost
        self._explicit = explicit  # protocol calls in explicit read committed transactions (see _conn)
        self._heap = []
        self._leases = {}
        self._singles: Deque[Lease] = collections.deque()
        self._batched = True
        self._ids = itertools.count(1)
        self._task: Optional[asyncio.Task[None]] = None
        self._single_task: Optional[asyncio.Task[None]] = None
        self._wake: Optional[asyncio.Event] = None  # the batch task waits for due leases on it
        self._queued: Optional[asyncio.Event] = None  # the single lane waits for locked keys on it
        self._closed = False

    def register(self, lease: AsyncLease) -> None:
        """Start renewing ``lease``; its first renewal is one interval from now."""
        if self._closed:
            raise RuntimeError("this AsyncSentinel is closed")
        lease.id = next(self._ids)
        lease.on_lost = self._on_lost  # type: ignore[assignment]
        self._leases[lease.id] = lease
        wake = self._schedule(lease)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sentinel-heartbeat")
        elif wake and self._wake is not None:
            self._wake.set()

    def unregister(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its entry in the schedule is dropped lazily)."""
        self._leases.pop(lease.id, None)

    async def close(self) -> None:
        """Stop the tasks; leases still registered are no longer renewed."""
        self._closed = True
        self._leases.clear()
        self._singles.clear()
        for task in (self._task, self._single_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._single_task = None

    def _reschedule(self, lease: Lease, delay: float) -> None:
        if lease.id in self._leases:
            due = time.monotonic() + delay
            if (not self._heap or due < self._heap[0][0]) and self._wake is not None:
                self._wake.set()  # (from the single lane) due before the batch task's next wake-up
            heapq.heappush(self._heap, (due, lease.id))

    def _hand_over(self, leases: List[Lease]) -> None:
        """Renew these leases alone, with heartbeat_v2, on the single lane."""
        if not leases or self._closed:
            return
        self._singles.extend(leases)
        if self._single_task is None or self._single_task.done():
            self._queued = asyncio.Event()
            self._single_task = asyncio.get_running_loop().create_task(self._run_single(),
                                                                       name="sentinel-heartbeat-single")
        elif self._queued is not None:
            self._queued.set()

    async def _next_due(self) -> List[Lease]:
        """Wait until leases are due."""
        while True:
            now = time.monotonic()
            due, wait = self._due(now)
            if due:
                return due
            wake = self._wake
            assert wake is not None
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self._sleep_for(now, wait))

    async def _next_single(self, idle: Optional[float]) -> Optional[Lease]:
        """The next lease of the single lane; None after ``idle`` seconds without one."""
        while not self._singles:
            queued = self._queued
            assert queued is not None
            queued.clear()
            try:
                await asyncio.wait_for(queued.wait(), idle)
            except asyncio.TimeoutError:
                return None
        return self._singles.popleft()

    async def _run(self) -> None:
        lane = _AsyncDedicated(self._source)
        try:
            while True:
                due = await self._next_due()
                if not self._batched:
                    self._hand_over(due)
                    continue
                for batch in self._batches(due):
                    batch = [lease for lease in batch if self._registered(lease)]  # some finished meanwhile
                    if not batch:
                        continue
                    try:
                        conn = await lane.get()
                    except Exception as exc:
                        for lease in batch:
                            self._cannot_connect(lease, exc)
                        continue
                    try:
                        row = await protocol_row(conn, HEARTBEAT_MANY_SQL, self._batch_params(batch),
                                                 explicit=self._explicit(),
                                                 timeout=self._batch_bound(self._timeout, batch))
                    except Exception as exc:
                        keep, alone = self._batch_failed(batch, exc, conn)
                        if not keep:
                            await lane.drop(exc)
                        self._hand_over(alone)
                        continue
                    self._hand_over(self._answered(batch, row))
                if lane.conn is not None and not self._leases:
                    await lane.drop()  # nothing in flight: give the connection back until needed
        finally:
            await lane.drop()

    async def _run_single(self) -> None:
        lane = _AsyncDedicated(self._source)
        try:
            while True:
                lease = await self._next_single(self.LANE_IDLE if lane.conn is not None else None)
                if lease is None:
                    await lane.drop()  # idle for a while: give the connection back until needed
                    continue
                if not self._registered(lease):
                    continue  # finished while it waited
                try:
                    conn = await lane.get()
                except Exception as exc:
                    self._cannot_connect(lease, exc)
                    continue
                try:
                    params = (lease.namespace, lease.key, lease.fence, lease.token)
                    row = await protocol_row(conn, HEARTBEAT_SQL, params, explicit=self._explicit(),
                                             timeout=renewal_bound(self._timeout, lease))
                except Exception as exc:
                    if not self._renewal_failed(lease, exc, conn):
                        await lane.drop(exc)
                    continue
                self._renewed(lease, row, self._registered(lease))
                if not self._leases:
                    await lane.drop()
        finally:
            await lane.drop()


# -- LISTEN/NOTIFY -----------------------------------------------------------------


class AsyncListener:
    """One LISTEN connection per AsyncSentinel (a task); wakes callers waiting for a key's outcome.

    If LISTEN cannot work (the connection fails, or a transaction-pooling
    PgBouncer is in between), ``ready`` stays unset and waiters poll.
    """

    def __init__(self, source: AsyncSource, namespace: str) -> None:
        self._source = source
        #: the channel this listener LISTENs on; watch_v2 sends its watchers' notifications there
        self.channel = private_channel()
        self.ids = WatchIds()
        self._waiters: Dict[str, List[asyncio.Event]] = {}
        self.ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sentinel-listener")

    def register(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(key, []).append(event)
        return event

    def unregister(self, key: str, event: asyncio.Event) -> None:
        events = self._waiters.get(key)
        if events and event in events:
            events.remove(event)
            if not events:
                del self._waiters[key]

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        try:
            while True:
                try:
                    async with self._source.dedicated() as conn:
                        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self.channel)))
                        self.ready.set()
                        backoff = 0.1
                        # No timeout: the task is cancelled on close() (works with psycopg 3.1 too).
                        async for note in conn.notifies():
                            key = self.ids.key(note.payload)
                            for event in self._waiters.get(key, ()) if key is not None else ():
                                event.set()
                except Exception as exc:
                    self.ready.clear()
                    logger.warning("LISTEN connection failed (%s); waiters poll until it is back", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            self.ready.clear()


# -- the public classes -----------------------------------------------------------


class AsyncExecutionContext(ExecutionContext):
    """What a running function may know about its own execution, under :class:`AsyncSentinel`.

    An :class:`ExecutionContext` (``namespace``, ``key``, ``fence``,
    ``attempt``, ``claimed_at``, ``hard_expires_at``, ``lease_expires_at``,
    ``lease_lost``, :meth:`check`; ``sentinel.current_execution()`` returns
    it), plus :meth:`wait_lost_async` to await the loss of the lease. The
    blocking :meth:`wait_lost` works in a sync function (which runs in a
    worker thread) but refuses to block the event loop, whose heartbeat task
    keeps the lease alive.
    """

    __slots__ = ("_alease",)

    def __init__(self, namespace: str, key: str, fence: int, attempt: int, claimed_at: datetime,
                 hard_expires_at: datetime, lease: AsyncLease) -> None:
        super().__init__(namespace, key, fence, attempt, claimed_at, hard_expires_at, lease)
        self._alease = lease

    async def wait_lost_async(self, timeout: Optional[float] = None) -> bool:
        """Wait until the lease is lost (or the hard deadline passes) or ``timeout`` seconds pass; True if lost."""
        lease = self._alease
        end = None if timeout is None else time.monotonic() + timeout
        while not lease.past_deadline():
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            waits = [t - now for t in (end, lease.deadline) if t is not None]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lease.alost.wait(), max(0.0, min(waits)) if waits else None)
        return True

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Block until the lease is lost or ``timeout`` seconds pass (sync functions only; see the class)."""
        if timeout != 0:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise RuntimeError("wait_lost() would block the event loop and starve the heartbeat; "
                                   "use `await ctx.wait_lost_async(timeout)`")
        return super().wait_lost(timeout)

    def __repr__(self) -> str:
        return (f"AsyncExecutionContext({self.namespace!r}, {self.key!r}, fence={self.fence}, "
                f"lost={self.lease_lost})")



# -- helpers the once() flow awaits ----------------------------------------------------


async def sleep(seconds: float) -> None:
    """Pause the calling task."""
    await asyncio.sleep(seconds)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def call_probe(probe: AsyncProbe, info: UncertainKey) -> Any:
    """Ask a probe: an async one is awaited, a sync one runs in the default executor."""
    if is_async(probe):
        answer: Any = await probe(info)  # type: ignore[misc]
    else:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, contextvars.copy_context().run, probe, info)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


