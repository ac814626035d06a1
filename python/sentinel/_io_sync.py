"""The threaded side of the drivers' I/O, under the names ``_client_async`` uses for asyncio.

The ``_client`` generated from ``_client_async`` imports from here what the
source imports from ``_io_async``: the same names without ``Async``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional, Tuple

import psycopg

from ._conn import GetConn, GetConnSource, PoolSource, Source, conninfo_source, protocol_row
from ._events import Probe, ProbeAnswer, UncertainKey
from ._heartbeat import Heartbeater, Lease
from ._results import ExecutionContext
from ._schema import check_compatible
from ._support import Listener

__all__ = [
    "ExecutionContext", "GetConn", "Heartbeater", "Lease", "Listener", "Probe", "Source", "call_probe",
    "check_compatible", "fetchone", "make_source", "protocol_row", "sleep", "wait_event",
]


def fetchone(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Optional[Tuple[Any, ...]]:
    """The first row of ``query``, as a tuple."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else tuple(row)


def sleep(seconds: float) -> None:
    """Pause the calling thread."""
    time.sleep(seconds)


def wait_event(event: threading.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass."""
    event.wait(timeout)


def call_probe(probe: Probe, info: UncertainKey) -> ProbeAnswer:
    """Ask a probe."""
    return probe(info)


def make_source(get_conn: Optional[GetConn], pool: Any, conninfo: Optional[str], *, pool_size: int,
                connect_timeout: float, prepared_statements: bool) -> Source:
    """The connection source of the one of ``get_conn``, ``pool`` and ``conninfo`` that is given."""
    if get_conn is not None:
        return GetConnSource(get_conn)
    if pool is not None:
        from psycopg_pool import AsyncConnectionPool

        if isinstance(pool, AsyncConnectionPool):
            raise TypeError("Sentinel(pool=...) needs a psycopg_pool.ConnectionPool; "
                            "use AsyncSentinel for an AsyncConnectionPool")
        return PoolSource(pool)
    assert conninfo is not None
    return conninfo_source(conninfo, max_size=pool_size, timeout=connect_timeout,
                           prepared_statements=prepared_statements)
