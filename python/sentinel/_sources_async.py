"""The asyncio connection sources (get_conn, a user's pool, the private pool) and one-statement helpers.

``_client_async`` (the one hand-written source of the once() flow) runs on
these; the ``_client`` generated from it runs on ``_io_sync``, which gives
the threaded equivalents the same names without ``Async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import select
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import psycopg
from psycopg import pq

from ._conn import _BEGIN_RC, tcp_options, wrap_exceptions
from ._events import ProbeAnswer, UncertainKey
from ._schema import SchemaStatus, migrations, required_version
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

