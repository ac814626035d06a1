"""The asyncio side of the drivers' I/O: connection sources, the heartbeat task, LISTEN, helpers.

``_client_async`` (the one hand-written source of the once() flow) runs on
these; the ``_client`` generated from it runs on ``_io_sync``, which gives
the threaded equivalents the same names without ``Async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import inspect
import itertools
import logging
import os
import select
import time
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import psycopg
from psycopg import pq, sql

from ._base import ExecutionContext
from ._conn import _BEGIN_RC, is_connection_loss, tcp_options, wrap_exceptions
from ._events import ProbeAnswer, UncertainKey
from ._heartbeat import HEARTBEAT_SQL, Lease, renewal_bound
from ._logs import held_back, one_line
from ._logs import throttle as _throttle
from ._schema import SchemaStatus, migrations, required_version
from ._support import channel
from ._watchdog import bounded
from .errors import DatabaseUnavailable, ForkedPool, SchemaError, TransactionInProgress

logger = logging.getLogger("sentinel")

#: ``get_conn=`` of :class:`AsyncSentinel`: an async callable returning a *new* ``psycopg.AsyncConnection``.
AsyncGetConn = Callable[[], Awaitable["psycopg.AsyncConnection[Any]"]]

#: A probe for :class:`AsyncSentinel`: a sync callable (run in the default
#: executor) or an async one, answering :class:`Happened`, :class:`DidNotHappen`
#: or :class:`Unknown`.
AsyncProbe = Callable[[UncertainKey], Union[ProbeAnswer, Awaitable[ProbeAnswer]]]


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions, partials of them, async ``__call__``)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's __call__, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


# -- connection sources ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """``_conn.autocommit`` for an AsyncConnection: refuse an open transaction, restore the setting."""
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        if status in (pq.TransactionStatus.UNKNOWN,) or conn.closed:
            raise DatabaseUnavailable("database unavailable: the connection is closed or broken")
        raise TransactionInProgress(
            "once() needs a connection outside a transaction: the claim must be committed "
            f"before the function runs (transaction status: {status.name})"
        )
    previous = conn.autocommit
    if not previous:
        await conn.set_autocommit(True)
    try:
        yield conn
    finally:
        if not previous and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            await conn.set_autocommit(previous)


class AsyncSource:
    """A supply of async connections for protocol calls and for the heartbeat."""

    #: Keep the call's connection while the function runs (a new one costs a
    #: connect), or give it back (a pool).
    hold_during_fn = True

    def connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection for one call, in autocommit mode, given back afterwards."""
        raise NotImplementedError

    def dedicated(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection of the heartbeat's (or listener's) own, never competing for a pool slot."""
        return self.connection()

    async def open(self) -> None:
        """Prepare the source (open a private pool); idempotent."""

    async def close(self) -> None:
        """Release what this source holds."""

    def after_fork(self) -> None:
        """In a forked child: forget, without closing, what belongs to the parent."""


class GetConnSource(AsyncSource):
    """Awaits the user's ``get_conn()`` for every call and closes what it returns."""

    def __init__(self, get_conn: AsyncGetConn) -> None:
        if not callable(get_conn):
            raise TypeError("get_conn must be an async callable returning a psycopg.AsyncConnection")
        self._get_conn = get_conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with wrap_exceptions():
            made: Any = self._get_conn()
            conn = await made if inspect.isawaitable(made) else made
        if not isinstance(conn, psycopg.AsyncConnection):
            if isinstance(conn, psycopg.Connection):
                conn.close()
            raise TypeError(f"get_conn() must return a psycopg.AsyncConnection, got {type(conn).__name__}")
        try:
            async with _autocommit(conn):
                yield conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


class PoolSource(AsyncSource):
    """Borrows connections from a ``psycopg_pool.AsyncConnectionPool``.

    A call gives its connection back while the function runs; the heartbeat
    and the listener open connections of their own with the pool's settings,
    so a pool full of running executions cannot starve the heartbeat.
    """

    hold_during_fn = False

    def __init__(self, pool: Any, *, owned: bool = False) -> None:
        self._pool = pool
        self._owned = owned
        self._forked_from: Optional[int] = None

    def after_fork(self) -> None:
        self._forked_from = os.getppid()  # psycopg_pool knows nothing of fork: see PoolSource

    async def open(self) -> None:
        if self._forked_from is not None:
            raise ForkedPool(
                f"this AsyncSentinel's connection pool was opened in process {self._forked_from} before it forked "
                f"process {os.getpid()}; the pool's connections belong to the parent. Create the pool and the "
                "AsyncSentinel in the child, or give AsyncSentinel conninfo= (its own pool is reopened after a fork)"
            )

    @contextlib.asynccontextmanager
    async def dedicated(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        await self.open()
        pool = self._pool
        with wrap_exceptions():
            conninfo: Any = pool.conninfo
            if callable(conninfo):  # psycopg_pool >= 3.3: a (sync or async) callable
                conninfo = conninfo()
                if inspect.isawaitable(conninfo):
                    conninfo = await conninfo
            kwargs: Any = getattr(pool, "kwargs", None)
            if callable(kwargs):
                kwargs = kwargs()
                if inspect.isawaitable(kwargs):
                    kwargs = await kwargs
            options = dict(kwargs or {})
            options["autocommit"] = True
            for name, value in tcp_options(conninfo or "").items():
                options.setdefault(name, value)
            cls: Any = getattr(pool, "connection_class", None) or psycopg.AsyncConnection
            conn: psycopg.AsyncConnection[Any] = await cls.connect(conninfo or "", **options)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        await self.open()
        with wrap_exceptions():
            async with self._pool.connection() as conn:
                async with _autocommit(conn):
                    yield conn

    async def close(self) -> None:
        if self._owned and self._pool is not None and self._forked_from is None:
            await self._pool.close()


def _idle_healthy(conn: psycopg.AsyncConnection[Any]) -> bool:
    """``_conn._healthy`` for an AsyncConnection: not closed by the server while idle (no round trip).

    A terminated backend or a server restart makes an idle connection's socket
    readable (an error message, or end of file).
    """
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


async def _check_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """The private pool's ``check``: drop a connection the server closed while it was idle."""
    if not _idle_healthy(conn):
        # Closed, so that the pool replaces it (a connection libpq still thinks
        # idle would be put back and handed out again).
        with contextlib.suppress(Exception):
            await conn.close()
        raise psycopg.OperationalError("the server closed this idle connection")


class PrivatePoolSource(PoolSource):
    """The private pool of ``conninfo=``: created and opened on first use, inside the event loop.

    Its connections use no server-side prepared statements unless
    ``prepared_statements`` (they break behind a transaction-pooling
    PgBouncer), and a connection the server closed while idle is dropped when
    it is taken (psycopg_pool >= 3.2), instead of failing the call.
    """

    def __init__(self, conninfo: str, *, max_size: int, timeout: float, prepared_statements: bool = False) -> None:
        super().__init__(None, owned=True)
        self._conninfo = conninfo
        self._max_size = max_size
        self._timeout = timeout
        self._prepare_threshold: Optional[int] = 5 if prepared_statements else None
        self._opening: Optional[asyncio.Future[None]] = None

    def after_fork(self) -> None:
        # The parent's pool, dropped without closing: its sockets are the parent's.
        self._pool = None
        self._opening = None

    async def open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            await asyncio.shield(opening)
        except Exception:
            if self._opening is opening:
                self._opening = None  # the next call tries again
            raise

    async def _open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.set_autocommit(True)

        options: Dict[str, Any] = {}
        if "check" in inspect.signature(AsyncConnectionPool).parameters:  # psycopg_pool >= 3.2
            options["check"] = _check_idle
        pool: Any = AsyncConnectionPool(
            self._conninfo, kwargs={"prepare_threshold": self._prepare_threshold, **tcp_options(self._conninfo)},
            min_size=1,
            max_size=self._max_size, configure=configure, open=False, name="sentinel", timeout=self._timeout,
            **options,
        )
        with wrap_exceptions():
            await pool.open(wait=False)
        self._pool = pool

    async def close(self) -> None:
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await self._opening
        await super().close()


# -- schema check ------------------------------------------------------------------


async def fetchone(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Optional[Tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def protocol_row(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None, *,
                        explicit: bool = False, timeout: Optional[float] = None) -> Optional[Tuple[Any, ...]]:
    """``_conn.protocol_row`` for an AsyncConnection: one autocommit protocol statement, at read committed."""
    with bounded(conn, timeout):
        return await _row_unbounded(conn, query, params, explicit)


async def _row_unbounded(conn: psycopg.AsyncConnection[Any], query: Any, params: Any,
                                  explicit: bool) -> Optional[Tuple[Any, ...]]:
    if not explicit:
        return await fetchone(conn, query, params)
    try:
        async with conn.pipeline():
            await conn.execute(_BEGIN_RC)
            cur = await conn.execute(query, params)
            await conn.execute("commit")
        row = await cur.fetchone()
        return None if row is None else tuple(row)
    except BaseException:
        if not conn.closed and not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                await conn.execute("rollback")
        raise


async def check_compatible(conn: psycopg.AsyncConnection[Any]) -> SchemaStatus:
    """``_schema.check_compatible`` for an AsyncConnection (reads schema_version() and api_versions())."""
    mine = migrations()
    with wrap_exceptions():
        row = await fetchone(
            conn,
            "select to_regprocedure('sentinel.schema_version()') is not null,"
            " to_regprocedure('sentinel.api_versions()') is not null, current_setting('transaction_isolation')",
        )
        version: Optional[int] = None
        apis: List[int] = []
        if row and row[0]:
            version_row = await fetchone(conn, "select sentinel.schema_version()")
            version = int(version_row[0]) if version_row else None
            if row[1]:
                api_row = await fetchone(conn, "select sentinel.api_versions()")
                apis = sorted(int(v) for v in (api_row[0] if api_row else []))
            else:
                apis = [1]  # schema version 1 predates api_versions() and provides _v1
    st = SchemaStatus(schema_version=version, required_version=required_version(),
                      latest_version=mine[-1].id if mine else 0, api_versions=apis,
                      isolation=str(row[2]) if row else "read committed")
    problems = st.problems()
    if problems:
        raise SchemaError("; ".join(problems))
    return st


# -- leases and the heartbeat task -------------------------------------------------


class AsyncLease(Lease):
    """A :class:`Lease` whose loss can also be awaited (``alost``)."""

    __slots__ = ("alost", "_loop")

    def __init__(self, namespace: str, key: str, fence: int, ttl_ms: int, deadline: Optional[float]) -> None:
        super().__init__(namespace, key, fence, ttl_ms, deadline)
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


class AsyncHeartbeater:
    """Renews the leases of every in-flight execution of one ``AsyncSentinel``.

    One asyncio task (named ``sentinel-heartbeat``), started on first use,
    sleeps until the next lease is due, renews it with ``heartbeat_v1`` on a
    connection of its own (held only while executions are in flight), and
    marks a lease lost when the database says the execution is no longer
    ours, or when the hard deadline passed while the database was
    unreachable. It decides nothing itself: the database does.
    """

    def __init__(self, source: AsyncSource, on_lost: Callable[[AsyncLease], None],
                 explicit: Callable[[], bool] = lambda: False, timeout: Optional[float] = None) -> None:
        self._timeout = timeout  # the client's reply_timeout
        self._source = source
        self._on_lost = on_lost
        self._explicit = explicit  # protocol calls in explicit read committed transactions (see _conn)
        self._heap: List[Tuple[float, int]] = []
        self._leases: Dict[int, AsyncLease] = {}
        self._ids = itertools.count(1)
        self._task: Optional[asyncio.Task[None]] = None
        self._wake: Optional[asyncio.Event] = None
        self._closed = False

    def register(self, lease: AsyncLease) -> None:
        """Start renewing ``lease``; its first renewal is one interval from now."""
        if self._closed:
            raise RuntimeError("this AsyncSentinel is closed")
        lease.id = next(self._ids)
        lease.on_lost = self._on_lost  # type: ignore[assignment]
        self._leases[lease.id] = lease
        due = time.monotonic() + lease.interval
        wakes_earlier = not self._heap or due < self._heap[0][0]
        heapq.heappush(self._heap, (due, lease.id))
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sentinel-heartbeat")
        elif wakes_earlier and self._wake is not None:
            # Wake the task only when this lease is due before its next wake-up.
            self._wake.set()

    def unregister(self, lease: AsyncLease) -> None:
        """Stop renewing ``lease`` (its entry in the schedule is dropped lazily)."""
        self._leases.pop(lease.id, None)

    async def close(self) -> None:
        """Stop the task; leases still registered are no longer renewed."""
        self._closed = True
        self._leases.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _next_due(self) -> List[AsyncLease]:
        while True:
            while self._heap and self._heap[0][1] not in self._leases:
                heapq.heappop(self._heap)
            now = time.monotonic()
            if self._heap and self._heap[0][0] <= now:
                due: List[AsyncLease] = []
                while self._heap and self._heap[0][0] <= now:
                    _, lid = heapq.heappop(self._heap)
                    lease = self._leases.get(lid)
                    if lease is not None:
                        due.append(lease)
                if due:
                    return due
                continue
            wake = self._wake
            assert wake is not None
            wake.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def _lose(self, lease: AsyncLease, why: str) -> None:
        logger.warning(
            "%s/%s lost its lease under fence %s (%s)", lease.namespace, lease.key, lease.fence, why,
            extra={"sentinel_namespace": lease.namespace, "sentinel_key": lease.key, "sentinel_fence": lease.fence},
        )
        self.unregister(lease)
        lease.lose(why)

    def _unreachable(self, lease: AsyncLease) -> None:
        if lease.deadline is not None and time.monotonic() >= lease.deadline:
            self._lose(lease, "hard deadline passed while the database was unreachable")
        else:
            self._reschedule(lease, min(lease.interval, 0.2))

    def _reschedule(self, lease: AsyncLease, delay: float) -> None:
        if lease.id in self._leases:
            heapq.heappush(self._heap, (time.monotonic() + delay, lease.id))

    async def _run(self) -> None:
        conn_cm: Optional[contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]] = None
        conn: Optional[psycopg.AsyncConnection[Any]] = None

        async def release(exc: Optional[BaseException] = None) -> None:
            nonlocal conn_cm, conn
            cm, conn_cm, conn = conn_cm, None, None
            if cm is not None:
                with contextlib.suppress(Exception):
                    await cm.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

        try:
            while True:
                due = await self._next_due()
                for lease in due:
                    if lease.id not in self._leases:
                        continue  # finished while this round was being picked
                    if conn is None:
                        try:
                            conn_cm = self._source.dedicated()
                            conn = await conn_cm.__aenter__()
                        except Exception as exc:
                            conn_cm = conn = None
                            held = _throttle(("connect", id(self)))
                            if held is not None:
                                logger.warning("heartbeat cannot connect (%s); retrying%s", one_line(exc),
                                               held_back(held),
                                               extra={"sentinel_key": lease.key, "sentinel_fence": lease.fence})
                            self._unreachable(lease)
                            continue
                    try:
                        row = await protocol_row(conn, HEARTBEAT_SQL, (lease.namespace, lease.key, lease.fence),
                                                  explicit=self._explicit(),
                                                  timeout=renewal_bound(self._timeout, lease))
                    except Exception as exc:
                        locked = getattr(exc, "sqlstate", None) in ("55P03", "40001", "40P01")
                        if not locked or conn.broken or conn.closed:
                            await release(exc)  # a lock timeout or a conflict leaves the connection usable
                        level = logging.WARNING if is_connection_loss(exc) or locked else logging.ERROR
                        held = _throttle(("renew", lease.namespace, lease.key, lease.fence))
                        if held is not None:
                            logger.log(level, "heartbeat for %s/%s failed (%s); retrying%s",
                                       lease.namespace, lease.key, one_line(exc), held_back(held),
                                       extra={"sentinel_key": lease.key, "sentinel_fence": lease.fence})
                        self._unreachable(lease)
                        continue
                    if row is not None and row[0]:
                        lease.lease_expires_at = row[2]
                        self._reschedule(lease, lease.interval)
                    elif lease.id in self._leases:
                        self._lose(lease, f"state now {row[1] if row else None}")
                if conn_cm is not None and not self._leases:
                    await release()  # nothing in flight: give the connection back until needed
        finally:
            await release()


# -- LISTEN/NOTIFY -----------------------------------------------------------------


class AsyncListener:
    """One LISTEN connection per AsyncSentinel (a task); wakes callers waiting for a key's outcome.

    If LISTEN cannot work (the connection fails, or a transaction-pooling
    PgBouncer is in between), ``ready`` stays unset and waiters poll.
    """

    def __init__(self, source: AsyncSource, namespace: str) -> None:
        self._source = source
        self._channel = channel(namespace)
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
                        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self._channel)))
                        self.ready.set()
                        backoff = 0.1
                        # No timeout: the task is cancelled on close() (works with psycopg 3.1 too).
                        async for note in conn.notifies():
                            for event in self._waiters.get(note.payload, ()):
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


def make_source(get_conn: Optional[AsyncGetConn], pool: Any, conninfo: Optional[str], *, pool_size: int,
                connect_timeout: float, prepared_statements: bool) -> AsyncSource:
    """The connection source of the one of ``get_conn``, ``pool`` and ``conninfo`` that is given."""
    if get_conn is not None:
        return GetConnSource(get_conn)
    if pool is not None:
        from psycopg_pool import ConnectionPool

        if isinstance(pool, ConnectionPool):
            raise TypeError("AsyncSentinel(pool=...) needs a psycopg_pool.AsyncConnectionPool; "
                            "use Sentinel for a ConnectionPool")
        return PoolSource(pool)
    assert conninfo is not None
    return PrivatePoolSource(conninfo, max_size=pool_size, timeout=connect_timeout,
                             prepared_statements=prepared_statements)
