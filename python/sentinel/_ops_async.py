"""The operator calls: inspect, list, reconcile, events, stats, purge; the asyncio source of ``_ops.py``.

:class:`AsyncOperations` (and :class:`Operations`, generated from this file by
``tools/async_to_sync.py``) reads and resolves the records of one namespace
without running anything: the CLI uses it, and the clients inherit it.
"""

from __future__ import annotations

from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    cast,
)

import psycopg

from ._conn import wrap_exceptions
from ._core import Resolutions
from ._events import Observer
from ._frameworks import defaults as framework_defaults
from ._io_async import (
    AsyncGetConn,
    check_compatible,
    fetchone,
    make_source,
)
from ._options import (
    Options,
    _check_key,
)
from ._rows import EventRow, ExecutionRecord, Reconciled, Stats
from ._watchdog import bounded

__all__ = ["AsyncOperations"]

_O = TypeVar("_O", bound="AsyncOperations")


class AsyncOperations(Resolutions):
    """The operator calls on the records of one namespace, without once().

    ``conninfo``, ``pool`` or ``get_conn`` and ``namespace`` as for
    :class:`AsyncSentinel`, which has all of these calls too. Reconciling and
    purging need the operator grant (``sentinel grant ROLE --operator``).
    """

    def __init__(
        self,
        get_conn: Optional[AsyncGetConn] = None,
        *,
        pool: Any = None,
        conninfo: Optional[str] = None,
        namespace: Optional[str] = None,
        dumps: Optional[Callable[[Any], str]] = None,
        connect_timeout: float = 10.0,
        check_schema: bool = True,
        observers: Sequence[Observer] = (),
        reply_timeout: Optional[float] = 10.0,
    ) -> None:
        conninfo, defaults = _one_source(type(self).__name__, get_conn, pool, conninfo)
        options = Options.checked(
            namespace=namespace if namespace is not None else defaults.get("namespace"), default_ttl_ms=None,
            default_hard_ttl_ms=None, dumps=dumps, loads=None, fingerprints=True, retain_ms=None,
            permanent_errors=(), cache_size=0, cache_ttl_ms=1000, listen=False, poll_interval_ms=100,
            reply_timeout=reply_timeout, check_schema=check_schema,
        )
        self._setup(options, observers, None)
        self._source = make_source(get_conn, pool, conninfo, pool_size=2, connect_timeout=connect_timeout,
                                   prepared_statements=False)

    if True:  # ASYNC
        async def open(self) -> None:
            """Open the private pool of ``conninfo=`` now (otherwise the first call does)."""
            await self._source.open()

    async def close(self) -> None:
        """Close this client's own connections."""
        self._closed = True
        await self._source.close()

    async def __aenter__(self: _O) -> _O:
        if True:  # ASYNC
            await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _check_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """On first use, refuse a schema this client cannot work with, and learn the sessions' isolation."""
        if self._schema_ok and self._isolation_known:
            return
        if not self._schema_ok:
            level = (await check_compatible(conn)).isolation
            self._schema_ok = True
        else:  # check_schema=False: one question, once
            with wrap_exceptions():
                row = await fetchone(conn, "show transaction_isolation")
            level = str(row[0]) if row else "read committed"
        self._isolation_seen(level)

    async def _rows(self, query: str, params: Tuple[Any, ...], *, check_schema: bool = False,
                    ) -> Tuple[List[str], List[Tuple[Any, ...]]]:
        async with self._source.connection() as conn:
            if check_schema:
                await self._check_schema(conn)
            with wrap_exceptions(), bounded(conn, self.options.reply_s):
                cur = await conn.execute(query, params)
                rows = await cur.fetchall()
            return [d.name for d in (cur.description or [])], [tuple(r) for r in rows]

    async def inspect(self, key: str) -> Optional[ExecutionRecord]:
        """The execution record of ``key`` in this namespace, or None."""
        key = _check_key(key)
        names, rows = await self._rows("select * from sentinel.inspect_v1(%s, %s)", (self.namespace, key),
                                       check_schema=True)
        return cast(ExecutionRecord, dict(zip(names, rows[0]))) if rows else None

    async def list(self, state: Optional[str] = None, *, older_than_ms: Optional[int] = None,
                   max_rows: int = 100, bodies: bool = False) -> List[ExecutionRecord]:
        """Execution records of this namespace, oldest change first, optionally by effective state.

        ``response`` and ``error`` are None unless ``bodies=True`` (a record's
        full body is :meth:`inspect`'s).
        """
        names, rows = await self._rows("select * from sentinel.list_v2(%s, %s, %s, %s, %s)",
                                       (self.namespace, state, older_than_ms, max_rows, bool(bodies)))
        return [cast(ExecutionRecord, dict(zip(names, r))) for r in rows]

    async def reconcile(self, key: str, *, action: str, actor: str, reason: str, response: Any = None,
                        error: Any = None, force: bool = False) -> Reconciled:
        """Resolve a key as ``completed`` (with ``response``), ``failed`` or ``release`` it.

        Always takes a new fence, so a late worker is fenced out; records
        ``actor`` and ``reason``. Refuses keys that are not uncertain, failed or
        a lapsed claim unless ``force``.
        """
        params = self._reconcile_params(key, action, actor, reason, response, error, force)
        names, rows = await self._rows(
            "select * from sentinel.reconcile_v1(%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)", params)
        assert rows
        return cast(Reconciled, self._reconciled(params[1], dict(zip(names, rows[0])), action, actor, reason))

    async def events(self, key: str, *, max_rows: int = 1000) -> List[EventRow]:
        """The event log of ``key`` (newest ``max_rows``, oldest first): one row per transition."""
        key = _check_key(key)
        names, rows = await self._rows("select * from sentinel.events_v1(%s, %s, %s)",
                                       (self.namespace, key, max_rows))
        return [cast(EventRow, dict(zip(names, r))) for r in rows]

    async def stats(self) -> Stats:
        """Records of this namespace by effective state, the oldest uncertain, executions per minute."""
        names, rows = await self._rows("select * from sentinel.stats_v1(%s)", (self.namespace,))
        assert rows
        return cast(Stats, dict(zip(names, rows[0])))

    async def _purge_loop(self, query: str, params: Tuple[Any, ...], batch_size: int) -> int:
        total = 0
        async with self._source.connection() as conn:
            while True:
                with wrap_exceptions():
                    row = await fetchone(conn, query, params)
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


def _one_source(name: str, get_conn: Any, pool: Any, conninfo: Optional[str]) -> Tuple[Optional[str], Dict[str, Any]]:
    """Check that exactly one source is given, or take a configured framework's (Django); its defaults too."""
    given = sum(x is not None for x in (get_conn, pool, conninfo))
    if given == 1:
        return conninfo, {}
    if given == 0:
        defaults = framework_defaults()
        if defaults is not None:
            return str(defaults["conninfo"]), defaults
        raise TypeError(f"{name}() needs one of get_conn=, pool= or conninfo= (or a configured Django)")
    raise TypeError(f"{name}() needs exactly one of get_conn=, pool= or conninfo=")
