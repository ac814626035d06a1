"""The asyncio API: :class:`AsyncSentinel`, the contract of ``Sentinel`` for ``async`` code.

Everything that is not I/O is shared with the synchronous driver: argument
checks, fingerprints, serialisation, the local cache, the :class:`Result`
type, events and observers all come from ``_client``, ``_support`` and
``_events``. This module holds only what must differ for asyncio: connection
sources built on ``psycopg.AsyncConnection`` and ``psycopg_pool.AsyncConnectionPool``,
one heartbeat *task* per ``AsyncSentinel``, LISTEN/NOTIFY on an async
connection, and the ``once()`` flow written with ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import inspect
import itertools
import logging
import os
import random
import select
import time
from datetime import datetime
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import psycopg
from psycopg import pq, sql

from ._client import (
    _ABANDON_SQL,
    _ACQUIRE_SQL,
    _COMPLETE_SQL,
    _FAIL_SQL,
    MAX_TTL_MS,
    ExecutionContext,
    Result,
    Sentinel,
    TransactionState,
    _AcquireRetry,
    _Call,
    _check_key,
    _current,
    _error_document,
    _naming,
    _no_function,
    _not_started_document,
    unwrap,
)
from ._conn import _BEGIN_RC, is_connection_loss, protocol_errors, tcp_options, wrap_exceptions
from ._events import DidNotHappen, Happened, Observer, ProbeAnswer, UncertainKey, Unknown, probe_name
from ._fork import track as track_fork
from ._heartbeat import HEARTBEAT_SQL, Lease, renewal_bound
from ._logs import held_back, one_line
from ._logs import throttle as _throttle
from ._schema import SchemaStatus, migrations, required_version
from ._support import channel
from ._watchdog import bounded
from .errors import (
    DatabaseUnavailable,
    DocumentTooLarge,
    FencedOut,
    ForkedPool,
    InvalidTTL,
    KeyLocked,
    ReconcileRefused,
    ResultNotSerializable,
    SchemaError,
    SentinelError,
    SerializationConflict,
    TransactionInProgress,
)

logger = logging.getLogger("sentinel")

__all__ = ["AsyncSentinel", "AsyncExecutionContext", "AsyncTransaction", "AsyncGetConn", "AsyncProbe"]

T = TypeVar("T")

#: ``get_conn=`` of :class:`AsyncSentinel`: an async callable returning a *new* ``psycopg.AsyncConnection``.
AsyncGetConn = Callable[[], Awaitable["psycopg.AsyncConnection[Any]"]]

#: A probe for :class:`AsyncSentinel`: a sync callable (run in the default
#: executor) or an async one, answering :class:`Happened`, :class:`DidNotHappen`
#: or :class:`Unknown`.
AsyncProbe = Callable[[UncertainKey], Union[ProbeAnswer, Awaitable[ProbeAnswer]]]


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions, partials of them, async ``__call__``)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's __call__, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def _never_connect() -> psycopg.Connection[Any]:  # pragma: no cover - the options core never connects
    raise AssertionError("the options core of AsyncSentinel never connects")


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


class _AsyncSource:
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


class _GetConnSource(_AsyncSource):
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


class _PoolSource(_AsyncSource):
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


class _PrivatePoolSource(_PoolSource):
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


async def _fetchone(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Optional[Tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def _protocol_row(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None, *,
                        explicit: bool = False, timeout: Optional[float] = None) -> Optional[Tuple[Any, ...]]:
    """``_conn.protocol_row`` for an AsyncConnection: one autocommit protocol statement, at read committed."""
    with bounded(conn, timeout):
        return await _protocol_row_unbounded(conn, query, params, explicit)


async def _protocol_row_unbounded(conn: psycopg.AsyncConnection[Any], query: Any, params: Any,
                                  explicit: bool) -> Optional[Tuple[Any, ...]]:
    if not explicit:
        return await _fetchone(conn, query, params)
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


async def _check_compatible(conn: psycopg.AsyncConnection[Any]) -> SchemaStatus:
    """``_schema.check_compatible`` for an AsyncConnection (reads schema_version() and api_versions())."""
    mine = migrations()
    with wrap_exceptions():
        row = await _fetchone(
            conn,
            "select to_regprocedure('sentinel.schema_version()') is not null,"
            " to_regprocedure('sentinel.api_versions()') is not null, current_setting('transaction_isolation')",
        )
        version: Optional[int] = None
        apis: List[int] = []
        if row and row[0]:
            version_row = await _fetchone(conn, "select sentinel.schema_version()")
            version = int(version_row[0]) if version_row else None
            if row[1]:
                api_row = await _fetchone(conn, "select sentinel.api_versions()")
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


class _AsyncLease(Lease):
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


class _Heartbeater:
    """Renews the leases of every in-flight execution of one ``AsyncSentinel``.

    One asyncio task (named ``sentinel-heartbeat``), started on first use,
    sleeps until the next lease is due, renews it with ``heartbeat_v1`` on a
    connection of its own (held only while executions are in flight), and
    marks a lease lost when the database says the execution is no longer
    ours, or when the hard deadline passed while the database was
    unreachable. It decides nothing itself: the database does.
    """

    def __init__(self, source: _AsyncSource, on_lost: Callable[[_AsyncLease], None],
                 explicit: Callable[[], bool] = lambda: False, timeout: Optional[float] = None) -> None:
        self._timeout = timeout  # the client's reply_timeout
        self._source = source
        self._on_lost = on_lost
        self._explicit = explicit  # protocol calls in explicit read committed transactions (see _conn)
        self._heap: List[Tuple[float, int]] = []
        self._leases: Dict[int, _AsyncLease] = {}
        self._ids = itertools.count(1)
        self._task: Optional[asyncio.Task[None]] = None
        self._wake: Optional[asyncio.Event] = None
        self._closed = False

    def register(self, lease: _AsyncLease) -> None:
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

    def unregister(self, lease: _AsyncLease) -> None:
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

    async def _next_due(self) -> List[_AsyncLease]:
        while True:
            while self._heap and self._heap[0][1] not in self._leases:
                heapq.heappop(self._heap)
            now = time.monotonic()
            if self._heap and self._heap[0][0] <= now:
                due: List[_AsyncLease] = []
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

    def _lose(self, lease: _AsyncLease, why: str) -> None:
        logger.warning(
            "%s/%s lost its lease under fence %s (%s)", lease.namespace, lease.key, lease.fence, why,
            extra={"sentinel_namespace": lease.namespace, "sentinel_key": lease.key, "sentinel_fence": lease.fence},
        )
        self.unregister(lease)
        lease.lose(why)

    def _unreachable(self, lease: _AsyncLease) -> None:
        if lease.deadline is not None and time.monotonic() >= lease.deadline:
            self._lose(lease, "hard deadline passed while the database was unreachable")
        else:
            self._reschedule(lease, min(lease.interval, 0.2))

    def _reschedule(self, lease: _AsyncLease, delay: float) -> None:
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
                        row = await _protocol_row(conn, HEARTBEAT_SQL, (lease.namespace, lease.key, lease.fence),
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


class _Listener:
    """One LISTEN connection per AsyncSentinel (a task); wakes callers waiting for a key's outcome.

    If LISTEN cannot work (the connection fails, or a transaction-pooling
    PgBouncer is in between), ``ready`` stays unset and waiters poll.
    """

    def __init__(self, source: _AsyncSource, namespace: str) -> None:
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
                 hard_expires_at: datetime, lease: _AsyncLease) -> None:
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


class AsyncTransaction(TransactionState):
    """The state of an :meth:`AsyncSentinel.transaction` block."""

    async def complete(self, response: Any) -> Any:
        """Record ``response`` in this transaction; it commits with your writes. Returns it as recorded."""
        text, value = self._serialise(response)
        with wrap_exceptions():
            row = await _fetchone(self._conn, _COMPLETE_SQL, self._params(text))
        return self._recorded(row, value)


class AsyncSentinel:
    """Runs functions at most once per key, coordinated through PostgreSQL, from asyncio code.

    The same contract, options and :class:`Result` as :class:`Sentinel`.
    Give it one source of connections:

    - ``conninfo``: a libpq connection string; a private
      ``psycopg_pool.AsyncConnectionPool`` (at most ``pool_size`` connections;
      a call waits up to ``connect_timeout`` seconds for one, then raises
      :class:`DatabaseUnavailable`) is created and opened on first use, or by
      ``await s.open()`` / ``async with AsyncSentinel(...) as s``. Its
      connections use no server-side prepared statements (so they work behind
      a transaction-pooling PgBouncer) unless ``prepared_statements=True``;
      one the server closed while idle is dropped instead of failing a call.
    - ``pool``: your ``psycopg_pool.AsyncConnectionPool``. A call gives its
      connection back while the function runs; the heartbeat and the LISTEN
      waiter use connections of their own built from ``pool.conninfo`` and
      ``pool.kwargs``.
    - ``get_conn``: an async callable returning a *new*
      ``psycopg.AsyncConnection``; it is closed when the call ends.

    One asyncio task per ``AsyncSentinel`` (``sentinel-heartbeat``) renews the
    leases of all its in-flight executions, on its own connection. An
    ``AsyncSentinel`` belongs to the event loop that first uses it; use one
    per loop and ``await s.close()`` (or ``async with``) at shutdown.
    The heartbeat runs on the event loop: an async function that blocks the
    loop (CPU work, blocking I/O) for longer than ``ttl_ms`` starves it and
    loses its lease; give such work to a sync function, which runs in a thread.

    The other options are those of :class:`Sentinel`; ``observers`` are called
    synchronously on the event loop (keep them quick), and ``on_uncertain`` may
    be a sync probe (run in the default executor) or an async one.
    """

    def __init__(
        self,
        get_conn: Optional[AsyncGetConn] = None,
        *,
        pool: Any = None,
        conninfo: Optional[str] = None,
        default_ttl_ms: Optional[int] = None,
        default_hard_ttl_ms: Optional[int] = None,
        namespace: Optional[str] = None,
        dumps: Optional[Callable[[Any], str]] = None,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        prepared_statements: bool = False,
        check_schema: bool = True,
        observers: Sequence[Observer] = (),
        on_uncertain: Optional[AsyncProbe] = None,
        loads: Optional[Callable[[Any], Any]] = None,
        fingerprints: bool = True,
        retain_ms: Optional[int] = None,
        permanent_errors: Tuple[Type[BaseException], ...] = (),
        cache_size: int = 0,
        cache_ttl_ms: int = 1000,
        listen: bool = True,
        poll_interval_ms: int = 100,
        reply_timeout: Optional[float] = 10.0,
    ) -> None:
        given = [x is not None for x in (get_conn, pool, conninfo)]
        if sum(given) != 1:
            raise TypeError("AsyncSentinel() needs exactly one of get_conn=, pool= or conninfo=")
        # The options, their checks and every piece of once() that is not I/O
        # (argument checks, fingerprints, serialisation, cache, events) live in
        # a Sentinel that never connects: one source of truth for both APIs.
        self._core = Sentinel(
            _never_connect, namespace=namespace, default_ttl_ms=default_ttl_ms,
            default_hard_ttl_ms=default_hard_ttl_ms, dumps=dumps, check_schema=False, observers=observers,
            loads=loads, fingerprints=fingerprints, retain_ms=retain_ms, permanent_errors=permanent_errors,
            cache_size=cache_size, cache_ttl_ms=cache_ttl_ms, listen=False, poll_interval_ms=poll_interval_ms,
            reply_timeout=reply_timeout,
        )
        self._reply_s = self._core._reply_s
        self.namespace = self._core.namespace
        self.default_ttl_ms = self._core.default_ttl_ms
        self.default_hard_ttl_ms = self._core.default_hard_ttl_ms
        if on_uncertain is not None and not callable(on_uncertain):
            raise TypeError("on_uncertain must be a callable probe")
        self._on_uncertain = on_uncertain
        self._listen = bool(listen)
        self._poll_s: float = self._core._poll_s
        source: _AsyncSource
        if get_conn is not None:
            source = _GetConnSource(get_conn)
        elif pool is not None:
            from psycopg_pool import ConnectionPool

            if isinstance(pool, ConnectionPool):
                raise TypeError("AsyncSentinel(pool=...) needs a psycopg_pool.AsyncConnectionPool; "
                                "use Sentinel for a ConnectionPool")
            source = _PoolSource(pool)
        else:
            assert conninfo is not None
            source = _PrivatePoolSource(conninfo, max_size=pool_size, timeout=connect_timeout,
                                        prepared_statements=prepared_statements)
        self._source = source
        self._heartbeat = _Heartbeater(source, on_lost=self._lease_lost, explicit=lambda: self._explicit_rc,
                                       timeout=self._reply_s)
        self._listener: Optional[_Listener] = None
        self._tasks: Set[asyncio.Future[Any]] = set()
        self._schema_ok = not check_schema
        self._closed = False
        track_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's pool, leases, listener and background tasks (see ``_fork``)."""
        self._source.after_fork()
        self._heartbeat = _Heartbeater(self._source, on_lost=self._lease_lost, explicit=lambda: self._explicit_rc,
                                       timeout=self._reply_s)
        self._listener = None
        self._tasks = set()

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open the private pool of ``conninfo=`` now (otherwise the first call does)."""
        await self._source.open()

    async def close(self) -> None:
        """Stop the heartbeat and listener tasks and close the private pool, if any.

        Work still in flight in the background gets up to 5 seconds: the
        recordings of callers cancelled after their function returned, and
        the sync functions whose callers were cancelled while they ran (their
        leases are renewed meanwhile). A function still running after that
        is marked uncertain, since nobody renews its lease any more.
        """
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await self._heartbeat.close()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._source.close()

    async def __aenter__(self) -> AsyncSentinel:
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def owner(self) -> str:
        """This process's owner tag, ``host:pid:random`` (for diagnostics only)."""
        return self._core.owner

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every :class:`Event` from now on."""
        self._core.add_observer(observer)

    def _emit(self, kind: str, ns: str, key: str, fence: Optional[int] = None, attempt: Optional[int] = None,
              duration_s: Optional[float] = None, error: Optional[BaseException] = None, **details: Any) -> None:
        self._core._emit(kind, ns, key, fence, attempt, duration_s, error, **details)

    def _lease_lost(self, lease: _AsyncLease) -> None:
        self._emit("lease_lost", lease.namespace, lease.key, lease.fence, reason=lease.lost_reason)

    async def _check_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """On first use, refuse a schema this client cannot work with, and learn the sessions' isolation."""
        if self._schema_ok and self._core._isolation_known:
            return
        if not self._schema_ok:
            level = (await _check_compatible(conn)).isolation
            self._schema_ok = True
        else:  # check_schema=False: one question, once
            with wrap_exceptions():
                row = await _fetchone(conn, "show transaction_isolation")
            level = str(row[0]) if row else "read committed"
        self._core._isolation_seen(level)

    @property
    def _explicit_rc(self) -> bool:
        return self._core._explicit_rc

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a background task until it ends (and retrieve its exception, so none goes unnoticed)."""
        self._tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.debug("background task ended with %r", t.exception())

        task.add_done_callback(done)

    async def _shielded(self, coro: Awaitable[T]) -> T:
        """Run a recording to its end even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(coro)
        self._keep(task)
        return await asyncio.shield(task)

    # -- once --------------------------------------------------------------

    async def once(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        fingerprint: Union[str, bool, None] = None,
        retain_ms: Optional[int] = None,
        permanent: Tuple[Type[BaseException], ...] = (),
        pass_context: bool = False,
        on_uncertain: Optional[AsyncProbe] = None,
    ) -> Result:
        """Run ``fn(*args, **kwargs)`` at most once for ``key`` and return a :class:`Result`.

        The semantics of :meth:`Sentinel.once`, with ``await``: a replay is one
        round trip that writes nothing; a fresh run is two (acquire straight to
        executing, then complete or fail), each one autocommit statement, while
        the heartbeat task renews the lease every ``ttl_ms / 3``. Exceptions
        from ``fn`` are recorded as failed and re-raised unchanged.

        **How ``fn`` runs.** An ``async`` function (or any callable whose call
        returns a coroutine, such as an object with ``async def __call__``) is
        awaited in the calling task. A sync function runs in the event loop's
        default executor (a worker thread, like ``asyncio.to_thread``, with
        the caller's ``contextvars``), so a blocking function cannot stall the
        loop and its heartbeat; if it returns an awaitable, that is awaited
        too. ``sentinel.current_execution()`` returns the context in both.

        **Interruptions.** ``asyncio.CancelledError`` (the calling task was
        cancelled, for example by ``asyncio.wait_for`` or a ``TaskGroup``) is
        always re-raised to the caller at once. What happens to the key depends
        on whether the function can be stopped:

        - an *async* function is cancelled with its caller; it may have had
          effects, so the key is marked uncertain at once (``abandon_v1``);
          ``KeyboardInterrupt`` and ``SystemExit`` do the same;
        - a *sync* function cannot be stopped in its thread, so nothing is
          abandoned: its lease is renewed until the thread really ends, other
          callers keep seeing ``execution_alive``, and its real outcome (the
          response, or the exception it raised) is recorded then, as if the
          caller had waited. :meth:`close` waits up to 5 seconds for such
          threads; one still running then is marked uncertain.

        A caller cancelled after ``fn`` returned does not stop the recording:
        it completes in the background.

        Options as :meth:`Sentinel.once`: ``ttl_ms``, ``hard_ttl_ms``,
        ``wait_ms`` (wait for another worker's outcome, woken by NOTIFY or
        polling every ``poll_interval_ms``), ``fingerprint``, ``retain_ms``,
        ``permanent``, ``pass_context`` (``fn(ctx, *args, **kwargs)`` with an
        :class:`AsyncExecutionContext`) and ``on_uncertain`` (a sync or async
        probe).
        """
        core = self._core
        call = core._call(key, fn, args, kwargs, ttl_ms, hard_ttl_ms, fingerprint, pass_context, retain_ms,
                          permanent)
        if self._closed:
            # Refuse before claiming: a claim whose function can never run would read uncertain.
            raise RuntimeError("this AsyncSentinel is closed")
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or wait_ms < 0 or wait_ms > MAX_TTL_MS:
            raise InvalidTTL(f"wait_ms must be an int between 0 and {MAX_TTL_MS}, got {wait_ms!r}")
        cache = core._cache
        if cache is not None:
            hit = cache.get(self.namespace, call.key, call.fingerprint)
            if hit is not None:
                self._emit("replayed", self.namespace, call.key, hit[1], hit[2], cached=True)
                return Result(self.namespace, call.key, "completed", response=hit[0], replayed=True, fence=hit[1],
                              attempt=hit[2], cached=True)
        result = await self._attempt(call)
        if result.execution_alive and wait_ms > 0:
            result = await self._wait(call, result, wait_ms)
        probe = on_uncertain or self._on_uncertain
        if result.uncertain and probe is not None:
            result = await self._probe(probe, result, call)
        return result

    async def _wait(self, call: _Call, result: Result, wait_ms: int) -> Result:
        """Wait for another worker's outcome: NOTIFY wakes us, polling is the fallback.

        The database notifies only watched keys, so once LISTEN is in place the
        waiter registers with ``watch_v1`` and only then asks again (one
        acquire per round), so a notification can never fall in between; it
        removes its watcher with ``unwatch_v1`` when it stops waiting. Until
        the listener is ready (or when LISTEN or the watch cannot work) it
        polls every ``poll_interval_ms``, waking early as soon as LISTEN is in
        place; it never waits for the listener beyond its own deadline.
        """
        deadline = time.monotonic() + wait_ms / 1000.0
        listener = self._get_listener()
        event = listener.register(call.key) if listener is not None else None
        watch_id: Optional[int] = None
        watch_tried = False
        try:
            while True:
                if listener is not None and listener.ready.is_set() and not watch_tried:
                    watch_tried = True
                    watch_id = await self._watch(call.key, deadline)
                listening = watch_id is not None and listener is not None and listener.ready.is_set()
                if event is not None:
                    event.clear()
                result = await self._attempt(call)
                if not result.execution_alive:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                # With LISTEN a notification wakes us; the timeout is only a safety net.
                pause = min(remaining, max(self._poll_s, 1.0) if listening else self._poll_s)
                wake: Optional[asyncio.Event] = None
                if listening:
                    wake = event
                elif listener is not None and not watch_tried:
                    wake = listener.ready  # poll, but start watching as soon as LISTEN is in place
                if wake is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), pause)
                else:
                    await asyncio.sleep(pause)
        finally:
            if listener is not None and event is not None:
                listener.unregister(call.key, event)
            if watch_id is not None:
                await self._unwatch(watch_id)

    async def _watch(self, key: str, deadline: float) -> Optional[int]:
        """Ask the database to NOTIFY ``key``'s outcome until ``deadline``; None if it cannot (then we poll)."""
        ms = max(1, min(MAX_TTL_MS, int((deadline - time.monotonic()) * 1000) + 1))
        try:
            async with self._source.connection() as conn:
                with wrap_exceptions():
                    row = await _protocol_row(conn, "select sentinel.watch_v1(%s, %s, %s)", (self.namespace, key, ms),
                                              explicit=self._explicit_rc, timeout=self._reply_s)
            return int(row[0]) if row else None
        except SentinelError as exc:
            logger.debug("watch_v1 failed (%s); polling instead", exc)
            return None

    async def _unwatch(self, watch_id: int) -> None:
        try:
            async with self._source.connection() as conn:
                with wrap_exceptions():
                    await _protocol_row(conn, "select sentinel.unwatch_v1(%s)", (watch_id,), explicit=self._explicit_rc,
                                     timeout=self._reply_s)
        except SentinelError as exc:  # the watcher expires by itself
            logger.debug("unwatch failed: %s", exc)

    def _get_listener(self) -> Optional[_Listener]:
        if not self._listen:
            return None
        if self._listener is None:
            self._listener = _Listener(self._source, self.namespace)
        return self._listener

    async def _probe(self, probe: AsyncProbe, result: Result, call: _Call) -> Result:
        """Ask ``probe`` about an uncertain key and apply its answer through reconcile_v1."""
        key = call.key
        record = await self.inspect(key) or {}
        info = UncertainKey(self.namespace, key, result.fence or 0, result.attempt or 0, record)
        try:
            if _is_async(probe):
                answer: Any = await probe(info)  # type: ignore[misc]
            else:
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(None, contextvars.copy_context().run, probe, info)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            logger.exception("probe %r failed for %s/%s", probe, self.namespace, key)
            answer = Unknown(f"the probe raised {type(exc).__name__}: {exc}")
        actor = probe_name(probe)  # type: ignore[arg-type]
        try:
            if isinstance(answer, Happened):
                await self.reconcile(key, action="completed", response=answer.response, actor=actor,
                                     reason="probe: the effect happened")
            elif isinstance(answer, DidNotHappen):
                await self.reconcile(key, action="release", actor=actor, reason=f"probe: {answer.reason}"[:1000])
            else:
                self._emit("uncertain", self.namespace, key, result.fence, result.attempt,
                           reason=getattr(answer, "reason", "unknown"), probe=actor)
                return result
        except ReconcileRefused:
            pass  # somebody resolved the key meanwhile: what it is now is the answer
        return await self._attempt(call)

    async def _attempt(self, call: _Call) -> Result:
        """One acquire (retried as the same call after a lost reply), and the run when it is ours."""
        ns, key = self.namespace, call.key
        claimed: Optional[int] = None  # our fence, from the claim until the function starts
        begun: List[bool] = []
        retry = _AcquireRetry(call)
        while True:
            try:
                async with self._source.connection() as conn:
                    await self._check_schema(conn)
                    retry.asking()
                    with _naming(ns, key), wrap_exceptions():
                        row = await _protocol_row(conn, _ACQUIRE_SQL, (ns, key, self.owner, call.ttl, call.hard,
                                                                   call.fingerprint, retry.token),
                                                  explicit=self._explicit_rc, timeout=self._reply_s)
                    retry.answered()
                    assert row is not None
                    outcome, fence, state, attempt, response, error, claimed_at, _lease_end, hard_at, db_now = row
                    if outcome != "acquired":
                        return self._core._observed(call, outcome, fence, state, attempt, response, error, hard_at)
                    claimed = fence
                    self._emit("acquired", ns, key, fence, attempt, retried=retry.retries or None)
                    deadline = time.monotonic() + max((hard_at - db_now).total_seconds(), 0.0)
                    if self._source.hold_during_fn:
                        return await self._execute(conn, call, fence, attempt, claimed_at, hard_at, deadline, begun)
                # A pooled connection goes back while the function runs; recording takes a fresh one.
                return await self._execute(None, call, fence, attempt, claimed_at, hard_at, deadline, begun)
            except DatabaseUnavailable as exc:
                pause = retry.after(exc, ns, key)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
            except SerializationConflict:
                # The acquire was aborted with nothing written (repeatable read or
                # serializable session): asking again is safe.
                pause = retry.after_conflict()
                if pause is None:
                    raise
                await asyncio.sleep(pause)
            except BaseException as exc:
                if claimed is not None and not begun and not isinstance(exc, GeneratorExit):
                    await self._shielded(self._release_unstarted(ns, key, claimed, call, exc))
                raise

    async def _release_unstarted(self, ns: str, key: str, fence: int, call: _Call, exc: BaseException) -> None:
        """Give back a claim whose function never started (see ``Sentinel._release_unstarted``)."""
        log_extra = {"sentinel_namespace": ns, "sentinel_key": key, "sentinel_fence": fence}
        try:
            rec = await self._record(None, _FAIL_SQL,
                                     (ns, key, fence, _not_started_document(exc), False, call.retain_ms),
                                     time.monotonic() + 2.0, log_extra)
        except Exception as err:  # never hide the original exception
            rec = None
            logger.error("could not release %s/%s: %s", ns, key, err, extra=log_extra)
        self._core._not_started_reported(ns, key, fence, exc, rec, log_extra)

    async def _execute(
        self, conn: Optional[psycopg.AsyncConnection[Any]], call: _Call, fence: int, attempt: int,
        claimed_at: datetime, hard_at: datetime, deadline: float, begun: List[bool],
    ) -> Result:
        ns, key = self.namespace, call.key
        lease = _AsyncLease(ns, key, fence, call.ttl, deadline)
        ctx = AsyncExecutionContext(ns, key, fence, attempt, claimed_at, hard_at, lease)
        log_extra = {"sentinel_namespace": ns, "sentinel_key": key, "sentinel_fence": fence}
        fn_args = (ctx, *call.args) if call.pass_context else call.args
        pending: Optional[asyncio.Future[Any]] = None  # a sync function's run in its thread
        self._heartbeat.register(lease)
        token = _current.set(ctx)
        started = time.perf_counter()
        try:
            begun.append(True)
            if _is_async(call.fn):
                value = await call.fn(*fn_args, **call.kwargs)
            else:
                loop = asyncio.get_running_loop()
                pending = loop.run_in_executor(
                    None, functools.partial(contextvars.copy_context().run, call.fn, *fn_args, **call.kwargs))
                # Shielded: a cancelled caller leaves the thread's outcome to be recorded late.
                value = await asyncio.shield(pending)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            self._heartbeat.unregister(lease)
            took = time.perf_counter() - started
            await self._shielded(self._record_failure(conn, call, fence, attempt, exc, took, deadline, log_extra))
            raise
        except BaseException as exc:
            if pending is not None and isinstance(exc, asyncio.CancelledError):
                # The caller was cancelled, but a thread cannot be stopped: the
                # function still runs. Its lease is kept alive until the thread
                # really ends, then its real outcome is recorded, as if the
                # caller had waited; the caller gets its cancellation now.
                logger.info("%s/%s: the caller was cancelled while its sync function runs in a thread; "
                            "the lease is kept until the thread ends and its outcome is recorded then",
                            ns, key, extra=log_extra)
                self._keep(asyncio.ensure_future(
                    self._outlive(pending, lease, call, fence, attempt, hard_at, deadline, started, log_extra)))
                raise
            # KeyboardInterrupt, SystemExit, or an async function cancelled: it may have had effects.
            self._heartbeat.unregister(lease)
            reason = f"interrupted by {type(exc).__name__}"
            lease.on_lost = None  # not a loss to report: the interruption is
            lease.lose(reason)
            if isinstance(exc, GeneratorExit):  # the coroutine is being closed: nothing may be awaited
                raise
            await self._shielded(self._abandon(conn, ns, key, fence, reason, log_extra, deadline=None))
            raise
        finally:
            _current.reset(token)
        self._heartbeat.unregister(lease)
        took = time.perf_counter() - started
        return await self._shielded(self._complete(conn, call, value, fence, attempt, hard_at, deadline, took,
                                                   log_extra))

    async def _record_failure(
        self, conn: Optional[psycopg.AsyncConnection[Any]], call: _Call, fence: int, attempt: int,
        exc: Exception, took: float, deadline: float, log_extra: Dict[str, Any], **details: Any,
    ) -> None:
        ns, key = self.namespace, call.key
        permanent = isinstance(exc, call.permanent) if call.permanent else False
        try:
            rec = await self._record(conn, _FAIL_SQL, (ns, key, fence, _error_document(exc), permanent,
                                                       call.retain_ms), deadline, log_extra)
        except DocumentTooLarge:  # the DBA's cap is below our document: a shorter one still records it
            rec = await self._record(conn, _FAIL_SQL, (ns, key, fence, _error_document(exc, 200), permanent,
                                                       call.retain_ms), deadline, log_extra)
        self._core._failure_reported(ns, key, fence, attempt, took, exc, rec, permanent, log_extra, **details)

    async def _complete(
        self, conn: Optional[psycopg.AsyncConnection[Any]], call: _Call, value: Any, fence: int, attempt: int,
        hard_at: datetime, deadline: float, took: float, log_extra: Dict[str, Any], **details: Any,
    ) -> Result:
        ns, key = self.namespace, call.key
        core = self._core
        try:
            text, recorded_value = core._to_json(value)
        except Exception as exc:
            recorded = await self._abandon(
                conn, ns, key, fence, f"result not serialisable: {type(exc).__name__}: {exc}"[:1000],
                log_extra, deadline=deadline,
            )
            raise ResultNotSerializable(
                f"{ns}/{key}: the function ran but its result ({type(value).__name__}) could not be "
                f"serialised to JSON ({exc}); the key is marked uncertain and will not run again until reconciled",
                value=value, recorded=recorded,
            ) from exc
        try:
            rec = await self._record(conn, _COMPLETE_SQL, (ns, key, fence, text, call.retain_ms), deadline, log_extra)
        except (psycopg.DataError, DocumentTooLarge) as exc:
            # The database refused the JSON (a \u0000 escape in jsonb, a document over its cap).
            recorded = await self._abandon(
                conn, ns, key, fence, f"result refused by the database: {exc}"[:1000], log_extra, deadline=deadline
            )
            raise ResultNotSerializable(
                f"{ns}/{key}: the function ran but PostgreSQL refused to store its result as jsonb ({exc}); "
                "the key is marked uncertain and will not run again until reconciled",
                value=value, recorded=recorded,
            ) from exc
        if rec is None:
            self._emit("completed", ns, key, fence, attempt, took, persisted=False, **details)
            logger.error("%s/%s ran under fence %s but its response could not be recorded before the "
                         "hard deadline; other callers will see it uncertain", ns, key, fence, extra=log_extra)
            return Result(ns, key, "executing", response=recorded_value, fence=fence, attempt=attempt,
                          persisted=False, hard_expires_at=hard_at)
        if rec[0] == "stale":
            self._emit("fenced", ns, key, fence, attempt, took, state=rec[1], **details)
            raise FencedOut(
                f"{ns}/{key}: the function ran under fence {fence}, but the key was reconciled meanwhile "
                f"(state now {rec[1]}); its response was not recorded",
                response=recorded_value, fence=fence, state=rec[1],
            )
        self._emit("completed", ns, key, fence, attempt, took, persisted=True, **details)
        if core._cache is not None:
            core._cache.put(ns, key, recorded_value, fence, attempt, call.fingerprint, known=True)
        return Result(ns, key, "completed", response=recorded_value, fence=fence, attempt=attempt,
                      hard_expires_at=hard_at)

    async def _outlive(
        self, pending: asyncio.Future[Any], lease: _AsyncLease, call: _Call, fence: int, attempt: int,
        hard_at: datetime, deadline: float, started: float, log_extra: Dict[str, Any],
    ) -> None:
        """Keep renewing the lease of a sync function whose caller was cancelled; record its outcome when it ends."""
        try:
            value = await pending
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            self._heartbeat.unregister(lease)
            took = time.perf_counter() - started
            await self._record_failure(None, call, fence, attempt, exc, took, deadline, log_extra,
                                       caller_cancelled=True)
            return
        except BaseException as exc:
            # The thread itself was interrupted, or this client is closing
            # without it: the function may have had effects.
            self._heartbeat.unregister(lease)
            reason = f"interrupted by {type(exc).__name__} after its caller was cancelled"
            lease.on_lost = None  # not a loss to report: the interruption is
            lease.lose(reason)
            await self._abandon(None, self.namespace, call.key, fence, reason, log_extra, deadline=None)
            if not isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._heartbeat.unregister(lease)
        took = time.perf_counter() - started
        try:
            await self._complete(None, call, value, fence, attempt, hard_at, deadline, took, log_extra,
                                 caller_cancelled=True)
        except SentinelError as exc:
            logger.warning("the outcome of %s/%s (its caller was cancelled) was not recorded: %s",
                           self.namespace, call.key, exc, extra=log_extra)

    async def _record(
        self, conn: Optional[psycopg.AsyncConnection[Any]], query: str, params: Tuple[Any, ...], deadline: float,
        log_extra: Dict[str, Any],
    ) -> Optional[Tuple[Any, ...]]:
        """Run a recording call, retrying on connection loss, a lock timeout or a conflict until ``deadline``.

        Returns the function's row, or None if the database stayed out of reach
        until the deadline. Other errors propagate.
        """
        delay = 0.05
        current = conn
        while True:
            try:
                if current is not None and not current.closed and not current.broken:
                    with wrap_exceptions():
                        return await _protocol_row(current, query, params, explicit=self._explicit_rc,
                                                   timeout=self._reply_s)
                async with self._source.connection() as fresh:
                    with wrap_exceptions():
                        return await _protocol_row(fresh, query, params, explicit=self._explicit_rc,
                                                   timeout=self._reply_s)
            except (DatabaseUnavailable, KeyLocked, SerializationConflict) as exc:
                if isinstance(exc, DatabaseUnavailable):
                    current = None  # a lock timeout or a conflict leaves the connection usable
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                held = _throttle(("record", sql, *params[:3]))
                if held is not None:
                    logger.warning("recording failed (%s); retrying for up to %.1fs%s", one_line(exc), remaining,
                                   held_back(held), extra=log_extra)
                await asyncio.sleep(min(delay * (0.5 + random.random()), remaining))
                delay = min(delay * 2, 1.0)

    async def _abandon(
        self, conn: Optional[psycopg.AsyncConnection[Any]], ns: str, key: str, fence: int, reason: str,
        log_extra: Dict[str, Any], *, deadline: Optional[float],
    ) -> bool:
        """Mark our execution uncertain; True if the database recorded it."""
        try:
            rec = await self._record(conn, _ABANDON_SQL, (ns, key, fence, reason),
                                     deadline if deadline is not None else time.monotonic(), log_extra)
        except Exception as exc:  # never hide the original exception
            logger.error("could not mark %s/%s uncertain: %s", ns, key, exc, extra=log_extra)
            return False
        if rec is None:
            logger.error("could not mark %s/%s uncertain (database unavailable); it will read "
                         "uncertain once its lease lapses", ns, key, extra=log_extra)
            return False
        if rec[0] == "uncertain":
            self._emit("uncertain", ns, key, fence, reason=reason)
        else:
            logger.warning("%s/%s marked %s: %s", ns, key, rec[0], reason, extra=log_extra)
        return rec[0] in ("uncertain", "released")

    # -- operator calls ----------------------------------------------------

    async def _rows(self, query: str, params: Tuple[Any, ...], *, check_schema: bool = False,
                    ) -> Tuple[List[str], List[Tuple[Any, ...]]]:
        async with self._source.connection() as conn:
            if check_schema:
                await self._check_schema(conn)
            with wrap_exceptions(), bounded(conn, self._reply_s):
                cur = await conn.execute(query, params)
                rows = await cur.fetchall()
            return [d.name for d in (cur.description or [])], [tuple(r) for r in rows]

    async def inspect(self, key: str) -> Optional[Dict[str, Any]]:
        """The execution record of ``key`` in this namespace, or None."""
        key = _check_key(key)
        names, rows = await self._rows("select * from sentinel.inspect_v1(%s, %s)", (self.namespace, key),
                                       check_schema=True)
        return dict(zip(names, rows[0])) if rows else None

    async def list(self, state: Optional[str] = None, *, older_than_ms: Optional[int] = None,
                   max_rows: int = 100, bodies: bool = False) -> List[Dict[str, Any]]:
        """Execution records of this namespace (see :meth:`Sentinel.list`); bodies only with ``bodies=True``."""
        names, rows = await self._rows("select * from sentinel.list_v2(%s, %s, %s, %s, %s)",
                                       (self.namespace, state, older_than_ms, max_rows, bool(bodies)))
        return [dict(zip(names, r)) for r in rows]

    async def reconcile(self, key: str, *, action: str, actor: str, reason: str, response: Any = None,
                        error: Any = None, force: bool = False) -> Dict[str, Any]:
        """Resolve a key as ``completed`` (with ``response``), ``failed`` or ``release`` it.

        Always takes a new fence, so a late worker is fenced out; records
        ``actor`` and ``reason``. Refuses keys that are not uncertain, failed or
        a lapsed claim unless ``force``.
        """
        key = _check_key(key)
        resp = None if response is None and action != "completed" else self._core._dumps(response)
        err = None if error is None else self._core._dumps(error)
        names, rows = await self._rows(
            "select * from sentinel.reconcile_v1(%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)",
            (self.namespace, key, action, actor, reason, resp, err, force),
        )
        assert rows
        out = dict(zip(names, rows[0]))
        self._emit("reconciled", self.namespace, key, out.get("fence"), action=action, actor=actor,
                   reason=reason, previous_state=out.get("previous_state"))
        return out

    async def events(self, key: str, *, max_rows: int = 1000) -> List[Dict[str, Any]]:
        """The event log of ``key`` (newest ``max_rows``, oldest first): one row per transition."""
        key = _check_key(key)
        names, rows = await self._rows("select * from sentinel.events_v1(%s, %s, %s)",
                                       (self.namespace, key, max_rows))
        return [dict(zip(names, r)) for r in rows]

    async def stats(self) -> Dict[str, Any]:
        """Records of this namespace by effective state, the oldest uncertain, executions per minute."""
        names, rows = await self._rows("select * from sentinel.stats_v1(%s)", (self.namespace,))
        assert rows
        return dict(zip(names, rows[0]))

    async def _purge_loop(self, query: str, params: Tuple[Any, ...], batch_size: int) -> int:
        total = 0
        async with self._source.connection() as conn:
            while True:
                with wrap_exceptions():
                    row = await _fetchone(conn, query, params)
                n = int(row[0]) if row else 0
                total += n
                if n < batch_size:
                    return total

    async def purge(self, older_than_ms: int, *, batch_size: int = 1000) -> int:
        """Delete completed and failed records finished ``older_than_ms`` ago, in batches; returns the count."""
        return await self._purge_loop("select sentinel.purge_v1(%s, %s, %s)",
                                      (self.namespace, older_than_ms, batch_size), batch_size)

    async def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Delete this namespace's finished records whose ``retain_ms`` has passed, in batches."""
        return await self._purge_loop("select sentinel.purge_expired_v1(%s, %s)", (self.namespace, batch_size),
                                      batch_size)

    async def purge_events(self, older_than_ms: int, *, batch_size: int = 10000) -> int:
        """Delete events (of every namespace) older than ``older_than_ms``, in batches; returns the count."""
        return await self._purge_loop("select sentinel.purge_events_v1(%s, %s)", (older_than_ms, batch_size),
                                      batch_size)

    # -- decorator ---------------------------------------------------------

    def idempotent(
        self,
        key: Callable[..., str],
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        wait_ms: int = 0,
        fingerprint: Union[str, bool, None] = None,
        retain_ms: Optional[int] = None,
        permanent: Tuple[Type[BaseException], ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Awaitable[Any]]]:
        """Decorate a function so each call runs through :meth:`once` and returns the response.

        The wrapper is a coroutine function (``await place(7, amount=10)``);
        the decorated function may be async or sync (then it runs in a
        thread, see :meth:`once`). ``key`` receives the call's arguments and
        returns the key. The wrapper returns the (fresh or replayed) response,
        and raises :class:`ExecutionInProgress` when another worker is running
        the key (after ``wait_ms``), :class:`OutcomeUncertain` when the key is
        uncertain, and :class:`PermanentFailure` when a permanent failure is
        replayed; each carries the :class:`Result`. Exceptions of the function
        itself are re-raised unchanged.
        """
        if not callable(key):
            raise TypeError("key must be a callable computing the key from the call's arguments")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await self.once(key(*args, **kwargs), fn, args, kwargs, ttl_ms=ttl_ms,
                                         hard_ttl_ms=hard_ttl_ms, wait_ms=wait_ms, fingerprint=fingerprint,
                                         retain_ms=retain_ms, permanent=permanent)
                return unwrap(result)

            return wrapper

        return decorate

    # -- transactional exactly-once ------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        key: str,
        conn: psycopg.AsyncConnection[Any],
        *,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        fingerprint: Optional[str] = None,
        retain_ms: Optional[int] = None,
    ) -> AsyncIterator[AsyncTransaction]:
        """Claim ``key``, do your own writes on ``conn``, and record the response, in ONE transaction.

        ::

            async with sentinel.transaction("order-17", conn) as tx:
                if tx.acquired:
                    await conn.execute("insert into orders ...")
                    await tx.complete({"order_id": 17})
            response = tx.response          # fresh or replayed

        The semantics of :meth:`Sentinel.transaction` on a
        ``psycopg.AsyncConnection``: the claim, your writes and the completion
        commit together when the block ends, or roll back together if it
        raises (or the connection dies). Concurrent callers of the same key
        wait on the uncommitted claim. A block that acquired the key must call
        :meth:`AsyncTransaction.complete`, or it is rolled back with
        :class:`SentinelError`. No heartbeat runs: keep the block short.
        """
        core = self._core
        call = core._call(key, _no_function, (), None, ttl_ms, hard_ttl_ms, fingerprint or False, False,
                          retain_ms, ())
        ns = self.namespace
        user_raised: List[BaseException] = []
        savepoint = conn.info.transaction_status != pq.TransactionStatus.IDLE
        with protocol_errors(user_raised):
            async with conn.transaction():
                await self._check_schema(conn)
                row = await _fetchone(conn, _ACQUIRE_SQL, (ns, call.key, self.owner, call.ttl, call.hard,
                                                           call.fingerprint, None))
                assert row is not None
                outcome, fence, state, attempt, response, error = row[:6]
                tx = AsyncTransaction(core, conn, call, outcome, fence, state, attempt,
                                      core._loads(response) if outcome == "completed" else None, error)
                if outcome == "mismatch":
                    core._observed(call, outcome, fence, state, attempt, None, None, None)
                tx._opened()
                try:
                    yield tx
                except BaseException as exc:
                    user_raised.append(exc)  # the caller's own error: passed on as it is
                    raise
                if tx.acquired and not tx.completed:
                    raise SentinelError(
                        f"{ns}/{call.key}: the transaction() block acquired the key but did not call "
                        "tx.complete(response); everything in it was rolled back"
                    )
        tx._committed(savepoint)
